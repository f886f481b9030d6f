"""Render one video in a single Cycles pass per frame: RGB JPEG + object-index mask PNG.

The compositor writes the object-index pass (divided by 255, 8-bit BW PNG, no view transform) to
a scratch directory in the same render as the RGB; we re-save it as a DAVIS palette PNG. The
extra outputs a spec asks for (depth, flow, normals, camera, amodal masks) are set up and written
by ``worker.outputs``.
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


def add_index_output(scene: bpy.types.Scene, mask_dir: Path
                     ) -> tuple[bpy.types.Node, bpy.types.NodeTree, bpy.types.Node]:
    """Compositor: image -> group output (the JPEG); object index / 255 -> 8-bit PNG file.

    Returns the file output node, the tree and the render-layers node."""
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
    return node, tree, layers


def _read_index(path: Path) -> np.ndarray:
    if not path.is_file():
        raise RuntimeError(f"the compositor did not write the index image {path}")
    ids = np.asarray(Image.open(path))
    path.unlink()
    return ids if ids.ndim == 2 else ids[..., 0]


def render_video(spec: VideoSpec, models_root: Path, textures_root: Path, staging: Path,
                 gate_check: Callable[[np.ndarray], str | None] | None = None,
                 on_frame: Callable[[int], None] | None = None) -> dict:
    """Render ``spec`` into ``staging/JPEGImages/<id>`` and ``staging/Annotations/<id>`` (and the
    extra outputs' folders the spec asks for, farm/outputs.py).

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
    node = extras = None
    if "no-mask" not in ablate:
        node, tree, layers = add_index_output(scene, mask_dir)
        if set(spec.render.outputs) - {"rgb", "masks"}:
            from worker.outputs import ExtraOutputs

            extras = ExtraOutputs(scene, spec, tree, layers, node, mask_dir)
    k = len(spec.objects)
    frames, render_s, render_cpu_s, encode_s, extra_frames = [], [], [], [], []
    output_s: dict[str, float] = {}
    # Extra outputs are encoded in a thread while the next frame renders; at most one frame is
    # in flight, and a frame counts as done (on_frame: progress, streaming upload) once written.
    encoder = ThreadPoolExecutor(1, thread_name_prefix="encode") if extras is not None else None
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
            scene.render.filepath = str(jpg_dir / f"{i:05d}.jpg")
            prefix = f"f{i:05d}_"
            if node is not None:
                node.file_name = prefix
            if extras is not None:
                extras.name_frame(i, prefix)
            t1, c1 = time.perf_counter(), time.process_time()
            bpy.ops.render.render(write_still=True)
            t2 = time.perf_counter()
            render_s.append(t2 - t1)
            render_cpu_s.append(time.process_time() - c1)
            if node is not None:  # None only in the RGB-alone benchmark ablation
                ids = _read_index(mask_dir / f"{prefix}index.png")
                if ids.max(initial=0) > k:
                    raise RuntimeError(f"frame {i}: mask holds id {ids.max()} but the spec has "
                                       f"{k} objects")
                save_mask(ids, ann_dir / f"{i:05d}.png")
                frames.append(object_stats(ids, k))
                encode_s.append(time.perf_counter() - t2)
                if extras is not None:
                    cam = extras.camera_now()
                    finish_pending()
                    pending = encoder.submit(encode, i, prefix, cam, frames[-1])
            if gate_check and frames and i in (0, spec.frames - 1):
                reason = gate_check(np.array([[o["pixels"] for o in f] for f in frames]))
                if reason:
                    raise GateRejected(reason)
            if on_frame and encoder is None:
                on_frame(i)
        finish_pending()
        camera = extras.finish(staging) if extras is not None else None
    finally:
        if encoder is not None:
            encoder.shutdown(wait=True)
        shutil.rmtree(mask_dir, ignore_errors=True)
    result = {
        "blender_version": bpy.app.version_string,
        "device": device,
        "outputs": list(spec.render.outputs),
        "frames": [{"frame": i, "objects": f, **(extra_frames[i] if extra_frames else {})}
                   for i, f in enumerate(frames)],
        "timings": {
            "scene_build_s": round(build_s, 4),
            "render_s": [round(x, 4) for x in render_s],
            # CPU seconds of the render process (all threads, so with extra outputs also the
            # previous frame's encoding) during the render: steadier than wall time on a shared
            # machine (bench outputs compares these)
            "render_cpu_s": [round(x, 4) for x in render_cpu_s],
            "encode_s": [round(x, 4) for x in encode_s],
            "render_total_s": round(sum(render_s), 3),
        },
    }
    if extras is not None:
        from farm.outputs import formats

        result["output_formats"] = formats(spec.render)
        result["timings"]["outputs_encode_cpu_s"] = {o: round(s, 4) for o, s in output_s.items()}
    if camera is not None:
        result["camera"] = camera
    return result
