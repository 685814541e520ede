"""``POST /api/join``: a host joins with a cluster join token and waits, unauthorized, for an admin.

The agent (``skybus agent --join-token``) makes its own resource id and token and sends them with
its hostname, the join token as the bearer. The gateway passes on only the token's hash and verify
key, in a :class:`RegisterResource` with ``authorized=False, joined=True``; the resource manager's
reply is the outcome:

* a new hostname: a new host, **unauthorized** (it heartbeats, takes no jobs) and **owned by no
  user** (``user`` is ``""``, which no user name can be), so only admins see it under
  ``/api/resources``. An admin authorizes it by assigning it a role (the role manager sends
  ``AuthorizeResource``).
* the same id, hostname and token again: success, the same host (an agent that crashed after the
  call, or that joins again at every start with the credentials it saved).
* a hostname registered with ``POST /api/resources`` that no agent has spoken for yet
  (``last_response_time`` is None), *and* the body's ``registration_token`` is the token that
  registration was given: the joining agent **adopts** it. The host keeps the id and the owner it
  was registered with, stays authorized (it was authorized "beforehand"), and its credentials
  become the joining agent's: the registration's token stops working, so it cannot speak for a
  different machine. The reply carries the adopted id, which the agent uses from then on. Without
  that proof a hostname grants nothing: whoever registered a name first (any user) cannot capture
  the machine that later joins by it, and the join is refused.
* any other clash (the hostname registered, joined or used by another agent, the id taken): 409,
  saying how to adopt or to join under another hostname.

The response is ``201 {"id": ...}``; errors are ``{"error": ...}``: 400 for a bad body, 401 without
a valid join token (a user's token, an admin's included, is not one), 409 for a clash.
"""

from __future__ import annotations

from aiohttp import web

from schemas.resources import JoinBody, RegisterResource, ResourceId
from services.gateway.bodies import parse_body
from services.gateway.context import send_command
from services.gateway.openapi import COMMAND_ERRORS, documented
from services.security import broker_password_hash, hash_token, verify_key

routes = web.RouteTableDef()

JOINED_OWNER = ""  # the user of a joined host: nobody (user names are never blank)


@routes.post("/api/join")
@documented(
    body=JoinBody,
    response=ResourceId,
    status=201,
    errors=(409, *COMMAND_ERRORS),
    summary="Join this host with a cluster join token (as the bearer); it waits, unauthorized, for an admin",
)
async def join(request: web.Request) -> web.Response:
    body = await parse_body(request, JoinBody)
    accepted = await send_command(
        request,
        RegisterResource(
            resource_id=body.id,
            hostname=body.hostname,
            user=JOINED_OWNER,
            token_hash=hash_token(body.token),
            verify_key=verify_key(body.token),
            authorized=False,
            joined=True,
            broker_password_hash=broker_password_hash(body.token),
            registration_token_hash=hash_token(body.registration_token) if body.registration_token else None,
        ),
    )
    return web.json_response(ResourceId(id=accepted.id or body.id).model_dump(), status=201)
