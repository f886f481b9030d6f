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


def _model_copy(library, tmp_path, spec):
    """A models root holding copies of ``spec``'s models (so one can be replaced)."""
    import shutil

    root = tmp_path / "models-copy"
    for obj in spec.objects:
        src = (library.models_root / obj.obj_path).parent
        shutil.copytree(src, (root / obj.obj_path).parent, dirs_exist_ok=True)
    return root


@pytest.mark.parametrize("poison", ["faces", "texture"])
def test_an_asset_over_the_caps_fails_the_video_before_blender_loads_it(library, pack, tiny,
                                                                         tmp_path, poison):
    """A mesh with more faces than MAX_FACES, or an image whose header claims more pixels than
    MAX_IMAGE_PIXELS (a decompression bomb: tiny on disk), fails the video with that reason
    before any render process starts (no staging folder, no Blender)."""
    from PIL import Image

    from farm.assets import check
    from worker.process.runner import PermanentRenderError

    spec = generate_spec(library, tiny, 0, 3, 7)
    models = _model_copy(library, tmp_path, spec)
    victim = models / spec.objects[0].obj_path
    if poison == "faces":
        victim.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\n" + b"f 1 2 3\n" * (check.MAX_FACES + 1))
        expected = f"over the cap of {check.MAX_FACES}"
    else:
        (victim.parent / "bomb.png").unlink(missing_ok=True)
        Image.new("1", (9000, 8000)).save(victim.parent / "bomb.png")  # 72 M pixels, ~10 kB
        (victim.parent / "model_normalized.mtl").write_text("newmtl m\nmap_Kd bomb.png\n")
        victim.write_text("mtllib model_normalized.mtl\n" + victim.read_text())
        expected = "9000x8000 pixels, over the cap"
    with pytest.raises(PermanentRenderError, match=expected) as failure:
        render_attempts(spec, find_preset(spec.preset), models, pack.textures,
                        tmp_path / "scratch")
    assert spec.objects[0].model in str(failure.value)
    assert not staging_dir(tmp_path / "scratch", spec.id).exists()


def test_the_caps_pass_real_models_and_count_faces_across_chunks(library, pack, tiny, tmp_path):
    """The pack's models pass; face lines split between two read chunks are counted once."""
    from farm.assets.check import _face_lines_and_mtllibs, check_spec_files

    spec = generate_spec(library, tiny, 0, 3, 7)
    check_spec_files(spec, library.models_root, pack.textures)
    obj = tmp_path / "m.obj"
    obj.write_bytes(b"mtllib a.mtl\nv 0 0 0\n" + b"f 1 1 1\n" * 1000 + b"mtllib b c.mtl\nf 1 1 1")
    assert _face_lines_and_mtllibs(obj, chunk=7) == (1001, ["a.mtl", "b c.mtl"])
