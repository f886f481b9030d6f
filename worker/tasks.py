"""The render task: one Celery task per video, idempotent and exactly-once in storage.

Flow: skip if cancelled or already done (marker) -> take the video's Redis lease (a redelivered
copy never renders beside a live one) -> render in a fresh Blender process -> upload frames, spec,
manifest -> completion marker last -> state ``done``. Permanent errors fail at once with their
reason; storage and broker errors retry with exponential backoff and jitter; crashes and lost
workers are counted per video and fail it after ``FARM_MAX_DELIVERIES``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import redis
from celery.exceptions import SoftTimeLimitExceeded

from farm import metrics
from farm.assets import AssetError, AssetLibrary, read_denylist
from farm.config import segment_base
from farm.presets import load_preset
from farm.sampling import generate_spec
from farm.spec import SpecError, VideoSpec
from farm.state import BrokerUnavailable, FarmState, Lease, connect
from farm.storage import FrameStreamer, StorageError, is_done, join, remove_frames, upload_video
from worker.celery_app import TASK_NAME, app, settings
from worker.pool import worker_pool
from worker.runner import (
    GateFailed,
    PermanentRenderError,
    Progress,
    RenderCrash,
    RenderOutcome,
    ScratchFull,
    render_spec,
    staging_dir,
)

log = logging.getLogger(__name__)
SCRATCH_MARGIN = 64 * 2**20
SCRATCH_FULL_PAUSE_S = float(os.environ.get("FARM_SCRATCH_FULL_PAUSE", "10"))
TRANSIENT = (StorageError, BrokerUnavailable, redis.ConnectionError, redis.TimeoutError)


def _rendered_marker(staging: Path) -> Path:
    return staging / "rendered.json"


def _reuse_staging(staging: Path, spec: VideoSpec) -> RenderOutcome | None:
    """A finished render left by a delivery whose upload failed (same spec): upload it again."""
    try:
        saved = json.loads(_rendered_marker(staging).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("input_digest") != spec.digest():
        return None
    return RenderOutcome(VideoSpec.from_dict(saved["spec"]), saved["manifest"], staging)


def _render(spec: VideoSpec, timeout: float | None, progress: Progress | None) -> RenderOutcome:
    staging = staging_dir(settings.scratch, spec.id)
    outcome = _reuse_staging(staging, spec)
    if outcome:
        log.info("%s: reusing the finished render in %s", spec.id, staging)
        return outcome
    models, textures = settings.asset_roots()
    try:
        outcome = render_spec(spec, models, textures, settings.scratch, progress=progress,
                              timeout=timeout, denylist=read_denylist(settings.denylist),
                              pool=worker_pool())
        _rendered_marker(staging).write_text(json.dumps({
            "input_digest": spec.digest(), "spec": outcome.spec.to_dict(),
            "manifest": outcome.manifest}))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ScratchFull(f"{spec.id}: scratch disk full: {exc}") from None
        raise
    return outcome


@app.task(bind=True, name=TASK_NAME, autoretry_for=TRANSIENT,
          retry_backoff=int(os.environ.get("FARM_RETRY_BACKOFF", "5")),
          retry_backoff_max=settings.retry_backoff_max, retry_jitter=True,
          max_retries=settings.max_retries)
def render_video(self, video: str, segment: int, spec: dict | None = None, index: int | None = None,
                 seed: int | None = None, preset: str | None = None, digest: str | None = None,
                 first_attempt: int = 0, generation: int | None = None) -> dict:
    """Render one video. ``spec`` is the whole spec, or (index, seed, preset, digest and the
    first gate attempt) its recipe."""
    state = FarmState(connect(settings.redis_url_with_password))
    storage, prefix = settings.storage()
    base = join(prefix, segment_base(segment))
    if state.state(segment, video) == "cancelled":
        return {"video": video, "status": "cancelled"}
    current = state.generation(video)
    if generation is not None and generation < current:
        log.info("%s: message of generation %d superseded by %d, dropped", video, generation,
                 current)
        return {"video": video, "status": "superseded"}
    try:
        if is_done(storage, base, video):
            state.set_state(segment, video, "done")
            return {"video": video, "status": "already done"}
    except StorageError as exc:
        # Keep the GPU busy while storage is away: render now, the upload retries until it is back.
        log.warning("%s: cannot check the completion marker (%s); rendering anyway", video, exc)

    lease = Lease(state, f"video:{video}", f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}",
                  settings.lease_ttl)
    if not lease.acquire():
        # A live worker renders this video (we are a redelivered copy): check back later.
        log.info("%s: leased by %s, deferring", video, state.holder(f"video:{video}"))
        _requeue(self, countdown=settings.lease_ttl)
        return {"video": video, "status": "deferred"}
    try:
        recipe = {"index": index, "seed": seed, "preset": preset, "digest": digest,
                  "first_attempt": first_attempt}
        return _run(self, state, storage, base, video, segment, spec, recipe, lease)
    finally:
        lease.release()


def _requeue(task, countdown: float) -> None:
    """Publish this task again for later, without counting it as a retry of the video."""
    request = task.request
    task.apply_async(kwargs=request.kwargs, countdown=countdown, task_id=request.id,
                     priority=(request.delivery_info or {}).get("priority"),
                     soft_time_limit=request.timelimit[1], time_limit=request.timelimit[0],
                     ignore_result=True, retries=request.retries)


def _check_scratch(spec: VideoSpec) -> None:
    """Refuse to start a render that cannot fit on the scratch disk."""
    settings.scratch.mkdir(parents=True, exist_ok=True)
    width, height = spec.resolution
    need = spec.frames * width * height * 1.2 + SCRATCH_MARGIN
    free = shutil.disk_usage(settings.scratch).free
    if free < need:
        raise ScratchFull(f"{spec.id}: scratch {settings.scratch} has {free / 2**20:.0f} MB free, "
                          f"the render needs about {need / 2**20:.0f} MB")


def _fail(state: FarmState, segment: int, video: str, reason: str, **fields) -> None:
    log.error("%s: failed: %s", video, reason)
    state.set_state(segment, video, "failed", last_error=reason, failed_at=time.time(), **fields)
    state.clear(video, "running")


def _attempt_budget(spec: VideoSpec, soft: float | None) -> float | None:
    """Seconds one render (one gate attempt) may take: its preset's one-attempt limit, within
    what is left of the task's soft limit."""
    try:
        one = load_preset(spec.preset).time_limits(spec.frames, attempts=1)[0]
    except SpecError:
        one = None
    budgets = [b for b in (one, soft - 30 if soft else None) if b]
    return min(budgets) if budgets else None


