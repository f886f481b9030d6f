"""The Blender side of the output kinds: which render pass each kind needs and how it is set up.

``farm/io/output_kinds.py`` holds every kind's pure part (folder, files, encoding, units, how it
is written from its raw data and read back); here each kind that needs more than the RGB and the
mask (which ``worker.render.frames`` writes) has one entry in ``BLENDER``:

- a ``RawPass`` (depth, normals, flow): a pass of the main view layer, which the compositor
  writes as an uncompressed float EXR on scratch (``/dev/shm``) in the same render as the RGB and
  the mask; read back here, shaped, and handed to the kind's writer;
- ``AmodalLayers``: one extra view layer per object holding only that object (the other objects
  and the background excluded), rendered with 1 sample and no denoising in the same ``render()``
  call; the compositor writes each layer's object-index pass as an 8-bit PNG like the visible mask;
- ``CameraPath``: Blender's camera per frame (no pass).

Reading and encoding a frame's files needs no bpy, so it runs in a thread while Blender renders
the next frame (Blender releases the GIL while it renders).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from PIL import Image

from farm.io import outputs as fo
from farm.io.codecs import read_exr
from farm.model.spec import VideoSpec

BACKGROUND_COLLECTION = "farm_background"
STILL_PREFIX, ANIMATION_PREFIX = "f{frame:05d}_", "f_"  # compositor file names (pass_file)


def pass_file(scratch: Path, item: str, frame: int, ext: str) -> Path:
    """The compositor's file of ``item`` at ``frame``: ``f00007_<item>.ext`` from a still render
    (named per frame by us), ``f_<item>0007.ext`` from an animation render (numbered by Blender)."""
    found = [p for p in (scratch / f"{STILL_PREFIX.format(frame=frame)}{item}{ext}",
                         scratch / f"{ANIMATION_PREFIX}{item}{frame:04d}{ext}") if p.is_file()]
    if len(found) != 1:
        raise RuntimeError(f"the compositor did not write {item} of frame {frame} in {scratch} "
                           f"({sorted(p.name for p in scratch.iterdir())[:5]})")
    return found[0]


def take(path: Path) -> np.ndarray:
    """Read a compositor file (float EXR: channels stacked; PNG: one channel) and delete it."""
    try:
        if path.suffix == ".exr":
            channels = read_exr(path)
            for order in (("R", "G", "B", "A"), ("X", "Y", "Z", "A")):
                names = [c for c in order if c in channels]
                if len(names) >= 3:
                    return np.stack([channels[c] for c in names], axis=-1)
            return np.stack([channels[c] for c in sorted(channels)], axis=-1)
        ids = np.asarray(Image.open(path))
        return ids if ids.ndim == 2 else ids[..., 0]
    finally:
        path.unlink(missing_ok=True)


def index_over_255(tree: bpy.types.NodeTree, socket: bpy.types.NodeSocket) -> bpy.types.NodeSocket:
    """Object index / 255: an 8-bit BW PNG then holds the ids exactly."""
    div = tree.nodes.new("ShaderNodeMath")
    div.operation = "DIVIDE"
    div.inputs[1].default_value = 255.0
    tree.links.new(socket, div.inputs[0])
    return div.outputs[0]


@dataclass
class Setup:
    """What an entry's setup gets: the scene, its compositor, and the file output nodes."""

    scene: bpy.types.Scene
    spec: VideoSpec
    tree: bpy.types.NodeTree
    layers: bpy.types.Node  # the main view layer's render-layers node
    index_node: bpy.types.Node  # writes the visible mask (8-bit PNGs)
    scratch: Path
    raw_node: bpy.types.Node | None = None  # float EXRs of the main layer's passes

    def exr_node(self) -> bpy.types.Node:
        if self.raw_node is None:
            node = self.tree.nodes.new("CompositorNodeOutputFile")
            node.format.media_type = "IMAGE"
            node.format.file_format = "OPEN_EXR"
            node.format.color_depth = "32"
            node.format.exr_codec = "NONE"  # on tmpfs: cheapest to write and to read back
            node.save_as_render = False
            node.directory = str(self.scratch)
            self.raw_node = node
        return self.raw_node


@dataclass(frozen=True)
class RawPass:
    """A pass of the main view layer written as a float EXR; ``shape`` makes the kind's raw
    array from the file's stacked channels."""

    flag: str  # the view layer's use_pass_* switch
    socket: str  # the render-layers node's output
    item: str  # the EXR's name on scratch
    mode: str  # BW, RGB or RGBA
    shape: Callable[[np.ndarray], np.ndarray]
    prepare: Callable[[bpy.types.Scene], None] | None = None

    def setup(self, s: Setup) -> None:
        if self.prepare:
            self.prepare(s.scene)
        setattr(s.scene.view_layers[0], self.flag, True)
        node = s.exr_node()
        item = node.file_output_items.new(
            {"RGBA": "RGBA", "BW": "FLOAT"}.get(self.mode, "VECTOR"), self.item)
        item.override_node_format = True
        item.format.media_type = "IMAGE"
        item.format.file_format = "OPEN_EXR"
        item.format.color_depth = "32"
        item.format.exr_codec = "NONE"
        item.format.color_mode = self.mode
        s.tree.links.new(s.layers.outputs[self.socket], node.inputs[self.item])

    def take(self, scratch: Path, frame: int, _objects: int) -> np.ndarray:
        return self.shape(take(pass_file(scratch, self.item, frame, ".exr")))


def _object_collection(k: int) -> str:
    return f"farm_object_{k:02d}"


