"""A finished dataset as shards (``python -m farm pack`` / ``unpack``), in the WebDataset
convention: tar files whose consecutive members share a sample key, one sample per video.

A video ``c00042`` becomes the members ``c00042.spec.yaml``, ``c00042.manifest.json``,
``c00042.done.json``, then per frame ``c00042.00000.jpg`` and ``c00042.00000.png``, then any other
file of the video as ``c00042.<Folder>.<path with / as .>`` (``c00042.Depth.00000.png``,
``c00042.Flow.forward.00000.flo``, ``c00042.AnnotationsFirstAppearance.00000.png``). A shard
closes before the video that would take it past its size (never splitting a video). With
``--clip N`` a video is one sample per N frames instead (keys ``c00042-00000``, ``c00042-00008``
...), each holding the video's spec, manifest and marker too.

Beside the shards (``shards/shard-000000.tar`` ...) the pack holds the segment's own files as
they are (``meta.json``, ``ImageSets/``, ``empty_masks.json``, the card), ``index.json``
(every shard: bytes, SHA-256, videos; every file: bytes, SHA-256; the content digest) and
``index.sha256`` (``sha256sum`` format) to cite. Packing checks every file against its video's
completion marker; unpacking restores the folder layout byte for byte and checks every
checksum on the way.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from farm.io.archive import add_members, clip_samples, read_members, sample_order
from farm.io.dataset import content_digest, finished_videos
from farm.io.layout import (
    CARD,
    CARD_PAGE,
    EMPTY_MASKS,
    FIRST_APPEARANCE,
    IMAGE_SETS,
    META,
    join,
    member_key,
    member_name,
    sample_video,
    video_keys,
)
from farm.io.storage import Storage, StorageError, VideoFiles

INDEX, INDEX_SUM, SHARDS = "index.json", "index.sha256", "shards"
FORMAT = "bl30k-shards"
DEFAULT_SHARD_BYTES = 1_000_000_000
SEGMENT_FILES = (META, EMPTY_MASKS, CARD, CARD_PAGE)


class ShardError(StorageError):
    """A pack that cannot be written or read as asked (broken video, checksum mismatch)."""


@dataclass
class Video:
    name: str
    members: list[tuple[str, bytes]]
    marker: bytes
    mtime: int

    @property
    def nbytes(self) -> int:
        return sum(512 + -(-len(b) // 512) * 512 for _, b in self.members)


def read_video(storage: Storage, base: str, video: str, extra: list[str]) -> Video:
    """Every file of a finished video (from its folders or its archive), each checked against
    its completion marker (MD5); ``extra``: keys of files derived after delivery
    (first-appearance masks)."""
    marker_body = storage.get_bytes(video_keys(base, video)["marker"])
    if marker_body is None:
        raise ShardError(f"{video}: no completion marker")
    marker = json.loads(marker_body)
    recorded = marker.get("checksums")
    if not isinstance(recorded, dict):
        raise ShardError(f"{video}: its marker records no checksums (delivered by an old farm); "
                         "render it again")
    source = VideoFiles(storage, base, video, marker)
    own = video_keys("", video)
    files: dict[str, bytes] = {}
    for rel in [*recorded, own["spec"], own["manifest"], *(k[len(base):].lstrip("/") for k in extra)]:
        body = source.get(rel)
        if body is None:
            raise ShardError(f"{video}: {rel} is missing")
        if rel in recorded and hashlib.md5(body).hexdigest() != recorded[rel]:
            raise ShardError(f"{video}: {rel} is not the file its marker records (run "
                             "scheduler finalize --requeue)")
        files[rel] = body
    files[own["marker"]] = marker_body
    try:
        members = sorted(((member_name(video, rel), body) for rel, body in files.items()),
                         key=lambda m: sample_order(m[0]))
    except ValueError as exc:
        raise ShardError(str(exc)) from None
    return Video(video, members, marker_body, int(marker.get("finished_at") or 0))


class _Writer:
    """One shard being written to a local file."""

    def __init__(self, folder: Path, number: int) -> None:
        self.key = join(SHARDS, f"shard-{number:06d}.tar")
        self.path = folder / f"shard-{number:06d}.tar"
        self.tar = tarfile.open(self.path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by close())
        self.videos: list[str] = []
        self.samples = self.nbytes = 0

    def add(self, video: Video, clip: int | None = None) -> None:
        samples = clip_samples(video.name, video.members, clip) if clip else [video.members]
        for members in samples:
            add_members(self.tar, members, video.mtime)
        self.videos.append(video.name)
        self.samples += len(samples)
        self.nbytes += video.nbytes

    def close(self) -> dict:
        self.tar.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"key": self.key, "bytes": self.path.stat().st_size,
                "sha256": digest.hexdigest(), "videos": self.videos, "samples": self.samples}


def _prefetched(fn, items: list, window: int) -> Iterator:
    """``fn(item)`` for each item, in order, at most ``window`` ahead in threads."""
    with ThreadPoolExecutor(window) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def segment_files(storage: Storage, base: str) -> list[str]:
    """The segment's own files (index files, card) present under ``base``, relative to it."""
    present = [name for name in SEGMENT_FILES if storage.exists(join(base, name))]
    sets = [k[len(base):].lstrip("/") for k in storage.list(join(base, IMAGE_SETS) + "/")]
    return sorted(present + sets)


