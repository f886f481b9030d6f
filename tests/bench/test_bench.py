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


def test_render_and_loop_against_a_git_ref(tmp_path):
    rows = bench(tmp_path, "render", "--presets", "tiny", "--frames", "2", "--videos", "1",
                 "--devices", "CPU")
    assert [(r["preset"], r["device"], r["frames"]) for r in rows] == [("tiny", "CPU", 2)]
    assert rows[0]["s_per_frame"] > 0 and rows[0]["peak_rss_mb"] > 100
    from bench.baseline import PREVIOUS_DESIGN

    rows = bench(tmp_path, "loop", "--preset", "tiny", "--frames", "2", "--repeats", "1")
    assert [r["code"] for r in rows] == ["this tree", f"ref {PREVIOUS_DESIGN}"]
    assert all(r["s_per_frame"] > 0 and r["encode_ms"] > 0 and r["frames"] == 2 for r in rows)
    assert rows[1]["vs_ref"] == "+0.0%"


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


@pytest.mark.long
def test_farm_bench_streams_uploads_and_compares_with_the_aws_cli(tmp_path):
    rows = bench(tmp_path, "farm", "--enqueue", "20", "--preset", "tiny", "--frames", "2",
                 "--format-videos", "2")
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
    formats = {r["format"]: r for r in by["delivery format"]}  # 2 videos of 160 frames
    assert formats["one object per file"]["objects"] == formats["one object per file"]["puts"] == 2 * 323
    assert formats["one tar per video"]["objects"] == formats["one tar per video"]["puts"] == 2 * 4
    assert formats["one object per file"]["mb"] == formats["one tar per video"]["mb"]
    assert [r["unpacked_files"] for r in by["pack"]] == [2 * 323, 2 * 323]


def test_quality_bench_and_choice(tmp_path):
    rows = bench(tmp_path, "quality", "--scenes", "1", "--width", "48", "--height", "32",
                 "--reference-samples", "16", "--settings", "16 spp + FAST")
    quality = [r for r in rows if r["bench"] == "quality"]
    assert [r["setting"] for r in quality] == [SEED, "16 spp + FAST"]
    assert quality[0]["dpsnr_worst"] == 0 and 10 < quality[1]["psnr_mean"] < 60
    assert [r["setting"].split(":")[0] for r in rows if r["bench"] == "choice"] == ["default", "fast"]


def test_gpu_bench_compares_designs_through_the_task_and_render_paths(tmp_path):
    """`bench gpu` at toy size (CPU here): first-frame rows, throughput old vs new design
    through the real worker path and the render path."""
    rows = bench(tmp_path, "gpu", "--preset", "tiny", "--videos", "2", "--frames", "2",
                 "--path", "both", "--configs", "oneshot:1,server:1")
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["bench"], []).append(r)
    assert [r["kernel cache"] for r in by["first frame"]] == ["as found", "warm"]
    assert all(r["first_frame_s"] > 0 for r in by["first frame"])
    got = {(r["path"], r["design"]) for r in by["throughput"]}
    assert got == {("render", "oneshot"), ("render", "server"), ("task", "oneshot"),
                   ("task", "server")}
    for r in by["throughput"]:
        assert r["videos"] == 2 and r["videos_per_hour"] > 0 and r["device"] == "CPU"
        assert r["gpu_busy"] == "-"  # no GPU on the test machine
    assert all(r["worker_ready_s"] > 0 for r in by["throughput"] if r["path"] == "task")


def test_gpu_bench_marginal_cost_of_farm_render(tmp_path):
    from bench.gpu import bench_marginal

    rows = bench_marginal("tiny", 2, 2, tmp_path, repeats=1, loop_frames=3, loop_videos=1)
    assert {r["design"] for r in rows if r["bench"] == "worker render"} == {"oneshot", "server"}
    loops = [r for r in rows if r["bench"] == "render loop"]
    assert len(loops) == 2 and all(r["s_per_frame"] > 0 for r in loops)


def test_gpu_session_sizes_its_videos_to_the_budget():
    from bench.gpu_session import frames_that_fit

    configs = [("oneshot", 1), ("server", 1), ("server", 2)]
    assert frames_that_fit(10_000, 8, configs) == 160
    assert 8 <= frames_that_fit(150, 8, configs) < 160
    assert frames_that_fit(30, 8, configs) == 0


def test_assets_bench_imports_every_format(tmp_path):
    rows = bench(tmp_path, "assets", "--repeats", "1")
    imports = [r for r in rows if r["bench"] == "asset import"]
    assert {r["format"] for r in imports} == {"OBJ", "GLB", "PLY", "STL"}
    by = {(r["model"], r["format"]): r for r in imports}
    for fmt in ("OBJ", "GLB", "PLY", "STL"):  # one model written in every format
        assert by[("duck", fmt)]["faces"] == 4212 and by[("duck", fmt)]["blender_import_ms"] > 0
    assert by[("monastery", "GLB")]["faces"] > 120_000
    (index,) = [r for r in rows if r["bench"] == "asset index"]
    assert index["models"] == len(imports) and 0 < index["cache_bytes_per_model"] < 2000
