"""One settings object per process, read from ``SKYBUS_`` environment variables.

No URL set means the embedded default: the in-process bus and the SQLite store under ``data_dir``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKYBUS_", extra="ignore")

    amqp_url: str | None = None
    broker_admin_url: str | None = Field(
        default=None,
        description="the RabbitMQ management API with an administrator's credentials "
        "(http://user:pass@host:15672): the resource manager gives each agent a broker user of its own; "
        "unset, agents use the AMQP URL they are given",
    )
    amqp_ca: Path | None = Field(
        default=None, description="with an amqps:// URL: the CA file of RabbitMQ's certificate (default: system)"
    )
    mongo_url: str | None = None
    mongo_database: str = "skybus"
    data_dir: Path = Path("./data")
    namespace: str = Field(default="skybus", description="prefix of every exchange and queue name")

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(default=None, description="how agents reach the gateway; default http://host:port")
    access_log: bool = Field(default=True, description="a line per HTTP request on the gateway (skybus.access, INFO)")
    tls_cert: Path | None = Field(
        default=None, description="the gateway serves HTTPS with this certificate (PEM, intermediates after it)"
    )
    tls_key: Path | None = Field(default=None, description="the private key of tls_cert (PEM)")
    ca: Path | None = Field(
        default=None, description="the CA file an agent verifies the gateway's certificate with (default: system)"
    )
    metrics_port: int | None = Field(
        default=None, description="a manager run alone serves Prometheus /metrics on this port (0: any); off if unset"
    )

    request_timeout: float = 10.0
    heartbeat_interval: float = 5.0
    responding_timeout: float = 15.0
    liveness_write_interval: float = Field(
        default=30.0, description="seconds between stores of a responding host's last_response_time"
    )
    max_upload_bytes: int = 8 * 1024**3

    # Limits on what a client may hold open or store (admins are exempt from the per-user quotas).
    header_timeout: float = Field(
        default=15.0, description="seconds a connection may take to send a request's headers, or idle between requests"
    )
    body_idle_timeout: float = Field(default=30.0, description="seconds a request body may send nothing: then 408")
    body_min_rate: int = Field(
        default=1024, description="bytes a second a request body must average once it has taken body_idle_timeout"
    )
    max_decompressed_bytes: int = Field(
        default=64 * 1024**2, description="largest body a Content-Encoding (gzip, deflate, br) may expand to: 413"
    )
    max_active_jobs_per_user: int | None = Field(
        default=1000, description="pending and running jobs a user may have; more are refused with 429 (None: no limit)"
    )
    max_stored_bytes_per_user: int | None = Field(
        default=100 * 1024**3, description="bytes of data and content a user may store; more is refused with 429"
    )
    content_orphan_grace: float = Field(
        default=3600.0, description="seconds an uploaded blob may stay uncommitted before cleanup deletes it"
    )
    content_cleanup_interval: float = Field(default=600.0, description="seconds between orphan cleanup passes")

    # Jobs.
    kill_grace: float = Field(default=5.0, description="seconds between SIGTERM and SIGKILL of a job")
    lost_timeout: float = Field(default=30.0, description="a job whose host is silent this long is lost")
    start_timeout: float = Field(
        default=60.0, description="seconds after its dispatch within which an agent may start a job, and not after"
    )
    job_sweep_interval: float = 1.0
    max_parallel_tasks: int = Field(default=64, description="tasks an agent runs at once; more wait, accepted")

    # How the agent runs a job (services/agent/supervisor.py).
    unsandboxed_jobs: bool = Field(
        default=False, description="run users' jobs without bubblewrap when it is missing (insecure; logged)"
    )
    scratch_dir: Path | None = Field(
        default=None, description="where job work dirs, outputs and exit records live; default a tmpfs"
    )
    workdir_retention: float = Field(default=3600.0, description="seconds a finished job's work dir is kept")
    sandbox_uid: int = Field(default=65534, description="host uid (and gid) of sandboxed jobs when the agent is root")
    job_cpu_seconds: int | None = Field(default=None, description="CPU seconds a job may use (RLIMIT_CPU)")
    job_memory_bytes: int | None = Field(default=None, description="address space of each job process (RLIMIT_AS)")
    job_pids: int | None = Field(default=4096, description="processes a user's sandbox may hold (RLIMIT_NPROC)")
    job_output_bytes: int | None = Field(
        default=16 * 1024**3, description="largest file a job may write, its output included (RLIMIT_FSIZE)"
    )

    # Roles.
    role_attempts: int = Field(default=4, description="runs of a failing role script before its role is failed")
    role_retry_delay: float = Field(default=2.0, description="seconds before the first retry; doubled each time")
    role_sweep_interval: float = 1.0

    # Seed 003's live queries.
    node_timeout: float = Field(default=10.0, description="seconds the gateway waits for a node's agent to answer")
    allow_reboot: bool = Field(default=False, description="the agent may reboot its host when an admin asks")
    reboot_command: str = Field(default="systemctl reboot", description="how the agent reboots its host")
    container_tool: str = Field(default="bwrap", description="bubblewrap, which makes the agent's containers")
    container_uid: int = Field(
        default=65534, description="the unprivileged host uid (and gid) that is root in a container's user namespace"
    )
    privileged_containers: bool = Field(
        default=False,
        description="containers run as the host's root with no user namespace (capabilities still dropped): "
        "an operator's choice, for images that need real root",
    )

    # The agent's own identity (``skybus agent``).
    resource_id: str | None = None
    token: str | None = None
    join_token: str | None = Field(default=None, description="a cluster join token, instead of resource_id and token")
    registration_token: str | None = Field(
        default=None, description="with join_token: the token of this hostname's registration, to adopt it"
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both SKYBUS_TLS_CERT and SKYBUS_TLS_KEY (--tls-cert and --tls-key), or neither")
        if self.amqp_ca is not None and not (self.amqp_url or "").startswith("amqps://"):
            raise ValueError("SKYBUS_AMQP_CA is for an amqps:// SKYBUS_AMQP_URL: a plain amqp:// one is not encrypted")
        return self

    @property
    def embedded_bus(self) -> bool:
        return not self.amqp_url

    @property
    def gateway_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"
