"""The worker's Celery process: the queue's app (``farm.queue.app``) with the render task
(``worker.tasks``) and the worker's lifecycle: GPU pinning, render warm-up, long-lived render
processes, health file and SIGTERM hand-back.

Start a worker with ``celery -A worker.celery_app worker -Q render -c 1 -E``. One worker process
renders one video at a time on one GPU; rendering itself runs in a child Blender process.
"""

from __future__ import annotations

import logging
import sys

from celery import signals

from farm.queue.app import app
from farm.settings import current
from worker import shutdown

app.conf.include = ["worker.tasks"]
log = logging.getLogger(__name__)

_gpu_lease = None
shutdown.connect_signals()  # SIGTERM hands the running render back (worker/shutdown.py)


@signals.worker_init.connect
def _hide_memory(**_kwargs) -> None:
    """The worker holds the Redis password and the S3 key: its /proc files (environ, mem) are
    made unreadable by the render processes, which run as the same user (worker/process/sandbox.py).
    Forked pool processes inherit it."""
    from worker.process.sandbox import hide_memory

    hide_memory()


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
        settings = current()  # the worker's settings, read once when it starts
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
        warm_up_worker(current())
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
def _mark_ready(sender=None, **_kwargs) -> None:
    import redis

    from farm.queue.state import BrokerUnavailable, FarmState, connect
    from worker import blackhole
    from worker.warmup import write_health

    try:  # a restarted worker is healthy until it fails again (worker/blackhole.py)
        blackhole.clear(FarmState(connect(current().redis_url_with_password)),
                        getattr(sender, "hostname", "") or "")
    except (BrokerUnavailable, redis.RedisError) as exc:
        log.warning("cannot clear this worker's failure record: %s", exc)
    write_health()


@signals.worker_shutdown.connect
def _mark_not_ready(**_kwargs) -> None:
    from worker.warmup import clear_health

    clear_health()
