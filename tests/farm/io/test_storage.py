"""Storage on moto's real S3 HTTP server: streaming upload during the render, error mapping."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from farm.io.layout import video_keys
from farm.io.storage import FrameStreamer, S3Storage, StorageError, upload_video

pytestmark = pytest.mark.services
_buckets = itertools.count()
VIDEO = "a00001"


def s3(port: int, bucket: str | None = None, **kwargs) -> S3Storage:
    return S3Storage(bucket or f"stream-{next(_buckets)}", endpoint_url=f"http://127.0.0.1:{port}",
                     access_key="test", secret_key="test", **kwargs)


def stage(folder: Path, frames: int) -> Path:
    """A staged video as the renderer leaves it: random JPEG/PNG stand-ins."""
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        (folder / kind / VIDEO).mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            (folder / kind / VIDEO / f"{i:05d}.{ext}").write_bytes(os.urandom(1000 + i))
    return folder


def frame_keys(base: str, frames: int) -> list[str]:
    keys = video_keys(base, VIDEO)
    return ([f"{keys['images']}/{i:05d}.jpg" for i in range(frames)]
            + [f"{keys['masks']}/{i:05d}.png" for i in range(frames)])


def test_streamed_frames_are_not_sent_twice_and_rewritten_ones_are(s3_service, tmp_path):
    storage = s3(s3_service)
    storage.create()
    staging = stage(tmp_path, 4)
    streamer = FrameStreamer(storage, "seg", staging, VIDEO)
    for done in range(1, 5):  # the render's progress callback, frame by frame
        streamer.frame_done(done, 4)
    streamed = streamer.close()
    assert streamer.failures == 0 and len(streamed) == 8
    assert all(storage.exists(k) for k in frame_keys("seg", 4))
    # A resampled attempt rewrote frame 2's JPEG after it was streamed: it must be sent again.
    rewritten = staging / "JPEGImages" / VIDEO / "00002.jpg"
    rewritten.write_bytes(b"new attempt" * 50)
    result = upload_video(storage, "seg", staging, VIDEO, "spec: 1\n", {"video": VIDEO},
                          streamed=streamed)
    assert result["streamed"] == 7
    assert storage.get_bytes(f"{video_keys('seg', VIDEO)['images']}/00002.jpg") == b"new attempt" * 50
    assert storage.exists(video_keys("seg", VIDEO)["marker"])


def test_streaming_to_unreachable_storage_loses_nothing(s3_service, tmp_path):
    from devtools.processes import free_port

    staging = stage(tmp_path, 3)
    dead = s3(free_port(), connect_timeout=0.5, max_attempts=1)
    streamer = FrameStreamer(dead, "seg", staging, VIDEO)
    for done in range(1, 4):
        streamer.frame_done(done, 3)
    streamed = streamer.close()
    assert streamed == {} and streamer.failures >= 1  # then it stops trying
    good = s3(s3_service)
    good.create()
    result = upload_video(good, "seg", staging, VIDEO, "spec: 1\n", {"video": VIDEO},
                          streamed=streamed)
    assert result["streamed"] == 0
    assert all(good.exists(k) for k in frame_keys("seg", 3))


def test_failed_file_upload_is_a_storage_error_naming_the_bucket(s3_service, tmp_path):
    missing = s3(s3_service, bucket="no-such-bucket")
    path = tmp_path / "f.jpg"
    path.write_bytes(b"x")
    with pytest.raises(StorageError, match="no-such-bucket"):
        missing.put_file("k.jpg", path)
