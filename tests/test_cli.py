"""The farm CLI end to end (specs, assets synth, demo-sized render)."""

from __future__ import annotations

import json
import subprocess
import sys

from farm.assets.library import AssetLibrary
from farm.model.spec import load_spec


def run(*args: str, package: str = "farm") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", package, "-q", *args], capture_output=True,
                          text=True)


def test_assets_synth(tmp_path):
    proc = run("assets", "synth", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lib = AssetLibrary.open(tmp_path / "models", tmp_path / "textures")
    assert len(lib.models) == 24 and lib.textures and lib.skyboxes


def test_specs_command_writes_one_yaml_per_video(pack, tmp_path):
    out = tmp_path / "specs"
    proc = run("specs", "--segment", "2", "--count", "12", "--start", "100", "--preset", "preview",
               "--out", str(out), "--models", str(pack.models), "--textures", str(pack.textures))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 12 specs" in proc.stdout
    names = sorted(p.stem for p in out.glob("*.yaml"))
    assert names == [f"c{i:05d}" for i in range(100, 112)]
    spec = load_spec(out / "c00105.yaml")
    assert spec.preset == "preview" and spec.frames == 24 and spec.index == 105


def test_specs_command_errors_are_clear(pack, tmp_path):
    proc = run("specs", "--segment", "0", "--count", "1", "--out", str(tmp_path), "--models",
               str(tmp_path / "missing"), "--textures", str(tmp_path))
    assert proc.returncode == 2
    assert "models root" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("specs", "--segment", "0", "--count", "1", "--preset", "nope", "--out",
               str(tmp_path), "--models", str(pack.models), "--textures", str(pack.textures))
    assert proc.returncode == 2 and "no preset 'nope'" in proc.stderr


def test_render_command_with_preset(pack, tmp_path):
    spec_dir = tmp_path / "specs"
    assert run("specs", "--segment", "0", "--count", "1", "--out", str(spec_dir), "--models",
               str(pack.models), "--textures", str(pack.textures)).returncode == 0
    out = tmp_path / "out"
    proc = run("render", "--spec", str(spec_dir / "a00000.yaml"), "--preset", "tiny", "--out",
               str(out), "--models", str(pack.models), "--textures", str(pack.textures),
               package="worker")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "JPEGImages" / "a00000").glob("*.jpg"))) == 3
    assert load_spec(out / "specs" / "a00000.yaml").preset == "tiny"


def test_render_exits_non_zero_for_a_gate_failure_and_keeps_it_only_when_asked(pack, tmp_path):
    from speck import speck_models

    from farm.generate.sampling import generate_spec
    from farm.model.presets import load_preset
    from farm.model.spec import save_spec

    models = speck_models(tmp_path / "models", pack.models)
    spec = generate_spec(AssetLibrary.open(models, pack.textures), load_preset("tiny"), 0, 1, 5)
    save_spec(spec, tmp_path / "speck.yaml")
    common = ["render", "--spec", str(tmp_path / "speck.yaml"), "--models", str(models),
              "--textures", str(pack.textures)]
    proc = run(*common, "--out", str(tmp_path / "out"), package="worker")
    assert proc.returncode == 4
    assert f"error: {spec.id}: failed the quality gate (3 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "JPEGImages" / spec.id).exists()

    proc = run(*common, "--out", str(tmp_path / "kept"), "--keep-gate-failures", package="worker")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "kept" / "manifests" / f"{spec.id}.json").read_text())
    assert manifest["gate"]["passed"] is False and manifest["keep_gate_failures"] is True
    assert len(list((tmp_path / "kept" / "JPEGImages" / spec.id).iterdir())) == 3
