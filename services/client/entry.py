"""The client's commands, for ``services.cli`` to add to the ``skybus`` group."""

from __future__ import annotations

import click

from services.client.commands import host, job, login, node, role
from services.client.files import content, data
from services.client.run import run

COMMANDS: tuple[click.Command, ...] = (login, run, job, host, role, node, data, content)
