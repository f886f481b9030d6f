"""The farm's topology as local processes (no Docker): redis-server, an S3 server, workers, Flower,
the farm's metrics exporter (and with ``--monitoring`` Prometheus).

``python -m devtools local-up --workers 2`` starts everything on loopback, writes
``<dir>/farm.env`` (source it to point the scheduler CLI at this farm) and runs until Ctrl-C.
The S3 server here is moto's server mode (in memory: the bucket lives as long as the farm).
The same helpers start the services of the test suite.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools.processes import ROOT, spawn, stop, wait_port
from farm.settings import current


def start_redis(folder: Path, port: int, password: str) -> subprocess.Popen:
    """redis-server with AOF persistence and a password, data in ``folder``."""
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    proc = spawn(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--requirepass", password, "--protected-mode", "yes"], folder / "redis.log")
    wait_port(port, proc, "redis-server")
    return proc


def start_s3(port: int, log: Path) -> subprocess.Popen:
    """moto's S3 server (real HTTP S3 API on loopback)."""
    beside = Path(sys.executable).with_name("moto_server")  # this environment's moto first
    exe = str(beside) if beside.exists() else shutil.which("moto_server") or "moto_server"
    proc = spawn([exe, "-H", "127.0.0.1", "-p", str(port)], log)
    wait_port(port, proc, "moto_server")
    return proc


def start_worker(env: dict, name: str, log: Path, concurrency: int = 1,
                 own_session: bool = False) -> subprocess.Popen:
    """A Celery worker with its own scratch folder (``FARM_SCRATCH/<name>``).

    ``own_session`` puts it in its own process group, so it can be killed with its renders.
    """
    env = {**env, "FARM_SCRATCH": str(Path(env.get("FARM_SCRATCH", "/tmp/farm-scratch")) / name)}
    return spawn(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "render",
         "-c", str(concurrency), "-E", "--loglevel=INFO", "-n", f"{name}@%h",
         "--without-gossip", "--without-mingle"], log, env=env, cwd=ROOT,
        start_new_session=own_session)


def start_flower(env: dict, port: int, auth: str, folder: Path) -> subprocess.Popen:
    """Flower with basic auth; the login goes through its environment (Flower reads FLOWER_*
    variables as options), not its command line, which `ps` shows to every user."""
    proc = spawn(
        [sys.executable, "-m", "scheduler.flower",
         f"--port={port}", "--address=127.0.0.1", "--persistent=True",
         f"--db={folder / 'flower.db'}"], folder / "flower.log",
        env={**env, "FLOWER_BASIC_AUTH": auth}, cwd=ROOT)
    wait_port(port, proc, "flower", timeout=60)
    return proc


def farm_env(redis_port: int, redis_password: str, s3_port: int, bucket: str,
             scratch: Path) -> dict[str, str]:
    """Environment variables that point workers and the scheduler at a local farm."""
    return {
        "FARM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "REDIS_PASSWORD": redis_password,
        "FARM_STORAGE_URL": f"s3://{bucket}/bl30k",
        "FARM_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": "local-farm",
        "AWS_SECRET_ACCESS_KEY": "local-farm",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FARM_SCRATCH": str(scratch),
        "FARM_GPUS": current().gpus,
    }


def start_reconciler(env: dict, log: Path, every_s: float = 30.0, min_age_s: float = 60.0
                     ) -> subprocess.Popen:
    """The sweep that re-sends pending videos whose message was lost (``reconcile --every``)."""
    return spawn([sys.executable, "-m", "scheduler", "reconcile", "--every", str(every_s),
                  "--min-age", str(min_age_s)], log, env=env, cwd=ROOT)


def start_monitoring(args, env: dict, flower_auth: str, folder: Path) -> list[subprocess.Popen]:
    """The farm's exporter, and with ``--monitoring`` Prometheus when Debian's package is there."""
    from devtools import monitoring

    procs = [monitoring.start_exporter(env, args.exporter_port, folder / "exporter.log")]
    if not args.monitoring:
        return procs
    if not monitoring.prometheus_binary():
        print("--monitoring: prometheus is not installed (apt-get install prometheus); the farm "
              f"runs without it (metrics: http://127.0.0.1:{args.exporter_port}/metrics)",
              file=sys.stderr)
        return procs
    config = monitoring.prometheus_config(
        f"127.0.0.1:{args.exporter_port}", f"127.0.0.1:{args.flower_port}", flower_auth,
        folder / "flower-password")
    procs.append(monitoring.start_prometheus(folder / "prometheus", args.prometheus_port, config))
    return procs


def run_local_farm(args) -> int:
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    flower_auth = f"farm:{secrets.token_urlsafe(12)}"
    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C
    try:
        procs.append(start_redis(folder / "redis", args.redis_port, password))
        procs.append(start_s3(args.s3_port, folder / "s3.log"))
        env = {**os.environ, **farm_env(args.redis_port, password, args.s3_port, "bl30k",
                                         folder / "scratch")}
        subprocess.run([sys.executable, "-m", "scheduler", "init-storage"], env=env, cwd=ROOT,
                       check=True)
        for i in range(args.workers):
            procs.append(start_worker(env, f"worker{i + 1}", folder / f"worker{i + 1}.log"))
        procs.append(start_flower(env, args.flower_port, flower_auth, folder))
        procs.append(start_reconciler(env, folder / "reconciler.log"))
        monitors = start_monitoring(args, env, flower_auth, folder)
        procs += monitors
        env_file = folder / "farm.env"
        keys = [*farm_env(0, "", 0, "", folder).keys()]
        env_file.write_text("".join(f"export {k}={env[k]}\n" for k in keys))
        env_file.chmod(0o600)
        print(f"local farm up: redis :{args.redis_port}, S3 http://127.0.0.1:{args.s3_port}, "
              f"{args.workers} workers, Flower http://127.0.0.1:{args.flower_port} "
              f"(user:password {flower_auth})")
        print(f"farm metrics: http://127.0.0.1:{args.exporter_port}/metrics"
              + (f"; Prometheus http://127.0.0.1:{args.prometheus_port}" if len(monitors) > 1
                 else ""))
        print(f"in another shell: source {env_file} && python -m scheduler enqueue --segment 0 "
              "--count 4 --preset preview && python -m scheduler status --watch")
        print(f"logs in {folder}; Ctrl-C stops everything")
        workers = {f"worker{i + 1}": procs[2 + i] for i in range(args.workers)}
        while all(p.poll() is None for p in procs if p not in workers.values()):
            for name, proc in workers.items():  # restart policy, like compose's
                if proc.poll() is not None:
                    print(f"{name} exited ({proc.returncode}); restarting", file=sys.stderr)
                    procs[procs.index(proc)] = workers[name] = start_worker(
                        env, name, folder / f"{name}.log")
            time.sleep(1)
        print("redis, the S3 server, flower, the reconciler, the exporter or prometheus exited; "
              "stopping",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs)
