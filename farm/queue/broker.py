"""What the broker (Redis, through kombu's layout) holds: the ids of tasks a worker will still
run. Knows kombu's Redis keys: one list per queue and priority (``render``, ``render:3``, ...) and
the ``unacked`` hash of delivered, unacknowledged messages; and the names the farm's messages go
by (the queue, the task, task ids). No Celery here: ``scheduler status`` reads the broker without
loading it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

QUEUE = "render"
TASK_NAME = "farm.render_video"


def task_id(video: str, generation: int) -> str:
    """One task id per enqueue of a video (its generation, kept in Redis): revoking a cancelled
    generation never discards a later enqueue of the same video."""
    return f"render-{video}-{generation}"


def broker_task_ids(r) -> set[str]:
    """Task ids a worker will still run: messages queued in a priority list, or held
    unacknowledged with an ETA still ahead (a countdown retry, a deferral).

    A message held unacknowledged without one belongs to a delivery in progress, which holds the
    video's lease within seconds, or to a worker killed outright, whose message only returns
    after the visibility timeout (hours): with the lease free for a while, that video counts as
    stranded and is sent again as a new generation (the old message is dropped if it returns).
    """
    ids = set()
    for key in r.scan_iter(f"{QUEUE}*"):
        if r.type(key) == "list":
            for raw in r.lrange(key, 0, -1):
                ids.add(json.loads(raw)["headers"]["id"])
    seconds, micros = r.time()  # Redis's clock: the one the ETAs were computed with
    now = datetime.fromtimestamp(seconds + micros / 1e6, UTC)
    for raw in r.hvals("unacked"):
        headers = json.loads(raw)[0]["headers"]
        eta = headers.get("eta")
        if eta and datetime.fromisoformat(eta).astimezone(UTC) > now:
            ids.add(headers["id"])
    return ids
