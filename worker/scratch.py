"""Scratch-disk hygiene: stale staging folders go, a worker whose scratch stays full stops.

- ``remove_stale``: at task start, ``<scratch>/<video>.staging`` folders of *other* videos that
  nothing wrote to for ``FARM_STAGING_MAX_AGE`` seconds (3600) and whose video no live worker
  leases are deleted. They are left by renders handed back or cut off, and by finished renders
  whose upload retry went to another worker; on a RAM-backed scratch they would fill it.
- ``note_full`` / ``note_ok``: a worker that hands back ``FARM_SCRATCH_FULL_LIMIT`` (3) videos in a
  row because its scratch is full stops consuming (``cancel_consumer`` for itself), logs an error
  and marks itself unhealthy (``FARM_UNHEALTHY_FILE``, which the compose healthcheck tests), instead
  of taking and handing back every video of the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from farm.io.layout import staged_video
from farm.settings import current

log = logging.getLogger(__name__)


def max_age_s() -> float:
    return current().staging_max_age


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            with contextlib.suppress(OSError):  # removed while we look: being written
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def remove_stale(scratch: Path, keep: str, leased=None, age_s: float | None = None
                 ) -> list[str]:
    """Delete stale staging folders of videos other than ``keep``; return their names.

    ``leased(video) -> bool`` says whether a live worker holds the video's lease (a scratch
    shared by several workers): such a folder is kept whatever its age.
    """
    age_s = max_age_s() if age_s is None else age_s
    removed = []
    try:
        entries = list(Path(scratch).iterdir())
    except OSError:
        return removed
    now = time.time()
    for folder in entries:
        video = staged_video(folder)
        if video is None or video == keep or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            idle = now - _newest_mtime(folder)
        except OSError:
            continue
        if idle < age_s:
            continue
        try:
            if leased is not None and leased(video):
                continue
        except Exception as exc:  # noqa: BLE001 - cannot tell: keep it
            log.warning("%s: cannot check the lease of %s (%s); kept", folder, video, exc)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed stale staging folder %s (untouched for %.0f s)", folder, idle)
        removed.append(folder.name)
    return removed


# --- a scratch that stays full -------------------------------------------------------------------

_full_in_a_row = 0


def full_limit() -> int:
    return current().scratch_full_limit


def health_file(nodename: str | None = None) -> Path:
    """Where an unhealthy worker says so: FARM_UNHEALTHY_FILE, else one per Celery node name."""
    path = current().unhealthy_file
    if path:
        return path
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in nodename or "worker")
    return Path(tempfile.gettempdir()) / f"farm-worker-{safe}.unhealthy"


def clear_health(nodename: str | None = None) -> None:
    """At worker start: a new worker process is healthy until it says otherwise."""
    health_file(nodename).unlink(missing_ok=True)


def note_ok() -> None:
    global _full_in_a_row
    _full_in_a_row = 0


def note_full(app, nodename: str, queue: str, reason: str) -> bool:
    """Count a scratch-full hand-back; at the limit stop consuming ``queue`` on this worker.

    Returns True when the worker stopped consuming.
    """
    global _full_in_a_row
    _full_in_a_row += 1
    if _full_in_a_row < full_limit():
        return False
    message = (f"scratch full on {_full_in_a_row} videos in a row ({reason}); this worker stops "
               f"consuming {queue!r}: free or enlarge its scratch disk and restart it")
    log.error(message)
    try:
        health_file(nodename).write_text(message + "\n")
    except OSError as exc:
        log.error("cannot write the health file %s: %s", health_file(nodename), exc)
    try:
        app.control.cancel_consumer(queue, destination=[nodename], reply=True, timeout=5)
    except Exception as exc:  # noqa: BLE001 - the broker is away: the next hand-back tries again
        log.error("cannot cancel the consumer of %s: %s", nodename, exc)
        return False
    return True
