"""Output storage: a local directory or an S3-compatible bucket behind one small interface.

Layout under a base prefix (``<prefix>/<segment>`` on the farm, the output folder locally):
``JPEGImages/<video>/00000.jpg``, ``Annotations/<video>/00000.png``, the extra outputs a spec asks
for (``Depth/``, ``Flow/``, ``Normals/``, ``Camera/``, ``AmodalAnnotations/``, see
farm/io/outputs.py), ``specs/<video>.yaml``, ``manifests/<video>.json`` and, written last, the
completion marker ``done/<video>.json``, which lists the files each output folder must hold.
A video counts as present only when its marker exists.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from farm.io.archive import read_members, tar_bytes
from farm.io.layout import (
    FOLDERS,
    IMAGES,
    MASKS,
    frame_name,
    frame_names,
    join,
    member_key,
    member_name,
    video_keys,
)
from farm.io.outputs import folder_counts
from farm.settings import ConfigError, Settings, secret

UPLOAD_THREADS = 16


class StorageError(RuntimeError):
    """Storage is unreachable or refused an operation (transient: worth retrying)."""


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def open_stream(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def checksums(self, prefix: str) -> dict[str, str]: ...
    def delete(self, keys: list[str]) -> None: ...
    def create(self) -> str: ...
    def describe(self) -> str: ...


class LocalStorage:
    """Keys are paths under ``root``; each write lands atomically (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key {key!r} escapes {self.root}")
        return path

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(dest)
        except OSError as exc:
            raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
        except OSError as exc:
            raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def open_stream(self, key: str) -> BinaryIO:
        """A key's content to read in pieces (a shard)."""
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".tmp"))

    def checksums(self, prefix: str) -> dict[str, str]:
        """key -> MD5 hex of its content, for every key under ``prefix``."""
        return {key: file_md5(self.root / key) for key in self.list(prefix)}

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot delete {key}: {exc.strerror or exc}") from None

    def create(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        return f"using {self.describe()}"

    def describe(self) -> str:
        return f"local directory {self.root}"


class S3Storage:
    """An S3-compatible bucket via boto3; keys are prefixed with ``prefix``."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, connect_timeout: float = 5.0,
                 max_attempts: int = 4) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix, self.endpoint_url = bucket, prefix.strip("/"), endpoint_url
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(connect_timeout=connect_timeout, read_timeout=60,
                          retries={"max_attempts": max_attempts, "mode": "standard"},
                          max_pool_connections=UPLOAD_THREADS * 2),
        )

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except S3UploadFailedError as exc:  # upload_file wraps ClientError (e.g. 503 SlowDown)
            raise StorageError(f"S3 {what} failed on s3://{self.bucket}: {exc}") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                raise FileNotFoundError(what) from None
            raise StorageError(f"S3 {what} failed on s3://{self.bucket} ({code}): {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(
                f"S3 {what} failed: cannot reach {self.endpoint_url or 'AWS S3'} "
                f"bucket {self.bucket}: {exc}") from None

    def put_file(self, key: str, path: Path) -> None:
        self._call(f"upload {key}", self.client.upload_file, str(path), self.bucket,
                   self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key),
                   Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            obj = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket,
                             Key=self._key(key))
            return obj["Body"].read()
        except FileNotFoundError:
            return None

    def open_stream(self, key: str) -> BinaryIO:
        try:
            return self._call(f"get {key}", self.client.get_object, Bucket=self.bucket,
                              Key=self._key(key))["Body"]
        except FileNotFoundError:
            raise StorageError(f"s3://{self.bucket}/{self._key(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        try:
            self._call(f"head {key}", self.client.head_object, Bucket=self.bucket,
                       Key=self._key(key))
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []

        def pages():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(o["Key"][cut:] for o in page.get("Contents", []))

        self._call(f"list {prefix}", pages)
        return sorted(keys)

    def checksums(self, prefix: str) -> dict[str, str]:
        """key -> MD5 hex of its content (the ETag of a single-part upload; a multipart object,
        never a frame, is downloaded and hashed)."""
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self.prefix) + 1 if self.prefix else 0
        etags: dict[str, str] = {}

        def pages():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                etags.update((o["Key"][cut:], o["ETag"].strip('"')) for o in page.get("Contents", []))

        self._call(f"list {prefix}", pages)
        for key, etag in etags.items():
            if "-" in etag:
                etags[key] = hashlib.md5(self.get_bytes(key) or b"").hexdigest()
        return etags

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            result = self._call(f"delete {len(batch)} keys", self.client.delete_objects,
                                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                error = result["Errors"][0]
                raise StorageError(f"S3 delete failed on s3://{self.bucket} for {error['Key']}: "
                                   f"{error.get('Code')} {error.get('Message')}")

    def create(self) -> str:
        """Create the bucket unless it exists (idempotent: compose's init runs it every start)."""
        try:
            self._call(f"head bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket)
            return f"bucket {self.bucket} exists"
        except FileNotFoundError:
            self._call(f"create bucket {self.bucket}", self.client.create_bucket,
                       Bucket=self.bucket)
            return f"created bucket {self.bucket}"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS'}"


def done_marker(storage: Storage, base: str, video: str) -> dict | None:
    """The video's completion marker, or None when there is none (a HEAD first: the common
    answer is "none", and cheap)."""
    key = video_keys(base, video)["marker"]
    if not storage.exists(key):
        return None
    body = storage.get_bytes(key)
    return json.loads(body) if body else None


def remove_frames(storage: Storage, base: str, video: str) -> int:
    """Delete a video's frames and extra outputs (e.g. streamed by an attempt that then failed);
    returns the count.

    Loaders that list ``JPEGImages/``, ``Annotations/`` (or the extra outputs' folders) must never
    see them.
    """
    frames = [key for folder in FOLDERS.values()
              for key in storage.list(join(base, folder, video) + "/")]
    archive = video_keys(base, video)["archive"]
    frames += [archive] if storage.exists(archive) else []
    storage.delete(frames)
    return len(frames)


Signature = tuple[int, int]  # (mtime_ns, size) of a staged file when its upload started


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class FrameStreamer:
    """Uploads each frame while the rest of the video renders, so the upload overlaps the render.

    Best effort: a failed or superseded upload is simply sent again by ``upload_video``, which
    skips only files whose content (mtime and size) is unchanged since they were streamed. A
    resampled attempt rewrites the staged frames, so those are re-sent too.
    """

    def __init__(self, storage: Storage, base: str, staging: Path, video: str,
                 threads: int = 4, may_write: Callable[[], bool] | None = None) -> None:
        self.storage, self.keys, self.video = storage, video_keys(base, video), video
        self.staging = staging
        self.may_write = may_write or (lambda: True)  # false once the video's lease is lost
        self.sent: dict[Path, Signature] = {}
        self.failures = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stream")

    def frame_done(self, done: int, _total: int = 0) -> None:
        """Progress callback: frame ``done - 1`` is written (JPEG, mask and extra outputs)."""
        name = frame_name(done - 1)
        for key, path in _frame_files(self.staging, self.video, self.keys["base"], [name]):
            self._pool.submit(self._put, key, path)

    def _put(self, key: str, path: Path) -> None:
        if self.failures or not self.may_write():  # storage failing (upload_video retries) or
            return  # the lease lost: another delivery owns the video's keys now
        sig = _signature(path)
        try:
            self.storage.put_file(key, path)
        except (StorageError, OSError):
            with self._lock:
                self.failures += 1
            return
        with self._lock:
            self.sent[path] = sig

    def close(self) -> dict[Path, Signature]:
        """Wait for uploads in flight; returns what was sent (for ``upload_video``)."""
        self._pool.shutdown(wait=True)
        return dict(self.sent)


def _frame_files(staging: Path, video: str, base: str,
                 names: list[str] | None = None) -> list[tuple[str, Path]]:
    """(key, path) of the staged files of every output folder (``JPEGImages/<video>/...``,
    ``Flow/<video>/forward/...``): all, or those of the frames named (``00007``)."""
    files: list[Path] = []
    for folder in FOLDERS.values():
        root = staging / folder / video
        if not root.is_dir():
            continue
        if names is None:
            files += sorted(p for p in root.rglob("*") if p.is_file())
        else:
            files += sorted(p for n in names for p in root.rglob(f"{n}.*"))
    return [(join(base, str(p.relative_to(staging))), p) for p in files]


def upload_video(storage: Storage, base: str, staging: Path, video: str, spec_yaml: str,
                 manifest: dict, threads: int = UPLOAD_THREADS,
                 streamed: dict[Path, Signature] | None = None,
                 fence: Callable[[], None] | None = None,
                 marker_fields: dict | None = None, archive: bool = False) -> dict:
    """Upload frames concurrently, then spec and manifest, then the completion marker
    (``marker_fields`` added to it: the generation and the enqueued spec's digest).

    Frames in ``streamed`` (a FrameStreamer's uploads) whose staged file is unchanged are not
    sent again. Re-uploading overwrites the same keys, so a retried upload is idempotent. The
    marker records every frame's MD5, so the bucket proves which render its frames belong to
    (``verify_video``). ``fence`` is called before the marker is written and raises if this
    delivery may no longer complete the video (its lease is lost). With ``archive`` the frames
    and extra outputs go as one tar object (``videos/<video>.tar``, one PUT, its MD5 in the
    marker) instead of one object each. Returns timing and byte counts.
    """
    keys = video_keys(base, video)
    t0 = time.perf_counter()
    files = _frame_files(staging, video, base)
    streamed = streamed or {}
    archive_fields, todo = {}, []
    if archive:  # one PUT (put_object: its ETag is the MD5 that finalize compares)
        contents = {k: p.read_bytes() for k, p in files}  # each staged file read once
        digests = {k: hashlib.md5(b).hexdigest() for k, b in contents.items()}
        body = tar_bytes([(member_name(video, k[len(base):].lstrip("/")), b)
                          for k, b in contents.items()], int(time.time()))
        storage.put_bytes(keys["archive"], body)
        archive_fields = {"archive": keys["archive"][len(base):].lstrip("/"),
                          "archive_md5": hashlib.md5(body).hexdigest(), "archive_bytes": len(body)}
    else:
        todo = [(k, p) for k, p in files if p not in streamed or streamed[p] != _signature(p)]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda kp: storage.put_file(*kp), todo))
            digests = dict(zip((k for k, _ in files), pool.map(lambda kp: file_md5(kp[1]), files),
                               strict=True))
    storage.put_bytes(keys["spec"], spec_yaml.encode())
    body = json.dumps(manifest, indent=1).encode()
    storage.put_bytes(keys["manifest"], body)
    frames = sum(1 for k, _ in files if k.endswith(".jpg"))
    nbytes = sum(p.stat().st_size for _, p in files) + len(body) + len(spec_yaml)
    marker = {"video": video, "frames": frames, "spec_digest": manifest.get("spec_digest"),
              "finished_at": time.time(), **(marker_fields or {}), **archive_fields,
              "checksums": {k[len(base):].lstrip("/"): d for k, d in digests.items()}}
    settings = manifest.get("render_settings", {})
    if list(settings.get("outputs", ["rgb", "masks"])) != ["rgb", "masks"]:
        # What each output folder must hold (finalize's completeness check): from what the
        # spec asked for, not from what happened to be staged.
        marker["outputs"] = list(settings["outputs"])
        marker["files"] = folder_counts(settings, manifest.get("num_frames", frames),
                                        len(manifest.get("objects", [])))
    if fence:
        fence()
    storage.put_bytes(keys["marker"], json.dumps(marker).encode())
    return {"files": (1 if archive else len(files)) + 3, "bytes": nbytes,
            "streamed": 0 if archive else len(files) - len(todo),
            "upload_s": round(time.perf_counter() - t0, 4)}


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_video(marker: dict, checksums: dict[str, str], base: str, video: str) -> str | None:
    """Why the stored frames of ``video`` are not exactly the ones its marker records, or None.

    ``checksums``: key -> MD5 of the segment's objects (``Storage.checksums(base)``). Frame names
    must be 00000..N-1 in both folders, and each frame's content the one the marker recorded.
    """
    frames = marker.get("frames")
    if not isinstance(frames, int):
        return "marker has no frame count"
    if marker.get("archive"):
        stored = checksums.get(join(base, marker["archive"]))
        if stored is not None:  # else: an unpacked copy, its files checked one by one below
            return None if stored == marker.get("archive_md5") else \
                f"{marker['archive']} is not the archive its marker records (another delivery wrote it)"
        if not any(k.startswith(join(base, IMAGES, video) + "/") for k in checksums):
            return f"{marker['archive']} is missing"
    stored = {}
    for folder in (IMAGES, MASKS):
        prefix = join(base, folder, video) + "/"
        stored.update({f"{folder}/{k[len(prefix):]}": d for k, d in checksums.items()
                       if k.startswith(prefix)})
    want = frame_names(frames)
    if set(stored) != want:
        missing, extra = sorted(want - set(stored)), sorted(set(stored) - want)
        parts = ([f"{len(missing)} missing (first {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unexpected (first {extra[0]})"] if extra else [])
        return f"frames do not match the marker's {frames}: {', '.join(parts)}"
    recorded = marker.get("checksums")
    if not isinstance(recorded, dict):
        return None  # a marker from before checksums were recorded: names only
    for name in sorted(want):
        if f"{name.split('/')[0]}/{video}/{name.split('/')[1]}" not in recorded:
            return f"the marker records no checksum for {name}"
    for rel, digest in sorted(recorded.items()):  # frames and every extra output's files
        stored_digest = checksums.get(join(base, rel))
        if stored_digest is None:
            return f"{rel} is missing"
        if stored_digest != digest:
            return f"{rel} is not the file its marker records (another delivery wrote it)"
    return None


class VideoFiles:
    """A finished video's files by key under the segment (``JPEGImages/<video>/00000.jpg``),
    from its archive when its marker names one that is present, else from its folders."""

    def __init__(self, storage: Storage, base: str, video: str, marker: dict | None) -> None:
        self.storage, self.base = storage, base
        self.members: dict[str, bytes] | None = None
        if marker and marker.get("archive"):
            raw = storage.get_bytes(join(base, marker["archive"]))
            if raw is not None:
                self.members = {member_key(name)[1]: body
                                for name, body in read_members(io.BytesIO(raw))}

    def get(self, rel: str) -> bytes | None:
        if self.members is not None and rel in self.members:
            return self.members[rel]
        return self.storage.get_bytes(join(self.base, rel))

    def names(self, folder: str, video: str) -> list[str]:
        """File names under ``<folder>/<video>/``."""
        prefix = join(folder, video) + "/"
        if self.members is not None:
            return sorted(k[len(prefix):] for k in self.members if k.startswith(prefix))
        full = join(self.base, prefix.rstrip("/")) + "/"
        return sorted(k[len(full):] for k in self.storage.list(full))


def open_storage(settings: Settings) -> Storage:
    """The farm's storage: ``s3://bucket/prefix`` (the prefix is the storage's own) or a local
    path / ``file://`` URL."""
    url = settings.storage_url
    if url.startswith("s3://"):
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigError(f"FARM_STORAGE_URL={url!r} has no bucket")
        return S3Storage(parts.netloc, parts.path.strip("/"), endpoint_url=settings.s3_endpoint,
                         region=os.environ.get("AWS_DEFAULT_REGION"),
                         access_key=secret("AWS_ACCESS_KEY_ID"),
                         secret_key=secret("AWS_SECRET_ACCESS_KEY"))
    if url.startswith("file://"):
        url = urlsplit(url).path
    return LocalStorage(url)


def open_location(location: str) -> Storage:
    """A dataset's location: a local folder, or ``s3://bucket/prefix`` with the farm's S3
    settings (FARM_S3_ENDPOINT, AWS_*)."""
    if location.startswith("s3://"):
        from dataclasses import replace

        from farm.settings import current

        return open_storage(replace(current(), storage_url=location))
    return LocalStorage(Path(location.removeprefix("file://")))
