"""API and join tokens: the admin's REST bodies under ``/api/tokens``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator


class CreateTokenBody(BaseModel):
    """``POST /api/tokens``: a token for ``user`` (an admin's with ``admin``), or a cluster join
    token (``join``); it may expire, after ``expires_in`` (``30d``, ``12h``, ``90m``, ``45s``, ``2w``
    or seconds) or at ``expires_at`` (ISO 8601 or epoch seconds), not both."""

    model_config = ConfigDict(extra="forbid")

    user: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    admin: bool = False
    join: bool = False
    expires_in: StrictStr | float | None = None
    expires_at: StrictStr | float | None = None

    @model_validator(mode="after")
    def one_kind(self) -> CreateTokenBody:
        if self.join and (self.user is not None or self.admin):
            raise ValueError("a join token belongs to no user: drop user and admin")
        if not self.join and self.user is None:
            raise ValueError("give user (or join: true for a cluster join token)")
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        return self


class TokenView(BaseModel):
    """A stored token as an admin sees it: its public id, never the token or its hash."""

    id: str
    user: str | None
    admin: bool
    join: bool
    created_at: str
    expires_at: str | None
    expired: bool


class TokenList(BaseModel):
    tokens: list[TokenView]


class TokenCreated(BaseModel):
    id: str
    token: str
    expires_at: str | None
