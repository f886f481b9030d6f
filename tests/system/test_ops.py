"""Operations fail closed, on real services: GPU pinning, shutdown, scratch, secrets.

Every test runs real Celery workers against redis-server and moto's S3 server (``farm``
fixture) and renders with bpy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from services import ROOT, render_processes

from farm.generate.sampling import generate_spec
from farm.model.presets import load_preset
from farm.model.spec import save_spec
from farm.queue.state import FarmState

pytestmark = [pytest.mark.services, pytest.mark.render]


def farm_state(farm) -> FarmState:
    return farm.state()


def wait_log(farm, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in farm.log(name):
        assert time.monotonic() < deadline, f"{text!r} not in {name}'s log:\n" + \
            farm.log(name)[-3000:]
        time.sleep(0.3)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker {proc.pid} still running after {timeout:.0f} s") from None


def gpu_lease_keys(state: FarmState) -> list[str]:
    return sorted(state.r.scan_iter(match="farm:lease:gpu:*"))


# --- 7. GPU pinning ------------------------------------------------------------------------------


def test_worker_without_redis_never_renders_unpinned(farm):
    """Redis unreachable at start: a worker exits non-zero after FARM_GPU_CLAIM_TIMEOUT; one
    that gets Redis back in time renders with the GPU it claimed, never with every GPU."""
    from devtools.faults import FaultProxy

    proxy = FaultProxy(int(farm.env["FARM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]))
    try:
        via_proxy = {"FARM_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "FARM_GPUS": "0,1"}
        w1 = farm.start_worker("w1", **via_proxy, FARM_GPU_CLAIM_TIMEOUT="4")
        assert wait_exit(w1, 60) == 69, farm.log("w1")[-3000:]
        assert "no GPU claimed within 4 s" in farm.log("w1")
        assert "cannot reach Redis" in farm.log("w1")
        assert "ready." not in farm.log("w1")  # never consumed

        w2 = farm.start_worker("w2", **via_proxy, FARM_GPU_CLAIM_TIMEOUT="120")
        wait_log(farm, "w2", "cannot reach Redis to claim a GPU")
        proxy.down = False
        farm.cli("enqueue", "--segment", "21", "--count", "1", "--preset", "tiny")
        farm.wait_for(21, done=1, timeout=180)
        assert w2.poll() is None
    finally:
        proxy.close()
    assert "worker device: GPU 0 of node" in farm.log("w2")
    assert farm_state(farm).video("v00000")["gpu"] == "0"  # CUDA_VISIBLE_DEVICES of its render


def slow_spec(library, segment: int, folder: Path):
    """An imported tiny-scene spec that takes 12-20 s to render here (1-1.7 s a frame on 2
    loaded cores): a worker stopped after its first frame is stopped mid-render."""
    base = generate_spec(library, load_preset("tiny"), segment, 0, 2021)
    spec = replace(base, frames=12, resolution=(160, 120), source="imported",
                   render=replace(base.render, samples=64))
    save_spec(spec, folder / f"{spec.id}.yaml")
    return spec, folder / f"{spec.id}.yaml"


def wait_rendering(farm, worker: str, proc: subprocess.Popen, video: str) -> Path:
    """Wait until ``worker`` has written the first frame of ``video``; its staging folder."""
    staging = farm.folder / "scratch" / worker / f"{video}.staging"
    first = staging / "JPEGImages" / video / "00000.jpg"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert time.monotonic() < deadline and proc.poll() is None, farm.log(worker)[-3000:]
        time.sleep(0.2)
    return staging


def test_worker_whose_gpu_lease_is_lost_exits_and_a_restart_repins(farm, library, tmp_path):
    """The GPU lease taken by another holder mid-render: the worker stops rendering on a GPU it
    no longer owns (hands the video back) and exits 75; restarted, it claims the GPU again and
    renders the video; a deleted lease stops it too (never silently taken back)."""
    state = farm_state(farm)
    spec, path = slow_spec(library, 22, tmp_path)
    w1 = farm.start_worker("w1", FARM_GPUS="0")
    wait_log(farm, "w1", "worker device: GPU 0")
    farm.cli("enqueue", "--specs", str(path))
    staging = wait_rendering(farm, "w1", w1, spec.id)
    [key] = gpu_lease_keys(state)
    state.r.set(key, "thief:1:feedbeef")  # another holder, until it hands the GPU back below
    assert wait_exit(w1, 30) == 75, farm.log("w1")[-3000:]
    assert "is now held by thief:1:feedbeef" in farm.log("w1")
    assert f"{spec.id}: the worker is shutting down; handing the video back" in farm.log("w1")
    assert not render_processes(str(staging))

    # restarted (like the container): waits for the GPU, claims it again, renders on it
    w1b = farm.start_worker("w1b", FARM_GPUS="0", FARM_GPU_CLAIM_TIMEOUT="120")
    wait_log(farm, "w1b", "held by other workers; retrying", timeout=60)
    assert state.r.delete(key) == 1  # the thief hands it back
    wait_log(farm, "w1b", "worker device: GPU 0", timeout=60)
    farm.wait_for(22, done=1, timeout=180)
    info = state.video(spec.id)
    assert info["gpu"] == "0" and info["uploads"] == "1"
    assert "lost_deliveries" not in info and "crashes" not in info, info

    state.r.delete(key)  # a deleted lease is lost too: never silently taken back
    assert wait_exit(w1b, 30) == 75, farm.log("w1b")[-3000:]
    assert "disappeared from Redis" in farm.log("w1b")


def test_gpu_leases_are_keyed_by_uuid_whatever_the_node_names(farm, tmp_path):
    """Two hosts (node names) that see the same physical GPU never both claim it; the worker
    renders with CUDA_VISIBLE_DEVICES set to the UUID; the exporter labels node and index."""
    uuid = "GPU-0d1c2b3a-1111-2222-3333-444455556666"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\ncase \"$*\" in *index,uuid*) echo \"0, " + uuid + "\" ;; "
                    "*) echo 0 ;; esac\n")
    fake.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    farm.start_worker("w1", FARM_GPUS="auto", FARM_NODE_NAME="host-a", PATH=path)
    wait_log(farm, "w1", "worker device: GPU 0")
    w2 = farm.start_worker("w2", FARM_GPUS="auto", FARM_NODE_NAME="host-b", PATH=path,
                           FARM_GPU_CLAIM_TIMEOUT="5")
    assert wait_exit(w2, 60) == 69, farm.log("w2")[-3000:]
    state = farm_state(farm)
    assert gpu_lease_keys(state) == [f"farm:lease:gpu:{uuid}"]
    assert f"worker device: GPU 0 ({uuid}) of node host-a" in farm.log("w1")

    farm.cli("enqueue", "--segment", "23", "--count", "1", "--preset", "tiny")
    farm.wait_for(23, done=1, timeout=120)
    assert state.video("x00000")["gpu"] == uuid

    from prometheus_client import generate_latest

    from scheduler.exporter import registry

    url = farm.env["FARM_REDIS_URL"].replace("redis://", f"redis://:{farm.env['REDIS_PASSWORD']}@")
    text = generate_latest(registry(url)).decode()
    assert 'farm_gpu_lease{gpu="0",holder=' in text and 'node="host-a"' in text


# --- 11. Shutdown and scratch --------------------------------------------------------------------


def test_sigterm_hands_the_render_back_at_once(farm, library, tmp_path):
    """A redeploy (SIGTERM) mid-render: the worker kills Blender, re-publishes the video and exits
    within seconds; another worker renders it long before the visibility timeout; one upload, no
    lost delivery or crash counted."""
    from farm.queue.app import visibility_timeout
    from farm.settings import load_settings

    spec, path = slow_spec(library, 20, tmp_path)  # finishing it would take far longer
    video = spec.id
    w1 = farm.start_worker("w1")
    farm.cli("enqueue", "--specs", str(path))
    staging = wait_rendering(farm, "w1", w1, video)
    assert render_processes(str(staging))
    w2 = farm.start_worker("w2")
    stopped = time.monotonic()
    w1.send_signal(signal.SIGTERM)
    assert wait_exit(w1, 15) == 0, farm.log("w1")[-3000:]
    exit_s = time.monotonic() - stopped
    assert f"{video}: the worker is shutting down; handing the video back" in farm.log("w1")
    assert exit_s < 10, f"the worker took {exit_s:.1f} s to stop"
    assert not render_processes(str(staging)), "Blender outlived its worker's shutdown"

    status = farm.wait_for(20, done=1, timeout=240)
    assert status["failed"] == 0
    assert time.monotonic() - stopped < min(240, visibility_timeout(load_settings()) / 10)
    assert w2.poll() is None and "handed back" not in farm.log("w2")
    # acknowledged, not restored: one message, received once by the second worker
    assert "Restoring" not in farm.log("w1")
    assert farm.log("w2").count(f"[render-{video}-1] received") == 1
    info = farm_state(farm).video(video)
    assert info["uploads"] == "1"
    assert "lost_deliveries" not in info and "crashes" not in info, info
    r = farm_state(farm).r
    assert r.llen("render") == 0 and r.hlen("unacked") == 0
    frames = farm.keys(f"bl30k/20/JPEGImages/{video}/")
    assert len(frames) == spec.frames and farm.keys(f"bl30k/20/done/{video}.json")


def test_stale_staging_folders_are_removed_at_task_start(farm):
    scratch = farm.folder / "scratch" / "w1"
    old = time.time() - 7200

    def staging(name: str, age: float | None) -> Path:
        folder = scratch / name
        (folder / "JPEGImages" / "v").mkdir(parents=True)
        (folder / "JPEGImages" / "v" / "00000.jpg").write_bytes(b"x" * 1000)
        if age is not None:
            for path in [*folder.rglob("*"), folder]:
                os.utime(path, (age, age))
        return folder

    stale = staging("q00007.staging", old)
    fresh = staging("q00008.staging", None)  # written recently: maybe a render going on
    leased = staging("q00009.staging", old)  # old, but a live worker leases the video
    other = staging("notes", old)  # not a staging folder
    state = farm_state(farm)
    assert state.acquire("video:q00009", "someone-else", ttl_s=600)
    farm.start_worker("w1", FARM_STAGING_MAX_AGE="600")
    farm.cli("enqueue", "--segment", "16", "--count", "1", "--preset", "tiny")
    farm.wait_for(16, done=1, timeout=120)
    assert not stale.exists()
    assert fresh.exists() and leased.exists() and other.exists()
    assert f"removed stale staging folder {stale}" in farm.log("w1")


def test_a_worker_whose_scratch_stays_full_stops_consuming(farm, tmp_path):
    health = tmp_path / "w1.unhealthy"
    w1 = farm.start_worker("w1", FARM_SCRATCH_RESERVE_MB=str(10**12),  # never enough space
                           FARM_SCRATCH_FULL_PAUSE="0.5", FARM_UNHEALTHY_FILE=str(health))
    farm.cli("enqueue", "--segment", "17", "--count", "1", "--preset", "tiny")
    wait_log(farm, "w1", "this worker stops consuming 'render'", timeout=120)
    handed = farm.log("w1").count("handing the video back")
    assert handed == 3
    assert "free or enlarge its scratch disk" in health.read_text()
    time.sleep(12)  # two more hand-back periods: nothing more is taken
    assert farm.log("w1").count("handing the video back") == 3
    assert w1.poll() is None
    node = f"w1@{socket.gethostname()}"
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app", "inspect",
                          "active_queues", "-d", node, "--timeout", "5", "--json"], env=farm.env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {node: []}
    assert farm.status(17)["done"] == 0
    farm.start_worker("w2")  # a healthy worker takes the video
    farm.wait_for(17, done=1, timeout=120)


# --- 8. Secrets from files -----------------------------------------------------------------------


def _env_without(env: dict, *names: str) -> dict:
    return {k: v for k, v in env.items() if k not in names}


def test_secrets_come_from_files_and_a_conflict_is_an_error(farm, tmp_path):
    from devtools.local import start_worker
    from devtools.processes import free_port, stop, wait_port

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (("redis_password", farm.env["REDIS_PASSWORD"]),
                        ("aws_key", farm.env["AWS_ACCESS_KEY_ID"]),
                        ("aws_secret", farm.env["AWS_SECRET_ACCESS_KEY"]),
                        ("flower", "ops:fl0wer-pass")):
        (secrets / name).write_text(value + "\n")
    env = {**_env_without(farm.env, "REDIS_PASSWORD", "AWS_ACCESS_KEY_ID",
                          "AWS_SECRET_ACCESS_KEY"),
           "REDIS_PASSWORD_FILE": str(secrets / "redis_password"),
           "AWS_ACCESS_KEY_ID_FILE": str(secrets / "aws_key"),
           "AWS_SECRET_ACCESS_KEY_FILE": str(secrets / "aws_secret")}
    farm.workers.append(start_worker(env, "w1", farm.folder / "w1.log"))
    cli = [sys.executable, "-m", "scheduler", "-q"]
    enq = subprocess.run([*cli, "enqueue", "--segment", "18", "--count", "1", "--preset",
                          "tiny"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert enq.returncode == 0, enq.stderr
    farm.wait_for(18, done=1, timeout=120)

    # both the variable and the file: refused, whichever would have won
    (secrets / "other").write_text("another-password\n")
    both = subprocess.run([*cli, "status"], env={**farm.env, "REDIS_PASSWORD_FILE": str(
        secrets / "other")}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert "both REDIS_PASSWORD and REDIS_PASSWORD_FILE are set" in both.stderr
    empty = secrets / "empty"
    empty.write_text("\n")
    proc = subprocess.run([*cli, "status"], env={**_env_without(env, "REDIS_PASSWORD_FILE"),
                                                 "REDIS_PASSWORD_FILE": str(empty)},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "the file is empty" in proc.stderr

    # Flower cannot read a file: farm.secrets resolves it into its variable, and it checks it
    port = free_port()
    flower_env = {**env, "FLOWER_BASIC_AUTH_FILE": str(secrets / "flower")}
    log = tmp_path / "flower.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.secrets", "exec", sys.executable, "-m", "celery", "-A",
         "worker.celery_app", "flower", f"--port={port}", "--address=127.0.0.1"],
        env=flower_env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, "flower", timeout=60)
        api = f"http://127.0.0.1:{port}/api/workers"
        assert requests.get(api, timeout=10).status_code == 401
        assert requests.get(api, auth=("ops", "wrong"), timeout=10).status_code == 401
        assert requests.get(api, auth=("ops", "fl0wer-pass"), timeout=10).status_code == 200
    finally:
        stop([proc])


def test_read_secret_rules(tmp_path):
    from farm.secrets import SecretError, read_secret, resolved_environ

    path = tmp_path / "s"
    path.write_text("  value\n")
    assert read_secret("X", {"X_FILE": str(path)}) == "value"
    assert read_secret("X", {"X": "plain"}) == "plain"
    assert read_secret("X", {"X": "", "X_FILE": str(path)}) == "value"  # empty means unset
    assert read_secret("X", {}) is None
    with pytest.raises(SecretError, match="both X and X_FILE"):
        read_secret("X", {"X": "plain", "X_FILE": str(path)})
    with pytest.raises(SecretError, match="X_FILE=.*missing"):
        read_secret("X", {"X_FILE": str(tmp_path / "missing")})
    env = resolved_environ({"REDIS_PASSWORD_FILE": str(path), "OTHER": "1"})
    assert env == {"REDIS_PASSWORD": "value", "OTHER": "1"}
