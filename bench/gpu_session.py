"""One GPU machine's measurements in a fixed time budget: ``python -m bench.gpu_session --out DIR``.

On a GPU machine with Python 3.11, bpy 5.0.1 and the project's dependencies installed, from the
repository root:

    python -m bench.gpu_session --out gpu-results --budget 480

Steps, each a subprocess whose output (tables as Markdown) lands in ``DIR/<step>.txt`` and rows
in ``DIR/<step>.json``; ``DIR/summary.md`` collects them with the time each took:

1. ``warmup-cold``: ``python -m worker.warmup --devices OPTIX`` with an empty kernel cache: the
   kernel compilation a fresh host pays once (~290 s measured on an H200 with an earlier render
   design), covering every preset's device settings;
2. ``warmup-warm``: the same in a new process, with the cache step 1 left (what the second and
   later workers of a host pay before they consume);
3. ``throughput``: ``python -m bench gpu --path render`` on ``--videos`` bl30k videos, old
   design (fresh process per video) against long-lived render processes with 1, 2 (and 3 when
   the budget allows) videos at once on the GPU, with the GPU's busy fraction; frames per video
   are cut to what the budget left after step 1 allows (a fresh machine compiles for minutes);
   ``task`` path too (queue -> Celery -> S3) when ``redis-server`` and ``moto_server`` exist;
4. ``quality``: ``python -m bench quality --device OPTIX`` on 3 scenes at 768x512, the shortlist
   of settings (bl30k, fast, the original's, one more).

A step cut by the budget is killed and reported as such; the later ones still run when they fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.quality import SHORTLIST
from farm.settings import current

ROOT = Path(__file__).resolve().parent.parent
QUALITY_RESERVE_S = 75  # 3 references of 2048 samples + 12 candidate renders at 768x512, OptiX
MARGIN_S = 15
# From the H200 figures measured with an earlier design: bl30k 0.089 s/frame; ~7 s per video
# outside Cycles in a fresh process, ~1.5 s assumed in a long-lived one (upper bounds for
# sizing, not results).
S_PER_FRAME, OLD_OVERHEAD_S, NEW_OVERHEAD_S = 0.1, 7.5, 1.5


def frames_that_fit(seconds: float, videos: int, configs: list[tuple[str, int]]) -> int:
    """Frames per video such that every configuration's videos fit in ``seconds``."""
    for frames in (160, 120, 96, 80, 64, 48, 40, 32, 24, 16, 12, 8):
        total = 0.0
        for design, renders in configs:
            overhead = OLD_OVERHEAD_S if design == "oneshot" else NEW_OVERHEAD_S
            speedup = 1.0 if design == "oneshot" else min(renders, 1.6)
            total += videos * (frames * S_PER_FRAME + overhead) / speedup
        if total <= seconds:
            return frames
    return 0


class Session:
    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.budget, self.t0 = out, budget, time.monotonic()
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def run(self, name: str, cmd: list[str], limit: float, env: dict | None = None) -> bool:
        limit = min(limit, self.left() - 5)
        if limit < 10:
            self.steps.append({"step": name, "status": "skipped: no time left", "seconds": 0})
            return False
        print(f"== {name} (at most {limit:.0f} s): {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        with open(self.out / f"{name}.txt", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                status = f"cut by the budget after {limit:.0f} s"
        seconds = round(time.monotonic() - t0, 1)
        self.steps.append({"step": name, "status": status, "seconds": seconds})
        print(f"   {status} in {seconds} s", flush=True)
        return status == "ok"

    def summary(self, info: dict) -> None:
        lines = ["# GPU session", "", "```", json.dumps(info, indent=1), "```", "",
                 "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in self.steps]
        for s in self.steps:
            path = self.out / f"{s['step']}.txt"
            if path.exists():
                text = path.read_text(errors="replace")
                lines += ["", f"## {s['step']}", "", "```", text[-12000:].rstrip(), "```"]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


def machine_info() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    if shutil.which("nvidia-smi"):
        try:
            info["gpus"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            info["gpus"] = f"nvidia-smi failed: {exc}"
    try:
        from importlib.metadata import version

        info["bpy"] = version("bpy")
    except Exception as exc:  # noqa: BLE001 - informative only
        info["bpy"] = f"unknown ({exc})"
    info["cpus"] = os.cpu_count()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_session", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=480, help="seconds for everything")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--device", default="OPTIX")
    ap.add_argument("--preset", default="bl30k", help="throughput preset (tiny: a dry run)")
    ap.add_argument("--quality-resolution", default="768x512", help="WxH (64x48: a dry run)")
    ap.add_argument("--kernel-cache", type=Path, default=Path("/tmp/farm-kernel-cache"),
                    help="kernel cache of this session (emptied first: step 1 is the cold one)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    session = Session(args.out, args.budget)
    info = machine_info()
    (args.out / "machine.json").write_text(json.dumps(info, indent=1))
    py = sys.executable
    shutil.rmtree(args.kernel_cache, ignore_errors=True)
    env = {"FARM_KERNEL_CACHE": str(args.kernel_cache),
           "FARM_CACHE_DIR": str(current().cache_dir)}
    for key in ("OPTIX_CACHE_PATH", "CUDA_CACHE_PATH"):  # the session's own cache, cold
        os.environ.pop(key, None)

    width, height = args.quality_resolution.split("x")
    reserve = QUALITY_RESERVE_S + MARGIN_S
    for kind in ("cold", "warm"):
        session.run(f"warmup-{kind}", [py, "-m", "worker.warmup", "--devices", args.device,
                                       "--json", str(args.out / f"warmup-{kind}.json")],
                    session.left() - reserve - 60, env)

    configs = [("oneshot", 1), ("server", 1), ("server", 2)]
    frames = frames_that_fit(session.left() - reserve, args.videos, configs + [("server", 3)])
    if frames:
        configs.append(("server", 3))
    else:
        frames = frames_that_fit(session.left() - reserve, args.videos, configs)
    paths = "render"
    if shutil.which("redis-server") and (shutil.which("moto_server") or Path(py).with_name(
            "moto_server").exists()):
        paths = "both"
        frames = frames_that_fit(session.left() - reserve, 2 * args.videos, configs) or 8
    info["throughput"] = {"frames": frames, "configs": configs, "paths": paths}
    if frames:
        session.run("throughput", [
            py, "-m", "bench", "--markdown", "--json", str(args.out / "throughput.json"), "gpu",
            "--path", paths, "--preset", args.preset, "--videos", str(args.videos), "--frames",
            str(frames), "--device", args.device, "--no-first-frame",
            "--configs", ",".join(f"{d}:{r}" for d, r in configs)],
            session.left() - reserve, env)
    else:
        session.steps.append({"step": "throughput", "status": "skipped: the warm-up left no "
                              "time for 8 videos of 8 frames", "seconds": 0})
    session.run("quality", [
        py, "-m", "bench", "--markdown", "--json", str(args.out / "quality.json"), "quality",
        "--device", args.device, "--scenes", "3", "--width", width, "--height", height,
        "--settings", ";".join(SHORTLIST)], session.left() - MARGIN_S, env)
    info["seconds"] = round(time.monotonic() - session.t0, 1)
    session.summary(info)
    print(f"tables in {args.out}/summary.md ({info['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
