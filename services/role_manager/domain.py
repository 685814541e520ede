"""The rules of roles on hosts, as pure functions over plain documents.

A role document holds its immutable versions and which one is active. A host document (one per host
that ever had a role) maps role names to entries::

    {"version": installed version or None, "target": wanted version or None (to remove),
     "status": ok|converging|retrying|failed, "attempts": failures of the current change,
     "job_id": the job running the change or None, "op": install|remove, "op_version": ...,
     "retry_at": when a failed change runs again, "answer_id", "exit_code", "error"}

Seed 002's three outcomes of applying a role are :func:`apply`: a role not present gets the active
version installed; present at the active version, nothing runs; present at another version, the
active version's install script updates it. One change runs on a host at a time
(:func:`next_change`); a failed one is retried with exponential backoff, then left ``failed``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from schemas.jobs import JobState
from schemas.roles import HostState, RoleStatus

Document = dict[str, Any]
INSTALL, REMOVE = "install", "remove"


class RoleError(Exception):
    """A command that cannot apply: ``status`` is the HTTP status the gateway answers."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


# Roles and their versions.


def new_version(
    *, version: str, display_name: str, description: str, install: str, remove: str, now: float
) -> Document:
    return {
        "version": version,
        "display_name": display_name,
        "description": description,
        "install": install,
        "remove": remove,
        "created_at": now,
    }


def same_version(a: Document, b: Document) -> bool:
    fields = ("display_name", "description", "install", "remove")
    return all(a[field] == b[field] for field in fields)


def find_version(role: Document, version: str) -> Document | None:
    return next((v for v in role["versions"] if v["version"] == version), None)


def new_role(name: str, first: Document) -> Document:
    """A role is created by its first version, which becomes active."""
    return {"id": name, "name": name, "active_version": first["version"], "versions": [first]}


def add_version(role: Document, version: Document) -> list[Document] | None:
    """The role's versions with ``version`` added, or None when it is there already, identical (a
    retry). A different version under a registered number is refused: versions are immutable."""
    known = find_version(role, version["version"])
    if known is None:
        return [*role["versions"], version]
    if same_version(known, version):
        return None
    raise RoleError(409, f"version {version['version']} of role {role['name']} exists; versions are immutable")


# Roles on a host.


def new_host(host_id: str) -> Document:
    return {"id": host_id, "roles": {}, "needs_work": False, "deleting": False, "deleted_at": None}


def _entry() -> Document:
    return {
        "version": None,
        "target": None,
        "status": RoleStatus.CONVERGING.value,
        "attempts": 0,
        "job_id": None,
        "last_job_id": None,
        "op": None,
        "op_version": None,
        "retry_at": None,
        "answer_id": None,
        "exit_code": None,
        "error": None,
        "requested_by": None,
    }


def apply(host: Document, name: str, active_version: str, requested_by: str) -> dict[str, Document] | None:
    """The host's roles after applying ``name`` at the role's active version; None when nothing
    changes (present at the active version, or that change is already on its way)."""
    entry = dict(host["roles"].get(name) or _entry())
    if entry["target"] == active_version and entry["status"] != RoleStatus.FAILED:
        return None  # outcome 2 (or the same apply again while it runs or waits): nothing to do on the host
    entry.update(target=active_version, attempts=0, retry_at=None, requested_by=requested_by)
    if entry["job_id"] is None:
        entry["status"] = RoleStatus.CONVERGING.value if entry["version"] != active_version else RoleStatus.OK.value
    return {**host["roles"], name: entry}


def remove(host: Document, name: str, requested_by: str) -> dict[str, Document]:
    entry = host["roles"].get(name)
    if entry is None:
        raise RoleError(404, f"role {name} is not assigned to host {host['id']}")
    if entry["target"] is None:
        return host["roles"]  # being removed already: a redelivered (or repeated) remove
    entry = {**entry, "target": None, "attempts": 0, "retry_at": None, "requested_by": requested_by}
    if entry["job_id"] is None:
        entry["status"] = RoleStatus.CONVERGING.value
    return _without_settled({**host["roles"], name: entry})


def remove_all(host: Document, requested_by: str) -> dict[str, Document]:
    roles = host["roles"]
    for name, entry in roles.items():
        if entry["target"] is not None:
            roles = remove({**host, "roles": roles}, name, requested_by)
    return _without_settled(roles)


def _without_settled(roles: dict[str, Document]) -> dict[str, Document]:
    """Entries that are neither wanted nor installed, nor running anything, are gone."""
    return {
        name: entry
        for name, entry in roles.items()
        if entry["target"] is not None or entry["version"] is not None or entry["job_id"] is not None
    }


def _wants_change(entry: Document) -> bool:
    return entry["target"] != entry["version"]