def _gather(scene: bpy.types.Scene, pass_index: int, name: str) -> bpy.types.Collection:
    """Move the meshes with ``pass_index`` (an object's parts; 0: the background) into a new
    collection ``name`` under the scene's. Their parents (the objects' animated empties) stay in
    the scene's own collection, which every view layer evaluates."""
    coll = bpy.data.collections.new(name)
    scene.collection.children.link(coll)
    for obj in [o for o in scene.objects if o.type == "MESH" and o.pass_index == pass_index]:
        for user in list(obj.users_collection):
            user.objects.unlink(obj)
        coll.objects.link(obj)
    return coll


class AmodalLayers:
    """One index-only view layer per object; raw data: per object id, its layer's index pass."""

    @staticmethod
    def setup(s: Setup) -> None:
        scene, objects = s.scene, range(1, len(s.spec.objects) + 1)
        for k in objects:
            _gather(scene, k, _object_collection(k))
        _gather(scene, 0, BACKGROUND_COLLECTION)
        main = scene.view_layers[0]
        for k in objects:
            layer = scene.view_layers.new(f"amodal_{k:02d}")
            layer.use_pass_object_index = True
            layer.pass_alpha_threshold = main.pass_alpha_threshold
            layer.samples = 1  # the index pass takes its id from the first sample anyway
            layer.cycles.use_denoising = False
            for child in layer.layer_collection.children:
                child.exclude = child.collection.name != _object_collection(k)
            node = s.tree.nodes.new("CompositorNodeRLayers")
            node.layer = layer.name
            name = f"amodal_{k:02d}"
            s.index_node.file_output_items.new("FLOAT", name)
            s.tree.links.new(index_over_255(s.tree, node.outputs["Object Index"]),
                             s.index_node.inputs[name])

    @staticmethod
    def take(scratch: Path, frame: int, objects: int) -> dict[int, np.ndarray]:
        return {k: take(pass_file(scratch, f"amodal_{k:02d}", frame, ".png"))
                for k in range(1, objects + 1)}


class CameraPath:
    """No pass: the kind's data is Blender's camera, which every frame's writer gets anyway."""

    @staticmethod
    def setup(_s: Setup) -> None:
        return None

    take = None


def _no_motion_blur(scene: bpy.types.Scene) -> None:
    scene.render.use_motion_blur = False  # Cycles has no Vector pass with blur on


# kind -> its Blender side (rgb and masks: worker.render.frames); the order: the passes' setup
BLENDER: dict[str, Any] = {
    "depth": RawPass("use_pass_z", "Depth", "depth", "BW", lambda a: a[..., 0]),
    "normals": RawPass("use_pass_normal", "Normal", "normal", "RGB", lambda a: a[..., :3]),
    "flow": RawPass("use_pass_vector", "Vector", "vector", "RGBA", lambda a: a,
                    prepare=_no_motion_blur),
    "amodal": AmodalLayers(),
    "camera": CameraPath(),
}
RENDER_LOOP = ("rgb", "masks")  # written by the render loop itself


class ExtraOutputs:
    """Every extra output of a spec: set up at scene build (``__init__``), ``name_frame`` before
    a still render, ``write`` per rendered frame (in a thread), ``finish`` at the end."""

    def __init__(self, scene: bpy.types.Scene, spec: VideoSpec, tree: bpy.types.NodeTree,
                 layers: bpy.types.Node, index_node: bpy.types.Node, scratch: Path) -> None:
        self.scene, self.spec, self.scratch = scene, spec, scratch
        outs = set(spec.render.outputs)
        self.kinds = [name for name in BLENDER if name in outs]
        self.setup = Setup(scene, spec, tree, layers, index_node, scratch)
        for name in self.kinds:
            BLENDER[name].setup(self.setup)
        # Blender's camera at every frame, read before rendering (the render loop's handlers
        # cannot: an animation render does not update the scene's objects).
        self.camera_matrices: list[np.ndarray] = []
        if any(fo.KINDS[name].needs_camera for name in self.kinds):
            for i in range(spec.frames):
                scene.frame_set(i)
                self.camera_matrices.append(np.array(scene.camera.matrix_world, dtype=float))

    @property
    def any(self) -> bool:
        return bool(self.kinds)

    def name_files(self, prefix: str) -> None:
        if self.setup.raw_node is not None:
            self.setup.raw_node.file_name = prefix

    def write(self, i: int, objects: list[dict], staging: Path,
              timings: dict[str, float]) -> dict:
        """Read frame ``i``'s raw passes and write its encoded outputs; returns the manifest's
        per-frame additions (and adds amodal statistics to ``objects``). No bpy here: it runs in
        a thread while Blender renders the next frame."""
        raw = {}
        for name in self.kinds:
            if BLENDER[name].take is None:
                continue
            t0 = time.thread_time()  # reading the raw pass counts towards its output's cost
            raw[name] = BLENDER[name].take(self.scratch, i, len(self.spec.objects))
            timings[name] = timings.get(name, 0.0) + time.thread_time() - t0
        cam = self.camera_matrices[i] if self.camera_matrices else None
        return fo.write_frame(staging, self.spec.id, i, self.spec.frames, self.spec.render, raw,
                              camera_to_world=cam, objects=objects, timings=timings)

    def finish(self, staging: Path) -> dict:
        """The per-video files (the camera JSON); returns the manifest's additions."""
        data = self.scene.camera.data
        width, height = self.spec.resolution
        return fo.finish_video(staging, self.spec.id, self.spec.render, {
            "fov_rad": data.angle, "width": width, "height": height,
            "matrices": self.camera_matrices, "clip": (data.clip_start, data.clip_end)})
