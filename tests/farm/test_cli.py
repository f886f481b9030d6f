"""The farm CLI end to end (specs, assets synth, stats, import, settings)."""

from __future__ import annotations

import subprocess
import sys

from farm.assets.library import AssetLibrary
from farm.model.validate import load_spec


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farm", "-q", *args], capture_output=True,
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


def test_render_and_demo_point_to_the_worker():
    proc = run("render", "--spec", "a.yaml", "--out", "out")
    assert proc.returncode == 2
    assert proc.stderr == ("error: 'render' moved to the worker: python -m worker render --spec "
                           "a.yaml --out out\n")
    assert "python -m worker demo" in run("demo").stderr