def _last_attempt(spec_dict: dict | None, recipe: dict) -> int:
    """The last attempt a delivery could sample (a retry of a gate failure starts after it)."""
    if spec_dict:
        return int(spec_dict.get("generation", {}).get("gate", {}).get("last_attempt",
                                                                       spec_dict.get("attempt", 0)))
    preset = load_preset(recipe["preset"])
    return recipe.get("first_attempt", 0) + preset.quality_gate.max_attempts - 1


_libraries: dict[tuple, AssetLibrary] = {}  # per worker process: the index is loaded once


def regenerate(segment: int, recipe: dict) -> VideoSpec:
    """Rebuild a generated spec from its recipe; its digest must equal the scheduler's."""
    key = (*settings.asset_roots(), settings.denylist)
    if key not in _libraries:
        _libraries[key] = settings.library()
    spec = generate_spec(_libraries[key], load_preset(recipe["preset"]), segment,
                         recipe["index"], recipe["seed"], recipe.get("first_attempt", 0))
    if spec.digest() != recipe["digest"]:
        raise SpecError("spec", f"{spec.id} regenerated on this worker differs from the "
                        "scheduler's (different asset library, denylist or code version)")
    return spec


def _run(task, state: FarmState, storage, base: str, video: str, segment: int,
         spec_dict: dict | None, recipe: dict, lease: Lease) -> dict:
    info = state.video(video)
    if info.get("running"):
        # The previous holder of the lease started and never finished: its worker was lost.
        lost = state.incr(video, "lost_deliveries")
        log.warning("%s: previous delivery was lost (%d so far)", video, lost)
        metrics.record_failure(state.r, "lost", lost >= settings.max_deliveries, task.request.hostname)
        if lost >= settings.max_deliveries:
            _fail(state, segment, video, f"worker lost {lost} times while rendering this video "
                  f"(killed, out of memory or hard time limit); last holder {info['running']}")
            return {"video": video, "status": "failed"}
    state.set_state(segment, video, "running", running=lease.token, worker=socket.gethostname(),
                    started_at=time.time(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    try:
        spec = VideoSpec.from_dict(spec_dict) if spec_dict else regenerate(segment, recipe)
        if spec.id != video or spec.segment != segment:
            raise SpecError("id", f"task for {video} (segment {segment}) carries spec {spec.id}")
        soft = task.request.timelimit[1] if task.request.timelimit else None
        _check_scratch(spec)
        streamer = (FrameStreamer(storage, base, staging_dir(settings.scratch, video), video)
                    if settings.stream_upload else None)
        try:
            outcome = _render(spec, _attempt_budget(spec, soft),
                              streamer.frame_done if streamer else None)
        finally:
            streamed = streamer.close() if streamer else {}
        if lease.lost:
            raise RenderCrash(f"{video}: lease lost during the render; another worker owns it")
        upload = upload_video(storage, base, outcome.staging, video, outcome.spec.to_yaml(),
                              outcome.manifest, streamed=streamed)
    except GateFailed as exc:
        # No attempt passed: nothing may stay where loaders look, and a retry starts afresh.
        remove_frames(storage, base, video)
        shutil.rmtree(staging_dir(settings.scratch, video), ignore_errors=True)
        _fail(state, segment, video, str(exc), gate_failed=1,
              next_attempt=_last_attempt(spec_dict, recipe) + 1)
        metrics.record_failure(state.r, exc, True, task.request.hostname)
        raise PermanentRenderError(str(exc)) from None
    except (SpecError, AssetError, PermanentRenderError) as exc:
        _fail(state, segment, video, str(exc))
        metrics.record_failure(state.r, exc, True, task.request.hostname)
        raise PermanentRenderError(str(exc)) from None
    except TRANSIENT as exc:
        final = task.request.retries >= task.max_retries
        if final:
            _fail(state, segment, video, f"gave up after {task.request.retries} retries: {exc}")
        else:
            state.set_state(segment, video, "retrying", last_error=str(exc))
            state.clear(video, "running")
        metrics.record_failure(state.r, exc, final, task.request.hostname)
        raise
    except ScratchFull as exc:
        # The worker's disk, not the video: hand the video back for another worker and pause.
        log.error("%s; handing the video back", exc)
        state.set_state(segment, video, "retrying", last_error=str(exc))
        state.clear(video, "running")
        shutil.rmtree(staging_dir(settings.scratch, video), ignore_errors=True)
        metrics.record_failure(state.r, exc, False, task.request.hostname)
        _requeue(task, countdown=5)
        time.sleep(SCRATCH_FULL_PAUSE_S)
        return {"video": video, "status": "handed back: scratch full"}
    except (RenderCrash, SoftTimeLimitExceeded) as exc:
        crashes = state.incr(video, "crashes")
        reason = str(exc) or "soft time limit exceeded"
        state.clear(video, "running")
        final = crashes >= settings.max_deliveries or task.request.retries >= task.max_retries
        metrics.record_failure(state.r, exc, final, task.request.hostname)
        if final:
            # Celery's retry() publishes nothing past max_retries: the video must end here.
            _fail(state, segment, video, f"render crashed {crashes} times (retries: "
                  f"{task.request.retries}): {reason}")
            raise PermanentRenderError(reason) from None
        state.set_state(segment, video, "retrying", last_error=reason)
        raise task.retry(exc=exc, countdown=5 * crashes) from None
    state.incr(video, "uploads")  # completed uploads (marker written): a chaos run expects 1
    shutil.rmtree(outcome.staging, ignore_errors=True)
    timings = outcome.manifest["timings"]
    state.set_state(segment, video, "done", frames=outcome.spec.frames,
                    render_s=timings["render_total_s"], wall_s=timings["wall_s"],
                    upload_s=upload["upload_s"], streamed=upload["streamed"],
                    finished_at=time.time(),
                    device=outcome.manifest["device"], attempt=outcome.spec.attempt)
    state.clear(video, "running")
    metrics.record_video(state.r, task.request.hostname, outcome, upload)
    return {"video": video, "status": "done", "frames": outcome.spec.frames,
            "device": outcome.manifest["device"], "render_s": timings["render_total_s"],
            "upload_s": upload["upload_s"]}
