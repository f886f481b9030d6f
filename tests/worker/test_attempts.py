"""worker.attempts: a video that never passes the quality gate fails; a kept one records
every attempt (real tiny renders of the speck pack)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from speck import speck_models

from farm.generate.sampling import generate_spec
from farm.io.layout import staging_dir
from farm.model.presets import find_preset
from worker.attempts import GateFailed, render_attempts


@pytest.fixture
def speck_library(pack, tmp_path):
    from farm.assets.library import AssetLibrary

    return AssetLibrary.open(speck_models(tmp_path / "models", pack.models), pack.textures)


@pytest.mark.render
def test_video_that_never_passes_the_gate_fails(speck_library, pack, tiny, tmp_path):
    spec = generate_spec(speck_library, tiny, 0, 1, 5)
    assert spec.generation["gate"]["passed"]
    with pytest.raises(GateFailed) as failure:
        render_attempts(spec, find_preset(spec.preset),
                        speck_library.models_root, pack.textures, tmp_path / "scratch")
    message = str(failure.value)
    assert f"{tiny.quality_gate.max_attempts} attempts" in message
    assert "pixels in frame 0" in message and "00000002/speck" in message
    assert not staging_dir(tmp_path / "scratch", spec.id).exists()  # no frames left behind


@pytest.mark.render
def test_kept_gate_failure_records_every_attempt(speck_library, pack, tiny, tmp_path):
    spec = replace(generate_spec(speck_library, tiny, 0, 1, 5), keep_gate_failures=True)
    outcome = render_attempts(spec, find_preset(spec.preset),
                              speck_library.models_root, pack.textures, tmp_path / "scratch")
    manifest = outcome.manifest
    assert manifest["attempt"] == tiny.quality_gate.max_attempts - 1 == outcome.spec.attempt
    rejected = manifest["rejected_attempts"]
    assert [r["attempt"] for r in rejected] == list(range(tiny.quality_gate.max_attempts - 1))
    masks = [r for r in rejected if r["check"] == "mask"]
    assert masks and all("pixels in frame 0" in r["reason"] for r in masks)
    assert manifest["gate"]["passed"] is False and manifest["keep_gate_failures"] is True
    # deterministic: the final spec is the generator's output for that attempt
    assert outcome.spec.objects == generate_spec(
        speck_library, tiny, 0, 1, 5, first_attempt=outcome.spec.attempt).objects
