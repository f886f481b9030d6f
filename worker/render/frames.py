"""Render one video in a single Cycles pass per frame: RGB JPEG + object-index mask PNG.

The compositor writes the object-index pass (divided by 255, 8-bit BW PNG, no view transform) to
a scratch directory in the same render as the RGB; we re-save it as a DAVIS palette PNG. The
extra outputs a spec asks for (depth, flow, normals, camera, amodal masks) are set up and written
by ``worker.render.outputs``.
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
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

from farm.io.layout import frame_dirs, image_file, mask_file
from farm.io.masks import object_stats, save_mask
from farm.model.spec import VideoSpec
from farm.settings import text
from worker.render.device import select_device
from worker.render.scene import build_scene


def ablations() -> frozenset[str]:
    """FARM_BENCH_ABLATE, for benchmarks only: ``no-mask`` renders RGB alone (no index pass, no
    masks written), ``no-persistent`` re-syncs the whole scene every frame, ``serial-masks``
    encodes each frame's mask on the render thread between two renders, ``per-frame-calls``
    renders every frame with its own render call (those two: the previous loop),
    ``previous-settings`` the previous per-frame settings (the image through the compositor's
    group output, the Z pass, glibc's default trimming of freed memory)."""
    raw = text("FARM_BENCH_ABLATE")
    found = {a.strip() for a in raw.split(",") if a.strip()}
    unknown = found - {"no-mask", "no-persistent", "serial-masks", "per-frame-calls",
                       "previous-settings"}
    if unknown:
        raise ValueError(f"FARM_BENCH_ABLATE: unknown {sorted(unknown)}")
    return frozenset(found)


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
    if "previous-settings" not in ablate:
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
    return node, tree, layers


def _read_index_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise RuntimeError(f"the compositor did not write the index image {path}")
    ids = np.asarray(Image.open(path))
    path.unlink()
    return ids if ids.ndim == 2 else ids[..., 0]


def _read_index(mask_dir: Path, frame: int) -> np.ndarray:
    """The index image of ``frame``: ``index_00007_index.png`` from a still render (named per
    frame by us), ``index_index0007.png`` from an animation render (numbered by Blender)."""
    found = [mask_dir / f"index_index{frame:04d}.png",
             *sorted(mask_dir.glob(f"index_{frame:05d}_*.png"))]
    found = [p for p in found if p.is_file()]
    if len(found) != 1:
        raise RuntimeError(f"expected one index image of frame {frame} in {mask_dir}, found "
                           f"{len(found)} ({sorted(p.name for p in mask_dir.iterdir())[:5]})")
    return _read_index_file(found[0])


class MaskWriter:
    """Mask post-processing beside the render loop, on one thread: read the index PNG Blender
    wrote for a frame, check it, save the DAVIS palette PNG, count pixels and boxes, then report
    the frame done (``on_frame``). Frames complete in order.

    Cycles releases the GIL while it path-traces, so this runs during the next frame's render
    instead of between two renders (5-14 ms per frame of encoding off the render thread).
    """

    def __init__(self, mask_dir: Path, ann_dir: Path, num_objects: int,
                 on_frame: Callable[[int], None] | None, serial: bool = False) -> None:
        self.mask_dir, self.ann_dir, self.k, self.on_frame = mask_dir, ann_dir, num_objects, on_frame
        self.serial = serial  # encode on the caller's thread (the benchmarks' old loop)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="masks")
        self._futures: list[Future] = []
        self.encode_s: list[float] = []
        self.done_at = 0.0  # perf_counter when the last mask was written

    def _one(self, i: int) -> list[dict]:
        t0 = time.perf_counter()
        ids = _read_index(self.mask_dir, i)
        if ids.max(initial=0) > self.k:
            raise RuntimeError(f"frame {i}: mask holds id {ids.max()} but the spec has "
                               f"{self.k} objects")
        save_mask(ids, self.ann_dir / mask_file(i))
        stats = object_stats(ids, self.k)
        self.done_at = time.perf_counter()
        self.encode_s.append(self.done_at - t0)
        if self.on_frame:
            self.on_frame(i)
        return stats

    def submit(self, i: int) -> None:
        if self.serial:
            future: Future = Future()
            try:
                future.set_result(self._one(i))
            except Exception as exc:  # noqa: BLE001 - raised by check()/frames() like the thread's
                future.set_exception(exc)
            self._futures.append(future)
            return
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


def render_frames(spec: VideoSpec, models_root: Path, textures_root: Path, staging: Path,
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
    jpg_dir, ann_dir = frame_dirs(staging, spec.id)
    jpg_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    mask_dir = Path(tempfile.mkdtemp(prefix="farm-index-", dir=shm))
    extras = bool(set(spec.render.outputs) - {"rgb", "masks"})
    node, tree, layers = (None, None, None) if "no-mask" in ablate else add_index_output(
        scene, mask_dir, rgb=extras or "previous-settings" in ablate)
    if node is not None and extras:
        try:
            return {"blender_version": bpy.app.version_string, "device": device,
                    **_render_with_outputs(spec, scene, tree, layers, node, mask_dir, staging,
                                           gate_check, on_frame, build_s)}
        finally:
            shutil.rmtree(mask_dir, ignore_errors=True)
    writer = (MaskWriter(mask_dir, ann_dir, len(spec.objects), on_frame,
                         serial="serial-masks" in ablate) if node else None)
    render_s: list[float] = []
    render_cpu_s: list[float] = []  # CPU seconds of this process per frame's render
    starts: list[float] = []  # perf_counter at the start of each frame
    cpu_starts: list[float] = []
    frames: list[list[dict]] = []

    def gate(i: int) -> None:
        nonlocal frames
        if gate_check and writer is not None and i in (0, spec.frames - 1):
            frames = writer.frames()
            reason = gate_check(np.array([[o["pixels"] for o in f] for f in frames]))
            if reason:
                raise GateRejected(reason)

    def finished(i: int) -> None:
        """Frame ``i`` is rendered and written: its mask goes to the writer."""
        if writer is None:  # only in the RGB-alone benchmark ablation
            if on_frame:
                on_frame(i)
            return
        writer.submit(i)

    def still(i: int) -> None:
        starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())
        scene.frame_set(i)
        scene.render.filepath = str(jpg_dir / image_file(i))
        if node is not None:
            node.file_name = f"index_{i:05d}_"
        bpy.ops.render.render(write_still=True)
        render_s.append(time.perf_counter() - starts[-1])
        render_cpu_s.append(time.process_time() - cpu_starts[-1])
        finished(i)
        if writer is not None:
            writer.check()
        gate(i)

    def pre(*_args) -> None:
        starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())

    def written(scene_: bpy.types.Scene, *_args) -> None:
        render_s.append(time.perf_counter() - starts[-1])
        render_cpu_s.append(time.process_time() - cpu_starts[-1])
        finished(scene_.frame_current)

    if "previous-settings" not in ablate:
        keep_freed_memory(True)
    try:
        still(0)  # alone: the gate checks the first frame's masks before the rest is rendered
        if spec.frames > 1 and "per-frame-calls" in ablate:
            for i in range(1, spec.frames):
                still(i)
        elif spec.frames > 1:
            # Frames 1.. in one animation render: Blender sets up the render (result buffers,
            # compositor, output) once instead of once per frame. Handlers can neither raise nor
            # abort it: mask errors and the last gate check surface when it returns.
            scene.frame_start, scene.frame_end = 1, spec.frames - 1
            scene.render.filepath = str(jpg_dir / "#####")  # 00001.jpg ...
            if node is not None:
                node.file_name = "index_"  # Blender appends the frame: index_index0001.png
            handlers = bpy.app.handlers
            handlers.render_pre.append(pre)
            handlers.render_write.append(written)
            try:
                bpy.ops.render.render(animation=True)
            finally:
                handlers.render_pre.remove(pre)
                handlers.render_write.remove(written)
            if len(render_s) != spec.frames:
                full = shutil.disk_usage(jpg_dir).free < 2**20  # Blender only logs write errors
                raise RuntimeError(f"the animation render wrote {len(render_s) - 1} of "
                                   f"{spec.frames - 1} frames"
                                   + (f": {os.strerror(errno.ENOSPC)}" if full else ""))
            gate(spec.frames - 1)
        if writer is not None:
            frames = writer.frames()
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(mask_dir, ignore_errors=True)
        if "previous-settings" not in ablate:
            keep_freed_memory(False)
    encode_s = writer.encode_s if writer is not None else []
    # Per frame, from its start to the next one's (the last: to its mask written): the loop's
    # whole cost per frame, path tracing included, as a video of n frames pays it n times.
    ends = [*starts[1:], max(writer.done_at if writer else 0.0, starts[-1] + render_s[-1])]
    frame_s = [b - a for a, b in zip(starts, ends, strict=True)]
    return {
        "blender_version": bpy.app.version_string,
        "device": device,
        "outputs": list(spec.render.outputs),
        "frames": [{"frame": i, "objects": f} for i, f in enumerate(frames)],
        "timings": {
            "scene_build_s": round(build_s, 4),
            "render_s": [round(x, 4) for x in render_s],
            "render_cpu_s": [round(x, 4) for x in render_cpu_s],
            "encode_s": [round(x, 4) for x in encode_s],
            "frame_s": [round(x, 4) for x in frame_s],
            "render_total_s": round(sum(render_s), 3),
        },
    }


