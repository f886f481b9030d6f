"""The farm's Prometheus metrics: exporter values on a real Redis, and the Grafana dashboard's
every query answered by a real Prometheus (Debian's package) scraping a local farm."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from farm.queue import metrics
from farm.queue.state import FarmState, connect
from scheduler.exporter import registry

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "farm.json"
# Grafana's variables, as the test substitutes them ($segment: "All").
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s",
                     "$segment": ".*"}


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry(url)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    hits = [v for (n, ls), v in samples.items()
            if n == name and set(labels.items()) <= ls]
    assert hits, f"no sample {name}{labels}"
    return sum(hits)


@pytest.fixture
def redis_url(redis_service) -> str:
    port, password = redis_service
    url = f"redis://:{password}@127.0.0.1:{port}/7"  # a database of its own
    connect(url).flushdb()
    return url


def test_exporter_values_after_two_done_videos(redis_url, library, tiny):
    from farm.generate.sampling import generate_spec

    state = FarmState(connect(redis_url))
    specs = [generate_spec(library, tiny, 0, i, 2021) for i in range(3)]
    state.register(0, specs)
    state.set_state(0, specs[0].id, "done")
    state.set_state(0, specs[1].id, "done")
    state.set_state(0, specs[2].id, "failed")
    for spec in specs[:2]:
        outcome = SimpleNamespace(spec=spec, manifest={
            "device": "OPTIX: NVIDIA H200", "timings": {"render_s": [0.2, 0.3, 7.0]}})
        metrics.record_video(state.r, "w1@host", outcome, {"bytes": 1000, "upload_s": 0.4},
                             "node-a", "1")
    from worker.attempts import GateFailed
    from worker.process.runner import RenderCrash

    metrics.record_failure(state.r, GateFailed("a00002: failed the quality gate"), True, "w1@host")
    metrics.record_failure(state.r, RenderCrash("killed: exceeded the 60 s time limit"), False,
                           "w1@host")
    metrics.record_reconcile(state.r, 2)
    assert state.acquire("gpu:node-a:1", "host:123:abcd1234", 60)
    assert state.acquire("video:a00002", "host:123:ffff", 60)

    s = scrape(redis_url)
    assert value(s, "farm_exporter_redis_up") == 1
    assert value(s, "farm_videos", segment="0", state="done") == 2
    assert value(s, "farm_videos", segment="0", state="failed") == 1
    assert value(s, "farm_videos", segment="0", state="queued") == 0
    assert value(s, "farm_videos", segment="0") == 3
    assert value(s, "farm_segment_started_timestamp_seconds", segment="0") > 0
    renderer = {"worker": "w1@host", "node": "node-a", "gpu": "1", "preset": "tiny",
                "device": "OPTIX"}
    assert value(s, "farm_frames_rendered_total", **renderer) == 2 * tiny.frames
    assert value(s, "farm_videos_rendered_total", segment="0", **renderer) == 2
    # 6 frames: 0.2 s twice, 0.3 s twice, 7 s twice (cumulative buckets)
    spf = {"preset": "tiny", "device": "OPTIX"}
    assert value(s, "farm_render_seconds_per_frame_bucket", le="0.25", **spf) == 2
    assert value(s, "farm_render_seconds_per_frame_bucket", le="0.5", **spf) == 4
    assert value(s, "farm_render_seconds_per_frame_bucket", le="5.0", **spf) == 4
    assert value(s, "farm_render_seconds_per_frame_bucket", le="10.0", **spf) == 6
    assert value(s, "farm_render_seconds_per_frame_bucket", le="+Inf", **spf) == 6
    assert value(s, "farm_render_seconds_per_frame_count", **spf) == 6
    assert value(s, "farm_render_seconds_per_frame_sum", **spf) == pytest.approx(15.0)
    assert value(s, "farm_upload_bytes_total", worker="w1@host") == 2000
    assert value(s, "farm_upload_seconds_count", worker="w1@host") == 2
    assert value(s, "farm_upload_seconds_sum", worker="w1@host") == pytest.approx(0.8)
    assert value(s, "farm_failures_total", reason="gate", outcome="failed") == 1
    assert value(s, "farm_failures_total", reason="timeout", outcome="retried") == 1
    assert value(s, "farm_reconcile_runs_total") == 1
    assert value(s, "farm_reconcile_resent_total") == 2
    assert value(s, "farm_gpu_lease", node="node-a", gpu="1", holder="host:123") == 1
    assert value(s, "farm_video_leases") == 1
    # failure reasons and devices never carry raw messages or GPU names
    reasons = {dict(ls)["reason"] for n, ls in s if n == "farm_failures_total"}
    assert reasons <= set(metrics.REASONS)
    assert {dict(ls)["device"] for n, ls in s if n == "farm_frames_rendered_total"} == {"OPTIX"}


def test_failure_reasons_are_a_bounded_set():
    from celery.exceptions import SoftTimeLimitExceeded

    from farm.assets.library import AssetError
    from farm.io.storage import StorageError
    from farm.model.spec import SpecError
    from farm.queue.state import BrokerUnavailable
    from worker.attempts import GateFailed
    from worker.process.runner import PermanentRenderError, RenderCrash, ScratchFull

    cases = {
        GateFailed("x"): "gate", AssetError("no faces"): "asset", SpecError("f", "bad"): "spec",
        PermanentRenderError("missing model"): "asset", ScratchFull("full"): "scratch",
        RenderCrash("Blender process died (signal 11)"): "crash",
        RenderCrash("killed: exceeded the 30 s time limit"): "timeout",
        RenderCrash("killed: resident memory 9000 MB over the 8000 MB limit"): "memory",
        SoftTimeLimitExceeded(): "timeout", StorageError("503"): "storage",
        BrokerUnavailable("down"): "broker", redis.ConnectionError("refused"): "broker",
        ValueError("anything"): "other", "lost": "lost", "a raw message": "other",
    }
    for error, reason in cases.items():
        assert metrics.classify(error) == reason, error
        assert metrics.classify(error) in metrics.REASONS
    assert metrics.device_class("CUDA: NVIDIA A100, NVIDIA A100") == "CUDA"
    assert metrics.device_class("something odd") == "CPU"


def test_exporter_without_redis_says_so():
    from devtools.processes import free_port

    s = scrape(f"redis://127.0.0.1:{free_port()}/0")
    assert value(s, "farm_exporter_redis_up") == 0
    assert not any(n.startswith("farm_videos") for n, _ in s)


# --- the dashboard against a real Prometheus --------------------------------------------------------


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, rows included, Grafana variables substituted."""
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    variables = {f"${v['name']}" for v in dashboard.get("templating", {}).get("list", [])}
    assert variables <= set(GRAFANA_VARIABLES), "a dashboard variable the test does not fill"
    out = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, sub in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, sub)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


