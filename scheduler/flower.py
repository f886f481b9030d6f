"""``python -m scheduler.flower [FLOWER OPTIONS]``: Flower for the farm's Celery app, with its
Prometheus ``/metrics`` behind the same login as its pages and API.

Flower 2.x checks its basic auth on every page and API call but not on ``/metrics``, which then
tells anyone who reaches the port the task names, workers and rates. Prometheus scrapes it with
the login (docker/prometheus.yml). Without a login configured, everything stays open as before.
"""

from __future__ import annotations

import sys

import tornado.web


def protect_metrics() -> None:
    from flower.views.monitor import Metrics

    if not hasattr(Metrics.get, "__wrapped__"):
        Metrics.get = tornado.web.authenticated(Metrics.get)


def main(argv: list[str] | None = None) -> None:
    from celery.bin.celery import main as celery

    protect_metrics()
    sys.argv = ["celery", "-A", "worker.celery_app", "flower", *(sys.argv[1:] if argv is None
                                                                  else argv)]
    celery()


if __name__ == "__main__":
    main()
