"""The base of every wire model, and the registry that maps a message type name to its model.

The envelope on the bus names its payload by ``message_type``; the codec looks the name up in a
:class:`MessageTypes` registry before any handler runs, so an unknown or malformed payload is
dead-lettered at the edge instead of reaching domain code.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """A payload that travels on the bus. Unknown fields are refused: a typo is a bug, not data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_type: ClassVar[str] = ""


class Rejected(WireModel):
    """The reply of a command that the owning manager refused, with the HTTP status it maps to."""

    message_type: ClassVar[str] = "command.rejected"

    status: int
    error: str


class Accepted(WireModel):
    """The reply of a command whose state change was stored."""

    message_type: ClassVar[str] = "command.accepted"

    id: str | None = None


class MessageTypes:
    """A registry of wire models by ``message_type``."""

    def __init__(self, *models: type[WireModel]) -> None:
        self._models: dict[str, type[WireModel]] = {}
        for model in models:
            self.add(model)

    def add(self, model: type[WireModel]) -> None:
        name = model.message_type
        if not name:
            raise ValueError(f"{model.__name__} has no message_type")
        known = self._models.get(name)
        if known is not None and known is not model:
            raise ValueError(f"message type {name!r} is taken by {known.__name__}")
        self._models[name] = model

    def get(self, name: str) -> type[WireModel] | None:
        return self._models.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self):
        return iter(self._models.values())
