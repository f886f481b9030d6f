"""Render one video in a single Cycles pass per frame: RGB JPEG + object-index mask PNG, and the
extra outputs the spec asks for, through one render loop for every preset.

The compositor writes the object-index pass (divided by 255, 8-bit BW PNG, no view transform) to
a scratch directory in the same render as the RGB; we re-save it as a DAVIS palette PNG. The
extra outputs (depth, flow, normals, camera, amodal masks) are set up and read back by
``worker.render.outputs`` and written by ``farm.io.outputs``, in the same renders.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from farm.io.layout import frame_dirs, image_file, mask_file
from farm.io.masks import object_stats, save_mask
from farm.io.outputs import formats
from farm.model.spec import VideoSpec
from worker.render.device import select_device
from worker.render.outputs import (
    ANIMATION_PREFIX,
    RENDER_LOOP,
    STILL_PREFIX,
    ExtraOutputs,
    index_over_255,
    pass_file,
    take,
)
from worker.render.scene import build_scene

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD_DEFAULT = 128 * 1024


def keep_freed_memory(keep: bool) -> bool:
    """glibc's malloc: while a video renders (``keep``), hold on to freed memory for reuse;
    after it, give it back to the kernel. Returns whether glibc took the settings.

    Blender and Cycles allocate and free every frame's buffers (render result, passes, film,
    compositor and image buffers: ~24 MB at 768x512); by default glibc returns them to the
    kernel after each frame, so every frame faulted ~6000 fresh zeroed pages back in (measured:
    6000 -> 110 minor page faults per frame, same peak memory). ``keep=False`` restores the
    default trim threshold and trims, so the process holds no more between videos than before.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        if keep:  # large blocks from the heap (32 MiB: glibc's maximum), never trimmed
            return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
        ok = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_DEFAULT))
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):  # not glibc: its allocator's defaults
        return False


class GateRejected(Exception):
    """The rendered masks failed the quality gate; the spec should be resampled."""


def configure_render(scene: bpy.types.Scene, spec: VideoSpec) -> str:
    r, c = spec.render, scene.cycles
    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = spec.resolution
    scene.render.resolution_percentage = 100
    scene.render.use_persistent_data = True
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
    scene.view_layers[0].use_pass_object_index = True
    scene.view_layers[0].use_pass_z = False  # on by default; the depth output turns it on
    device = select_device(scene, r.device)
    # OIDN runs on the CPU unless told otherwise (bpy 5.0 default False): on a GPU worker it
    # would take seconds per frame of CPU time next to a render of a fraction of that.
    c.denoising_use_gpu = device != "CPU"
    return device


def add_index_output(scene: bpy.types.Scene, mask_dir: Path, rgb: bool = True
                     ) -> tuple[bpy.types.Node, bpy.types.NodeTree, bpy.types.Node]:
    """Compositor: image -> group output (the JPEG); object index / 255 -> 8-bit PNG file.

    ``rgb=False``: no group output; with a single view layer the JPEG is then the render
    layer's image as rendered (the same pixels), without the compositor copying the image
    through itself every frame (~12 ms/frame at 768x512).
    Returns the file output node, the tree and the render-layers node."""
    tree = bpy.data.node_groups.new("compositor", "CompositorNodeTree")
    scene.compositing_node_group = tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    if rgb:
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        out = tree.nodes.new("NodeGroupOutput")
        tree.links.new(layers.outputs["Image"], out.inputs[0])
    ids = index_over_255(tree, layers.outputs["Object Index"])
    node = tree.nodes.new("CompositorNodeOutputFile")
    node.format.media_type = "IMAGE"
    node.format.file_format = "PNG"
    node.format.color_mode = "BW"
    node.format.color_depth = "8"
    node.format.compression = 0
    node.save_as_render = False
    node.directory = str(mask_dir)
    node.file_output_items.new("FLOAT", "index")
    tree.links.new(ids, node.inputs["index"])
    return node, tree, layers


