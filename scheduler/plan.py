"""``python -m scheduler plan``: wall time, GPU-hours, bucket size and cost of a segment, before
renting the GPUs.

Computed from measured figures (scheduler/calibration.py): a video of n frames renders in
``n * s_per_frame + overhead_s`` seconds on one worker; ``--gpus`` workers (one per GPU) take the
videos in turn, so the wall time is ``ceil(videos / gpus)`` videos one after another. Storage is
``videos * (frames * bytes_per_frame + bytes_per_video)``. Not included: renders that the
quality gate rejects after frame 0 or at the end (they render again), retries after crashes,
queue start-up, and the upload tail after the last frame (~0.03 s, BENCHMARKS.md).

``--nodes N --gpus-per-node G`` is ``--gpus N*G`` laid out on machines: the estimate is the same
whichever engine runs the workers (one per GPU), and the plan says how each one is asked for.
"""

from __future__ import annotations

import json
import math

from farm.model.presets import load_preset
from farm.settings import Settings
from scheduler.calibration import CalibrationError, default_paths, load_all, select


def plan(entry: dict, videos: int, frames: int, gpus: int, price_per_gpu_hour: float | None = None,
         price_per_gb_month: float | None = None) -> dict:
    video_s = frames * entry["s_per_frame"] + entry["overhead_s"]
    device_s = videos * video_s
    per_gpu = math.ceil(videos / gpus)
    nbytes = videos * (frames * entry["bytes_per_frame"] + entry["bytes_per_video"])
    out = {
        "videos": videos, "frames_per_video": frames, "gpus": gpus, "device": entry["device"],
        "machine": entry["machine"], "source": entry.get("source", ""),
        "calibration_file": entry.get("_file"),
        "s_per_frame": entry["s_per_frame"], "overhead_s": entry["overhead_s"],
        "bytes_per_frame": entry["bytes_per_frame"], "bytes_per_video": entry["bytes_per_video"],
        "video_s": round(video_s, 3),
        "videos_per_gpu_hour": round(3600 / video_s, 2),
        "gpu_hours": round(device_s / 3600, 3),
        "videos_per_gpu": per_gpu,
        "wall_s": round(per_gpu * video_s, 1),
        "bucket_bytes": round(nbytes),
        "bucket_gb": round(nbytes / 1e9, 3),
    }
    if price_per_gpu_hour is not None:
        out["price_per_gpu_hour"] = price_per_gpu_hour
        out["gpu_cost"] = round(out["gpu_hours"] * price_per_gpu_hour, 2)
    if price_per_gb_month is not None:
        out["price_per_gb_month"] = price_per_gb_month
        out["storage_cost_per_month"] = round(nbytes / 1e9 * price_per_gb_month, 2)
    return out


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d {h}h{m:02d}m"
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def describe(p: dict, preset: str) -> str:
    unit = "GPU" if p["device"] != "CPU" else "CPU machine"
    rows = [
        ("per video", f"{p['video_s']:.1f} s ({p['frames_per_video']} x {p['s_per_frame']} s + "
                      f"{p['overhead_s']} s); {p['videos_per_gpu_hour']} videos per {unit}-hour"),
        (f"{unit}-hours", f"{p['gpu_hours']:.1f}"),
        ("wall time", f"{_duration(p['wall_s'])} ({p['videos_per_gpu']} videos per {unit}, "
                      "workers kept busy)"),
        ("bucket", f"{p['bucket_gb']:.1f} GB ({p['videos'] * p['frames_per_video']} frames)"),
    ]
    if "gpu_cost" in p:
        rows.append(("cost", f"{p['gpu_cost']:.2f} at {p['price_per_gpu_hour']} per {unit}-hour"))
    if "storage_cost_per_month" in p:
        rows.append(("storage cost", f"{p['storage_cost_per_month']:.2f} per month at "
                                     f"{p['price_per_gb_month']} per GB-month"))
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join([
        f"plan: {p['videos']} {preset} videos x {p['frames_per_video']} frames on {p['gpus']} "
        f"{unit}{'s' if p['gpus'] != 1 else ''} ({p['device']})",
        f"figures: {p['s_per_frame']} s/frame (steady), {p['overhead_s']} s/video outside the "
        f"steady frames, {p['bytes_per_frame'] / 1e3:.1f} KB/frame + "
        f"{p['bytes_per_video'] / 1e3:.1f} KB/video",
        f"  measured on: {p['machine']}",
        f"  source: {p['source']}",
        f"  from: {p['calibration_file']}",
        *(f"{label + ':':{width}}{value}" for label, value in rows),
        "not included: quality-gate re-renders, crash retries, queue start-up",
    ])


def engines(nodes: int, per_node: int) -> dict[str, str]:
    """How each engine runs ``nodes * per_node`` workers, one per GPU (same figures for all)."""
    workers = nodes * per_node
    return {
        "compose": f"on each of {nodes} host{'s' if nodes != 1 else ''}: docker compose up -d "
                   f"--scale worker={per_node} (workers on other hosts: docs/operations.md, scale-out)",
        "slurm": f"python -m scheduler slurm --workers {workers} --submit (array 0-{workers - 1}, "
                 f"--gres=gpu:1 each: {per_node} per {per_node}-GPU node)",
        "kubernetes": f"KEDA scales Deployment farm-worker up to {workers} pods of nvidia.com/gpu: 1 "
                      f"(maxReplicaCount >= {workers}; {nodes} GPU node{'s' if nodes != 1 else ''}"
                      f" x {per_node})",
    }


def layout(gpus: int | None, nodes: int | None, per_node: int | None) -> tuple[int, int]:
    """(nodes, GPUs per node) from ``--gpus`` or ``--nodes``/``--gpus-per-node``."""
    if nodes is None and per_node is None:
        return 1, 1 if gpus is None else gpus
    nodes, per_node = 1 if nodes is None else nodes, 1 if per_node is None else per_node
    if nodes < 1 or per_node < 1:
        raise CalibrationError("--nodes and --gpus-per-node must be at least 1")
    if gpus is not None and gpus != nodes * per_node:
        raise CalibrationError(f"--gpus {gpus} contradicts --nodes {nodes} x --gpus-per-node "
                               f"{per_node}: give one or the other")
    return nodes, per_node


def run(settings: Settings, args) -> int:
    """The ``plan`` command; a missing figure is a CalibrationError (one line, exit 2)."""
    nodes, per_node = layout(args.gpus, args.nodes, args.gpus_per_node)
    gpus = nodes * per_node
    if args.videos < 1 or gpus < 1:
        raise CalibrationError("--videos and --gpus must be at least 1")
    preset = load_preset(args.preset)  # an unknown preset is a SpecError naming it
    paths = default_paths(settings, args.calibration)
    entries = load_all(paths)
    entry = select(entries, args.preset, args.device, args.machine,
                   where=", ".join(str(p) for p in paths))
    frames = args.frames or preset.frames
    p = plan(entry, args.videos, frames, gpus, args.price_per_gpu_hour,
             args.price_per_gb_month)
    p.update(nodes=nodes, gpus_per_node=per_node, engines=engines(nodes, per_node))
    if args.json:
        print(json.dumps(p, indent=1))
        return 0
    print(describe(p, args.preset))
    print(f"engines (the same estimate on each: {gpus} workers = {nodes} node"
          f"{'s' if nodes != 1 else ''} x {per_node} GPU{'s' if per_node != 1 else ''}):")
    for engine, how in p["engines"].items():
        print(f"  {engine + ':':12}{how}")
    return 0
