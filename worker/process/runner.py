"""Run one video's render in a Blender process and assemble its manifest (no bpy here).

``render_spec`` is the whole local job for one spec: render in a child process (a long-lived
one of a ``worker.process.pool.RenderPool``, or a fresh ``worker.process.main``), resample a generated
spec deterministically when its rendered masks fail the quality gate (failing the video,
``GateFailed``, when no attempt passes), and return the final spec, the manifest and the staging
folder holding ``JPEGImages/<video>`` and ``Annotations/<video>`` (and any extra outputs,
farm/io/outputs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from farm.assets.library import AssetError, AssetLibrary, check_spec_assets
from farm.model.presets import load_preset
from farm.model.spec import SpecError, VideoSpec, save_spec

EXIT_OK, EXIT_PERMANENT, EXIT_GATE = 0, 3, 4


class RenderError(RuntimeError):
    """A render failed. ``permanent`` errors (bad spec, missing or broken asset) never succeed on
    retry; the others (crash, timeout) might."""

    permanent = False


class PermanentRenderError(RenderError):
    permanent = True


class RenderCrash(RenderError):
    pass


class RenderAborted(RenderError):
    """The caller stopped the render (e.g. its lease on the video was lost)."""


class GateFailed(PermanentRenderError):
    """Every attempt of the video failed the quality gate: it fails rather than ship broken."""


class ScratchFull(RenderError):
    """The worker's scratch disk is full: the worker's problem, not the video's."""


# What a render process may see of the worker's environment: it parses untrusted meshes and
# images, so no credentials, broker URL or storage settings reach it.
RENDER_ENV_NAMES = {"PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH",
                    "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_CACHE_HOME",
                    "FARM_CACHE_DIR", "FARM_CONFIGS", "FARM_BENCH_ABLATE", "OCIO"}
RENDER_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OPTIX_", "OMP_", "OPENBLAS_", "MKL_",
                       "BLENDER_", "CYCLES_")


def render_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment of a render process."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if k in RENDER_ENV_NAMES or k.startswith(RENDER_ENV_PREFIXES)}


def max_rss_mb() -> float | None:
    """FARM_RENDER_MAX_RSS_MB: resident-memory cap of one render process (unset: none)."""
    value = os.environ.get("FARM_RENDER_MAX_RSS_MB")
    return float(value) if value else None


def status_mb(pid: int, field: str) -> float:
    """A memory figure of ``/proc/<pid>/status`` in MB, e.g. ``VmHWM`` (peak resident memory:
    a spike between two samples of the watchdog still counts) or ``VmRSS``; 0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Watchdog:
    """Kills a render process that runs past its time limit, holds too much memory (its peak,
    VmHWM) or that the caller stops (``abort``); samples every ``interval`` seconds: one-shot
    processes, and the pool's long-lived ones per video.

    A poison asset (an absurd mesh or texture) then fails as a crash with a reason instead of
    taking the machine's memory; the worker itself is unaffected.
    """

    def __init__(self, proc: subprocess.Popen, timeout: float | None, max_rss: float | None,
                 interval: float = 0.5, abort: Abort | None = None) -> None:
        self.proc, self.timeout, self.max_rss, self.interval = proc, timeout, max_rss, interval
        self.abort = abort
        self.reason: str | None = None
        self.aborted: str | None = None  # the caller's reason to stop, when it stopped it
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            self.aborted = self.abort() if self.abort else None
            if self.aborted:
                self.proc.kill()
                return
            rss = self._sample()
            if self.timeout and time.monotonic() - started > self.timeout:
                self.reason = f"exceeded the {self.timeout:.0f} s time limit"
            elif self.max_rss and rss > self.max_rss:
                self.reason = f"resident memory {rss:.0f} MB over the {self.max_rss:.0f} MB limit"
            if self.reason:
                self.proc.kill()
                return

    def _sample(self) -> float:
        rss = status_mb(self.proc.pid, "VmHWM")
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the job's peak once more (a spike between two samples counts); a
        # process that has exited has no memory figures left and is not reaped here

    def reap(self) -> int:
        """Wait for the process and return its exit code; its lifetime peak memory (rusage)
        is checked once more, so a spike shorter than the sampling interval still counts."""
        self.stop()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = max(self.peak_rss_mb, usage.ru_maxrss / 1024)  # KiB on Linux
        if not self.reason and self.max_rss and self.peak_rss_mb > self.max_rss:
            self.reason = (f"resident memory {self.peak_rss_mb:.0f} MB over the "
                           f"{self.max_rss:.0f} MB limit")
        return self.proc.returncode


@dataclass
class RenderOutcome:
    spec: VideoSpec
    manifest: dict
    staging: Path


Progress = Callable[[int, int], None]
Abort = Callable[[], str | None]  # polled while rendering: a reason to stop, or None


def staging_dir(scratch: str | Path, video: str) -> Path:
    """Where a video's render is staged until uploaded: ``<scratch>/<video>.staging``."""
    return Path(scratch) / f"{video}.staging"


