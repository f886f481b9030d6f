"""Kernel caches, the warm-up render before a worker consumes, and its health file (no bpy).

**Why.** On a GPU whose architecture the bpy wheel has no prebuilt kernel for (H100/H200 are
sm_90; bpy 5.0.1 ships cubins up to sm_89 plus sm_120, and PTX for compute_75), the first render
compiles: the driver JIT-compiles Cycles' CUDA kernels from ``kernel_compute_75.ptx`` (OptiX
renders need them too, for the non-ray-tracing kernels) and OptiX compiles its module from
``kernel_optix.ptx``. Measured on an H200: ~290 s before the first frame. Both results are
cached on disk and reused by later processes (3.6 s for the same render then):

- CUDA's JIT cache: ``CUDA_CACHE_PATH`` (default ``~/.nv/ComputeCache``), capped by
  ``CUDA_CACHE_MAXSIZE`` (bytes; the default is too small for Cycles' kernels, so 4 GiB here);
- OptiX's cache: ``OPTIX_CACHE_PATH`` (default ``/var/tmp/OptixCache_<user>``).

(Cycles' own kernel cache, ``$XDG_CACHE_HOME/cycles/kernels``, holds kernels it compiles from
source, which needs the CUDA toolkit or OptiX SDK at run time; the worker image has neither, so
bpy 5.0.1 never writes there. ``BLENDER_USER_CACHE`` is not used by Cycles for kernels.)

``kernel_cache_env`` points both at ``FARM_KERNEL_CACHE`` (default
``<FARM_CACHE_DIR>/kernels``), unless they are set already; compose mounts a per-host volume
there, shared by the host's workers, so only the first worker of a host ever compiles.

**Feature sets.** Cycles builds its OptiX pipeline per kernel feature set (a separate module for
shader ray-tracing nodes (AO, bevel) and for OSL, pipeline options for hair, point clouds and
motion blur), and the denoiser (OIDN on the GPU) has kernels of its own. A worker that warmed
with one setting could still compile for minutes inside the first task with another; the
warm-up therefore renders the scene type every video has (textured imported meshes, emission
background, point lights, object-index pass) once per distinct combination of the settings that
change what runs on the device, over every preset (denoised or not, prefilter, denoiser quality,
adaptive sampling), on every device requested (``FARM_WARMUP_DEVICES``, default the worker's:
AUTO = OptiX when present).

**Before consuming.** ``warm_up_worker`` runs in the Celery worker's main process from the
``worker_init`` signal, before the pool and the consumer exist: no message is taken, and no
task's time limit runs, while it compiles. The first worker of a host takes a lock in the cache
folder, so workers starting together do not all compile the same kernels; the others wait, then
hit the cache. It logs how long it took, and the worker writes its health file
(``FARM_HEALTH_FILE``, default ``$FARM_SCRATCH/worker-ready.json``) only once it is ready to
consume; ``python -m worker.warmup --check`` (the compose healthcheck) fails until then.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from farm.settings import Settings, current
from worker.process.environment import gpu_visible, kernel_cache_dir

log = logging.getLogger(__name__)

# The render settings that change what runs on the device (kernel features, denoiser).
KERNEL_KEYS = ("denoise", "denoise_prefilter", "denoise_quality", "adaptive")


def kernel_settings(presets: list[str] | None = None) -> list[dict]:
    """One set of render settings per distinct kernel-relevant combination in ``presets``
    (default: every preset), cheapest first."""
    from farm.model.presets import available, load_preset

    combos: dict[tuple, dict] = {}
    for name in presets or available():
        r = load_preset(name).render
        key = (r.denoise, r.denoise_prefilter if r.denoise else "",
               r.denoise_quality if r.denoise else "", r.adaptive_threshold > 0)
        combos.setdefault(key, {
            "denoise": r.denoise, "denoise_prefilter": r.denoise_prefilter,
            "denoise_quality": r.denoise_quality,
            "adaptive_threshold": r.adaptive_threshold, "adaptive_min_samples": 1,
            "samples": 2})
    return sorted(combos.values(), key=lambda c: (c["denoise"], c["adaptive_threshold"] > 0))


def warmup_specs(devices: list[str], settings: list[dict], size: tuple[int, int] = (32, 24)):
    """Tiny one-frame videos of the procedural pack, one per device and setting."""
    from farm.assets.library import AssetLibrary
    from farm.assets.procedural import default_pack
    from farm.generate.sampling import generate_spec
    from farm.model.presets import load_preset

    base = generate_spec(AssetLibrary.open(*default_pack()), load_preset("tiny"), 0, 0, 2021)
    return [replace(base, frames=1, resolution=list(size),
                    render=replace(base.render, device=device, **combo))
            for device in devices for combo in settings]


@contextlib.contextmanager
def host_lock(enabled: bool = True) -> Iterator[float]:
    """The host's warm-up lock (a file lock in the shared kernel cache); yields seconds waited."""
    if not enabled:
        yield 0.0
        return
    root = kernel_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(root / ".warmup.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another worker of this host is warming the render kernels in %s; "
                        "waiting for it (its kernels will be reused)", root)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def warm_up(pool, devices: list[str] | None = None, settings: list[dict] | None = None,
            started: float | None = None) -> dict:
    """Render the warm-up videos in ``pool`` (a ``worker.process.pool.RenderPool``); their timings, and
    the first frame's latency from ``started`` (perf_counter, default now)."""
    from farm.assets.procedural import default_pack
    from farm.model.presets import find_preset
    from worker.attempts import render_attempts

    devices = devices or ["AUTO"]
    settings = settings or kernel_settings()
    models, textures = default_pack()
    renders = []
    t0 = time.perf_counter() if started is None else started
    first: list[float] = []
    with tempfile.TemporaryDirectory(prefix="farm-warmup-") as scratch:
        for spec in warmup_specs(devices, settings):
            t1 = time.perf_counter()
            out = render_attempts(spec, find_preset(spec.preset), models, textures, scratch,
                                  resample=False, pool=pool,
                                  progress=lambda *_: first.append(time.perf_counter()))
            r = spec.render
            renders.append({"device": out.manifest["device"], "denoise": r.denoise,
                            "prefilter": r.denoise_prefilter if r.denoise else "",
                            "adaptive": r.adaptive_threshold > 0,
                            "seconds": round(time.perf_counter() - t1, 3),
                            "first_frame_s": out.manifest["timings"]["render_s"][0]})
    return {"seconds": round(time.perf_counter() - t0, 3), "renders": renders,
            "device": renders[0]["device"] if renders else None,
            "first_frame_s": round(first[0] - t0, 3) if first else None}


