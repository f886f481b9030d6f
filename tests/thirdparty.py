"""A ShapeNet-layout model tree built from real third-party meshes: pybullet_data's OBJ files.

The meshes are not normalised: procedurally generated blobs ~10 units across, hand-made models
from 0.18 to 176 units across and off centre, Z-up robot parts, files without normals or UVs,
quads and n-gons, 2-vertex faces, ``l`` elements, a missing material library, a Windows path to a
texture, NaN vertices and a 125k-face scene. ``build_tree`` copies each OBJ unchanged to
``<synset>/<model>/models/model_normalized.obj``, its material library (when the package has it)
to ``model_normalized.mtl`` (where Blender's importer also looks) with the images it names, and
writes ``taxonomy.json`` and ``farm_library.yaml``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

TAXONOMY = {"90000001": "blob", "90000002": "toy", "90000003": "robot part",
            "90000004": "kitchenware", "90000005": "building"}

MODELS = {  # "<synset>/<model>": OBJ path under pybullet_data
    "90000001/blob000": "random_urdfs/000/000.obj",  # generated, ~10 units, no normals or UVs
    "90000001/blob001": "random_urdfs/001/001.obj",
    "90000001/blob003": "random_urdfs/003/003.obj",
    "90000001/blob168": "random_urdfs/168/168.obj",  # NaN vertices: denied
    "90000002/duck": "duck.obj",  # Y-up, off centre, textured, no normals
    "90000002/teddy": "teddy2_VHACD_CHs.obj",  # centre 1.0 from the origin, no normals or UVs
    "90000002/soccerball": "soccerball.obj",  # quads
    "90000002/lego": "lego/lego.obj",  # its lego.mtl is not in the package
    "90000003/chassis": "laikago/chassis_zup.obj",  # Z-up, n-gons up to 32 vertices, textured
    "90000003/panda_link5": "franka_panda/meshes/visual/link5.obj",  # 'l' elements
    "90000003/panda_link6": "franka_panda/meshes/collision/link6.obj",  # map_Kd D:\...: denied
    "90000004/mug": "objects/mug.obj",  # 0.18 units, quads, no material
    "90000004/tray": "tray/tray_textured.obj",  # Z-up, textured
    "90000004/sphere": "sphere_smooth.obj",  # quads
    "90000005/monastery": "samurai_monastry.obj",  # 125k faces, 201 2-vertex faces, 176 units
}
DENIED = {"90000001/blob168": "bad vertex", "90000003/panda_link6": "texture"}


def pybullet_data() -> Path:
    try:
        import pybullet_data
    except ImportError:
        pytest.fail("pybullet_data is missing: pip install -e '.[test]' (pybullet)")
    return Path(pybullet_data.getDataPath())


def _copy_material(obj: Path, folder: Path) -> None:
    """Copy the OBJ's material library (if the package has it) and the images it names."""
    match = re.search(rb"^mtllib[ \t]+(.+?)\s*$", obj.read_bytes(), re.M)
    mtl = obj.parent / match.group(1).decode() if match else None
    if mtl is None or not mtl.is_file():
        return
    shutil.copy(mtl, folder / "model_normalized.mtl")
    for name in re.findall(r"^\s*map_\w+\s+(.+?)\s*$", mtl.read_text(), re.M):
        if (mtl.parent / name).is_file():
            shutil.copy(mtl.parent / name, folder / name)


def build_tree(out: Path, declaration: str, models: dict[str, str] = MODELS) -> Path:
    """Write the tree under ``out``; returns the models root."""
    data = pybullet_data()
    for model_id, source in models.items():
        folder = out / model_id / "models"
        folder.mkdir(parents=True)
        shutil.copy(data / source, folder / "model_normalized.obj")
        _copy_material(data / source, folder)
    (out / "taxonomy.json").write_text(json.dumps(
        [{"synsetId": s, "name": name, "children": []} for s, name in TAXONOMY.items()]))
    (out / "farm_library.yaml").write_text(declaration)
    return out
