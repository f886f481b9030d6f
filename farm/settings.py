"""Farm settings, from the environment only: every ``FARM_*`` variable is declared here (``VARS``,
with its default and meaning) and read in one place, ``load_settings``, into one typed value,
``Settings``. Each entry point reads it once at start (``current``; ``run_command`` makes a
malformed setting its one-line error) and passes it down; no module reads the environment when
it is imported.

Secrets may be given directly or through a file named by ``<VAR>_FILE`` (Docker secrets), not both:
``REDIS_PASSWORD``/``REDIS_PASSWORD_FILE``, ``AWS_ACCESS_KEY_ID``/``AWS_ACCESS_KEY_ID_FILE``,
``AWS_SECRET_ACCESS_KEY``/``AWS_SECRET_ACCESS_KEY_FILE``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

from farm.secrets import SecretError, read_secret


class ConfigError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Var:
    """One ``FARM_*`` environment variable: its default ("" = unset) and what it means."""

    name: str
    default: str
    meaning: str


# Every FARM_* variable the code reads (``python -m farm settings`` prints this table;
# tests/farm/test_settings.py checks docs/configuration.md holds it and that no module reads a
# FARM_* variable but through this one).
VARS = {v.name: v for v in (
    Var("FARM_REDIS_URL", "redis://127.0.0.1:6379/0",
        "broker, result backend and farm state (`redis://host:6379/0`)"),
    Var("FARM_STORAGE_URL", "farm-output", "`s3://bucket/prefix` or a local folder"),
    Var("FARM_S3_ENDPOINT", "", "S3-compatible endpoint URL (empty for AWS)"),
    Var("FARM_MODELS", "", "ShapeNetCore.v2-layout model root (with `FARM_TEXTURES`, both or "
        "neither: the procedural pack)"),
    Var("FARM_TEXTURES", "", "folder holding `texture/` and `skybox/`"),
    Var("FARM_DENYLIST", "", "denylist file from `farm assets check` (scheduler and workers)"),
    Var("FARM_SEED", "2021", "master seed"),
    Var("FARM_CONFIGS", "", "preset folder (default: the repository's `configs/`)"),
    Var("FARM_CACHE_DIR", "", "the procedural pack and model bounds (default "
        "`$XDG_CACHE_HOME/bl30k-farm`, i.e. `~/.cache/bl30k-farm`)"),
    Var("FARM_CALIBRATION", "", "an extra calibration file for `scheduler plan` (on top of "
        "`configs/calibration.json`)"),
    Var("FARM_GPUS", "auto", "`auto` (nvidia-smi: indices and UUIDs), `none`, or indices / UUIDs "
        "`0,1,2`, `GPU-...`"),
    Var("FARM_GPU_CLAIM_TIMEOUT", "300", "seconds a starting worker tries to claim a GPU (Redis "
        "away, every GPU held) before it exits with code 69"),
    Var("FARM_NODE_NAME", "", "this host in logs and metrics, and in the lease keys of GPUs known "
        "only by index (default: the host name)"),
    Var("FARM_SCRATCH", "/tmp/farm-scratch", "scratch folder for renders before upload"),
    Var("FARM_SCRATCH_RESERVE_MB", "64", "free scratch kept beyond a render's own need"),
    Var("FARM_SCRATCH_SIZE_MB", "8192", "the workers' scratch size (compose's scratch tmpfs: 8 GiB "
        "by default); `enqueue` refuses a spec whose estimated render (and the reserve) exceeds it"),
    Var("FARM_STAGING_MAX_AGE", "3600", "seconds after which another video's untouched, unleased "
        "staging folder is deleted at task start"),
    Var("FARM_SCRATCH_FULL_LIMIT", "3", "scratch-full hand-backs in a row before a worker stops "
        "consuming"),
    Var("FARM_SCRATCH_FULL_PAUSE", "10", "seconds a worker pauses after a scratch-full hand-back"),
    Var("FARM_WORKER_FAILURE_LIMIT", "3", "different videos failing in a row on one worker (crash, "
        "time limit, missing asset) before it stops consuming and gives them back"),
    Var("FARM_UNHEALTHY_FILE", "", "written by a worker that stopped consuming; the compose "
        "healthcheck fails while it exists"),
    Var("FARM_SHUTDOWN_FORCE_S", "60", "a worker stopping itself (lost GPU lease) exits by force "
        "after this many seconds"),
    Var("FARM_MAX_DELIVERIES", "3", "lost deliveries / crashes of one video before it is failed"),
    Var("FARM_MAX_RETRIES", "8", "transient-error (storage, broker) retries per delivery"),
    Var("FARM_RETRY_BACKOFF", "5", "first transient-error retry delay, seconds (doubling)"),
    Var("FARM_RETRY_BACKOFF_MAX", "600", "longest transient-error retry delay, seconds"),
    Var("FARM_LEASE_TTL", "90", "seconds a video or GPU lease survives without heartbeat"),
    Var("FARM_VISIBILITY_TIMEOUT", "", "override the Redis visibility timeout (default 2x the "
        "longest hard limit); `enqueue` refuses a spec whose hard limit exceeds it"),
    Var("FARM_SHORT_VISIBILITY_OK", "0", "`1` lets `enqueue` accept specs longer than the "
        "visibility timeout (the chaos run's 20 s timeout forces redeliveries on purpose; the "
        "lease de-duplicates them); never in production"),
    Var("FARM_STREAM_UPLOAD", "1", "`1`: upload each frame while the rest of the video renders; "
        "`0`: after it"),
    Var("FARM_UPLOAD_ARCHIVE", "0", "`1`: upload a video's frames and extra outputs as one tar "
        "object (`videos/<video>.tar`, WebDataset member names; 4 objects a video instead of 2 a "
        "frame + 3; no streaming while it renders); `0`: one object per file"),
    Var("FARM_RENDERS_PER_GPU", "", "videos rendered at once per worker / GPU (its Celery "
        "concurrency, default 1; compose 2; `worker render`: 2 on a GPU, 1 on a CPU)"),
    Var("FARM_RENDER_PROCESS", "server", "`server` (long-lived render processes) or `oneshot` (a "
        "fresh process per video, the previous design)"),
    Var("FARM_RENDER_MAX_VIDEOS", "50", "replace a render process after this many videos"),
    Var("FARM_RENDER_MAX_GROWTH_MB", "1024", "replace a render process whose memory grew this "
        "much above its size after its first video"),
    Var("FARM_RENDER_MAX_RSS_MB", "auto", "kill a render process whose video's peak resident "
        "memory exceeds this many MB; `auto`: 80 % of the worker's memory (its container's limit, "
        "else the host's shared by one worker per GPU) per concurrent render; `off`: no cap"),
    Var("FARM_RENDER_SANDBOX", "1", "`1`: render processes confine their file reads with Landlock "
        "(no secrets, homes, /tmp); `0`: off"),
    Var("FARM_RENDER_BOOT_TIMEOUT", "300", "seconds a render process may take to load Blender"),
    Var("FARM_KERNEL_CACHE", "", "GPU kernel caches (OptiX, CUDA JIT) of the host's workers "
        "(default `$FARM_CACHE_DIR/kernels`; image: `/kernel-cache`)"),
    Var("FARM_WARMUP", "auto", "the warm-up before consuming: `auto`, `full`, `off`"),
    Var("FARM_WARMUP_DEVICES", "AUTO", "devices the warm-up renders on (`AUTO`, `CPU`, `CUDA`, "
        "`OPTIX`, comma-separated)"),
    Var("FARM_HEALTH_FILE", "", "written once the worker is warm and consumes (default "
        "`$FARM_SCRATCH/worker-ready.json`)"),
    Var("FARM_AWS_CLI", "", "benchmarks only: the `aws` executable the upload benchmark compares "
        "against (default `.venv-aws/bin/aws`)"),
)}


class _Environment:
    """Typed reads of the declared variables from one snapshot of the environment."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def given(self, name: str) -> str:
        """What the environment gives the variable, stripped ("" when unset)."""
        if name not in VARS:
            raise KeyError(f"{name} is not declared in farm/settings.py VARS")
        return self.environ.get(name, "").strip()

    def text(self, name: str) -> str:
        """The variable's value (stripped), or its default when unset or empty."""
        return self.given(name) or VARS[name].default

    def number(self, name: str) -> float:
        raw = self.text(name)
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None

    def integer(self, name: str) -> int:
        raw = self.text(name)
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None

    def optional_integer(self, name: str) -> int | None:
        return self.integer(name) if self.given(name) else None

    def flag(self, name: str) -> bool:
        return self.text(name) not in ("", "0", "false", "no", "off")

    def path(self, name: str) -> Path | None:
        return Path(self.text(name)) if self.text(name) else None

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(name).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                              f"not {value!r}")
        return value