def _run_oneshot(spec_file: Path, models_root: Path, textures_root: Path, staging: Path,
                 gate: str, timeout: float | None, progress: Progress | None,
                 env: dict | None, abort: Abort | None = None):
    """The one-shot design: a fresh ``python -m worker.process.main`` for this render."""
    from worker.process.pool import JobResult
    from worker.warmup import kernel_cache_env

    result_file, log_file = staging / "result.json", staging / "render.log"
    cmd = [sys.executable, "-m", "worker.process.main", "--spec", str(spec_file),
           "--models", str(models_root), "--textures", str(textures_root),
           "--staging", str(staging), "--result", str(result_file), "--gate", gate]
    tail: deque[str] = deque(maxlen=30)
    child_env = {**kernel_cache_env(), **render_env(), **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=child_env, cwd=Path(__file__).resolve().parents[2]) as proc:
        watchdog = Watchdog(proc, timeout, max_rss_mb(), abort=abort)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("@@progress") and progress:
                    done, total = line.split()[1:3]
                    progress(int(done), int(total))
                elif line.strip():
                    tail.append(line.rstrip())
        except BaseException:  # a soft time limit, a lost lease, a shutdown: never orphan it
            proc.kill()
            watchdog.reap()
            raise
        code = watchdog.reap()
    try:
        payload = json.loads(result_file.read_text())
    except (OSError, ValueError):
        payload = {}
    return JobResult(code, payload, watchdog.peak_rss_mb, watchdog.reason, list(tail), log_file,
                     aborted=watchdog.aborted)


