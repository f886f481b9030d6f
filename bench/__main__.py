"""Benchmarks that print numbers: ``python -m bench all|specs|assets|render|loop|outputs|farm|gpu|quality``.

Results are printed as tables and written as JSON (``--json FILE``). ``all`` runs every part at
sizes that finish in under 15 minutes on a 2-core CPU; see BENCHMARKS.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.baseline import PREVIOUS_DESIGN
from bench.quality import SHORTLIST
from farm.assets.library import AssetLibrary
from farm.assets.procedural import default_pack
from farm.generate.specgen import generate_many
from farm.model.presets import load_preset
from farm.settings import run_command


def bench_specs(args: argparse.Namespace) -> list[dict]:
    lib = AssetLibrary.open(*default_pack())
    preset = load_preset("bl30k")
    rows = []
    for workers in (1, os.cpu_count() or 1):
        t0 = time.perf_counter()
        n = sum(len(c) for c in generate_many(lib, preset, 0, list(range(args.count)), 1,
                                              workers=workers, chunk=250))
        dt = time.perf_counter() - t0
        rows.append({"bench": "specs", "workers": workers, "count": n, "seconds": round(dt, 2),
                     "specs_per_s": round(n / dt, 1)})
    return rows


def bench_assets_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.assets import bench_assets

    return bench_assets(args.repeats)


def bench_render_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.render import bench_render, devices

    return bench_render(args.presets.split(","), args.frames, args.videos, devices(args.devices))


def bench_loop_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.baseline import bench_loop

    return bench_loop(args.preset, args.frames, args.videos, args.repeats, args.ref)


def bench_outputs_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.outputs import bench_outputs

    return bench_outputs(args.preset, args.frames, args.repeats, args.device)


def bench_farm(args: argparse.Namespace) -> list[dict]:
    from bench.farm import bench_enqueue, bench_task_path, bench_upload, local_services
    from bench.shards import bench_formats

    with tempfile.TemporaryDirectory() as tmp, local_services(Path(tmp)) as svc:
        rows = bench_enqueue(svc, args.enqueue)
        task_rows, staging = bench_task_path(svc, args.preset, args.frames, args.videos)
        return (rows + task_rows + bench_upload(svc, staging)
                + bench_formats(svc, staging, args.format_videos))


def bench_quality_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.quality import bench_quality, choose

    names = args.settings.split(";") if args.settings else None
    rows = bench_quality(args.scenes, args.width, args.height, args.reference_samples, names,
                         device=args.device)
    picks = choose(rows)
    return rows + [{"bench": "choice", "setting": f"{role}: {name}"} for role, name in picks.items()]


def bench_calibrate_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.calibrate import calibrate
    from worker.process.environment import discover_gpus

    if args.devices == "auto":
        device_list = ["OPTIX"] if discover_gpus("auto") else ["CPU"]
    else:
        device_list = args.devices.split(",")
    rows = calibrate(args.presets.split(","), device_list, args.frames, args.out)
    print(f"calibration written to {args.out} (python -m scheduler plan reads it)")
    return rows


def bench_gpu_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.gpu import bench_gpu

    return bench_gpu(args.preset, args.videos, args.frames, args.device, args.path, args.configs,
                     args.cold, args.marginal, not args.no_first_frame, args.repeats,
                     args.loop_frames, [int(x) for x in args.loop_resolution.split("x")]
                     if args.loop_resolution else None)


def bench_all(args: argparse.Namespace) -> list[dict]:
    """Everything, sized to finish in under 15 minutes on a 2-core CPU."""
    steps = [
        ("specs", lambda: bench_specs(argparse.Namespace(count=2000))),
        ("assets", lambda: bench_assets_cmd(argparse.Namespace(repeats=3))),
        ("render", lambda: bench_render_cmd(argparse.Namespace(
            presets="preview,seed,bl30k,fast", frames=3, videos=1, devices=args.devices))),
        ("loop", lambda: bench_loop_cmd(argparse.Namespace(
            preset="preview", frames=6, videos=1, repeats=2, ref=PREVIOUS_DESIGN))),
        ("outputs", lambda: bench_outputs_cmd(argparse.Namespace(
            preset="preview", frames=3, repeats=1, device="AUTO"))),
        ("farm", lambda: bench_farm(argparse.Namespace(
            enqueue=5000, preset="bl30k", frames=3, videos=1, format_videos=8))),
        ("gpu", lambda: bench_gpu_cmd(argparse.Namespace(
            preset="tiny", videos=8, frames=3, device="AUTO", path="both",
            configs="oneshot:1,server:1", cold=False, marginal=True, no_first_frame=False,
            repeats=2, loop_frames=24, loop_resolution=None))),
        ("quality", lambda: bench_quality_cmd(argparse.Namespace(
            scenes=3, width=384, height=256, reference_samples=2048, settings=";".join(SHORTLIST),
            device="AUTO"))),
    ]
    rows = []
    for name, step in steps:
        t0 = time.perf_counter()
        part = step()
        print(f"\n## {name} ({time.perf_counter() - t0:.0f} s)")
        print_table(part, args.markdown)
        rows += part
    return rows


def print_table(rows: list[dict], markdown: bool = False) -> None:
    """One table per kind of row (the ``bench`` key), columns in first-seen order."""
    for kind in dict.fromkeys(r.get("bench") for r in rows):
        group = [{k: v for k, v in r.items() if k != "bench"} for r in rows if r.get("bench") == kind]
        keys = list(dict.fromkeys(k for r in group for k in r))
        print(f"\n{kind}:")
        if markdown:  # as pasted into BENCHMARKS.md
            print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
            for r in group:
                print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
            continue
        widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in group)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in group:
            print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    sub = ap.add_subparsers(dest="bench", required=True)
    specs = sub.add_parser("specs", help="spec generation rate")
    specs.add_argument("--count", type=int, default=5000)
    specs.set_defaults(func=bench_specs)
    assets = sub.add_parser("assets", help="mesh import time per format and size, index cache")
    assets.add_argument("--repeats", type=int, default=3)
    assets.set_defaults(func=bench_assets_cmd)
    render = sub.add_parser("render", help="seconds per frame per preset and device")
    render.add_argument("--presets", default="preview,bl30k")
    render.add_argument("--frames", type=int, default=3, help="frames per video (reduced)")
    render.add_argument("--videos", type=int, default=2, help="different scenes per preset")
    render.add_argument("--devices", default="auto",
                        help="comma list of CPU,CUDA,OPTIX; auto: CPU plus the GPU backends found")
    render.set_defaults(func=bench_render_cmd)
    loop = sub.add_parser("loop", help="this tree's render loop against a git ref's")
    loop.add_argument("--preset", default="preview")
    loop.add_argument("--frames", type=int, default=6)
    loop.add_argument("--videos", type=int, default=1)
    loop.add_argument("--repeats", type=int, default=2)
    loop.add_argument("--ref", default=PREVIOUS_DESIGN,
                      help="commit, tag or branch to compare with (default: before the one loop)")
    loop.set_defaults(func=bench_loop_cmd)
    outputs = sub.add_parser("outputs", help="s/frame and bytes/frame of each extra output")
    outputs.add_argument("--preset", default="preview")
    outputs.add_argument("--frames", type=int, default=4)
    outputs.add_argument("--repeats", type=int, default=2)
    outputs.add_argument("--device", default="AUTO", choices=("AUTO", "CPU", "GPU", "CUDA", "OPTIX"))
    outputs.set_defaults(func=bench_outputs_cmd)
    quality = sub.add_parser("quality", help="PSNR/SSIM of settings vs a high-sample reference")
    quality.add_argument("--scenes", type=int, default=3)
    quality.add_argument("--width", type=int, default=384)
    quality.add_argument("--height", type=int, default=256)
    quality.add_argument("--reference-samples", type=int, default=2048)
    quality.add_argument("--settings", help="only these candidates (names joined by ';')")
    quality.add_argument("--device", default="AUTO", choices=("AUTO", "CPU", "GPU", "CUDA", "OPTIX"))
    quality.set_defaults(func=bench_quality_cmd)
    farm = sub.add_parser("farm", help="enqueue rate, task-path overhead, upload vs AWS CLI, "
                          "per-file objects vs one tar per video, pack/unpack")
    farm.add_argument("--enqueue", type=int, default=5000, help="videos to enqueue for the rate")
    farm.add_argument("--preset", default="bl30k")
    farm.add_argument("--frames", type=int, default=3, help="frames per video (reduced)")
    farm.add_argument("--videos", type=int, default=1, help="videos through the task path")
    farm.add_argument("--format-videos", type=int, default=8,
                      help="160-frame videos uploaded per delivery format (files, tar) and packed")
    farm.set_defaults(func=bench_farm)
    cal = sub.add_parser("calibrate", help="figures for `scheduler plan`, merged into a file")
    cal.add_argument("--presets", default="bl30k")
    cal.add_argument("--devices", default="auto",
                     help="comma list of CPU,CUDA,OPTIX; auto: OptiX when a GPU is listed, else CPU")
    cal.add_argument("--frames", type=int, default=6, help="frames rendered (first + steady)")
    cal.add_argument("--out", type=Path, default=Path("calibration.json"))
    cal.set_defaults(func=bench_calibrate_cmd)
    gpu = sub.add_parser("gpu", help="videos per GPU-hour through the worker, old vs new design, "
                         "GPU busy fraction, cold/warm first frame (any device)")
    gpu.add_argument("--preset", default="bl30k")
    gpu.add_argument("--videos", type=int, default=8)
    gpu.add_argument("--frames", type=int, default=160, help="frames per video (reduced)")
    gpu.add_argument("--device", default="AUTO", choices=("AUTO", "CPU", "GPU", "CUDA", "OPTIX"))
    gpu.add_argument("--path", default="task", choices=("task", "render", "both"),
                     help="task: queue -> Celery worker -> S3 (needs redis-server, moto); "
                          "render: the render path of worker render, no services")
    gpu.add_argument("--configs", default="oneshot:1,server:1,server:2",
                     help="design:renders-at-once list (oneshot = fresh process per video)")
    gpu.add_argument("--cold", action="store_true",
                     help="first-frame latency with an empty kernel cache too (minutes on a GPU)")
    gpu.add_argument("--marginal", action="store_true",
                     help="also worker render with 1 and --videos specs, old and new design")
    gpu.add_argument("--no-first-frame", action="store_true", help="skip the first-frame rows")
    gpu.add_argument("--repeats", type=int, default=2, help="--marginal: interleaved repeats")
    gpu.add_argument("--loop-frames", type=int, default=24,
                     help="--marginal: frames per video of the render-loop comparison")
    gpu.add_argument("--loop-resolution", help="--marginal: WxH of the render-loop comparison "
                     "(default: the preset's)")
    gpu.set_defaults(func=bench_gpu_cmd)
    every = sub.add_parser("all", help="all of the above at sizes that fit 15 minutes")
    every.add_argument("--devices", default="auto")
    every.set_defaults(func=bench_all)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = args.func(args)
    machine = platform.processor() or platform.machine()
    print(f"\n# {time.perf_counter() - t0:.0f} s on {platform.node()} {machine}, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.bench != "all":
        print_table(rows, args.markdown)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    run_command(main)