def run_command(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code (a ``python -m`` entry point), the settings read first: a
    malformed one is one ``error:`` line and exit 2."""
    try:
        current()
        code = main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def markdown_table() -> str:
    """docs/configuration.md's table of every variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var in VARS.values():
        default = f"`{var.default}`" if var.default else ""
        rows.append(f"| `{var.name}` | {default} | {var.meaning} |")
    return "\n".join(rows) + "\n"


def secret(name: str) -> str | None:
    """``$NAME``, or the contents of the file named by ``$NAME_FILE``; both set is an error
    (farm/secrets.py says why)."""
    try:
        return read_secret(name)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    """Every ``FARM_*`` variable, typed: read once by an entry point (``load_settings``,
    ``current``) and passed down. Field comments name the variable; ``VARS`` says more."""

    # the farm: queue, storage, assets, seed
    redis_url: str
    storage_url: str
    s3_endpoint: str | None
    models: Path | None
    textures: Path | None
    denylist: Path | None  # assets spec generation skips (python -m farm assets check)
    seed: int
    configs: Path  # FARM_CONFIGS: the preset folder
    cache_dir: Path  # FARM_CACHE_DIR
    calibration: Path | None  # FARM_CALIBRATION
    # deliveries and retries
    max_deliveries: int  # deliveries of one video (worker lost, crash) before it is marked failed
    max_retries: int  # transient-error retries (storage, broker) per delivery
    retry_backoff: int  # seconds, doubling
    retry_backoff_max: int  # seconds
    lease_ttl: int  # seconds a video/GPU lease lives without a heartbeat
    visibility_timeout: int | None  # FARM_VISIBILITY_TIMEOUT; None: 2x the longest hard limit
    short_visibility_ok: bool
    stream_upload: bool  # upload each frame while the rest of the video renders
    upload_archive: bool  # a video's files as one tar object
    # scratch
    scratch: Path
    scratch_reserve_mb: int
    scratch_size_mb: int
    staging_max_age: float
    scratch_full_limit: int
    scratch_full_pause: float
    # the worker
    gpus: str  # FARM_GPUS: auto, none, or indices / UUIDs
    gpu_claim_timeout: float
    node_name: str  # FARM_NODE_NAME, else the host name
    worker_failure_limit: int
    unhealthy_file: Path | None
    shutdown_force_s: float
    renders_per_gpu: int | None  # None: the worker's default (2 on a GPU, 1 on a CPU)
    warmup: str  # auto, full or off
    warmup_devices: str
    health_file: Path
    # render processes
    render_process: str  # server or oneshot
    render_max_videos: int
    render_max_growth_mb: float
    render_max_rss_mb: float | str | None  # MB, "auto" or None (off)
    render_sandbox: bool
    render_boot_timeout: float
    kernel_cache: Path
    # benchmarks
    aws_cli: str
    # the declared variables the environment sets, as given (a Slurm job's env file copies them)
    given: Mapping[str, str] = field(default_factory=dict)

    @property
    def redis_url_with_password(self) -> str:
        """The Redis URL with REDIS_PASSWORD inserted when the URL carries none. A user name in
        the URL (``redis://worker@host:6379/0``) is kept: Redis ACL users; ``rediss://`` with
        ``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem`` is Redis over TLS."""
        password = secret("REDIS_PASSWORD")
        parts = urlsplit(self.redis_url)
        if not password or parts.password:
            return self.redis_url
        host = parts.netloc.rsplit("@", 1)[-1]
        user = quote(parts.username or "", safe="")
        return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


REPOSITORY_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting from ``environ`` (default: this process's environment), checked: a
    malformed one is a ``ConfigError`` naming the variable."""
    environ = os.environ if environ is None else environ
    env = _Environment(environ)
    models, textures = env.path("FARM_MODELS"), env.path("FARM_TEXTURES")
    if bool(models) != bool(textures):
        raise ConfigError("set both FARM_MODELS and FARM_TEXTURES, or neither (procedural pack)")
    cache_dir = env.path("FARM_CACHE_DIR") or Path(
        environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "bl30k-farm"
    scratch = Path(env.text("FARM_SCRATCH"))
    rss = env.text("FARM_RENDER_MAX_RSS_MB").lower()
    return Settings(
        redis_url=env.text("FARM_REDIS_URL"),
        storage_url=env.text("FARM_STORAGE_URL"),
        s3_endpoint=env.text("FARM_S3_ENDPOINT") or None,
        models=models,
        textures=textures,
        denylist=env.path("FARM_DENYLIST"),
        seed=env.integer("FARM_SEED"),
        configs=env.path("FARM_CONFIGS") or REPOSITORY_CONFIGS,
        cache_dir=cache_dir,
        calibration=env.path("FARM_CALIBRATION"),
        max_deliveries=env.integer("FARM_MAX_DELIVERIES"),
        max_retries=env.integer("FARM_MAX_RETRIES"),
        retry_backoff=env.integer("FARM_RETRY_BACKOFF"),
        retry_backoff_max=env.integer("FARM_RETRY_BACKOFF_MAX"),
        lease_ttl=env.integer("FARM_LEASE_TTL"),
        visibility_timeout=env.optional_integer("FARM_VISIBILITY_TIMEOUT"),
        short_visibility_ok=env.flag("FARM_SHORT_VISIBILITY_OK"),
        stream_upload=env.flag("FARM_STREAM_UPLOAD"),
        upload_archive=env.flag("FARM_UPLOAD_ARCHIVE"),
        scratch=scratch,
        scratch_reserve_mb=env.integer("FARM_SCRATCH_RESERVE_MB"),
        scratch_size_mb=env.integer("FARM_SCRATCH_SIZE_MB"),
        staging_max_age=env.number("FARM_STAGING_MAX_AGE"),
        scratch_full_limit=env.integer("FARM_SCRATCH_FULL_LIMIT"),
        scratch_full_pause=env.number("FARM_SCRATCH_FULL_PAUSE"),
        gpus=env.text("FARM_GPUS"),
        gpu_claim_timeout=env.number("FARM_GPU_CLAIM_TIMEOUT"),
        node_name=env.text("FARM_NODE_NAME") or socket.gethostname(),
        worker_failure_limit=env.integer("FARM_WORKER_FAILURE_LIMIT"),
        unhealthy_file=env.path("FARM_UNHEALTHY_FILE"),
        shutdown_force_s=env.number("FARM_SHUTDOWN_FORCE_S"),
        renders_per_gpu=env.optional_integer("FARM_RENDERS_PER_GPU"),
        warmup=env.choice("FARM_WARMUP", ("auto", "full", "off")),
        warmup_devices=env.text("FARM_WARMUP_DEVICES"),
        health_file=env.path("FARM_HEALTH_FILE") or (
            scratch if env.given("FARM_SCRATCH") else Path(tempfile.gettempdir()))
        / "worker-ready.json",
        render_process=env.choice("FARM_RENDER_PROCESS", ("server", "oneshot")),
        render_max_videos=env.integer("FARM_RENDER_MAX_VIDEOS"),
        render_max_growth_mb=env.number("FARM_RENDER_MAX_GROWTH_MB"),
        render_max_rss_mb=(None if rss in ("off", "none", "0") else "auto" if rss == "auto"
                           else env.number("FARM_RENDER_MAX_RSS_MB")),
        render_sandbox=env.flag("FARM_RENDER_SANDBOX"),
        render_boot_timeout=env.number("FARM_RENDER_BOOT_TIMEOUT"),
        kernel_cache=env.path("FARM_KERNEL_CACHE") or cache_dir / "kernels",
        aws_cli=env.text("FARM_AWS_CLI"),
        given={name: env.given(name) for name in VARS if env.given(name)},
    )


_current: Settings | None = None


def current() -> Settings:
    """This process's settings: read from the environment at the first call (each entry point
    makes it at start, so a malformed setting is its one-line error) and kept."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use(settings: Settings | None) -> None:
    """Make ``settings`` this process's (None: read the environment again at the next call)."""
    global _current
    _current = settings
