"""``scheduler finalize`` against the bucket's own record of what was enqueued (real Redis, S3
server, Celery worker)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.services, pytest.mark.render]


def test_finalize_fails_naming_an_enqueued_video_redis_forgot(farm):
    """Redis loses one video's registration (the last second of AOF): finalize must still know
    from the bucket that three videos were enqueued, fail, and name the lost one."""
    farm.cli("enqueue", "--segment", "21", "--count", "3", "--preset", "tiny")
    state = farm.state()
    lost = sorted(state.states(21))[1]
    state.r.hdel("farm:seg:21:state", lost)
    state.r.hdel("farm:seg:21:specs", lost)
    state.r.delete(f"farm:video:{lost}")
    for key in [k for k in state.r.scan_iter("render*") if state.r.type(k) == "list"]:
        for raw in state.r.lrange(key, 0, -1):  # its message went with it
            if json.loads(raw)["headers"]["id"].startswith(f"render-{lost}-"):
                state.r.lrem(key, 0, raw)
    farm.start_worker("w1")
    farm.wait_for(21, done=2, total=2, timeout=180)
    proc = farm.cli("finalize", "--segment", "21", check=False)
    assert proc.returncode == 1, proc.stdout
    assert f"are unknown to Redis and not done: {lost}" in proc.stdout
    assert "1 of 3 videos missing" in proc.stdout and lost in proc.stdout.splitlines()[-1]
    assert not [k for k in farm.keys("bl30k/21/") if k.endswith("meta.json")]
