"""Publishing videos to the queue: one task per video (its recipe or whole spec, its preset
resolved into data, its time limits), and re-sending videos nothing will render (stranded)."""

from __future__ import annotations

import time

from farm.io.outputs import estimate_space
from farm.model.presets import Preset, load_preset, preset_from_data
from farm.model.spec import SpecError, VideoSpec
from farm.model.validate import spec_from_dict
from farm.queue import metrics
from farm.queue.app import app, visibility_timeout
from farm.queue.broker import TASK_NAME, task_id
from farm.settings import Settings
from scheduler.context import Context
from scheduler.enqueued import write_record
from scheduler.progress import stranded_videos

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


def time_limits(settings: Settings, spec: VideoSpec, preset: Preset) -> tuple[int, int]:
    """The task's (soft, hard) limits; refused when the hard one outlasts the broker's visibility
    timeout (Redis would deliver the message again while its first delivery still renders)."""
    attempts = None if spec.source == "generated" else 1
    soft, hard = preset.time_limits(spec.frames, attempts)
    timeout = visibility_timeout(settings)
    if hard > timeout and not settings.short_visibility_ok:
        raise SpecError(spec.id, f"its time limit ({hard} s for {spec.frames} frames of "
                        f"{preset.name}) exceeds the broker's visibility timeout "
                        f"({timeout} s); set FARM_VISIBILITY_TIMEOUT above {hard} on "
                        "every worker and the scheduler, or render fewer frames")
    return soft, hard


def check_scratch(settings: Settings, spec: VideoSpec) -> None:
    """Refused when its render cannot fit the workers' scratch (``FARM_SCRATCH_SIZE_MB``, with the
    ``FARM_SCRATCH_RESERVE_MB`` every worker keeps free): it would never render anywhere."""
    size_mb, reserve_mb = settings.scratch_size_mb, settings.scratch_reserve_mb
    need_mb = estimate_space(spec).scratch / 2**20
    if need_mb + reserve_mb > size_mb:
        raise SpecError(spec.id, f"its render needs about {need_mb:.0f} MB of scratch (+ "
                        f"{reserve_mb} MB reserve), more than the workers' {size_mb} MB "
                        "(FARM_SCRATCH_SIZE_MB): render fewer frames, a lower resolution or "
                        "fewer outputs, or give the workers a larger scratch and set "
                        "FARM_SCRATCH_SIZE_MB to it")


def resolve_presets(specs: list[VideoSpec], held: dict[str, dict] | None = None
                    ) -> dict[str, dict]:
    """video -> its preset resolved into data: the one ``held`` for it (the enqueue record of a
    re-send), else ``configs/``'s, read once per name."""
    by_name: dict[str, dict] = {}
    resolved = {}
    for spec in specs:
        preset = (held or {}).get(spec.id)
        if preset is None:
            if spec.preset not in by_name:
                by_name[spec.preset] = load_preset(spec.preset).to_dict()
            preset = by_name[spec.preset]
        resolved[spec.id] = preset
    return resolved


def held_presets(ctx: Context, videos: list[str]) -> dict[str, dict]:
    """The presets the videos were enqueued with (their enqueue record in Redis), where known."""
    return {v: p for v in videos if (p := ctx.state.preset(v)) is not None}


def send(ctx: Context, specs: list[VideoSpec], priority: int | None, whole: bool = False,
         held: dict[str, dict] | None = None) -> None:
    """Register specs in Redis, record them in the bucket (``scheduler.enqueued``) and publish
    one task per video. A re-send passes ``held``: the
    presets of the videos' enqueue record (``held_presets``), so an edit of ``configs/`` after
    the enqueue changes nothing of an enqueued video."""
    presets = resolve_presets(specs, held)
    limits = {spec.id: time_limits(ctx.settings, spec, preset_from_data(presets[spec.id]))
              for spec in specs}  # refuse before registering any
    for spec in specs:
        check_scratch(ctx.settings, spec)
    by_segment: dict[int, list[VideoSpec]] = {}
    for spec in specs:
        by_segment.setdefault(spec.segment, []).append(spec)
    generations: dict[str, int] = {}
    for segment, group in by_segment.items():
        registered = ctx.state.register(segment, group, presets=presets)
        # the bucket's own record of what the segment should hold, before anything is published
        write_record(ctx.storage, segment, group, registered)
        generations.update(registered)
    # kombu's publish batch sends the LPUSHes through one Redis pipeline per batch
    with app.producer_or_acquire() as producer, producer.batch(max_size=BATCH):
        for spec in specs:
            soft, hard = limits[spec.id]
            generation = generations[spec.id]
            kwargs = task_kwargs(spec, presets[spec.id], whole)
            app.send_task(
                TASK_NAME, kwargs={**kwargs, "generation": generation},
                task_id=task_id(spec.id, generation), producer=producer,
                priority=DEFAULT_PRIORITY if priority is None else priority,
                soft_time_limit=soft, time_limit=hard, ignore_result=True,
                argsrepr="()", kwargsrepr=f"{{'video': '{spec.id}', 'segment': {spec.segment}}}",
            )


def reconcile_once(ctx: Context, segments: list[int], min_age_s: float = 0.0) -> list[str]:
    """Re-send videos stranded for at least ``min_age_s`` (a video between its registration
    and its publish, or between a retry's ack and its republish, looks stranded an instant)."""
    found = stranded_videos(ctx, segments)
    now = time.time()  # after: a video first found stranded just now has an age of >= 0
    resend = []
    for segment, stranded in found.items():
        for video, since in sorted(stranded.items()):
            spec = ctx.state.spec(segment, video)
            if spec and now - since >= min_age_s:
                resend.append(spec_from_dict(spec))
    send(ctx, resend, None, held=held_presets(ctx, [s.id for s in resend]))
    metrics.record_reconcile(ctx.state.r, len(resend))
    return [s.id for s in resend]
