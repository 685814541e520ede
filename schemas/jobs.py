"""Jobs (seed 001) and the eight proxy methods of seed 000 that carry them to agents and back.

A job's way through the fleet, one typed message per step:

* gateway → job manager: :class:`RunJob`, :class:`CancelJob`, :class:`DeleteJob` (request/reply)
* job manager → data manager: :class:`StageJobFiles` (grant the host the job's files, then ask it)
* data manager → agent (through the resource manager): :class:`StageInFiles`
* job manager → agent (through the resource manager): :class:`SubmitTask`, :class:`CancelTask`
* job manager → agent (straight to its queue): :class:`StageOutFile`, the job's ``output_files``
* agent → components (signed; verified by the manager that reads them):
  :class:`FilesStagedIn`, :class:`TaskAccepted`, :class:`TaskRunning`, :class:`TaskCompleted`,
  :class:`FileStagedOut`
* live output, only while someone follows a job: gateway → agent :class:`WatchOutput` (transient),
  agent → every gateway :class:`OutputChunk` (signed, transient, broadcast)
* resource manager → components: :class:`AgentCommandRefused` when the host is not responding
"""

from __future__ import annotations

import base64
import uuid
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from schemas.base import WireModel

ANSWER_INLINE_LIMIT = 64 * 1024  # characters of answer JSON sent in TaskCompleted rather than uploaded


class JobState(StrEnum):
    PENDING = "pending"
    STAGING = "staging"
    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})
ACTIVE_STATES = frozenset({JobState.STAGING, JobState.ACCEPTED, JobState.RUNNING})


# REST bodies (seed 001).


def canonical_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError("must be a UUID") from None


Uuid = Annotated[StrictStr, AfterValidator(canonical_uuid), Field(json_schema_extra={"format": "uuid"})]


MAX_RETRIES = 10
MAX_OUTPUT_FILES = 64


def relative_glob(pattern: str) -> str:
    """A name or glob inside the job's working directory: not absolute, no ``..``, no NUL."""
    if not pattern or len(pattern) > 1024:
        raise ValueError("must be a name or glob of 1 to 1024 characters")
    if "\0" in pattern:
        raise ValueError("must not contain a NUL byte")
    if pattern.startswith("/"):
        raise ValueError(f"{pattern!r} is absolute: names are relative to the job's working directory")
    if ".." in pattern.split("/"):
        raise ValueError(f"{pattern!r} leaves the job's working directory ('..')")
    return pattern


OutputGlob = Annotated[StrictStr, AfterValidator(relative_glob)]


class RunJobBody(BaseModel):
    """``POST /api/job/run``."""

    model_config = ConfigDict(extra="forbid")

    command: Annotated[StrictStr, Field(min_length=1, max_length=65536)]
    binary: Uuid | None = None
    input_files: Annotated[list[Uuid], Field(max_length=256)] = []
    ttl: Annotated[StrictInt, Field(gt=0, le=10 * 365 * 24 * 3600)] | None = None
    resource_id: Uuid | None = None
    hostname: Annotated[StrictStr, Field(min_length=1, max_length=253)] | None = None
    privileged: bool = False
    """Run unsandboxed as the agent's user: for admins only (the job manager refuses others)."""
    retries: Annotated[StrictInt, Field(ge=0, le=MAX_RETRIES)] = 0
    """How many times a job that ends ``lost`` is run again, elsewhere when another host responds:
    the user asserts the command may run more than once (its lost attempt may have run, or still run)."""
    output_files: Annotated[list[OutputGlob], Field(max_length=MAX_OUTPUT_FILES)] = []
    """Names or globs (``*.csv``, ``out/**/*.png``) relative to the job's working directory: once the
    command ended, each match is stored as a data file of the job's user (``outputs`` in job_info)."""

    @field_validator("command")
    @classmethod
    def _no_nul(cls, command: str) -> str:
        if "\0" in command:
            raise ValueError("must not contain a NUL byte")
        return command


class JobIdBody(BaseModel):
    """``POST /api/job/cancel`` and ``DELETE /api/job/delete``."""

    model_config = ConfigDict(extra="forbid")

    job_id: Uuid


class JobCreated(BaseModel):
    job_id: str


