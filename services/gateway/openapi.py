"""``/openapi.json``, built from the routes and the ``documented(...)`` mark each handler carries.

A mark names types, never hand-written schemas: the JSON body, the query and header parameters and
the multipart parts are pydantic models, the answer a model or a type of models (``list[RoleView]``),
and each error status the shape its path answers with (:data:`services.gateway.errors.ERROR_SCHEMAS`).
Every schema comes from pydantic in one pass, so a model used in a request and in a response gets one
component per mode only when the two differ. What every route shares is added here, from the code that
does it: 401 (and 403 for an agent's token) from the auth middleware, 400/408/413 for a body, 503 when
the bus or the store is down.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.gateway.auth import JOIN_PATHS, PUBLIC_PATHS, agent_may_use
from services.gateway.errors import ERROR_SCHEMAS, error_shape

F = TypeVar("F", bound=Callable[..., Any])

REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}

UUID = {"type": "string", "format": "uuid"}
NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
PATH_PARAMETERS: dict[str, tuple[dict[str, Any], str]] = {
    "job_id": (UUID, "a job's id"),
    "resource_id": (UUID, "a resource's (host's) id"),
    "item_id": (UUID, "a data file's id (or a job's answer_id)"),
    "node_id": (UUID, "a node's id: its resource id"),
    "host_id": ({"type": "string"}, "a host's id: its resource id"),
    "role_name": (NAME, "a role's name"),
    "container_id": (
        {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "a container's id on its node",
    ),
    "token_id": ({"type": "string"}, "a token's public id (`skybus token list`)"),
    "path": ({"type": "string"}, "a resource path of seed 004 (it may hold '/')"),
    "name": ({"type": "string", "enum": ["index.html", "app.js", "app.css"]}, "a file of the web UI"),
}
"""Every path parameter a route may name, with its schema: one name means one thing across the API."""


@dataclass(frozen=True)
class Form:
    """A ``multipart/form-data`` body whose parts are the model's fields: a ``bytes`` field is a file,
    a model-typed field a part of JSON text, a ``str`` field a text part."""

    model: type[BaseModel]
    raw: bool = False
    """The file may also come as the whole body (``application/octet-stream``)."""


@dataclass(frozen=True)
class RouteDoc:
    summary: str
    body: type[BaseModel] | Form | None = None
    response: Any = None
    """A model, or a list, dict or union of models: what a success answers with (JSON)."""
    status: int = 200
    public: bool = False
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    """Error statuses of this route beyond those every route shares (see the module's docstring)."""
    media: str | None = None
    """The success body's media type when it is not JSON (its schema is then bytes, or text)."""
    also: Mapping[int, Any] = field(default_factory=dict)
    """Other answers with a body of their own (not the error shape): status → type."""
    body_optional: bool = False
    """The body may be left out (what it says then comes in the query)."""


COMMAND_ERRORS = (502, 504)
"""A write waits for its manager's reply: 504 when none comes in time, 502 for an unexpected one."""
NODE_ERRORS = (404, 409, 502, 504)
"""A live query of seed 003: an unknown node, one not responding, an answer refused or not in time."""


def documented(
    *,
    summary: str,
    body: type[BaseModel] | Form | None = None,
    response: Any = None,
    status: int = 200,
    public: bool = False,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    media: str | None = None,
    also: Mapping[int, Any] | None = None,
    body_optional: bool = False,
) -> Callable[[F], F]:
    doc = RouteDoc(
        summary, body, response, status, public, query, headers, errors, media, dict(also or {}), body_optional
    )

    def mark(handler: F) -> F:
        handler.__skybus_doc__ = doc  # type: ignore[attr-defined]
        return handler

    return mark


def route_doc(route: web.AbstractRoute) -> RouteDoc | None:
    return getattr(route.handler, "__skybus_doc__", None)


def route_path(route: web.AbstractRoute) -> str | None:
    """The route's template as OpenAPI writes it: ``{path:.+}`` becomes ``{path}``."""
    info = route.resource.get_info() if route.resource else {}
    path = info.get("path") or info.get("formatter")
    return None if path is None else re.sub(r"\{([^}:]+):[^}]+\}", r"{\1}", path)


def documented_routes(app: web.Application) -> Iterator[tuple[str, str, web.AbstractRoute, RouteDoc | None]]:
    """(method, path, route, its mark) for every route but the HEADs aiohttp adds to GETs."""
    for route in app.router.routes():
        path = route_path(route)
        if path is None or route.method in ("HEAD", "*"):
            continue
        yield route.method, path, route, route_doc(route)


def error_codes(method: str, path: str, doc: RouteDoc) -> set[int]:
    """Every error status the route may answer with: its own and those the middlewares add."""
    codes = set(doc.errors)
    if not doc.public and path not in PUBLIC_PATHS:
        codes.add(401)
        if path not in JOIN_PATHS and not agent_may_use(path):
            codes.add(403)  # an agent's token, outside the routes an agent may use
        codes.add(503)  # the token is looked up in the store
    if doc.body is not None:
        codes |= {400, 408, 413}
    return codes


class _Schemas:
    """Collects the types the routes name, then makes every schema in one pass of pydantic."""

    def __init__(self) -> None:
        self._wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
        self._inline: list[type[BaseModel]] = []

    def want(self, kind: Any, mode: JsonSchemaMode) -> None:
        for model in _models_in(kind):
            self._wanted[(model, mode)] = None

    def inline(self, model: type[BaseModel]) -> None:
        """A model shown inline (query parameters, form parts) whose own definitions are components."""
        self._inline.append(model)

    def build(self) -> tuple[Callable[[Any, JsonSchemaMode], dict[str, Any]], dict[str, Any]]:
        refs, top = models_json_schema(list(self._wanted), ref_template=REF)
        components: dict[str, Any] = dict(top.get("$defs", {}))
        for model in self._inline:
            components.update(model.model_json_schema(ref_template=REF).get("$defs", {}))

        def schema_of(kind: Any, mode: JsonSchemaMode) -> dict[str, Any]:
            origin = get_origin(kind)
            if origin in (Union, types.UnionType):
                return {"anyOf": [schema_of(arg, mode) for arg in get_args(kind)]}
            if origin is list:
                return {"type": "array", "items": schema_of(get_args(kind)[0], mode)}
            if origin is dict:
                return {"type": "object", "additionalProperties": schema_of(get_args(kind)[1], mode)}
            return dict(refs[(kind, mode)])

        return schema_of, components


def _models_in(kind: Any) -> Iterator[type[BaseModel]]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        yield kind
        return
    for arg in get_args(kind):
        yield from _models_in(arg)


def _parameters(model: type[BaseModel], where: Literal["query", "header"]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, by_alias=True)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        parameter: dict[str, Any] = {"name": name, "in": where, "required": name in required, "schema": prop}
        if description:
            parameter["description"] = description
        if prop.get("type") == "array" or any(option.get("type") == "array" for option in prop.get("anyOf", ())):
            parameter |= {"style": "form", "explode": False}  # a comma-separated list: state=running,pending
        parameters.append(parameter)
    return parameters


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the ``null`` of ``X | None``: an absent parameter is the None."""
    schema = dict(schema)
    options = [option for option in schema.get("anyOf", ()) if option != {"type": "null"}]
    if "anyOf" in schema:
        del schema["anyOf"]
        if len(options) == 1:
            schema |= options[0]
        else:
            schema["anyOf"] = options
    return schema


def _form_content(form: Form) -> dict[str, Any]:
    schema = form.model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    schema.pop("title", None)
    media: dict[str, Any] = {"schema": schema}
    encoding = {
        name: {"contentType": "application/json"}
        for name, info in form.model.model_fields.items()
        if any(True for _ in _models_in(info.annotation))
    }
    if encoding:
        media["encoding"] = encoding
    content = {"multipart/form-data": media}
    if form.raw:
        content["application/octet-stream"] = {"schema": BINARY}
    return content


def _body_types(doc: RouteDoc, method: str, path: str) -> Iterator[tuple[Any, JsonSchemaMode]]:
    if isinstance(doc.body, type):
        yield doc.body, "validation"
    if doc.response is not None:
        yield doc.response, "serialization"
    for kind in doc.also.values():
        yield kind, "serialization"
    for _ in error_codes(method, path, doc):
        yield ERROR_SCHEMAS[error_shape(path)], "serialization"


def _success_content(doc: RouteDoc, schema_of: Callable[[Any, JsonSchemaMode], dict[str, Any]]) -> dict[str, Any]:
    if doc.media is not None:
        text = doc.media.startswith("text/") and doc.media != "text/html"
        return {doc.media: {"schema": {"type": "string"} if text else BINARY}}
    if doc.response is not None:
        return {"application/json": {"schema": schema_of(doc.response, "serialization")}}
    return {}


def _operation(
    method: str, path: str, doc: RouteDoc, schema_of: Callable[[Any, JsonSchemaMode], dict[str, Any]]
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": doc.summary}
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS[name][0],
            "description": PATH_PARAMETERS[name][1],
        }
        for name in re.findall(r"\{([^}]+)\}", path)
    ]
    if doc.query is not None:
        parameters += _parameters(doc.query, "query")
    if doc.headers is not None:
        parameters += _parameters(doc.headers, "header")
    if parameters:
        operation["parameters"] = parameters
    if isinstance(doc.body, Form):
        operation["requestBody"] = {"required": not doc.body_optional, "content": _form_content(doc.body)}
    elif doc.body is not None:
        operation["requestBody"] = {
            "required": not doc.body_optional,
            "content": {"application/json": {"schema": schema_of(doc.body, "validation")}},
        }
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": HTTPStatus(doc.status).phrase}
    if content := _success_content(doc, schema_of):
        success["content"] = content
    responses[str(doc.status)] = success
    for status, kind in doc.also.items():
        responses[str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": schema_of(kind, "serialization")}},
        }
    error_schema = schema_of(ERROR_SCHEMAS[error_shape(path)], "serialization")
    for status in sorted(error_codes(method, path, doc) - {int(code) for code in responses}):
        responses[str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": error_schema}},
        }
    operation["responses"] = responses
    operation["security"] = [] if doc.public else [{"bearer": []}]
    return operation


def _operation_id(route: web.AbstractRoute, taken: set[str]) -> str:
    handler = route.handler
    base = f"{handler.__module__.rsplit('.', 1)[-1].removesuffix('_api')}_{handler.__name__}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def build_openapi(app: web.Application, *, title: str, version: str) -> dict[str, Any]:
    found = [(method, path, route, doc) for method, path, route, doc in documented_routes(app) if doc is not None]
    schemas = _Schemas()
    for method, path, _, doc in found:
        for kind, mode in _body_types(doc, method, path):
            schemas.want(kind, mode)
        for model in (doc.query, doc.headers, doc.body.model if isinstance(doc.body, Form) else None):
            if model is not None:
                schemas.inline(model)
    schema_of, components = schemas.build()
    paths: dict[str, Any] = {}
    taken: set[str] = set()
    for method, path, route, doc in found:
        operation = _operation(method, path, doc, schema_of)
        operation["operationId"] = _operation_id(route, taken)
        paths.setdefault(path, {})[method.lower()] = operation
    return _without_null_defaults(
        {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }
    )


def _without_null_defaults(node: Any) -> Any:
    """Drop ``"default": null`` from schemas that do not take null (a field typed ``X | SkipJsonSchema[None]``
    is absent, never null): a validator holds a default to its own schema."""
    if isinstance(node, list):
        return [_without_null_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    cleaned = {key: _without_null_defaults(value) for key, value in node.items()}
    if "default" in cleaned and cleaned["default"] is None and not _takes_null(cleaned):
        del cleaned["default"]
    return cleaned


def _takes_null(schema: dict[str, Any]) -> bool:
    if "type" in schema or "$ref" in schema:
        return schema.get("type") == "null"
    options = schema.get("anyOf") or schema.get("oneOf")
    return options is None or any(_takes_null(option) for option in options)
