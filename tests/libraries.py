"""A models root of several libraries built from third-party files nobody here made.

- ``khronos``: the Khronos glTF sample models of ``tests/data/meshes/khronos`` in ``boxes/``
  and ``ducks/`` (their categories): Box and BoxTextured, Draco-compressed GLBs, BoxTextured with
  an embedded PNG texture; Duck, a GLB with node matrices and a camera; kept with their own
  materials (``replace_textures: false``);
- ``scans``: the Stanford Bunny (``tests/data/meshes/stanford``, an ASCII PLY range scan);
- ``robots``: binary STL robot parts of ``pybullet_data`` (Z up) and a Collada file (skipped);
- ``gso``: pybullet's textured duck laid out as a Google Scanned Objects folder
  (``duck/meshes/model.obj``, ``model.mtl``, ``materials/textures/texture.png``);
- ``shapenet``: three models of the ShapeNet-layout tree of ``thirdparty.py`` (no manifest:
  the layout itself is read as one).

Each library's manifest is written by ``farm.assets.indexer.index_folder``, as
``python -m farm assets index`` writes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from thirdparty import build_tree, pybullet_data

from farm.assets.indexer import index_folder
from farm.assets.manifest import write_manifest

DATA = Path(__file__).resolve().parent / "data" / "meshes"
KHRONOS, STANFORD = DATA / "khronos", DATA / "stanford"
ROBOT_PARTS = ("laikago/hip_motor.stl", "laikago/upper_leg.stl")
SHAPENET = {"90000002/duck": "duck.obj", "90000004/tray": "tray/tray_textured.obj",
            "90000003/chassis": "laikago/chassis_zup.obj"}
LIBRARIES = """\
libraries:
  - {name: khronos, weight: 3, replace_textures: false}
  - {name: scans}
  - {name: robots}
  - {name: gso, replace_textures: false}
  - {name: shapenet}
"""


def gso_object(out: Path, obj: Path, mtl: Path, texture: Path) -> Path:
    """One object in Google Scanned Objects' layout (its material names the texture where GSO
    keeps it)."""
    (out / "meshes").mkdir(parents=True)
    (out / "materials" / "textures").mkdir(parents=True)
    shutil.copy(obj, out / "meshes" / "model.obj")
    text = mtl.read_text().replace(f"map_Kd {texture.name}",
                                   "map_Kd ../materials/textures/texture.png")
    (out / "meshes" / "model.mtl").write_text(text.replace("mtllib", "# mtllib"))
    obj_text = (out / "meshes" / "model.obj").read_text()
    (out / "meshes" / "model.obj").write_text(
        obj_text.replace(f"mtllib {mtl.name}", "mtllib model.mtl"))
    shutil.copy(texture, out / "materials" / "textures" / "texture.png")
    return out


def build_libraries(out: Path) -> Path:
    """The models root (``farm_libraries.yaml`` and one folder per library)."""
    data = pybullet_data()
    for name, folder in (("Box", "boxes"), ("BoxTextured", "boxes"), ("Duck", "ducks")):
        (out / "khronos" / folder).mkdir(parents=True, exist_ok=True)  # category: the folder
        shutil.copy(KHRONOS / f"{name}.glb", out / "khronos" / folder / f"{name}.glb")
    (out / "scans").mkdir()
    shutil.copy(STANFORD / "bun_zipper_res4.ply", out / "scans" / "bunny.ply")
    (out / "robots").mkdir()
    for part in ROBOT_PARTS:
        shutil.copy(data / part, out / "robots" / Path(part).name)
    shutil.copy(data / "racecar/meshes/cone.dae", out / "robots" / "cone.dae")
    gso_object(out / "gso" / "duck", data / "duck.obj", data / "duck.mtl", data / "duckCM.png")
    (out / "gso" / "duck" / "metadata.pbtxt").write_text(  # Gazebo Fuel's fields, ours
        'name: "duck"\ncategories: "Toy"\nlegal {\n  license: "Zlib (pybullet_data)"\n}\n')
    build_tree(out / "shapenet", "up_axis: Z\n", SHAPENET)
    licenses = {"khronos": "see tests/data/meshes/khronos/LICENSE.md", "scans": "Stanford",
                "robots": "Zlib (pybullet_data)"}
    for name in ("khronos", "scans", "robots", "gso"):  # shapenet: its layout, no manifest
        result = index_folder(out / name, license=licenses.get(name),
                              category={"scans": "bunny"}.get(name),
                              up_axis="Z" if name == "robots" else None)
        write_manifest(result.rows, out / name / "farm_manifest.jsonl")
    (out / "farm_libraries.yaml").write_text(LIBRARIES)
    return out