def _run_child(spec: VideoSpec, models_root: Path, textures_root: Path, staging: Path,
               enforce_gate: bool, timeout: float | None, progress: Progress | None,
               env: dict | None, pool=None, abort: Abort | None = None) -> dict:
    """Render ``spec`` into a fresh ``staging``: in a process of ``pool`` (a
    ``worker.process.pool.RenderPool``), or in a fresh process of its own when there is none."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    spec_file = staging / "spec.yaml"
    save_spec(spec, spec_file)
    gate = "enforce" if enforce_gate else "record"
    if pool is None:
        job = _run_oneshot(spec_file, models_root, textures_root, staging, gate, timeout,
                           progress, env, abort)
    else:
        job = pool.run(spec_file, models_root, textures_root, staging, gate, timeout, progress,
                       env, abort)
    models = ", ".join(o.model for o in spec.objects)
    if job.aborted:
        raise RenderAborted(f"{spec.id}: render stopped: {job.aborted}")
    if job.killed:
        raise RenderCrash(f"{spec.id}: Blender process killed: {job.killed} (models: {models})")
    code, result = job.code, job.payload
    if code == EXIT_OK and result.get("status") == "ok":
        return {**result["render"], "peak_rss_mb": round(job.peak_rss_mb),
                "render_process": job.process}
    if code == EXIT_GATE:
        return {"rejected": result.get("reason", "quality gate")}
    message = result.get("message") or "\n".join(job.tail)
    if code == EXIT_PERMANENT:
        raise PermanentRenderError(f"{spec.id}: {message}")
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    if "No space left on device" in message:
        raise ScratchFull(f"{spec.id}: scratch disk full: {message}")
    raise RenderCrash(f"{spec.id}: Blender process died ({how}): {message} (models: "
                      f"{models}; log: {job.log})")


def _gate_message(spec: VideoSpec, reason: str, rejected: list[dict]) -> str:
    models = ", ".join(o.model for o in spec.objects)
    tried = f"{len(rejected)} attempts" if spec.source == "generated" else "imported spec"
    return (f"{spec.id}: failed the quality gate ({tried}; last: attempt {spec.attempt}, "
            f"{reason}; models {models})")


def render_spec(spec: VideoSpec, models_root: str | Path, textures_root: str | Path,
                scratch: str | Path, progress: Progress | None = None,
                timeout: float | None = None, env: dict | None = None,
                denylist: set[str] | None = None, resample: bool = True,
                pool=None, abort: Abort | None = None) -> RenderOutcome:
    """Render ``spec`` into scratch, resampling a generated spec that fails the mask gate.

    A video whose last attempt (an imported spec: its only one) fails the gate raises
    ``GateFailed``, unless the spec says ``keep_gate_failures``: then it is kept with the
    verdict recorded. ``resample=False`` renders the spec as given and only records the verdict
    (benchmarks: a resampled spec would be the preset's full video, not the cut-down spec given).
    ``pool`` (a ``worker.process.pool.RenderPool``) renders in its long-lived processes; without one,
    each render gets a fresh process (the one-shot design). ``abort`` is polled while rendering:
    a reason stops the render at once (``RenderAborted``).
    """
    models_root, textures_root = Path(models_root).resolve(), Path(textures_root).resolve()
    staging = staging_dir(scratch, spec.id)
    try:
        preset = load_preset(spec.preset)
    except SpecError:
        preset = None
    started = time.perf_counter()
    record = spec.generation.get("gate", {})
    rejected = list(record.get("rejected", []))
    keep = spec.keep_gate_failures or not resample
    if record.get("passed") is False and not keep:
        raise GateFailed(_gate_message(spec, record.get("reason", "geometric check"), rejected))
    while True:
        try:
            check_spec_assets(spec, models_root, textures_root)
        except AssetError as exc:
            raise PermanentRenderError(f"{spec.id}: {exc}") from None
        last_attempt = spec.generation.get("gate", {}).get(
            "last_attempt", preset.quality_gate.max_attempts - 1 if preset else spec.attempt)
        again = (resample and spec.source == "generated" and preset is not None
                 and spec.attempt < last_attempt)
        render = _run_child(spec, models_root, textures_root, staging, not keep or again,
                            timeout, progress, env, pool, abort)
        if "rejected" not in render:
            break
        rejected.append({"attempt": spec.attempt, "check": "mask", "reason": render["rejected"]})
        if not again:
            shutil.rmtree(staging, ignore_errors=True)
            raise GateFailed(_gate_message(spec, render["rejected"], rejected))
        from farm.generate.sampling import generate_spec

        lib = AssetLibrary.open(models_root, textures_root, denylist=denylist)
        spec = replace(generate_spec(lib, preset, spec.segment, spec.index, spec.seed,
                                     first_attempt=spec.attempt + 1, rejected=rejected,
                                     last_attempt=last_attempt),
                       keep_gate_failures=spec.keep_gate_failures)
        rejected = list(spec.generation["gate"]["rejected"])
        if not spec.generation["gate"]["passed"]:
            shutil.rmtree(staging, ignore_errors=True)
            raise GateFailed(_gate_message(spec, spec.generation["gate"]["reason"], rejected))
    manifest = {
        "video": spec.id,
        "segment": spec.segment,
        "index": spec.index,
        "spec_digest": spec.digest(),
        "preset": spec.preset,
        "resolution": spec.resolution,
        "num_frames": spec.frames,
        "objects": [{"id": k, "model": o.model, "category": o.category, "synset": o.synset,
                     "texture": o.texture} for k, o in enumerate(spec.objects, start=1)],
        "attempt": spec.attempt,
        "rejected_attempts": rejected,
        "keep_gate_failures": spec.keep_gate_failures,
        "host": socket.gethostname(),
        "created_at": time.time(),
        **render,
    }
    manifest["timings"]["wall_s"] = round(time.perf_counter() - started, 3)
    for name in ("spec.yaml", "result.json"):
        (staging / name).unlink(missing_ok=True)
    return RenderOutcome(spec, manifest, staging)

