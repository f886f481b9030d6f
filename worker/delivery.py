"""Delivering one video: the state machine between a queue message and ``done`` or ``failed``.

Plain functions over a ``FarmState`` (Redis) and a ``Storage``, testable with a real redis-server
and no Celery worker; ``worker.tasks`` adapts them to a Celery task.

Flow: drop a cancelled or superseded message -> take the video's lease -> check cancellation and
the completion marker again (a storage error defers; never render blind) -> remove frames of
earlier deliveries -> render (stopped within seconds when the lease is lost) -> upload frames,
spec, manifest -> completion marker with every frame's MD5, the generation and the enqueued
spec's digest, written only while the lease holds, the generation is the current one and the
video is not cancelled (one Lua check) -> ``done``. Every state change after the lease is
conditional the same way, so a worker that lost its lease never overwrites the new holder's
state, a superseded generation never completes a re-enqueued video, and a cancel sticks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import redis

from farm.assets.library import AssetError, AssetLibrary
from farm.assets.roots import open_library
from farm.generate.sampling import generate_spec
from farm.io.layout import staging_dir, video_keys
from farm.io.outputs import estimate_space
from farm.io.storage import (
    FrameStreamer,
    Storage,
    StorageError,
    done_marker,
    remove_frames,
    upload_video,
)
from farm.model.presets import Preset
from farm.model.spec import SpecError, VideoSpec
from farm.model.validate import spec_from_dict
from farm.queue import metrics
from farm.queue.state import BrokerUnavailable, FarmState, Lease
from farm.settings import Settings
from worker import gpu, scratch, shutdown
from worker.attempts import GateFailed, RenderOutcome, render_attempts
from worker.process.pool import worker_pool
from worker.process.protocol import Progress
from worker.process.runner import (
    PermanentRenderError,
    RenderAborted,
    RenderCrash,
    ScratchFull,
)

log = logging.getLogger(__name__)
HANDED_BACK_SCRATCH_FULL = "handed back: scratch full"
HANDED_BACK_STOPPING = "handed back: worker stopping"
TRANSIENT = (StorageError, BrokerUnavailable, redis.ConnectionError, redis.TimeoutError)


class Requeue(Exception):  # noqa: N818 - an instruction to the adapter, not an error
    """Hand the message back for later (``countdown`` seconds), not counted as a retry."""

    def __init__(self, countdown: float, status: str) -> None:
        super().__init__(status)
        self.countdown, self.status = countdown, status


class RetryLater(Exception):  # noqa: N818
    """Retry this delivery (counted against the task's retries) after ``countdown`` seconds."""

    def __init__(self, countdown: float, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.countdown, self.cause = countdown, cause


class VideoFailed(PermanentRenderError):
    """The video ended failed (its state says why). ``host_suspect``: a failure a broken host
    produces (crash, time limit, missing asset), counted towards the worker's failure limit
    (worker/blackhole.py); ``crashed``: it was counted as a crash of the video."""

    def __init__(self, message: str, host_suspect: bool = False, crashed: bool = False) -> None:
        super().__init__(message)
        self.host_suspect, self.crashed = host_suspect, crashed


class LeaseLost(RuntimeError):
    """This delivery may no longer change the video: ``status`` says why, "lease lost" (another
    worker owns the video now), "superseded" (re-enqueued as a later generation) or
    "cancelled"."""

    def __init__(self, message: str, status: str = "lease lost") -> None:
        super().__init__(message)
        self.status = status


_FENCED = {"lease": "lease lost", "superseded": "superseded", "cancelled": "cancelled"}


@dataclass
class Job:
    """One message: the video, its spec (whole or as a recipe), its preset (resolved by the
    scheduler) and the queue's bookkeeping."""

    video: str
    segment: int
    base: str  # storage prefix of the segment
    preset: Preset | None = None  # None: a spec of a preset unknown here (default gate)
    spec: dict | None = None
    recipe: dict | None = None  # index, seed, digest, first_attempt
    generation: int | None = None
    retries: int = 0
    max_retries: int = 0
    soft_limit: float | None = None
    worker: str = ""  # the queue worker's name (metrics)


@dataclass
class Farm:
    """What a delivery works with."""

    state: FarmState
    storage: Storage
    settings: Settings


_libraries: dict[tuple, AssetLibrary] = {}  # per worker process: the index is loaded once


def library(settings: Settings) -> AssetLibrary:
    """The asset library of the settings (with the denylist), loaded once per process."""
    key = (settings.models, settings.textures, settings.denylist)
    if key not in _libraries:
        _libraries[key] = open_library(settings)
    return _libraries[key]


def regenerate(settings: Settings, segment: int, recipe: dict, preset: Preset | None) -> VideoSpec:
    """Rebuild a generated spec from its recipe; its digest must equal the scheduler's."""
    if preset is None:
        raise SpecError("preset", "a generated spec's task carries no preset")
    spec = generate_spec(library(settings), preset, segment, recipe["index"], recipe["seed"],
                         recipe.get("first_attempt", 0))
    if spec.digest() != recipe["digest"]:
        raise SpecError("spec", f"{spec.id} regenerated on this worker differs from the "
                        "scheduler's (different asset library, denylist or code version)")
    return spec


def enqueued_digest(job: Job) -> str | None:
    """The digest of the spec the scheduler enqueued (what Redis and the bucket's enqueue record
    hold): a recipe carries it, a whole spec is hashed."""
    if job.spec:
        return spec_from_dict(job.spec).digest()
    return (job.recipe or {}).get("digest")


def deliver(job: Job, farm: Farm, interrupts: tuple[type[BaseException], ...] = ()) -> dict:
    """Take the job from its message to a final or handed-back state; returns a summary.

    Raises ``Requeue``/``RetryLater`` for the adapter, ``PermanentRenderError`` when the video
    failed, or a transient error (storage, broker) to be retried with backoff. ``interrupts``
    (e.g. the queue's soft time limit) count as a crash of the render.
    """
    state, video = farm.state, job.video
    skipped = _skip(job, farm, None)
    if skipped:
        return skipped
    lease = Lease(state, f"video:{video}", f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}",
                  farm.settings.lease_ttl)
    if not lease.acquire():
        # A live worker renders this video (we are a redelivered copy): check back later.
        log.info("%s: leased by %s, deferring", video, state.holder(f"video:{video}"))
        raise Requeue(farm.settings.lease_ttl, "deferred")
    try:
        return _skip(job, farm, lease) or _deliver_leased(job, farm, lease, interrupts)
    finally:
        lease.release()


def _skip(job: Job, farm: Farm, lease: Lease | None) -> dict | None:
    """A summary when the message needs no render: cancelled, superseded or already done.

    Before the lease a storage error only skips the early look; once the lease is held the
    marker must be checked, so a storage error defers the video. A marker counts only when it
    records the spec this generation was enqueued with.
    """
    state, video = farm.state, job.video
    if state.state(job.segment, video) == "cancelled":
        return {"video": video, "status": "cancelled"}
    current = state.generation(video)
    if job.generation is not None and job.generation < current:
        log.info("%s: message of generation %d superseded by %d, dropped", video,
                 job.generation, current)
        return {"video": video, "status": "superseded"}
    try:
        marker = done_marker(farm.storage, job.base, video)
    except StorageError as exc:
        if lease is None:
            return None
        log.warning("%s: cannot check the completion marker (%s); deferring", video, exc)
        _update_state(job, farm, lease, "retrying", last_error=f"deferred: {exc}")
        raise Requeue(min(30.0, farm.settings.lease_ttl), "deferred: storage unavailable") from exc
    if marker is None:
        return None
    recorded, wanted = marker.get("enqueued_digest"), enqueued_digest(job)
    if recorded and wanted and recorded != wanted:
        # A marker of another spec (e.g. enqueued again with another seed): not this one's.
        log.info("%s: the marker records spec %s, this generation's is %s: rendering", video,
                 recorded[:12], wanted[:12])
        return None
    _update_state(job, farm, lease, "done")
    return {"video": video, "status": "already done"}


def _update_state(job: Job, farm: Farm, lease: Lease | None, new_state: str,
                  **fields) -> None:
    """A state change outside the render, conditional like every other (lease when held,
    generation, never over ``cancelled``)."""
    why = farm.state.update_if_current(lease.key if lease else f"video:{job.video}",
                                       lease.token if lease else "", job.segment, job.video,
                                       new_state, generation=job.generation, **fields)
    if why != "ok":
        raise LeaseLost(f"{job.video}: not marked {new_state} ({_FENCED[why]})", _FENCED[why])


def _deliver_leased(job: Job, farm: Farm, lease: Lease,
                    interrupts: tuple[type[BaseException], ...]) -> dict:
    state, storage, settings, video = farm.state, farm.storage, farm.settings, job.video

    def update(new_state: str | None = None, clear: tuple[str, ...] = (), **fields) -> None:
        why = state.update_if_current(lease.key, lease.token, job.segment, video, new_state,
                                      clear, job.generation, **fields)
        if why != "ok":
            raise LeaseLost(f"{video}: {_FENCED[why]}; its state is left as it is", _FENCED[why])

    def fail(reason: str, **fields) -> None:
        log.error("%s: failed: %s", video, reason)
        update("failed", ("running",), last_error=reason, failed_at=time.time(), **fields)

    info = state.video(video)
    if info.get("running"):
        # The previous holder of the lease started and never finished: its worker was lost.
        lost = state.incr(video, "lost_deliveries")
        log.warning("%s: previous delivery was lost (%d so far)", video, lost)
        metrics.record_failure(state.r, "lost", lost >= settings.max_deliveries, job.worker)
        if lost >= settings.max_deliveries:
            fail(f"worker lost {lost} times while rendering this video (killed, out of memory "
                 f"or hard time limit); last holder {info['running']}")
            return {"video": video, "status": "failed"}
    update("running", running=lease.token, worker=socket.gethostname(), started_at=time.time(),
           gpu=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    spec = None
    try:
        spec = (spec_from_dict(job.spec) if job.spec
                else regenerate(settings, job.segment, job.recipe or {}, job.preset))
        if spec.id != video or spec.segment != job.segment:
            raise SpecError("id", f"task for {video} (segment {job.segment}) carries spec "
                            f"{spec.id}")
        scratch.remove_stale(settings.scratch, video,
                             leased=lambda other: state.holder(f"video:{other}") is not None)
        _check_scratch(settings.scratch, spec, settings.scratch_reserve_mb * 2**20)
        # A marker of another spec (an earlier enqueue) must not stand while its frames are
        # replaced, and frames of an earlier, unfinished delivery must not mix with this one's.
        marker_key = video_keys(job.base, video)["marker"]
        if storage.exists(marker_key):
            storage.delete([marker_key])
        removed = remove_frames(storage, job.base, video)
        if removed:
            log.info("%s: removed %d frames of an earlier delivery", video, removed)
        outcome, upload = _render_and_upload(job, farm, spec, lease)
    except LeaseLost as exc:
        if exc.status != "lease lost":  # superseded or cancelled: nobody will upload it
            shutil.rmtree(staging_dir(settings.scratch, video), ignore_errors=True)
        raise
    except shutdown.HandBack as exc:
        _hand_back(farm, video, update, str(exc))
    except GateFailed as exc:
        # No attempt passed: nothing may stay where loaders look, and a retry starts afresh.
        remove_frames(storage, job.base, video)
        shutil.rmtree(staging_dir(settings.scratch, video), ignore_errors=True)
        fail(str(exc), gate_failed=1, next_attempt=_last_attempt(job) + 1)
        metrics.record_failure(state.r, exc, True, job.worker)
        raise PermanentRenderError(str(exc)) from None
    except (SpecError, AssetError, PermanentRenderError) as exc:
        fail(str(exc))
        metrics.record_failure(state.r, exc, True, job.worker)
        suspect = isinstance(exc, AssetError | PermanentRenderError) and \
            not isinstance(exc, NeverFits)
        raise VideoFailed(str(exc), host_suspect=suspect) from None
    except TRANSIENT as exc:
        final = job.retries >= job.max_retries
        if final:
            fail(f"gave up after {job.retries} retries: {exc}")
        else:
            update("retrying", ("running",), last_error=str(exc))
        metrics.record_failure(state.r, exc, final, job.worker)
        raise
    except ScratchFull as exc:
        # The worker's disk, not the video: hand the video back for another worker.
        log.error("%s; handing the video back", exc)
        update("retrying", ("running",), last_error=str(exc))
        shutil.rmtree(staging_dir(settings.scratch, video), ignore_errors=True)
        metrics.record_failure(state.r, exc, False, job.worker)
        raise Requeue(5, HANDED_BACK_SCRATCH_FULL) from None
    except (RenderCrash, *interrupts) as exc:
        if shutdown.requested():  # the render died of the shutdown (e.g. SIGTERM to the group)
            _hand_back(farm, video, update, f"worker stopping ({exc})")
        _crashed(job, farm, exc, str(exc) or type(exc).__name__, update, fail)
    except Exception as exc:  # noqa: BLE001 - an unforeseen error of this delivery or host
        # Never left `running` until the reconciler notices: counted like a crash (retried
        # later, failed at the limit) and towards this worker's failures in a row.
        log.exception("%s: unexpected error", video)
        _crashed(job, farm, exc, f"unexpected error: {type(exc).__name__}: {exc}", update, fail)
    state.incr(video, "uploads")  # of this generation (marker written): a chaos run expects 1
    shutil.rmtree(outcome.staging, ignore_errors=True)
    timings = outcome.manifest["timings"]
    update("done", ("running",), frames=outcome.spec.frames, render_s=timings["render_total_s"],
           wall_s=timings["wall_s"], upload_s=upload["upload_s"], streamed=upload["streamed"],
           finished_at=time.time(), device=outcome.manifest["device"],
           attempt=outcome.spec.attempt)
    metrics.record_video(state.r, job.worker, outcome, upload, farm.settings.node_name,
                         gpu.claimed_index() or "none")
    return {"video": video, "status": "done", "frames": outcome.spec.frames,
            "device": outcome.manifest["device"], "render_s": timings["render_total_s"],
            "upload_s": upload["upload_s"]}


def _crashed(job: Job, farm: Farm, exc: BaseException, reason: str, update: Callable,
             fail: Callable) -> NoReturn:
    """A render that crashed or a delivery that broke: retried after a pause, or failed once the
    video crashed FARM_MAX_DELIVERIES times or used its retries."""
    crashes = farm.state.incr(job.video, "crashes")
    final = crashes >= farm.settings.max_deliveries or job.retries >= job.max_retries
    metrics.record_failure(farm.state.r, exc, final, job.worker)
    if final:
        # The queue's retry publishes nothing past max_retries: the video must end here.
        fail(f"render crashed {crashes} times (retries: {job.retries}): {reason}")
        raise VideoFailed(reason, host_suspect=True, crashed=True) from None
    update("retrying", ("running",), last_error=reason)
    raise RetryLater(5 * crashes, exc) from None


def _render_and_upload(job: Job, farm: Farm, spec: VideoSpec, lease: Lease
                       ) -> tuple[RenderOutcome, dict]:
    """Render (streaming frames while the lease holds), then upload and write the marker."""
    storage, settings, video = farm.storage, farm.settings, job.video
    staging = staging_dir(settings.scratch, video)
    streamer = (FrameStreamer(storage, job.base, staging, video,
                              may_write=lambda: not lease.lost)
                if settings.stream_upload and not settings.upload_archive else None)

    checked = [0.0, "ok"]  # when the generation was last checked, and what was found

    def abort() -> str | None:
        if lease.lost:
            return "the video's lease was lost (another worker owns it)"
        if time.monotonic() - checked[0] >= 2.0:  # a re-enqueue or cancel stops the render too
            checked[0] = time.monotonic()
            with contextlib.suppress(redis.RedisError):
                checked[1] = _may_commit(job, farm, lease)
        return None if checked[1] == "ok" else f"{video}: {_FENCED[checked[1]]}"

    try:
        with shutdown.render_phase():  # a stopping worker hands the video back
            outcome = _render(settings, spec, job.preset,
                              _attempt_budget(job.preset, spec, job.soft_limit),
                              streamer.frame_done if streamer else None, abort)
    except RenderAborted as exc:
        raise LeaseLost(str(exc), _FENCED.get(checked[1], "lease lost")) from None
    finally:
        streamed = streamer.close() if streamer else {}

    def fence() -> None:
        """Only the generation current now, holding the lease, not cancelled, may write the
        marker (one atomic check in Redis)."""
        why = _may_commit(job, farm, lease) if lease.held() else "lease"
        if why != "ok":
            raise LeaseLost(f"{video}: {_FENCED[why]} before the completion marker; not written",
                            _FENCED[why])

    fence()
    upload = upload_video(storage, job.base, outcome.staging, video, outcome.spec.to_yaml(),
                          outcome.manifest, streamed=streamed, fence=fence,
                          marker_fields={"generation": job.generation,
                                         "enqueued_digest": enqueued_digest(job)},
                          archive=settings.upload_archive)
    return outcome, upload


def _may_commit(job: Job, farm: Farm, lease: Lease) -> str:
    """"ok" while this delivery may complete the video: it holds the lease, its generation is
    the current one and the video is not cancelled; else why not."""
    return farm.state.update_if_current(lease.key, lease.token, job.segment, job.video,
                                        generation=job.generation)


def _hand_back(farm: Farm, video: str, update: Callable, reason: str) -> None:
    """The worker is stopping (worker/shutdown.py) and the Blender child is already killed: the
    video goes back to the queue at once, as it was (the adapter re-publishes the message with
    its id, arguments, priority and retries; this delivery is acknowledged). Not counted against
    the video; the lease is released (``deliver``) before the message is published."""
    log.warning("%s: %s; handing the video back", video, reason)
    staging = staging_dir(farm.settings.scratch, video)
    if not _rendered_marker(staging).exists():  # a finished render may still be uploaded later
        shutil.rmtree(staging, ignore_errors=True)
    update("queued", ("running",))
    raise Requeue(0, HANDED_BACK_STOPPING) from None


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
    return RenderOutcome(spec_from_dict(saved["spec"]), saved["manifest"], staging)


def _render(settings: Settings, spec: VideoSpec, preset: Preset | None, timeout: float | None,
            progress: Progress | None, abort: Callable[[], str | None]) -> RenderOutcome:
    staging = staging_dir(settings.scratch, spec.id)
    outcome = _reuse_staging(staging, spec)
    if outcome:
        log.info("%s: reusing the finished render in %s", spec.id, staging)
        return outcome
    try:
        lib = library(settings)
        outcome = render_attempts(spec, preset, lib.models_root, lib.textures_root,
                                  settings.scratch, progress=progress, timeout=timeout,
                                  library=lib, abort=abort, pool=worker_pool())
        _rendered_marker(staging).write_text(json.dumps({
            "input_digest": spec.digest(), "spec": outcome.spec.to_dict(),
            "manifest": outcome.manifest}))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ScratchFull(f"{spec.id}: scratch disk full: {exc}") from None
        raise
    return outcome


class NeverFits(PermanentRenderError):
    """The render is larger than the whole scratch filesystem: no hand-back can help."""


def _check_scratch(scratch: Path, spec: VideoSpec, margin: int) -> None:
    """Fail a render larger than the whole scratch filesystem (it can never fit on this worker);
    hand back one that cannot fit now, with ``margin`` bytes (FARM_SCRATCH_RESERVE_MB) to spare
    (the disk is full for the moment)."""
    scratch.mkdir(parents=True, exist_ok=True)
    need = estimate_space(spec).scratch
    usage = shutil.disk_usage(scratch)
    if need > usage.total:
        raise NeverFits(f"{spec.id}: the render needs about {need / 2**30:.1f} GiB of scratch, "
                        f"more than the whole scratch filesystem {scratch} "
                        f"({usage.total / 2**30:.1f} GiB): it can never fit; enqueue it with "
                        "fewer frames, a lower resolution or fewer outputs, or give the workers "
                        "a larger scratch")
    if usage.free < need + margin:
        raise ScratchFull(f"{spec.id}: scratch {scratch} has {usage.free / 2**20:.0f} MB free, "
                          f"the render needs about {(need + margin) / 2**20:.0f} MB")


def _attempt_budget(preset: Preset | None, spec: VideoSpec, soft: float | None) -> float | None:
    """Seconds one render (one gate attempt) may take: its preset's one-attempt limit, within
    what is left of the task's soft limit."""
    one = preset.time_limits(spec.frames, attempts=1)[0] if preset else None
    budgets = [b for b in (one, soft - 30 if soft else None) if b]
    return min(budgets) if budgets else None


def _last_attempt(job: Job) -> int:
    """The last attempt a delivery could sample (a retry of a gate failure starts after it)."""
    if job.spec:
        gate = job.spec.get("generation", {}).get("gate", {})
        return int(gate.get("last_attempt", job.spec.get("attempt", 0)))
    recipe = job.recipe or {}
    attempts = job.preset.quality_gate.max_attempts if job.preset else 1
    return recipe.get("first_attempt", 0) + attempts - 1
