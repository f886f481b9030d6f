"""``python -m scheduler slurm``: the farm's workers as a Slurm job array, one worker per GPU.

Writes (and with ``--submit`` submits) a batch script: each array task asks for one GPU
(``--gres=gpu:1``; Slurm sets ``CUDA_VISIBLE_DEVICES``, which becomes the worker's ``FARM_GPUS``),
runs one Celery worker from a venv on shared storage or an Apptainer/Singularity image, with its
scratch on node-local disk, and reads the Redis, S3 and asset settings from an env file (mode 0600,
secrets as ``*_FILE`` paths), never from its command line or sbatch's.

Stopping: ``--requeue`` puts a preempted or requeued task back in the queue, and
``--signal=B:TERM@<lead>`` has Slurm send SIGTERM to the batch shell ``lead`` seconds before the
time limit; the shell passes it to the worker, which hands its video back at once
(worker/shutdown.py). A requeue or preemption signals every process of the job, which is the
same hand-back (the render's death during a shutdown is a hand-back, not a crash).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from farm.secrets import SECRETS, SecretError, read_secret
from farm.settings import VARS, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent  # the project, run from shared storage

# Set per job by the script itself (the GPU, node and scratch Slurm gives the task).
PER_JOB = ("FARM_GPUS", "FARM_NODE_NAME", "FARM_SCRATCH", "FARM_HEALTH_FILE")
SECRET_FILES = {"REDIS_PASSWORD": "redis_password", "AWS_ACCESS_KEY_ID": "s3_access_key",
                "AWS_SECRET_ACCESS_KEY": "s3_secret_key"}
PLAIN = ("AWS_DEFAULT_REGION",)
# Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$")
MEMORY = re.compile(r"^\d+[KMGT]?$")
ENV_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Job:
    """What the batch script asks Slurm for and runs."""

    workers: int
    folder: Path  # script, env file, secrets, logs: on storage every node sees
    env_file: Path
    time_limit: str = "24:00:00"
    hand_back_s: int = 120
    gres: str = "gpu:1"
    cpus: int = 4
    mem: str = "16G"
    renders: int = 1
    max_running: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    scratch: str = "${SLURM_TMPDIR:-${TMPDIR:-/tmp}}"  # node-local disk (expanded on the node)
    workdir: Path = ROOT
    python: str = sys.executable
    image: str | None = None  # an Apptainer/Singularity image instead of the venv
    container_runtime: str = "apptainer"
    binds: tuple[str, ...] = ()
    sbatch_extra: tuple[str, ...] = ()


def seconds(limit: str) -> int:
    """A Slurm time limit (``TIME``'s formats) in seconds."""
    days = 0
    if "-" in limit:
        head, limit = limit.split("-")
        days = int(head)
        h, m, s = ([int(p) for p in limit.split(":")] + [0, 0])[:3]  # D-H[:M[:S]]
    else:
        parts = [int(p) for p in limit.split(":")]  # M, M:S or H:M:S
        h, m, s = [0, parts[0], 0] if len(parts) == 1 else [0, *parts][-3:]
    return days * 86400 + h * 3600 + m * 60 + s


def check(job: Job) -> None:
    """Bad input is a ConfigError naming the option (one line, exit 2)."""
    if job.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {job.workers}")
    if job.max_running is not None and job.max_running < 1:
        raise ConfigError(f"--max-running must be at least 1, got {job.max_running}")
    if not TIME.match(job.time_limit):
        raise ConfigError(f"--time {job.time_limit!r} is not a Slurm time limit (e.g. 24:00:00, "
                          "2-00:00:00, 90)")
    if job.hand_back_s < 10 or job.hand_back_s >= seconds(job.time_limit):
        raise ConfigError(f"--hand-back-s {job.hand_back_s} must be at least 10 and below the "
                          f"time limit ({seconds(job.time_limit)} s)")
    if not MEMORY.match(job.mem):
        raise ConfigError(f"--mem {job.mem!r} is not a Slurm memory size (e.g. 16G, 8000M)")
    if job.cpus < 1 or job.renders < 1:
        raise ConfigError("--cpus and --renders-per-gpu must be at least 1")
    if not re.fullmatch(r"[a-z0-9_]+(:[A-Za-z0-9_.-]+)?:\d+", job.gres):
        raise ConfigError(f"--gres {job.gres!r} is not a GRES request (e.g. gpu:1, gpu:a100:1)")
    if job.image is None:
        if not (job.workdir / "worker" / "celery_app.py").is_file():
            raise ConfigError(f"--workdir {job.workdir}: not the project (no worker/celery_app.py)")
        if not Path(job.python).is_file():
            raise ConfigError(f"--python {job.python}: no such file")


def read_env_file(path: Path) -> dict[str, str]:
    """The settings file the jobs source: ``NAME=value`` lines of farm settings and secret files."""
    if not path.is_file():
        raise ConfigError(f"--env-file {path}: no such file")
    known = {*VARS, *SECRETS, *(f"{s}_FILE" for s in SECRETS), *PLAIN}
    values: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#"):
            continue
        m = ENV_LINE.match(line)
        if not m:
            raise ConfigError(f"{path}:{n}: not a NAME=value line")
        if m[1] not in known:
            raise ConfigError(f"{path}:{n}: {m[1]} is not a farm setting or secret")
        if m[1] in PER_JOB:
            raise ConfigError(f"{path}:{n}: {m[1]} is set per job by the script (the GPU, node and "
                              "scratch Slurm gives it): remove it")
        try:
            values[m[1]] = " ".join(shlex.split(m[2]))
        except ValueError as exc:  # unbalanced quotes
            raise ConfigError(f"{path}:{n}: {exc}") from None
    for name in ("FARM_REDIS_URL", "FARM_STORAGE_URL"):
        if not values.get(name):
            raise ConfigError(f"{path}: {name} is not set (the workers run on other nodes)")
    return values


def require_address(settings: Settings) -> None:
    for name in ("FARM_REDIS_URL", "FARM_STORAGE_URL"):
        if name not in settings.given:
            raise ConfigError(f"{name} is not set: the workers need this farm's address "
                              "(or give --env-file)")


def write_env_file(settings: Settings, folder: Path) -> Path:
    """``<folder>/farm.env`` from this environment's farm settings; secret values go to files
    under ``<folder>/secrets/`` (0600) named by ``*_FILE``. Both 0600."""
    require_address(settings)
    lines = [f"{name}={shlex.quote(value)}" for name, value in settings.given.items()
             if name not in PER_JOB]
    secrets_dir = folder / "secrets"
    for name, file in SECRET_FILES.items():
        try:
            value = read_secret(name)
        except SecretError as exc:
            raise ConfigError(str(exc)) from None
        if value is None:
            continue
        given = os.environ.get(f"{name}_FILE")
        if given:
            lines.append(f"{name}_FILE={shlex.quote(str(Path(given).resolve()))}")
            continue
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        path = secrets_dir / file
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(value)
        lines.append(f"{name}_FILE={shlex.quote(str(path.resolve()))}")
    lines += [f"{name}={shlex.quote(os.environ[name])}" for name in PLAIN if os.environ.get(name)]
    env_file = folder / "farm.env"
    env_file.touch(mode=0o600)
    env_file.chmod(0o600)
    env_file.write_text("# farm settings for the Slurm workers (python -m scheduler slurm)\n"
                        + "\n".join(lines) + "\n")
    return env_file


def worker_command(job: Job) -> str:
    celery = ("-m celery -A worker.celery_app worker -Q render -E --loglevel=INFO "
              f"-c {job.renders} --without-gossip --without-mingle "
              '-n "slurm-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}-${SLURM_ARRAY_TASK_ID:-0}@%h"')
    if job.image is None:
        return f"cd {shlex.quote(str(job.workdir))}\n{shlex.quote(job.python)} {celery}"
    binds = " ".join(f"--bind {shlex.quote(b)}" for b in job.binds)
    env_dir = shlex.quote(str(job.env_file.parent.resolve()))
    return (f'{job.container_runtime} exec --nv --pwd /app --bind "$FARM_SCRATCH" --bind {env_dir} '
            f"{binds} {shlex.quote(job.image)} python3 {celery}")


def batch_script(job: Job) -> str:
    """The sbatch script: options as ``#SBATCH`` lines, then the worker."""
    array = f"0-{job.workers - 1}" + (f"%{job.max_running}" if job.max_running else "")
    options = [
        "--job-name=bl30k-worker", f"--array={array}", f"--gres={job.gres}",
        f"--cpus-per-task={job.cpus}", f"--mem={job.mem}", f"--time={job.time_limit}",
        "--requeue",  # preempted or requeued: back in the queue, not lost
        f"--signal=B:TERM@{job.hand_back_s}",  # the batch shell, before the time limit
        "--open-mode=append",  # a requeued task appends to its log
        f"--output={job.folder.resolve()}/logs/%x-%A_%a.log",
        "--export=NONE",  # nothing of the submitting shell (secrets) reaches the job
    ]
    options += [f"--{name}={value}" for name, value in
                (("partition", job.partition), ("account", job.account), ("qos", job.qos)) if value]
    options += list(job.sbatch_extra)
    header = "\n".join(f"#SBATCH {o}" for o in options)
    return f"""#!/bin/bash
# bl30k farm workers, one per GPU: written by `python -m scheduler slurm`.
{header}
set -u
set -a; . {shlex.quote(str(job.env_file.resolve()))}; set +a  # Redis, S3, assets: a file
export FARM_NODE_NAME="$SLURMD_NODENAME"
export FARM_GPUS="${{CUDA_VISIBLE_DEVICES:-none}}"  # the GPU Slurm gave this task
export FARM_SCRATCH="{job.scratch}/bl30k-$SLURM_JOB_ID"  # node-local disk
# SIGTERM (the time limit's --signal, a requeue, a preemption): the worker hands its video back.
worker=
trap '[ -n "$worker" ] && kill -TERM "$worker" 2>/dev/null; echo "bl30k worker: SIGTERM at \
$(date +%s.%N)"; [ -n "$worker" ] || exit 0' TERM
mkdir -p "$FARM_SCRATCH" || exit 1
echo "bl30k worker: job $SLURM_JOB_ID (array task ${{SLURM_ARRAY_TASK_ID:-0}}, restart \\
${{SLURM_RESTART_COUNT:-0}}) on $SLURMD_NODENAME, GPU $FARM_GPUS, scratch $FARM_SCRATCH, \\
started $(date +%s.%N)"
{worker_command(job)} &
worker=$!
wait "$worker"; status=$?
while kill -0 "$worker" 2>/dev/null; do wait "$worker"; status=$?; done
wait "$worker" 2>/dev/null; last=$?; [ "$last" = 127 ] || status=$last  # not the trap's 143
rm -rf "$FARM_SCRATCH"
echo "bl30k worker: exit $status at $(date +%s.%N)"
exit "$status"
"""


def submit(script: Path) -> str:
    """``sbatch --parsable``: the job id."""
    sbatch = shutil.which("sbatch")
    if not sbatch:
        raise ConfigError("sbatch not found: run --submit on a Slurm login node (or submit the "
                          f"script yourself: sbatch {script})")
    proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        message = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
        raise ConfigError(f"sbatch refused {script}: {message}")
    return proc.stdout.strip().split(";")[0]


def run(settings: Settings, args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    env_file = Path(args.env_file) if args.env_file else None
    job = Job(workers=args.workers, folder=folder, env_file=env_file or folder / "farm.env",
              time_limit=args.time, hand_back_s=args.hand_back_s, gres=args.gres,
              cpus=args.cpus, mem=args.mem, renders=args.renders_per_gpu,
              max_running=args.max_running, partition=args.partition, account=args.account,
              qos=args.qos, scratch=args.scratch, workdir=Path(args.workdir).resolve(),
              python=args.python, image=args.image, container_runtime=args.container_runtime,
              binds=tuple(args.bind or ()), sbatch_extra=tuple(args.sbatch or ()))
    check(job)  # before anything is written
    if env_file is not None:
        read_env_file(env_file)
    else:
        require_address(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    if env_file is None:
        read_env_file(write_env_file(settings, folder))
    script = folder / "workers.sbatch"
    script.write_text(batch_script(job))
    script.chmod(0o750)
    print(f"wrote {script} ({job.workers} workers, {job.gres} each, time limit {job.time_limit}, "
          f"settings from {job.env_file})")
    if args.submit:
        print(f"submitted job array {submit(script)}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("slurm", help="write (and --submit) the workers as a Slurm job array",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, required=True, help="array tasks: one worker per GPU")
    p.add_argument("--dir", default="slurm-farm",
                   help="script, env file and logs (on storage the nodes share)")
    p.add_argument("--env-file", help="settings file the jobs source (default: written from this "
                   "environment into DIR/farm.env)")
    p.add_argument("--time", default="24:00:00", help="each task's time limit")
    p.add_argument("--hand-back-s", type=int, default=120,
                   help="SIGTERM this many seconds before the time limit (the hand-back)")
    p.add_argument("--gres", default="gpu:1")
    p.add_argument("--cpus", type=int, default=4, help="CPUs per worker")
    p.add_argument("--mem", default="16G", help="memory per worker")
    p.add_argument("--renders-per-gpu", type=int, default=1, help="the worker's concurrency")
    p.add_argument("--max-running", type=int, help="at most this many tasks at once (%%N)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--scratch", default=Job.scratch,
                   help="node-local scratch root, expanded on the node")
    p.add_argument("--workdir", default=str(ROOT), help="the project on shared storage (venv)")
    p.add_argument("--python", default=sys.executable, help="the venv's python on shared storage")
    p.add_argument("--image", help="an Apptainer/Singularity image (.sif) instead of the venv")
    p.add_argument("--container-runtime", default="apptainer", choices=("apptainer", "singularity"))
    p.add_argument("--bind", action="append", help="with --image: a path to bind (assets)")
    p.add_argument("--sbatch", action="append", help="an extra sbatch option, e.g. --constraint=a100")
    p.add_argument("--submit", action="store_true", help="submit it with sbatch")
    return p
