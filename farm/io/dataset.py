"""What the standard VOS tools read beside the frames, written from the videos' manifests.

- ``meta.json``: YouTube-VOS style (per video, per object id its category and visible frames),
  plus each video's split, the frames where no object is visible, and the ids missing at frame 0;
- ``ImageSets/<year>/train.txt`` and ``val.txt``: DAVIS style split lists (one video a line), a
  seeded split from a hash of (seed, name): with a fraction, each video's split is fixed however
  the segment grows; with a count, exactly that many validation videos;
- ``empty_masks.json``: per video (every one) the frames whose mask holds no object, in Cutie's
  ``empty_masks`` format (its trainer admits a sampled clip only if its first frame is not empty);
- optionally ``AnnotationsFirstAppearance/<video>/`` for the validation split: each object only in
  the frame it first appears (YouTube-VOS's non-exhaustive validation protocol).

The same function serves ``scheduler finalize`` (a segment in the bucket) and local renders
(``python -m worker render`` / ``demo``).
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from farm.io.layout import (
    EMPTY_MASKS,
    FIRST_APPEARANCE,
    IMAGE_SETS,
    MARKERS,
    MASKS,
    META,
    frame_name,
    join,
    marker_video,
    mask_file,
    video_keys,
)
from farm.io.masks import encode_mask
from farm.io.splits import SplitOptions, split_videos
from farm.io.storage import Storage, StorageError, VideoFiles, done_marker
from farm.model.spec import DEFAULT_OUTPUTS, OUTPUTS

SPLITS = ("train", "val")


def visible(manifest: dict, obj_id: int) -> list[int]:
    """The frames where object ``obj_id`` has pixels."""
    return [f["frame"] for f in manifest["frames"] if f["objects"][obj_id - 1]["pixels"] > 0]


def missing_at_first_frame(manifest: dict) -> list[int]:
    """Object ids with no pixel in frame 0 (the DAVIS toolkit counts objects as frame 0's top id)."""
    first = manifest["frames"][0]["objects"] if manifest["frames"] else []
    return [o["id"] for o in manifest["objects"] if not first or first[o["id"] - 1]["pixels"] == 0]


def empty_frames(manifest: dict) -> list[str]:
    """Frames whose mask holds no object."""
    return [frame_name(f["frame"]) for f in manifest["frames"]
            if all(o["pixels"] == 0 for o in f["objects"])]


def first_appearances(manifest: dict) -> dict[int, list[int]]:
    """frame -> the object ids that first appear in it."""
    firsts: dict[int, list[int]] = {}
    for obj in manifest["objects"]:
        frames = visible(manifest, obj["id"])
        if frames:
            firsts.setdefault(frames[0], []).append(obj["id"])
    return dict(sorted(firsts.items()))


def youtube_vos_meta(manifests: dict[str, dict]) -> dict:
    """YouTube-VOS ``meta.json``: per video, per object id its category and visible frames, and
    the outputs it has; ``outputs``: those of the whole segment (the union)."""
    videos, every = {}, set()
    for video, m in sorted(manifests.items()):
        objects = {}
        for obj in m["objects"]:
            objects[str(obj["id"])] = {"category": obj["category"], "synset": obj["synset"],
                                       "model": obj["model"],
                                       "frames": [frame_name(f) for f in visible(m, obj["id"])]}
        outputs = list(m.get("outputs") or m.get("render_settings", {}).get("outputs")
                       or DEFAULT_OUTPUTS)
        every.update(outputs)
        videos[video] = {"objects": objects, "outputs": outputs}
    return {"videos": videos, "outputs": [o for o in OUTPUTS if o in every]}


def model_licenses(manifests: dict[str, dict]) -> dict:
    """``{"licenses": {licence: ["<library>:<model>", ...]}}`` of the manifest libraries' models
    the videos show (a licence the manifest does not name is "unknown"); {} when every object
    comes from a ShapeNet-layout root, whose models carry none (meta.json as before)."""
    found: dict[str, set[str]] = {}
    for m in manifests.values():
        for obj in m["objects"]:
            if obj.get("library"):
                found.setdefault(obj.get("license") or "unknown", set()).add(
                    f"{obj['library']}:{obj['model']}")
    return {"licenses": {k: sorted(v) for k, v in sorted(found.items())}} if found else {}


def content_digest(markers: dict[str, bytes]) -> str:
    """SHA-256 over ``<video> <SHA-256 of its marker>`` lines, in name order."""
    lines = "".join(f"{v} {hashlib.sha256(body).hexdigest()}\n" for v, body in sorted(markers.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def finished_videos(storage: Storage, base: str) -> list[str]:
    """The videos with a completion marker under ``base``."""
    return sorted(v for v in map(marker_video, storage.list(join(base, MARKERS) + "/")) if v)


def read_each(storage: Storage, base: str, videos: list[str], kind: str) -> dict[str, bytes | None]:
    """video -> the bytes of its ``kind`` file (``video_keys``: manifest, marker, spec), or None;
    read 16 at a time."""
    def one(video: str) -> tuple[str, bytes | None]:
        return video, storage.get_bytes(video_keys(base, video)[kind])

    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(one, videos))


def read_manifests(storage: Storage, base: str, videos: list[str]) -> dict[str, dict]:
    return {v: json.loads(body or b"{}") for v, body in read_each(storage, base, videos, "manifest").items()}


@dataclass
class DatasetFiles:
    """What ``write_dataset_files`` wrote: key -> bytes of each index file, and the split."""

    files: dict[str, bytes]
    options: SplitOptions
    splits: dict[str, list[str]]
    first_frame_incomplete: dict[str, list[int]]  # video -> ids missing at frame 0
    first_appearance_masks: int = 0


def dataset_files(manifests: dict[str, dict], options: SplitOptions,
                  extra: dict | None = None) -> DatasetFiles:
    """The index files (meta.json, ImageSets, empty_masks.json) of the ``manifests``' videos."""
    splits = split_videos(sorted(manifests), options.val, options.seed)
    meta = youtube_vos_meta(manifests)
    incomplete = {}
    for split, videos in splits.items():
        for video in videos:
            entry = meta["videos"][video]
            entry["split"] = split
            entry["empty_frames"] = empty_frames(manifests[video])
            missing = missing_at_first_frame(manifests[video])
            entry["missing_at_first_frame"] = missing
            if missing:
                incomplete[video] = missing
    meta["splits"] = {"seed": options.seed, "val": options.val, "year": options.year,
                      **{s: len(v) for s, v in splits.items()}}
    meta.update(model_licenses(manifests))
    meta.update(extra or {})
    files = {META: json.dumps(meta).encode()}
    for split, videos in splits.items():
        files[join(IMAGE_SETS, options.year, f"{split}.txt")] = "".join(f"{v}\n" for v in videos).encode()
    # Cutie's format (its load_empty_masks): every video, [] when none is empty
    empties = {v: meta["videos"][v]["empty_frames"] for v in sorted(manifests)}
    files[EMPTY_MASKS] = json.dumps(empties).encode()
    return DatasetFiles(files, options, splits, incomplete)


def first_appearance_masks(storage: Storage, base: str, video: str, manifest: dict) -> dict[str, bytes]:
    """key -> palette PNG of each frame where an object first appears, holding only those
    objects (every other pixel 0)."""
    out = {}
    files = VideoFiles(storage, base, video, done_marker(storage, base, video))
    for frame, ids in first_appearances(manifest).items():
        raw = files.get(join(MASKS, video, mask_file(frame)))
        if raw is None:
            raise StorageError(f"{video}: no mask for frame {frame_name(frame)}")
        full = np.array(Image.open(io.BytesIO(raw)))
        out[join(base, FIRST_APPEARANCE, video, mask_file(frame))] = encode_mask(
            np.where(np.isin(full, ids), full, 0))
    return out


def write_dataset_files(storage: Storage, base: str, manifests: dict[str, dict],
                        options: SplitOptions, extra: dict | None = None) -> DatasetFiles:
    """Write the index files (and, asked for, the validation split's first-appearance masks)."""
    result = dataset_files(manifests, options, extra)
    keep = set(result.splits["val"]) if options.first_appearance else set()
    stale = [k for k in storage.list(join(base, FIRST_APPEARANCE) + "/")
             if k[len(join(base, FIRST_APPEARANCE)):].strip("/").split("/")[0] not in keep]
    storage.delete(stale)  # videos no longer in the validation split (or the set not asked for)
    if options.first_appearance:
        for video in result.splits["val"]:
            masks = first_appearance_masks(storage, base, video, manifests[video])
            for key, body in masks.items():
                storage.put_bytes(key, body)
            result.first_appearance_masks += len(masks)
    for key, body in result.files.items():
        storage.put_bytes(join(base, key), body)
    return result
