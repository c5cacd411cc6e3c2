"""All settings in one place, read from the environment (prefix-free names) or a .env file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Embedded default: database, broker and run files live here (not $HOME: hence the alias).
    home: Path = Field(Path(".gatlab"), validation_alias="GATLAB_HOME")
    database_url: str = ""  # default: sqlite:///<home>/gatlab.db
    broker_url: str = ""  # default: REDIS_URL if set, else sqla+sqlite:///<home>/broker.db
    redis_url: str = ""
    runs_dir: Path | None = None  # default: <home>/runs
    heartbeat_s: float = 2.0  # the worker writes a heartbeat at most this often
    stale_after_s: float = 60.0  # a running run silent this long is requeued
    max_retries: int = 2  # requeues of a stale run before it is marked failed
    # A run queued this long after it was sent, with no worker holding it, is sent again (its message
    # may be lost: a Redis restarted without persistence). A duplicate message is a no-op.
    resend_after_s: float = 6 * 3600
    visibility_timeout_s: int = 7 * 24 * 3600  # Redis redelivery: longer than the longest run
    queue: str = "gpu"

    # The lab server (docs/design.md section 7): auth on unless turned off; `gatlab up` on 127.0.0.1 turns it off.
    auth: bool = Field(True, validation_alias="GATLAB_AUTH")
    data_root: Path | None = Field(None, validation_alias="GATLAB_DATA_ROOT")  # with auth: <home>/data
    max_queued_per_user: int = Field(50, ge=1, validation_alias="GATLAB_MAX_QUEUED_PER_USER")
    max_epochs: int = Field(1000, ge=1, validation_alias="GATLAB_MAX_EPOCHS")
    max_batch_size: int = Field(4096, ge=1, validation_alias="GATLAB_MAX_BATCH_SIZE")
    max_request_bytes: int = Field(1_000_000, ge=1024, validation_alias="GATLAB_MAX_REQUEST_BYTES")
    session_hours: float = Field(24 * 14, gt=0, validation_alias="GATLAB_SESSION_HOURS")
    cookie_secure: bool = Field(False, validation_alias="GATLAB_COOKIE_SECURE")  # true behind HTTPS
    # Failed sign-ins allowed in 15 minutes, per user name from one client address, and per client
    # address (then 429): failures from elsewhere never lock a user out of their own machine.
    max_failed_sign_ins_user: int = Field(10, ge=1, validation_alias="GATLAB_MAX_FAILED_SIGNINS_PER_USER")
    max_failed_sign_ins_address: int = Field(
        50, ge=1, validation_alias="GATLAB_MAX_FAILED_SIGNINS_PER_ADDRESS"
    )
    # Host names this server answers to (DNS rebinding): comma-separated, `*` for any. Default: the
    # loopback names with auth off (embedded mode), any name with auth on (set it on a lab server).
    allowed_hosts: str = Field("", validation_alias="GATLAB_ALLOWED_HOSTS")
    # Who may evaluate a TorchScript model (a program: it runs in a sandbox, worker/gat/sandbox.py):
    # none, admins or all. Default: admins with auth on, all with it off. Safetensors weights of the
    # lab's architectures are data, open to every user.
    torchscript: Literal["", "none", "admins", "all"] = Field("", validation_alias="GATLAB_TORCHSCRIPT")
    # How a model from elsewhere is run: in bubblewrap's namespaces (bwrap), or, on a single-user
    # machine without bubblewrap, in a plain child process (none; still killed on cancel and limits).
    sandbox: Literal["bwrap", "none"] = Field("bwrap", validation_alias="GATLAB_SANDBOX")
    # Every job's wall-clock limit (training, a panel, an evaluation), and an evaluated model's memory.
    job_time_limit_s: float = Field(3 * 24 * 3600, gt=0, validation_alias="GATLAB_JOB_TIME_LIMIT_S")
    eval_memory_mb: int = Field(16384, ge=256, validation_alias="GATLAB_EVAL_MEMORY_MB")
    # Uploaded models: each user's allowance, and how long one no run references is kept.
    max_upload_mb_per_user: int = Field(2048, ge=1, validation_alias="GATLAB_MAX_UPLOAD_MB_PER_USER")
    upload_keep_s: float = Field(24 * 3600, ge=0, validation_alias="GATLAB_UPLOAD_KEEP_S")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve()}/gatlab.db"

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url or f"sqla+sqlite:///{self.home.resolve()}/broker.db"

    @property
    def runs_path(self) -> Path:
        return (self.runs_dir or self.home / "runs").resolve()

    @property
    def host_names(self) -> frozenset[str] | None:
        """The allowed Host names, lower case; None for any."""
        names = self.allowed_hosts or ("*" if self.auth else "127.0.0.1,localhost,::1")
        return (
            None
            if names.strip() == "*"
            else frozenset(n.strip().lower() for n in names.split(",") if n.strip())
        )

    @property
    def torchscript_policy(self) -> str:
        return self.torchscript or ("admins" if self.auth else "all")

    def may_run_torchscript(self, is_admin: bool | None) -> bool:
        """`is_admin` None: no user (auth off)."""
        policy = self.torchscript_policy
        return policy == "all" or (policy == "admins" and (is_admin is None or is_admin))

    @property
    def data_path(self) -> Path | None:
        """Where dataset files may be read from; None (anywhere) only in the embedded, auth-off mode."""
        if self.data_root is not None:
            return self.data_root.resolve()
        return (self.home / "data").resolve() if self.auth else None


@lru_cache
def get_settings() -> Settings:
    s = Settings()
    s.home.mkdir(parents=True, exist_ok=True)
    return s