def test_dashboard_covers_every_farm_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    used = " ".join(expr for _, expr in panel_queries(dashboard))
    for metric in metrics.METRICS:
        assert metric.name in used, f"no panel shows {metric.name}"
    for gauge in ("farm_videos", "farm_gpu_lease", "farm_video_leases", "flower_"):
        assert gauge in used
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Throughput", "ETA per segment", "Failures by reason", "Rate per worker",
            "Rate per GPU"} <= titles


def query(prom: str, expr: str) -> list[dict]:
    reply = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", (expr, reply)
    return reply["data"]["result"]


def scalar(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def targets(prom: str) -> dict[str, str]:
    reply = requests.get(f"{prom}/api/v1/targets", timeout=10).json()
    return {t["labels"]["job"]: t["health"] for t in reply["data"]["activeTargets"]}


def wait_until(condition, timeout: float, message) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(0.5)


@pytest.mark.services
@pytest.mark.render
def test_every_dashboard_query_returns_data_from_a_real_prometheus(farm, pack, tiny, tmp_path):
    from devtools import monitoring
    from devtools.local import start_flower
    from devtools.processes import free_port, stop
    from farm.assets.library import AssetLibrary
    from farm.generate.sampling import generate_spec
    from farm.model.spec import save_spec

    if not monitoring.prometheus_binary():
        pytest.fail("prometheus not installed: run `make system-deps` (apt-get install prometheus)")
    procs = []
    try:
        exporter_port, flower_port, prom_port = free_port(), free_port(), free_port()
        procs.append(monitoring.start_exporter(farm.env, exporter_port, tmp_path / "exporter.log"))
        farm.start_worker("w1", FARM_GPUS="0", FARM_NODE_NAME="node-t")  # holds a GPU lease
        procs.append(start_flower(farm.env, flower_port, "admin:secret", tmp_path))
        config = monitoring.prometheus_config(
            f"127.0.0.1:{exporter_port}", f"127.0.0.1:{flower_port}", "admin:secret",
            tmp_path / "flower-password", interval_s=1)
        procs.append(monitoring.start_prometheus(tmp_path / "prometheus", prom_port, config))
        prom = f"http://127.0.0.1:{prom_port}"
        # Prometheus hands new targets to its scrapers after ~5 s: wait until both are scraped.
        wait_until(lambda: targets(prom) == {"farm": "up", "flower": "up"}, 60,
                   lambda: f"targets {targets(prom)}")

        # One video first, scraped, then the rest: a counter's first sample shows no increase,
        # so rate() needs increments after it (tiny renders can finish within one scrape).
        farm.cli("enqueue", "--segment", "0", "--count", "1", "--preset", "tiny")
        farm.wait_for(0, done=1, timeout=120)
        wait_until(lambda: scalar(prom, "sum(farm_frames_rendered_total)") == tiny.frames, 30,
                   lambda: "Prometheus never saw the first video")
        # two more videos, one whose model is missing (an asset failure), and a reconcile run
        farm.cli("enqueue", "--segment", "0", "--start", "1", "--count", "2", "--preset", "tiny")
        lib = AssetLibrary.open(pack.models, pack.textures)
        spec = generate_spec(lib, tiny, 0, 3, 2021)
        broken = replace(spec, objects=[replace(spec.objects[0], model="02691156/no-such-model"),
                                        *spec.objects[1:]])
        save_spec(broken, tmp_path / "broken" / f"{broken.id}.yaml")
        farm.cli("enqueue", "--specs", str(tmp_path / "broken"))
        farm.cli("reconcile")
        farm.wait_for(0, done=3, failed=1, timeout=150)
        wait_until(lambda: scalar(prom, 'sum(farm_videos{state="done"})') == 3, 30,
                   lambda: "Prometheus never saw the three videos done")

        dashboard = json.loads(DASHBOARD.read_text())
        pending = dict.fromkeys(panel_queries(dashboard))
        deadline = time.monotonic() + 30  # a few more 1 s scrapes for the rate windows
        while pending:
            for title, expr in list(pending):
                result = query(prom, expr)
                finite = [r for r in result if math.isfinite(float(r["value"][1]))]
                if finite:
                    del pending[(title, expr)]
                else:
                    pending[(title, expr)] = result
            if pending and time.monotonic() > deadline:
                raise AssertionError("dashboard queries without data:\n" + "\n".join(
                    f"{t}: {e} -> {r}" for (t, e), r in pending.items()))
            time.sleep(1)

        # the numbers behind the panels are this run's
        done = query(prom, 'sum(farm_videos{segment="0", state="done"})')
        assert float(done[0]["value"][1]) == 3
        frames = query(prom, "sum(farm_frames_rendered_total)")
        assert float(frames[0]["value"][1]) == 3 * tiny.frames
        failures = query(prom, "farm_failures_total")
        assert [(r["metric"]["reason"], r["metric"]["outcome"], r["value"][1])
                for r in failures] == [("asset", "failed", "1")]
        workers = query(prom, "sum by (worker) (farm_frames_rendered_total)")
        assert [re.sub("@.*", "", r["metric"]["worker"]) for r in workers] == ["w1"]
        leases = query(prom, "farm_gpu_lease")
        assert [(r["metric"]["node"], r["metric"]["gpu"]) for r in leases] == [("node-t", "0")]
        eta = query(prom, 'sum by (segment) (farm_videos{state=~"queued|running|retrying"})')
        assert float(eta[0]["value"][1]) == 0
    finally:
        stop(procs)
