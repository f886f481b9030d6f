"""Publishing videos to the queue: one task per video (its recipe or whole spec, its preset
resolved into data, its time limits), and re-sending videos nothing will render (stranded)."""

from __future__ import annotations

import time

from farm.model.presets import load_preset
from farm.model.spec import SpecError, VideoSpec
from farm.queue import metrics
from farm.queue.app import TASK_NAME, VISIBILITY_TIMEOUT, app, task_id
from farm.queue.broker import broker_task_ids
from farm.settings import flag
from scheduler.context import Context

BATCH = 500
# Celery on Redis serves priority 0 first; a message sent without one would be 0 and jump ahead
# of every explicitly prioritised video. The documented default is the middle.
DEFAULT_PRIORITY = 5


def task_kwargs(spec: VideoSpec, preset: dict, whole: bool = False) -> dict:
    """A generated spec travels as its recipe (workers regenerate it and check the digest);
    any other spec (imported, or read from a file a user may have edited) travels whole. Either
    way with its preset resolved into data (``preset``: ``Preset.to_dict()``): workers never
    re-read ``configs/``."""
    if spec.source == "generated" and not whole:
        recipe = {"video": spec.id, "segment": spec.segment, "index": spec.index,
                  "seed": spec.seed, "preset": preset, "digest": spec.digest()}
        first_attempt = spec.generation.get("gate", {}).get("first_attempt", 0)
        return {**recipe, "first_attempt": first_attempt} if first_attempt else recipe
    return {"video": spec.id, "segment": spec.segment, "spec": spec.to_dict(), "preset": preset}


def time_limits(spec: VideoSpec) -> tuple[int, int]:
    """The task's (soft, hard) limits; refused when the hard one outlasts the broker's visibility
    timeout (Redis would deliver the message again while its first delivery still renders)."""
    preset = load_preset(spec.preset)
    attempts = None if spec.source == "generated" else 1
    soft, hard = preset.time_limits(spec.frames, attempts)
    if hard > VISIBILITY_TIMEOUT and not flag("FARM_SHORT_VISIBILITY_OK"):
        raise SpecError(spec.id, f"its time limit ({hard} s for {spec.frames} frames of "
                        f"{preset.name}) exceeds the broker's visibility timeout "
                        f"({VISIBILITY_TIMEOUT} s); set FARM_VISIBILITY_TIMEOUT above {hard} on "
                        "every worker and the scheduler, or render fewer frames")
    return soft, hard


def send(ctx: Context, specs: list[VideoSpec], priority: int | None, whole: bool = False) -> None:
    """Register specs in Redis and publish one task per video."""
    limits = {spec.id: time_limits(spec) for spec in specs}  # refuse before registering any
    by_segment: dict[int, list[VideoSpec]] = {}
    for spec in specs:
        by_segment.setdefault(spec.segment, []).append(spec)
    generations: dict[str, int] = {}
    for segment, group in by_segment.items():
        generations.update(ctx.state.register(segment, group))
    presets = {name: load_preset(name).to_dict() for name in {spec.preset for spec in specs}}
    # kombu's publish batch sends the LPUSHes through one Redis pipeline per batch
    with app.producer_or_acquire() as producer, producer.batch(max_size=BATCH):
        for spec in specs:
            soft, hard = limits[spec.id]
            generation = generations[spec.id]
            kwargs = task_kwargs(spec, presets[spec.preset], whole)
            app.send_task(
                TASK_NAME, kwargs={**kwargs, "generation": generation},
                task_id=task_id(spec.id, generation), producer=producer,
                priority=DEFAULT_PRIORITY if priority is None else priority,
                soft_time_limit=soft, time_limit=hard, ignore_result=True,
                argsrepr="()", kwargsrepr=f"{{'video': '{spec.id}', 'segment': {spec.segment}}}",
            )


def stranded_videos(ctx: Context, segments: list[int]) -> dict[int, dict[str, float]]:
    """Pending videos (queued, retrying, running) with no message in Redis and no live lease,
    with the time each was first found so: nothing renders them unless they are sent again."""
    present = broker_task_ids(ctx.state.r)
    found: dict[int, dict[str, float]] = {}
    for segment in segments:
        now = {video for video, st in ctx.state.states(segment).items()
               if st in ("queued", "retrying", "running")
               and task_id(video, ctx.state.generation(video)) not in present
               and ctx.state.holder(f"video:{video}") is None}
        found[segment] = ctx.state.stranded_since(segment, now)
    return found


def reconcile_once(ctx: Context, segments: list[int], min_age_s: float = 0.0) -> list[str]:
    """Re-send videos stranded for at least ``min_age_s`` (a video between its registration
    and its publish, or between a retry's ack and its republish, looks stranded an instant)."""
    now = time.time()
    resend = []
    for segment, stranded in stranded_videos(ctx, segments).items():
        for video, since in sorted(stranded.items()):
            spec = ctx.state.spec(segment, video)
            if spec and now - since >= min_age_s:
                resend.append(VideoSpec.from_dict(spec))
    send(ctx, resend, None)
    metrics.record_reconcile(ctx.state.r, len(resend))
    return [s.id for s in resend]