@dataclass(frozen=True)
class Change:
    name: str
    op: str
    version: str


def next_change(host: Document, now: float) -> Change | None:
    """The change to start on this host now: none while one runs, none for a role left failed."""
    roles = host["roles"]
    if any(entry["job_id"] is not None for entry in roles.values()):
        return None
    for name in sorted(roles):
        entry = roles[name]
        if not _wants_change(entry) or entry["status"] == RoleStatus.FAILED:
            continue
        if entry["retry_at"] is not None and entry["retry_at"] > now:
            continue
        if entry["target"] is not None:  # a first install, or an update: the new version's install
            return Change(name, INSTALL, entry["target"])
        return Change(name, REMOVE, entry["version"])
    return None


def start(host: Document, change: Change, job_id: str) -> dict[str, Document]:
    entry = {
        **host["roles"][change.name],
        "job_id": job_id,
        "op": change.op,
        "op_version": change.version,
        "status": RoleStatus.CONVERGING.value,
        "retry_at": None,
    }
    return {**host["roles"], change.name: entry}


def script_command(role: Document, change: Change, previous_version: str | None) -> str:
    """The job's command: the version's script, after the variables that tell it what it does."""
    version = find_version(role, change.version)
    if version is None:
        raise RoleError(404, f"version {change.version} of role {role['name']} not found")
    variables = {
        "SKYBUS_ROLE": role["name"],
        "SKYBUS_ROLE_VERSION": change.version,
        "SKYBUS_ROLE_ACTION": change.op,
        "SKYBUS_ROLE_PREVIOUS_VERSION": previous_version or "",
    }
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in variables.items())
    return f"export {exports}\n{version[change.op]}"


@dataclass(frozen=True)
class Backoff:
    attempts: int = 4
    first_delay: float = 2.0

    def delay(self, failures: int) -> float:
        return self.first_delay * 2 ** (failures - 1)


def finish(host: Document, job_id: str, job: Document, now: float, backoff: Backoff) -> dict[str, Document] | None:
    """The host's roles once job ``job_id`` ended as ``job`` says; None when no entry waits for it
    (a redelivered or late event)."""
    name = next((name for name, entry in host["roles"].items() if entry["job_id"] == job_id), None)
    if name is None:
        return None
    entry = dict(host["roles"][name])
    outcome = {
        "job_id": None,
        "last_job_id": job_id,
        "answer_id": job.get("answer_id"),
        "exit_code": job.get("exit_code"),
    }
    if job["state"] == JobState.SUCCEEDED:
        entry.update(outcome, version=entry["op_version"] if entry["op"] == INSTALL else None)
        entry.update(attempts=0, retry_at=None, error=None, op=None, op_version=None)
        entry["status"] = RoleStatus.CONVERGING.value if _wants_change(entry) else RoleStatus.OK.value
    else:
        failures = entry["attempts"] + 1
        error = job.get("error") or f"{entry['op']} script of version {entry['op_version']} ended {job['state']}"
        if job.get("exit_code") not in (None, 0):
            error = f"{entry['op']} script of version {entry['op_version']} exited with {job['exit_code']}"
        entry.update(outcome, attempts=failures, error=error)
        if failures < backoff.attempts:
            entry.update(status=RoleStatus.RETRYING.value, retry_at=now + backoff.delay(failures))
        else:
            entry.update(status=RoleStatus.FAILED.value, retry_at=None)
    return _without_settled({**host["roles"], name: entry})


# What the host looks like from outside.


def assigned_roles(host: Document | None) -> list[str]:
    return sorted(name for name, entry in (host or {}).get("roles", {}).items() if entry["target"] is not None)


def host_state(host: Document | None) -> HostState:
    roles = (host or {}).get("roles", {})
    if any(entry["version"] is not None for entry in roles.values()):
        return HostState.ACTIVE
    if any(entry["target"] is not None for entry in roles.values()):
        return HostState.ACTIVATING
    return HostState.INACTIVE


def role_status(host: Document | None) -> RoleStatus:
    entries = list((host or {}).get("roles", {}).values())
    if any(entry["job_id"] is not None for entry in entries):
        return RoleStatus.CONVERGING
    waiting = [entry for entry in entries if _wants_change(entry)]
    for status in (RoleStatus.RETRYING, RoleStatus.FAILED):
        if any(entry["status"] == status for entry in waiting):
            return status
    return RoleStatus.CONVERGING if waiting else RoleStatus.OK


def needs_work(roles: dict[str, Document]) -> bool:
    """Whether the sweep must look at this host: a job to watch or a change still to start."""
    return any(
        entry["job_id"] is not None or (_wants_change(entry) and entry["status"] != RoleStatus.FAILED)
        for entry in roles.values()
    )