def _render_with_outputs(spec: VideoSpec, scene: bpy.types.Scene, tree, layers, node,
                         mask_dir: Path, staging: Path,
                         gate_check: Callable[[np.ndarray], str | None] | None,
                         on_frame: Callable[[int], None] | None, build_s: float) -> dict:
    """The render loop with extra outputs (depth, flow, normals, camera, amodal masks): one
    render call per frame, since every extra pass file is named per frame; the extra outputs
    are encoded in a thread while the next frame renders. Returns the manifest's frames and
    timings."""
    from worker.render.outputs import ExtraOutputs

    jpg_dir, ann_dir = frame_dirs(staging, spec.id)
    extras = ExtraOutputs(scene, spec, tree, layers, node, mask_dir)
    k = len(spec.objects)
    frames, render_s, render_cpu_s, encode_s, extra_frames = [], [], [], [], []
    output_s: dict[str, float] = {}
    # Extra outputs are encoded in a thread while the next frame renders; at most one frame is
    # in flight, and a frame counts as done (on_frame: progress, streaming upload) once written.
    encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")
    pending: Future | None = None

    def finish_pending() -> None:
        nonlocal pending
        if pending is not None:
            extra_frames.append(pending.result())
            pending = None

    def encode(i: int, prefix: str, cam: np.ndarray, objects: list[dict]) -> dict:
        record = extras.write(i, prefix, cam, objects, staging, output_s)
        if on_frame:
            on_frame(i)
        return record

    try:
        for i in range(spec.frames):
            scene.frame_set(i)
            scene.render.filepath = str(jpg_dir / image_file(i))
            prefix = f"f{i:05d}_"
            node.file_name = prefix
            extras.name_frame(i, prefix)
            t1, c1 = time.perf_counter(), time.process_time()
            bpy.ops.render.render(write_still=True)
            t2 = time.perf_counter()
            render_s.append(t2 - t1)
            render_cpu_s.append(time.process_time() - c1)
            ids = _read_index_file(mask_dir / f"{prefix}index.png")
            if ids.max(initial=0) > k:
                raise RuntimeError(f"frame {i}: mask holds id {ids.max()} but the spec has {k} "
                                   "objects")
            save_mask(ids, ann_dir / mask_file(i))
            frames.append(object_stats(ids, k))
            encode_s.append(time.perf_counter() - t2)
            cam = extras.camera_now()
            finish_pending()
            pending = encoder.submit(encode, i, prefix, cam, frames[-1])
            if gate_check and i in (0, spec.frames - 1):
                reason = gate_check(np.array([[o["pixels"] for o in f] for f in frames]))
                if reason:
                    raise GateRejected(reason)
        finish_pending()
        camera = extras.finish(staging)
    finally:
        encoder.shutdown(wait=True)
    from farm.io.outputs import formats

    result = {
        "outputs": list(spec.render.outputs),
        "output_formats": formats(spec.render),
        "frames": [{"frame": i, "objects": f, **extra_frames[i]} for i, f in enumerate(frames)],
        "timings": {
            "scene_build_s": round(build_s, 4),
            "render_s": [round(x, 4) for x in render_s],
            # CPU seconds of the render process (all threads, so with extra outputs also the
            # previous frame's encoding) during the render: steadier than wall time on a shared
            # machine (bench outputs compares these)
            "render_cpu_s": [round(x, 4) for x in render_cpu_s],
            "encode_s": [round(x, 4) for x in encode_s],
            "render_total_s": round(sum(render_s), 3),
            "outputs_encode_cpu_s": {o: round(s, 4) for o, s in output_s.items()},
        },
    }
    if camera is not None:
        result["camera"] = camera
    return result
