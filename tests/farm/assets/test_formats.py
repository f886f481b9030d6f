"""Mesh formats read without Blender, on third-party files: the Khronos GLBs (Draco-compressed
boxes, an embedded texture, a duck with node matrices), the Stanford Bunny (ASCII PLY) and
pybullet's binary STL robot parts; broken variants of them; the caps applied before Blender."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from libraries import KHRONOS, STANFORD
from thirdparty import pybullet_data

from farm.assets import check, formats, gltf
from farm.assets.formats import FormatError, mesh_format

BUNNY = STANFORD / "bun_zipper_res4.ply"
SHA256 = {"Box.glb": "92534691057f03468374730c0fcdac577d236ff40d3a95615242ec92ced54bc4",
          "BoxTextured.glb": "ff3302353121f9aa51a4aebbe0b6b9b4c58f57a3a85aa77f0d5789c26ec7af89",
          "Duck.glb": "f432e85f86992b110fb8da1b033b1f6d29e55aba72b7fcb895bdd5fb31a94f31"}


def test_test_files_are_the_third_party_bytes():
    for name, digest in SHA256.items():
        assert hashlib.sha256((KHRONOS / name).read_bytes()).hexdigest() == digest
        assert digest in (KHRONOS / "LICENSE.md").read_text()
    assert hashlib.sha256(BUNNY.read_bytes()).hexdigest() == (
        "6a9bd633cb0a654962e753f352a101401103848c4a8494f2d6176e53f717deb2")


def test_glb_structure_faces_textures_bounds():
    box, textured, duck = (gltf.open_gltf(KHRONOS / f"{n}.glb") for n in
                           ("Box", "BoxTextured", "Duck"))
    assert box.compressed and textured.compressed and not duck.compressed  # Draco boxes
    assert gltf.face_count(box) == gltf.face_count(textured) == 12
    assert gltf.bounds(textured) == [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]
    assert gltf.image_sizes(textured) == [("CesiumLogoFlat", 256, 256)]
    assert gltf.mapped(textured) and not gltf.mapped(box) and gltf.mapped(duck)
    # the duck's mesh sits under two nodes with matrices: the bounds go through them, and equal
    # the box of the decoded, transformed vertices
    verts, faces = gltf.triangles(duck)
    assert faces.shape == (4212, 3) and gltf.face_count(duck) == 4212
    assert faces.max() < len(verts)
    raw = duck.doc["accessors"][duck.doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    assert not np.allclose(verts.max(0), raw["max"])  # the node transforms matter
    np.testing.assert_allclose(gltf.bounds(duck), [verts.min(0), verts.max(0)], atol=1e-6)
    assert formats.bounds(KHRONOS / "Duck.glb") == [verts.min(0).tolist(), verts.max(0).tolist()]


def _glb_with(src: Path, out: Path, edit) -> Path:
    """``src`` with its JSON chunk edited (chunk lengths and padding rewritten)."""
    data = src.read_bytes()
    (json_len,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20:20 + json_len])
    edit(doc)
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    rest = data[20 + json_len:]
    body = struct.pack("<II", len(text), gltf.CHUNK_JSON) + text + rest
    out.write_bytes(b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body)
    return out


@pytest.mark.parametrize(("case", "message"), [
    ("truncated", "header says 144032 bytes, the file has 70000 (truncated?)"),
    ("not glb", "not a GLB file (no 'glTF' header)"),
    ("buffer", "buffers[0] declares 999999 bytes, only 141488 back it"),
    ("view", "bufferViews[0] ends at byte"),
    ("accessor", "accessors[0] needs"),
    ("mesh index", "nodes[0].mesh refers to a missing entry (7; 1 defined)"),
    ("image", "images[0].bufferView refers to a missing entry"),
    ("version", "asset.version is 1.0, only glTF 2.0 is supported"),
])
def test_broken_glb_is_a_specific_error(tmp_path, case, message):
    src, path = KHRONOS / "Duck.glb", tmp_path / "broken.glb"
    edits = {
        "buffer": lambda d: d["buffers"][0].update(byteLength=999999),
        "view": lambda d: d["bufferViews"][0].update(byteOffset=141000),
        "accessor": lambda d: d["accessors"][0].update(count=10**6),
        "mesh index": lambda d: d["nodes"][0].update(mesh=7),
        "image": lambda d: d["images"][0].update(bufferView=99),
        "version": lambda d: d["asset"].update(version="1.0"),
    }
    if case == "truncated":
        path.write_bytes(src.read_bytes()[:70000])
    elif case == "not glb":
        path.write_bytes(b"PK\x03\x04" + src.read_bytes()[4:])
    else:
        _glb_with(src, path, edits[case])
    with pytest.raises(gltf.GltfError) as err:
        gltf.open_gltf(path)
    assert message in str(err.value)
    # the same reason from the checks that run before Blender, naming the format
    assert check.mesh_size_problem(path) == f"broken GLB: {err.value}"
    assert formats.bounds(path) is None


def test_stl_and_ply_match_a_reference_parse():
    data = pybullet_data()
    for part in ("laikago/hip_motor.stl", "laikago/upper_leg.stl"):
        raw = (data / part).read_bytes()
        (count,) = struct.unpack_from("<I", raw, 80)
        verts = np.frombuffer(raw[84:], dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", 9),
                                                        ("a", "<u2")]))["v"].reshape(-1, 3)
        assert formats.stl_faces(data / part) == count == len(verts) // 3
        np.testing.assert_allclose(formats.bounds(data / part), [verts.min(0), verts.max(0)])
    lines = BUNNY.read_text().splitlines()
    start = lines.index("end_header") + 1
    verts = np.array([line.split()[:3] for line in lines[start:start + 453]], dtype=float)
    body = [line.split() for line in lines[start + 453:]]
    # a real file's quirk: the two triangles its header comment says were removed are still in
    # the body, as "comment 3 ..." lines; 946 triangles, as the header says
    assert sum(f[0] == "3" for f in body) == 946
    assert [f for f in body if f[0] != "3"] == [["comment", "3", "245", "80", "179"],
                                                 ["comment", "3", "179", "80", "245"]]
    assert formats.mesh_stats(BUNNY).faces == 946
    np.testing.assert_allclose(formats.bounds(BUNNY), [verts.min(0), verts.max(0)])
    np.testing.assert_allclose(formats.ply_vertices(BUNNY), verts)


def test_broken_stl_and_ply(tmp_path):
    stl = tmp_path / "part.stl"
    stl.write_bytes((pybullet_data() / "laikago/hip_motor.stl").read_bytes()[:-50])
    assert "broken STL: neither ASCII" in check.mesh_size_problem(stl)
    ply = tmp_path / "scan.ply"
    ply.write_bytes(BUNNY.read_bytes().replace(b"end_header", b"end_hdr"))
    assert "broken PLY: no 'ply' magic or 'end_header'" in check.mesh_size_problem(ply)


def test_unsupported_formats_say_why(tmp_path):
    with pytest.raises(FormatError, match="Blender 5.0 removed its importer"):
        mesh_format(pybullet_data() / "racecar/meshes/cone.dae")
    with pytest.raises(FormatError, match=r"unknown mesh format '.xyz' \(supported: .obj, .glb"):
        mesh_format("points.xyz")
    assert mesh_format("a/B.GLB") == "GLB" and mesh_format("x.ply") == "PLY"


def test_caps_apply_to_every_format_before_blender(monkeypatch):
    for path in (KHRONOS / "Duck.glb", KHRONOS / "BoxTextured.glb", BUNNY,
                 pybullet_data() / "laikago/hip_motor.stl"):
        assert check.mesh_size_problem(path) is None
    monkeypatch.setattr(check, "MAX_FACES", 1000)
    assert check.mesh_size_problem(KHRONOS / "Duck.glb") == (
        "absurdly large mesh (4212 faces, over 1000)")
    assert check.mesh_size_problem(BUNNY) is None  # 946 faces
    monkeypatch.setattr(check, "MAX_FACES", 900)
    assert check.mesh_size_problem(BUNNY) == "absurdly large mesh (946 faces, over 900)"
    monkeypatch.setattr(check, "MAX_FACES", 800)
    assert check.mesh_size_problem(pybullet_data() / "laikago/hip_motor.stl") == (
        "absurdly large mesh (808 faces, over 800)")
    monkeypatch.setattr(check, "MAX_IMAGE_PIXELS", 256 * 255)
    assert check.mesh_size_problem(KHRONOS / "BoxTextured.glb") == (
        "texture CesiumLogoFlat: absurdly large image 256x256")


def _paths(value, prefix=()):
    """Every key path of a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def test_any_malformed_value_is_a_glb_error_never_a_crash(tmp_path):
    """Every value of the Duck's JSON replaced by hostile ones: the farm's reading (structure,
    faces, textures, bounds) either works or says the file is broken."""
    data = (KHRONOS / "Duck.glb").read_bytes()
    (json_len,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20:20 + json_len])
    path, tried = tmp_path / "fuzz.glb", 0
    for key_path in _paths(doc):
        for hostile in ("x", -1, None, [], {}, 10**12, 1.5):
            def edit(d, key_path=key_path, hostile=hostile):
                for k in key_path[:-1]:
                    d = d[k]
                d[key_path[-1]] = hostile
            _glb_with(KHRONOS / "Duck.glb", path, edit)
            tried += 1
            try:
                formats.mesh_stats(path)
            except FormatError as exc:
                assert str(exc).startswith("broken GLB: ")
            formats.bounds(path)  # None or a box, never an exception
            check.mesh_size_problem(path)
    assert tried > 500
