"""Benchmarks against the code of another git ref (the product holds no benchmark switches).

``tree(ref)`` exports a commit of this repository (``git archive``) into a folder; a command run
there with that folder on ``PYTHONPATH`` is that commit's code (render processes start in the
tree they belong to). ``bench loop`` renders the same specs with this tree's ``worker render``
and with the ref's, interleaved, and prints the render loop's figures side by side.
"""

from __future__ import annotations

import ast
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from farm.assets.procedural import default_pack
from farm.io.layout import MANIFESTS
from farm.model.spec import save_spec

ROOT = Path(__file__).resolve().parent.parent
# The last commit with the previous design (a fresh process per video, a render call per frame,
# masks encoded between renders, the previous per-frame settings) inside it, behind switches of
# its own, which its bench/gpu.py names (``previous_design_env``).
PREVIOUS_DESIGN = "2e7452e4e251b1ec1a4549fefe599cc0cf8bd01a"


def previous_design_env(where: Path) -> dict[str, str]:
    """The environment that selects the previous design in the tree ``where``: the ``OLD``
    mapping of that tree's own ``bench/gpu.py`` (so this tree names none of its switches)."""
    for node in ast.parse((where / "bench" / "gpu.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OLD"
                                                for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise LookupError(f"{where}/bench/gpu.py defines no OLD environment")


def tree(ref: str, folder: Path) -> Path:
    """The files of ``ref`` (a commit, tag or branch of this repository) under ``folder``
    (exported once per folder)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    out = Path(folder) / f"tree-{commit[:12]}"
    if not (out / "worker").is_dir():
        data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(out, filter="data")
    return out


def env_in(where: Path, extra: dict | None = None) -> dict[str, str]:
    """The environment of a command run from the tree ``where``."""
    return {**os.environ, **(extra or {}), "PYTHONPATH": str(where)}


def worker_render(where: Path, files: list[Path], out: Path, extra: dict | None = None,
                  roots: tuple[Path, Path] | None = None, keep_gate_failures: bool = False
                  ) -> tuple[float, list[dict]]:
    """``python -m worker render`` of the tree ``where`` (``roots``: models and textures, default
    the procedural pack): (wall seconds, manifests)."""
    models, textures = roots or default_pack()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "-q", "render", "--spec", *map(str, files),
         "--out", str(out), "--models", str(models), "--textures", str(textures),
         *(["--keep-gate-failures"] if keep_gate_failures else [])],
        cwd=where, capture_output=True, text=True, env=env_in(where, extra))
    if proc.returncode:
        raise RuntimeError(f"worker render in {where} exited {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    return wall, [json.loads(p.read_text()) for p in sorted((out / MANIFESTS).glob("*.json"))]


def _loop_figures(manifests: list[dict]) -> dict:
    t = [m["timings"] for m in manifests]
    steady = [x for ti in t for x in ti["render_s"][1:]]
    loop = [x for ti in t for x in ti.get("frame_s", [])[1:]]
    return {"s_per_frame": statistics.mean(steady),
            "cpu_s_per_frame": statistics.mean(x for ti in t for x in ti["render_cpu_s"][1:]),
            "loop_s_per_frame": statistics.mean(loop) if loop else None,
            "encode_ms": 1000 * statistics.mean(x for ti in t for x in ti["encode_s"] or [0]),
            "first_frame_s": statistics.mean(ti["render_s"][0] for ti in t)}


def bench_loop(preset: str, frames: int, videos: int, repeats: int, ref: str,
               ref_env: dict | None = None) -> list[dict]:
    """The render loop of this tree against ``ref``'s: ``videos`` generated specs of ``preset``
    with ``frames`` frames, rendered by each tree's ``worker render`` (one render process,
    frames after the first), the two interleaved ``repeats`` times, each repeat starting with the
    other; medians of the per-repeat means."""
    from dataclasses import replace

    from bench.render import bench_spec

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        folder = Path(tmp)
        trees = {"this tree": ROOT, f"ref {ref}": tree(ref, folder)}
        envs = {"this tree": {}, f"ref {ref}": dict(ref_env or {})}
        files = []
        for index in range(videos):  # the trajectories over ``frames`` frames
            spec = replace(bench_spec(preset, index, frames), frames=frames)
            files.append(folder / "specs" / f"{spec.id}.yaml")
            save_spec(spec, files[-1])
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        names = list(trees)
        for r in range(repeats):
            for name in names[r % 2:] + names[:r % 2]:
                out = folder / f"out-{r}-{names.index(name)}"
                wall, manifests = worker_render(trees[name], files, out,
                                                {"FARM_RENDERS_PER_GPU": "1", **envs[name]})
                runs[name].append({**_loop_figures(manifests), "wall_s": wall,
                                   "resolution": "x".join(map(str, manifests[0]["resolution"])),
                                   "device": manifests[0]["device"]})
    rows = []
    base = round(statistics.median(r["s_per_frame"] for r in runs[names[1]]), 4)
    for name, results in runs.items():
        def med(key: str, results: list[dict] = results) -> float | None:
            values = [r[key] for r in results if r[key] is not None]
            return round(statistics.median(values), 4) if values else None

        rows.append({"bench": "loop", "code": name, "preset": preset,
                     "resolution": results[0]["resolution"], "device": results[0]["device"],
                     "videos": videos, "frames": frames, "repeats": repeats,
                     "s_per_frame": med("s_per_frame"),
                     "vs_ref": f"{100 * (med('s_per_frame') / base - 1):+.1f}%",
                     "cpu_s_per_frame": med("cpu_s_per_frame"),
                     "loop_s_per_frame": med("loop_s_per_frame"), "encode_ms": med("encode_ms"),
                     "first_frame_s": med("first_frame_s"), "wall_s": med("wall_s")})
    return rows
