"""A segment's progress: counts per state, rates, ETA and stranded videos (``scheduler status``).
Redis only: no Celery, no storage, no asset library."""

from __future__ import annotations

import time

from farm.queue.broker import broker_task_ids, task_id
from farm.queue.state import STATES
from scheduler.context import Context


def segment_status(ctx: Context, segment: int, window: float, stranded_after: float = 120.0,
                   since: dict[str, float] | None = None) -> dict:
    """A segment's counts, rates and ETA; ``since``: its stranded videos (``stranded_videos``)."""
    counts = ctx.state.counts(segment)
    if since is None:
        since = stranded_videos(ctx, [segment])[segment]
    stranded = sorted(v for v, t in since.items() if time.time() - t >= stranded_after)
    total = sum(counts.values())
    started = ctx.state.started(segment)
    if started:  # a segment younger than the window: rate over its age
        window = max(1.0, min(window, time.time() - started))
    videos, frames = ctx.state.recent(window, segment)
    remaining = sum(counts.get(s, 0) for s in ("queued", "running", "retrying"))
    per_hour = videos * 3600 / window
    return {
        "segment": segment, "total": total,
        **{s: counts.get(s, 0) for s in STATES},
        "percent_done": round(100 * counts.get("done", 0) / total, 1) if total else 0.0,
        "videos_per_hour": round(per_hour, 1), "frames_per_s": round(frames / window, 2),
        "eta_s": round(remaining / per_hour * 3600) if per_hour > 0 and remaining else None,
        "stranded": stranded,  # pending with no message and no lease for over stranded_after
    }


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
