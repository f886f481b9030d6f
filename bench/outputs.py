"""Cost of each extra output (depth, flow, normals, camera, amodal masks): s/frame and bytes/frame.

One generated scene (its first frames, with the dataset's motion) renders with RGB + masks alone
(the baseline), with each extra output on its own, then with all of them (``movi-like``), in a
fresh Blender process each, as on a worker.
Variants are interleaved over the repeats, each repeat starting with a different one; the figures
are medians. The ``camera`` variant changes nothing in the render: its extra time shows the noise
floor of the run. Per output:

- ``extra_s_per_frame``: steady-state render s/frame (frames after the first) minus the
  baseline's in the same repeat. The Depth/Normal/Vector passes come with the render, so this is
  mostly noise for them; the amodal masks' extra view layers (1 sample per object) and the
  Vector pass's motion sync (the scene at t-1 and t+1) are real costs.
- ``extra_cpu_s_per_frame``: the same in CPU seconds of the render process (all threads), which
  other work on a shared machine disturbs much less than wall time.
- ``encode_ms_per_frame``: reading the raw passes back and encoding the files, CPU time of the
  encoding thread inside the render process (it runs while the next frame renders).
- ``bytes_per_frame``: what the output adds to the dataset per frame (its files' sizes / frames).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.render import bench_spec, render_bench
from farm.io.outputs import FOLDERS
from farm.model.spec import DEFAULT_OUTPUTS, OUTPUTS, VideoSpec

EXTRAS = [o for o in OUTPUTS if o not in DEFAULT_OUTPUTS]


def first_frames(spec: VideoSpec, frames: int) -> VideoSpec:
    """The first ``frames`` frames of ``spec``'s full video, motion unchanged: every polynomial is
    re-timed (t -> t * (frames - 1) / (full - 1)), so frame i is the full video's frame i. (A
    spec merely cut to fewer frames spreads the whole trajectory over them: flow would be tens of
    times the dataset's.)"""
    s = (frames - 1) / (spec.frames - 1) if spec.frames > 1 and frames > 1 else 1.0

    def poly(p: list) -> list:
        return [[c * s ** k for c in row] for k, row in enumerate(p)]

    return replace(
        spec, frames=frames,
        camera=replace(spec.camera, location_poly=poly(spec.camera.location_poly),
                       look_at_poly=poly(spec.camera.look_at_poly)),
        objects=[replace(o, location_poly=poly(o.location_poly),
                         rotation_poly=poly(o.rotation_poly), scale_poly=poly(o.scale_poly))
                 for o in spec.objects],
        lights=[replace(li, location_poly=poly(li.location_poly),
                        rotation_poly=poly(li.rotation_poly)) for li in spec.lights])


def _folder_bytes(staging: Path, output: str, video: str) -> tuple[int, int]:
    root = staging / FOLDERS[output] / video
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def _steady(manifest: dict, key: str = "render_s") -> float:
    times = manifest["timings"][key]
    return statistics.mean(times[1:] or times)


def bench_outputs(preset: str, frames: int, repeats: int, device: str = "AUTO") -> list[dict]:
    base_spec = first_frames(bench_spec(preset, 0, 10**6, device), frames)
    variants = {"rgb + masks (baseline)": DEFAULT_OUTPUTS,
                **{o: (*DEFAULT_OUTPUTS, o) for o in EXTRAS},
                "all (movi-like)": tuple(OUTPUTS)}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        measured = {}
        for name in names[r % len(names):] + names[:r % len(names)]:  # no variant always first
            outs = variants[name]
            spec = replace(base_spec, render=replace(base_spec.render, outputs=outs))
            with tempfile.TemporaryDirectory() as tmp:
                outcome = render_bench(spec, tmp)
                m = outcome.manifest
                sizes = {o: _folder_bytes(outcome.staging, o, spec.id) for o in OUTPUTS}
            encode = m["timings"].get("outputs_encode_cpu_s", {})
            extra = [o for o in outs if o not in DEFAULT_OUTPUTS]
            measured[name] = {
                "s_per_frame": _steady(m), "cpu_s": _steady(m, "render_cpu_s"),
                "encode_ms": 1000 * sum(encode.get(o, 0.0) for o in extra) / spec.frames,
                "bytes": sum(sizes[o][0] for o in extra or DEFAULT_OUTPUTS) / spec.frames,
                "files": sum(sizes[o][1] for o in extra or DEFAULT_OUTPUTS) / spec.frames,
                "device": m["device"]}
        base = measured[names[0]]
        for name, row in measured.items():
            runs[name].append({**row, "extra_s": row["s_per_frame"] - base["s_per_frame"],
                               "extra_cpu_s": row["cpu_s"] - base["cpu_s"]})
    rows = []
    for name, results in runs.items():
        def med(key: str, results: list[dict] = results) -> float:
            return statistics.median(r[key] for r in results)

        rows.append({"bench": "outputs", "output": name, "preset": preset,
                     "resolution": "x".join(map(str, base_spec.resolution)),
                     "objects": len(base_spec.objects), "frames": frames, "repeats": repeats,
                     "device": results[0]["device"], "s_per_frame": round(med("s_per_frame"), 3),
                     "extra_s_per_frame": round(med("extra_s"), 3),
                     "cpu_s_per_frame": round(med("cpu_s"), 3),
                     "extra_cpu_s_per_frame": round(med("extra_cpu_s"), 3),
                     "encode_ms_per_frame": round(med("encode_ms"), 1),
                     "bytes_per_frame": round(med("bytes")), "files_per_frame": med("files")})
    return rows
