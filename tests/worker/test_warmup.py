"""The worker's warm-up before it consumes, its health file, the kernel caches, and the render
process kept across tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from worker.process.environment import kernel_cache_env
from worker.warmup import host_lock, kernel_settings

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_caches_default_to_the_shared_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_KERNEL_CACHE", str(tmp_path / "kc"))
    env = kernel_cache_env({})
    assert env == {"OPTIX_CACHE_PATH": str(tmp_path / "kc" / "optix"),
                   "CUDA_CACHE_PATH": str(tmp_path / "kc" / "cuda"),
                   "CUDA_CACHE_MAXSIZE": str(4 << 30)}
    assert (tmp_path / "kc" / "optix").is_dir() and (tmp_path / "kc" / "cuda").is_dir()
    # an operator's own setting wins; the render processes' allow-list lets all three through
    assert "CUDA_CACHE_PATH" not in kernel_cache_env({"CUDA_CACHE_PATH": "/elsewhere"})
    from worker.process.environment import render_env

    assert set(render_env({**env, "AWS_SECRET_ACCESS_KEY": "x"})) == set(env)


def test_warm_up_covers_every_presets_device_settings():
    combos = {(c["denoise"], c["denoise_prefilter"] if c["denoise"] else "",
               c["adaptive_threshold"] > 0) for c in kernel_settings()}
    # tiny (no denoiser), fast/preview (FAST prefilter), seed (accurate), bl30k (adaptive)
    assert {(False, "", False), (True, "FAST", False), (True, "ACCURATE", False),
            (True, "ACCURATE", True)} <= combos
    assert [c["denoise"] for c in kernel_settings(["tiny"])] == [False]


def test_host_lock_lets_one_worker_compile_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_KERNEL_CACHE", str(tmp_path))
    order: list[str] = []
    with host_lock() as waited:
        assert waited < 1

        def second() -> None:
            with host_lock():
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]


@pytest.mark.render
def test_warmup_command_renders_each_setting(tmp_path):
    out = tmp_path / "warm.json"
    proc = subprocess.run([sys.executable, "-m", "worker.warmup", "--devices", "CPU",
                           "--presets", "tiny,fast", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FARM_KERNEL_CACHE": str(tmp_path / "kc")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["device"], r["denoise"]) for r in report["renders"]] == [("CPU", False),
                                                                       ("CPU", True)]
    assert "warm-up: 2 renders" in proc.stdout


@pytest.mark.render
@pytest.mark.services
def test_worker_warms_up_before_it_consumes_and_keeps_its_render_process(farm):
    """A message waiting before the worker starts is taken only after the warm-up; the health
    file appears when it consumes and goes with it; both videos render in one render process
    that the worker started before its first task."""
    farm.cli("enqueue", "--segment", "0", "--count", "2", "--preset", "tiny")
    health = farm.folder / "scratch" / "w1" / "worker-ready.json"
    check = [sys.executable, "-m", "worker.warmup", "--check"]
    env = {**farm.env, "FARM_HEALTH_FILE": str(health)}
    assert subprocess.run(check, env=env, cwd=ROOT, capture_output=True).returncode == 1
    worker = farm.start_worker("w1", FARM_WARMUP="auto")  # the test farm's workers skip it
    farm.wait_for(0, done=2)
    log = farm.log("w1")
    warm = log.index("render warm-up: 1 render(s) on CPU")
    assert warm < log.index("ready.") < log.index("Task farm.render_video[")
    info = json.loads(health.read_text())
    assert info["warmup"]["device"] == "CPU" and info["warmup"]["seconds"] > 0
    ok = subprocess.run(check, env=env, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "ready since" in ok.stdout
    manifests = [json.loads(farm.s3.get_object(Bucket=farm.bucket, Key=f"bl30k/0/manifests/"
                                               f"{v}.json")["Body"].read())
                 for v in ("a00000", "a00001")]
    processes = [m["render_process"] for m in manifests]
    assert {p["design"] for p in processes} == {"server"}
    assert len({p["pid"] for p in processes}) == 1  # one render process for both tasks
    assert sorted(p["video"] for p in processes)[-1] >= 2
    farm.close()
    assert worker.poll() is not None and not health.exists()


@pytest.mark.render
@pytest.mark.services
def test_a_failed_warm_up_stops_the_worker_before_it_consumes(farm):
    """A worker that cannot render (here: OptiX required, none on this machine) exits instead
    of failing every video; the queued video stays queued."""
    farm.cli("enqueue", "--segment", "0", "--count", "1", "--preset", "tiny")
    worker = farm.start_worker("w1", FARM_WARMUP="auto", FARM_WARMUP_DEVICES="OPTIX")
    assert worker.wait(timeout=120) != 0
    log = farm.log("w1")
    assert "render warm-up failed, not consuming" in log and "OPTIX" in log
    assert "Task farm.render_video[" not in log
    assert farm.status(0)["queued"] == 1
