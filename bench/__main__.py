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
