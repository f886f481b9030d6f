"""The render task: a thin Celery adapter over ``worker.delivery`` (one task per video).

Retries: storage and broker errors retry with exponential backoff and jitter (caught in the
delivery, so that the retry's ETA is computed by Redis's clock; one that happens before or after
it retries after the same backoff, counted down here); the limits come from the worker's settings
(FARM_MAX_RETRIES, FARM_RETRY_BACKOFF, FARM_RETRY_BACKOFF_MAX), read when it starts;
a crashed render retries after a pause (``RetryLater``); a deferred or handed-back video is
published again (``Requeue``) without counting as a retry. Every ETA is Redis's clock plus the
delay, never this host's clock alone.
"""

from __future__ import annotations

import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from farm.io.layout import segment_base
from farm.io.storage import open_storage
from farm.model.presets import Preset, find_preset, preset_from_data
from farm.queue.app import app
from farm.queue.broker import TASK_NAME
from farm.queue.state import FarmState, connect
from farm.settings import Settings, current
from worker import blackhole, scratch
from worker.delivery import (
    HANDED_BACK_SCRATCH_FULL,
    TRANSIENT,
    Farm,
    Job,
    LeaseLost,
    Requeue,
    RetryLater,
    VideoFailed,
    deliver,
)

log = logging.getLogger(__name__)


@app.task(bind=True, name=TASK_NAME)
def render_video(self, video: str, segment: int, spec: dict | None = None, index: int | None = None,
                 seed: int | None = None, preset: dict | str | None = None,
                 digest: str | None = None, first_attempt: int = 0,
                 generation: int | None = None) -> dict:
    """Render one video. ``spec`` is the whole spec, or (index, seed, digest and the first gate
    attempt) its recipe; ``preset`` the spec's preset resolved by the scheduler (a name in
    messages of earlier versions); ``generation`` the enqueue it belongs to."""
    settings = current()
    recipe = None if spec else {"index": index, "seed": seed, "digest": digest,
                                "first_attempt": first_attempt}
    try:
        return _render(self, settings, video, segment, spec, recipe, preset, generation)
    except TRANSIENT as exc:  # storage or broker, outside the delivery: retried after a backoff
        raise self.retry(exc=exc, countdown=_backoff(settings, self.request.retries),
                         max_retries=settings.max_retries) from None


def _backoff(settings: Settings, retries: int) -> float:
    """Seconds before the next transient-error retry: exponential, with full jitter."""
    return get_exponential_backoff_interval(settings.retry_backoff, retries,
                                            settings.retry_backoff_max, full_jitter=True)


def _render(self, settings: Settings, video: str, segment: int, spec: dict | None,
            recipe: dict | None, preset: dict | str | None, generation: int | None) -> dict:
    request = self.request
    job = Job(video=video, segment=segment, base=segment_base(segment),
              preset=_preset(preset, spec), spec=spec,
              recipe=recipe, generation=generation, retries=request.retries,
              max_retries=settings.max_retries,
              soft_limit=request.timelimit[1] if request.timelimit else None,
              worker=request.hostname or "")
    farm = Farm(FarmState(connect(settings.redis_url_with_password)), open_storage(settings),
                settings)
    node = request.hostname or ""
    if blackhole.unhealthy(farm.state, node):  # stopped itself; a message it still held
        _requeue(self, farm.state, 0)
        time.sleep(settings.scratch_full_pause)
        return {"video": video, "status": blackhole.HANDED_BACK_UNHEALTHY}
    try:
        result = deliver(job, farm, interrupts=(SoftTimeLimitExceeded,))
    except Requeue as again:
        full = again.status == HANDED_BACK_SCRATCH_FULL
        if full:  # after a few in a row, stop consuming first: the copy published next is others'
            queue = (request.delivery_info or {}).get("routing_key") or app.conf.task_default_queue
            scratch.note_full(app, request.hostname, queue, f"{video} {again.status}")
        _requeue(self, farm.state, again.countdown)
        if full:
            time.sleep(settings.scratch_full_pause)  # let another worker take it
        return {"video": video, "status": again.status}
    except RetryLater as later:  # a crash, counted against the video
        _note_failure(self, farm, job, "crash", crashed=True)
        raise self.retry(exc=later.cause, eta=farm.state.eta(later.countdown),
                         max_retries=settings.max_retries) from None
    except VideoFailed as failed:
        if failed.host_suspect:
            _note_failure(self, farm, job, "failed", crashed=failed.crashed)
        raise
    except TRANSIENT as exc:  # storage or broker: retried with backoff, an ETA by Redis's clock
        countdown = _backoff(settings, request.retries)
        try:
            eta = farm.state.eta(countdown)
        except redis.RedisError:  # Redis itself is away: this host's clock will do
            raise self.retry(exc=exc, countdown=countdown,
                             max_retries=settings.max_retries) from None
        raise self.retry(exc=exc, eta=eta, max_retries=settings.max_retries) from None
    except LeaseLost as exc:
        # Another worker took the video (this one stalled past its lease), a later generation
        # superseded this one, or it was cancelled: this message is acknowledged, nothing more.
        log.warning("%s", exc)
        return {"video": video, "status": exc.status}
    if result.get("status") == "done":
        scratch.note_ok()
        blackhole.note_ok(farm.state, node)
    return result


def _note_failure(task, farm: Farm, job: Job, kind: str, crashed: bool) -> None:
    """Count a failure against this worker; at the limit it stops and gives the videos back."""
    request = task.request
    message = {"kwargs": request.kwargs, "id": request.id,
               "priority": (request.delivery_info or {}).get("priority"),
               "limits": list(request.timelimit or (None, None)), "retries": request.retries}
    failures = blackhole.note_failure(farm.state, job.worker, {
        "video": job.video, "segment": job.segment, "generation": job.generation, "kind": kind,
        "crashed": crashed, "message": message})
    if failures:
        queue = (request.delivery_info or {}).get("routing_key") or app.conf.task_default_queue
        blackhole.trip(farm.state, job.worker, failures, app, queue, _publish)


def _publish(message: dict) -> None:
    """Publish a recorded message again (a video given back by an unhealthy worker)."""
    hard, soft = message["limits"]
    render_video.apply_async(kwargs=message["kwargs"], task_id=message["id"],
                             priority=message["priority"], soft_time_limit=soft,
                             time_limit=hard, ignore_result=True, retries=message["retries"])


def _preset(preset: dict | str | None, spec: dict | None) -> Preset | None:
    """The message's preset; a name (or none: a whole spec) is looked up in this worker's
    configs, and a spec of a preset unknown here gets the default gate."""
    if isinstance(preset, dict):
        return preset_from_data(preset)
    return find_preset(preset or (spec or {}).get("preset", "bl30k"))


def _requeue(task, state: FarmState, countdown: float) -> None:
    """Publish this task again for later (an ETA by Redis's clock), without counting it as a
    retry of the video."""
    request = task.request
    task.apply_async(kwargs=request.kwargs, eta=state.eta(countdown), task_id=request.id,
                     priority=(request.delivery_info or {}).get("priority"),
                     soft_time_limit=request.timelimit[1], time_limit=request.timelimit[0],
                     ignore_result=True, retries=request.retries)
