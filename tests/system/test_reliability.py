"""Faults, poison videos and asset health, on real services and real renders."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devtools.chaos import run_chaos
from farm.assets.check import Problem, check_library, check_obj, write_denylist
from farm.assets.library import AssetLibrary, read_denylist
from farm.assets.procedural import synthesize
from farm.generate.sampling import generate_spec
from farm.model.presets import load_preset

pytestmark = [pytest.mark.services, pytest.mark.render]


@pytest.mark.long
def test_chaos_ci_sized(tmp_path):
    """kill -9 and a freeze past the lease mid-render, duplicate messages, cancel + re-enqueue,
    HEAD 503s, a Redis restart, SIGTERM redeploys, an S3 outage, a full scratch disk, a
    black-hole worker, a running video enqueued again with another seed: nothing lost, doubled,
    mixed (a marker of another spec included) or stranded, and the black hole stopped."""
    report = run_chaos(videos=8, workers=2, kills=1, s3_outage_s=5, timeout_s=480,
                       folder=tmp_path, log=print)
    print(report.summary())
    for fault in ("worker_kill9", "worker_freeze", "cancel_reenqueue", "s3_head_503",
                  "redis_restart", "sigterm_redeploy", "s3_outage", "black_hole_worker",
                  "reenqueue_other_seed"):
        assert report.faults[fault] == 1, fault
    assert report.faults["duplicate_message"] >= 1
    assert report.lost == [] and report.duplicates == [] and report.concurrent == set()
    assert report.mixed == {} and report.stranded == []
    assert report.incomplete == {} and report.failed == {} and report.queue_left == 0
    assert not report.black_hole_running


def test_a_render_process_forked_child_is_not_a_second_render(tmp_path):
    """Blender vforks ``sh`` at each factory reset: until it execs, the child shows its parent's
    command line. The chaos monitor counts one render there, and two processes of one video as
    two."""
    from devtools.processes import render_processes

    args = ["worker.process.main", "--spec", str(tmp_path / "h00001.staging" / "spec.yaml")]
    forks = "import os, time\nos.fork()\ntime.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", code, *args])
             for code in (forks, "import time; time.sleep(60)")]
    children = Path(f"/proc/{procs[0].pid}/task/{procs[0].pid}/children")
    try:
        deadline = time.monotonic() + 20
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(children.read_text().split()[0])
        renders = {pid: cmd for pid, cmd in render_processes().items()
                   if str(tmp_path).encode() in b"\0".join(cmd)}
        assert Path(f"/proc/{child}/cmdline").read_bytes() == \
            Path(f"/proc/{procs[0].pid}/cmdline").read_bytes()  # it looks like a render
        assert set(renders) == {p.pid for p in procs}
    finally:
        for pid in [int(c) for c in children.read_text().split()] + [p.pid for p in procs]:
            os.kill(pid, signal.SIGKILL)
        for p in procs:
            p.wait()


def test_poison_video_fails_after_bounded_retries_and_the_worker_keeps_serving(farm, pack):
    """A texture that blows the render's memory is killed by the watchdog every time: retried a
    bounded number of times, then failed with the reason; the next video still renders."""
    lib = AssetLibrary.open(pack.models, pack.textures)
    tiny = load_preset("tiny")
    poison = generate_spec(lib, tiny, 5, 0, 2021)
    bomb = pack.textures / "texture" / "wood" / "bomb.png"
    # Within the pixel cap checked before a render (farm.assets.check.MAX_IMAGE_PIXELS), far over
    # the memory cap below: a 16-bit PNG, which Blender holds as floats. Measured here: a tiny
    # video peaks at 290-450 MB, one with this texture at ~1320 MB.
    Image.new("I;16", (8000, 8000), 30000).save(bomb)
    try:
        poison = replace(poison, objects=[replace(poison.objects[0], texture=str(
            bomb.relative_to(pack.textures))), *poison.objects[1:]])
        spec_dir = farm.folder / "specs"
        spec_dir.mkdir()
        (spec_dir / "poison.yaml").write_text(poison.to_yaml())
        healthy = generate_spec(lib, tiny, 5, 1, 2021)
        (spec_dir / "healthy.yaml").write_text(healthy.to_yaml())
        farm.start_worker("w1", FARM_RENDER_MAX_RSS_MB="800", FARM_MAX_DELIVERIES="2")
        farm.cli("enqueue", "--specs", str(spec_dir / "poison.yaml"), str(spec_dir / "healthy.yaml"))
        farm.wait_for(5, done=1, failed=1, timeout=240)
    finally:
        bomb.unlink()
    failed = json.loads(farm.cli("failed", "--json").stdout)
    assert [f["video"] for f in failed] == [poison.id]
    assert failed[0]["crashes"] == 2
    assert "over the 800 MB limit" in failed[0]["error"]
    assert poison.objects[0].model in failed[0]["error"]  # the models are named
    assert farm.status(5)["queued"] == 0


def test_worker_refuses_pickle_messages(farm):
    """JSON only: a pickled task message is rejected, never executed."""
    from kombu import Connection

    farm.start_worker("w1")
    url = farm.env["FARM_REDIS_URL"].replace("redis://", f"redis://:{farm.env['REDIS_PASSWORD']}@")
    with Connection(url) as conn:
        producer = conn.Producer()
        producer.publish(
            pickle.dumps([[], {"video": "x00000", "segment": 0}, {}]), routing_key="render",
            content_encoding="binary",
            headers={"lang": "py", "task": "farm.render_video", "id": "evil", "argsrepr": "",
                     "kwargsrepr": "", "retries": 0},
            content_type="application/x-python-serialize")
    import time

    deadline = time.monotonic() + 30
    while "Refusing to deserialize" not in farm.log("w1") and \
            "ContentDisallowed" not in farm.log("w1"):
        assert time.monotonic() < deadline, farm.log("w1")[-2000:]
        time.sleep(0.5)
    assert "Task farm.render_video[evil] received" not in farm.log("w1")


def test_asset_check_finds_broken_assets_and_generation_honours_the_denylist(tmp_path):
    models, textures = synthesize(tmp_path, seed=3)
    lib = AssetLibrary.open(models, textures, cache_dir=tmp_path / "cache")
    broken = {
        lib.models[0].id: "not a mesh\nf 1 2 3\n",
        lib.models[2].id: "v 0 0 0\nv 1 0 0\n",  # no faces
        lib.models[4].id: "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n",
    }
    for model, text in broken.items():
        (models / model / "models" / "model_normalized.obj").write_text(text)
    (textures / lib.textures[1]).write_bytes(b"not an image")
    Image.new("L", (9000, 9000)).save(textures / "skybox" / "city" / "huge.png")
    lib = AssetLibrary.open(models, textures, cache_dir=tmp_path / "cache")
    problems = {p.item: p.reason for p in check_library(lib, workers=2)}
    assert set(problems) == {*broken, lib.textures[1], "skybox/city/huge.png"}
    assert "missing vertex" in problems[lib.models[0].id]
    assert "empty mesh" in problems[lib.models[2].id]
    assert "bad vertex" in problems[lib.models[4].id]
    assert "absurdly large image" in problems["skybox/city/huge.png"]
    write_denylist([Problem(item, reason) for item, reason in problems.items()],
                   tmp_path / "deny.txt")
    deny = read_denylist(tmp_path / "deny.txt")
    assert deny == set(problems)
    clean = AssetLibrary.open(models, textures, cache_dir=tmp_path / "cache", denylist=deny)
    specs = [generate_spec(clean, load_preset("bl30k"), 0, i, 1) for i in range(40)]
    used = {o.model for s in specs for o in s.objects} | {o.texture for s in specs
                                                           for o in s.objects}
    used |= {s.background.image for s in specs}
    assert not used & deny


def test_check_obj_limits(tmp_path):
    path = tmp_path / "m.obj"
    verts = np.zeros((3, 3))
    path.write_text("".join(f"v {a} {b} {c}\n" for a, b, c in verts) + "f 1 2 3\nf 1 2 -4\n")
    assert "missing vertex" in check_obj(path).error
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf -1 -2 -3\n")
    assert check_obj(path) == (None, [], [])
    shutil.copy(path, tmp_path / "copy.obj")
    assert check_obj(tmp_path / "missing.obj").error.startswith("unreadable mesh")
