"""Seed 004's rules that both sides of the bus apply: the refusals (word for word, as the seed gives
them) and what makes a ResourceInfo whole. The gateway checks a request with them before it sends
anything; the content manager applies them again to the merged result of a PATCH, which only it sees.
``timeout`` null means :data:`DEFAULT_TIMEOUT` seconds to whoever evaluates the resource.
"""

from __future__ import annotations

from typing import Any

from schemas.content import ResourceSettings, ResourceSettingsPatch

RESOURCE_TYPES = ("Active", "MSP", "Static")
AUTOMATIC = "Automatic"
DEFAULT_TIMEOUT = 30

NOT_JSON = "Expected the request body in JSON format."
BAD_TYPE = "The resourceType is not one of Active, MSP, or Static."
UNKNOWN = "Unknown resource"
PATH_MODIFIED = "resourcePath cannot be modified"
PATH_REQUIRED = "The resourcePath is required."
POOL_REQUIRED = "The poolName is required unless the resourceType is Static."
BAD_POOL = "The poolName must be a non-empty string."
BAD_MIME = "The mimeType must be Automatic or a MIME type such as text/html."
BAD_TIMEOUT = "The timeout must be a positive whole number of seconds, or null for the default of 30."


class ContentError(Exception):
    """A request the rules refuse, with the HTTP status it maps to and the message the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_settings(settings: ResourceSettings) -> ResourceSettings:
    if settings.resource_type != "Static" and settings.pool_name is None:
        raise ContentError(400, POOL_REQUIRED)
    return settings


def patched(current: dict[str, Any], patch: ResourceSettingsPatch) -> ResourceSettings:
    """The stored settings with a PATCH's given fields applied, checked as a whole."""
    merged = dict(current)
    for name in patch.given:
        merged[name] = getattr(patch, name)
    return check_settings(ResourceSettings(**merged))


def effective_timeout(settings: ResourceSettings) -> int:
    return DEFAULT_TIMEOUT if settings.timeout is None else settings.timeout
