"""The farm on a real Slurm cluster: ``python -m scheduler slurm --submit`` against a one-node
cluster (munged, slurmctld, slurmd from Debian's slurm-wlm; two fake GPUs as gres), the test's
redis-server and S3 server, real Celery workers in the jobs and real tiny renders; one job is
requeued (preempted) mid-render and every video still ends done exactly once.

Runs as root only (Slurm's daemons and munged's user switch); without root it skips, in CI
(``CI=true``) a missing prerequisite is an error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from services import ROOT
from slurm_cluster import SlurmCluster, missing_tools

from devtools.monitoring import start_exporter
from devtools.processes import free_port, stop
from farm.generate.sampling import generate_spec
from farm.model.presets import load_preset
from farm.model.spec import save_spec
from farm.queue.broker import broker_task_ids

CI = os.environ.get("CI") == "true"
NOT_ROOT = "the Slurm test starts slurmctld, slurmd and munged: run it as root"
pytestmark = [pytest.mark.slurm, pytest.mark.services, pytest.mark.render,
              # before any service starts; in CI it is an error instead (below)
              pytest.mark.skipif(os.geteuid() != 0 and not CI, reason=NOT_ROOT)]


def _prerequisites() -> None:
    if os.geteuid() != 0:  # only in CI: elsewhere the mark above skips
        pytest.fail(NOT_ROOT)
    if missing := missing_tools():
        pytest.fail(f"missing {', '.join(missing)}: `make system-deps` installs Debian's "
                    "slurm-wlm and munge")


@pytest.fixture
def cluster():
    _prerequisites()
    with SlurmCluster(gpus=2, cpus=2, memory_mb=4000) as c:
        yield c  # its jobs are cancelled, then its daemons stopped


def scrape(port: int) -> dict[str, dict[str, float]]:
    """One scrape of the exporter, parsed as Prometheus' text format (what KEDA's metrics-api
    scaler reads): metric -> labels -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[f"{{{labels}}}" if labels else ""] = sample.value
    return samples


def metric(port: int, name: str) -> dict[str, float]:
    return scrape(port)[name]


def slow_spec(library, segment: int, folder: Path) -> Path:
    """An imported spec that renders in ~7 s here (24 frames, 64 samples): long enough to
    requeue its job mid-render."""
    base = generate_spec(library, load_preset("tiny"), segment, 0, 2021)
    spec = replace(base, frames=24, resolution=(128, 96), source="imported",
                   render=replace(base.render, samples=64))
    path = folder / f"{spec.id}.yaml"
    save_spec(spec, path)
    return path


def wait(what: str, predicate, timeout: float, logs=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.2)
    return value


