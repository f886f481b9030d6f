"""Library manifests, ``farm assets index`` and several libraries behind one models root, on the
third-party libraries of ``tests/libraries.py``: strict rows, what indexing finds and skips,
specs that name library, file and digest, weighted and category-filtered sampling."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from libraries import KHRONOS, build_libraries

from farm.assets.check import check_library, check_spec_files
from farm.assets.indexer import index_folder
from farm.assets.library import AssetError, AssetLibrary, read_libraries
from farm.assets.manifest import ManifestError, ManifestRow, read_manifest, write_manifest
from farm.generate.sampling import generate_spec, pick_model
from farm.io.dataset import model_licenses
from farm.model.spec import SpecError
from farm.model.validate import parse_spec_text, spec_from_dict


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_libraries(tmp_path_factory.mktemp("libraries"))


@pytest.fixture(scope="module")
def mixed(root, pack, tmp_path_factory):
    return AssetLibrary.open(root, pack.textures, cache_dir=tmp_path_factory.mktemp("cache"))


def test_index_finds_each_layout_and_says_what_it_skipped(root):
    robots = index_folder(root / "robots", up_axis="Z")
    assert [r.id for r in robots.rows] == ["hip_motor", "upper_leg"]
    assert robots.skipped == [("cone.dae", "Collada (DAE): Blender 5.0 removed its importer; "
                                           "convert it to glTF or OBJ")]
    gso = index_folder(root / "gso")
    assert gso.layout == "gso" and [(r.id, r.category, r.path, r.up_axis, r.license)
                                    for r in gso.rows] == [
        ("duck", "toy", "duck/meshes/model.obj", "Z", "Zlib (pybullet_data)")]  # metadata.pbtxt
    assert gso.companions == 3  # model.mtl, texture.png, metadata.pbtxt
    shapenet = index_folder(root / "shapenet")
    assert shapenet.layout == "shapenet"
    assert {(r.id, r.category, r.up_axis) for r in shapenet.rows} == {
        ("90000002/duck", "toy", "Z"), ("90000003/chassis", "robot part", "Z"),
        ("90000004/tray", "kitchenware", "Z")}
    flat = index_folder(root / "khronos")
    assert {(r.id, r.category) for r in flat.rows} == {
        ("boxes/Box", "boxes"), ("boxes/BoxTextured", "boxes"), ("ducks/Duck", "ducks")}
    assert all(len(r.sha256) == 64 for r in flat.rows)


def test_index_cli_prints_skips_and_writes_the_manifest(root, tmp_path):
    folder = tmp_path / "meshes"
    shutil.copytree(root / "robots", folder)
    (folder / "broken.glb").write_bytes((KHRONOS / "Duck.glb").read_bytes()[:5000])
    out = tmp_path / "lib.csv"
    proc = subprocess.run([sys.executable, "-m", "farm", "assets", "index", str(folder),
                           "--out", str(out), "--up-axis", "Z", "--license", "Zlib"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "skipped broken.glb: broken GLB: header says 144032 bytes, the file has 5000" \
        in proc.stdout
    assert "skipped cone.dae: Collada (DAE): Blender 5.0 removed its importer" in proc.stdout
    assert "flat layout: 2 models (2 STL) in 1 categories; 2 skipped" in proc.stdout
    rows = read_manifest(out)  # CSV round trip
    assert [(r.id, r.up_axis, r.license) for r in rows] == [("hip_motor", "Z", "Zlib"),
                                                            ("upper_leg", "Z", "Zlib")]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "farm", "assets", "index", str(empty)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no usable meshes under")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "a", "category": "c", "path": "a.glb", "colour": 1}', "unknown field(s) colour"),
    ('{"id": "a", "path": "a.glb"}', "missing field(s) category"),
    ('{"id": "a", "category": "c", "path": "a.dae"}', "field 'path' 'a.dae': Collada (DAE)"),
    ('{"id": "a", "category": "c", "path": "a.glb", "up_axis": "x"}',
     "field 'up_axis' must be Y or Z, got 'x'"),
    ('{"id": "a", "category": "c", "path": "../a.glb"}', "must be relative to the manifest's"),
    ('{"id": "a", "category": "c", "path": "a.glb", "scale": 0}', "field 'scale' must be a"),
    ('{"id": "a", "category": "c", "path": "a.glb", "normalized": "yes"}',
     "field 'normalized' must be true or false, got 'yes'"),
    ('{"id": "a", "category": "c", "path": "a.glb"', "not JSON"),
    ('["a", "c", "a.glb"]', "expected an object with id, category, path"),
])
def test_bad_manifest_rows_name_file_line_and_field(tmp_path, line, message):
    manifest = tmp_path / "farm_manifest.jsonl"
    manifest.write_text('{"id": "ok", "category": "c", "path": "ok.glb"}\n\n' + line + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert str(err.value).startswith(f"manifest {manifest} line 3: ")
    assert message in str(err.value)


def test_duplicate_ids_and_missing_files(tmp_path, pack):
    manifest = tmp_path / "farm_manifest.jsonl"
    write_manifest([ManifestRow("a", "c", "a.glb"), ManifestRow("a", "c", "b.glb")], manifest)
    with pytest.raises(ManifestError, match="line 2: id 'a' is already on line 1"):
        read_manifest(manifest)
    write_manifest([ManifestRow("a", "c", "gone.glb")], manifest)
    with pytest.raises(AssetError, match=r"farm_manifest.jsonl: model 'a': file 'gone.glb' not "
                                         "found"):
        AssetLibrary.open(tmp_path, pack.textures, cache_dir=tmp_path / "cache")
    assert manifest.read_text() == '{"id": "a", "category": "c", "path": "gone.glb"}\n'


def test_libraries_file_is_strict(tmp_path):
    (tmp_path / "a").mkdir()
    for text, message in [("libraries: []\n", "libraries must be a non-empty list"),
                          ("libraries: [{name: a, weight: -1}]\n", "libraries[0].weight"),
                          ("libraries: [{name: a}, {name: a}]\n", "libraries[1].name"),
                          ("libraries: [{name: b}]\n", "libraries[0].path: "),
                          ("libraries: [{name: a, path: ../x}]\n", "libraries[0].path"),
                          ("libraries: [{name: a, colour: red}]\n", "expected a mapping of")]:
        (tmp_path / "farm_libraries.yaml").write_text(text)
        with pytest.raises(AssetError, match="farm_libraries.yaml") as err:
            read_libraries(tmp_path)
        assert message in str(err.value)


def test_mixed_library_models_and_check(mixed, root):
    assert [(p.name, p.weight, p.replace_textures, len(p.models)) for p in mixed.pools] == [
        ("khronos", 3.0, False, 3), ("scans", 1.0, True, 1), ("robots", 1.0, True, 2),
        ("gso", 1.0, False, 1), ("shapenet", 1.0, True, 3)]
    duck = mixed.model("ducks/Duck", "khronos")
    assert (duck.path, duck.up_axis, duck.mapped, duck.key) == (
        "khronos/ducks/Duck.glb", "Y", True, "khronos:ducks/Duck")
    assert mixed.model("90000004/tray", "shapenet").path == (
        "shapenet/90000004/tray/models/model_normalized.obj")
    problems = check_library(mixed, workers=2)
    assert not [p for p in problems if not p.warning], problems
    warned = {p.item for p in problems}
    assert {"scans:bunny", "robots:hip_motor"} <= warned  # 0.24 and 0.15 across: normalised


def _specs(lib, tiny, count=12):
    return [generate_spec(lib, tiny, 0, i, 2021) for i in range(count)]


def test_specs_name_library_file_and_digest_and_render_from_themselves(mixed, root, pack, tiny):
    specs = _specs(mixed, tiny)
    for spec in specs:
        again = parse_spec_text(spec.to_yaml())
        assert again == spec and again.digest() == spec.digest()
        for obj in spec.objects:
            model = mixed.model(obj.model, obj.library)
            assert (obj.file, obj.digest, obj.up_axis, obj.license) == (
                model.path, model.digest, model.up_axis, model.license)
            assert obj.normalize and obj.radius == 0.5
            if obj.library in ("khronos", "gso"):
                assert obj.texture is None  # their own materials, always
        check_spec_files(spec, root, pack.textures)
    assert specs == _specs(mixed, tiny)  # deterministic
    textures = [o.texture for s in specs for o in s.objects if o.library == "robots"]
    assert textures and all(textures)  # untextured models of a replacing library: replaced


def test_a_changed_file_is_refused_before_blender(mixed, root, pack, tiny, tmp_path):
    spec = next(s for s in _specs(mixed, tiny) if s.objects[0].library == "khronos")
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    changed = bytearray((copy / spec.objects[0].file).read_bytes())
    changed[-1] ^= 1  # a bit of the binary chunk: a valid GLB, other bytes
    (copy / spec.objects[0].file).write_bytes(bytes(changed))
    with pytest.raises(AssetError) as err:
        check_spec_files(spec, copy, pack.textures)
    assert f"objects[0] model {spec.objects[0].model}" in str(err.value)
    assert "sha256 differs from the spec's" in str(err.value)


def test_weights_and_categories(mixed, root, pack, tmp_path):
    picks = collections.Counter(pick_model(mixed, 7, 0, slot).library for slot in range(3000))
    share = picks["khronos"] / 3000  # weight 3 of 7
    assert share == pytest.approx(3 / 7, abs=0.03)
    assert all(picks[n] / 3000 == pytest.approx(1 / 7, abs=0.03)
               for n in ("scans", "robots", "gso", "shapenet"))
    within = collections.Counter(pick_model(mixed, 7, 0, slot).id for slot in range(3000)
                                 if pick_model(mixed, 7, 0, slot).library == "khronos")
    assert len(within) == 3 and max(within.values()) - min(within.values()) < 0.2 * share * 1000
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "farm_libraries.yaml").write_text(
        (root / "farm_libraries.yaml").read_text() + "categories: [ducks, toy]\n")
    ducks = AssetLibrary.open(copy, pack.textures, cache_dir=tmp_path / "cache")
    assert {(m.library, m.id) for m in ducks.models} == {
        ("khronos", "ducks/Duck"), ("gso", "duck"), ("shapenet", "90000002/duck")}
    assert {pick_model(ducks, 1, 0, s).category for s in range(200)} == {"ducks", "toy"}
    assert ducks.fingerprint != mixed.fingerprint


def test_old_objects_and_new_fields_in_spec_files(mixed, tiny):
    spec = _specs(mixed, tiny, 1)[0]
    text = spec.to_yaml()
    assert "library: " in text and "digest: " in text
    legacy = replace(spec, objects=[replace(o, library=None, file=None, digest=None,
                                            license=None, model="90000001/blob")
                                    for o in spec.objects])
    assert "library" not in legacy.to_yaml() and "mesh_scale" not in legacy.to_json()
    bad = text.replace(f"digest: {spec.objects[0].digest}", "digest: abc", 1)
    with pytest.raises(SpecError, match=r"objects\[0\].digest: expected a sha256 digest"):
        parse_spec_text(bad)
    bad = text.replace(f"file: {spec.objects[0].file}", "file: model.dae", 1)
    with pytest.raises(SpecError, match=r"objects\[0\].file: 'model.dae' is not a mesh file"):
        parse_spec_text(bad)
    assert spec_from_dict(json.loads(spec.to_json())) == spec


def test_licences_for_meta_json(mixed, tiny):
    manifests = {s.id: {"objects": [{"model": o.model, "library": o.library,
                                     "license": o.license} for o in s.objects]}
                 for s in _specs(mixed, tiny, 6)}
    licences = model_licenses(manifests)["licenses"]
    shown = {f"{o['library']}:{o['model']}" for m in manifests.values() for o in m["objects"]}
    assert set().union(*licences.values()) == shown
    for m in manifests.values():
        for o in m["objects"]:  # the shapenet tree names no licence: "unknown"
            assert f"{o['library']}:{o['model']}" in licences[o["license"] or "unknown"]
    assert model_licenses({"a00000": {"objects": [{"model": "0/1", "category": "c"}]}}) == {}


def test_row_declarations_reach_the_spec(tmp_path, pack):
    """A row's scale hint and normalised flag: the renderer's placement and the gate's sphere."""
    shutil.copy(KHRONOS / "Duck.glb", tmp_path / "Duck.glb")
    shutil.copy(KHRONOS / "Box.glb", tmp_path / "Box.glb")
    write_manifest([ManifestRow("duck", "duck", "Duck.glb", scale=0.5),
                    ManifestRow("box", "box", "Box.glb", up_axis="Z", scale=2.0,
                                normalized=True, license="CC-BY-4.0")],
                   tmp_path / "farm_manifest.jsonl")
    lib = AssetLibrary.open(tmp_path, pack.textures, cache_dir=tmp_path / "cache")
    duck, box = lib.model("duck", tmp_path.name), lib.model("box", tmp_path.name)
    assert lib.geometry(duck) | {"digest": None} == {
        "normalize": True, "up_axis": "Y", "radius": 0.25, "library": tmp_path.name,
        "file": "Duck.glb", "digest": None, "mesh_scale": 0.5, "license": None}
    geometry = lib.geometry(box)  # rendered as it is: the farthest corner (0.866) x 2
    assert (geometry["normalize"], geometry["up_axis"], geometry["mesh_scale"]) == (False, "Z", 2.0)
    assert geometry["radius"] == pytest.approx(2 * 3 ** 0.5 / 2, abs=1e-6)


