"""Render one spec in a Blender process: ``render_spec`` (no bpy here).

One attempt of one video: write the spec into a fresh staging folder, render it in a child
process (a long-lived one of a ``worker.process.pool.RenderPool``, or a fresh
``worker.process.main``: the one-shot design) and turn the child's answer
(``worker.process.protocol``) into the render part of the manifest or an exception. What to do
when the masks fail the quality gate (sample another attempt, or fail the video) is the
caller's decision (``worker.attempts``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import asdict
from pathlib import Path

from farm.model.presets import QualityGate
from farm.model.spec import VideoSpec, save_spec
from worker.process.environment import ROOT, kernel_cache_env, render_env
from worker.process.pool import JobResult, RenderPool
from worker.process.protocol import (
    EXIT_GATE,
    EXIT_OK,
    EXIT_PERMANENT,
    PROGRESS,
    Progress,
    RenderJob,
    parse,
)
from worker.process.watchdog import Abort, Watchdog, max_rss_mb


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


class MaskRejected(Exception):  # noqa: N818 - a verdict for the caller, not an error
    """The rendered masks failed the quality gate (``enforce_gate``); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason




def _run_oneshot(job: RenderJob, timeout: float | None, progress: Progress | None,
                 env: dict | None, abort: Abort | None = None) -> JobResult:
    """The one-shot design: a fresh ``python -m worker.process.main`` for this render."""
    result_file, log_file = job.staging / "result.json", job.staging / "render.log"
    cmd = [sys.executable, "-m", "worker.process.main", *job.argv(result_file)]
    tail: deque[str] = deque(maxlen=30)
    child_env = {**kernel_cache_env(), **render_env(), **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=child_env, cwd=ROOT) as proc:
        watchdog = Watchdog(proc, timeout, max_rss_mb(), abort=abort)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                kind, data = parse(line) or (None, None)
                if kind == PROGRESS:
                    if progress:
                        progress(*data)
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


def render_spec(spec: VideoSpec, models_root: str | Path, textures_root: str | Path,
                staging: Path, gate: QualityGate, enforce_gate: bool = True,
                timeout: float | None = None, progress: Progress | None = None,
                env: dict | None = None, pool: RenderPool | None = None,
                abort: Abort | None = None) -> dict:
    """Render ``spec`` into a fresh ``staging`` folder; returns the render part of its manifest
    (timings, device, objects' pixel counts, the gate's verdict, peak memory).

    ``enforce_gate``: masks failing ``gate`` raise ``MaskRejected`` (otherwise the verdict is
    only recorded). Errors: ``PermanentRenderError`` (bad spec, missing or broken asset: never
    retry), ``RenderCrash`` (died, killed over its time limit or memory cap), ``ScratchFull``,
    ``RenderAborted`` (``abort``, polled while rendering, returned a reason).
    """
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    spec_file = staging / "spec.yaml"
    save_spec(spec, spec_file)
    job = RenderJob(spec_file, Path(models_root).resolve(), Path(textures_root).resolve(),
                    staging, "enforce" if enforce_gate else "record", asdict(gate))
    if pool is None:
        result = _run_oneshot(job, timeout, progress, env, abort)
    else:
        result = pool.run(job, timeout, progress, env, abort)
    spec_file.unlink(missing_ok=True)
    (staging / "result.json").unlink(missing_ok=True)
    models = ", ".join(o.model for o in spec.objects)
    if result.aborted:
        raise RenderAborted(f"{spec.id}: render stopped: {result.aborted}")
    if result.killed:
        raise RenderCrash(f"{spec.id}: Blender process killed: {result.killed} (models: {models})")
    code, payload = result.code, result.payload
    if code == EXIT_OK and payload.get("status") == "ok":
        return {**payload["render"], "peak_rss_mb": round(result.peak_rss_mb),
                "render_process": result.process}
    if code == EXIT_GATE:
        raise MaskRejected(payload.get("reason", "quality gate"))
    message = payload.get("message") or "\n".join(result.tail)
    if code == EXIT_PERMANENT:
        raise PermanentRenderError(f"{spec.id}: {message}")
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    if "No space left on device" in message:
        raise ScratchFull(f"{spec.id}: scratch disk full: {message}")
    raise RenderCrash(f"{spec.id}: Blender process died ({how}): {message} (models: "
                      f"{models}; log: {result.log})")
