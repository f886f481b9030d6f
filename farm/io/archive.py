"""Tar files of the farm's member naming (farm/io/layout.py ``member_name``): one video's
archive (``FARM_UPLOAD_ARCHIVE``) and the shards of a pack are written and read here."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from farm.io.layout import PER_VIDEO


def sample_order(name: str) -> tuple:
    """Members in sample order: the per-video files, then frame by frame (frame, mask, then the
    extra outputs of that frame), then the rest (``Camera.camera.json``)."""
    ext = name.partition(".")[2]
    if ext in PER_VIDEO:
        return (0, list(PER_VIDEO).index(ext), "")
    frame = member_frame(ext)
    return (1, frame, ext) if frame is not None else (2, 0, ext)


def member_frame(ext: str) -> int | None:
    """The frame a member belongs to (the last 5-digit part of its name), or None."""
    digits = re.findall(r"\d{5}", ext)
    return int(digits[-1]) if digits else None


def clip_samples(video: str, members: list[tuple[str, bytes]], frames: int
                 ) -> list[list[tuple[str, bytes]]]:
    """A video's members as samples of ``frames`` frames each (keys ``<video>-<first frame>``):
    each clip its frames' files and the video's spec, manifest and marker; files of no frame
    (``Camera.camera.json``) go with the first clip."""
    own = [(name.partition(".")[2], body) for name, body in members
           if name.partition(".")[2] in PER_VIDEO]
    groups: dict[int, list[tuple[str, bytes]]] = {}
    for name, body in members:
        ext = name.partition(".")[2]
        if ext not in PER_VIDEO:
            groups.setdefault((member_frame(ext) or 0) // frames * frames, []).append((ext, body))
    return [[(f"{video}-{start:05d}.{ext}", body) for ext, body in own + group]
            for start, group in sorted(groups.items())]


def add_members(tar: tarfile.TarFile, members: Iterable[tuple[str, bytes]], mtime: int) -> None:
    for name, body in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(body), mtime, 0o644
        tar.addfile(info, io.BytesIO(body))


def tar_bytes(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    """A tar (PAX) of the members, in sample order; the same members give the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_members(tar, sorted(members, key=lambda m: sample_order(m[0])), mtime)
    return buf.getvalue()


def read_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file member, reading the stream once, front to back."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                yield info.name, f.read() if f else b""
