"""Publishing and re-sending (``scheduler.publish``) on a real Redis, S3 server and scheduler CLI."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from services import ROOT

pytestmark = pytest.mark.services


def _messages(state, video: str) -> list[dict]:
    """The task messages of ``video`` waiting in the broker's queues: headers and kwargs."""
    found = []
    for key in [k for k in state.r.scan_iter("render*") if state.r.type(k) == "list"]:
        for raw in state.r.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"]["id"].startswith(f"render-{video}-"):
                _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                found.append({"raw": raw, "key": key, "id": message["headers"]["id"],
                              "kwargs": kwargs})
    return found


def test_a_resend_carries_the_enqueued_preset_not_an_edited_config(farm, tmp_path):
    """Editing a preset after the enqueue changes nothing of the enqueued videos: a re-send (here
    the reconciler's, after the broker lost the message) carries the preset of the enqueue
    record, with which the recipe's digest was computed."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    env = {"FARM_CONFIGS": str(configs)}
    farm.cli("enqueue", "--segment", "20", "--count", "1", "--preset", "tiny", env=env)
    state = farm.state()
    [video] = state.states(20)
    [sent] = _messages(state, video)
    assert sent["kwargs"]["preset"]["frames"] == 3
    tiny = configs / "tiny.yaml"
    tiny.write_text(tiny.read_text().replace("frames: 3", "frames: 5"))
    assert state.r.lrem(sent["key"], 0, sent["raw"]) == 1  # the broker lost it
    out = farm.cli("reconcile", "--segment", "20", env=env).stdout
    assert f"re-sent 1 videos without a message in the broker: {video}" in out
    [again] = _messages(state, video)
    assert again["id"] == f"render-{video}-2"
    assert again["kwargs"]["preset"] == sent["kwargs"]["preset"]
    assert again["kwargs"]["digest"] == sent["kwargs"]["digest"]
