"""Folders of relative links that present a local dataset the way a tool hard-codes its layout
(``python -m farm view davis|youtube-vos DIR --out VIEW``); nothing is copied.

- ``davis``: the DAVIS 2017 toolkit's ``JPEGImages/480p/<video>``, ``Annotations/480p/<video>``
  and ``ImageSets/2017/<split>.txt``. The toolkit counts a video's objects as the highest id in
  frame 0, so videos whose frame 0 does not show every object are left out of the view's split
  lists (and named).
- ``youtube-vos``: ``train/`` (every frame annotated), ``valid/`` (the first-appearance
  annotations: each object only in the frame it first appears, YouTube-VOS's validation
  protocol) with their ``meta.json``, and ``all_frames/valid_all_frames/JPEGImages``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from farm.io.layout import FIRST_APPEARANCE, IMAGE_SETS, IMAGES, MASKS, META
from farm.io.storage import StorageError

DAVIS_RESOLUTION = "480p"


@dataclass
class ViewResult:
    out: Path
    videos: dict[str, list[str]]  # split -> videos in the view
    left_out: dict[str, str] = field(default_factory=dict)  # video -> why


def read_meta(root: Path) -> dict:
    path = root / META
    if not path.is_file():
        raise StorageError(f"{path}: no such file (python -m farm index {root} writes the index "
                           "files of a folder)")
    return json.loads(path.read_text())


def _link(target: Path, link: Path) -> None:
    if not target.is_dir():
        raise StorageError(f"{target}: no such folder")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))


def _splits(meta: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": []}
    for video, entry in sorted(meta["videos"].items()):
        out.setdefault(entry.get("split", "train"), []).append(video)
    return out


def davis_view(root: Path, out: Path) -> ViewResult:
    meta = read_meta(root)
    year = str(meta.get("splits", {}).get("year", "2017"))
    result = ViewResult(out, {})
    for split, videos in _splits(meta).items():
        kept = []
        for video in videos:
            missing = meta["videos"][video].get("missing_at_first_frame") or []
            if missing:
                result.left_out[video] = (f"object(s) {', '.join(map(str, missing))} not in frame 0 "
                                          "(the toolkit counts objects from frame 0)")
                continue
            _link(root / IMAGES / video, out / IMAGES / DAVIS_RESOLUTION / video)
            _link(root / MASKS / video, out / MASKS / DAVIS_RESOLUTION / video)
            kept.append(video)
        sets = out / IMAGE_SETS / year
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("".join(f"{v}\n" for v in kept))
        result.videos[split] = kept
    return result


def youtube_vos_view(root: Path, out: Path) -> ViewResult:
    meta = read_meta(root)
    splits = _splits(meta)
    if splits["val"] and not (root / FIRST_APPEARANCE).is_dir():
        raise StorageError(f"{root / FIRST_APPEARANCE}: no such folder; the validation split "
                           "needs first-appearance annotations (--first-appearance)")
    for video in splits["train"]:
        _link(root / IMAGES / video, out / "train" / IMAGES / video)
        _link(root / MASKS / video, out / "train" / MASKS / video)
    for video in splits["val"]:
        _link(root / IMAGES / video, out / "valid" / IMAGES / video)
        _link(root / IMAGES / video, out / "all_frames" / "valid_all_frames" / IMAGES / video)
        _link(root / FIRST_APPEARANCE / video, out / "valid" / MASKS / video)
    for name, videos in (("train", splits["train"]), ("valid", splits["val"])):
        (out / name).mkdir(parents=True, exist_ok=True)
        subset = {"videos": {v: meta["videos"][v] for v in videos}}
        (out / name / META).write_text(json.dumps(subset))
    return ViewResult(out, {"train": splits["train"], "valid": splits["val"]})
