"""What the broker (Redis, through kombu's layout) holds: the ids of tasks a worker will still
run. Knows kombu's Redis keys: one list per queue and priority (``render``, ``render:3``, ...) and
the ``unacked`` hash of delivered, unacknowledged messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from farm.queue.app import app


def broker_task_ids(r) -> set[str]:
    """Task ids a worker will still run: messages queued in a priority list, or held
    unacknowledged with an ETA still ahead (a countdown retry, a deferral).

    A message held unacknowledged without one belongs to a delivery in progress, which holds the
    video's lease within seconds, or to a worker killed outright, whose message only returns
    after the visibility timeout (hours): with the lease free for a while, that video counts as
    stranded and is sent again as a new generation (the old message is dropped if it returns).
    """
    ids = set()
    for key in r.scan_iter(f"{app.conf.task_default_queue}*"):
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
