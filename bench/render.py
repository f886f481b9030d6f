"""Render benchmarks: seconds per frame per preset and device (``bench loop``, in bench/baseline.py,
compares the render loop with a git ref's).

Every render runs in a fresh Blender process exactly as on a worker (``worker.process.runner``). The
first frame also pays the scene sync (BVH build, texture upload), so steady-state s/frame is the
mean of the later frames, as 159 of a video's 160 frames are.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from farm.assets.library import AssetLibrary
from farm.assets.procedural import default_pack
from farm.generate.sampling import generate_spec
from farm.model.presets import find_preset, load_preset
from farm.model.spec import VideoSpec
from worker.attempts import RenderOutcome, render_attempts
from worker.process.environment import discover_gpus


def devices(requested: str) -> list[str]:
    """``auto``: the CPU, plus CUDA and OptiX when nvidia-smi lists a GPU."""
    if requested != "auto":
        return requested.split(",")
    return ["CPU", *(["CUDA", "OPTIX"] if discover_gpus("auto") else [])]


def bench_spec(preset: str, index: int, frames: int, device: str = "AUTO") -> VideoSpec:
    """A generated spec of ``preset`` (seed 2021, segment 0) cut to ``frames`` frames."""
    spec = generate_spec(AssetLibrary.open(*default_pack()), load_preset(preset), 0, index, 2021)
    return replace(spec, frames=min(spec.frames, frames),
                   render=replace(spec.render, device=device))


def timing_row(manifest: dict) -> dict:
    t = manifest["timings"]
    steady = t["render_s"][1:] or t["render_s"]
    encode = t.get("encode_s") or [0.0]
    return {"s_per_frame": round(statistics.mean(steady), 3),
            "first_frame_s": round(t["render_s"][0], 3),
            "encode_ms": round(1000 * statistics.mean(encode), 1),
            "scene_build_s": t["scene_build_s"], "wall_s": t["wall_s"],
            "peak_rss_mb": manifest.get("peak_rss_mb")}


def render_bench(spec: VideoSpec, scratch: str | Path, env: dict | None = None,
                 pool=None, progress=None) -> RenderOutcome:
    """Render ``spec`` with the procedural pack as a worker would, keeping the output in
    ``scratch``; the gate is only recorded (a resample would be the preset's full video).
    ``pool`` (a ``worker.process.pool.RenderPool``): in its long-lived process; else a fresh one."""
    return render_attempts(spec, find_preset(spec.preset), *default_pack(), scratch,
                           progress=progress, env=env, resample=False, pool=pool)


def render_once(spec: VideoSpec, env: dict | None = None) -> dict:
    """The manifest of a render whose frames are thrown away."""
    with tempfile.TemporaryDirectory() as tmp:
        return render_bench(spec, tmp, env).manifest


def bench_render(presets: list[str], frames: int, videos: int, device_list: list[str]
                 ) -> list[dict]:
    rows = []
    for device in device_list:
        for name in presets:
            for index in range(videos):
                spec = bench_spec(name, index, frames, device)
                manifest = render_once(spec)
                rows.append({"bench": "render", "preset": name, "video": spec.id,
                             "device": manifest["device"],
                             "resolution": "x".join(map(str, spec.resolution)),
                             "samples": spec.render.samples,
                             "adaptive": spec.render.adaptive_threshold,
                             "prefilter": spec.render.denoise_prefilter, "frames": spec.frames,
                             **timing_row(manifest)})
    return rows
