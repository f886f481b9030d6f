"""``python -m bench gpu``: videos per GPU-hour, old design against new, on any device.

Three measurements (each its own table):

- **first frame**: a fresh render process (the worker's, ``worker.process.pool``) from its start to the
  first frame of a one-frame video with the preset's settings: ``cold`` with an empty kernel
  cache (``--cold``: on a GPU without cached kernels that is the ~5-minute compilation), ``warm``
  with the cache the cold run filled (what the second worker of a host pays).
- **throughput**: ``--videos`` videos (>= 8) of ``--preset`` cut to ``--frames`` frames, per
  configuration ``design:renders`` (``oneshot``: the previous design, a fresh Blender process per
  video, a render call per frame and masks encoded between renders: the code of
  ``bench.baseline.PREVIOUS_DESIGN``, exported with ``git archive`` and run from its own tree;
  ``server``: this tree, long-lived render processes; ``renders`` at a time on the device),
  through ``--path``:
  ``task`` = the real worker path (scheduler enqueue -> Redis -> Celery worker -> render -> S3
  upload -> marker; local redis-server and moto's S3 server, like ``bench farm``), ``render`` =
  the render path of ``worker render`` (no services), or both. Reported: videos per hour of the
  device (wall time from the enqueue (task) or from the start (render) to the last video done),
  seconds per video, the marginal seconds per video (between the first and the last video
  done), Cycles' share (time inside ``bpy.ops.render.render``), the loop's seconds per frame,
  and the GPU's busy fraction (NVML or ``nvidia-smi`` sampled every 0.2 s; ``-`` without GPU).
- **farm render** (``--marginal``): ``python -m worker render`` with 1 and with ``--videos`` specs,
  old design and new, in one run: the marginal cost of a video = (T_n - T_1) / (n - 1); and the
  **render loop**, old and new, on 3 videos of ``--loop-frames`` frames (at
  ``--loop-resolution``): seconds per frame of the loop, Cycles' own path-tracing time per frame
  (the metadata Blender writes into each JPEG) and the difference, the per-frame overhead
  outside path tracing.

No timing is asserted anywhere (tests run it at toy sizes); BENCHMARKS.md holds the figures.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from bench.baseline import PREVIOUS_DESIGN, env_in, previous_design_env, tree, worker_render
from bench.render import bench_spec, render_bench
from farm.generate.sampling import video_id
from farm.io.layout import IMAGES, video_keys
from farm.model.spec import VideoSpec, save_spec

ROOT = Path(__file__).resolve().parent.parent
DESIGNS = ("oneshot", "server")  # the previous design (a git ref's code), this tree's


def design_code(design: str, folder: Path) -> tuple[Path, dict[str, str]]:
    """(the tree a design's commands run from, their extra environment): ``oneshot`` is the
    previous design's code (the same pixels and masks: tests/worker/process/test_server.py)."""
    if design == "oneshot":
        where = tree(PREVIOUS_DESIGN, folder)
        return where, previous_design_env(where)
    return ROOT, {"FARM_RENDER_PROCESS": "server"}


class GpuSampler(threading.Thread):
    """Samples every GPU's utilisation (percent of time a kernel ran) every ``interval`` s:
    NVML when ``pynvml`` imports, else ``nvidia-smi -lms``; nothing without a GPU."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (time, gpu index, percent)
        self._halt = threading.Event()
        self._proc: subprocess.Popen | None = None
        self.source = None
        try:
            import pynvml  # noqa: PLC0415 - optional

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
            self.source = "nvml"
        except Exception:  # noqa: BLE001 - no NVML: nvidia-smi, or nothing
            self._nvml = None
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"

    def run(self) -> None:
        if self.source == "nvml":
            while not self._halt.wait(self.interval):
                now = time.time()
                for i, h in enumerate(self._handles):
                    self.samples.append((now, i, float(self._nvml.nvmlDeviceGetUtilizationRates(
                        h).gpu)))
        elif self.source == "nvidia-smi":
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={int(self.interval * 1000)}"], stdout=subprocess.PIPE, text=True)
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                try:
                    index, util = (x.strip() for x in line.split(","))
                    self.samples.append((time.time(), int(index), float(util)))
                except ValueError:
                    continue

    def stop(self) -> None:
        self._halt.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()

    def busy(self, t0: float, t1: float) -> float | None:
        """Busy fraction of the busiest GPU between ``t0`` and ``t1`` (None without samples)."""
        per_gpu: dict[int, list[float]] = {}
        for t, index, util in self.samples:
            if t0 <= t <= t1:
                per_gpu.setdefault(index, []).append(util)
        if not per_gpu:
            return None
        return round(max(statistics.mean(v) for v in per_gpu.values()) / 100, 3)


def configs(text: str) -> list[tuple[str, int]]:
    """``oneshot:1,server:1,server:2`` -> [(design, renders at a time), ...]."""
    out = []
    for item in text.split(","):
        design, _, renders = item.strip().partition(":")
        if design not in DESIGNS:
            raise ValueError(f"unknown design {design!r} (oneshot or server)")
        out.append((design, int(renders or 1)))
    return out


def _specs(preset: str, videos: int, frames: int, device: str, segment: int) -> list[VideoSpec]:
    """Generated scenes under another segment's ids, imported and kept: rendered as given
    (never resampled into a full video, never failed by the gate)."""
    out = []
    for i in range(videos):
        spec = bench_spec(preset, i, frames, device)
        out.append(replace(spec, segment=segment, id=video_id(segment, i), source="imported",
                           keep_gate_failures=True))
    return out


def _summary(manifests: list[dict]) -> dict:
    frames = [f for m in manifests for f in m["timings"].get("frame_s", [])]
    steady = [f for m in manifests for f in m["timings"].get("frame_s", [])[1:]]
    render = [m["timings"]["render_total_s"] for m in manifests]
    return {"cycles_s_per_video": round(statistics.mean(render), 3),
            "loop_s_per_frame": round(statistics.mean(frames), 4) if frames else None,
            "loop_s_per_frame_steady": round(statistics.mean(steady), 4) if steady else None,
            "device": manifests[0]["device"].split(":")[0]}


# --- first frame: cold and warm kernel caches -------------------------------------------------


def bench_first_frame(preset: str, device: str, cold: bool, folder: Path) -> list[dict]:
    """A fresh render process, from its start to the first frame of a one-frame video: with
    the kernel cache empty (``cold``) or as found, then again with the cache that run left
    (``warm``)."""
    from worker.process.environment import kernel_cache_dir
    from worker.process.pool import RenderPool

    cache = folder / "cold-kernel-cache" if cold else kernel_cache_dir()
    env = {"OPTIX_CACHE_PATH": str(cache / "optix"), "CUDA_CACHE_PATH": str(cache / "cuda")}
    spec = _specs(preset, 1, 1, device, 40)[0]
    rows = []
    for kind in ("cold" if cold else "as found", "warm"):
        t0 = time.perf_counter()
        first: list[float] = []
        with RenderPool(1, env=env) as pool:
            out = render_bench(spec, folder / f"first-{kind}", pool=pool,
                               progress=lambda *_, f=first: f.append(time.perf_counter()))
            boot = pool.processes()[0].ready_s
        rows.append({"bench": "first frame", "kernel cache": kind, "device": out.manifest[
            "device"].split(":")[0], "resolution": "x".join(map(str, spec.resolution)),
            "first_frame_s": round(first[0] - t0, 2), "process_start_s": boot,
            "cycles_first_frame_s": out.manifest["timings"]["render_s"][0]})
    return rows


# --- throughput: the render path (worker render) ------------------------------------------------


def _render_path(specs: list[VideoSpec], design: str, renders: int, folder: Path
                 ) -> tuple[float, list[float], list[dict]]:
    """(seconds from the start, each video's done time from the start, manifests)."""
    from worker.process.pool import RenderPool

    if design == "oneshot":  # the previous design's code: its own ``worker render``
        where, env = design_code(design, folder.parent)
        files = []
        for spec in specs:
            files.append(folder / "specs" / f"{spec.id}.yaml")
            save_spec(spec, files[-1])
        t0 = time.time()
        wall, manifests = worker_render(where, files, folder / "out",
                                        {**env, "FARM_RENDERS_PER_GPU": str(renders)})
        shutil.rmtree(folder / "out", ignore_errors=True)
        return wall, sorted(m["created_at"] - t0 for m in manifests), manifests
    _, env = design_code(design, folder.parent)
    done: list[float] = []
    manifests: list[dict] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    pool = RenderPool(renders, env=env)

    def one(spec: VideoSpec) -> None:
        out = render_bench(spec, folder, pool=pool)
        shutil.rmtree(out.staging, ignore_errors=True)
        with lock:
            done.append(time.perf_counter() - t0)
            manifests.append(out.manifest)

    try:
        with ThreadPoolExecutor(renders) as ex:
            list(ex.map(one, specs))
    finally:
        pool.close()
    return time.perf_counter() - t0, sorted(done), manifests


# --- throughput: the task path (queue -> Celery worker -> S3) ---------------------------------


def _task_path(svc, specs: list[VideoSpec], design: str, renders: int, name: str
               ) -> tuple[float, list[float], list[dict], float]:
    """(seconds from the enqueue, each video's done time from the enqueue, manifests, worker
    start-up seconds until its health file said ready)."""
    from bench.farm import BUCKET  # noqa: F401 - the bucket the services created
    from devtools.processes import spawn, stop

    folder = svc.folder / name
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        save_spec(spec, folder / f"{spec.id}.yaml")
    where, extra = design_code(design, svc.folder)
    scratch = Path(svc.env["FARM_SCRATCH"]) / name
    env = {**env_in(where, {**svc.env, **extra}), "FARM_RENDERS_PER_GPU": str(renders),
           "FARM_SCRATCH": str(scratch)}
    health = scratch / "worker-ready.json"
    t_start = time.perf_counter()
    # devtools.local.start_worker's command, from the design's tree
    worker = spawn([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
                    "render", "-c", str(renders), "-E", "--loglevel=INFO", "-n", f"{name}@%h",
                    "--without-gossip", "--without-mingle"], svc.folder / f"{name}.log",
                   env=env, cwd=where)
    try:
        while not health.exists():
            if worker.poll() is not None or time.perf_counter() - t_start > 1800:
                raise RuntimeError(f"worker {name} did not get ready; see {svc.folder}/{name}.log")
            time.sleep(0.1)
        startup = time.perf_counter() - t_start
        t0 = time.time()
        segment = specs[0].segment
        svc.scheduler("enqueue", "--specs", str(folder))
        while True:
            states = svc.state.states(segment)
            if all(states.get(s.id) == "done" for s in specs):
                break
            failed = [s.id for s in specs if states.get(s.id) == "failed"]
            if failed:
                raise RuntimeError(f"{failed} failed: {svc.state.video(failed[0]).get('last_error')}")
            if worker.poll() is not None:
                raise RuntimeError(f"worker {name} exited (code {worker.returncode})")
            time.sleep(0.2)
        done = sorted(float(svc.state.video(s.id)["finished_at"]) - t0 for s in specs)
        manifests = [json.loads(svc.storage.get_bytes(video_keys(f"bl30k/{segment}", s.id)[
            "manifest"]) or b"{}") for s in specs]
    finally:
        stop([worker])
    return done[-1], done, manifests, startup


def bench_throughput(preset: str, videos: int, frames: int, device: str, path: str,
                     config_list: list[tuple[str, int]], folder: Path) -> list[dict]:
    sampler = GpuSampler()
    sampler.start()
    rows = []
    try:
        paths = ["render", "task"] if path == "both" else [path]
        services = None
        if "task" in paths:
            from bench.farm import local_services

            services = local_services(folder / "services")
            svc = services.__enter__()
        try:
            for k, (which, (design, renders)) in enumerate(
                    (p, c) for p in paths for c in config_list):
                specs = _specs(preset, videos, frames, device, 50 + k)
                startup = None
                if which == "render":
                    wall, done, manifests = _render_path(specs, design, renders,
                                                         folder / f"render-{k}")
                else:
                    wall, done, manifests, startup = _task_path(svc, specs, design, renders,
                                                                f"gpu{k}")
                t_wall1 = time.time()
                marginal = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else None
                rows.append({"bench": "throughput", "path": which, "design": design,
                             "renders_at_once": renders, "preset": preset, "videos": videos,
                             "frames": frames, **({"worker_ready_s": round(startup, 2)}
                                                  if startup is not None else {}),
                             "wall_s": round(wall, 2), "s_per_video": round(wall / videos, 3),
                             "marginal_s_per_video": round(marginal, 3) if marginal else None,
                             "videos_per_hour": round(3600 * videos / wall, 1),
                             **_summary(manifests),
                             "gpu_busy": sampler.busy(t_wall1 - wall, t_wall1) or "-"})
        finally:
            if services is not None:
                services.__exit__(None, None, None)
    finally:
        sampler.stop()
    return rows


# --- worker render: marginal cost of a video, and the render loop, old and new side by side ------


_PT = re.compile(rb"cycles\.[^:]*\.render_time:(\d+):(\d+)\.(\d+)")


def path_tracing_s(jpg: Path) -> float | None:
    """Cycles' own path-tracing time of a frame (``cycles.<layer>.render_time``, without scene
    sync, compositing or writing), from the metadata Blender writes into each JPEG; 10 ms
    resolution."""
    m = _PT.search(jpg.read_bytes()[:4096])
    return int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 100 if m else None


def _farm_render(files: list[Path], design: str, out: Path) -> tuple[float, list[dict]]:
    """One ``worker render`` call: (wall seconds, manifests, each with ``path_tracing_s`` per
    frame read from its JPEGs)."""
    where, env = design_code(design, out.parent)
    wall, manifests = worker_render(where, files, out, {**env, "FARM_RENDERS_PER_GPU": "1"})
    for m in manifests:
        m["path_tracing_s"] = [path_tracing_s(p) for p in
                               sorted((out / IMAGES / m["video"]).glob("*.jpg"))]
    shutil.rmtree(out, ignore_errors=True)
    return wall, manifests


def bench_marginal(preset: str, videos: int, frames: int, folder: Path, repeats: int = 2,
                   loop_frames: int = 24, loop_videos: int = 3,
                   loop_resolution: list[int] | None = None) -> list[dict]:
    """``python -m worker render`` with 1 and with ``videos`` specs of ``frames`` frames, old
    design and new, interleaved ``repeats`` times (medians): the marginal cost of a video =
    (T_n - T_1) / (n - 1). Then the render loop alone: ``loop_videos`` videos of
    ``loop_frames`` frames, old and new, interleaved: seconds per frame of the loop (from one
    frame's start to the next's, the last to its mask written) and inside Cycles' render calls.
    """
    specs = _specs(preset, max(videos, loop_videos), max(frames, loop_frames), "AUTO", 60)
    files, loop_files = [], []
    for spec in specs:
        files.append(folder / video_keys("", spec.id)["spec"])
        save_spec(replace(spec, frames=frames), files[-1])
        loop_files.append(folder / "loop-specs" / f"{spec.id}.yaml")
        save_spec(replace(spec, frames=loop_frames,
                          resolution=loop_resolution or spec.resolution), loop_files[-1])
    runs: dict[tuple[str, int], list[tuple[float, list[dict]]]] = {}
    loops: dict[str, list[list[dict]]] = {}
    for r in range(repeats):
        for design in ("oneshot", "server"):
            for n in (1, videos):
                runs.setdefault((design, n), []).append(
                    _farm_render(files[:n], design, folder / f"out-{design}-{n}-{r}"))
            loops.setdefault(design, []).append(
                _farm_render(loop_files[:loop_videos], design, folder / f"loop-{design}-{r}")[1])
    rows = []
    for design in ("oneshot", "server"):
        one = statistics.median(w for w, _ in runs[(design, 1)])
        many = statistics.median(w for w, _ in runs[(design, videos)])
        rows.append({"bench": "worker render", "design": design, "preset": preset,
                     "frames": frames, "videos": videos, "repeats": repeats,
                     "one_video_s": round(one, 2), "n_videos_s": round(many, 2),
                     "marginal_s_per_video": round((many - one) / (videos - 1), 3)})
    for design in ("oneshot", "server"):
        per_run = [_summary(ms) for ms in loops[design]]
        manifests = [m for ms in loops[design] for m in ms]
        # frames after the first: per frame, the loop's time and Cycles' path tracing in it
        pairs = [(f, pt) for m in manifests
                 for f, pt in zip(m["timings"]["frame_s"][1:], m["path_tracing_s"][1:],
                                  strict=False) if pt is not None]
        overhead = statistics.median(f - pt for f, pt in pairs) if pairs else None
        width, height = manifests[0]["resolution"]
        rows.append({"bench": "render loop", "design": design,
                     "loop": ("render call per frame, masks between renders" if design == "oneshot"
                              else "frame 0 + one animation render, masks beside it"),
                     "preset": preset, "resolution": f"{width}x{height}", "videos": loop_videos,
                     "frames": loop_frames, "repeats": repeats,
                     "s_per_frame": statistics.median(x["loop_s_per_frame"] for x in per_run),
                     "s_per_frame_after_first": statistics.median(
                         x["loop_s_per_frame_steady"] for x in per_run),
                     "path_tracing_s_per_frame": round(statistics.median(
                         pt for _, pt in pairs), 3) if pairs else None,
                     "overhead_s_per_frame": round(overhead, 4) if overhead is not None else None,
                     "mask_encode_ms": round(1000 * statistics.mean(
                         x for m in manifests for x in m["timings"]["encode_s"] or [0]), 2)})
    return rows


def bench_gpu(preset: str, videos: int, frames: int, device: str, path: str, config_text: str,
              cold: bool, marginal: bool, first_frame: bool = True, repeats: int = 2,
              loop_frames: int = 24, loop_resolution: list[int] | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        folder = Path(tmp)
        rows = bench_first_frame(preset, device, cold, folder) if first_frame else []
        rows += bench_throughput(preset, videos, frames, device, path, configs(config_text),
                                 folder)
        if marginal:
            rows += bench_marginal(preset, videos, frames, folder / "marginal", repeats,
                                   loop_frames, loop_resolution=loop_resolution)
    return rows
