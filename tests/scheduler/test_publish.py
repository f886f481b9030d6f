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


def test_enqueue_refuses_a_spec_that_cannot_fit_the_workers_scratch(farm, library, tmp_path):
    from dataclasses import replace

    from farm.generate.sampling import generate_spec
    from farm.model.presets import load_preset
    from farm.model.spec import save_spec

    spec = replace(generate_spec(library, load_preset("movi-like"), 22, 0, 2021),
                   resolution=(4096, 4096), source="imported")  # ~62 GiB of scratch
    save_spec(spec, tmp_path / "big.yaml")
    env = {"FARM_SHORT_VISIBILITY_OK": "1"}
    proc = farm.cli("enqueue", "--specs", str(tmp_path / "big.yaml"), check=False, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{spec.id}: its render needs about" in proc.stderr
    assert "more than the workers' 8192 MB (FARM_SCRATCH_SIZE_MB)" in proc.stderr
    assert farm.cli("status", "--json").stdout.strip() == "[]"  # nothing registered
    accepted = farm.cli("enqueue", "--specs", str(tmp_path / "big.yaml"),
                        env={**env, "FARM_SCRATCH_SIZE_MB": str(100 * 1024)})
    assert "enqueued 1 videos" in accepted.stdout
