"""Farm benchmarks on local services (redis-server + moto's S3 server on loopback).

- enqueue rate of the scheduler CLI;
- task-path overhead: a video through queue -> worker -> render -> upload -> marker against the
  bare Cycles render time of the same frames in the same run, with streaming upload off and on;
- upload throughput of the worker's uploader against the AWS CLI copying the same folder to the
  same S3 server.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.render import bench_spec, render_bench
from devtools.local import farm_env, start_redis, start_s3, start_worker
from devtools.processes import free_port, stop
from farm.generate.sampling import video_id
from farm.io.layout import IMAGES, MASKS, frame_name, video_keys
from farm.io.storage import S3Storage, upload_video
from farm.model.spec import save_spec
from farm.queue.state import FarmState, connect
from farm.settings import current

ROOT = Path(__file__).resolve().parent.parent
BUCKET = PASSWORD = "bench"  # S3 bucket; Redis password of the throwaway server


@dataclass
class Services:
    folder: Path
    env: dict[str, str]
    state: FarmState
    storage: S3Storage

    def scheduler(self, *cmd: str) -> str:
        return subprocess.run([sys.executable, "-m", "scheduler", "-q", *cmd], env=self.env,
                              check=True, capture_output=True, text=True, cwd=ROOT).stdout


@contextmanager
def local_services(folder: Path) -> Iterator[Services]:
    redis_port, s3_port = free_port(), free_port()
    procs = [start_redis(folder / "redis", redis_port, PASSWORD),
             start_s3(s3_port, folder / "s3.log")]
    try:
        env = {**os.environ, **farm_env(redis_port, PASSWORD, s3_port, BUCKET, folder / "scratch"),
               "FARM_GPUS": current().gpus}
        storage = S3Storage(BUCKET, endpoint_url=env["FARM_S3_ENDPOINT"],
                            access_key=env["AWS_ACCESS_KEY_ID"],
                            secret_key=env["AWS_SECRET_ACCESS_KEY"])
        svc = Services(folder, env, FarmState(connect(f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0")),
                       storage)
        svc.scheduler("init-storage")
        yield svc
    finally:
        stop(procs)


def bench_enqueue(svc: Services, count: int) -> list[dict]:
    out = svc.scheduler("enqueue", "--segment", "9", "--count", str(count), "--preset", "bl30k")
    seconds = float(out.split(" in ")[1].split(" s ")[0])
    svc.state.r.flushall()
    return [{"bench": "enqueue", "preset": "bl30k", "videos": count, "seconds": seconds,
             "videos_per_s": round(count / seconds)}]


def _wait_ready(log: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "ready." not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the benchmark worker did not start; see {log}")
        time.sleep(0.2)


def _through_farm(svc: Services, spec_file: Path, video: str, segment: int,
                  worker: subprocess.Popen) -> dict[str, str]:
    svc.scheduler("enqueue", "--specs", str(spec_file))
    while (state := svc.state.state(segment, video)) != "done":
        if state == "failed":
            raise RuntimeError(f"{video} failed: {svc.state.video(video).get('last_error')}")
        if worker.poll() is not None:
            raise RuntimeError(f"the benchmark worker exited (code {worker.returncode})")
        time.sleep(0.1)
    return svc.state.video(video)


def bench_task_path(svc: Services, preset: str, frames: int, videos: int) -> tuple[list[dict], Path]:
    """Returns the rows and the staging folder of the first bare render (for the upload bench)."""
    specs = [bench_spec(preset, i, frames) for i in range(videos)]
    bare = [render_bench(spec, svc.folder / "bare") for spec in specs]
    rows = []
    for mode, stream in (("upload after render", "0"), ("streaming upload", "1")):
        segment = 1 + int(stream)
        log = svc.folder / f"worker-stream{stream}.log"
        worker = start_worker({**svc.env, "FARM_STREAM_UPLOAD": stream}, f"bench{stream}", log)
        try:
            _wait_ready(log, worker)
            for spec, bare_render in zip(specs, bare, strict=True):
                # The same scene under another segment's id, so each mode renders it afresh;
                # "imported" + kept: a gate verdict is recorded, never resampled into a full
                # video nor failed.
                farm_spec = replace(spec, segment=segment, id=video_id(segment, spec.index),
                                    source="imported", keep_gate_failures=True)
                spec_file = svc.folder / f"{farm_spec.id}.yaml"
                save_spec(farm_spec, spec_file)
                info = _through_farm(svc, spec_file, farm_spec.id, segment, worker)
                manifest = json.loads(svc.storage.get_bytes(
                    video_keys("bl30k/" + str(segment), farm_spec.id)["manifest"]) or b"{}")
                rows.append(_overhead_row(mode, spec, info, manifest, bare_render.manifest))
        finally:
            stop([worker])
    return rows, bare[0].staging


def _overhead_row(mode: str, spec, info: dict, manifest: dict, bare: dict) -> dict:
    """Task path against the Cycles render time of the same frames in the same task.

    The denominator is the time spent in ``bpy.ops.render.render`` for these frames inside the
    task; a separate bare render of the same spec is shown too, but on a shared 2-core VM it
    differs from run to run by more than the overhead being measured.
    """
    render_s = float(info["render_s"])
    queue_to_done = float(info["finished_at"]) - float(info["queued_at"])
    encode = statistics.mean(manifest["timings"]["encode_s"])
    # Per-video fixed cost (pickup, process start, scene build, upload tail, marker) and the
    # per-frame cost (mask encode, streaming), projected onto a full 160-frame video.
    fixed = queue_to_done - render_s - spec.frames * encode
    per_frame = render_s / spec.frames
    projected = (fixed + 160 * (per_frame + encode)) / (160 * per_frame)
    return {"bench": "task path", "mode": mode, "preset": spec.preset, "frames": spec.frames,
            "render_s": render_s, "queue_to_done_s": round(queue_to_done, 2),
            "fixed_s": round(fixed, 2), "encode_ms_per_frame": round(1000 * encode, 1),
            "upload_tail_s": float(info["upload_s"]), "streamed": info.get("streamed"),
            "ratio": round(queue_to_done / render_s, 3),
            "ratio_160_frames": round(projected, 4),
            "separate_bare_render_s": bare["timings"]["render_total_s"]}


def aws_cli() -> str | None:
    """The AWS CLI: FARM_AWS_CLI, ``aws`` on PATH, or the one ``make bench`` installs."""
    for candidate in (current().aws_cli, shutil.which("aws"),
                      str(ROOT / ".venv-aws" / "bin" / "aws")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def stage_video(source: Path, video: str, folder: Path, name: str, frames: int) -> None:
    """A staging folder of ``frames`` frames for video ``name``: the frames and masks of a real
    render of ``video`` (under ``source``), repeated."""
    for kind, ext in ((IMAGES, "jpg"), (MASKS, "png")):
        rendered = sorted((source / kind / video).glob(f"*.{ext}"))
        (folder / kind / name).mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            shutil.copyfile(rendered[i % len(rendered)], folder / kind / name / f"{frame_name(i)}.{ext}")


def bench_upload(svc: Services, source: Path, frames: int = 160, repeats: int = 3) -> list[dict]:
    """Upload one 160-frame video folder (frames of a real render, repeated) both ways."""
    video = next((source / IMAGES).iterdir()).name
    folder = svc.folder / "upload" / f"{video}.staging"
    stage_video(source, video, folder, video, frames)
    nbytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    aws = aws_cli()
    times: dict[str, list[float]] = {"worker uploader (boto3, 16 threads)": []}
    if aws:
        times["aws s3 cp --recursive (AWS CLI)"] = []
    for i in range(repeats):
        t0 = time.perf_counter()
        upload_video(svc.storage, f"upload/ours{i}", folder, video, "spec", {"video": video})
        times["worker uploader (boto3, 16 threads)"].append(time.perf_counter() - t0)
        if aws:
            t0 = time.perf_counter()
            subprocess.run([aws, "s3", "cp", "--recursive", "--only-show-errors", str(folder),
                            f"s3://{BUCKET}/upload/aws{i}/", "--endpoint-url",
                            svc.env["FARM_S3_ENDPOINT"]], env=svc.env, check=True)
            times["aws s3 cp --recursive (AWS CLI)"].append(time.perf_counter() - t0)
    rows = [{"bench": "upload", "tool": tool, "files": 2 * frames, "mb": round(nbytes / 1e6, 1),
             "seconds": round(statistics.median(t), 2),
             "mb_per_s": round(nbytes / 1e6 / statistics.median(t), 1), "repeats": repeats}
            for tool, t in times.items()]
    if not aws:
        rows.append({"bench": "upload", "tool": "AWS CLI not found: `make bench` installs it "
                     "into .venv-aws (or set FARM_AWS_CLI)"})
    return rows
