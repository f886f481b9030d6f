"""Training clips streamed from a pack (farm/io/shards.py) without unpacking it: a torch-free
iterator (``clips``) and, where PyTorch is installed, an ``IterableDataset`` (``torch_dataset``)
that gives each data-loader worker its own shards.

A clip is ``length`` consecutive frames of one video with their id masks (0 = background,
1..K = objects, as in ``Annotations/``); ``stride`` frames apart (default: ``length``, clips
that do not overlap). In a pack of clip samples (``farm pack --clip``) clips are cut within
each sample. Videos (or samples) shorter than ``length`` give no clip and are counted in
``ClipStats.short`` (a trainer that silently accepts 0 videos is the failure this prevents).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from farm.io.layout import FRAME, sample_video
from farm.io.shards import read_index, shard_members
from farm.io.storage import Storage, open_location


@dataclass
class Clip:
    video: str
    start: int
    frames: list[str]  # frame names, "00008"
    rgb: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) uint8 ids
    objects: list[dict]  # the manifest's objects (id, category, model, ...)


@dataclass
class ClipStats:
    videos: int = 0
    clips: int = 0
    short: list[str] = field(default_factory=list)  # videos with fewer frames than a clip


def samples(storage: Storage, base: str = "", shards: list[dict] | None = None
            ) -> Iterator[dict[str, bytes | str]]:
    """WebDataset-style samples (``__key__`` and one entry per member extension) of a pack's
    shards, in order."""
    index, _ = read_index(storage, base)
    for shard in index["shards"] if shards is None else shards:
        sample: dict[str, bytes | str] = {}
        for name, body in shard_members(storage, base, shard):
            key, _, ext = name.partition(".")
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext] = body
        if sample:
            yield sample


def _decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def video_clips(sample: dict, length: int, stride: int | None = None) -> Iterator[Clip]:
    """The clips of one video sample."""
    frames = sorted(ext[:5] for ext in sample if FRAME.fullmatch(ext) and ext.endswith(".jpg"))
    manifest = json.loads(sample.get("manifest.json") or b"{}")
    for start in range(0, len(frames) - length + 1, stride or length):
        names = frames[start:start + length]
        yield Clip(sample_video(str(sample["__key__"])), int(names[0]), names,
                   np.stack([_decode(sample[f"{n}.jpg"]) for n in names]),
                   np.stack([_decode(sample[f"{n}.png"]) for n in names]),
                   manifest.get("objects", []))


def clips(location: str | Storage, length: int = 8, stride: int | None = None,
          rank: int = 0, world: int = 1, stats: ClipStats | None = None) -> Iterator[Clip]:
    """Clips of ``length`` frames from a pack at ``location`` (folder or ``s3://``), from the
    shards ``rank::world`` (one share per data-loader worker or process)."""
    if length < 1:
        raise ValueError(f"clip length {length}: give at least 1 frame")
    storage = open_location(location) if isinstance(location, str) else location
    index, _ = read_index(storage)
    stats = stats if stats is not None else ClipStats()
    for sample in samples(storage, "", index["shards"][rank::world]):
        stats.videos += 1
        made = 0
        for clip in video_clips(sample, length, stride):
            made += 1
            yield clip
        stats.clips += made
        if not made:
            stats.short.append(str(sample["__key__"]))


def torch_dataset(location: str, length: int = 8, stride: int | None = None):
    """A PyTorch ``IterableDataset`` of clips (dicts of tensors: ``rgb`` (N, 3, H, W) float in
    [0, 1], ``masks`` (N, H, W) int64, ``video``, ``start``); each data-loader worker reads its
    own shards. Needs torch."""
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class ClipDataset(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            rank, world = (info.id, info.num_workers) if info else (0, 1)
            for clip in clips(location, length, stride, rank, world):
                yield {"video": clip.video, "start": clip.start,
                       "rgb": torch.from_numpy(clip.rgb).permute(0, 3, 1, 2).float() / 255,
                       "masks": torch.from_numpy(clip.masks.astype(np.int64))}

    return ClipDataset()
