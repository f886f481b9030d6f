"""Build a Blender scene from a VideoSpec: objects, textures, lights, background, camera.

World units and axes follow the spec (see farm.model.spec). Every object, light and the camera is
keyframed on frames 0..frames-1 from its polynomials.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import mathutils
import numpy as np

from farm.assets.library import MIN_DIAGONAL, AssetError, resolve_under
from farm.model.spec import ObjectSpec, VideoSpec, eval_poly
from worker.render.importers import ModelLoadError, import_mesh

SMART_UV_MAX_FACES = 1000  # the original used smart projection below this face count


def reset() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _image(path: Path, max_size: int) -> bpy.types.Image:
    try:
        img = bpy.data.images.load(str(path), check_existing=True)
    except RuntimeError as exc:
        raise AssetError(f"cannot read image {path}: {exc}") from None
    if img.size[0] == 0 or img.size[1] == 0:
        raise AssetError(f"cannot read image {path}: no pixels")
    _cap_size(img, max_size)
    return img


def _cap_size(img: bpy.types.Image, max_size: int) -> None:
    """Scale ``img`` down so its longer side is at most ``max_size`` (0: no cap)."""
    if max_size and img.size[0] and max(img.size) > max_size:
        factor = max_size / max(img.size)
        img.scale(max(1, int(img.size[0] * factor)), max(1, int(img.size[1] * factor)))


def _textured_material(name: str, image: bpy.types.Image, emission: float | None = None):
    mat = bpy.data.materials.new(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    if emission is None:
        shader = nodes.new("ShaderNodeBsdfPrincipled")
        links.new(tex.outputs["Color"], shader.inputs["Base Color"])
    else:
        shader = nodes.new("ShaderNodeEmission")
        shader.inputs["Strength"].default_value = emission
        links.new(tex.outputs["Color"], shader.inputs["Color"])
    links.new(shader.outputs[0], out.inputs["Surface"])
    return mat


def _import_model(path: Path, label: str, up_axis: str) -> list[bpy.types.Object]:
    """The mesh objects of a model file (any supported format), transforms baked."""
    return import_mesh(path, label, up_axis)


def _vertices(parts: list[bpy.types.Object]) -> np.ndarray:
    """All vertex coordinates of ``parts`` (their mesh data, world axes once baked), (n, 3)."""
    chunks = []
    for obj in parts:
        co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
        obj.data.vertices.foreach_get("co", co)
        chunks.append(co.reshape(-1, 3))
    return np.concatenate(chunks).astype(np.float64)


def normalize_parts(parts: list[bpy.types.Object], label: str) -> None:
    """Centre the joint bounding box of ``parts`` on the origin and scale its diagonal to 1
    (ShapeNet's convention), baked into the meshes."""
    coords = _vertices(parts)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    diagonal = float(np.linalg.norm(hi - lo))
    if not np.isfinite(diagonal) or diagonal < MIN_DIAGONAL:
        raise ModelLoadError(f"{label}: cannot normalise, its bounding box diagonal is {diagonal}")
    matrix = mathutils.Matrix.Scale(1 / diagonal, 4) @ mathutils.Matrix.Translation(
        mathutils.Vector(-(lo + hi) / 2))
    for obj in parts:
        obj.data.transform(matrix)


def _replace_texture(parts: list[bpy.types.Object], image: bpy.types.Image, projection: str,
                     name: str) -> None:
    """Drop the model's UVs and materials; project new UVs; one Principled BSDF with the image."""
    faces = sum(len(o.data.polygons) for o in parts)
    if projection == "AUTO":
        projection = "SMART" if faces < SMART_UV_MAX_FACES else "CYLINDER"
    for obj in parts:
        while obj.data.uv_layers:
            obj.data.uv_layers.remove(obj.data.uv_layers[0])
        obj.data.uv_layers.new(name="UVMap")
    with bpy.context.temp_override(active_object=parts[0], object=parts[0],
                                   selected_objects=parts, selected_editable_objects=parts):
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        if projection == "SMART":
            bpy.ops.uv.smart_project()
        else:
            bpy.ops.uv.cylinder_project(direction="ALIGN_TO_OBJECT", scale_to_bounds=True)
        bpy.ops.object.mode_set(mode="OBJECT")
    mat = _textured_material(name, image)
    for obj in parts:
        obj.data.materials.clear()
        obj.data.materials.append(mat)


def _keyframe_object(obj: bpy.types.Object, spec: ObjectSpec, t: np.ndarray) -> None:
    loc, rot, scl = (eval_poly(p, t) for p in (spec.location_poly, spec.rotation_poly,
                                               spec.scale_poly))
    obj.rotation_mode = "XYZ"
    for frame in range(len(t)):
        obj.location, obj.rotation_euler, obj.scale = loc[frame], rot[frame], scl[frame]
        for path in ("location", "rotation_euler", "scale"):
            obj.keyframe_insert(path, frame=frame)


def add_object(spec: ObjectSpec, pass_index: int, models_root: Path, textures_root: Path,
               max_texture_size: int, t: np.ndarray) -> bpy.types.Object:
    label = f"object {pass_index} ({spec.model})"
    path = resolve_under(models_root, spec.obj_path, f"{label} model")
    parts = _import_model(path, label, spec.up_axis)
    if spec.normalize:
        normalize_parts(parts, label)
    if spec.mesh_scale != 1.0:  # the manifest's scale hint
        for obj in parts:
            obj.data.transform(mathutils.Matrix.Scale(spec.mesh_scale, 4))
    if spec.texture:
        image = _image(resolve_under(textures_root, spec.texture, f"{label} texture"),
                       max_texture_size)
        _replace_texture(parts, image, spec.uv_projection, f"texture_{pass_index}")
    elif max_texture_size:
        for img in bpy.data.images:
            _cap_size(img, max_texture_size)
    root = bpy.data.objects.new(f"obj_{pass_index:02d}", None)
    bpy.context.scene.collection.objects.link(root)
    for obj in parts:
        obj.parent = root
        obj.pass_index = pass_index
    _keyframe_object(root, spec, t)
    return root


def add_background(spec: VideoSpec, textures_root: Path, max_texture_size: int) -> None:
    bg = spec.background
    half = bg.size / 2
    mesh = bpy.data.meshes.new("background")
    mesh.from_pydata([(-half, -half, 0), (half, -half, 0), (half, half, 0), (-half, half, 0)],
                     [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    uv.data.foreach_set("uv", [0, 0, 1, 0, 1, 1, 0, 1])
    image = _image(resolve_under(textures_root, bg.image, "background image"), max_texture_size)
    mesh.materials.append(_textured_material("background", image, emission=bg.strength))
    obj = bpy.data.objects.new("background", mesh)
    obj.location, obj.rotation_euler = bg.location, bg.rotation
    obj.pass_index = 0
    bpy.context.scene.collection.objects.link(obj)


def add_lights(spec: VideoSpec, t: np.ndarray) -> None:
    for i, light in enumerate(spec.lights):
        data = bpy.data.lights.new(f"light_{i:02d}", type=light.type)
        data.energy, data.color = light.energy, light.color
        obj = bpy.data.objects.new(f"light_{i:02d}", data)
        bpy.context.scene.collection.objects.link(obj)
        loc, rot = eval_poly(light.location_poly, t), eval_poly(light.rotation_poly, t)
        static = len(light.location_poly) == 1 and len(light.rotation_poly) == 1
        for frame in range(1 if static else len(t)):
            obj.location, obj.rotation_euler = loc[frame], rot[frame]
            if not static:
                obj.keyframe_insert("location", frame=frame)
                obj.keyframe_insert("rotation_euler", frame=frame)


def add_camera(spec: VideoSpec, t: np.ndarray) -> bpy.types.Object:
    data = bpy.data.cameras.new("camera")
    data.angle = spec.camera.fov
    data.sensor_fit = "AUTO"
    data.clip_start, data.clip_end = 0.01, 1000.0
    cam = bpy.data.objects.new("camera", data)
    bpy.context.scene.collection.objects.link(cam)
    bpy.context.scene.camera = cam
    loc = eval_poly(spec.camera.location_poly, t)
    target = eval_poly(spec.camera.look_at_poly, t)
    cam.rotation_mode = "QUATERNION"
    for frame in range(len(t)):
        forward = mathutils.Vector(target[frame] - loc[frame])
        cam.location = loc[frame]
        cam.rotation_quaternion = forward.to_track_quat("-Z", "Y")
        cam.keyframe_insert("location", frame=frame)
        cam.keyframe_insert("rotation_quaternion", frame=frame)
    return cam


def build_scene(spec: VideoSpec, models_root: Path, textures_root: Path) -> bpy.types.Scene:
    """Reset Blender and build the whole animated scene of ``spec``."""
    reset()
    scene = bpy.context.scene
    t = spec.frame_times()
    scene.frame_start, scene.frame_end = 0, spec.frames - 1
    world = bpy.data.worlds.new("world")  # black world: light comes from lamps and background
    world.color = (0.0, 0.0, 0.0)
    scene.world = world
    cap = spec.render.max_texture_size
    for k, obj in enumerate(spec.objects, start=1):
        add_object(obj, k, models_root, textures_root, cap, t)
    add_background(spec, textures_root, cap)
    add_lights(spec, t)
    add_camera(spec, t)
    return scene