class FrameWriter:
    """Everything after a frame's render, on one thread beside the render loop: read the index
    PNG Blender wrote, check it, save the DAVIS palette PNG, count pixels and boxes, write the
    extra outputs, then report the frame done (``on_frame``: progress, streaming upload). Frames
    complete in order.

    Cycles releases the GIL while it path-traces, so this runs during the next frame's render
    instead of between two renders (5-14 ms per frame of mask encoding off the render thread).
    """

    def __init__(self, scratch: Path, ann_dir: Path, num_objects: int, extras: ExtraOutputs,
                 staging: Path, on_frame: Callable[[int], None] | None) -> None:
        self.scratch, self.ann_dir, self.k, self.on_frame = scratch, ann_dir, num_objects, on_frame
        self.extras, self.staging = extras, staging
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="frames")
        self._futures: list[Future] = []
        self.encode_s: list[float] = []  # per frame: the mask's read, check, PNG and stats
        self.output_s: dict[str, float] = {}  # per extra output: CPU s of this thread
        self.done_at = 0.0  # perf_counter when the last frame was written

    def _one(self, i: int) -> tuple[list[dict], dict]:
        t0 = time.perf_counter()
        ids = take(pass_file(self.scratch, "index", i, ".png"))
        if ids.max(initial=0) > self.k:
            raise RuntimeError(f"frame {i}: mask holds id {ids.max()} but the spec has "
                               f"{self.k} objects")
        save_mask(ids, self.ann_dir / mask_file(i))
        stats = object_stats(ids, self.k)
        self.encode_s.append(time.perf_counter() - t0)
        record = (self.extras.write(i, stats, self.staging, self.output_s)
                  if self.extras.any else {})
        self.done_at = time.perf_counter()
        if self.on_frame:
            self.on_frame(i)
        return stats, record

    def submit(self, i: int) -> None:
        self._futures.append(self._pool.submit(self._one, i))

    def check(self) -> None:
        """Raise the error of a frame already processed, if any (without waiting)."""
        for future in self._futures:
            if future.done() and future.exception() is not None:
                raise future.exception()

    def frames(self) -> list[tuple[list[dict], dict]]:
        """Every submitted frame's object stats and manifest additions (waits for them)."""
        return [future.result() for future in self._futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class LoopTimes:
    """Per frame, measured on the render thread."""

    build_s: float
    render_s: list[float] = field(default_factory=list)
    render_cpu_s: list[float] = field(default_factory=list)  # CPU s of this process (all threads)
    starts: list[float] = field(default_factory=list)  # perf_counter at each frame's start


def render_frames(spec: VideoSpec, models_root: Path, textures_root: Path, staging: Path,
                  gate_check: Callable[[np.ndarray], str | None] | None = None,
                  on_frame: Callable[[int], None] | None = None) -> dict:
    """Render ``spec`` into ``staging/JPEGImages/<id>``, ``staging/Annotations/<id>`` and the
    folders of its extra outputs: frame 0 alone (the gate checks its masks before the rest is
    rendered), frames 1.. in one animation render (Blender sets the render up once, not per
    frame), every frame's files written on a thread beside the render.

    ``gate_check`` receives the (frames_so_far, objects) pixel-count array after frame 0 and
    after the last frame; a returned reason aborts with GateRejected.
    Returns the render part of the manifest.
    """
    t0 = time.perf_counter()
    scene = build_scene(spec, models_root, textures_root)
    device = configure_render(scene, spec)
    jpg_dir, ann_dir = frame_dirs(staging, spec.id)
    jpg_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    scratch = Path(tempfile.mkdtemp(prefix="farm-index-", dir=shm))
    # With extra outputs the compositor has more view layers (amodal) and passes: the JPEG then
    # takes the main layer's image through the group output.
    extra = bool(set(spec.render.outputs) - set(RENDER_LOOP))
    node, tree, layers = add_index_output(scene, scratch, rgb=extra)
    extras = ExtraOutputs(scene, spec, tree, layers, node, scratch)
    times = LoopTimes(build_s=time.perf_counter() - t0)
    writer = FrameWriter(scratch, ann_dir, len(spec.objects), extras, staging, on_frame)
    cpu_starts: list[float] = []

    def gate(i: int) -> None:
        if gate_check and i in (0, spec.frames - 1):
            done = writer.frames()
            reason = gate_check(np.array([[o["pixels"] for o in f] for f, _ in done]))
            if reason:
                raise GateRejected(reason)

    def pre(*_args) -> None:
        times.starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())

    def written(scene_: bpy.types.Scene, *_args) -> None:
        times.render_s.append(time.perf_counter() - times.starts[-1])
        times.render_cpu_s.append(time.process_time() - cpu_starts[-1])
        writer.submit(scene_.frame_current)

    def name_files(prefix: str) -> None:
        node.file_name = prefix
        extras.name_files(prefix)

    keep_freed_memory(True)
    try:
        pre()
        scene.frame_set(0)
        scene.render.filepath = str(jpg_dir / image_file(0))
        name_files(STILL_PREFIX.format(frame=0))
        bpy.ops.render.render(write_still=True)
        written(scene)
        writer.check()
        gate(0)
        if spec.frames > 1:
            # Handlers can neither raise nor abort an animation render: mask errors and the
            # last gate check surface when it returns.
            scene.frame_start, scene.frame_end = 1, spec.frames - 1
            scene.render.filepath = str(jpg_dir / "#####")  # 00001.jpg ...
            name_files(ANIMATION_PREFIX)  # Blender appends item and frame: f_index0001.png
            handlers = bpy.app.handlers
            handlers.render_pre.append(pre)
            handlers.render_write.append(written)
            try:
                bpy.ops.render.render(animation=True)
            finally:
                handlers.render_pre.remove(pre)
                handlers.render_write.remove(written)
            if len(times.render_s) != spec.frames:
                full = shutil.disk_usage(jpg_dir).free < 2**20  # Blender only logs write errors
                raise RuntimeError(f"the animation render wrote {len(times.render_s) - 1} of "
                                   f"{spec.frames - 1} frames"
                                   + (f": {os.strerror(errno.ENOSPC)}" if full else ""))
            gate(spec.frames - 1)
        frames = writer.frames()
        video = extras.finish(staging)
    finally:
        writer.close()
        shutil.rmtree(scratch, ignore_errors=True)
        keep_freed_memory(False)
    return manifest_part(spec, device, frames, video, times, writer)


