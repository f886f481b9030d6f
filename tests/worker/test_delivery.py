"""Delivery correctness: the state machine (``worker.delivery.deliver``) called directly against a
real redis-server and real storage, no Celery worker; then on the whole local farm (real Celery
workers): every enqueued video ends done or failed, in order."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from services import ROOT, alive, render_processes

pytestmark = [pytest.mark.services, pytest.mark.render]


# --- deliver() without Celery --------------------------------------------------------------------


@pytest.fixture
def direct(redis_service, pack, tiny, tmp_path, monkeypatch):
    """What a delivery works with: a clean Redis database of the real server, a local storage,
    the procedural pack; renders in a fresh process each (no render pool to clean up)."""
    from dataclasses import replace

    from farm.io.storage import LocalStorage
    from farm.queue.state import FarmState, connect
    from farm.settings import load_settings
    from worker.delivery import Farm

    monkeypatch.setenv("FARM_RENDER_PROCESS", "oneshot")
    port, password = redis_service
    url = f"redis://:{password}@127.0.0.1:{port}/5"
    state = FarmState(connect(url))
    state.r.flushdb()
    settings = replace(load_settings(), redis_url=url, storage_url=str(tmp_path / "store"),
                       s3_endpoint=None, models=pack.models, textures=pack.textures,
                       scratch=tmp_path / "scratch", seed=2021, max_deliveries=3,
                       max_retries=8, retry_backoff_max=600, lease_ttl=30)
    return Farm(state, LocalStorage(tmp_path / "store"), settings)


def _job(farm, spec, preset, **changes):
    """Register ``spec`` (a new generation) and return its message as the task would build it."""
    from dataclasses import replace

    from farm.io.layout import segment_base
    from worker.delivery import Job

    generation = farm.state.register(spec.segment, [spec])[spec.id]
    job = Job(video=spec.id, segment=spec.segment, base=segment_base(spec.segment), preset=preset,
              recipe={"index": spec.index, "seed": spec.seed, "digest": spec.digest(),
                      "first_attempt": 0}, generation=generation, max_retries=8)
    return replace(job, **changes)


def test_deliver_renders_uploads_and_marks_done(direct, library, tiny):
    from farm.generate.sampling import generate_spec
    from farm.io.layout import video_keys
    from farm.io.storage import verify_video
    from worker.delivery import deliver

    spec = generate_spec(library, tiny, 4, 0, 2021)
    job = _job(direct, spec, tiny)
    result = deliver(job, direct)
    assert result["status"] == "done" and result["frames"] == 3
    assert direct.state.state(4, spec.id) == "done"
    assert direct.state.video(spec.id)["uploads"] == "1"
    marker = json.loads(direct.storage.get_bytes(video_keys(job.base, spec.id)["marker"]))
    assert verify_video(marker, direct.storage.checksums(job.base), job.base, spec.id) is None
    assert deliver(job, direct) == {"video": spec.id, "status": "already done"}
    assert direct.state.video(spec.id)["uploads"] == "1"  # rendered once


def test_deliver_drops_cancelled_and_superseded_messages(direct, library, tiny):
    from farm.generate.sampling import generate_spec
    from farm.io.layout import video_keys
    from worker.delivery import deliver

    spec = generate_spec(library, tiny, 4, 1, 2021)
    first = _job(direct, spec, tiny)
    direct.state.set_state(4, spec.id, "cancelled")
    assert deliver(first, direct)["status"] == "cancelled"
    _job(direct, spec, tiny)  # enqueued again: a new generation supersedes the first message
    assert deliver(first, direct)["status"] == "superseded"
    assert not direct.storage.exists(video_keys(first.base, spec.id)["marker"])


def test_deliver_defers_a_video_another_worker_leases(direct, library, tiny):
    from farm.generate.sampling import generate_spec
    from worker.delivery import Requeue, deliver

    spec = generate_spec(library, tiny, 4, 2, 2021)
    job = _job(direct, spec, tiny)
    assert direct.state.acquire(f"video:{spec.id}", "another-worker", 30)
    with pytest.raises(Requeue) as again:
        deliver(job, direct)
    assert again.value.status == "deferred"
    assert direct.state.state(4, spec.id) == "queued"


def test_deliver_never_renders_blind_when_storage_is_unreachable(direct, library, tiny):
    """Once it holds the lease, a delivery must know whether the video is already done: with the
    storage unreachable it defers instead of rendering (and maybe overwriting) it."""
    from dataclasses import replace

    from devtools.processes import free_port
    from farm.generate.sampling import generate_spec
    from farm.io.storage import S3Storage
    from worker.delivery import Requeue, deliver

    spec = generate_spec(library, tiny, 4, 3, 2021)
    job = _job(direct, spec, tiny)
    nowhere = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        access_key="k", secret_key="s", connect_timeout=1, max_attempts=1)
    with pytest.raises(Requeue) as again:
        deliver(job, replace(direct, storage=nowhere))
    assert again.value.status == "deferred: storage unavailable"
    assert direct.state.state(4, spec.id) == "retrying"
    assert "deferred" in direct.state.video(spec.id)["last_error"]
    assert not any((direct.settings.scratch).glob("*.staging"))  # nothing rendered


def test_an_unexpected_error_is_retried_or_failed_never_left_running(direct, library, tiny):
    """A delivery that breaks in a way nobody foresaw (here: the scratch path is a file, as an
    unwritable scratch was in a real container) hands the video to a retry at once, counted like
    a crash, and fails it at the limit; it is never left `running` for the reconciler."""
    from dataclasses import replace

    from farm.generate.sampling import generate_spec
    from worker.delivery import RetryLater, VideoFailed, deliver

    direct.settings.scratch.parent.mkdir(parents=True, exist_ok=True)
    direct.settings.scratch.write_text("not a folder")
    spec = generate_spec(library, tiny, 4, 5, 2021)
    with pytest.raises(RetryLater):
        deliver(_job(direct, spec, tiny), direct)
    info = direct.state.video(spec.id)
    assert direct.state.state(4, spec.id) == "retrying" and "running" not in info
    assert info["last_error"].startswith("unexpected error: FileExistsError")
    with pytest.raises(VideoFailed):
        deliver(replace(_job(direct, spec, tiny), retries=8), direct)
    assert direct.state.state(4, spec.id) == "failed"
    assert "unexpected error: FileExistsError" in direct.state.video(spec.id)["last_error"]


def test_deliver_fails_a_recipe_this_worker_regenerates_differently(direct, library, tiny):
    from farm.generate.sampling import generate_spec
    from worker.delivery import deliver
    from worker.process.runner import PermanentRenderError

    spec = generate_spec(library, tiny, 4, 4, 2021)
    job = _job(direct, spec, tiny)
    job.recipe["digest"] = "0" * 16  # e.g. the scheduler had another asset library
    with pytest.raises(PermanentRenderError, match="differs from the scheduler's"):
        deliver(job, direct)
    assert direct.state.state(4, spec.id) == "failed"
    assert "differs" in direct.state.video(spec.id)["last_error"]



def _whole_job(farm, spec, preset, generation_of=None):
    """Register a whole (imported) spec and return its message, as the task would build it."""
    from farm.io.layout import segment_base
    from worker.delivery import Job

    generation = farm.state.register(spec.segment, [spec])[spec.id]
    return Job(video=spec.id, segment=spec.segment, base=segment_base(spec.segment),
               preset=preset, spec=spec.to_dict(), generation=generation, max_retries=8)


def _long_spec(library, preset, segment: int, index: int, seed: int, frames: int = 80):
    """A spec of ``frames`` frames (seconds to render): time to act while it renders."""
    from dataclasses import replace

    from farm.generate.sampling import generate_spec

    return replace(generate_spec(library, preset, segment, index, seed), frames=frames,
                   source="imported", keep_gate_failures=True)


def _deliver_in_thread(job, farm) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = deliver_now(job, farm)
        except Exception as exc:  # noqa: BLE001 - the test looks at what it raised
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def deliver_now(job, farm):
    from worker.delivery import deliver

    return deliver(job, farm)


def _wait_frames(farm, video: str, n: int = 3, timeout: float = 60) -> None:
    staging = farm.settings.scratch / f"{video}.staging"
    deadline = time.monotonic() + timeout
    while len(list(staging.glob(f"JPEGImages/{video}/*.jpg"))) < n:
        assert time.monotonic() < deadline, f"{video} never rendered {n} frames"
        time.sleep(0.05)


def test_reenqueue_with_another_seed_during_a_render_is_fenced(direct, library, tiny):
    """``enqueue --force`` of a running video with another seed: the running (older) generation
    must not write its marker, and the new generation renders its own spec; the marker records
    the generation and the digest of the spec the farm holds."""
    from farm.io.layout import video_keys
    from worker.delivery import LeaseLost, deliver

    old = _long_spec(library, tiny, 4, 7, 2021)
    new = _long_spec(library, tiny, 4, 7, 999)
    assert old.id == new.id and old.digest() != new.digest()
    first = _whole_job(direct, old, tiny)
    thread, out = _deliver_in_thread(first, direct)
    _wait_frames(direct, old.id)
    second = _whole_job(direct, new, tiny)  # what enqueue --force registers
    thread.join(timeout=120)
    assert isinstance(out.get("error"), LeaseLost), out
    assert out["error"].status == "superseded"
    assert deliver(second, direct)["status"] == "done"  # not "already done"
    from farm.io.storage import done_marker
    from scheduler.finalize import check_videos

    marker = done_marker(direct.storage, first.base, new.id)
    assert marker["enqueued_digest"] == new.digest() and marker["generation"] == 2
    assert direct.state.state(4, new.id) == "done"
    assert direct.state.video(new.id)["uploads"] == "1"
    expected = {new.id: new.digest()}
    assert check_videos(direct.storage, first.base, {new.id}, expected) == {}
    # finalize compares the marker with the spec the farm holds: a marker of another spec fails
    body = json.loads(direct.storage.get_bytes(video_keys(first.base, new.id)["marker"]))
    body["enqueued_digest"] = old.digest()
    direct.storage.put_bytes(video_keys(first.base, new.id)["marker"], json.dumps(body).encode())
    problems = check_videos(direct.storage, first.base, {new.id}, expected)
    assert "the marker records spec" in problems[new.id], problems

    # a finished video whose latest enqueue has another spec is not "already done": rendered anew
    body["enqueued_digest"] = new.digest()
    direct.storage.put_bytes(video_keys(first.base, new.id)["marker"], json.dumps(body).encode())
    third = _whole_job(direct, old, tiny)
    assert deliver(third, direct)["status"] == "done"
    assert done_marker(direct.storage, first.base, old.id)["enqueued_digest"] == old.digest()
    assert check_videos(direct.storage, first.base, {old.id}, {old.id: old.digest()}) == {}


def test_cancel_is_sticky_through_a_transient_storage_error(direct, library, tiny, s3_service):
    """Cancel while the video renders, then the storage fails: the delivery must not turn the
    cancelled video into ``retrying`` (its retry would render it), and a redelivered copy of the
    message is dropped as cancelled."""
    from dataclasses import replace

    import boto3

    from devtools.faults import HttpFaultProxy
    from farm.io.storage import S3Storage, StorageError
    from worker.delivery import LeaseLost, deliver

    bucket = f"cancel-{time.time_ns()}"
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_service}", region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(
        Bucket=bucket)
    proxy = HttpFaultProxy(s3_service)
    storage = S3Storage(bucket, endpoint_url=f"http://127.0.0.1:{proxy.port}",
                        access_key="test", secret_key="test", connect_timeout=1, max_attempts=1)
    farm = replace(direct, storage=storage)
    spec = _long_spec(library, tiny, 4, 8, 2021)
    job = _whole_job(farm, spec, tiny)
    try:
        thread, out = _deliver_in_thread(job, farm)
        _wait_frames(farm, spec.id)
        proxy.down = True  # the storage fails from here on: uploads raise StorageError
        farm.state.set_state(4, spec.id, "cancelled")  # what `scheduler cancel --video` does
        thread.join(timeout=120)
    finally:
        proxy.close()
    error = out.get("error")
    assert not isinstance(error, StorageError), "a cancelled video was set up for a retry"
    assert isinstance(error, LeaseLost) and error.status == "cancelled", out
    assert farm.state.state(4, spec.id) == "cancelled"
    assert deliver(job, direct) == {"video": spec.id, "status": "cancelled"}  # the retry
    assert not (direct.settings.scratch / f"{spec.id}.staging").exists()  # nothing to upload


def test_a_spec_larger_than_the_whole_scratch_filesystem_fails_with_that_reason(direct, library,
                                                                             tiny):
    """A render larger than the scratch filesystem's total size can never fit: the video fails
    with that reason instead of being handed back (which would stop every worker in turn). A
    disk full only now is still a hand-back (tests/system/test_ops.py)."""
    import shutil
    from dataclasses import replace

    from farm.io.outputs import estimate_space
    from worker.delivery import deliver
    from worker.process.runner import PermanentRenderError

    direct.settings.scratch.mkdir(parents=True, exist_ok=True)
    total = shutil.disk_usage(direct.settings.scratch).total
    spec = _long_spec(library, tiny, 4, 9, 2021, frames=1000)
    spec = replace(spec, resolution=(4096, 4096),
                   render=replace(spec.render, outputs=("rgb", "masks", "depth", "flow", "normals")))
    assert estimate_space(spec).scratch > total
    with pytest.raises(PermanentRenderError, match="can never fit"):
        deliver(_whole_job(direct, spec, tiny), direct)
    assert direct.state.state(4, spec.id) == "failed"
    assert "more than the whole scratch filesystem" in direct.state.video(spec.id)["last_error"]

# --- the whole farm ------------------------------------------------------------------------------


def celery_control(farm, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app", "control",
                           "--timeout", "5", *args], env=farm.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def wait_log(farm, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in farm.log(name):
        assert time.monotonic() < deadline, farm.log(name)[-3000:]
        time.sleep(0.5)


def test_cancel_then_enqueue_again_renders(farm):
    farm.start_worker("w1")
    wait_log(farm, "w1", "ready.")
    celery_control(farm, "cancel_consumer", "render")  # the worker is up but takes nothing
    farm.cli("enqueue", "--segment", "9", "--count", "1", "--preset", "tiny")
    farm.cli("cancel", "--segment", "9")  # revokes the queued task on every worker
    assert farm.status(9)["cancelled"] == 1
    out = farm.cli("enqueue", "--segment", "9", "--count", "1", "--preset", "tiny").stdout
    assert "enqueued 1 videos" in out
    celery_control(farm, "add_consumer", "render")
    farm.wait_for(9, done=1, timeout=120)
    log = farm.log("w1")
    assert "Discarding revoked task" in log and "render-j00000-1" in log  # the cancelled one


def test_crash_retries_past_max_retries_end_failed(farm):
    # Every render is killed by the memory watchdog: a crash per delivery. Celery allows one
    # retry; the video must end failed with its reason, not sit in "retrying" forever.
    farm.start_worker("w1", FARM_MAX_RETRIES="1", FARM_MAX_DELIVERIES="5",
                      FARM_RENDER_MAX_RSS_MB="1", FARM_WARMUP="off")  # no render passes 1 MB
    farm.cli("enqueue", "--segment", "10", "--count", "1", "--preset", "tiny")
    farm.wait_for(10, failed=1, retrying=0, timeout=120)
    failed = json.loads(farm.cli("failed", "--segment", "10", "--json").stdout)
    assert "render crashed 2 times (retries: 1)" in failed[0]["error"]
    assert "resident memory" in failed[0]["error"]


def test_explicit_priority_is_served_before_the_default(farm):
    farm.cli("enqueue", "--segment", "11", "--count", "3", "--preset", "tiny")  # default: 5
    farm.cli("enqueue", "--segment", "12", "--count", "1", "--preset", "tiny", "--priority", "3")
    farm.start_worker("w1")
    farm.wait_for(11, done=3, timeout=180)
    farm.wait_for(12, done=1, timeout=30)

    state = farm.state()
    started = {v: float(state.video(v)["started_at"])
               for v in ("l00000", "l00001", "l00002", "m00000")}
    assert min(started, key=started.get) == "m00000", started


def test_render_process_gets_no_credentials(library, tiny, tmp_path, monkeypatch):
    from farm.generate.sampling import generate_spec
    from worker.attempts import render_attempts

    secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "REDIS_PASSWORD": "pw",
               "FARM_REDIS_URL": "redis://:pw@127.0.0.1:1/0", "FARM_STORAGE_URL": "s3://b"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    seen: list[bytes] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for proc in render_processes(str(tmp_path)):
                with contextlib.suppress(OSError):
                    seen.append((proc / "environ").read_bytes())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        render_attempts(generate_spec(library, tiny, 0, 3, 2021), tiny, library.models_root,
                        library.textures_root, tmp_path / "scratch")
    finally:
        stop.set()
        watcher.join()
    assert seen, "the render process was never observed"
    names = {entry.split(b"=", 1)[0].decode() for entry in seen[-1].split(b"\0") if entry}
    assert not names & set(secrets), names
    assert "PATH" in names


def test_render_process_dies_with_its_worker(library, tiny, tmp_path):
    """A hard kill of the worker (SIGKILL) must not leave Blender rendering, orphaned."""
    from farm.generate.sampling import generate_spec
    from farm.model.spec import save_spec
    from worker.attempts import render_attempts  # noqa: F401 - the child imports it

    spec = generate_spec(library, tiny, 0, 3, 2021)
    save_spec(spec, tmp_path / "spec.yaml")
    code = ("import sys; from pathlib import Path; from farm.model.validate import load_spec;"
            "from worker.attempts import render_attempts;"
            f"render_attempts(load_spec({str(tmp_path / 'spec.yaml')!r}), None, "
            f"{str(library.models_root)!r},"
            f" {str(library.textures_root)!r}, Path({str(tmp_path / 'scratch')!r}),"
            " progress=lambda d, t: __import__('time').sleep(30))")
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (children := render_processes(str(tmp_path))):
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.05)
    assert all(alive(child) for child in children)  # still importing bpy
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 5
    while any(alive(child) for child in children):
        assert time.monotonic() < deadline, "the render process outlived its worker"
        time.sleep(0.05)


def test_enqueue_refuses_a_spec_whose_limit_outlasts_the_visibility_timeout(farm, library,
                                                                            tmp_path):
    from dataclasses import replace

    from farm.generate.sampling import generate_spec
    from farm.model.presets import load_preset
    from farm.model.spec import save_spec

    spec = replace(generate_spec(library, load_preset("bl30k"), 13, 0, 2021), frames=1000,
                   source="imported")
    save_spec(spec, tmp_path / "long.yaml")
    proc = farm.cli("enqueue", "--specs", str(tmp_path / "long.yaml"), check=False,
                    env={"FARM_VISIBILITY_TIMEOUT": "7200"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "exceeds the broker's visibility timeout" in proc.stderr
    assert farm.cli("status", "--json").stdout.strip() == "[]"  # nothing registered


def test_finalize_proves_frames_belong_to_the_marker_and_requeues_mixed_ones(farm):
    farm.start_worker("w1")
    farm.cli("enqueue", "--segment", "14", "--count", "2", "--preset", "tiny")
    farm.wait_for(14, done=2, timeout=120)
    # Another delivery's frame lands under the finished video (same name, other content).
    key = "bl30k/14/Annotations/o00001/00001.png"
    other = farm.s3.get_object(Bucket=farm.bucket, Key="bl30k/14/Annotations/o00000/00001.png")
    farm.s3.put_object(Bucket=farm.bucket, Key=key, Body=other["Body"].read() + b"\0")
    proc = farm.cli("finalize", "--segment", "14", check=False)
    assert proc.returncode == 1
    assert "o00001: Annotations/o00001/00001.png is not the file its marker records" in proc.stdout
    out = farm.cli("finalize", "--segment", "14", "--requeue", check=False).stdout
    assert "re-enqueued 1 videos whose frames do not match their marker" in out
    farm.wait_for(14, done=2, queued=0, running=0, timeout=120)
    deadline = time.monotonic() + 60
    while farm.cli("finalize", "--segment", "14", check=False).returncode:
        assert time.monotonic() < deadline
        time.sleep(1)


def test_finalize_prune_removes_frames_of_failed_and_cancelled_videos(farm, pack, tmp_path):
    import shutil

    broken = tmp_path / "models"
    shutil.copytree(pack.models, broken)
    for obj in broken.glob("*/*/models/model_normalized.obj"):
        obj.write_text("not a mesh\n")  # every video fails on its first model
    farm.start_worker("w1", FARM_MODELS=str(broken))
    farm.cli("enqueue", "--segment", "15", "--count", "2", "--preset", "tiny")
    farm.wait_for(15, failed=2, timeout=120)
    stale = [f"bl30k/15/JPEGImages/p0000{i}/00000.jpg" for i in (0, 1)]
    for key in stale:  # e.g. left by a worker that lost its lease
        farm.s3.put_object(Bucket=farm.bucket, Key=key, Body=b"stale")
    out = farm.cli("finalize", "--segment", "15", "--prune", "--force").stdout
    assert "pruned the frames of 2 failed or cancelled videos" in out
    assert not [k for k in farm.keys("bl30k/15/") if "/JPEGImages/" in k]


def test_cancel_of_a_video_that_is_done_keeps_it_and_prune_keeps_its_frames(farm):
    """A cancel that arrives after the video finished (the operator listed it while it was
    queued) leaves it done: its state stays done and finalize --prune never removes it."""
    farm.start_worker("w1")
    farm.cli("enqueue", "--segment", "25", "--count", "1", "--preset", "tiny")
    farm.wait_for(25, done=1, timeout=120)
    frames = farm.keys("bl30k/25/JPEGImages/")
    out = farm.cli("cancel", "--segment", "25", "--video", "z00000", "z00009").stdout
    assert "cancelled 0 videos" in out and "not cancelled, already done: z00000" in out
    assert "not cancelled, not in segment 25: z00009" in out  # a typo creates no video
    assert farm.state().states(25) == {"z00000": "done"}
    out = farm.cli("finalize", "--segment", "25", "--prune").stdout
    assert "pruned the frames of 0 failed or cancelled videos" in out
    assert farm.keys("bl30k/25/JPEGImages/") == frames and len(frames) == 3


def test_running_reconciler_resends_a_lost_message_and_status_flags_it(farm):
    from devtools.local import start_reconciler

    state = farm.state()
    farm.cli("enqueue", "--segment", "16", "--count", "2", "--preset", "tiny")
    removed = 0
    for key in [k for k in state.r.scan_iter("render*") if state.r.type(k) == "list"]:
        for raw in state.r.lrange(key, 0, -1):
            if json.loads(raw)["headers"]["id"] == "render-q00001-1":
                removed += state.r.lrem(key, 0, raw)  # the broker lost it
    assert removed == 1
    status = json.loads(farm.cli("status", "--segment", "16", "--json",
                                 "--stranded-after", "0").stdout)[0]
    assert status["stranded"] == ["q00001"]
    text = farm.cli("status", "--segment", "16", "--stranded-after", "0").stdout
    assert "1 videos pending with no message and no lease" in text
    reconciler = start_reconciler(farm.env, farm.folder / "reconciler.log", every_s=1.0,
                                  min_age_s=3.0)
    farm.workers.append(reconciler)
    farm.start_worker("w1")
    farm.wait_for(16, done=2, timeout=120)
    log = (farm.folder / "reconciler.log").read_text()
    assert "re-sent 1 videos without a message in the broker: q00001" in log
    assert json.loads(farm.cli("status", "--segment", "16", "--json", "--stranded-after",
                               "0").stdout)[0]["stranded"] == []


def test_frozen_worker_that_lost_its_lease_stops_and_overwrites_nothing(farm, library, tmp_path):
    """The zombie-lease case: worker A freezes (SIGSTOP) past its lease mid-render, worker B
    renders the video, then A resumes: A must stop its render and uploads within seconds, write
    no marker and leave B's state alone; the bucket holds exactly B's frames."""
    from dataclasses import replace

    from farm.generate.sampling import generate_spec
    from farm.model.presets import load_preset
    from farm.model.spec import save_spec

    spec = replace(generate_spec(library, load_preset("tiny"), 17, 0, 2021), frames=150,
                   source="imported", keep_gate_failures=True)
    save_spec(spec, tmp_path / "specs" / f"{spec.id}.yaml")
    state = farm.state()
    ttl = {"FARM_LEASE_TTL": "3"}
    a = start_own_group(farm, "wa", **ttl)
    farm.cli("enqueue", "--specs", str(tmp_path / "specs"))
    deadline = time.monotonic() + 180  # its warm-up first, however loaded the machine
    while not render_processes(f"wa/{spec.id}.staging"):
        assert time.monotonic() < deadline, farm.log("wa")[-2000:]
        time.sleep(0.05)
    time.sleep(1.0)  # some frames streamed
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        time.sleep(4.5)  # past the 3 s lease
        farm.start_worker("wb", **ttl)
        farm.cli("enqueue", "--specs", str(tmp_path / "specs"), "--force")
        farm.wait_for(17, done=1, timeout=120)
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while render_processes(f"wa/{spec.id}.staging"):
        assert time.monotonic() < deadline, "the frozen worker kept rendering after resuming"
        time.sleep(0.1)
    wait_log(farm, "wa", "lease", timeout=20)
    time.sleep(2)  # give a misbehaving A time to write
    assert farm.status(17)["done"] == 1
    assert state.video(spec.id)["uploads"] == "1"  # A wrote no marker, changed no state
    # An upload A had in flight when it froze can still land after B's marker: the bucket proves
    # it (the marker's MD5s) and finalize repairs it; anything else A wrote would show here too.
    proc = farm.cli("finalize", "--segment", "17", check=False)
    if proc.returncode:
        assert f"{spec.id}: " in proc.stdout and "is not the file its marker records" in proc.stdout
        farm.cli("finalize", "--segment", "17", "--requeue", check=False)
        farm.wait_for(17, done=1, queued=0, running=0, timeout=120)
        deadline = time.monotonic() + 60
        while farm.cli("finalize", "--segment", "17", check=False).returncode:
            assert time.monotonic() < deadline
            time.sleep(1)


def start_own_group(farm, name: str, **env: str):
    from devtools.local import start_worker

    proc = start_worker({**farm.env, **env}, name, farm.folder / f"{name}.log", own_session=True)
    farm.workers.append(proc)
    return proc


def test_a_new_delivery_removes_frames_an_earlier_one_left(farm):
    stale = "bl30k/18/JPEGImages/s00000/00007.jpg"  # an earlier delivery of more frames
    farm.s3.put_object(Bucket=farm.bucket, Key=stale, Body=b"stale")
    farm.start_worker("w1")
    farm.cli("enqueue", "--segment", "18", "--count", "1", "--preset", "tiny")
    farm.wait_for(18, done=1, timeout=120)
    assert stale not in farm.keys("bl30k/18/")
    assert farm.cli("finalize", "--segment", "18", check=False).returncode == 0
