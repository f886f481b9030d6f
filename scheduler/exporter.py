"""``python -m scheduler exporter``: the farm's Prometheus metrics, computed from Redis per scrape.

Gauges come from the farm state itself (videos by state per segment, segment start times, GPU and
video leases); counters and histograms are the ones workers and the scheduler keep in Redis
(``farm/queue/metrics.py``, which explains why they live there rather than in each worker process).
One exporter serves the whole farm, however many worker hosts it has; it holds no state, so it can
be restarted or run twice.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from farm.queue import metrics
from farm.queue.state import PREFIX, STATES, UNHEALTHY, BrokerUnavailable, connect

log = logging.getLogger(__name__)
DEFAULT_PORT = 9808
DEMAND = "farm_render_demand"  # what KEDA scales the workers on (deploy/kubernetes/)


def _lease_parts(key: str, kind: str) -> str:
    return key[len(f"{PREFIX}lease:{kind}:"):]


class FarmCollector:
    """A prometheus_client collector reading the farm's Redis on every ``collect()``."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._r: redis.Redis | None = None

    def describe(self):
        return []  # unchecked collector: do not touch Redis at registration

    def _client(self) -> redis.Redis:
        if self._r is None:
            self._r = connect(self.redis_url)
        return self._r

    def collect(self):
        up = GaugeMetricFamily("farm_exporter_redis_up",
                               "1 when the exporter could read the farm state from Redis.")
        try:
            families = list(self._families(self._client()))
        except (redis.RedisError, BrokerUnavailable) as exc:
            log.warning("cannot read the farm state: %s", exc)
            self._r = None
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, r: redis.Redis):
        segments = sorted(r.smembers(f"{PREFIX}segments"), key=int)
        pipe = r.pipeline(transaction=False)
        for segment in segments:
            pipe.hvals(f"{PREFIX}seg:{segment}:state")
            pipe.get(f"{PREFIX}seg:{segment}:started")
        replies = pipe.execute()
        videos = GaugeMetricFamily("farm_videos", "Videos of a segment in each state.",
                                   labels=["segment", "state"])
        started = GaugeMetricFamily("farm_segment_started_timestamp_seconds",
                                    "When the segment was first enqueued (Unix time).",
                                    labels=["segment"])
        for i, segment in enumerate(segments):
            states, start = replies[2 * i], replies[2 * i + 1]
            for state in STATES:
                videos.add_metric([segment, state], sum(1 for s in states if s == state))
            if start:
                started.add_metric([segment], float(start))
        yield videos
        yield started

        gpus = GaugeMetricFamily("farm_gpu_lease",
                                 "1 per held GPU lease: the worker (host:pid) holding GPU <gpu> of "
                                 "node <node>.", labels=["node", "gpu", "holder"])
        keys = list(r.scan_iter(match=f"{PREFIX}lease:gpu:*", count=1000))
        holders = r.mget(keys) if keys else []
        for key, token in zip(keys, holders, strict=True):
            if token is None:  # expired between SCAN and MGET
                continue
            part = _lease_parts(key, "gpu")
            node, _, gpu = part.rpartition(":")
            if not node:  # keyed by GPU UUID (worker/gpu.py): its node and index beside it
                info = r.hgetall(f"{PREFIX}gpuinfo:{part}")
                node, gpu = info.get("node", ""), info.get("index", part)
            gpus.add_metric([node, gpu, token.rsplit(":", 1)[0]], 1)
        yield gpus
        leases = sum(1 for _ in r.scan_iter(match=f"{PREFIX}lease:video:*", count=1000))
        yield GaugeMetricFamily("farm_video_leases",
                                "Videos being rendered by a live worker (held video leases).",
                                value=leases)

        yield from _demand(r)

        unhealthy = GaugeMetricFamily("farm_worker_unhealthy",
                                      "1 per worker that stopped consuming after failing video "
                                      "after video (until it is restarted).", labels=["worker"])
        for node in sorted(r.hkeys(UNHEALTHY)):
            unhealthy.add_metric([node], 1)
        yield unhealthy

        recorded = metrics.read(r)
        for metric in metrics.METRICS:
            series = recorded[metric.name]
            if metric.kind == "counter":
                family = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
                for labels, value in sorted(series.items()):
                    family.add_metric(labels, value)
            else:
                family = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
                for labels, hist in sorted(series.items()):
                    family.add_metric(labels, hist.cumulative(metric.buckets), sum_value=hist.sum)
            yield family


def _demand(r: redis.Redis):
    """Messages waiting in the render queue's priority lists, and those delivered but not
    acknowledged (reserved by a worker, rendering, or waiting on a countdown): their sum is what
    workers are needed for (KEDA scales on it; a list's length alone misses reserved tasks)."""
    from farm.queue.app import app  # loads the settings: on first use, not at import

    queue = app.conf.task_default_queue
    lists = [k for k in r.scan_iter(f"{queue}*", count=1000) if r.type(k) == "list"]
    pipe = r.pipeline(transaction=False)
    for key in lists:
        pipe.llen(key)
    pipe.hlen("unacked")
    *lengths, unacked = pipe.execute()
    queued = sum(lengths)
    messages = GaugeMetricFamily("farm_broker_messages", "Render messages in the broker: queued "
                                 "(priority lists) or unacked (reserved or running).",
                                 labels=["where"])
    messages.add_metric(["queued"], queued)
    messages.add_metric(["unacked"], unacked)
    yield messages
    yield GaugeMetricFamily(DEMAND, "Render messages queued plus unacknowledged: "
                            "the workers wanted (the autoscaler's input).", value=queued + unacked)


def registry(redis_url: str) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FarmCollector(redis_url))
    return reg


def serve(redis_url: str, port: int, address: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` until SIGTERM or Ctrl-C."""
    server, thread = start_http_server(port, addr=address, registry=registry(redis_url))
    safe = redis_url.split("@")[-1]
    print(f"farm exporter: http://{address}:{port}/metrics (farm state from {safe})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    return 0

