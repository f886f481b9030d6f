"""Real third-party meshes (pybullet_data, not normalised) in a ShapeNet-layout tree: bounds,
library declaration, asset-check messages, normalisation in Blender, and tiny renders that pass
the quality gate only when the renderer normalises."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from thirdparty import DENIED, MODELS, build_tree

import farm.assets.library as assets
from farm.assets.check import check_library, check_obj
from farm.assets.library import AssetError, AssetLibrary, LibraryDeclaration, read_declaration
from farm.generate.sampling import generate_spec
from farm.model.spec import VideoSpec
from farm.model.validate import load_spec
from worker.cli import write_videos

VIDEOS = range(8)  # generated videos rendered from each tree (segment 0, seed 2021)


def _vertices(path: Path) -> np.ndarray:
    """Reference parse: every ``v`` line's first three numbers."""
    return np.array([line.split()[1:4] for line in path.read_text().splitlines()
                     if line.startswith("v ")], dtype=float)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The renderer normalises (the default); the files are Z-up like URDF models."""
    return build_tree(tmp_path_factory.mktemp("thirdparty"), "up_axis: Z\n")


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    """The same meshes, declared already normalised: rendered as they are."""
    return build_tree(tmp_path_factory.mktemp("thirdparty-raw"), "normalized: true\nup_axis: Z\n")


@pytest.fixture(scope="module")
def problems(tree, pack):
    return check_library(AssetLibrary.open(tree, pack.textures), workers=2)


def test_tree_is_real_unnormalised_meshes(tree, pack):
    lib = AssetLibrary.open(tree, pack.textures)
    assert {m.id for m in lib.models} == set(MODELS)
    diagonals = {m.id: m.diagonal for m in lib.models if m.bounds}
    assert min(diagonals.values()) < 0.2 and max(diagonals.values()) > 170  # mug .. monastery
    assert sum(not 0.5 <= d <= 2 for d in diagonals.values()) >= 8
    assert {m.category for m in lib.models} >= {"blob", "robot part", "building"}
    assert lib.model("90000002/duck").mapped and not lib.model("90000004/mug").mapped


def test_bounds_come_from_the_obj_once_and_are_cached(tree, pack, tmp_path, monkeypatch):
    lib = AssetLibrary.open(tree, pack.textures, cache_dir=tmp_path)
    for model in lib.models:
        vertices = _vertices(tree / model.id / "models/model_normalized.obj")
        if not np.isfinite(vertices).all():
            assert model.bounds is None  # NaN vertices: unknown bounds (the check denies it)
            continue
        np.testing.assert_allclose(model.bounds, [vertices.min(0), vertices.max(0)])
    monastery = lib.model("90000005/monastery")
    assert monastery.bounds[1][0] - monastery.bounds[0][0] == pytest.approx(124.53, abs=0.01)

    def parse_again(path):
        raise AssertionError(f"{path} parsed again")

    monkeypatch.setattr(assets, "obj_bounds", parse_again)
    assert AssetLibrary.open(tree, pack.textures, cache_dir=tmp_path).models == lib.models


def test_shapenet_json_bounds_are_preferred(tree, pack, tmp_path):
    (tree / "90000004/mug/models/model_normalized.json").write_text(
        '{"min": [-0.1, -0.2, -0.3], "max": [0.1, 0.2, 0.3], "centroid": [0, 0, 0]}')
    try:
        mug = AssetLibrary.open(tree, pack.textures, cache_dir=tmp_path).model("90000004/mug")
        assert mug.bounds == [[-0.1, -0.2, -0.3], [0.1, 0.2, 0.3]]
        assert mug.radius == pytest.approx(math.sqrt(0.14))
    finally:
        (tree / "90000004/mug/models/model_normalized.json").unlink()


def test_specs_carry_what_the_renderer_needs(tree, raw_tree, pack, tiny):
    lib = AssetLibrary.open(tree, pack.textures)
    assert lib.declaration == LibraryDeclaration(normalized=False, up_axis="Z")
    for obj in generate_spec(lib, tiny, 0, 7, 2021).objects:
        assert (obj.normalize, obj.up_axis, obj.radius) == (True, "Z", 0.5)
    raw = AssetLibrary.open(raw_tree, pack.textures)
    for obj in generate_spec(raw, tiny, 0, 7, 2021).objects:
        assert (obj.normalize, obj.up_axis) == (False, "Z")
        assert obj.radius == round(raw.model(obj.model).radius, 6)  # farthest bounding-box corner
    assert raw.model("90000005/monastery").radius == pytest.approx(97.8, abs=0.1)


@pytest.mark.parametrize(("text", "message"), [
    ("normalised: true\n", "unknown key(s) normalised"),
    ("normalized: 1\n", "normalized must be true or false, got 1"),
    ("up_axis: z\n", "up_axis must be Y or Z, got 'z'"),
    ("up_axis: X\n", "up_axis must be Y or Z, got 'X'"),
    ("- normalized\n", "expected a mapping"),
    ("normalized: [\n", "cannot read library declaration"),
])
def test_declaration_is_parsed_strictly(tmp_path, text, message):
    (tmp_path / "farm_library.yaml").write_text(text)
    with pytest.raises(AssetError, match="farm_library.yaml") as err:
        read_declaration(tmp_path)
    assert message in str(err.value)


def test_declaration_defaults(tmp_path):
    assert read_declaration(tmp_path) == LibraryDeclaration(normalized=False, up_axis="Y")
    (tmp_path / "farm_library.yaml").write_text("# nothing declared\n")
    assert read_declaration(tmp_path) == LibraryDeclaration()


def _by_model(problems, warning: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        if p.warning == warning:
            out.setdefault(p.item, []).append(p.reason)
    return out


def test_asset_check_denies_only_what_blender_cannot_render(problems):
    errors = _by_model(problems, warning=False)
    assert set(errors) == set(DENIED)
    for model, what in DENIED.items():
        assert what in errors[model][0]
    assert "D:\\dev\\" in errors["90000003/panda_link6"][0]  # a Windows path to a texture
    warnings = _by_model(problems, warning=True)
    monastery = warnings["90000005/monastery"]  # 125k faces: renders (see the render tests)
    assert "201 faces with fewer than three vertices (first on line 331218): Blender drops them" \
        in monastery
    assert any(w.startswith("bounding-box diagonal 176 is outside [0.5, 2.0]") and
               w.endswith("normalised at render time") for w in monastery)
    assert "2 line elements ('l') (first on line 47286): not rendered" in \
        warnings["90000003/panda_link5"]
    assert warnings["90000002/lego"][0] == ("material library 'lego.mtl' not found: Blender "
                                            "renders its default material")
    assert any("centre is 1 from the origin" in w for w in warnings["90000002/teddy"])
    assert not warnings.get("90000003/chassis")  # n-gons, 0.72 across, nearly centred: fine


def test_declared_normalised_library_denies_unnormalised_meshes(raw_tree, pack):
    problems = check_library(AssetLibrary.open(raw_tree, pack.textures), workers=2)
    errors = _by_model(problems, warning=False)
    assert "but the library declares its meshes normalised (farm_library.yaml)" in \
        errors["90000005/monastery"][0]
    assert set(errors) >= set(DENIED) | {"90000001/blob000", "90000004/mug", "90000002/teddy"}
    assert "90000003/chassis" not in errors


def test_check_obj_reads_files_like_blender(tmp_path):
    """Tabs, leading blanks, v/vt/vn forms, negative indices, non-UTF-8 bytes and continuation
    lines parse; 2-vertex faces and 'l' elements are warnings; a face that refers to a vertex
    defined after it is an error (Blender drops that face)."""
    path = tmp_path / "quirks.obj"
    path.write_bytes(b"# caf\xe9 \xff\nmtllib quirks.mtl\nv 0 0 0\nv\t1 0 0\n  v 0 1 0\n"
                     b"v 0 0 1 0.5 0.5 0.5\nvt 0 0\nvn 0 0 1\nf 1/1/1 2/1/1 3/1/1\n"
                     b"f\t-1//1 -2//1 -3//1\nf 1 2 \\\n 4\nf 1 2\nf 3\nl 1 4\n")
    report = check_obj(path)
    assert report.error is None
    assert report.warnings == [
        "2 faces with fewer than three vertices (first on line 13): Blender drops them",
        "1 line elements ('l') (first on line 15): not rendered"]
    assert report.materials == ["quirks.mtl"]
    path.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\nv 1 1 1\n")
    assert check_obj(path).error == ("line 4: face refers to a missing vertex (4; 3 defined before "
                                     "this line)")
    path.write_bytes(b"v 0 0 0\nv 1 0 0\nf 1 2\nl 1 2\n")
    report = check_obj(path)
    assert report.error == "empty mesh (no faces with three or more vertices)"
    path.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n")
    assert "not an integer" in check_obj(path).error


def test_assets_check_cli_reports_warnings_and_writes_errors(tree, pack, tmp_path):
    deny = tmp_path / "deny.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "farm", "-q", "assets", "check", "--models", str(tree),
         "--textures", str(pack.textures), "--out", str(deny), "--workers", "2"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "90000005/monastery: warning: 201 faces with fewer than three vertices" in proc.stdout
    assert "90000001/blob168: line 5: bad vertex" in proc.stdout
    assert f"{len(DENIED)} problems (denied)" in proc.stdout
    assert assets.read_denylist(deny) == set(DENIED)


@pytest.mark.render
def test_blender_imports_with_the_up_axis_and_normalises(tree):
    from worker.render import scene

    def imported(model: str, up_axis: str, normalize: bool) -> tuple[np.ndarray, int]:
        scene.reset()
        parts = scene._import_model(tree / model / "models/model_normalized.obj", model, up_axis)
        if normalize:
            scene.normalize_parts(parts, model)
        return scene._vertices(parts), sum(len(o.data.polygons) for o in parts)

    # the tray is 1.18 x 1.18 x 0.27 with Z up in its file
    z_up, _ = imported("90000004/tray", "Z", normalize=False)
    y_up, _ = imported("90000004/tray", "Y", normalize=False)
    assert np.ptp(z_up, axis=0) == pytest.approx([1.18, 1.18, 0.27], abs=0.01)
    assert np.ptp(y_up, axis=0) == pytest.approx([1.18, 0.27, 1.18], abs=0.01)
    faces = {}
    for model in ("90000004/tray", "90000005/monastery", "90000004/mug"):
        verts, faces[model] = imported(model, "Z", normalize=True)
        lo, hi = verts.min(0), verts.max(0)
        assert np.linalg.norm(hi - lo) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-6)
    # every face of the 125k-face monastery but the 2-vertex ones the check warns about
    assert faces["90000005/monastery"] == 124990 - 201


def _render_tree(models: Path, pack, tiny, problems, out: Path, keep_gate_failures: bool = False
                 ) -> list[tuple[VideoSpec, dict]]:
    """Generate and render VIDEOS from ``models`` minus the check's denylist, resampling on the
    gate like the farm; returns each final spec with its manifest. Without
    ``keep_gate_failures`` every video must pass (a failing one is not written)."""
    deny = {p.item for p in problems if not p.warning}
    lib = AssetLibrary.open(models, pack.textures, denylist=deny)
    specs = [replace(generate_spec(lib, tiny, 0, i, 2021), keep_gate_failures=keep_gate_failures)
             for i in VIDEOS]
    manifests, failed = write_videos(specs, lib, out, quiet=True)
    assert not failed, failed
    return [(load_spec(out / "specs" / f"{m['video']}.yaml"), m) for m in manifests]


@pytest.mark.render
def test_normalised_third_party_videos_pass_the_quality_gate(tree, pack, tiny, problems, tmp_path):
    rendered = set()
    for spec, manifest in _render_tree(tree, pack, tiny, problems, tmp_path):
        assert manifest["gate"]["passed"], (spec.id, manifest["gate"])  # mask gate, final render
        assert spec.generation["gate"]["passed"], spec.generation["gate"]
        assert all(o.normalize and o.up_axis == "Z" and o.radius == 0.5 for o in spec.objects)
        frame0 = manifest["frames"][0]["objects"]
        assert all(o["pixels"] >= 6 for o in frame0)  # every object visible in frame 0
        assert max(o["pixels"] for o in frame0) < 0.5 * 64 * 48  # none fills the frame
        rendered |= {o.model for o in spec.objects}
    assert "90000005/monastery" in rendered  # the 125k-face mesh the old check denied renders
    assert len(rendered) >= 12


@pytest.mark.render
def test_without_normalisation_the_same_tree_fails_the_gate(raw_tree, pack, tiny, problems,
                                                            tmp_path):
    """The control: the same meshes declared normalised are rendered at their own size."""
    renders = _render_tree(raw_tree, pack, tiny, problems, tmp_path, keep_gate_failures=True)
    failed = [spec.id for spec, manifest in renders if not manifest["gate"]["passed"]]
    assert len(failed) >= len(VIDEOS) / 2, failed
    frame0 = [o["pixels"] for _, m in renders for o in m["frames"][0]["objects"]]
    assert max(frame0) > 0.9 * 64 * 48  # an object fills the frame
    for spec, _ in renders:
        assert not any(o.normalize for o in spec.objects)
