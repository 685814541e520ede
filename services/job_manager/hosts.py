"""The job manager's own view of hosts, fed by the resource manager's events.

The resource manager is the one authority on hosts and their liveness; the job manager keeps what it
needs of them here (who owns a host, whether it may take jobs, its verify key) and never reads the
resource manager's tables to decide. The view is filled once at start from the resource manager's
read surface, then kept by ``host.changed`` and ``host.deleted`` events heard on a broadcast queue of
each process; a periodic re-read catches an event missed while the process was away.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.resources import HostChanged
from services.resource_manager.records import ResourceRecord


@dataclass(frozen=True, slots=True)
class Host:
    id: str
    user: str
    authorized: bool
    joined: bool
    responding: bool
    verify_key: str
    shared: bool
    last_response_time: float | None
    agent_started_at: float | None
    version: int
    """The version of the resource manager's record this entry reflects: the higher wins."""

    @property
    def takes_jobs(self) -> bool:
        return self.authorized and self.responding

    def takes_jobs_of(self, user: str) -> bool:
        """Whether this host may be chosen for ``user``'s job that names no host: the shared fleet
        takes anyone's, a host registered for a user only that user's."""
        return self.takes_jobs and (self.shared or self.user == user)


class HostView:
    def __init__(self) -> None:
        self._hosts: dict[str, Host] = {}
        self._deleted: set[str] = set()

    def get(self, resource_id: str) -> Host | None:
        return self._hosts.get(resource_id)

    def __contains__(self, resource_id: object) -> bool:
        return resource_id in self._hosts

    def was_deleted(self, resource_id: str) -> bool:
        return resource_id in self._deleted

    def ready(self) -> list[Host]:
        """Hosts that take jobs now."""
        return [host for host in self._hosts.values() if host.takes_jobs]

    def apply(self, event: HostChanged) -> tuple[Host | None, Host]:
        """Keep ``event`` unless this view holds a newer change; return the entry before and after."""
        before = self._hosts.get(event.resource_id)
        if event.resource_id in self._deleted or (before is not None and before.version > event.version):
            return before, before or _host(event)
        after = self._hosts[event.resource_id] = _host(event)
        return before, after

    def remove(self, resource_id: str) -> Host | None:
        self._deleted.add(resource_id)
        return self._hosts.pop(resource_id, None)

    def replace(self, host: Host) -> None:
        """A fresh read of one host: it wins over an older entry."""
        known = self._hosts.get(host.id)
        if known is None or known.version <= host.version:
            self._hosts[host.id] = host

    def replace_all(self, hosts: Iterable[Host]) -> None:
        """A fresh read of every host: it wins over entries older than it."""
        fresh = {host.id: host for host in hosts}
        for resource_id, known in self._hosts.items():
            if resource_id in fresh and known.version > fresh[resource_id].version:
                fresh[resource_id] = known
        self._hosts = fresh


def _host(event: HostChanged) -> Host:
    return Host(
        id=event.resource_id,
        user=event.user,
        authorized=event.authorized,
        joined=event.joined,
        responding=event.responding,
        verify_key=event.verify_key,
        shared=event.shared,
        last_response_time=event.last_response_time,
        agent_started_at=event.agent_started_at,
        version=event.version,
    )


def host_from_record(record: ResourceRecord) -> Host:
    """A host as the resource manager's records hold it."""
    return Host(
        id=record.id,
        user=record.user,
        authorized=record.authorized,
        joined=record.joined,
        responding=record.responding,
        verify_key=record.verify_key,
        shared=record.shared,
        last_response_time=record.last_response_time,
        agent_started_at=record.agent_started_at,
        version=record.version,
    )
