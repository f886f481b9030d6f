"""The output-kind registry (farm/io/output_kinds.py): one entry per kind, and a new kind is one
entry: registered alone, it is written, listed, described and read back by farm.io.outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from farm.io import outputs as fo
from farm.io.layout import FOLDERS, VIDEO_FOLDERS
from farm.io.output_kinds import KINDS, FrameInput, OutputKind, Reading, register, unregister
from farm.model.spec import OUTPUTS


def test_registry_is_the_list_spec_validation_knows():
    assert tuple(KINDS) == OUTPUTS  # farm.model.spec validates names without importing farm.io
    assert {name: kind.folder for name, kind in KINDS.items()} == FOLDERS
    assert set(FOLDERS.values()) <= set(VIDEO_FOLDERS)
    assert set(fo.UNITS) == {k for kind in KINDS.values() for k in (*kind.units, *kind.extra_units)}


def _write_albedo(f: FrameInput) -> dict:
    Image.fromarray(f.raw).save(f.path(""))
    return {"albedo_mean": round(float(f.raw.mean()), 3)}


def _read_albedo(r: Reading) -> dict:
    return {"albedo": np.stack([np.asarray(Image.open(r.file("", i))) for i in r.frames])}


@pytest.fixture
def albedo():
    kind = register(OutputKind(
        "albedo", "Albedo", {"albedo": "uint8 (T, H, W, 3) base colour"}, 3.0,
        lambda _settings: ".png", read=_read_albedo, write=_write_albedo,
        format=lambda _settings: {"format": "png8"}))
    try:
        yield kind
    finally:
        unregister("albedo")
    assert "albedo" not in KINDS


def test_a_new_kind_is_one_registry_entry(albedo, tmp_path):
    settings = {"outputs": ["rgb", "masks", "albedo"]}
    with pytest.raises(ValueError, match="registered already"):
        register(albedo)
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 255, (2, 6, 8, 3)).astype(np.uint8)
    timings: dict[str, float] = {}
    records = [fo.write_frame(tmp_path, "v00001", i, 2, settings, {"albedo": truth[i]},
                              timings=timings) for i in range(2)]
    assert records[1] == {"albedo_mean": round(float(truth[1].mean()), 3)}
    assert "albedo" in timings
    assert fo.frame_files(settings, "v00001", 1, 3)[-1] == "Albedo/v00001/00001.png"
    assert fo.folder_counts(settings, 2, 3)["Albedo"] == 2
    assert fo.formats(settings) == {"albedo": {"format": "png8"}}
    assert fo.scratch_bytes_per_pixel(settings, 3) == pytest.approx(1.0 + 0.2 + 3.0)
    manifest = {"video": "v00001", "num_frames": 2, "objects": [], "render_settings": settings,
                "frames": [{"frame": i, "objects": [], **r} for i, r in enumerate(records)]}
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "v00001.json").write_text(json.dumps(manifest))
    got = fo.load_video_outputs(tmp_path, "v00001", outputs=["albedo"])
    np.testing.assert_array_equal(got["albedo"], truth)
    assert got["outputs"] == ["albedo"] and "rgb" not in got