class JobInfo(BaseModel):
    """``GET /api/job/job_info/{job_id}``: the seed's ``state`` and ``answer_id``, and what a user needs."""

    job_id: str
    state: JobState
    answer_id: str | None
    command: str
    user: str
    resource_id: str | None
    binary: str | None
    input_files: list[str]
    ttl: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    error: str | None
    history: list[dict[str, str | int]]
    """Each step's ``state`` and ``at``; with retries, a lost attempt's ``lost`` step and the next
    ``pending`` step carry their ``attempt`` (1, 2, …)."""
    attempt: int = 1
    retries: int = 0
    stdout_id: str | None = None
    """The data file of the job's whole raw stdout, once it ended (none when it printed nothing)."""
    stderr_id: str | None = None
    output_files: list[str] = []
    outputs: dict[str, str] = {}
    """Each staged-out file (its path in the working directory) and its data id."""
    output_errors: dict[str, str] = {}
    """Each of ``output_files`` that gave no file, and why (no match, an upload that failed)."""


class JobSummary(BaseModel):
    """One row of ``GET /api/list_jobs?detail=1``: what a person scans a list for."""

    job_id: str
    state: JobState
    command: str
    user: str
    resource_id: str | None
    hostname: str | None
    exit_code: int | None
    created_at: str
    finished_at: str | None


class JobList(BaseModel):
    job_ids: list[str]
    next_cursor: str | None = None
    jobs: list[JobSummary] | None = None
    """With ``detail=1`` only."""


# Commands to the job manager.


class RunJob(WireModel):
    message_type: ClassVar[str] = "job.run"

    job_id: str
    user: str
    command: str
    binary: str | None = None
    input_files: list[str] = []
    ttl: int | None = None
    resource_id: str | None = None
    hostname: str | None = None
    origin: str | None = None
    """Who asked, when not a user's REST call (``role-manager``): the job manager tells it when the
    job ends with :class:`JobFinished`."""
    privileged: bool = False
    retries: int = 0
    output_files: list[str] = []


class CancelJob(WireModel):
    message_type: ClassVar[str] = "job.cancel"

    job_id: str


class DeleteJob(WireModel):
    message_type: ClassVar[str] = "job.delete"

    job_id: str


# The job manager asks the data manager to put a job's files on its host.


class StagedFile(WireModel):
    """A file to put in the job's working directory: content ``data_id`` saved as ``name``."""

    data_id: str
    name: str
    executable: bool = False


class StageJobFiles(WireModel):
    """The job manager's request to the content manager, which owns the files and so names each one
    (its stored name, else its id) in the ``StageInFiles`` it sends on to the agent."""

    message_type: ClassVar[str] = "data.stage_job_files"

    job_id: str
    resource_id: str
    data_ids: list[str]
    binary: str | None = None  # the one of ``data_ids`` staged executable


# Seed 000's proxy methods: commands that the resource manager forwards to one agent.


class StageInFiles(WireModel):
    message_type: ClassVar[str] = "agent.stage_in_files"

    job_id: str
    files: list[StagedFile]


class SubmitTask(WireModel):
    message_type: ClassVar[str] = "agent.submit_task"

    job_id: str
    command: str
    deadline: float | None = None
    """Epoch seconds after which the task is stopped (the job's ttl)."""
    privileged: bool = False
    """Run unsandboxed as the agent's own user (an admin's job, a role script)."""
    user: str | None = None
    """Whose job it is: jobs of one user share a sandbox on the host, never another user's."""
    start_by: float | None = None
    """Epoch seconds after which the agent must not start the task (it reports it lost instead): the
    job manager may then give the job up without the risk that it still runs here."""
    stage_out: bool = False
    """The job has output files: keep its working directory until :class:`StageOutFile` came."""


class CancelTask(WireModel):
    message_type: ClassVar[str] = "agent.cancel_task"

    job_id: str
    reason: str = "cancelled"


class StageOutFile(WireModel):
    """Seed 000's *stage out file*: upload what matches ``patterns`` in the task's working directory
    as data files of the job's user. Idempotent: asked again, the agent answers what it stored."""

    message_type: ClassVar[str] = "agent.stage_out_file"

    job_id: str
    patterns: list[str]


class WatchOutput(WireModel):
    """A gateway follows a task's output: the agent publishes :class:`OutputChunk` from these offsets
    for ``lease`` seconds (renewed by asking again), then stops. Transient: a lost one is asked again."""

    message_type: ClassVar[str] = "agent.watch_output"

    job_id: str
    stdout_from: Annotated[int, Field(ge=0)] = 0
    stderr_from: Annotated[int, Field(ge=0)] = 0
    lease: Annotated[float, Field(gt=0, le=300)] = 30.0


