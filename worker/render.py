"""Render one video in a single Cycles pass per frame: RGB JPEG + object-index mask PNG.

The compositor writes the object-index pass (divided by 255, 8-bit BW PNG, no view transform) to
a scratch directory in the same render as the RGB; we re-save it as a DAVIS palette PNG.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

from farm.masks import object_stats, save_mask
from farm.spec import VideoSpec
from worker.device import select_device
from worker.scene import build_scene


def ablations() -> frozenset[str]:
    """FARM_BENCH_ABLATE, for benchmarks only: ``no-mask`` renders RGB alone (no index pass, no
    masks written), ``no-persistent`` re-syncs the whole scene every frame."""
    raw = os.environ.get("FARM_BENCH_ABLATE", "")
    found = {a.strip() for a in raw.split(",") if a.strip()}
    unknown = found - {"no-mask", "no-persistent"}
    if unknown:
        raise ValueError(f"FARM_BENCH_ABLATE: unknown {sorted(unknown)}")
    return frozenset(found)


class GateRejected(Exception):
    """The rendered masks failed the quality gate; the spec should be resampled."""


def configure_render(scene: bpy.types.Scene, spec: VideoSpec,
                     ablate: frozenset[str] = frozenset()) -> str:
    r, c = spec.render, scene.cycles
    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = spec.resolution
    scene.render.resolution_percentage = 100
    scene.render.use_persistent_data = "no-persistent" not in ablate
    scene.render.image_settings.file_format = "JPEG"
    scene.render.image_settings.quality = r.jpeg_quality
    scene.render.image_settings.color_mode = "RGB"
    scene.view_settings.view_transform = r.view_transform
    c.samples = r.samples
    c.use_adaptive_sampling = r.adaptive_threshold > 0
    if r.adaptive_threshold > 0:
        c.adaptive_threshold = r.adaptive_threshold
        c.adaptive_min_samples = r.adaptive_min_samples
    c.use_denoising = r.denoise
    if r.denoise:
        c.denoiser = "OPENIMAGEDENOISE"
        c.denoising_prefilter = r.denoise_prefilter
        c.denoising_quality = r.denoise_quality
    c.max_bounces = r.max_bounces
    c.seed = spec.index  # fixed noise pattern per video: re-renders are reproducible
    scene.view_layers[0].use_pass_object_index = "no-mask" not in ablate
    device = select_device(scene, r.device)
    # OIDN runs on the CPU unless told otherwise (bpy 5.0 default False): on a GPU worker it
    # would take seconds per frame of CPU time next to a render of a fraction of that.
    c.denoising_use_gpu = device != "CPU"
    return device


def add_index_output(scene: bpy.types.Scene, mask_dir: Path) -> bpy.types.Node:
    """Compositor: image -> group output (the JPEG); object index / 255 -> 8-bit PNG file."""
    tree = bpy.data.node_groups.new("compositor", "CompositorNodeTree")
    scene.compositing_node_group = tree
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    out = tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Image"], out.inputs[0])
    div = tree.nodes.new("ShaderNodeMath")
    div.operation = "DIVIDE"
    div.inputs[1].default_value = 255.0
    tree.links.new(layers.outputs["Object Index"], div.inputs[0])
    node = tree.nodes.new("CompositorNodeOutputFile")
    node.format.media_type = "IMAGE"
    node.format.file_format = "PNG"
    node.format.color_mode = "BW"
    node.format.color_depth = "8"
    node.format.compression = 0
    node.save_as_render = False
    node.directory = str(mask_dir)
    node.file_output_items.new("FLOAT", "index")
    tree.links.new(div.outputs[0], node.inputs["index"])
    return node


def _read_index(mask_dir: Path, frame: int) -> np.ndarray:
    files = sorted(mask_dir.glob(f"index_{frame:05d}_*.png"))
    if len(files) != 1:
        raise RuntimeError(f"expected one index image of frame {frame} in {mask_dir}, "
                           f"found {len(files)}")
    ids = np.asarray(Image.open(files[0]))
    files[0].unlink()
    return ids if ids.ndim == 2 else ids[..., 0]


class MaskWriter:
    """Mask post-processing beside the render loop, on one thread: read the index PNG Blender
    wrote for a frame, check it, save the DAVIS palette PNG, count pixels and boxes, then report
    the frame done (``on_frame``). Frames complete in order.

    Cycles releases the GIL while it path-traces, so this runs during the next frame's render
    instead of between two renders (5-14 ms per frame of encoding off the render thread).
    """

    def __init__(self, mask_dir: Path, ann_dir: Path, num_objects: int,
                 on_frame: Callable[[int], None] | None) -> None:
        self.mask_dir, self.ann_dir, self.k, self.on_frame = mask_dir, ann_dir, num_objects, on_frame
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="masks")
        self._futures: list[Future] = []
        self.encode_s: list[float] = []

    def _one(self, i: int) -> list[dict]:
        t0 = time.perf_counter()
        ids = _read_index(self.mask_dir, i)
        if ids.max(initial=0) > self.k:
            raise RuntimeError(f"frame {i}: mask holds id {ids.max()} but the spec has "
                               f"{self.k} objects")
        save_mask(ids, self.ann_dir / f"{i:05d}.png")
        stats = object_stats(ids, self.k)
        self.encode_s.append(time.perf_counter() - t0)
        if self.on_frame:
            self.on_frame(i)
        return stats

    def submit(self, i: int) -> None:
        self._futures.append(self._pool.submit(self._one, i))

    def check(self) -> None:
        """Raise the error of a frame already processed, if any (without waiting)."""
        for future in self._futures:
            if future.done() and future.exception() is not None:
                raise future.exception()

    def frames(self) -> list[list[dict]]:
        """Every submitted frame's object stats (waits for them)."""
        return [future.result() for future in self._futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def render_video(spec: VideoSpec, models_root: Path, textures_root: Path, staging: Path,
                 gate_check: Callable[[np.ndarray], str | None] | None = None,
                 on_frame: Callable[[int], None] | None = None) -> dict:
    """Render ``spec`` into ``staging/JPEGImages/<id>`` and ``staging/Annotations/<id>``.

    ``gate_check`` receives the (frames_so_far, objects) pixel-count array after frame 0 and
    after the last frame; a returned reason aborts with GateRejected.
    Returns the render part of the manifest.
    """
    t0 = time.perf_counter()
    scene = build_scene(spec, models_root, textures_root)
    ablate = ablations()
    device = configure_render(scene, spec, ablate)
    build_s = time.perf_counter() - t0
    jpg_dir = staging / "JPEGImages" / spec.id
    ann_dir = staging / "Annotations" / spec.id
    jpg_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    mask_dir = Path(tempfile.mkdtemp(prefix="farm-index-", dir=shm))
    node = None if "no-mask" in ablate else add_index_output(scene, mask_dir)
    writer = MaskWriter(mask_dir, ann_dir, len(spec.objects), on_frame) if node else None
    render_s: list[float] = []
    frames: list[list[dict]] = []
    try:
        for i in range(spec.frames):
            scene.frame_set(i)
            scene.render.filepath = str(jpg_dir / f"{i:05d}.jpg")
            if node is not None:
                node.file_name = f"index_{i:05d}_"
            t1 = time.perf_counter()
            bpy.ops.render.render(write_still=True)
            render_s.append(time.perf_counter() - t1)
            if writer is None:  # only in the RGB-alone benchmark ablation
                if on_frame:
                    on_frame(i)
                continue
            writer.submit(i)
            writer.check()
            if gate_check and i in (0, spec.frames - 1):
                frames = writer.frames()
                reason = gate_check(np.array([[o["pixels"] for o in f] for f in frames]))
                if reason:
                    raise GateRejected(reason)
        if writer is not None:
            frames = writer.frames()
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(mask_dir, ignore_errors=True)
    encode_s = writer.encode_s if writer is not None else []
    return {
        "blender_version": bpy.app.version_string,
        "device": device,
        "frames": [{"frame": i, "objects": f} for i, f in enumerate(frames)],
        "timings": {
            "scene_build_s": round(build_s, 4),
            "render_s": [round(x, 4) for x in render_s],
            "encode_s": [round(x, 4) for x in encode_s],
            "render_total_s": round(sum(render_s), 3),
        },
    }
