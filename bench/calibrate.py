"""``python -m bench calibrate``: the figures ``scheduler plan`` computes from, measured here.

Per preset and device, one generated scene (a00000) cut to ``--frames`` frames renders as on a
worker (fresh Blender process). Steady s/frame = mean Cycles time of the frames after the first;
overhead = render wall time - frames x steady s/frame (Blender start, scene build, first-frame
extra, mask encoding); bytes per frame = JPEG + palette PNG + the manifest's per-frame share;
bytes per video = spec + marker + the manifest's fixed part. The entries are merged into
``--out`` (default ``calibration.json``, which the planner reads on top of the shipped figures).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from farm.io.layout import IMAGES, MASKS

MARKER_BYTES = 150  # done/<video>.json: video, frames, digest, time


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return names[0] if names else None


def machine_name(device: str) -> str:
    """``OPTIX: NVIDIA H200`` (a manifest's device) -> ``NVIDIA H200 (OPTIX), host ...``."""
    backend, _, names = device.partition(":")
    host = platform.node()
    if backend.strip() != "CPU":
        return f"{names.strip() or gpu_name() or 'GPU'} ({backend.strip()}), host {host}"
    return f"{cpu_name()}, {os.cpu_count()} cores (CPU), host {host}"


def entry(preset: str, manifest: dict, spec_yaml: str, frame_bytes: int) -> dict:
    """A calibration entry from one render's manifest (see the module docstring)."""
    t = manifest["timings"]
    n = len(t["render_s"])
    steady = statistics.mean(t["render_s"][1:] or t["render_s"])
    manifest_bytes = len(json.dumps(manifest, indent=1))
    per_frame_manifest = len(json.dumps(manifest["frames"], indent=1))
    return {
        "preset": preset, "device": manifest["device"].split(":")[0].strip(),
        "machine": machine_name(manifest["device"]),
        "source": f"python -m bench calibrate: scene {manifest['video']} cut to {n} frames",
        "measured_at": time.strftime("%Y-%m-%d"),
        "s_per_frame": round(steady, 4),
        "overhead_s": round(t["wall_s"] - n * steady, 3),
        "bytes_per_frame": round((frame_bytes + per_frame_manifest) / n),
        "bytes_per_video": len(spec_yaml) + manifest_bytes - per_frame_manifest + MARKER_BYTES,
        "frames_measured": n,
        "first_frame_s": t["render_s"][0],
        "wall_s": t["wall_s"],
    }


def measure(preset: str, device: str, frames: int) -> dict:
    from bench.render import bench_spec, render_bench

    spec = bench_spec(preset, 0, frames, device)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = render_bench(spec, tmp)
        files = sum(p.stat().st_size for folder in (IMAGES, MASKS)
                    for p in (outcome.staging / folder / spec.id).iterdir())
    return entry(preset, outcome.manifest, outcome.spec.to_yaml(), files)


def calibrate(presets: list[str], devices: list[str], frames: int, out: Path) -> list[dict]:
    from scheduler.calibration import merge

    entries = [measure(p, d, frames) for d in devices for p in presets]
    merge(out, entries)
    return [{"bench": "calibration", **{k: v for k, v in e.items() if k != "source"}}
            for e in entries]
