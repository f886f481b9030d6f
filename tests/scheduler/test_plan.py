"""The cost planner: its numbers follow the calibration, a missing figure is a clear error, and
`bench calibrate` writes what the planner reads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.calibration import load, shipped_file

ROOT = Path(__file__).resolve().parents[2]


def scheduler(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def plan(*args: str) -> dict:
    proc = scheduler("plan", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def shipped(preset: str, device: str) -> dict:
    return next(e for e in load(shipped_file()) if (e["preset"], e["device"]) == (preset, device))


def test_plan_follows_the_shipped_h200_figures():
    cal = shipped("bl30k", "OPTIX")
    assert "H200" in cal["machine"]
    p = plan("--videos", "5000", "--preset", "bl30k", "--gpus", "8", "--price-per-gpu-hour", "3")
    assert p["device"] == "OPTIX"  # the fastest calibrated device by default
    video_s = 160 * cal["s_per_frame"] + cal["overhead_s"]
    assert p["video_s"] == pytest.approx(video_s, abs=1e-3)
    assert p["video_s"] == pytest.approx(21.9, abs=0.01)  # the measured 160-frame video
    assert p["gpu_hours"] == pytest.approx(5000 * video_s / 3600, abs=1e-3)
    assert p["wall_s"] == pytest.approx(math.ceil(5000 / 8) * video_s, abs=0.1)
    assert p["gpu_cost"] == pytest.approx(3 * p["gpu_hours"], abs=0.01)
    assert p["bucket_bytes"] == 5000 * (160 * cal["bytes_per_frame"] + cal["bytes_per_video"])

    text = scheduler("plan", "--videos", "5000", "--preset", "bl30k", "--gpus", "8").stdout
    assert f"measured on: {cal['machine']}" in text and "wall time: 3h48m" in text


def test_plan_on_cpu_reproduces_the_benchmarks_table():
    # BENCHMARKS.md, "What to expect per machine-hour": bl30k 1.44 videos/hour, 3470 machine-hours
    p = plan("--videos", "5000", "--preset", "bl30k", "--device", "cpu")
    assert p["device"] == "CPU" and "2-core" in p["machine"]
    assert p["videos_per_gpu_hour"] == pytest.approx(1.44, abs=0.005)
    assert p["gpu_hours"] == pytest.approx(3470, rel=0.001)
    assert p["wall_s"] == pytest.approx(5000 * p["video_s"], rel=1e-6)  # one machine


def test_a_missing_figure_is_a_clear_error(tmp_path):
    proc = scheduler("plan", "--videos", "10", "--preset", "fast", "--device", "OPTIX")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no calibration for preset fast on device OPTIX")
    assert "bl30k on OPTIX" in proc.stderr and "bench calibrate --presets fast --devices OPTIX" \
        in proc.stderr
    proc = scheduler("plan", "--videos", "10", "--preset", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"entries": [{"preset": "bl30k"}]}')
    proc = scheduler("plan", "--videos", "10", "--calibration", str(broken))
    assert proc.returncode == 2 and "lacks device, machine" in proc.stderr


def test_a_gpu_render_calibrates_its_backend_and_names_the_gpu():
    from bench.calibrate import entry

    manifest = {"video": "a00000", "device": "OPTIX: NVIDIA H200",
                "timings": {"render_s": [3.0, 0.1, 0.1, 0.1], "wall_s": 10.3},
                "frames": [{"frame": i, "objects": []} for i in range(4)]}
    e = entry("bl30k", manifest, "spec: 1\n", frame_bytes=4000)
    assert e["device"] == "OPTIX" and e["machine"].startswith("NVIDIA H200 (OPTIX), host ")
    assert e["s_per_frame"] == pytest.approx(0.1) and e["overhead_s"] == pytest.approx(9.9)
    assert 4 * e["s_per_frame"] + e["overhead_s"] == pytest.approx(manifest["timings"]["wall_s"])


@pytest.mark.render
def test_bench_calibrate_feeds_the_planner(tmp_path):
    out = tmp_path / "calibration.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "calibrate", "--presets", "tiny",
                           "--devices", "CPU", "--frames", "3", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [entry] = load(out)
    assert entry["preset"] == "tiny" and entry["device"] == "CPU" and "cores" in entry["machine"]
    # the model reproduces the measured render: 3 frames x steady s/frame + overhead = wall
    assert 3 * entry["s_per_frame"] + entry["overhead_s"] == pytest.approx(entry["wall_s"],
                                                                           abs=0.002)
    assert 64 * 48 * 0.1 < entry["bytes_per_frame"] < 64 * 48 * 4  # a small JPEG + PNG
    p = plan("--videos", "7", "--preset", "tiny", "--gpus", "2", "--calibration", str(out))
    assert p["machine"] == entry["machine"] and p["calibration_file"] == str(out)
    assert p["video_s"] == pytest.approx(entry["wall_s"], abs=0.002)
    assert p["wall_s"] == pytest.approx(4 * p["video_s"], abs=0.1)
    # a file given on the command line wins over the shipped figures for the same preset/device
    merged = tmp_path / "mine.json"
    merged.write_text(json.dumps({"entries": [{**shipped("bl30k", "OPTIX"), "machine": "my A100",
                                               "s_per_frame": 0.2}]}))
    p = plan("--videos", "1", "--calibration", str(merged))
    assert p["machine"] == "my A100" and p["video_s"] == pytest.approx(32 + 7.66)


def test_nodes_times_gpus_per_node_is_the_same_estimate_on_every_engine():
    flat = plan("--videos", "30000", "--gpus", "32", "--price-per-gpu-hour", "2.5")
    laid = plan("--videos", "30000", "--nodes", "4", "--gpus-per-node", "8",
                "--price-per-gpu-hour", "2.5")
    for key in ("gpus", "wall_s", "gpu_hours", "gpu_cost", "bucket_bytes"):
        assert laid[key] == flat[key], key
    assert (laid["nodes"], laid["gpus_per_node"]) == (4, 8)
    assert set(laid["engines"]) == {"compose", "slurm", "kubernetes"}
    assert "--scale worker=8" in laid["engines"]["compose"]
    assert "slurm --workers 32" in laid["engines"]["slurm"]
    assert "up to 32 pods" in laid["engines"]["kubernetes"]
    text = scheduler("plan", "--videos", "30000", "--nodes", "4", "--gpus-per-node", "8").stdout
    assert "32 workers = 4 nodes x 8 GPUs" in text and "wall time: 5h42m" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "4", "--gpus-per-node", "8", "--gpus", "3"], "--gpus 3 contradicts --nodes 4"),
    (["--nodes", "0", "--gpus-per-node", "8"], "--nodes and --gpus-per-node must be at least 1"),
])
def test_a_contradictory_layout_is_one_line_and_exit_2(args, message):
    proc = scheduler("plan", "--videos", "10", *args)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1
