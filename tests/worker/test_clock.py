"""Retry ETAs by Redis's clock: a worker whose clock runs an hour ahead (libfaketime) crashes a
render and retries it; a worker with a correct clock takes the retry after the few seconds meant,
not an hour later. Real Redis, S3 server and Celery workers."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.services, pytest.mark.render]
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")  # Debian's libfaketime


def test_a_retry_from_a_worker_with_a_wrong_clock_is_due_by_redis_clock(farm):
    assert FAKETIME.exists() and shutil.which("faketime"), "apt-get install faketime (make test)"
    # Every render of this worker is killed at once (a 1 MB memory cap): one crash, one retry.
    ahead = farm.start_worker("ahead", LD_PRELOAD=str(FAKETIME), FAKETIME="+1h",
                              FARM_RENDER_MAX_RSS_MB="1", FARM_RENDER_PROCESS="oneshot",
                              FARM_WARMUP="off")
    farm.cli("enqueue", "--segment", "31", "--count", "1", "--preset", "tiny")
    state = farm.state()
    (video,) = state.states(31)
    deadline = time.monotonic() + 120
    while int(state.video(video).get("crashes", 0)) < 1:
        assert time.monotonic() < deadline, farm.log("ahead")[-3000:]
        time.sleep(0.5)
    # Stopped (warm shutdown: what it holds goes back to the queue, a render under way is handed
    # back uncounted) before it takes the retry more than once.
    ahead.terminate()
    ahead.wait(60)
    farm.start_worker("right")
    status = farm.wait_for(31, done=1, timeout=90)  # an ETA by the fast clock: ~1 h away
    assert status["failed"] == 0
    assert state.video(video)["crashes"] in ("1", "2")