AgentCommand = StageInFiles | SubmitTask | CancelTask | StageOutFile | WatchOutput
AGENT_COMMANDS: tuple[type[AgentCommand], ...] = (StageInFiles, SubmitTask, CancelTask, StageOutFile, WatchOutput)


# Seed 000's proxy methods: events agents send, republished once their signature checks out.


class FilesStagedIn(WireModel):
    message_type: ClassVar[str] = "task.files_staged_in"

    job_id: str
    ok: bool
    error: str | None = None


class TaskAccepted(WireModel):
    message_type: ClassVar[str] = "task.accepted"

    job_id: str
    at: float


class TaskRunning(WireModel):
    message_type: ClassVar[str] = "task.running"

    job_id: str
    at: float
    pid: int
    accepted_at: float | None = None
    """Set when the task started as soon as it was accepted: one message for both steps."""


class TaskCompleted(WireModel):
    message_type: ClassVar[str] = "task.completed"

    job_id: str
    at: float
    outcome: JobState
    """succeeded, failed or cancelled."""
    exit_code: int | None = None
    answer_id: str | None = None
    error: str | None = None
    accepted_at: float | None = None
    started_at: float | None = None
    """Set for a task that ended before its acceptance or start was reported: one message for all."""
    answer: str | None = Field(default=None, max_length=ANSWER_INLINE_LIMIT)
    """A small answer travels here instead of being uploaded; the job manager has it stored."""
    stdout_id: str | None = None
    """The data files of the task's raw stdout and stderr (None when it wrote nothing there)."""
    stderr_id: str | None = None


class FileStagedOut(WireModel):
    """Seed 000's *file staged out*: what :class:`StageOutFile` stored, for every pattern at once."""

    message_type: ClassVar[str] = "task.file_staged_out"

    job_id: str
    files: dict[str, str] = {}
    """Path in the working directory → data id."""
    errors: dict[str, str] = {}
    """Pattern (or path) → why it gave no data file."""


OUTPUT_CHUNK_LIMIT = 64 * 1024  # raw bytes of output in one OutputChunk


class OutputStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class OutputChunk(WireModel):
    """Bytes a running task wrote, from ``offset`` in its ``stream``: ``data`` is base64 (the payload
    is JSON-shaped; output is bytes, never decoded). ``size`` is how long the stream was when read,
    so a reader knows when it has all there was. Signed by the agent, transient, to every gateway."""

    message_type: ClassVar[str] = "job.output"

    job_id: str
    stream: OutputStream
    offset: Annotated[int, Field(ge=0)]
    data: Annotated[str, Field(max_length=OUTPUT_CHUNK_LIMIT * 4 // 3 + 4)] = ""
    size: Annotated[int, Field(ge=0)] = 0

    def raw(self) -> bytes:
        return base64.b64decode(self.data)


class JobFinished(WireModel):
    """A job that has an ``origin`` ended: for the manager that asked for it."""

    message_type: ClassVar[str] = "job.finished"

    job_id: str
    origin: str
    state: JobState
    exit_code: int | None = None
    answer_id: str | None = None
    error: str | None = None


class StagingRefused(WireModel):
    """The data manager did not stage a job's files (an unknown id, another user's file): the job fails."""

    message_type: ClassVar[str] = "job.staging_refused"

    job_id: str
    error: str


class JobChanged(WireModel):
    """A job was created, moved to another state, or deleted: broadcast to every gateway, which wakes
    its long polls and event streams from it (it reads the store once, when a waiter wakes)."""

    message_type: ClassVar[str] = "job.changed"

    job_id: str
    user: str
    state: JobState
    at: float
    exit_code: int | None = None
    answer_id: str | None = None
    deleted: bool = False


class AgentCommandRefused(WireModel):
    """The resource manager did not forward a command: its host is unknown or not responding."""

    message_type: ClassVar[str] = "agent.command_refused"

    resource_id: str
    command_type: str
    job_id: str | None
    reason: str


JOB_MESSAGES: tuple[type[WireModel], ...] = (
    RunJob,
    CancelJob,
    DeleteJob,
    StageJobFiles,
    *AGENT_COMMANDS,
    FilesStagedIn,
    TaskAccepted,
    TaskRunning,
    TaskCompleted,
    FileStagedOut,
    OutputChunk,
    AgentCommandRefused,
    JobFinished,
    JobChanged,
    StagingRefused,
)
