"""Benchmarks that print numbers: ``python -m bench specs|render [...]``.

Results are printed as a table and written as JSON (``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from farm.assets import AssetLibrary
from farm.presets import load_preset
from farm.sampling import generate_spec
from farm.specgen import generate_many
from farm.synth_assets import default_pack


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


def bench_render(args: argparse.Namespace) -> list[dict]:
    from worker.runner import render_spec

    models, textures = default_pack()
    lib = AssetLibrary.open(models, textures)
    rows = []
    for name in args.presets.split(","):
        preset = load_preset(name)
        for index in range(args.videos):
            spec = generate_spec(lib, preset, 0, index, 2021)
            spec = replace(spec, frames=min(spec.frames, args.frames),
                           render=replace(spec.render, device=args.device))
            with tempfile.TemporaryDirectory() as tmp:
                out = render_spec(spec, models, textures, tmp)
            t = out.manifest["timings"]
            rows.append({"bench": "render", "preset": name, "video": spec.id,
                         "resolution": "x".join(map(str, spec.resolution)),
                         "samples": spec.render.samples, "denoise": spec.render.denoise,
                         "frames": spec.frames, "device": out.manifest["device"],
                         "s_per_frame": round(t["render_total_s"] / spec.frames, 3),
                         "scene_build_s": t["scene_build_s"], "wall_s": t["wall_s"]})
    return rows


def bench_farm(args: argparse.Namespace) -> list[dict]:
    """Enqueue rate, and the task path (queue + render + upload + marker) against a bare render."""
    import subprocess

    from farm.state import FarmState, connect
    from scheduler.local import farm_env, free_port, start_redis, start_s3, start_worker, stop
    from worker.runner import render_spec

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_port, s3_port = free_port(), free_port()
        procs = [start_redis(folder / "redis", redis_port, "bench"),
                 start_s3(s3_port, folder / "s3.log")]
        env = {**os.environ, **farm_env(redis_port, "bench", s3_port, "bench", folder / "scratch"),
               "FARM_GPUS": "none"}
        state = FarmState(connect(f"redis://:bench@127.0.0.1:{redis_port}/0"))

        def scheduler(*cmd: str) -> str:
            return subprocess.run([sys.executable, "-m", "scheduler", "-q", *cmd], env=env,
                                  check=True, capture_output=True, text=True).stdout
        try:
            scheduler("init-storage")
            out = scheduler("enqueue", "--segment", "9", "--count", str(args.enqueue),
                            "--preset", "bl30k")
            seconds = float(out.split(" in ")[1].split(" s ")[0])
            rows.append({"bench": "enqueue", "videos": args.enqueue, "seconds": seconds,
                         "videos_per_s": round(args.enqueue / seconds)})
            state.r.flushall()

            preset = load_preset(args.preset)
            lib = AssetLibrary.open(*default_pack())
            specs = [generate_spec(lib, preset, 0, i, 2021) for i in range(args.videos)]
            bare = []
            for spec in specs:
                t0 = time.perf_counter()
                render_spec(spec, lib.models_root, lib.textures_root, folder / "bare")
                bare.append(time.perf_counter() - t0)
            procs.append(start_worker(env, "bench", folder / "worker.log"))
            time.sleep(5)  # worker start-up is not per-video cost
            t0 = time.time()
            scheduler("enqueue", "--segment", "0", "--count", str(args.videos), "--preset",
                      args.preset)
            while state.counts(0).get("done", 0) < args.videos:
                if state.counts(0).get("failed"):
                    raise RuntimeError(f"a video failed: {state.video('a00000')}")
                time.sleep(0.2)
            total = time.time() - t0
            for spec, bare_s in zip(specs, bare, strict=True):
                info = state.video(spec.id)
                task_s = float(info["finished_at"]) - float(info["started_at"])
                rows.append({"bench": "task path", "video": spec.id, "preset": args.preset,
                             "bare_render_s": round(bare_s, 2), "task_s": round(task_s, 2),
                             "upload_s": float(info["upload_s"]),
                             "overhead_s": round(task_s - bare_s, 2),
                             "ratio": round(task_s / bare_s, 3)})
            rows.append({"bench": "task path", "video": "all (enqueue->done)",
                         "preset": args.preset, "bare_render_s": round(sum(bare), 2),
                         "task_s": round(total, 2), "overhead_s": round(total - sum(bare), 2),
                         "ratio": round(total / sum(bare), 3)})
        finally:
            stop(procs)
    return rows


def bench_quality_cmd(args: argparse.Namespace) -> list[dict]:
    from bench.quality import bench_quality

    return bench_quality(args.scenes, args.width, args.height, args.reference_samples)


def print_table(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    sub = ap.add_subparsers(dest="bench", required=True)
    specs = sub.add_parser("specs", help="spec generation rate")
    specs.add_argument("--count", type=int, default=5000)
    specs.set_defaults(func=bench_specs)
    render = sub.add_parser("render", help="seconds per frame per preset")
    render.add_argument("--presets", default="preview,bl30k")
    render.add_argument("--frames", type=int, default=3, help="frames per video (reduced)")
    render.add_argument("--videos", type=int, default=2, help="different scenes per preset")
    render.add_argument("--device", default="AUTO", choices=("AUTO", "CPU", "GPU", "CUDA", "OPTIX"))
    render.set_defaults(func=bench_render)
    quality = sub.add_parser("quality", help="PSNR/SSIM of settings vs a high-sample reference")
    quality.add_argument("--scenes", type=int, default=3)
    quality.add_argument("--width", type=int, default=384)
    quality.add_argument("--height", type=int, default=256)
    quality.add_argument("--reference-samples", type=int, default=2048)
    quality.set_defaults(func=bench_quality_cmd)
    farm = sub.add_parser("farm", help="enqueue rate and task-path overhead (local services)")
    farm.add_argument("--enqueue", type=int, default=5000, help="videos to enqueue for the rate")
    farm.add_argument("--videos", type=int, default=2, help="videos through the task path")
    farm.add_argument("--preset", default="preview")
    farm.set_defaults(func=bench_farm)
    args = ap.parse_args(argv)
    rows = args.func(args)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