def test_workers_as_a_slurm_job_array_survive_a_requeue_mid_render(cluster, farm, library,
                                                                   tmp_path):
    t_start = time.monotonic()
    segment = 23
    node_local = tmp_path / "node-local"  # the scratch root a compute node's local disk holds
    node_local.mkdir()
    exporter_port = free_port()
    exporter = start_exporter(farm.env, exporter_port, tmp_path / "exporter.log")
    try:
        farm.cli("enqueue", "--specs", str(slow_spec(library, segment, tmp_path)))
        farm.cli("enqueue", "--segment", str(segment), "--start", "1", "--count", "3",
                 "--preset", "tiny")
        videos = sorted(farm.state().states(segment))
        video = videos[0]  # the slow one, index 0
        before = scrape(exporter_port)
        assert before["farm_render_demand"] == {"": 4}
        assert before["farm_broker_messages"] == {'{where="queued"}': 4, '{where="unacked"}': 0}

        # the command under test: the settings go by file, the job array to sbatch
        folder = tmp_path / "slurm"
        before_submit = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "scheduler", "slurm", "--workers", "2", "--dir", str(folder),
             "--cpus", "1", "--mem", "1500M", "--time", "30:00", "--hand-back-s", "60",
             "--scratch", str(node_local), "--submit"],
            env={**farm.env, **cluster.env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        array = re.search(r"submitted job array (\d+)", proc.stdout)[1]
        submitted = time.monotonic()
        env_file = (folder / "farm.env").read_text()
        assert farm.env["REDIS_PASSWORD"] not in env_file  # secrets are files it names
        assert (folder / "farm.env").stat().st_mode & 0o077 == 0
        script = (folder / "workers.sbatch").read_text()
        assert "--gres=gpu:1" in script and "--requeue" in script
        assert farm.env["REDIS_PASSWORD"] not in script and farm.env["FARM_REDIS_URL"] not in script

        def logs() -> str:
            return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                             for p in sorted((folder / "logs").glob("*.log")))

        # the slow video, enqueued first, starts rendering in one of the two jobs
        first = wait("the slow video's first frame",
                     lambda: next(iter(node_local.glob(f"bl30k-*/{video}.staging/JPEGImages/"
                                                       f"{video}/00000.jpg")), None), 240, logs)
        first_frame_s = time.monotonic() - submitted
        job_id = first.parts[len(node_local.parts)].removeprefix("bl30k-")  # its SLURM_JOB_ID
        victim = cluster_id(cluster, job_id)  # <array>_<task>: the array's own id means all
        assert cluster.jobs()[victim] == "RUNNING"
        during = scrape(exporter_port)  # one scrape: one read of Redis
        messages = during["farm_broker_messages"]
        assert messages['{where="unacked"}'] >= 1  # the rendering video's message, reserved
        assert during["farm_render_demand"][""] == sum(messages.values())

        # preemption: Slurm signals every process of the job and puts it back in the queue
        requeued = time.monotonic()
        cluster.run("scontrol", "requeue", victim)
        log = wait("the requeued job's log", lambda: next(
            (p for p in (folder / "logs").glob("*.log") if f"job {job_id} " in p.read_text()),
            None), 10, logs)
        wait("the hand-back", lambda: re.search(
            rf"{video}: (the worker is shutting down|worker stopping .*); handing the video back",
            log.read_text()), 30, logs)
        wait("the requeued worker's exit", lambda: "bl30k worker: exit" in log.read_text(), 30,
             logs)
        exit_s = time.monotonic() - requeued
        # a requeued job waits 120 s before it is eligible again: make it eligible now
        wait("the job pending again", lambda: cluster.jobs().get(victim) == "PENDING", 120, logs)
        cluster.run("scontrol", "update", f"JobId={victim}", "StartTime=now")
        wait("the job's restart", lambda: "restart 1)" in log.read_text(), 120, logs)
        restart_s = time.monotonic() - requeued

        status = farm.wait_for(segment, done=4, timeout=300)
        assert status["failed"] == 0 and status["running"] == 0
        state = farm.state()
        assert len(videos) == 4
        for v in videos:
            info = state.video(v)
            assert info["uploads"] == "1", (v, info)
            assert "crashes" not in info and "lost_deliveries" not in info, (v, info)
            assert info["gpu"] in ("0", "1"), info  # a GPU Slurm gave the job, never all
        text = logs()
        assert "GPU 0" in text and "GPU 1" in text  # each job its own CUDA_VISIBLE_DEVICES
        assert len(farm.keys(f"bl30k/{segment}/JPEGImages/{video}/")) == 24
        farm.cli("finalize", "--segment", str(segment))  # every frame its marker's
        wait("zero demand", lambda: metric(exporter_port, "farm_render_demand")[""] == 0, 30)
        jobs = cluster.jobs()
        assert jobs[victim] == "RUNNING" and len(jobs) == 2, jobs  # serving again
        assert int(cluster.job_field(victim, "Restarts")) == 1
        others = [p for p in (folder / "logs").glob("*.log") if p != log]
        assert len(others) == 1 and "worker stopping" not in others[0].read_text()  # untouched

        # cancelling the array: the workers stop, each scratch folder goes with its job
        cancelled = time.monotonic()
        cluster.run("scancel", array)
        wait("the array's end", lambda: not cluster.jobs(), 60, logs)
        cancel_s = time.monotonic() - cancelled
        assert not list(node_local.iterdir())
        whole = "".join(p.read_text() for p in (folder / "logs").glob("*.log"))
        starts = sorted(float(t) for t in re.findall(r"restart 0\).* started ([\d.]+)", whole))
        assert len(starts) == 2
        print(f"\nslurm: jobs started {starts[0] - before_submit:.1f} and "
              f"{starts[1] - before_submit:.1f} s after `scheduler slurm --submit` began; "
              f"first frame {first_frame_s:.1f} s after sbatch; requeue -> worker exit "
              f"{exit_s:.1f} s, -> restarted {restart_s:.1f} s (StartTime reset); scancel -> "
              f"jobs gone {cancel_s:.1f} s; test {time.monotonic() - t_start:.0f} s")
    finally:
        stop([exporter])


