"""Every benchmark command runs end to end at toy sizes and reports what it measured.

No timing is asserted (timings belong to BENCHMARKS.md); the rows' structure and the functional
facts behind them are.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.quality import SEED

pytestmark = [pytest.mark.render, pytest.mark.services]


def bench(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cores, Python 3.11" in proc.stdout
    return json.loads(out.read_text())


def test_render_and_ablation(tmp_path):
    rows = bench(tmp_path, "render", "--presets", "tiny", "--frames", "2", "--videos", "1",
                 "--devices", "CPU")
    assert [(r["preset"], r["device"], r["frames"]) for r in rows] == [("tiny", "CPU", 2)]
    assert rows[0]["s_per_frame"] > 0 and rows[0]["peak_rss_mb"] > 100
    rows = bench(tmp_path, "ablation", "--preset", "tiny", "--frames", "2", "--repeats", "1")
    masks = {r["variant"]: r["mask_encode_ms"] for r in rows}
    assert len(masks) == 3 and masks["RGB alone (no index pass, no masks)"] == 0


def test_outputs_bench_costs_each_output(tmp_path):
    rows = bench(tmp_path, "outputs", "--preset", "tiny", "--frames", "2", "--repeats", "1")
    by = {r["output"]: r for r in rows}
    assert list(by) == ["rgb + masks (baseline)", "depth", "flow", "normals", "camera", "amodal",
                        "all (movi-like)"]
    assert by["rgb + masks (baseline)"]["extra_s_per_frame"] == 0
    assert by["flow"]["files_per_frame"] == 2 and by["camera"]["files_per_frame"] == 0.5
    assert by["amodal"]["files_per_frame"] == by["amodal"]["objects"]
    assert all(r["bytes_per_frame"] > 0 for r in rows)
    assert by["all (movi-like)"]["encode_ms_per_frame"] > by["depth"]["encode_ms_per_frame"] > 0


def test_farm_bench_streams_uploads_and_compares_with_the_aws_cli(tmp_path):
    rows = bench(tmp_path, "farm", "--enqueue", "20", "--preset", "tiny", "--frames", "2")
    by = {}
    for r in rows:
        by.setdefault(r["bench"], []).append(r)
    assert by["enqueue"][0]["videos"] == 20
    modes = {r["mode"]: r for r in by["task path"]}
    assert modes["upload after render"]["streamed"] == "0"
    assert modes["streaming upload"]["streamed"] == "4"  # 2 JPEGs + 2 masks sent during the render
    assert all(r["render_s"] > 0 and r["separate_bare_render_s"] > 0 for r in modes.values())
    tools = [r["tool"] for r in by["upload"]]
    assert tools[0].startswith("worker uploader") and by["upload"][0]["files"] == 320


def test_quality_bench_and_choice(tmp_path):
    rows = bench(tmp_path, "quality", "--scenes", "1", "--width", "48", "--height", "32",
                 "--reference-samples", "16", "--settings", "16 spp + FAST")
    quality = [r for r in rows if r["bench"] == "quality"]
    assert [r["setting"] for r in quality] == [SEED, "16 spp + FAST"]
    assert quality[0]["dpsnr_worst"] == 0 and 10 < quality[1]["psnr_mean"] < 60
    assert [r["setting"].split(":")[0] for r in rows if r["bench"] == "choice"] == ["default", "fast"]
