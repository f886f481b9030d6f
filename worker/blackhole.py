"""A worker that fails every video it takes (a broken GPU, driver or host) stops, and gives
those videos back (Deadline's failure cap, Flamenco's blocklist).

Each failure of the kind a broken host produces (a render crash or watchdog kill, a time limit,
a missing or unreadable asset) is recorded in Redis per worker (``farm:worker:<node>:failures``,
video -> what was counted), and any delivered video clears the record. When
``FARM_WORKER_FAILURE_LIMIT`` (3) *different* videos failed in a row on one worker, it trips:
it stops consuming (``cancel_consumer`` for itself), writes ``FARM_UNHEALTHY_FILE`` (the compose
healthcheck), records itself in ``farm:workers:unhealthy`` (``scheduler status``, the exporter's
``farm_worker_unhealthy``) and gives the videos back: a crash it counted is uncounted (the
video's retry message runs on another worker), and a video it failed is queued again and its
message re-published. Any message the tripped worker still gets (an ETA message it held) is handed
back at once. A worker restarted by its operator starts healthy.

Failures that belong to the video (an invalid spec, the quality gate, a render too large for
any scratch) are not counted: they would fail on every worker, and tripping on them would stop
healthy workers one after the other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from farm.queue.state import PREFIX, UNHEALTHY, FarmState
from farm.settings import current
from worker import scratch

log = logging.getLogger(__name__)
HANDED_BACK_UNHEALTHY = "handed back: worker unhealthy"


def failure_limit() -> int:
    return current().worker_failure_limit


def _failures_key(node: str) -> str:
    return f"{PREFIX}worker:{node}:failures"


def unhealthy(state: FarmState, node: str) -> str | None:
    """Why ``node`` stopped itself, or None while it is healthy."""
    raw = state.r.hget(UNHEALTHY, node)
    return json.loads(raw)["reason"] if raw else None


def clear(state: FarmState, node: str) -> None:
    """At worker start: a restarted worker is healthy until it fails again."""
    pipe = state.r.pipeline(transaction=False)
    pipe.hdel(UNHEALTHY, node)
    pipe.delete(_failures_key(node))
    pipe.execute()


def note_ok(state: FarmState, node: str) -> None:
    state.r.delete(_failures_key(node))


def note_failure(state: FarmState, node: str, entry: dict) -> dict[str, dict]:
    """Record a failure of ``entry['video']`` (``kind``: "crash" = counted, a retry follows;
    "failed" = the video ended failed, ``message`` how to publish it again). Returns the
    recorded failures once the limit of different videos is reached (the caller trips), else
    {}."""
    key = _failures_key(node)
    pipe = state.r.pipeline(transaction=True)
    pipe.hset(key, entry["video"], json.dumps(entry))
    pipe.hgetall(key)
    failures = {v: json.loads(raw) for v, raw in pipe.execute()[1].items()}
    return failures if len(failures) >= failure_limit() else {}


def trip(state: FarmState, node: str, failures: dict[str, dict], app, queue: str,
         publish: Callable[[dict], None]) -> bool:
    """Stop consuming, mark the worker unhealthy and give ``failures`` back; only once per
    worker (returns whether this call did it)."""
    reason = (f"{len(failures)} different videos failed in a row on this worker "
              f"({', '.join(sorted(failures))}); it stops consuming {queue!r} and gives them "
              "back: check its GPU, driver and asset mounts, then restart it")
    if not state.r.hsetnx(UNHEALTHY, node, json.dumps({"reason": reason, "since": time.time()})):
        return False
    log.error("%s", reason)
    try:
        scratch.health_file(node).write_text(reason + "\n")
    except OSError as exc:
        log.error("cannot write the health file %s: %s", scratch.health_file(node), exc)
    try:
        app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
    except Exception as exc:  # noqa: BLE001 - tasks it still gets are handed back anyway
        log.error("cannot cancel the consumer of %s: %s", node, exc)
    for entry in failures.values():
        give_back(state, entry, publish)
    state.r.delete(_failures_key(node))
    return True


def give_back(state: FarmState, entry: dict, publish: Callable[[dict], None]) -> None:
    """Undo what this worker counted against a video, and queue it again if it ended failed
    (only while its generation is the one that failed here and nobody cancelled it)."""
    video, generation = entry["video"], entry.get("generation")
    if generation is not None and state.generation(video) != generation:
        return  # enqueued again since: the new generation starts afresh
    if entry.get("crashed"):
        state.r.eval("local n = redis.call('hincrby', KEYS[1], 'crashes', -1) "
                     "if n < 0 then redis.call('hset', KEYS[1], 'crashes', 0) end return n",
                     1, f"{PREFIX}video:{video}")
    if entry["kind"] != "failed":
        return
    if state.state(entry["segment"], video) != "failed":
        return
    why = state.update_if_current(f"video:{video}", "", entry["segment"], video, "queued",
                                  ("last_error", "failed_at", "gate_failed", "next_attempt",
                                   "running"), generation)
    if why == "ok":
        log.warning("%s: failed on an unhealthy worker; queued again for another", video)
        publish(entry["message"])
