"""Every folder and key name of the farm's output, in one place.

A segment of a dataset (storage prefix ``<storage URL prefix>/<segment>/``) holds the DAVIS /
YouTube-VOS layout and the farm's bookkeeping:

    JPEGImages/<video>/00000.jpg          frames (and the extra outputs' folders, FOLDERS)
    Annotations/<video>/00000.png         palette masks, 0 = background, 1..K = objects
    specs/<video>.yaml                    the spec the video was rendered from
    manifests/<video>.json                the render's manifest (timings, device, objects)
    done/<video>.json                     completion marker: written last, lists every file
    meta.json                             the segment's summary (YouTube-VOS style, splits)
    ImageSets/<year>/train.txt, val.txt   the split (DAVIS style)
    empty_masks.json                      per video the frames whose mask holds no object
    AnnotationsFirstAppearance/<video>/   optional: each object only where it first appears
    dataset.json, DATASET.md              the dataset card (counts, seeds, figures, checksums)

Beside the segments, ``enqueued/<segment>/<time>-<id>.json`` is the scheduler's record of each
enqueue: per video its generation and spec digest (what ``finalize`` expects, whatever Redis
remembers); it stays out of the segment's folders, which hold the dataset and its markers.

With ``FARM_UPLOAD_ARCHIVE=1`` a video's frames and extra outputs travel as one object,
``videos/<video>.tar``, whose members are named as in a WebDataset sample (``member_name``):
``<video>.00000.jpg``, ``<video>.00000.png``, ``<video>.Depth.00000.png``...; packs
(farm/io/shards.py) use the same names, with ``<video>.spec.yaml``, ``.manifest.json`` and
``.done.json``.

A worker stages a video in ``<scratch>/<video>.staging/`` with the same frame folders.
"""

from __future__ import annotations

import re
from pathlib import Path

from farm.io.output_kinds import KINDS

# output kind -> folder: each kind's entry in the registry (farm/io/output_kinds.py)
FOLDERS = {name: kind.folder for name, kind in KINDS.items()}
IMAGES, MASKS = FOLDERS["rgb"], FOLDERS["masks"]
SPECS, MANIFESTS, MARKERS, ENQUEUED = "specs", "manifests", "done", "enqueued"
META = "meta.json"
IMAGE_SETS, EMPTY_MASKS, FIRST_APPEARANCE = "ImageSets", "empty_masks.json", "AnnotationsFirstAppearance"
CARD, CARD_PAGE = "dataset.json", "DATASET.md"
ARCHIVES = "videos"
PER_VIDEO = {"spec.yaml": "spec", "manifest.json": "manifest", "done.json": "marker"}
VIDEO_FOLDERS = (*FOLDERS.values(), FIRST_APPEARANCE)
FRAME = re.compile(r"\d{5}\.(jpg|png)")
STAGING_SUFFIX = ".staging"


def join(*parts: str) -> str:
    """Storage keys are '/'-joined; empty parts are dropped."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def segment_base(segment: int) -> str:
    """A segment's prefix within the storage (whose URL may carry a prefix of its own)."""
    return str(segment)


def frame_name(frame: int) -> str:
    """A frame's file stem: ``00000``."""
    return f"{frame:05d}"


def image_file(frame: int) -> str:
    return f"{frame_name(frame)}.jpg"


def mask_file(frame: int) -> str:
    return f"{frame_name(frame)}.png"


def video_keys(base: str, video: str) -> dict[str, str]:
    """The keys of one video under a segment's ``base`` prefix."""
    return {
        "base": base,
        "images": join(base, IMAGES, video),
        "masks": join(base, MASKS, video),
        "spec": join(base, SPECS, f"{video}.yaml"),
        "manifest": join(base, MANIFESTS, f"{video}.json"),
        "marker": join(base, MARKERS, f"{video}.json"),
        "archive": join(base, ARCHIVES, f"{video}.tar"),
    }


def marker_video(key: str) -> str | None:
    """The video a key under ``done/`` marks, or None for any other key."""
    folder, _, name = key.rpartition("/")
    if folder.rsplit("/", 1)[-1] != MARKERS or not name.endswith(".json"):
        return None
    return name.removesuffix(".json")


def frame_names(frames: int) -> set[str]:
    """Every file a finished video of ``frames`` frames holds under its two frame folders,
    relative to the video's folders (``JPEGImages/00000.jpg``)."""
    return ({f"{IMAGES}/{image_file(i)}" for i in range(frames)}
            | {f"{MASKS}/{mask_file(i)}" for i in range(frames)})


def enqueued_prefix(segment: int) -> str:
    """Where the scheduler records what it enqueued into ``segment``."""
    return join(ENQUEUED, str(segment))


def staging_dir(scratch: str | Path, video: str) -> Path:
    """Where a worker stages a video until it is uploaded."""
    return Path(scratch) / f"{video}{STAGING_SUFFIX}"


def staged_video(path: Path) -> str | None:
    """The video a staging folder belongs to, or None for anything else."""
    return path.name.removesuffix(STAGING_SUFFIX) if path.name.endswith(STAGING_SUFFIX) else None


def frame_dirs(root: Path, video: str) -> tuple[Path, Path]:
    """(images, masks) folders of ``video`` under a local dataset or staging root."""
    return root / IMAGES / video, root / MASKS / video


def member_name(video: str, rel: str) -> str:
    """The tar member of a video's file (``rel``: its key under the segment)."""
    if "." in video:
        raise ValueError(f"video name {video!r} holds a dot, which ends a WebDataset sample key")
    keys = video_keys("", video)
    for ext, kind in PER_VIDEO.items():
        if rel == keys[kind]:
            return f"{video}.{ext}"
    folder, _, rest = rel.partition("/")
    rest = rest.removeprefix(f"{video}/")
    if folder == IMAGES and FRAME.fullmatch(rest) and rest.endswith(".jpg") or \
            folder == MASKS and FRAME.fullmatch(rest) and rest.endswith(".png"):
        return f"{video}.{rest}"
    parts = rest.split("/")
    if folder not in VIDEO_FOLDERS or any("." in p for p in parts[:-1]) or parts[-1].count(".") != 1:
        raise ValueError(f"{video}: cannot name {rel} in a shard")
    return f"{video}.{folder}.{'.'.join(parts)}"


CLIP_SUFFIX = re.compile(r"-\d{5}$")  # a clip sample's key: <video>-<first frame>


def sample_video(key: str) -> str:
    """The video of a sample key (``c00042``, or a clip's ``c00042-00008``)."""
    return CLIP_SUFFIX.sub("", key)


def member_key(name: str) -> tuple[str, str]:
    """(video, key under the segment) of a tar member: the inverse of ``member_name`` (a clip
    sample's members too)."""
    key, _, ext = name.partition(".")
    video = sample_video(key)
    if ext in PER_VIDEO:
        return video, video_keys("", video)[PER_VIDEO[ext]]
    if FRAME.fullmatch(ext):
        return video, join(IMAGES if ext.endswith(".jpg") else MASKS, video, ext)
    folder, _, rest = ext.partition(".")
    parts = rest.split(".")
    if folder not in VIDEO_FOLDERS or len(parts) < 2:
        raise ValueError(f"tar member {name!r} is not a file of this farm's layout")
    return video, join(folder, video, *parts[:-2], f"{parts[-2]}.{parts[-1]}")
