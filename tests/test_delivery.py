"""Delivery correctness on real services: every enqueued video ends done or failed, in order."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from services import ROOT

pytestmark = [pytest.mark.services, pytest.mark.render]


def celery_control(farm, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app", "control",
                           "--timeout", "5", *args], env=farm.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def wait_log(farm, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in farm.log(name):
        assert time.monotonic() < deadline, farm.log(name)[-3000:]
        time.sleep(0.5)


def test_cancel_then_enqueue_again_renders(farm):
    farm.start_worker("w1")
    wait_log(farm, "w1", "ready.")
    celery_control(farm, "cancel_consumer", "render")  # the worker is up but takes nothing
    farm.cli("enqueue", "--segment", "9", "--count", "1", "--preset", "tiny")
    farm.cli("cancel", "--segment", "9")  # revokes the queued task on every worker
    assert farm.status(9)["cancelled"] == 1
    out = farm.cli("enqueue", "--segment", "9", "--count", "1", "--preset", "tiny").stdout
    assert "enqueued 1 videos" in out
    celery_control(farm, "add_consumer", "render")
    farm.wait_for(9, done=1, timeout=120)
    log = farm.log("w1")
    assert "Discarding revoked task" in log and "render-j00000-1" in log  # the cancelled one


def test_crash_retries_past_max_retries_end_failed(farm):
    # Every render is killed by the memory watchdog: a crash per delivery. Celery allows one
    # retry; the video must end failed with its reason, not sit in "retrying" forever.
    farm.start_worker("w1", FARM_MAX_RETRIES="1", FARM_MAX_DELIVERIES="5",
                      FARM_RENDER_MAX_RSS_MB="1")
    farm.cli("enqueue", "--segment", "10", "--count", "1", "--preset", "tiny")
    farm.wait_for(10, failed=1, retrying=0, timeout=120)
    failed = json.loads(farm.cli("failed", "--segment", "10", "--json").stdout)
    assert "render crashed 2 times (retries: 1)" in failed[0]["error"]
    assert "resident memory" in failed[0]["error"]


def test_explicit_priority_is_served_before_the_default(farm):
    farm.cli("enqueue", "--segment", "11", "--count", "3", "--preset", "tiny")  # default: 5
    farm.cli("enqueue", "--segment", "12", "--count", "1", "--preset", "tiny", "--priority", "3")
    farm.start_worker("w1")
    farm.wait_for(11, done=3, timeout=180)
    farm.wait_for(12, done=1, timeout=30)
    from farm.state import FarmState, connect

    state = FarmState(connect(farm.env["FARM_REDIS_URL"].replace(
        "redis://", f"redis://:{farm.env['REDIS_PASSWORD']}@")))
    started = {v: float(state.video(v)["started_at"])
               for v in ("l00000", "l00001", "l00002", "m00000")}
    assert min(started, key=started.get) == "m00000", started
