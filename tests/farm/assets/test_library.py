"""Asset library indexing and the procedural pack."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from farm.assets.library import AssetError, AssetLibrary, resolve_under


def test_pack_has_shapenet_layout_and_variety(pack, library):
    assert (pack.models / "taxonomy.json").is_file()
    assert len({m.synset for m in library.models}) == 6
    assert {m.category for m in library.models} >= {"airplane", "chair", "table", "car"}
    assert any(m.mapped for m in library.models) and not all(m.mapped for m in library.models)
    for m in library.models:
        folder = pack.models / m.id / "models"
        obj = (folder / "model_normalized.obj").read_text()
        assert ("vt " in obj) == m.mapped
        box = json.loads((folder / "model_normalized.json").read_text())
        diag = sum((hi - lo) ** 2 for lo, hi in zip(box["min"], box["max"], strict=True)) ** 0.5
        assert diag == pytest.approx(1.0)
        if m.mapped:
            assert "map_Kd ../images/texture0.png" in (folder / "model_normalized.mtl").read_text()
            assert (folder.parent / "images" / "texture0.png").is_file()
    vertex_counts = {(pack.models / m.id / "models/model_normalized.obj").read_text().count("\nv ")
                     for m in library.models}
    assert len(vertex_counts) > 5  # not one shape repeated
    assert all(t.startswith("texture/") for t in library.textures)
    assert all(s.startswith("skybox/") for s in library.skyboxes)


def test_index_is_cached_and_refreshed(pack, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(pack.models.parent, root)
    cache = tmp_path / "cache"
    lib = AssetLibrary.open(root / "models", root / "textures", cache_dir=cache)
    assert len(list(cache.glob("index-*.json"))) == 1
    again = AssetLibrary.open(root / "models", root / "textures", cache_dir=cache)
    assert again.models == lib.models
    shutil.rmtree(root / "models" / lib.models[0].id)  # changes the synset folder's mtime
    fresh = AssetLibrary.open(root / "models", root / "textures", cache_dir=cache)
    assert len(fresh.models) == len(lib.models) - 1
    assert fresh.fingerprint != lib.fingerprint


def test_clear_errors_for_missing_roots(pack, tmp_path):
    with pytest.raises(AssetError, match="models root .* is not a directory"):
        AssetLibrary.open(tmp_path / "nope", pack.textures)
    (tmp_path / "tex" / "texture" / "wood").mkdir(parents=True)
    with pytest.raises(AssetError, match="no images under .*texture/<class>"):
        AssetLibrary.open(pack.models, tmp_path / "tex", cache_dir=tmp_path / "c")
    shutil.copytree(pack.textures / "texture", tmp_path / "tex" / "texture", dirs_exist_ok=True)
    with pytest.raises(AssetError, match="no skybox/ folder"):
        AssetLibrary.open(pack.models, tmp_path / "tex", cache_dir=tmp_path / "c")


def test_resolve_under_refuses_escapes(pack):
    with pytest.raises(AssetError, match="escapes its root"):
        resolve_under(pack.models, "../textures/texture/wood/0.jpg", "model")
    with pytest.raises(AssetError, match="not found"):
        resolve_under(pack.models, "02691156/nothing/models/model_normalized.obj", "model")
    os.symlink("/etc", pack.models / "evil")
    try:
        with pytest.raises(AssetError, match="escapes its root"):
            resolve_under(pack.models, "evil/passwd", "model")
    finally:
        (pack.models / "evil").unlink()
