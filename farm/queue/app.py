"""The farm's queue: the Celery app (Redis broker and result backend, JSON only, long-task
settings; the queue's and task's names are ``farm.queue.broker``'s). The scheduler publishes
with it; workers (``worker.celery_app``) consume with it.
"""

from __future__ import annotations

from celery import Celery

from farm.model.presets import available, load_preset
from farm.queue import compat
from farm.queue.broker import QUEUE
from farm.settings import Settings, current

compat.apply()


def max_hard_limit() -> int:
    """The longest hard time limit of any preset (tasks carry their own limits, see scheduler)."""
    return max(load_preset(name).time_limits()[1] for name in available())


def visibility_timeout(settings: Settings) -> int:
    """A Redis message that is not acknowledged within the visibility timeout is delivered again,
    even while its first delivery is still rendering (celery#5935): it must outlast the longest
    task. FARM_VISIBILITY_TIMEOUT, else twice the longest hard limit."""
    return settings.visibility_timeout or 2 * max_hard_limit()


def _settings_config() -> dict:
    """What the app takes from the settings: read when its configuration is first used (the
    broker URL carries the Redis password, a secret file), never at import."""
    settings = current()
    url, timeout = settings.redis_url_with_password, visibility_timeout(settings)
    return {
        "broker_url": url,
        "result_backend": url,
        # Set the visibility timeout everywhere Celery/kombu read it: broker transport, result
        # backend transport, and the top-level setting older code paths consult.
        "broker_transport_options": {"visibility_timeout": timeout,
                                     "priority_steps": list(range(10)), "sep": ":",
                                     "queue_order_strategy": "priority"},
        "result_backend_transport_options": {"visibility_timeout": timeout},
        "visibility_timeout": timeout,
        # Videos at once per worker (= per GPU): FARM_RENDERS_PER_GPU (compose: 2), unless -c.
        "worker_concurrency": settings.renders_per_gpu or 1,
    }


app = Celery("bl30k")
app.add_defaults(_settings_config)
app.conf.update(
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
    task_default_queue=QUEUE,
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
