"""The Celery app: Redis broker and result backend, JSON only, long-task settings.

Start a worker with ``celery -A worker.celery_app worker -Q render -c 1 -E``. One worker process
renders one video at a time on one GPU; rendering itself runs in a child Blender process.
"""

from __future__ import annotations

import logging
import os
import sys

from celery import Celery, signals

from farm.model.presets import available, load_preset
from farm.queue import compat
from farm.settings import load_settings
from worker import shutdown

compat.apply()

log = logging.getLogger(__name__)
settings = load_settings()
TASK_NAME = "farm.render_video"


def task_id(video: str, generation: int) -> str:
    """One task id per enqueue of a video (its generation, kept in Redis): revoking a cancelled
    generation never discards a later enqueue of the same video."""
    return f"render-{video}-{generation}"


# The longest hard time limit of any preset (tasks carry their own limits, see scheduler).
MAX_HARD_LIMIT = max(load_preset(name).time_limits()[1] for name in available())
# A Redis message that is not acknowledged within the visibility timeout is delivered again, even
# while its first delivery is still rendering (celery#5935). It must outlast the longest task.
VISIBILITY_TIMEOUT = int(os.environ.get("FARM_VISIBILITY_TIMEOUT") or 2 * MAX_HARD_LIMIT)

app = Celery("bl30k", include=["worker.tasks"])
app.conf.update(
    broker_url=settings.redis_url_with_password,
    result_backend=settings.redis_url_with_password,
    # JSON only: a pickle payload from the queue would be code execution on every worker.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # Acknowledge a video only when it finished (uploaded + marker): a worker killed mid-render
    # leaves the message to be delivered again instead of losing the video.
    task_acks_late=True,
    # A worker process that dies (kill -9, OOM, hard time limit) requeues its task. Celery puts
    # no cap on that (celery#9082): worker.tasks counts deliveries per video and fails the video
    # after FARM_MAX_DELIVERIES.
    task_reject_on_worker_lost=True,
    # Reserve one task at a time: a worker busy for minutes must not hoard videos others could run.
    worker_prefetch_multiplier=1,
    # Set the visibility timeout everywhere Celery/kombu read it: broker transport, result
    # backend transport, and the top-level setting older code paths consult.
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
    },
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    visibility_timeout=VISIBILITY_TIMEOUT,
    task_default_queue="render",
    task_default_priority=5,
    # Events for Flower: sent/started/succeeded/failed/retried.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    result_expires=7 * 24 * 3600,
    result_extended=True,
    broker_connection_retry_on_startup=True,
    # A short broker outage must not cancel hour-long renders; the per-video lease prevents a
    # redelivered copy from rendering at the same time.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_max_tasks_per_child=200,
)

_gpu_lease = None
shutdown.connect_signals()  # SIGTERM hands the running render back (worker/shutdown.py)


@signals.worker_init.connect
def _pin_gpu(sender=None, **_kwargs) -> None:
    """Claim one GPU of this host (or none: CPU) before the pool forks; children inherit it.

    Fails closed (worker/gpu.py): nothing is visible until a GPU is claimed, no claim within
    FARM_GPU_CLAIM_TIMEOUT exits the worker non-zero (an exception here would only be logged by
    Celery), and a lost lease stops the worker.
    """
    global _gpu_lease
    from farm.queue.state import FarmState, connect
    from worker import gpu, scratch

    scratch.clear_health(getattr(sender, "hostname", None))

    def lost(reason: str) -> None:
        shutdown.stop_worker(gpu.EXIT_GPU_LOST, reason)

    try:
        _gpu_lease = gpu.pin_worker(lambda: FarmState(connect(settings.redis_url_with_password)),
                                    ttl_s=settings.lease_ttl, on_lost=lost)
    except gpu.NoGpu as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(gpu.EXIT_NO_GPU) from None


@signals.worker_ready.connect
def _log_device(**_kwargs) -> None:
    # worker_init runs before Celery configures logging: report the claim once it is ready.
    from worker.gpu import describe_claim

    log.warning("worker device: %s", describe_claim(_gpu_lease))


@signals.worker_shutdown.connect
def _release_gpu(**_kwargs) -> None:
    if _gpu_lease is not None:
        _gpu_lease.release()


# --- Render warm-up and long-lived render processes (worker/warmup.py, worker/process/pool.py) ---------
# Videos at once per worker (= per GPU): FARM_RENDERS_PER_GPU (compose: 2), unless -c is given.
app.conf.worker_concurrency = int(os.environ.get("FARM_RENDERS_PER_GPU") or 1)

# worker_init runs in the main process before the pool and the consumer exist, after _pin_gpu
# above (receivers run in the order they were connected): the warm-up compiles and caches the
# render kernels and checks the device before any message is taken, outside every task's time
# limit. A warm-up that fails stops the worker (it would fail every video). Each pool process
# starts its long-lived render process at once (it boots while the worker gets ready); the
# worker writes its health file only when it consumes.


@signals.worker_init.connect
def _warm_up_render(**_kwargs) -> None:
    from worker.warmup import warm_up_worker

    try:
        warm_up_worker()
    except Exception as exc:
        log.critical("render warm-up failed, not consuming: %s", exc, exc_info=True)
        raise SystemExit(1) from exc


@signals.worker_process_init.connect
def _start_render_process(**_kwargs) -> None:
    from worker.process.pool import start_worker_pool

    start_worker_pool()


@signals.worker_process_shutdown.connect
def _stop_render_process(**_kwargs) -> None:
    from worker.process.pool import stop_worker_pool

    stop_worker_pool()


@signals.worker_ready.connect
def _mark_ready(**_kwargs) -> None:
    from worker.warmup import write_health

    write_health()


@signals.worker_shutdown.connect
def _mark_not_ready(**_kwargs) -> None:
    from worker.warmup import clear_health

    clear_health()
