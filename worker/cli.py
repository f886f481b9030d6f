"""``python -m worker``: render spec files locally, and the demo (no services).

``render`` writes the BL30K layout into ``--out``; ``demo`` builds the procedural asset pack,
renders a few preview videos and writes their contact sheets and animated overlays.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from farm.assets.library import AssetLibrary
from farm.cli import (
    assets_opts,
    index_location,
    open_library,
    parser,
    run,
)
from farm.generate.sampling import generate_spec
from farm.io.dataset import finished_videos
from farm.io.layout import IMAGES, MASKS
from farm.io.splits import split_options, split_opts
from farm.io.storage import LocalStorage, upload_video
from farm.model.presets import apply_preset, find_preset, load_preset
from farm.model.spec import VideoSpec
from farm.model.validate import load_spec
from farm.view.preview import open_source, write_preview
from worker.attempts import GateFailed, render_attempts
from worker.process.pool import RenderPool, render_design, renders_per_device
from worker.process.runner import RenderError


def write_videos(specs: list[VideoSpec], library: AssetLibrary, out: Path, quiet: bool = False,
                 renders: int | None = None) -> tuple[list[dict], list[str]]:
    """Render specs into ``out`` (BL30K layout), ``renders`` at a time (default
    ``FARM_RENDERS_PER_GPU``: 1 on a CPU, 2 on a GPU), in long-lived render processes.

    Returns the manifests of the videos written (in the order of ``specs``) and the messages of
    those that failed the quality gate (not written).
    """
    storage = LocalStorage(out)
    scratch = out / ".scratch"
    size = max(1, min(renders or renders_per_device(), len(specs)))
    lock = threading.Lock()
    total = sum(s.frames for s in specs)
    oneshot = render_design() == "oneshot"  # FARM_RENDER_PROCESS=oneshot: the old design
    with tqdm(total=total, unit="frame", disable=quiet) as bar, \
            contextlib.nullcontext() if oneshot else RenderPool(size) as pool:

        def one(spec: VideoSpec) -> tuple[str, dict | str]:
            seen = 0

            def progress(done: int, _total: int) -> None:
                nonlocal seen
                with lock:
                    bar.update(max(0, done - seen))
                    seen = max(seen, done)

            if size == 1:
                bar.set_description(spec.id)
            try:
                outcome = render_attempts(spec, find_preset(spec.preset), library.models_root,
                                          library.textures_root, scratch, progress=progress,
                                          library=library, pool=pool)
            except GateFailed as exc:
                return "failed", str(exc)
            upload_video(storage, "", outcome.staging, outcome.spec.id, outcome.spec.to_yaml(),
                         outcome.manifest)
            shutil.rmtree(outcome.staging, ignore_errors=True)
            progress(spec.frames, spec.frames)
            return "ok", outcome.manifest

        if size == 1:
            results = [one(spec) for spec in specs]
        else:  # the pool's processes were started by this thread, which outlives them
            with ThreadPoolExecutor(size) as ex:
                results = list(ex.map(one, specs))
    shutil.rmtree(scratch, ignore_errors=True)
    manifests = [r for kind, r in results if kind == "ok"]
    failed = [r for kind, r in results if kind == "failed"]
    return manifests, failed


def index_folder(out: Path, args: argparse.Namespace) -> None:
    """The index files and card of every finished video in ``out`` (none: nothing to index)."""
    storage = LocalStorage(out)
    if finished_videos(storage, ""):
        print(f"wrote {index_location(storage, out.name, split_options(args))}")


def _summary(manifests: list[dict]) -> str:
    frames = sum(m["num_frames"] for m in manifests)
    render = sum(m["timings"]["render_total_s"] for m in manifests)
    wall = sum(m["timings"]["wall_s"] for m in manifests)
    return (f"{len(manifests)} videos, {frames} frames; render {render / max(frames, 1):.2f} s/frame,"
            f" wall {wall:.1f} s")


def _report_gate_failures(failed: list[str]) -> int:
    """Exit code 4 when a video failed the quality gate (nothing of it was written)."""
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} video(s) failed the quality gate and were not written "
              "(--keep-gate-failures keeps them, marked in their manifest)", file=sys.stderr)
    return 4 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    specs = [load_spec(p) for p in args.spec]
    if args.preset:
        preset = load_preset(args.preset)
        specs = [apply_preset(s, preset) for s in specs]
    if args.keep_gate_failures:
        specs = [replace(s, keep_gate_failures=True) for s in specs]
    manifests, failed = write_videos(specs, open_library(args), Path(args.out), args.quiet)
    print(f"rendered {_summary(manifests)} into {args.out}")
    index_folder(Path(args.out), args)
    return _report_gate_failures(failed)


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    print("building the procedural asset pack (once)...")
    lib = open_library(args)
    preset = load_preset(args.preset)
    specs = [generate_spec(lib, preset, args.segment, i, args.seed) for i in range(args.count)]
    print(f"rendering {len(specs)} {preset.name} videos ({preset.resolution[0]}x"
          f"{preset.resolution[1]}, {preset.frames} frames, {preset.render.samples} samples)...")
    manifests, failed = write_videos(specs, lib, out, args.quiet)
    print(f"done: {_summary(manifests)}")
    index_folder(out, args)
    print(f"output: {out}/{IMAGES}/<video>/*.jpg and {out}/{MASKS}/<video>/*.png "
          f"(videos: {', '.join(m['video'] for m in manifests)})")
    src = open_source(str(out))
    print("previews (contact sheet, animated overlay):")
    for manifest in manifests:
        result = write_preview(src, manifest["video"], out / "previews")
        print(f"  {result.sheet}\n  {result.animation}")
    return _report_gate_failures(failed)


def build_parser() -> argparse.ArgumentParser:
    ap, sub = parser("python -m worker", __doc__)

    render = sub.add_parser("render", help="render spec files locally (no services)")
    render.add_argument("--spec", nargs="+", required=True)
    render.add_argument("--out", required=True)
    render.add_argument("--preset", help="override frames, resolution and render settings")
    render.add_argument("--keep-gate-failures", action="store_true",
                        help="write videos whose masks fail the quality gate (marked)")
    assets_opts(render)
    split_opts(render)
    render.set_defaults(func=cmd_render)

    demo = sub.add_parser("demo", help="procedural pack + a few preview videos, end to end")
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--count", type=int, default=3)
    demo.add_argument("--segment", type=int, default=0)
    demo.add_argument("--preset", default="preview")
    demo.add_argument("--seed", type=int, default=None,
                      help="master seed (default: FARM_SEED)")
    assets_opts(demo)
    split_opts(demo)
    demo.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv), errors=(RenderError,))


if __name__ == "__main__":
    sys.exit(main())
