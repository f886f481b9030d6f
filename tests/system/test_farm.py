"""The distributed farm on real services: redis-server, moto S3 over HTTP, Celery workers."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import requests

from farm.assets.library import AssetLibrary
from farm.generate.sampling import generate_spec
from farm.model.presets import load_preset
from farm.queue.state import FarmState, connect

pytestmark = [pytest.mark.services, pytest.mark.render]


def video_keys(farm, segment: int, video: str) -> list[str]:
    return [k for k in farm.keys(f"bl30k/{segment}/") if f"/{video}/" in k or
            k.endswith(f"/{video}.json") or k.endswith(f"/{video}.yaml")]


def assert_complete(farm, segment: int, video: str, frames: int) -> None:
    keys = video_keys(farm, segment, video)
    base = f"bl30k/{segment}"
    want = ([f"{base}/JPEGImages/{video}/{i:05d}.jpg" for i in range(frames)]
            + [f"{base}/Annotations/{video}/{i:05d}.png" for i in range(frames)]
            + [f"{base}/specs/{video}.yaml", f"{base}/manifests/{video}.json",
               f"{base}/done/{video}.json"])
    assert sorted(keys) == sorted(want)
    marker = json.loads(farm.s3.get_object(Bucket=farm.bucket, Key=f"{base}/done/{video}.json")
                        ["Body"].read())
    assert marker["frames"] == frames


def test_enqueue_render_upload_status_finalize_and_flower(farm, tmp_path):
    from devtools.local import start_flower
    from devtools.processes import free_port, stop

    workers = [farm.start_worker(name, FARM_GPUS="0,1") for name in ("w1", "w2")]
    flower_port = free_port()
    flower = start_flower(farm.env, flower_port, "admin:secret", tmp_path)
    try:
        out = farm.cli("enqueue", "--segment", "0", "--count", "3", "--preset", "tiny").stdout
        assert "enqueued 3 videos" in out
        status = farm.wait_for(0, done=3)
        assert status["percent_done"] == 100.0 and status["failed"] == 0
        assert status["videos_per_hour"] > 0 and status["frames_per_s"] > 0
        for video in ("a00000", "a00001", "a00002"):
            assert_complete(farm, 0, video, 3)

        # each worker holds a different GPU's lease (Redis, not a log line: the second worker
        # may claim its GPU after the first has rendered all three videos)
        state = farm.state()
        node = socket.gethostname()
        deadline = time.monotonic() + 120
        while True:
            holders = {gpu: state.holder(f"gpu:{node}:{gpu}") for gpu in ("0", "1")}
            pids = {gpu: int(token.split(":")[1]) for gpu, token in holders.items() if token}
            if sorted(pids.values()) == sorted(w.pid for w in workers):
                break
            assert time.monotonic() < deadline, (holders, [w.pid for w in workers])
            time.sleep(0.5)

        # re-enqueueing finished videos is a no-op: nothing sent, nothing rendered again
        out = farm.cli("enqueue", "--segment", "0", "--count", "3", "--preset", "tiny").stdout
        assert "enqueued 0 videos" in out and "skipped 3 already done" in out
        assert state.r.llen("render") == 0

        out = farm.cli("finalize", "--segment", "0").stdout
        assert "3 videos complete, every frame verified" in out
        meta = json.loads(farm.s3.get_object(Bucket=farm.bucket, Key="bl30k/0/meta.json")
                          ["Body"].read())
        assert set(meta["videos"]) == {"a00000", "a00001", "a00002"}
        obj = meta["videos"]["a00000"]["objects"]["1"]
        assert obj["category"] and obj["frames"][0] == "00000"
        keys = farm.keys("bl30k/0/")
        assert {"bl30k/0/ImageSets/2017/train.txt", "bl30k/0/ImageSets/2017/val.txt",
                "bl30k/0/dataset.json", "bl30k/0/DATASET.md", "bl30k/0/empty_masks.json"} <= set(keys)

        # the segment as shards in the bucket, back into a folder: the bucket's files, byte for byte
        segment, packed = f"s3://{farm.bucket}/bl30k/0", f"s3://{farm.bucket}/packs/0"
        for args in (("pack", segment, packed), ("verify", packed), ("verify", segment),
                     ("unpack", packed, str(tmp_path / "unpacked"))):
            proc = subprocess.run([sys.executable, "-m", "farm", "-q", *args], env=farm.env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert set(farm.keys("packs/0/")) >= {"packs/0/index.json", "packs/0/index.sha256",
                                                     "packs/0/shards/shard-000000.tar"}
        unpacked = sorted(str(p.relative_to(tmp_path / "unpacked"))
                          for p in (tmp_path / "unpacked").rglob("*") if p.is_file())
        assert unpacked == [k.removeprefix("bl30k/0/") for k in keys]
        for key in keys:
            body = farm.s3.get_object(Bucket=farm.bucket, Key=key)["Body"].read()
            assert (tmp_path / "unpacked" / key.removeprefix("bl30k/0/")).read_bytes() == body, key

        # Flower: auth required; its API lists our tasks by video; Prometheus metrics too
        api, auth = f"http://127.0.0.1:{flower_port}/api/tasks", ("admin", "secret")
        assert requests.get(api, timeout=10).status_code == 401
        deadline = time.monotonic() + 30
        while True:
            tasks = requests.get(api, auth=auth, timeout=10).json()
            succeeded = {t for t, v in tasks.items() if v["state"] == "SUCCESS"}
            if {"render-a00000-1", "render-a00001-1", "render-a00002-1"} <= succeeded:
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(1)
        assert tasks["render-a00000-1"]["name"] == "farm.render_video"
        assert "'video': 'a00000'" in tasks["render-a00000-1"]["kwargs"]
        assert requests.get(f"http://127.0.0.1:{flower_port}/metrics", timeout=10).status_code == 401
        metrics = requests.get(f"http://127.0.0.1:{flower_port}/metrics", auth=auth, timeout=10).text
        assert "flower_events_total" in metrics

        # finalize's completeness check notices a frame missing from the bucket
        farm.s3.delete_object(Bucket=farm.bucket, Key="bl30k/0/JPEGImages/a00001/00002.jpg")
        proc = farm.cli("finalize", "--segment", "0", check=False)
        assert proc.returncode == 1
        assert ("a00001: frames do not match the marker's 3: 1 missing (first "
                "JPEGImages/00002.jpg)") in proc.stdout
    finally:
        stop([flower])


def test_movi_like_video_through_the_farm(farm, tmp_path):
    """A video with every extra output (tiny-movi: movi-like's outputs at test size): rendered by
    a worker, every output folder uploaded, finalize checks them and lists them in meta.json, and
    the loader reads the bucket's copy."""
    from farm.io import outputs as fo
    from farm.model.spec import OUTPUTS

    farm.start_worker("w1")
    farm.cli("enqueue", "--segment", "3", "--count", "1", "--preset", "tiny-movi")
    farm.wait_for(3, done=1, timeout=240)
    video, base = "d00000", "bl30k/3"
    manifest = json.loads(farm.s3.get_object(Bucket=farm.bucket, Key=f"{base}/manifests/{video}.json")
                          ["Body"].read())
    settings, k = manifest["render_settings"], len(manifest["objects"])
    assert manifest["outputs"] == list(OUTPUTS)
    want = {f"{base}/{f}" for i in range(3) for f in fo.frame_files(settings, video, i, k)}
    want |= {f"{base}/{f}" for f in fo.video_files(settings, video)}
    want |= {f"{base}/specs/{video}.yaml", f"{base}/manifests/{video}.json",
             f"{base}/done/{video}.json"}
    assert set(video_keys(farm, 3, video)) == want
    assert "1 videos complete" in farm.cli("finalize", "--segment", "3").stdout
    meta = json.loads(farm.s3.get_object(Bucket=farm.bucket, Key=f"{base}/meta.json")["Body"].read())
    assert meta["outputs"] == list(OUTPUTS) == meta["videos"][video]["outputs"]

    local = tmp_path / "copy"  # a user's copy of the segment (aws s3 sync)
    for key in want:
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(farm.s3.get_object(Bucket=farm.bucket, Key=key)["Body"].read())
    got = fo.load_video_outputs(local / base, video)
    assert got["depth"].shape == (3, 48, 64) and got["amodal"].shape == (3, k, 48, 64)
    visible = got["masks"][:, None] == np.arange(1, k + 1)[None, :, None, None]
    assert not (visible & ~got["amodal"]).any()

    farm.s3.delete_object(Bucket=farm.bucket, Key=f"{base}/Flow/{video}/backward/00001.png")
    proc = farm.cli("finalize", "--segment", "3", check=False)
    assert proc.returncode == 1
    assert f"{video}: Flow holds 5 files, marker says 6" in proc.stdout


def test_archive_upload_four_objects_a_video_finalize_preview_pack_and_unpack(farm, tmp_path):
    """FARM_UPLOAD_ARCHIVE=1: a tiny-movi video (every extra output) is one tar plus its spec,
    manifest and marker; finalize proves the archive by its MD5 and notices a replaced one; the
    preview reads the frames from it; pack and unpack give the per-file layout, each file the
    content its marker records."""
    farm.start_worker("w1", FARM_UPLOAD_ARCHIVE="1")
    farm.cli("enqueue", "--segment", "4", "--count", "2", "--preset", "tiny-movi")
    farm.wait_for(4, done=2, timeout=240)
    base = "bl30k/4"
    for video in ("e00000", "e00001"):
        assert sorted(video_keys(farm, 4, video) + [k for k in farm.keys(f"{base}/videos/")
                                                    if video in k]) == \
            [f"{base}/done/{video}.json", f"{base}/manifests/{video}.json",
             f"{base}/specs/{video}.yaml", f"{base}/videos/{video}.tar"]
    marker = json.loads(farm.s3.get_object(Bucket=farm.bucket, Key=f"{base}/done/e00000.json")
                        ["Body"].read())
    with tarfile.open(fileobj=io.BytesIO(farm.s3.get_object(
            Bucket=farm.bucket, Key=f"{base}/videos/e00000.tar")["Body"].read())) as tar:
        names = tar.getnames()
    assert names[:2] == ["e00000.00000.jpg", "e00000.00000.png"]
    assert len(names) == len(marker["checksums"]) and "e00000.Camera.camera.json" in names
    assert "2 videos complete, every frame verified" in farm.cli("finalize", "--segment", "4").stdout

    env = farm.env
    run = [sys.executable, "-m", "farm", "-q"]
    proc = subprocess.run([*run, "preview", f"s3://{farm.bucket}/{base}", "--out",
                           str(tmp_path / "previews")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "previews").glob("*.png"))) == 2
    for args in (("pack", f"s3://{farm.bucket}/{base}", str(tmp_path / "packed")),
                 ("unpack", str(tmp_path / "packed"), str(tmp_path / "folders")),
                 ("verify", str(tmp_path / "folders"))):
        proc = subprocess.run([*run, *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    for rel, md5 in marker["checksums"].items():
        assert hashlib.md5((tmp_path / "folders" / rel).read_bytes()).hexdigest() == md5

    # another delivery's archive in its place: finalize names it
    farm.s3.copy_object(Bucket=farm.bucket, Key=f"{base}/videos/e00000.tar",
                        CopySource={"Bucket": farm.bucket, "Key": f"{base}/videos/e00001.tar"})
    proc = farm.cli("finalize", "--segment", "4", check=False)
    assert proc.returncode == 1
    assert "e00000: videos/e00000.tar is not the archive its marker records" in proc.stdout


def test_transient_storage_error_then_success(farm):
    from devtools.faults import FaultProxy

    proxy = FaultProxy(int(farm.s3_endpoint.rsplit(":", 1)[1]))
    try:
        farm.start_worker("w1", FARM_S3_ENDPOINT=f"http://127.0.0.1:{proxy.port}")
        farm.cli("enqueue", "--segment", "1", "--count", "1", "--preset", "tiny")
        status = farm.wait_for(1, retrying=1, timeout=120)
        assert status["done"] == 0
        proxy.down = False
        farm.wait_for(1, done=1, timeout=180)
    finally:
        proxy.close()
    assert proxy.dropped > 0
    assert_complete(farm, 1, "b00000", 3)
    log = farm.log("w1")
    # Without the completion marker check the video is deferred, never rendered blind.
    assert "cannot check the completion marker" in log and "deferring" in log
    state = farm.state()
    assert state.video("b00000")["uploads"] == "1"


def test_permanent_error_fails_then_retry_failed_completes(farm, pack, tmp_path):
    preset = load_preset("tiny")
    lib = AssetLibrary.open(pack.models, pack.textures)
    spec = generate_spec(lib, preset, 2, 0, 2021)
    victim = spec.objects[0].model
    assert victim not in [o.model for o in generate_spec(lib, preset, 2, 1, 2021).objects]
    # the worker's copy of the library lists the same models, but the victim's mesh is broken
    worker_models = tmp_path / "worker-models"
    shutil.copytree(pack.models, worker_models)
    obj = worker_models / victim / "models" / "model_normalized.obj"
    obj.write_text("this is not a mesh\n")

    farm.start_worker("w1", FARM_MODELS=str(worker_models))
    farm.cli("enqueue", "--segment", "2", "--count", "2", "--preset", "tiny")
    farm.wait_for(2, done=1, failed=1)
    failed = json.loads(farm.cli("failed", "--segment", "2", "--json").stdout)
    assert [f["video"] for f in failed] == ["c00000"]
    assert victim in failed[0]["error"] and "no faces" in failed[0]["error"]
    assert failed[0]["crashes"] == 0  # failed at once, not retried
    text = farm.cli("failed").stdout
    assert "c00000" in text and victim in text

    shutil.copy(pack.models / victim / "models" / "model_normalized.obj", obj)
    assert "re-enqueued 1 failed videos" in farm.cli("retry", "--failed").stdout
    farm.wait_for(2, done=2, failed=0)
    assert_complete(farm, 2, "c00000", 3)


def test_gate_failure_ends_failed_without_frames_and_retry_samples_afresh(farm, pack, tmp_path):
    from speck import speck_models

    env = {"FARM_MODELS": str(speck_models(tmp_path / "speck", pack.models))}
    base, video = "bl30k/5", "f00000"
    stale = f"{base}/JPEGImages/{video}/00000.jpg"  # e.g. left by an earlier delivery
    farm.s3.put_object(Bucket=farm.bucket, Key=stale, Body=b"stale")
    farm.start_worker("w1", **env)
    farm.cli("enqueue", "--segment", "5", "--count", "1", "--preset", "tiny", env=env)
    farm.wait_for(5, failed=1, done=0)
    assert video_keys(farm, 5, video) == []  # no frames where loaders look, no marker
    failed = json.loads(farm.cli("failed", "--segment", "5", "--json").stdout)
    assert "failed the quality gate (3 attempts; last: attempt 2" in failed[0]["error"]
    assert "00000002/speck" in failed[0]["error"] and "pixels in frame 0" in failed[0]["error"]

    out = farm.cli("retry", "--failed", "--segment", "5", env=env).stdout
    assert "re-enqueued 1 failed videos (1 with fresh quality-gate attempts)" in out
    deadline = time.monotonic() + 120
    while not any("last: attempt 5" in f["error"]
                  for f in json.loads(farm.cli("failed", "--json").stdout)):
        assert time.monotonic() < deadline, farm.log("w1")[-3000:]
        time.sleep(1)
    assert farm.status(5)["failed"] == 1 and video_keys(farm, 5, video) == []


def test_imported_gate_failure_ships_only_with_the_flag_and_meta_json_says_so(farm, pack,
                                                                              tmp_path):
    from dataclasses import replace

    from speck import speck_models

    from farm.model.spec import save_spec

    models = speck_models(tmp_path / "speck", pack.models)
    env = {"FARM_MODELS": str(models)}
    lib = AssetLibrary.open(models, pack.textures)
    for index in (0, 1):
        spec = replace(generate_spec(lib, load_preset("tiny"), 6, index, 2021), source="imported")
        save_spec(spec, tmp_path / "specs" / str(index) / f"{spec.id}.yaml")
    proc = farm.cli("enqueue", "--segment", "6", "--count", "1", "--keep-gate-failures",
                    env=env, check=False)
    assert proc.returncode == 2 and "applies to --specs" in proc.stderr
    farm.start_worker("w1", **env)
    farm.cli("enqueue", "--specs", str(tmp_path / "specs" / "0"), env=env)
    farm.cli("enqueue", "--specs", str(tmp_path / "specs" / "1"), "--keep-gate-failures", env=env)
    farm.wait_for(6, failed=1, done=1)
    failed = json.loads(farm.cli("failed", "--segment", "6", "--json").stdout)
    assert [f["video"] for f in failed] == ["g00000"]
    assert "imported spec" in failed[0]["error"]
    assert_complete(farm, 6, "g00001", 3)
    assert farm.cli("finalize", "--segment", "6", check=False).returncode == 1  # g00000 missing
    farm.cli("finalize", "--segment", "6", "--force")
    meta = json.loads(farm.s3.get_object(Bucket=farm.bucket, Key="bl30k/6/meta.json")
                      ["Body"].read())
    assert set(meta["videos"]) == {"g00001"} and meta["gate_failures_kept"] == ["g00001"]


def test_worker_with_a_different_asset_library_refuses_the_spec(farm, pack, tmp_path):
    worker_models = tmp_path / "worker-models"
    shutil.copytree(pack.models, worker_models)
    shutil.rmtree(worker_models / "02691156" / "model000")  # the model lists now differ
    farm.start_worker("w1", FARM_MODELS=str(worker_models))
    farm.cli("enqueue", "--segment", "4", "--count", "1", "--preset", "tiny")
    farm.wait_for(4, failed=1)
    failed = json.loads(farm.cli("failed", "--json").stdout)
    assert "differs from the scheduler's" in failed[0]["error"]


def test_a_leased_video_is_not_rendered_twice(farm):
    """A redelivered copy defers while a live worker holds the video's lease."""
    state = farm.state()
    assert state.acquire("video:d00000", "someone-else", ttl_s=600)
    farm.start_worker("w1")
    farm.cli("enqueue", "--segment", "3", "--count", "1", "--preset", "tiny")
    deadline = time.monotonic() + 60
    while "leased by someone-else, deferring" not in farm.log("w1"):
        assert time.monotonic() < deadline, farm.log("w1")
        time.sleep(0.5)
    assert farm.status(3)["done"] == 0 and not farm.keys("bl30k/3/")
    state.release("video:d00000", "someone-else")
    farm.wait_for(3, done=1, timeout=120)
    assert_complete(farm, 3, "d00000", 3)


def _claim(url: str, queue) -> None:
    from worker.gpu import claim_gpu

    claimed = claim_gpu(FarmState(connect(url)), ["0", "1"], ttl_s=2.0)
    queue.put(claimed[0] if claimed else None)
    time.sleep(60)  # hold the lease (heartbeat running) until killed


def test_gpu_leases_are_exclusive_and_expire(redis_service):
    port, password = redis_service
    url = f"redis://:{password}@127.0.0.1:{port}/5"
    connect(url).flushdb()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(url, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        got = sorted((queue.get(timeout=60) for _ in procs), key=str)
        assert got[:2] == ["0", "1"] and got[2] is None  # two GPUs, three claimants
        holders = [p for p in procs]
        time.sleep(3)  # well past the 2 s TTL: heartbeats keep both leases alive
        from worker.gpu import claim_gpu

        assert claim_gpu(FarmState(connect(url)), ["0", "1"], ttl_s=2.0) is None
        for p in holders:
            os.kill(p.pid, signal.SIGKILL)  # dead workers stop heartbeating
        time.sleep(2.5)
        claimed = claim_gpu(FarmState(connect(url)), ["0", "1"], ttl_s=2.0)
        assert claimed is not None and claimed[0] == "0"
        claimed[1].release()
    finally:
        for p in procs:
            p.kill()
            p.join()


def test_init_storage_is_idempotent(farm):
    assert farm.cli("init-storage").stdout.strip() == f"bucket {farm.bucket} exists"
    env = {"FARM_STORAGE_URL": "s3://fresh-bucket/x"}
    assert farm.cli("init-storage", env=env).stdout.strip() == "created bucket fresh-bucket"
    assert farm.cli("init-storage", env=env).stdout.strip() == "bucket fresh-bucket exists"


def test_clear_errors_when_services_are_unreachable(farm):
    from devtools.processes import free_port

    dead = free_port()
    proc = farm.cli("status", env={"FARM_REDIS_URL": f"redis://127.0.0.1:{dead}/0"}, check=False)
    assert proc.returncode == 2
    assert f"cannot reach Redis at 127.0.0.1:{dead}" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = farm.cli("enqueue", "--segment", "0", "--count", "1", "--preset", "tiny",
                    env={"FARM_S3_ENDPOINT": f"http://127.0.0.1:{dead}"}, check=False)
    assert proc.returncode == 2
    assert "cannot reach" in proc.stderr and "Traceback" not in proc.stderr