@dataclass
class PackResult:
    index: dict
    index_sha256: str
    seconds: float = 0.0
    puts: int = 0
    skipped: list[str] = field(default_factory=list)


def pack(src: Storage, base: str, dest: Storage, dest_base: str = "",
         shard_bytes: int = DEFAULT_SHARD_BYTES, threads: int = 8, progress=None,
         clip: int | None = None) -> PackResult:
    """Shards of every finished video under ``base`` and the segment's own files, with the
    index, written to ``dest`` under ``dest_base``; one sample per video, or per ``clip``
    frames (keys ``<video>-<first frame>``, each with the video's spec, manifest and marker)."""
    t0 = time.perf_counter()
    videos = finished_videos(src, base)
    if not videos:
        raise ShardError(f"no finished videos (done/ markers) in {src.describe()}"
                         f"{'/' + base if base else ''}")
    firsts: dict[str, list[str]] = {}
    for key in src.list(join(base, FIRST_APPEARANCE) + "/"):
        firsts.setdefault(key[len(base):].lstrip("/").split("/")[1], []).append(key)
    shards, markers, puts = [], {}, 0
    with tempfile.TemporaryDirectory(prefix="farm-pack-") as tmp:
        writer = None
        for video in _prefetched(lambda v: read_video(src, base, v, firsts.get(v, [])),
                                 videos, threads):
            if writer and writer.videos and writer.nbytes + video.nbytes > shard_bytes:
                shards.append(_finish(writer, dest, dest_base))
                puts += 1
                writer = None
            writer = writer or _Writer(Path(tmp), len(shards))
            writer.add(video, clip)
            markers[video.name] = video.marker
            if progress:
                progress(1)
        shards.append(_finish(writer, dest, dest_base))
        puts += 1
    files = {}
    for rel in segment_files(src, base):
        body = src.get_bytes(join(base, rel)) or b""
        dest.put_bytes(join(dest_base, rel), body)
        files[rel] = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        puts += 1
    index = {"format": FORMAT, "version": 1, "samples": "clip" if clip else "video",
             **({"clip_frames": clip} if clip else {}), "shard_bytes": shard_bytes,
             "videos": len(videos), "content_sha256": content_digest(markers),
             "shards": shards, "files": files}
    body = json.dumps(index, indent=1).encode()
    digest = hashlib.sha256(body).hexdigest()
    dest.put_bytes(join(dest_base, INDEX), body)
    dest.put_bytes(join(dest_base, INDEX_SUM), f"{digest}  {INDEX}\n".encode())
    return PackResult(index, digest, round(time.perf_counter() - t0, 3), puts + 2)


def _finish(writer: _Writer, dest: Storage, dest_base: str) -> dict:
    entry = writer.close()
    dest.put_file(join(dest_base, entry["key"]), writer.path)
    writer.path.unlink()
    return entry


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.nbytes = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.nbytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def read_index(storage: Storage, base: str = "") -> tuple[dict, str]:
    """A pack's index and its SHA-256 (checked against ``index.sha256`` when present)."""
    body = storage.get_bytes(join(base, INDEX))
    if body is None:
        raise ShardError(f"no {INDEX} in {storage.describe()}{'/' + base if base else ''} "
                         "(not a pack: python -m farm pack writes one)")
    digest = hashlib.sha256(body).hexdigest()
    cited = storage.get_bytes(join(base, INDEX_SUM))
    if cited is not None and cited.split()[0].decode() != digest:
        raise ShardError(f"{INDEX} does not match {INDEX_SUM} (the index was changed)")
    index = json.loads(body)
    if index.get("format") != FORMAT:
        raise ShardError(f"{INDEX} is not a {FORMAT} index")
    return index, digest


