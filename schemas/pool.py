"""Seed 003, the resource pool: nodes, their memory, reboot, containers, jobs and processes.

A node is a resource of seed 000 (and a host of seed 002) with the same id. ``GET /nodes`` reads
the registry; every other call is a live query answered by the node's agent:

* gateway → resource manager (request/reply): one of :data:`NODE_QUERIES`, with the node's id as
  the envelope's ``resource_id``;
* resource manager → agent: the same envelope, forwarded untouched with its reply address (or a
  :class:`~schemas.base.Rejected` at once: 404 unknown node, 409 not responding);
* agent → gateway: one of the answers below, :class:`~schemas.base.Accepted` or
  :class:`~schemas.base.Rejected`, in an envelope the agent signed with its host key.

The answers' field names are the seed's (``usedPercent``, ``startTime``, ``hostNetworking``), so a
REST response is the answer's own dump.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictStr

from schemas.base import WireModel

CONTAINER_LOG_CHUNK = 64 * 1024  # raw bytes of a container job's log in one answer
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # the kernel keeps at most 64 bytes
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT = re.compile(r"^(\d{1,5}):(\d{1,5})(/(tcp|udp))?$")


def check_container_id(text: str) -> str:
    if not CONTAINER_ID.match(text):
        raise ValueError("a container id is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return text


def _hostname(text: str) -> str:
    if text and not _HOSTNAME.match(text):
        raise ValueError("a hostname is 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return text


def _absolute(text: str) -> str:
    if not text.startswith("/") or "\0" in text or ".." in text.split("/"):
        raise ValueError(f"{text!r} is not an absolute path without '..'")
    return text


def _pwd(text: str) -> str:
    return _absolute(text) if text else text


def _env_entry(text: str) -> str:
    name, equals, _ = text.partition("=")
    if not equals or not _ENV_NAME.match(name) or "\0" in text:
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return text


def parse_mount(text: str) -> tuple[str, str, bool]:
    """``/host/path:/container/path`` with an optional ``:ro`` (or ``:rw``): source, target, read-only."""
    parts = text.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        source, target, mode = parts
    elif len(parts) == 2:
        (source, target), mode = parts, "rw"
    else:
        raise ValueError(f"{text!r} is not /host/path:/container/path[:ro]")
    return _absolute(source), _absolute(target), mode == "ro"


def _mount(text: str) -> str:
    parse_mount(text)
    return text


def _port(text: str) -> str:
    match = _PORT.match(text)
    if not match or not all(0 < int(match.group(n)) < 65536 for n in (1, 2)):
        raise ValueError(f"{text!r} is not HOSTPORT:CONTAINERPORT[/tcp|/udp]")
    return text


ContainerId = Annotated[StrictStr, AfterValidator(check_container_id)]
PathText = Annotated[StrictStr, Field(max_length=4096)]
Mount = Annotated[StrictStr, Field(max_length=8200), AfterValidator(_mount)]
Port = Annotated[StrictStr, AfterValidator(_port)]


# The seed's payloads (REST bodies that also travel inside the queries).


class ProcessSpec(WireModel):
    """A process to start in a container: ``POST .../processes`` and each of ``initprocesses``.

    ``name`` is the program (a path in the container, or a name looked up on its PATH), ``pwd`` the
    working directory in the container (``""``: ``/``), ``env`` entries are ``NAME=VALUE``.
    """

    name: Annotated[StrictStr, Field(min_length=1, max_length=4096)]
    pwd: Annotated[PathText, AfterValidator(_pwd)] = ""
    args: Annotated[list[Annotated[StrictStr, Field(max_length=131072)]], Field(max_length=4096)] = []
    env: Annotated[list[Annotated[StrictStr, AfterValidator(_env_entry)]], Field(max_length=1024)] = []


class NicConfig(WireModel):
    dhcp: StrictBool = False
    cidr: StrictStr | None = None
    gateway: StrictStr | None = None
    dns: list[StrictStr] = []


class Nic(WireModel):
    """A network interface the seed's container payload asks for (``vlan``, ``vxlan``, ``bridge``…)."""

    type: StrictStr
    id: StrictStr = ""
    config: NicConfig | None = None
    hwaddr: StrictStr | None = None


class ContainerSpec(WireModel):
    """``POST /nodes/{id}/containers``: the seed's payload.

    ``flist`` names the root filesystem: a tarball stored in the content manager (its data id, or
    its seed 004 resource path), or ``""`` for the host's own system directories, read-only.
    ``filesystems`` are bind mounts ``/host/path:/container/path[:ro]``; ``ports`` are
    ``HOSTPORT:CONTAINERPORT``. ``hostname`` defaults to the id.
    """

    id: ContainerId
    hostname: Annotated[StrictStr, AfterValidator(_hostname)] = ""
    flist: PathText = ""
    nics: Annotated[list[Nic], Field(max_length=64)] = []
    filesystems: Annotated[list[Mount], Field(max_length=256)] = []
    hostNetworking: StrictBool = False
    initprocesses: Annotated[list[ProcessSpec], Field(max_length=64)] = []
    ports: Annotated[list[Port], Field(max_length=1024)] = []


