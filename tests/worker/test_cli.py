"""The worker CLI end to end: ``python -m worker render`` (tiny renders, the quality gate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services import ROOT

from farm.assets.library import AssetLibrary
from farm.model.validate import load_spec


def run(*args: str, package: str = "worker", cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", package, "-q", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)} if cwd else None)


def test_render_command_with_preset_and_paths_relative_to_the_caller(pack, tmp_path):
    spec_dir = tmp_path / "specs"
    assert run("specs", "--segment", "0", "--count", "1", "--out", str(spec_dir), "--models",
               str(pack.models), "--textures", str(pack.textures), package="farm").returncode == 0
    out = tmp_path / "out"
    # every path relative to the working directory (the render process runs elsewhere)
    models, textures = (os.path.relpath(p, tmp_path) for p in (pack.models, pack.textures))
    proc = run("render", "--spec", "specs/a00000.yaml", "--preset", "tiny", "--out", "out",
               "--models", models, "--textures", textures, cwd=tmp_path)
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
    proc = run(*common, "--out", str(tmp_path / "out"))
    assert proc.returncode == 4
    assert f"error: {spec.id}: failed the quality gate (3 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "JPEGImages" / spec.id).exists()

    proc = run(*common, "--out", str(tmp_path / "kept"), "--keep-gate-failures")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "kept" / "manifests" / f"{spec.id}.json").read_text())
    assert manifest["gate"]["passed"] is False and manifest["keep_gate_failures"] is True
    assert len(list((tmp_path / "kept" / "JPEGImages" / spec.id).iterdir())) == 3