def cluster_id(cluster: SlurmCluster, job: str) -> str:
    """squeue's id of a job (``<array>_<task>`` for an array task)."""
    array, task = cluster.job_field(job, "ArrayJobId"), cluster.job_field(job, "ArrayTaskId")
    return f"{array}_{task}"


def test_the_time_limit_signal_hands_the_video_back_before_the_kill(cluster, farm, library,
                                                                   tmp_path):
    """``--signal=B:TERM@<lead>``: before the time limit Slurm signals the batch shell, which
    passes it to the worker; the worker hands its video back and the job ends by itself (exit 0,
    COMPLETED), before Slurm's kill at the limit.

    slurmctld sends the signal at its first periodic check (every 30 s) once the time left is
    under lead + 30 s (sbatch(1) warns of up to 60 s early): with a 60 s limit and a 10 s lead,
    20-50 s after the start (22-23 s measured), when the worker (rendering within ~12 s here)
    is under way; the hand-back line in its log proves it was."""
    segment = 24
    spec = generate_spec(library, load_preset("tiny"), segment, 0, 2021)
    spec = replace(spec, frames=1000, resolution=(128, 96), source="imported",
                   render=replace(spec.render, samples=64))  # minutes: outlasts the job
    save_spec(spec, tmp_path / "long.yaml")
    farm.cli("enqueue", "--specs", str(tmp_path / "long.yaml"))
    folder = tmp_path / "slurm"
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "slurm", "--workers", "1", "--dir", str(folder),
         "--cpus", "1", "--mem", "1500M", "--time", "1", "--hand-back-s", "10",
         "--scratch", str(tmp_path), "--submit"],
        env={**farm.env, **cluster.env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"submitted job array (\d+)", proc.stdout)[1]
    [log] = wait("the job's log", lambda: list((folder / "logs").glob("*.log")), 30)
    wait("the render's first frame", lambda: next(iter(tmp_path.glob(
        f"bl30k-*/{spec.id}.staging/JPEGImages/{spec.id}/00000.jpg")), None), 60,
        lambda: log.read_text()[-4000:])
    rendering = time.time()
    text = wait("the worker's exit", lambda: "bl30k worker: exit" in log.read_text()
                and log.read_text(), 130, lambda: log.read_text()[-4000:])
    started = float(re.search(r"started ([\d.]+)", text)[1])
    signalled = float(re.search(r"SIGTERM at ([\d.]+)", text)[1])
    exited = re.search(r"bl30k worker: exit (\d+) at ([\d.]+)", text)
    assert rendering < signalled, "the signal came before the render started"
    assert exited[1] == "0", text[-3000:]
    assert f"{spec.id}: the worker is shutting down; handing the video back" in text, text[-3000:]
    assert float(exited[2]) - started < 60  # the limit
    wait("the job's end", lambda: cluster.job_field(f"{job}_0", "JobState") == "COMPLETED", 30)
    info = farm.state().video(spec.id)
    assert farm.status(segment)["done"] == 0 and "crashes" not in info and \
        "lost_deliveries" not in info, info
    r = farm.state().r
    assert broker_task_ids(r) == {f"render-{spec.id}-1"}  # back in the queue, for any worker
    assert r.get(f"farm:lease:video:{spec.id}") is None
    print(f"\nslurm time limit: rendering {rendering - started:.1f} s, SIGTERM "
          f"{signalled - started:.1f} s after the job started "
          f"(limit 60 s, lead 10 s), worker exit {float(exited[2]) - signalled:.1f} s later")
