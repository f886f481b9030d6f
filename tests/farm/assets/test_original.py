"""Import of the original BL30K generator's configs."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from services import ORIGINAL_YAML

from farm.assets.library import AssetLibrary
from farm.assets.original import import_file
from farm.model.spec import SpecError
from farm.model.validate import load_spec


def _original(path):
    data = yaml.safe_load(path.read_text())
    modules = {m["module"]: m["config"] for m in data["modules"]}
    return modules["composite.VOSTrajRunner"], modules["loader.SkyBoxLoader"]


@pytest.mark.parametrize("name", ["b00000", "b00001", "b00002"])
def test_import_preserves_every_value(name, library, bl30k):
    path = ORIGINAL_YAML / f"{name}.yaml"
    spec = import_file(path, library, bl30k)
    traj, sky = _original(path)
    cam = traj["camera_runner"]["config"]
    assert spec.id == name and spec.segment == 1 and spec.index == int(name[1:])
    assert spec.source == "imported"
    assert spec.frames == traj["n_frames"] == 160
    assert spec.resolution == [cam["intrinsics"]["resolution_x"], cam["intrinsics"]["resolution_y"]]
    assert spec.camera.fov == cam["intrinsics"]["fov"]
    assert spec.camera.location_poly == cam["cam_poses"]["location_poly"]
    assert spec.camera.look_at_poly == cam["cam_poses"]["look_at_poly"]
    assert len(spec.objects) == len(traj["object_runners"])
    for obj, runner in zip(spec.objects, traj["object_runners"], strict=True):
        cfg = runner["config"]
        assert cfg["path"] == f"<args:0>/{obj.model}/models/model_normalized.obj"
        assert obj.location_poly == cfg["poses"]["location_poly"]
        assert obj.rotation_poly == cfg["poses"]["rotation_poly"]
        assert obj.scale_poly == cfg["poses"]["scale_poly"]
        assert (f"<args:1>/{obj.texture}" if obj.texture else None) == cfg.get("texture")
        assert obj.category == library.model(obj.model).category
    for light, runner in zip(spec.lights, traj["light_runners"], strict=True):
        cfg = runner["config"]
        assert light.energy == cfg["light"]["energy"] and light.color == cfg["light"]["color"]
        assert light.location_poly == cfg["poses"]["location_poly"]
        assert light.rotation_poly == cfg["poses"]["rotation_poly"]
    assert f"<args:1>/{spec.background.image}" == sky["path"]
    assert spec.background.strength == sky["strength"]
    assert spec.background.location == sky["location"]
    assert spec.background.rotation == sky["rotation"]
    assert spec.render == bl30k.render


def test_import_renders_the_files_as_the_original_did(pack, library, bl30k, tmp_path):
    """Whatever the library declares, imported objects are the files as they are, Y-up (the
    original's import), with the bounding radius of the file: the same spec as without a
    declaration."""
    models = tmp_path / "models"
    shutil.copytree(pack.models, models)
    (models / "farm_library.yaml").write_text("normalized: false\nup_axis: Z\n")
    declared = AssetLibrary.open(models, pack.textures, cache_dir=tmp_path / "cache")
    spec = import_file(ORIGINAL_YAML / "b00000.yaml", declared, bl30k)
    assert spec.objects == import_file(ORIGINAL_YAML / "b00000.yaml", library, bl30k).objects
    for obj in spec.objects:
        assert not obj.normalize and obj.up_axis == "Y"
        assert obj.radius == declared.model(obj.model).radius


def test_import_cli_round_trip(pack, tmp_path):
    out = tmp_path / "specs"
    proc = subprocess.run(
        [sys.executable, "-m", "farm", "-q", "import-original", str(ORIGINAL_YAML),
         "--models", str(pack.models), "--textures", str(pack.textures), "--out", str(out)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b00000.yaml", "b00001.yaml", "b00002.yaml"]
    for p in out.iterdir():
        spec = load_spec(p)
        traj, _ = _original(ORIGINAL_YAML / p.name)
        assert spec.objects[0].location_poly == traj["object_runners"][0]["config"]["poses"][
            "location_poly"]


def test_import_reports_missing_model(library, bl30k, tmp_path):
    text = (ORIGINAL_YAML / "b00000.yaml").read_text().replace("model002", "model999")
    bad = tmp_path / "b00007.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError, match="model999"):
        import_file(bad, library, bl30k)


def test_import_rejects_garbage(library, bl30k, tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("modules: [{module: composite.VOSTrajRunner, config: {n_frames: 3}}]")
    with pytest.raises(SpecError, match="malformed original config|no loader.SkyBoxLoader"):
        import_file(bad, library, bl30k)