def test_category_weights_draw_categories_first(root, pack, tmp_path):
    """``categories`` as weights: each category as often as its weight says, whichever
    libraries hold how many of its models (toy: one model in gso, one in shapenet)."""
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "farm_libraries.yaml").write_text(
        (root / "farm_libraries.yaml").read_text() + "categories: {boxes: 2, toy: 1, bunny: 1}\n")
    lib = AssetLibrary.open(copy, pack.textures, cache_dir=tmp_path / "cache")
    picks = [pick_model(lib, 3, 0, slot) for slot in range(2000)]
    share = collections.Counter(m.category for m in picks)
    assert share["boxes"] / 2000 == pytest.approx(0.5, abs=0.03)
    assert share["toy"] / 2000 == pytest.approx(0.25, abs=0.03)
    toys = collections.Counter(m.library for m in picks if m.category == "toy")
    assert set(toys) == {"gso", "shapenet"} and abs(toys["gso"] - toys["shapenet"]) < 80
    assert [pick_model(lib, 3, 0, s) for s in range(50)] == picks[:50]
    (copy / "farm_libraries.yaml").write_text(
        (root / "farm_libraries.yaml").read_text() + "categories: {boxes: 0}\n")
    with pytest.raises(AssetError, match="categories.boxes: expected a positive weight, got 0"):
        read_libraries(copy)


def test_a_shapenet_root_may_keep_its_materials(root, pack, tiny, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(root / "shapenet", tree)
    (tree / "farm_manifest.jsonl").unlink(missing_ok=True)
    replaced = [o.texture for s in _specs(AssetLibrary.open(tree, pack.textures, cache_dir=tmp_path
                                                            / "c1"), tiny, 6) for o in s.objects]
    assert any(replaced)  # BL30K's default: p = 0.5 on these texture-mapped models
    (tree / "farm_library.yaml").write_text("up_axis: Z\nreplace_textures: false\n")
    kept = _specs(AssetLibrary.open(tree, pack.textures, cache_dir=tmp_path / "c2"), tiny, 6)
    assert not any(o.texture for s in kept for o in s.objects)
    assert all(o.library is None for s in kept for o in s.objects)  # still a ShapeNet root
