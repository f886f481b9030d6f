"""Import one mesh file into the current scene, per format, keeping the file's materials.

OBJ, PLY and STL go through Blender's C++ importers with the up axis the spec names; glTF/GLB
through Blender's glTF importer (materials, embedded textures, node transforms, Draco), which
always converts glTF's Y up to Blender's Z up (a file declared Z-up is turned back). Every mesh
object the import creates is returned with its world transform baked into its own mesh data;
everything else it creates (empties, cameras, lights, armatures) is removed. Collada (DAE): Blender
5.0 has no importer; the format check says so before anything is imported.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from pathlib import Path

import bpy
import mathutils

from farm.assets.errors import AssetError
from farm.assets.formats import FormatError, mesh_format, ply_comment_lines

# The importers' (forward, up) axes per file up axis: Y-up files get ShapeNet's conversion
# (file +Y -> Blender +Z); Z-up files are already in Blender's axes.
IMPORT_AXES = {"Y": ("NEGATIVE_Z", "Y"), "Z": ("Y", "Z")}
# glTF's importer always applies the Y-up conversion; for a Z-up file this undoes it.
GLTF_Z_UP = mathutils.Matrix.Rotation(-math.pi / 2, 4, "X")


class ModelLoadError(AssetError):
    """A model file exists but cannot be turned into geometry."""


@contextlib.contextmanager
def _ply_without_body_comments(path: Path):
    """``path``, or a temporary copy without the ``comment`` lines of its ASCII body (Blender's
    importer fails on them), named like the file (Blender names the object after it)."""
    comments = set(ply_comment_lines(path))
    if not comments:
        yield path
        return
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # readable in the sandbox
    with tempfile.TemporaryDirectory(prefix="farm-ply-", dir=shm) as tmp:
        clean = Path(tmp) / path.name
        with open(path, "rb") as src, open(clean, "wb") as dst:
            dst.writelines(line for n, line in enumerate(src, 1) if n not in comments)
        yield clean


def _run_importer(kind: str, path: Path, up_axis: str) -> None:
    forward, up = IMPORT_AXES[up_axis]
    if kind == "OBJ":
        bpy.ops.wm.obj_import(filepath=str(path), forward_axis=forward, up_axis=up)
    elif kind == "STL":
        bpy.ops.wm.stl_import(filepath=str(path), forward_axis=forward, up_axis=up)
    elif kind == "PLY":
        with _ply_without_body_comments(path) as clean:
            bpy.ops.wm.ply_import(filepath=str(clean), forward_axis=forward, up_axis=up)
    else:
        bpy.ops.import_scene.gltf(filepath=str(path), loglevel=logging.ERROR,
                                  import_select_created_objects=False)


def import_mesh(path: Path, label: str, up_axis: str) -> list[bpy.types.Object]:
    """The mesh objects of ``path`` in world axes (transforms baked), sorted by name."""
    try:
        kind = mesh_format(path)
    except FormatError as exc:
        raise ModelLoadError(f"{label}: {path}: {exc}") from None
    scene = bpy.context.scene
    frames = scene.frame_start, scene.frame_end, scene.frame_current
    before = set(bpy.data.objects)
    try:
        _run_importer(kind, path, up_axis)
    except RuntimeError as exc:
        raise ModelLoadError(f"{label}: {kind} import failed for {path}: "
                             f"{str(exc).strip().splitlines()[-1]}") from None
    finally:  # an importer with animations may move the scene's frame range
        scene.frame_start, scene.frame_end, scene.frame_current = frames
    created = set(bpy.data.objects) - before
    meshes = [o for o in created if o.type == "MESH"]
    if not meshes or sum(len(o.data.polygons) for o in meshes) == 0:
        for obj in created:
            bpy.data.objects.remove(obj)
        raise ModelLoadError(f"{label}: {path} holds no faces (broken or empty {kind})")
    worlds = {obj: obj.matrix_world.copy() for obj in meshes}
    for obj in meshes:  # bake each instance's transform into its own copy of the mesh
        if obj.data.users > 1:
            obj.data = obj.data.copy()
        world = GLTF_Z_UP @ worlds[obj] if kind in ("GLB", "glTF") and up_axis == "Z" \
            else worlds[obj]
        obj.parent = None
        obj.modifiers.clear()  # an armature's deformation: the rest pose is rendered
        obj.data.transform(world)
        obj.matrix_world = mathutils.Matrix.Identity(4)
    for obj in created - set(meshes):
        bpy.data.objects.remove(obj)
    return sorted(meshes, key=lambda o: o.name)


def export_as(parts: list[bpy.types.Object], path: Path) -> None:
    """Write ``parts`` (Blender axes) as ``path``'s format, Y up for OBJ/PLY/glTF like their
    conventions, Z up for STL (benchmarks and tests: one model in every format; ``.gltf``
    with its buffer and images beside it)."""
    kind = mesh_format(path)
    for obj in bpy.context.scene.objects:  # the exporters write the selected objects
        obj.select_set(obj in parts)
    with bpy.context.temp_override(selected_objects=parts, active_object=parts[0]):
        if kind == "OBJ":
            bpy.ops.wm.obj_export(filepath=str(path), export_selected_objects=True,
                                  forward_axis="NEGATIVE_Z", up_axis="Y")
        elif kind == "PLY":
            bpy.ops.wm.ply_export(filepath=str(path), export_selected_objects=True,
                                  forward_axis="NEGATIVE_Z", up_axis="Y")
        elif kind == "STL":
            bpy.ops.wm.stl_export(filepath=str(path), export_selected_objects=True)
        else:
            bpy.ops.export_scene.gltf(filepath=str(path), use_selection=True,
                                      export_format="GLB" if kind == "GLB" else "GLTF_SEPARATE")
