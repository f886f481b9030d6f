"""Per-file objects against one tar per video (``FARM_UPLOAD_ARCHIVE``) and packs
(``farm pack``/``unpack``), on the local stack's S3 server: PUTs, bytes, upload wall time, and
what a segment then costs to list, check (finalize's listing of MD5s), pack and unpack.

Videos are 160-frame folders made of a real render's frames (bench/farm.py ``stage_video``),
uploaded by the worker's own ``upload_video``.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.farm import Services, stage_video
from farm.io.layout import IMAGES, join
from farm.io.shards import pack, unpack
from farm.io.storage import LocalStorage, upload_video

FORMATS = {"one object per file": False, "one tar per video": True}


def bench_formats(svc: Services, source: Path, videos: int = 8, frames: int = 160) -> list[dict]:
    video = next((source / IMAGES).iterdir()).name
    staging = svc.folder / "formats-staging"
    names = [f"v{i:05d}" for i in range(videos)]
    for name in names:
        stage_video(source, video, staging, name, frames)
    rows = []
    for label, archive in FORMATS.items():
        base = f"formats/{int(archive)}"
        puts = nbytes = 0
        t0 = time.perf_counter()
        for name in names:
            up = upload_video(svc.storage, base, staging, name, "spec: bench\n", {"video": name},
                              archive=archive)
            puts, nbytes = puts + up["files"], nbytes + up["bytes"]
        upload_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        objects = len(svc.storage.list(base + "/"))
        list_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        svc.storage.checksums(base)
        checksums_s = time.perf_counter() - t0
        rows.append({"bench": "delivery format", "format": label, "videos": videos,
                     "frames": frames, "objects": objects, "puts": puts,
                     "mb": round(nbytes / 1e6, 1), "upload_s": round(upload_s, 2),
                     "s_per_video": round(upload_s / videos, 3), "list_s": round(list_s, 3),
                     "checksums_s": round(checksums_s, 3)})
        t0 = time.perf_counter()
        packed = pack(svc.storage, base, svc.storage, join("packs", str(int(archive))),
                      shard_bytes=200_000_000)
        pack_s = time.perf_counter() - t0
        unpacked = unpack(svc.storage, join("packs", str(int(archive))),
                          LocalStorage(svc.folder / f"unpacked-{int(archive)}"))
        shards = packed.index["shards"]
        rows.append({"bench": "pack", "from": label, "videos": videos, "shards": len(shards),
                     "pack_puts": packed.puts, "mb": round(sum(s["bytes"] for s in shards) / 1e6, 1),
                     "pack_s": round(pack_s, 2), "unpack_s": unpacked.seconds,
                     "unpacked_files": unpacked.files})
    return rows