# Live queries: gateway → resource manager → the node's agent.


class NodeQuery(WireModel):
    """What every live query carries. The envelope's ``resource_id`` is the node."""

    deadline: float
    """Epoch seconds after which the agent does not act on it: whoever asked has had a 504."""


class ReadMemory(NodeQuery):
    message_type: ClassVar[str] = "node.read_memory"


class RebootNode(NodeQuery):
    message_type: ClassVar[str] = "node.reboot"


class ListContainers(NodeQuery):
    message_type: ClassVar[str] = "node.list_containers"


class CreateContainer(NodeQuery):
    message_type: ClassVar[str] = "node.create_container"

    spec: ContainerSpec
    rootfs_id: str | None = None
    """The data id of the root filesystem tarball that ``spec.flist`` names (granted to the node)."""


class ContainerQuery(NodeQuery):
    """A live query about one container of the node."""

    container_id: str


class DeleteContainer(ContainerQuery):
    message_type: ClassVar[str] = "node.delete_container"


class ListContainerJobs(ContainerQuery):
    message_type: ClassVar[str] = "node.list_container_jobs"


class KillContainerJob(ContainerQuery):
    message_type: ClassVar[str] = "node.kill_container_job"

    job_id: str


class ReadContainerJobLog(ContainerQuery):
    """A container job's log (its stdout and stderr together, as the process wrote them) from
    ``offset``: at most ``limit`` bytes. Kept after the job ends, until its container goes."""

    message_type: ClassVar[str] = "node.read_container_job_log"

    job_id: str
    offset: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(gt=0, le=CONTAINER_LOG_CHUNK)] = CONTAINER_LOG_CHUNK


class ListContainerProcesses(ContainerQuery):
    message_type: ClassVar[str] = "node.list_container_processes"


class StartContainerProcess(ContainerQuery):
    message_type: ClassVar[str] = "node.start_container_process"

    process: ProcessSpec


NODE_QUERIES: tuple[type[NodeQuery], ...] = (
    ReadMemory,
    RebootNode,
    ListContainers,
    CreateContainer,
    DeleteContainer,
    ListContainerJobs,
    KillContainerJob,
    ListContainerProcesses,
    StartContainerProcess,
    ReadContainerJobLog,
)


# Answers: agent → gateway, signed. Field names and units are the seed's.


class NodeMemory(WireModel):
    """Bytes, read with psutil on the node (``usedPercent`` is ``used / total``, as the seed's sample)."""

    message_type: ClassVar[str] = "node.memory"

    active: int
    available: int
    buffers: int
    cached: int
    free: int
    inactive: int
    total: int
    used: int
    usedPercent: float
    wired: int


class ContainerView(WireModel):
    flist: str
    hostname: str
    id: str
    status: str
    """``running``, or ``halted`` once its namespaces are gone (a host reboot, a kill)."""


class NodeContainers(WireModel):
    message_type: ClassVar[str] = "node.containers"

    containers: list[ContainerView]


class ContainerJob(WireModel):
    id: str
    startTime: int
    """Milliseconds since the epoch."""


class ContainerJobLog(WireModel):
    """Bytes of a container job's log from the offset asked (``data``: base64, never decoded);
    ``size``: the log's length when read; ``running``: whether the job ran before it was read (so a
    job not running has nothing past ``size``)."""

    message_type: ClassVar[str] = "node.container_job_log"

    data: Annotated[str, Field(max_length=CONTAINER_LOG_CHUNK * 4 // 3 + 4)] = ""
    size: Annotated[int, Field(ge=0)] = 0
    running: bool = False

    def raw(self) -> bytes:
        return base64.b64decode(self.data)


class ContainerJobs(WireModel):
    message_type: ClassVar[str] = "node.container_jobs"

    jobs: list[ContainerJob]


class CpuTimes(WireModel):
    """Seconds of CPU time of one process. Linux accounts a process's ``user``, ``system`` and
    ``iowait``; the seed's other fields are host-wide counters and are 0 here, as in its sample."""

    guestnice: float = 0.0
    idle: float = 0.0
    iowait: float = 0.0
    irq: float = 0.0
    nice: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0
    stolen: float = 0.0
    system: float = 0.0
    user: float = 0.0


class ProcessView(WireModel):
    cmdline: str
    cpu: CpuTimes
    pid: int
    """As the container sees it (its own PID namespace), not the host's."""
    rss: int
    swap: int
    vms: int


class ContainerProcesses(WireModel):
    message_type: ClassVar[str] = "node.container_processes"

    processes: list[ProcessView]


NODE_ANSWERS: tuple[type[WireModel], ...] = (
    NodeMemory,
    NodeContainers,
    ContainerJobs,
    ContainerProcesses,
    ContainerJobLog,
)


# REST only.


class NodeView(BaseModel):
    """An item of ``GET /nodes``: ``running`` while the node's agent heartbeats, else ``halted``."""

    hostname: str
    id: str
    status: str