_report: dict = {}


def warm_up_worker(settings: Settings) -> dict:
    """The worker's warm-up (Celery ``worker_init``, before the pool and the consumer start):
    render kernels compiled and cached, device checked; logged, kept for the health file.
    FARM_WARMUP: ``auto`` (every preset's settings on a GPU, one render on a CPU, where nothing
    compiles), ``full`` (every setting anyway) or ``off``."""
    from worker.process.pool import RenderPool

    mode = settings.warmup
    if mode == "off":
        log.warning("render warm-up: off (FARM_WARMUP=off)")
        _report.update(seconds=0.0, mode=mode)
        return _report
    gpu = gpu_visible()
    devices = [d.strip() for d in settings.warmup_devices.split(",") if d.strip()]
    kernels = kernel_settings() if (gpu or mode == "full") else kernel_settings(["tiny"])
    t0 = time.perf_counter()
    with host_lock(gpu) as waited, RenderPool(size=1) as pool:
        report = warm_up(pool, devices, kernels, time.perf_counter())
    report.update(mode=mode, lock_wait_s=round(waited, 3), kernel_cache=str(settings.kernel_cache),
                  seconds=round(time.perf_counter() - t0, 3))
    log.warning("render warm-up: %d render(s) on %s in %.1f s (first frame %.1f s after the "
                "render process started; waited %.1f s for another worker's warm-up; kernel "
                "cache %s); consuming from now on", len(report["renders"]), report["device"],
                report["seconds"], report["first_frame_s"] or 0.0, waited,
                report["kernel_cache"])
    _report.clear()
    _report.update(report)
    return report


def write_health(**info) -> None:
    """Mark this worker ready (after its warm-up, once it consumes)."""
    path = current().health_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "ready_at": time.time(),
                                   "warmup": _report, **info}))
        tmp.replace(path)
    except OSError as exc:  # a full scratch disk must not stop the worker
        log.warning("cannot write the health file %s: %s", path, exc)


def clear_health() -> None:
    with contextlib.suppress(OSError):
        current().health_file.unlink()


def check_health(path: Path | None = None) -> tuple[bool, str]:
    """Ready: the health file exists and the process that wrote it is alive."""
    path = path or current().health_file
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False, f"not ready: no health file {path} (warming up, or not started)"
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False, f"not ready: the worker that wrote {path} is gone"
    warm = info.get("warmup", {})
    return True, (f"ready since {time.ctime(info['ready_at'])}; warm-up {warm.get('seconds')} s "
                  f"on {warm.get('device')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.warmup", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="exit 0 if this container's worker is ready (the healthcheck)")
    ap.add_argument("--devices", default=current().warmup_devices,
                    help="comma list: AUTO, CPU, CUDA, OPTIX")
    ap.add_argument("--presets", help="only these presets' settings (default: every preset)")
    ap.add_argument("--json", type=Path, help="write the timings here")
    args = ap.parse_args(argv)
    if args.check:
        ok, message = check_health()
        print(message)
        return 0 if ok else 1
    from worker.process.pool import RenderPool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    devices = args.devices.split(",")
    settings = kernel_settings(args.presets.split(",") if args.presets else None)
    t0 = time.perf_counter()
    with host_lock(gpu_visible()) as waited, RenderPool(size=1) as pool:
        report = warm_up(pool, devices, settings, time.perf_counter())
    report.update(seconds=round(time.perf_counter() - t0, 3), lock_wait_s=round(waited, 3),
                  kernel_cache=str(kernel_cache_dir()))
    for r in report["renders"]:
        print(f"{r['device']:32} denoise={r['denoise']!s:5} prefilter={r['prefilter']:8} "
              f"adaptive={r['adaptive']!s:5} {r['seconds']:8.2f} s")
    print(f"warm-up: {len(report['renders'])} renders in {report['seconds']:.1f} s, first frame "
          f"{report['first_frame_s']} s after the render process started (kernel cache "
          f"{report['kernel_cache']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