def shard_members(storage: Storage, base: str, shard: dict) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of a shard, streamed; raises ShardError at the end when
    the shard is not the one the index records."""
    stream = _Hashing(storage.open_stream(join(base, shard["key"])))
    try:
        yield from read_members(stream)
    except tarfile.TarError as exc:
        raise ShardError(f"{shard['key']}: not a readable tar ({exc})") from None
    stream.drain()
    if stream.sha256.hexdigest() != shard["sha256"]:
        raise ShardError(f"{shard['key']}: SHA-256 {stream.sha256.hexdigest()[:12]} is not the "
                         f"index's {shard['sha256'][:12]} (damaged or replaced)")


def _member_key(name: str) -> str:
    try:
        return member_key(name)[1]
    except ValueError as exc:
        raise ShardError(str(exc)) from None


@dataclass
class UnpackResult:
    videos: int
    files: int
    nbytes: int
    seconds: float


def unpack(src: Storage, base: str, dest: Storage, dest_base: str = "",
           threads: int = 16, progress=None) -> UnpackResult:
    """The folder layout of a pack, byte for byte, every checksum checked."""
    t0 = time.perf_counter()
    index, _ = read_index(src, base)
    written: set[str] = set()  # a clip pack repeats each video's spec, manifest and marker
    nbytes = 0
    with ThreadPoolExecutor(threads) as pool:
        for shard in index["shards"]:
            writes = []
            for name, body in shard_members(src, base, shard):
                key = _member_key(name)
                if key in written:
                    continue
                written.add(key)
                writes.append(pool.submit(dest.put_bytes, join(dest_base, key), body))
                nbytes += len(body)
            for w in writes:
                w.result()
            if progress:
                progress(len(shard["videos"]))
    for rel, entry in index["files"].items():
        body = src.get_bytes(join(base, rel))
        if body is None or hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise ShardError(f"{rel}: {'missing' if body is None else 'not the file the index records'}")
        dest.put_bytes(join(dest_base, rel), body)
        written.add(rel)
        nbytes += len(body)
    return UnpackResult(index["videos"], len(written), nbytes, round(time.perf_counter() - t0, 3))


def verify_pack(storage: Storage, base: str = "") -> tuple[dict, list[str]]:
    """Problems of a pack: every shard's SHA-256, every member against its video's completion
    marker (MD5), every video of the index present once, the segment files' SHA-256 and the
    content digest."""
    index, _ = read_index(storage, base)
    problems, markers = [], {}
    for shard in index["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        try:
            for name, body in shard_members(storage, base, shard):
                video, key = sample_video(name.partition(".")[0]), _member_key(name)
                members.setdefault(video, {})[key] = body
        except ShardError as exc:
            problems.append(f"{shard['key']}: {exc}")
        if sorted(members) != sorted(shard["videos"]):
            problems.append(f"{shard['key']}: holds videos {sorted(members)[:5]}..., the index "
                            f"lists {shard['videos'][:5]}...")
        for video, files in members.items():
            marker_body = files.get(video_keys("", video)["marker"])
            if marker_body is None:
                problems.append(f"{video}: no completion marker in {shard['key']}")
                continue
            markers[video] = marker_body
            for rel, md5 in json.loads(marker_body).get("checksums", {}).items():
                body = files.get(rel)
                if body is None or hashlib.md5(body).hexdigest() != md5:
                    state = "missing" if body is None else "differs from its marker"
                    problems.append(f"{video}: {rel} {state}")
    if len(markers) != index["videos"]:
        problems.append(f"{len(markers)} videos in the shards, the index says {index['videos']}")
    if content_digest(markers) != index["content_sha256"]:
        problems.append("the content digest of the shards' markers is not the index's")
    for rel, entry in index["files"].items():
        body = storage.get_bytes(join(base, rel))
        if body is None or hashlib.sha256(body).hexdigest() != entry["sha256"]:
            problems.append(f"{rel}: {'missing' if body is None else 'not the file the index records'}")
    return index, problems
