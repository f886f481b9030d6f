"""Monitoring processes of a local farm: the farm's exporter and Prometheus (Debian's package).

``local-up`` always starts the exporter; ``local-up --monitoring`` also starts ``prometheus`` when
it is installed (``apt-get install prometheus``), with docker/prometheus.yml's scrape jobs pointed
at the loopback exporter and Flower. The test suite starts the same processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from devtools.processes import ROOT, spawn, wait_port

PROMETHEUS_YML = ROOT / "docker" / "prometheus.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "farm.json"


def start_exporter(env: dict, port: int, log: Path) -> subprocess.Popen:
    """``python -m scheduler exporter`` on loopback."""
    proc = spawn([sys.executable, "-m", "scheduler", "exporter", "--port", str(port),
                  "--address", "127.0.0.1"], log, env=env, cwd=ROOT)
    wait_port(port, proc, "the farm exporter")
    return proc


def prometheus_config(exporter: str, flower: str | None = None, flower_login: str | None = None,
                      password_file: Path | None = None, interval_s: float = 15) -> dict:
    """docker/prometheus.yml with local targets (``host:port``) and scrape interval.

    ``flower_login`` is FLOWER_BASIC_AUTH's ``user:password`` (the first, when several); its
    password is written to ``password_file``. The username goes inline: the compose file reads it
    from a file too (``username_file``), which Debian's Prometheus 2.42 predates.
    """
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval=f"{interval_s:g}s", evaluation_interval=f"{interval_s:g}s",
                            scrape_timeout=f"{min(interval_s, 10):g}s")
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] == "farm":
            job["static_configs"] = [{"targets": [exporter]}]
        elif job["job_name"] == "flower":
            if flower is None:
                continue
            job["static_configs"] = [{"targets": [flower]}]
            job.pop("basic_auth", None)
            if flower_login:
                user, _, password = flower_login.split(",")[0].partition(":")
                if password_file is None:
                    raise ValueError("a Flower login needs a password file")
                password_file.write_text(password)
                password_file.chmod(0o600)
                job["basic_auth"] = {"username": user, "password_file": str(password_file)}
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def start_prometheus(folder: Path, port: int, config: dict, log: Path | None = None,
                     timeout: float = 60.0) -> subprocess.Popen:
    """Debian's ``prometheus`` on 127.0.0.1:``port``, data and config in ``folder``; returns once
    it answers ``/-/ready``."""
    exe = prometheus_binary()
    if not exe:
        raise RuntimeError("prometheus not found: apt-get install prometheus (or make system-deps)")
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = spawn([exe, f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=15d"],
                 log or folder / "prometheus.log")
    wait_port(port, proc, "prometheus", timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as reply:
                if reply.status == 200:
                    return proc
        except OSError:  # URLError, connection reset, 503 while starting (HTTPError)
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"prometheus did not become ready; see {log or folder}")
        time.sleep(0.2)
