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
    digits = re.findall(r"\d{5}", ext)
    return (1, int(digits[-1]), ext) if digits else (2, 0, ext)


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
