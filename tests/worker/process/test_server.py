"""Long-lived render processes (worker.process.pool, worker.process.server): same output as a fresh
process per video, and a crash, a kill or a leak costs one video only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm import settings
from farm.generate.sampling import generate_spec
from farm.model.presets import find_preset
from worker.attempts import render_attempts
from worker.process.pool import RenderPool
from worker.process.runner import PermanentRenderError, RenderCrash

pytestmark = pytest.mark.render


def _frames(staging: Path, video: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    jpgs = sorted((staging / "JPEGImages" / video).iterdir())
    pngs = sorted((staging / "Annotations" / video).iterdir())
    return ([np.asarray(Image.open(p)) for p in jpgs], [np.asarray(Image.open(p)) for p in pngs],
            [p.name for p in jpgs + pngs])


def test_one_process_renders_many_videos_like_fresh_processes(library, tiny, tmp_path):
    specs = [generate_spec(library, tiny, 0, i, 2021) for i in (6, 7, 8)]
    roots = (library.models_root, library.textures_root)
    with RenderPool(1) as pool:
        served = [render_attempts(s, find_preset(s.preset),
                                  *roots, tmp_path / "server", pool=pool) for s in specs]
        (proc,) = pool.processes()
        assert proc.videos >= 3 and pool.recycled == []  # one process did all (and resamples)
    for spec, out in zip(specs, served, strict=True):
        fresh = render_attempts(spec, find_preset(spec.preset), *roots, tmp_path / "oneshot")
        rgb_a, masks_a, names_a = _frames(out.staging, spec.id)
        rgb_b, masks_b, names_b = _frames(fresh.staging, spec.id)
        assert names_a == names_b and len(masks_a) == spec.frames
        for a, b in zip(masks_a, masks_b, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(rgb_a, rgb_b, strict=True):
            np.testing.assert_array_equal(a, b)  # Cycles is deterministic: the same pixels
        assert out.manifest["frames"] == fresh.manifest["frames"]
        assert out.manifest["device"] == fresh.manifest["device"] == "CPU"
        assert 100 < out.manifest["peak_rss_mb"] < 4000
        assert "render device: CPU" in (out.staging / "render.log").read_text()  # per-video log


def test_animation_render_loop_writes_what_the_per_frame_loop_wrote(library, tiny, tmp_path):
    """Frames 1.. now come from one animation render with masks encoded beside it; the previous
    loop (a render call per frame, masks encoded between them, the image through the
    compositor's group output, the Z pass, glibc's default trimming) is the code of
    bench.baseline.PREVIOUS_DESIGN (run from its own exported tree): both write the same
    pixels, masks and manifest frames."""
    from bench.baseline import PREVIOUS_DESIGN, previous_design_env, tree, worker_render
    from farm.model.spec import save_spec

    spec = replace(generate_spec(library, tiny, 0, 21, 2021), frames=6)
    roots = (library.models_root, library.textures_root)
    new = render_attempts(spec, find_preset(spec.preset), *roots, tmp_path / "new", resample=False)
    try:
        previous = tree(PREVIOUS_DESIGN, tmp_path / "trees")
    except (OSError, subprocess.CalledProcessError) as exc:  # no git, or a copy without history
        pytest.skip(f"the previous design's commit is not available: {exc}")
    save_spec(spec, tmp_path / "spec.yaml")
    _, (old_manifest,) = worker_render(previous, [tmp_path / "spec.yaml"], tmp_path / "old",
                                       previous_design_env(previous), roots,
                                       keep_gate_failures=True)
    rgb_new, masks_new, names_new = _frames(new.staging, spec.id)
    rgb_old, masks_old, names_old = _frames(tmp_path / "old", spec.id)
    assert names_new == names_old and len(names_new) == 12
    for a, b in zip(rgb_new + masks_new, rgb_old + masks_old, strict=True):
        np.testing.assert_array_equal(a, b)
    assert new.manifest["frames"] == old_manifest["frames"]
    for manifest in (new.manifest, old_manifest):
        t = manifest["timings"]
        assert len(t["render_s"]) == len(t["frame_s"]) == len(t["encode_s"]) == 6


def test_a_failed_video_costs_only_itself(library, pack, tiny, tmp_path):
    """A broken mesh fails its video (a permanent error, as before) and the process that tried
    it exits; killing the process mid-video fails that video as a crash. Either way the next
    video renders, in a fresh process."""
    bad = pack.models / "02691156" / "broken-srv"
    (bad / "models").mkdir(parents=True)
    (bad / "models" / "model_normalized.obj").write_bytes(b"\x00\xffnot an obj\nf 1 2 x\n")
    roots = (library.models_root, library.textures_root)
    good = generate_spec(library, tiny, 0, 9, 2021)
    try:
        with RenderPool(1) as pool:
            first = pool.processes()[0].pid
            render_attempts(good, find_preset(good.preset), *roots, tmp_path, pool=pool)
            broken = generate_spec(library, tiny, 0, 10, 2021)
            broken = replace(broken, objects=[replace(broken.objects[0], model="02691156/broken-srv"),
                                              *broken.objects[1:]])
            with pytest.raises(PermanentRenderError, match="broken-srv.*no faces"):
                render_attempts(broken, find_preset(broken.preset), *roots, tmp_path, pool=pool)
            second = pool.processes()[0].pid
            assert second != first and pool.recycled == ["died"]
            assert render_attempts(good, find_preset(good.preset),
                                   *roots, tmp_path, pool=pool).manifest["num_frames"] == 3

            # kill -9 the process while it renders a longer video
            long = replace(good, frames=40)
            killed = threading.Event()

            def progress(done: int, _total: int) -> None:
                if done == 2 and not killed.is_set():
                    killed.set()
                    os.kill(pool.processes()[0].pid, signal.SIGKILL)

            with pytest.raises(RenderCrash, match=r"died \(signal 9\)"):
                render_attempts(long, find_preset(long.preset),
                                *roots, tmp_path, pool=pool, progress=progress)
            third = pool.processes()[0].pid
            assert third not in (first, second)
            out = render_attempts(good, find_preset(good.preset), *roots, tmp_path, pool=pool)
            assert len(list((out.staging / "Annotations" / good.id).iterdir())) == 3
    finally:
        import shutil

        shutil.rmtree(bad)


def test_processes_are_recycled_after_n_videos(library, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_RENDER_MAX_VIDEOS", "2")
    roots = (library.models_root, library.textures_root)
    pids = []
    with RenderPool(1) as pool:
        for i in range(3):
            spec = replace(generate_spec(library, tiny, 0, 11 + i, 2021), frames=1)
            pids.append(pool.processes()[0].pid)
            render_attempts(spec, find_preset(spec.preset), *roots, tmp_path, pool=pool, resample=False)
        assert pool.recycled == ["rendered 2 videos"]
        pids.append(pool.processes()[0].pid)
    assert pids[0] == pids[1] != pids[2] == pids[3]  # replaced after its second video


def test_memory_cap_kills_the_video_not_the_next(library, pack, tiny, tmp_path, monkeypatch):
    """A texture that blows the cap kills its render (the peak is that video's own: VmHWM is
    reset per video); the next video, under the same cap, renders in a fresh process. (Within
    the pixel cap checked before a render, farm.assets.check.MAX_IMAGE_PIXELS.)"""
    bomb = pack.textures / "texture" / "wood" / "bomb-srv.png"
    Image.new("L", (8000, 8000), 128).save(bomb)
    roots = (library.models_root, library.textures_root)
    try:
        with RenderPool(1) as pool:
            healthy = generate_spec(library, tiny, 0, 17, 2021)
            peak = render_attempts(healthy, find_preset(healthy.preset),
                                   *roots, tmp_path, pool=pool).manifest["peak_rss_mb"]
            monkeypatch.setenv("FARM_RENDER_MAX_RSS_MB", str(peak + 150))
            settings.use(None)  # this process's settings read again, with the cap
            poison = generate_spec(library, tiny, 0, 18, 2021)
            poison = replace(poison, objects=[replace(poison.objects[0], texture=str(
                bomb.relative_to(pack.textures))), *poison.objects[1:]])
            before = pool.processes()[0].pid
            with pytest.raises(RenderCrash, match="over the .* MB limit"):
                render_attempts(poison, find_preset(poison.preset), *roots, tmp_path, pool=pool)
            after = render_attempts(healthy, find_preset(healthy.preset), *roots, tmp_path, pool=pool)
            assert pool.processes()[0].pid != before
            assert after.manifest["peak_rss_mb"] <= peak + 150
    finally:
        bomb.unlink()


def test_the_busy_process_names_its_video(library, tiny, tmp_path):
    """While it renders, a server's command line is the one-shot render of that spec (what the
    chaos run's monitor and `pgrep -f worker.process.main` look for); idle, it is not."""
    spec = replace(generate_spec(library, tiny, 0, 19, 2021), frames=12)
    seen: list[list[bytes]] = []

    def progress(done: int, _total: int) -> None:
        if done == 2:
            seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))

    with RenderPool(1) as pool:
        pid = pool.processes()[0].pid
        pool.processes()[0].wait_ready()
        idle = Path(f"/proc/{pid}/cmdline").read_bytes()
        out = render_attempts(spec, find_preset(spec.preset),
                              library.models_root, library.textures_root, tmp_path,
                          pool=pool, progress=progress)
        time.sleep(0.2)
        after = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"worker.process.main" not in idle and b"idle" in idle
    args = seen[0]
    assert b"worker.process.main" in args
    assert Path(args[args.index(b"--spec") + 1].decode()) == out.staging / "spec.yaml"
    assert b"worker.process.main" not in after and b"1 videos" in after


def test_server_protocol_reports_boot(tmp_path):
    """The process reports itself ready once bpy is loaded, with its boot time."""
    with RenderPool(1, log_dir=tmp_path) as pool:
        ready = pool.processes()[0].wait_ready()
        assert ready["pid"] == pool.processes()[0].pid and ready["boot_s"] > 0
        assert json.loads(json.dumps(ready)) == ready
    assert not list(tmp_path.glob("bl30k-render-server-*.log"))  # removed on close
