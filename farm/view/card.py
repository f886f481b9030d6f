"""The dataset card of a segment (``dataset.json`` and its page ``DATASET.md``): what a paper's
appendix cites and what a user checks after a download with ``python -m farm verify``.

It holds the counts, presets, seeds, render devices, the asset libraries (with their licences
where a library declares one), a summary of the segment's figures (farm/view/figures.py), the
SHA-256 of each index file, and ``content_sha256``: one digest over every video's completion
marker, each of which records the MD5 of every file of its video, so the digest pins every byte
of the dataset, whether it lies in folders or in shards.

``write_dataset`` is the one function that finishes a dataset: ``scheduler finalize`` calls it
for a segment in the bucket, ``python -m worker render``/``demo`` for a local folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

from farm.io.dataset import (
    DatasetFiles,
    content_digest,
    finished_videos,
    read_each,
    write_dataset_files,
)
from farm.io.layout import CARD, CARD_PAGE, META, join
from farm.io.splits import SplitOptions
from farm.io.storage import Storage, StorageError, verify_video
from farm.model.spec import SpecError, VideoSpec
from farm.model.validate import parse_spec_text
from farm.view.figures import dataset_figures, summary, video_figures

FORMAT = "bl30k-dataset-card"


def read_markers(storage: Storage, base: str, videos: list[str]) -> dict[str, bytes]:
    return {v: body or b"" for v, body in read_each(storage, base, videos, "marker").items()}


def read_specs(storage: Storage, base: str, videos: list[str]) -> dict[str, VideoSpec | None]:
    def parse(video: str, text: bytes | None) -> VideoSpec | None:
        try:
            return parse_spec_text(text, video) if text else None
        except SpecError:
            return None

    return {v: parse(v, text) for v, text in read_each(storage, base, videos, "spec").items()}


def libraries(manifests: dict[str, dict]) -> list[dict]:
    """The asset libraries the videos' objects come from: object counts and the licences their
    manifests declare (a ShapeNet-layout root declares none: its terms are ShapeNet's)."""
    counts: Counter = Counter()
    licences: dict[str, set[str]] = {}
    for m in manifests.values():
        for o in m["objects"]:
            name = o.get("library") or "shapenet-layout"
            counts[name] += 1
            licences.setdefault(name, set()).add(
                o.get("license") or ("unknown" if o.get("library") else
                                     "not declared (ShapeNet-layout models root)"))
    return [{"name": name, "objects": n, "licence": ", ".join(sorted(licences[name]))}
            for name, n in sorted(counts.items())]


def _compact(stat: dict) -> dict:
    """A figure without its histogram."""
    return {k: v for k, v in stat.items() if k != "histogram"}


def build_card(manifests: dict[str, dict], specs: dict[str, VideoSpec | None],
               markers: dict[str, bytes], files: DatasetFiles, name: str) -> dict:
    per_video = [video_figures(v, m, specs.get(v)) for v, m in sorted(manifests.items())]
    figures = dataset_figures(per_video)
    steady = [float(s) for v in per_video for s in v.steady]
    seeds = sorted({s.seed for s in specs.values() if s is not None})
    return {
        "format": FORMAT, "version": 1, "name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "videos": len(manifests),
        "frames": sum(m["num_frames"] for m in manifests.values()),
        "objects": figures["objects"],
        "splits": {s: len(v) for s, v in files.splits.items()},
        "split_seed": files.options.seed,
        "segments": sorted({m["segment"] for m in manifests.values()}),
        "seeds": seeds,
        "presets": dict(Counter(m.get("preset") for m in manifests.values()).most_common()),
        "resolutions": dict(Counter("x".join(map(str, m["resolution"]))
                                    for m in manifests.values()).most_common()),
        "devices": dict(Counter(m.get("device", "?") for m in manifests.values()).most_common()),
        "blender": sorted({m.get("blender_version", "?") for m in manifests.values()}),
        "asset_libraries": libraries(manifests),
        "first_frame_incomplete": sorted(files.first_frame_incomplete),
        "figures": {
            "categories": figures["categories"],
            "objects_per_video": figures["objects_per_video"],
            **{k: _compact(figures[k]) for k in ("visible_area_fraction", "visible_frames_fraction",
                                                 "occlusion", "speed_image_per_frame")},
            "render_s_per_frame": summary(steady),
        },
        "files": {key: hashlib.sha256(body).hexdigest() for key, body in sorted(files.files.items())},
        "content_sha256": content_digest(markers),
    }


def card_page(card: dict) -> str:
    """DATASET.md: the card for people."""
    f = card["figures"]
    rows = [("videos", card["videos"]), ("frames", card["frames"]), ("objects", card["objects"]),
            ("splits", ", ".join(f"{k} {v}" for k, v in card["splits"].items())
             + f" (split seed {card['split_seed']})"),
            ("segments", ", ".join(map(str, card["segments"]))),
            ("generator seeds", ", ".join(map(str, card["seeds"])) or "?"),
            ("presets", ", ".join(f"{k} ({v})" for k, v in card["presets"].items())),
            ("resolutions", ", ".join(f"{k} ({v})" for k, v in card["resolutions"].items())),
            ("render devices", ", ".join(f"{k} ({v})" for k, v in card["devices"].items())),
            ("Blender", ", ".join(card["blender"]))]

    def med(name: str) -> str:
        s = f[name]
        return f"{s['median']:.3g} (p5 {s['p5']:.3g}, p95 {s['p95']:.3g})" if s.get("n") else "-"

    lines = [f"# Dataset card: {card['name']}", "",
             "Synthetic video object segmentation data (DAVIS / YouTube-VOS layout) rendered by "
             "the bl30k render farm.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Asset libraries", "", "| library | objects | licence |", "|---|---|---|"]
    lines += [f"| {a['name']} | {a['objects']} | {a['licence']} |" for a in card["asset_libraries"]]
    lines += ["", "## Figures", "",
              f"- categories: {', '.join(f'{k} {v}' for k, v in f['categories'].items())}",
              f"- objects per video: {', '.join(f'{k}: {v}' for k, v in f['objects_per_video'].items())}",
              f"- visible area fraction (median): {med('visible_area_fraction')}",
              f"- visible frames fraction (median): {med('visible_frames_fraction')}",
              f"- occlusion (median): {med('occlusion')}",
              f"- render seconds per frame (median): {med('render_s_per_frame')}"]
    if card["first_frame_incomplete"]:
        lines += ["", f"{len(card['first_frame_incomplete'])} videos do not show every object in "
                  "frame 0 (listed in dataset.json; `missing_at_first_frame` in meta.json)."]
    lines += ["", "## Checksums", "", f"- content (every video's completion marker): "
              f"`{card['content_sha256']}`"]
    lines += [f"- `{k}`: `{v}`" for k, v in card["files"].items()]
    lines += ["", "Check a copy (folder, bucket prefix or shards) with "
              "`python -m farm verify <location>`.", ""]
    return "\n".join(lines)


def write_dataset(storage: Storage, base: str, manifests: dict[str, dict], options: SplitOptions,
                  name: str, extra: dict | None = None) -> tuple[DatasetFiles, dict]:
    """Write the index files (farm/io/dataset.py) and the card of the ``manifests``' videos."""
    files = write_dataset_files(storage, base, manifests, options, extra)
    videos = sorted(manifests)
    card = build_card(manifests, read_specs(storage, base, videos),
                      read_markers(storage, base, videos), files, name)
    storage.put_bytes(join(base, CARD), json.dumps(card, indent=1).encode())
    storage.put_bytes(join(base, CARD_PAGE), card_page(card).encode())
    return files, card


def describe_dataset(files: DatasetFiles) -> str:
    """One line on what ``write_dataset`` wrote."""
    sets = [k for k in files.files if k.startswith("ImageSets/")]
    text = (f"meta.json, {', '.join(sets)} (train {len(files.splits['train'])}, val "
            f"{len(files.splits['val'])}), empty_masks.json, {CARD} and {CARD_PAGE}")
    if files.first_appearance_masks:
        text += f", {files.first_appearance_masks} first-appearance masks"
    if files.first_frame_incomplete:
        text += (f"; {len(files.first_frame_incomplete)} videos do not show every object in frame 0"
                 " (DAVIS views leave them out)")
    return text


def verify_folder(storage: Storage, base: str = "") -> tuple[dict | None, list[str]]:
    """Problems of a dataset in folders (local or a bucket prefix): every finished video's files
    against its completion marker, the card's content digest and index-file checksums, and
    every video of meta.json finished. Returns the card (None without one) and the problems."""
    videos = finished_videos(storage, base)
    if not videos:
        raise StorageError(f"no finished videos (done/ markers) in {storage.describe()}"
                           f"{'/' + base if base else ''}")
    checksums = storage.checksums(base)
    markers = read_markers(storage, base, videos)
    problems = [f"{v}: {p}" for v in videos
                if (p := verify_video(json.loads(markers[v] or b"{}"), checksums, base, v))]
    meta = storage.get_bytes(join(base, META))
    if meta is not None:
        problems += [f"{v}: in meta.json but not finished" for v in json.loads(meta)["videos"]
                     if v not in markers]
    raw = storage.get_bytes(join(base, CARD))
    card = json.loads(raw) if raw else None
    if card is not None:
        problems += card_problems(card, markers, lambda rel: storage.get_bytes(join(base, rel)))
    return card, problems


def card_problems(card: dict, markers: dict[str, bytes], read) -> list[str]:
    """Where a copy differs from its card: the content digest over the markers, and each index
    file's SHA-256 (``read(rel)`` gives a file's bytes or None)."""
    problems = []
    if content_digest(markers) != card["content_sha256"]:
        problems.append(f"the videos are not the card's: content digest {content_digest(markers)[:12]}, "
                        f"the card says {card['content_sha256'][:12]}")
    for rel, sha in card["files"].items():
        body = read(rel)
        if body is None or hashlib.sha256(body).hexdigest() != sha:
            problems.append(f"{rel}: {'missing' if body is None else 'not the file the card records'}")
    return problems
