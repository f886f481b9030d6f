"""The train/val split of a dataset's videos and its command-line options (no numpy: the
scheduler's parser is built from them before any command runs)."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitOptions:
    """How the videos are split: ``val`` a fraction (< 1) or a count (>= 1) of the videos."""

    val: float = 0.1
    seed: int = 0
    year: str = "2017"
    first_appearance: bool = False  # write AnnotationsFirstAppearance/ for the val videos


def parse_val(text: str) -> float:
    """``--val``: a fraction in [0, 1) or a whole number of videos."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--val {text!r}: give a fraction (0.1) or a number of videos (50)") from None
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise ValueError(f"--val {text!r}: a fraction in [0, 1) or a whole number of videos")
    return value


def _draw(seed: int, video: str) -> float:
    """A video's fixed draw in [0, 1) for a seed."""
    return int(hashlib.sha256(f"{seed}:{video}".encode()).hexdigest()[:15], 16) / 16**15


def split_videos(videos: list[str], val: float, seed: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``, each sorted; deterministic in (videos, val, seed).

    With a fraction each video's split is its own draw (``val`` iff its draw < the fraction), so
    it never changes as the segment grows (the split's size is the fraction on average); with a
    count, the videos of the lowest draws (exactly that many)."""
    if val < 1:
        chosen = {v for v in videos if _draw(seed, v) < val}
    else:
        chosen = set(sorted(videos, key=lambda v: _draw(seed, v))[:int(val)])
    return {"train": sorted(set(videos) - chosen), "val": sorted(chosen)}


def val_size(text: str) -> float:
    try:
        return parse_val(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def split_opts(p: argparse.ArgumentParser) -> None:
    """The options of the dataset's index files (farm/io/dataset.py)."""
    p.add_argument("--val", type=val_size, default=SplitOptions.val,
                   help="validation split: a fraction (default 0.1) or a number of videos")
    p.add_argument("--split-seed", type=int, default=SplitOptions.seed,
                   help="seed of the train/val split (stable as the segment grows)")
    p.add_argument("--first-appearance", action="store_true",
                   help="also write AnnotationsFirstAppearance/ for the validation videos (each "
                   "object only in the frame it first appears: YouTube-VOS's validation protocol)")


def split_options(args: argparse.Namespace) -> SplitOptions:
    return SplitOptions(val=args.val, seed=args.split_seed, first_appearance=args.first_appearance)
