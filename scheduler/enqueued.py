"""The scheduler's durable record of what a segment should contain, kept in the bucket.

Redis is the farm's working state, and Redis can lose the last second of writes (AOF
``everysec``) or a whole database. ``finalize`` must not conclude a segment is complete from what
Redis still remembers, so every enqueue (and re-send) also writes, before it publishes, one
object ``enqueued/<segment>/<time>-<id>.json`` (beside the segments' folders) listing each video
of the batch with its generation and spec digest. Objects are only added, never rewritten (two
schedulers never race on one object); a video's entry with the highest generation (then the
latest time) is the one that counts: its marker must record that digest.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from farm.io.layout import enqueued_prefix, join
from farm.io.storage import Storage
from farm.model.spec import VideoSpec


def write_record(storage: Storage, segment: int, specs: list[VideoSpec],
                 generations: dict[str, int]) -> str:
    """Record one enqueued batch of a segment; returns its key."""
    now = time.time()
    body = {"written_at": now, "videos": {
        spec.id: {"generation": generations[spec.id], "digest": spec.digest()}
        for spec in specs}}
    key = join(enqueued_prefix(segment), f"{now:017.6f}-{uuid.uuid4().hex[:8]}.json")
    storage.put_bytes(key, json.dumps(body, sort_keys=True).encode())
    return key


def read_record(storage: Storage, segment: int) -> dict[str, dict]:
    """video -> its latest entry (``generation``, ``digest``, ``written_at``) over every enqueue
    of the segment."""
    keys = storage.list(enqueued_prefix(segment))
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(storage.get_bytes, keys))
    latest: dict[str, dict] = {}
    for body in bodies:
        batch = json.loads(body or b"{}")
        for video, entry in batch.get("videos", {}).items():
            entry = {**entry, "written_at": batch.get("written_at", 0.0)}
            known = latest.get(video)
            if known is None or (entry["generation"], entry["written_at"]) > \
                    (known["generation"], known["written_at"]):
                latest[video] = entry
    return latest
