"""A black-hole worker (every render it starts crashes) beside a healthy one, on a real Redis,
S3 server and Celery workers: it stops after FARM_WORKER_FAILURE_LIMIT different videos, turns
unhealthy (health file, ``scheduler status``, the exporter's gauge) and gives the videos back
uncounted; the healthy worker renders everything."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytestmark = [pytest.mark.services, pytest.mark.render]


def wait_until(condition, timeout: float, message) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(0.5)


def test_a_black_hole_worker_stops_and_the_healthy_one_renders_everything(farm, tmp_path):
    from prometheus_client import generate_latest

    from farm.queue import metrics
    from scheduler.exporter import registry

    health = tmp_path / "bad.unhealthy"
    # no render passes a 1 MB memory cap: each one is killed at once (a crash), as on a broken GPU
    farm.start_worker("bad", FARM_RENDER_MAX_RSS_MB="1", FARM_RENDER_PROCESS="oneshot",
                      FARM_WARMUP="off", FARM_UNHEALTHY_FILE=str(health))
    wait_until(lambda: "ready." in farm.log("bad"), 60, lambda: farm.log("bad")[-3000:])
    farm.cli("enqueue", "--segment", "23", "--count", "6", "--preset", "tiny")
    farm.start_worker("good")
    state = farm.state()
    bad = f"bad@{socket.gethostname()}"
    wait_until(lambda: bad in state.unhealthy_workers(), 120,
               lambda: f"the black-hole worker never stopped:\n{farm.log('bad')[-3000:]}")
    status = farm.wait_for(23, done=6, timeout=240)
    assert status["failed"] == 0 and status["unhealthy_workers"] == [bad]
    videos = sorted(state.states(23))
    for video in videos:  # the crashes on the black hole are not the videos' failures
        info = state.video(video)
        assert int(info.get("crashes", 0)) == 0 and info["uploads"] == "1", (video, info)
    delivered = metrics.read(state.r)[metrics.VIDEOS.name]
    by_worker = {labels[1]: n for labels, n in delivered.items()}  # (segment, worker, ...)
    assert by_worker == {f"good@{socket.gethostname()}": 6}, delivered
    assert "3 different videos failed in a row on this worker" in health.read_text()
    text = farm.cli("status", "--segment", "23").stdout
    assert f"warning: worker {bad} is unhealthy and consumes nothing" in text
    exposed = generate_latest(registry(farm.env["FARM_REDIS_URL"].replace(
        "redis://", f"redis://:{farm.env['REDIS_PASSWORD']}@"))).decode()
    assert f'farm_worker_unhealthy{{worker="{bad}"}} 1.0' in exposed
    assert json.loads(farm.cli("failed", "--segment", "23", "--json").stdout) == []
