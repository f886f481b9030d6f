"""Real services for tests: redis-server, moto's S3 server, Celery workers, a TCP fault proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from devtools.local import farm_env, start_worker
from devtools.processes import process_state, stop
from devtools.processes import render_processes as live_renders
from farm.queue.state import STATES

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_YAML = ROOT / "tests" / "data" / "original_yaml"  # configs of the original generator


class Farm:
    """One test's farm: env for workers/scheduler, its own bucket, workers started on demand."""

    def __init__(self, redis_port: int, password: str, s3_port: int, bucket: str, folder: Path,
                 models: Path, textures: Path) -> None:
        self.folder = folder
        self.s3_endpoint = f"http://127.0.0.1:{s3_port}"
        self.bucket = bucket
        self.env = {**os.environ, **farm_env(redis_port, password, s3_port, bucket,
                                             folder / "scratch"),
                    "FARM_MODELS": str(models), "FARM_TEXTURES": str(textures),
                    "FARM_GPUS": "none", "FARM_RETRY_BACKOFF": "1",
                    "FARM_RETRY_BACKOFF_MAX": "4", "FARM_LEASE_TTL": "6",
                    "FARM_SEED": "2021", "PYTHONUNBUFFERED": "1",
                    # no warm-up render before consuming (tests/worker/test_warmup.py has its
                    # own): on a CPU it is one more render process per worker start
                    "FARM_WARMUP": "off",
                    # each test's own temporary folder: health files and render logs named
                    # after a worker (w1, w2) never meet another test's on parallel runs
                    "TMPDIR": str(folder / "tmp")}
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        self.workers: list[subprocess.Popen] = []
        self.s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        self.s3.create_bucket(Bucket=bucket)

    def start_worker(self, name: str, **env: str) -> subprocess.Popen:
        proc = start_worker({**self.env, **env}, name, self.folder / f"{name}.log")
        self.workers.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args: str, env: dict | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "scheduler", "-q", *args],
                              env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"scheduler {args} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def status(self, segment: int) -> dict:
        return json.loads(self.cli("status", "--segment", str(segment), "--json").stdout)[0]

    def wait_for(self, segment: int, timeout: float = 180.0, **want: int) -> dict:
        """Wait until the segment's counts are ``want``; returns ``status --json``'s row.

        Polls the counts in Redis from this process (a ``scheduler status`` process per poll,
        0.2 CPU s each, would cost 0.4 CPU s a second); the CLI's status then confirms them.
        """
        state = self.state()
        deadline = time.monotonic() + timeout
        while True:
            counts = state.counts(segment)
            seen = {**{s: counts.get(s, 0) for s in STATES}, "total": sum(counts.values())}
            if all(seen[k] == v for k, v in want.items()):
                status = self.status(segment)
                if all(status[k] == v for k, v in want.items()):
                    return status
            if time.monotonic() > deadline:
                logs = "\n".join(self.log(f"w{i}")[-3000:] for i in range(1, 4))
                raise AssertionError(f"timed out waiting for {want}: {seen}\n{logs}")
            time.sleep(0.5)

    def state(self):
        """The farm's Redis bookkeeping, as the workers see it."""
        from farm.queue.state import FarmState, connect

        return FarmState(connect(self.env["FARM_REDIS_URL"].replace(
            "redis://", f"redis://:{self.env['REDIS_PASSWORD']}@")))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def close(self) -> None:
        stop(self.workers, timeout=20)


def render_processes(marker: str) -> list[Path]:
    """/proc entries of render processes whose command line contains ``marker``."""
    return [Path(f"/proc/{pid}") for pid, args in live_renders().items()
            if marker.encode() in b"\0".join(args)]


def alive(proc: Path) -> bool:
    """The process of a /proc entry runs (a zombie, dead and waiting for the machine's init to
    reap it, which can take seconds, does not)."""
    return process_state(int(proc.name)) not in ("Z", "X", "")