def manifest_part(spec: VideoSpec, device: str, frames: list[tuple[list[dict], dict]],
                  video: dict, times: LoopTimes, writer: FrameWriter) -> dict:
    """The render's part of the manifest (the same keys for every preset)."""
    # Per frame, from its start to the next one's (the last: to its files written): the loop's
    # whole cost per frame, path tracing included, as a video of n frames pays it n times.
    starts = times.starts
    ends = [*starts[1:], max(writer.done_at, starts[-1] + times.render_s[-1])]

    def rounded(values: list[float]) -> list[float]:
        return [round(x, 4) for x in values]

    return {
        "blender_version": bpy.app.version_string,
        "device": device,
        "outputs": list(spec.render.outputs),
        "output_formats": formats(spec.render),
        "frames": [{"frame": i, "objects": f, **extra} for i, (f, extra) in enumerate(frames)],
        "timings": {
            "scene_build_s": round(times.build_s, 4),
            "render_s": rounded(times.render_s),
            # CPU seconds of the render process (all threads, so also the previous frame's
            # encoding) during the render: steadier than wall time on a shared machine (bench
            # outputs compares these)
            "render_cpu_s": rounded(times.render_cpu_s),
            "encode_s": rounded(writer.encode_s),
            "frame_s": rounded([b - a for a, b in zip(starts, ends, strict=True)]),
            "render_total_s": round(sum(times.render_s), 3),
            "outputs_encode_cpu_s": {o: round(s, 4) for o, s in writer.output_s.items()},
        },
        **video,
    }
