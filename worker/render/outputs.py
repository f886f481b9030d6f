"""The extra outputs inside Blender: render passes, amodal view layers, compositor file outputs.

Depth, normals and optical flow come from the main view layer's Depth, Normal and Vector passes
(the same Cycles render as the RGB and the mask): the compositor writes them as uncompressed
float EXRs on scratch (``/dev/shm``), which are read back here and encoded by ``farm.io.outputs``.
Amodal masks come from one extra view layer per object holding only that object (the other
objects and the background excluded), rendered with 1 sample and no denoising in the same
``render()`` call; the compositor writes each layer's object-index pass as an 8-bit PNG, like the
visible mask. The camera comes from Blender's camera object per frame. Reading and encoding a
frame's files needs no bpy, so it runs in a thread while Blender renders the next frame (Blender
releases the GIL while it renders).
"""

from __future__ import annotations

import time
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

from farm.io import outputs as fo
from farm.io.codecs import read_exr
from farm.model.spec import VideoSpec

BACKGROUND_COLLECTION = "farm_background"
PASS_OUTPUT = {"depth": "depth", "normal": "normals", "vector": "flow"}


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


class ExtraOutputs:
    """Set up at scene build; ``name_frame`` before each render, then ``camera_now`` and
    ``write`` after it, ``finish`` at the end."""

    def __init__(self, scene: bpy.types.Scene, spec: VideoSpec, tree: bpy.types.NodeTree,
                 layers: bpy.types.Node, index_node: bpy.types.Node, scratch: Path) -> None:
        self.scene, self.spec, self.scratch = scene, spec, scratch
        self.outs = set(spec.render.outputs)
        self.index_node = index_node
        self.raw = None
        self.passes: list[str] = []
        main = scene.view_layers[0]
        wanted = (("depth", "use_pass_z", "Depth", "depth", "BW"),
                  ("normals", "use_pass_normal", "Normal", "normal", "RGB"),
                  ("flow", "use_pass_vector", "Vector", "vector", "RGBA"))
        if self.outs & {"depth", "normals", "flow"}:
            if "flow" in self.outs:
                scene.render.use_motion_blur = False  # Cycles has no Vector pass with blur on
            self.raw = tree.nodes.new("CompositorNodeOutputFile")
            self.raw.format.media_type = "IMAGE"
            self.raw.format.file_format = "OPEN_EXR"
            self.raw.format.color_depth = "32"
            self.raw.format.exr_codec = "NONE"  # on tmpfs: cheapest to write and to read back
            self.raw.save_as_render = False
            self.raw.directory = str(scratch)
            for output, flag, socket, item_name, mode in wanted:
                if output not in self.outs:
                    continue
                setattr(main, flag, True)
                item = self.raw.file_output_items.new("RGBA" if mode == "RGBA" else "FLOAT"
                                                      if mode == "BW" else "VECTOR", item_name)
                item.override_node_format = True
                item.format.media_type = "IMAGE"
                item.format.file_format = "OPEN_EXR"
                item.format.color_depth = "32"
                item.format.exr_codec = "NONE"
                item.format.color_mode = mode
                tree.links.new(layers.outputs[socket], self.raw.inputs[item_name])
                self.passes.append(item_name)
        self.objects = list(range(1, len(spec.objects) + 1)) if "amodal" in self.outs else []
        if self.objects:
            self._amodal_layers(tree)
        self.camera_matrices: list[np.ndarray] = []

    def _amodal_layers(self, tree: bpy.types.NodeTree) -> None:
        scene = self.scene
        for k in self.objects:
            _gather(scene, k, _object_collection(k))
        _gather(scene, 0, BACKGROUND_COLLECTION)
        main = scene.view_layers[0]
        for k in self.objects:
            layer = scene.view_layers.new(f"amodal_{k:02d}")
            layer.use_pass_object_index = True
            layer.pass_alpha_threshold = main.pass_alpha_threshold
            layer.samples = 1  # the index pass takes its id from the first sample anyway
            layer.cycles.use_denoising = False
            for child in layer.layer_collection.children:
                child.exclude = child.collection.name != _object_collection(k)
            node = tree.nodes.new("CompositorNodeRLayers")
            node.layer = layer.name
            div = tree.nodes.new("ShaderNodeMath")
            div.operation = "DIVIDE"
            div.inputs[1].default_value = 255.0
            tree.links.new(node.outputs["Object Index"], div.inputs[0])
            name = f"amodal_{k:02d}"
            self.index_node.file_output_items.new("FLOAT", name)
            tree.links.new(div.outputs[0], self.index_node.inputs[name])

    def name_frame(self, i: int, prefix: str) -> None:
        if self.raw is not None:
            self.raw.file_name = prefix

    def _take(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise RuntimeError(f"the compositor did not write {path.name}")
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

    def camera_now(self) -> np.ndarray:
        """Blender's camera-to-world matrix at the current frame (call from the main thread)."""
        cam = np.array(self.scene.camera.matrix_world, dtype=float)
        self.camera_matrices.append(cam)
        return cam

    def write(self, i: int, prefix: str, cam: np.ndarray, objects: list[dict], staging: Path,
              timings: dict[str, float]) -> dict:
        """Read frame ``i``'s raw passes and write its encoded outputs; returns the manifest's
        per-frame additions (and adds amodal statistics to ``objects``). No bpy here: it runs in
        a thread while Blender renders the next frame."""
        def take(name: str, output: str) -> np.ndarray:
            t0 = time.thread_time()  # reading the raw pass counts towards its output's cost
            array = self._take(self.scratch / name)
            timings[output] = timings.get(output, 0.0) + time.thread_time() - t0
            return array

        raw = {name: take(f"{prefix}{name}.exr", PASS_OUTPUT[name]) for name in self.passes}
        amodal = {k: take(f"{prefix}amodal_{k:02d}.png", "amodal") for k in self.objects}
        return fo.write_frame(
            staging, self.spec.id, i, self.spec.frames, self.spec.render,
            depth=raw["depth"][..., 0] if "depth" in raw else None,
            vector=raw.get("vector"),
            normal_world=raw["normal"][..., :3] if "normal" in raw else None,
            camera_to_world=cam, amodal_ids=amodal or None, objects=objects, timings=timings)

    def finish(self, staging: Path) -> dict | None:
        """Write the camera JSON; returns the camera record for the manifest."""
        if "camera" not in self.outs:
            return None
        data = self.scene.camera.data
        width, height = self.spec.resolution
        record = fo.camera_record(data.angle, width, height, self.camera_matrices,
                                  (data.clip_start, data.clip_end))
        fo.write_camera(staging, self.spec.id, record)
        return record
