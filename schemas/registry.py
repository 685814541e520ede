"""Every wire model skybus knows, for the codec."""

from __future__ import annotations

from schemas.base import Accepted, MessageTypes, Rejected
from schemas.content import CONTENT_MESSAGES
from schemas.jobs import JOB_MESSAGES
from schemas.pool import NODE_ANSWERS, NODE_QUERIES
from schemas.resources import RESOURCE_MESSAGES
from schemas.roles import ROLE_MESSAGES


def all_message_types() -> MessageTypes:
    return MessageTypes(
        Accepted,
        Rejected,
        *RESOURCE_MESSAGES,
        *JOB_MESSAGES,
        *CONTENT_MESSAGES,
        *ROLE_MESSAGES,
        *NODE_QUERIES,
        *NODE_ANSWERS,
    )
