"""The farm's own Prometheus metrics: what they are, and the counters workers keep in Redis.

Workers run as Celery prefork processes on many hosts, and each video is rendered by a child
process of one of them. A ``prometheus_client`` registry per process would need multiprocess mode
(a shared ``PROMETHEUS_MULTIPROC_DIR`` per host) plus a scrape target per host, and its counters
would vanish with a replaced container. Instead every event increments a Redis hash (one pipeline
per event, ``farm:metrics:<name>``), and one exporter (``python -m scheduler exporter``,
``scheduler/exporter.py``) turns those hashes, and gauges computed from the farm state itself, into
Prometheus metrics on each scrape. Counters therefore survive worker restarts and are farm-wide.

Counter and histogram hashes: field ``<label values as a JSON list>`` -> value (counters);
``<labels>|<bucket index>`` -> observations in that bucket (non-cumulative) and ``<labels>|sum``
(histograms; the count is the buckets' total).

Every label value is bounded: failure reasons are classified into ``REASONS`` (never a raw
message), devices into ``CPU``/``OPTIX``/``CUDA``, and workers, nodes, GPUs, presets and segments
come from the farm's own configuration.

Recording never fails a render: a Redis error while recording is logged and the event is lost.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)
PREFIX = "farm:metrics:"


@dataclass(frozen=True)
class Metric:
    name: str  # exposition name (a counter is exposed as <name>_total)
    kind: str  # counter | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms: upper bounds, +Inf implied

    @property
    def key(self) -> str:
        return PREFIX + self.name


_RENDERER = ("worker", "node", "gpu", "preset", "device")
FRAMES = Metric("farm_frames_rendered", "counter",
                "Frames rendered and delivered (counted when their video is done).", _RENDERER)
VIDEOS = Metric("farm_videos_rendered", "counter",
                "Videos rendered and delivered (completion marker written).", ("segment", *_RENDERER))
SECONDS_PER_FRAME = Metric(
    "farm_render_seconds_per_frame", "histogram",
    "Blender render time of one frame (delivered videos).", ("preset", "device"),
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320))
UPLOAD_BYTES = Metric("farm_upload_bytes", "counter",
                      "Bytes delivered to storage (frames, spec, manifest).", ("worker",))
UPLOAD_SECONDS = Metric(
    "farm_upload_seconds", "histogram",
    "Upload time after a video's render (frames not streamed during it, spec, manifest, marker).",
    ("worker",), (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
FAILURES = Metric("farm_failures", "counter",
                  "Render failures by reason class; outcome failed = the video ended failed, "
                  "retried = it goes back to the queue.", ("reason", "outcome", "worker"))
RECONCILE_RUNS = Metric("farm_reconcile_runs", "counter", "Runs of `scheduler reconcile`.")
RECONCILE_RESENT = Metric("farm_reconcile_resent", "counter",
                          "Videos re-sent by `scheduler reconcile` (broker had lost their message).")
METRICS = (FRAMES, VIDEOS, SECONDS_PER_FRAME, UPLOAD_BYTES, UPLOAD_SECONDS, FAILURES,
           RECONCILE_RUNS, RECONCILE_RESENT)

# The only values of the failure ``reason`` label.
REASONS = ("gate", "asset", "spec", "crash", "timeout", "memory", "lost", "storage", "broker",
           "scratch", "other")
OUTCOMES = ("failed", "retried")
DEVICES = ("CPU", "OPTIX", "CUDA")

# Exception class name (anywhere in its MRO) -> reason. Names, not imports: farm/ does not import
# worker/ or celery.
_BY_CLASS = {
    "GateFailed": "gate",
    "ScratchFull": "scratch",
    "SoftTimeLimitExceeded": "timeout",
    "TimeLimitExceeded": "timeout",
    "RenderCrash": "crash",
    "SpecError": "spec",
    "AssetError": "asset",
    "PermanentRenderError": "asset",  # the render child's permanent exit: a missing/broken asset
    "StorageError": "storage",
    "BrokerUnavailable": "broker",
    "RedisError": "broker",
    "OperationalError": "broker",
}


def classify(error: BaseException | str) -> str:
    """The failure reason class of an exception (or an already classified reason)."""
    if isinstance(error, str):
        return error if error in REASONS else "other"
    for cls in type(error).__mro__:
        reason = _BY_CLASS.get(cls.__name__)
        if reason == "crash":  # the watchdog kills a render for time or memory
            text = str(error)
            if "time limit" in text:
                return "timeout"
            if "resident memory" in text:
                return "memory"
        if reason:
            return reason
    return "other"


def device_class(device: str | None) -> str:
    """``OPTIX: NVIDIA H100, ...`` -> ``OPTIX``: the backend only, never the GPU names."""
    backend = (device or "CPU").split(":", 1)[0].strip().upper()
    return backend if backend in DEVICES else "CPU"


# --- writing ---------------------------------------------------------------------------------------


def _field(metric: Metric, labels: dict) -> str:
    if set(labels) != set(metric.labels):
        raise ValueError(f"{metric.name}: labels {sorted(labels)} != {sorted(metric.labels)}")
    return json.dumps([str(labels[name]) for name in metric.labels], separators=(",", ":"))


def inc(pipe, metric: Metric, labels: dict | None = None, value: float = 1) -> None:
    pipe.hincrbyfloat(metric.key, _field(metric, labels or {}), value)


def observe(pipe, metric: Metric, labels: dict, value: float) -> None:
    field = _field(metric, labels)
    index = next((i for i, bound in enumerate(metric.buckets) if value <= bound),
                 len(metric.buckets))
    pipe.hincrby(metric.key, f"{field}|{index}", 1)
    pipe.hincrbyfloat(metric.key, f"{field}|sum", value)


def _execute(pipe, what: str) -> None:
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics: could not record %s: %s", what, exc)


def record_video(r: redis.Redis, worker: str, outcome, upload: dict, node: str, gpu: str
                 ) -> None:
    """A delivered video: frames, per-frame render times, upload bytes and time.

    ``outcome`` is the worker's RenderOutcome (final spec, manifest), ``upload`` what
    ``farm.io.storage.upload_video`` returned, ``node`` the physical host (replicas of one host
    share it), ``gpu`` the GPU index the worker claimed (``none`` on a CPU).
    """
    spec, manifest = outcome.spec, outcome.manifest
    device = device_class(manifest.get("device"))
    renderer = {"worker": worker, "node": node, "gpu": gpu, "preset": spec.preset,
                "device": device}
    pipe = r.pipeline(transaction=False)
    inc(pipe, FRAMES, renderer, spec.frames)
    inc(pipe, VIDEOS, {"segment": spec.segment, **renderer})
    for seconds in manifest.get("timings", {}).get("render_s", []):
        observe(pipe, SECONDS_PER_FRAME, {"preset": spec.preset, "device": device}, seconds)
    inc(pipe, UPLOAD_BYTES, {"worker": worker}, upload.get("bytes", 0))
    observe(pipe, UPLOAD_SECONDS, {"worker": worker}, upload.get("upload_s", 0.0))
    _execute(pipe, f"video {spec.id}")


def record_failure(r: redis.Redis, error: BaseException | str, final: bool, worker: str) -> None:
    """A failed render: ``final`` when the video ends failed, else it is retried/handed back."""
    pipe = r.pipeline(transaction=False)
    inc(pipe, FAILURES, {"reason": classify(error), "outcome": "failed" if final else "retried",
                         "worker": worker})
    _execute(pipe, "a failure")


def record_reconcile(r: redis.Redis, resent: int) -> None:
    pipe = r.pipeline(transaction=False)
    inc(pipe, RECONCILE_RUNS)
    inc(pipe, RECONCILE_RESENT, value=resent)
    _execute(pipe, "a reconcile run")


# --- reading (the exporter) ------------------------------------------------------------------------


@dataclass
class Histogram:
    buckets: list[int]  # non-cumulative, one per bound plus +Inf
    sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*bounds, math.inf), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), float(total)))
        return out


def read(r: redis.Redis) -> dict[str, dict[tuple[str, ...], float | Histogram]]:
    """Every recorded series: metric name -> label values -> value (or Histogram)."""
    pipe = r.pipeline(transaction=False)
    for metric in METRICS:
        pipe.hgetall(metric.key)
    out: dict[str, dict] = {}
    for metric, fields in zip(METRICS, pipe.execute(), strict=True):
        series: dict[tuple[str, ...], float | Histogram] = {}
        for field, value in fields.items():
            if metric.kind == "counter":
                series[tuple(json.loads(field))] = float(value)
                continue
            labels_json, _, part = field.rpartition("|")
            labels = tuple(json.loads(labels_json))
            hist = series.setdefault(labels, Histogram([0] * (len(metric.buckets) + 1)))
            if part == "sum":
                hist.sum = float(value)
            elif part.isdigit() and int(part) <= len(metric.buckets):
                hist.buckets[int(part)] = int(float(value))
        out[metric.name] = series
    return out
