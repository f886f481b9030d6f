"""Stopping a worker without stranding its video: hand the render back at once.

A redeploy sends SIGTERM to the worker (Celery's main process). Celery's warm shutdown would wait
for the render to finish (minutes to hours) and a SIGKILL after the grace period would leave the
late-acknowledged message unacknowledged until the Redis visibility timeout (hours). Celery's cold
shutdown (``REMAP_SIGTERM=SIGQUIT``) kills the task process outright and relies on kombu restoring
unacknowledged messages when the channel closes, which its documentation warns is not guaranteed,
and leaves the video's ``running`` mark and lease behind (the next delivery would count a lost
worker and wait for the lease to expire).

Instead, the main process keeps Celery's warm shutdown and, as it starts
(``worker_shutting_down``), sends SIGTERM to the pool processes running a task. In a pool process
SIGTERM raises ``HandBack`` in the render (the Blender child is killed on the way out, see
``worker.process.runner``); the task then clears the video's running mark, releases its lease, publishes
the task again with the same id, arguments, priority and retry count, and returns, so Celery
acknowledges the original and the warm shutdown completes within seconds. A task past its render
(uploading) finishes normally; one not yet rendering hands back when it reaches the render.

``stop_worker`` does the same from inside the worker (a lost GPU lease) with a non-zero exit code,
and exits by force if Celery has not stopped after ``FARM_SHUTDOWN_FORCE_S`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

from farm.settings import current

log = logging.getLogger(__name__)


class HandBack(BaseException):  # noqa: N818 - not an error: a BaseException so nothing swallows it
    """Raised in a render when the worker is stopping: the video goes back to the queue."""


# --- main process ------------------------------------------------------------------------------


def active_task_pids() -> list[int]:
    """Pool processes running a task right now (main process)."""
    from celery.worker import state

    for _ in range(5):  # the set may change under a thread's feet (a lost GPU lease)
        try:
            return sorted({r.worker_pid for r in list(state.active_requests) if r.worker_pid})
        except RuntimeError:
            continue
    return []


def hand_back_active(*_args, **_kwargs) -> list[int]:
    """Tell every pool process running a task to hand its video back (main process)."""
    pids = active_task_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if pids:
        print(f"worker stopping: handing back the tasks of pool processes {pids}",
              file=sys.__stderr__, flush=True)
    return pids


def stop_worker(exitcode: int, reason: str) -> None:
    """Stop consuming, hand back the running render and exit with ``exitcode`` (any thread of
    the main process)."""
    from celery.worker import state

    log.error("%s: stopping the worker (exit code %d)", reason, exitcode)
    print(f"worker stopping: {reason}", file=sys.__stderr__, flush=True)
    pids = hand_back_active()
    state.should_stop = exitcode  # warm shutdown: the event loop raises WorkerShutdown(exitcode)
    force = current().shutdown_force_s

    def _force() -> None:
        for pid in pids + active_task_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"worker did not stop within {force:.0f} s; exiting", file=sys.__stderr__,
              flush=True)
        os._exit(exitcode)

    timer = threading.Timer(force, _force)
    timer.daemon = True
    timer.start()


# --- pool process (where the task runs) --------------------------------------------------------

_in_task = False
_in_render = False
_requested = False
_raised = False
_previous = None  # billiard's own SIGTERM handler (raises SystemExit): used when idle


def _on_sigterm(signum, frame) -> None:
    global _requested, _raised
    if not _in_task:  # idle: exit as billiard would
        previous = _previous if callable(_previous) else None
        signal.signal(signum, _previous if _previous is not None else signal.SIG_DFL)
        if previous:
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)
        return
    _requested = True
    if _in_render and not _raised:
        _raised = True
        raise HandBack("the worker is shutting down")


def install_pool_process() -> None:
    """In a pool process: SIGTERM hands the running render back instead of killing it.

    Installed as each task starts: billiard sets its own SIGTERM handler (SystemExit) after
    Celery's process initialiser, so ``worker_process_init`` is too early.
    """
    global _previous
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        _previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)


def task_started(**_kwargs) -> None:
    global _in_task, _requested, _raised
    _in_task, _requested, _raised = True, False, False
    install_pool_process()


def task_ended(**_kwargs) -> None:
    global _in_task
    _in_task = False


def requested() -> bool:
    """Whether this pool process was told to hand its task back."""
    return _requested


@contextlib.contextmanager
def render_phase() -> Iterator[None]:
    """Wrap the render: a shutdown during it (or before it) raises ``HandBack``."""
    global _in_render, _raised
    if _requested:
        _raised = True
        raise HandBack("the worker is shutting down")
    _in_render = True
    try:
        yield
    finally:
        _in_render = False


def connect_signals() -> None:
    """Wire this module into Celery's signals (called once by worker.celery_app)."""
    from celery import signals

    signals.worker_shutting_down.connect(hand_back_active, weak=False)
    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_ended, weak=False)
