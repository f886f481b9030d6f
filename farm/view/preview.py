"""Previews of rendered videos: a contact sheet and an animated mask overlay per video.

Reads the DAVIS layout (``JPEGImages/<video>/00000.jpg``, ``Annotations/<video>/00000.png``,
``manifests/<video>.json``) from a local folder or an S3 segment (``s3://bucket/prefix/segment``,
with the endpoint and credentials of the farm's settings, farm/settings.py). Pillow only.

- **Contact sheet** (``<video>_sheet.png``): every Nth frame as one row of two panels, the RGB frame
  and the same frame with the mask overlaid (each object in its DAVIS palette colour, blended, with
  its outline), and a legend: per object id its colour, ShapeNet category, synset and model. The
  layout (panel boxes, legend entries) is also stored as JSON in the PNG's ``bl30k-preview`` text
  chunk, so scripts and tests can read what the sheet shows.
- **Animation** (``<video>_overlay.gif`` or ``.webp``): every frame with the overlay, its frame
  number in the corner.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from farm.io.layout import IMAGES, MARKERS, MASKS, join, marker_video, video_keys
from farm.io.masks import PALETTE
from farm.io.storage import (
    LocalStorage,
    Storage,
    StorageError,
    VideoFiles,
    done_marker,
    open_location,
)

SHEET_CHUNK = "bl30k-preview"
MIN_PANEL_W, MAX_PANEL_W = 192, 384  # panels are scaled into this width range
MAX_SHEET_ROWS = 8  # default --every: at most this many rows
ALPHA = 0.55  # mask colour weight in the overlay
MARGIN, LABEL_W, HEADER_H, LEGEND_LINE = 8, 64, 40, 20
BG, FG = (32, 32, 36), (235, 235, 235)
READ_THREADS = 8


def palette_rgb(obj_id: int) -> tuple[int, int, int]:
    return tuple(PALETTE[3 * obj_id:3 * obj_id + 3])  # type: ignore[return-value]


def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Source:
    """Where rendered videos are: a storage and the key prefix of the segment in it."""

    storage: Storage
    base: str
    label: str

    def key(self, *parts: str) -> str:
        return join(self.base, *parts)


def open_source(location: str) -> Source:
    """A local output folder, or ``s3://bucket/prefix/segment`` with the farm's S3 settings."""
    storage = open_location(location)
    if isinstance(storage, LocalStorage) and not storage.root.is_dir():
        raise StorageError(f"{storage.root}: no such folder (give an output folder or s3://bucket/prefix)")
    return Source(storage, "", location if location.startswith("s3://") else str(storage.root))


def list_videos(src: Source) -> list[str]:
    """Finished videos (completion markers); without markers, the folders under JPEGImages/."""
    done = [v for v in map(marker_video, src.storage.list(src.key(MARKERS))) if v]
    if done:
        return sorted(done)
    names = {k.split("/")[-2] for k in src.storage.list(src.key(IMAGES)) if k.endswith(".jpg")}
    return sorted(names)


@dataclass
class Video:
    """One video's frames (decoded lazily in ``load``) and manifest."""

    name: str
    manifest: dict
    frame_names: list[str]
    rgb: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray | None] = field(default_factory=list)

    @property
    def objects(self) -> list[dict]:
        return self.manifest.get("objects", [])


def read_manifest(src: Source, video: str) -> dict:
    raw = src.storage.get_bytes(video_keys(src.base, video)["manifest"])
    return json.loads(raw) if raw else {}


def video_files(src: Source, video: str) -> VideoFiles:
    """The video's files, from its folders or its archive (``FARM_UPLOAD_ARCHIVE``)."""
    return VideoFiles(src.storage, src.base, video, done_marker(src.storage, src.base, video))


def frame_names(src: Source, video: str, files: VideoFiles | None = None) -> list[str]:
    """The video's frame names (``00000``...) present under JPEGImages/."""
    files = files or video_files(src, video)
    names = [n.removesuffix(".jpg") for n in files.names(IMAGES, video) if n.endswith(".jpg")]
    if not names:
        raise StorageError(f"{video}: no frames under {src.key(IMAGES, video)}/ in "
                           f"{src.label}")
    return names


def load_video(src: Source, video: str, names: list[str] | None = None,
               manifest: dict | None = None) -> Video:
    """Read a video's manifest and its frames (all, or those named)."""
    files = video_files(src, video)
    wanted = frame_names(src, video, files) if names is None else names
    manifest = read_manifest(src, video) if manifest is None else manifest

    def read(name: str) -> tuple[np.ndarray, np.ndarray | None]:
        jpg = files.get(join(IMAGES, video, f"{name}.jpg"))
        png = files.get(join(MASKS, video, f"{name}.png"))
        if jpg is None:
            raise StorageError(f"{video}: frame {name}.jpg vanished from {src.label}")
        rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
        ids = np.asarray(Image.open(io.BytesIO(png))) if png is not None else None
        return rgb, ids

    with ThreadPoolExecutor(READ_THREADS) as pool:
        decoded = list(pool.map(read, wanted))
    return Video(video, manifest, wanted, [d[0] for d in decoded], [d[1] for d in decoded])


# --- drawing -------------------------------------------------------------------------------------

def panel_size(width: int, height: int, panel_width: int | None = None) -> tuple[int, int]:
    """Frames narrower than MIN_PANEL_W are enlarged by an integer factor (pixels stay square
    and exact), wider than MAX_PANEL_W reduced; ``panel_width`` sets the width instead."""
    if panel_width:
        return panel_width, max(1, round(height * panel_width / width))
    if width < MIN_PANEL_W:
        k = math.ceil(MIN_PANEL_W / width)
        return width * k, height * k
    if width > MAX_PANEL_W:
        return MAX_PANEL_W, max(1, round(height * MAX_PANEL_W / width))
    return width, height


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(rgb)
    if img.size == size:
        return rgb
    method = Image.Resampling.NEAREST if size[0] > img.width else Image.Resampling.BOX
    return np.asarray(img.resize(size, method))


def resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(ids.astype(np.uint8), mode="L")
    return ids if img.size == size else np.asarray(img.resize(size, Image.Resampling.NEAREST))


def overlay(rgb: np.ndarray, ids: np.ndarray | None, alpha: float = ALPHA) -> np.ndarray:
    """The frame with each object's pixels blended towards its palette colour and its outline in
    that colour; background pixels are unchanged."""
    if ids is None:
        return rgb.copy()
    colours = np.asarray(PALETTE, np.float32).reshape(256, 3)[ids]
    fg = (ids > 0)[..., None]
    out = np.where(fg, (1 - alpha) * rgb + alpha * colours, rgb)
    edge = np.zeros(ids.shape, bool)  # pixels of an object next to a different id
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge &= ids > 0
    out[edge] = colours[edge]
    return np.round(out).astype(np.uint8)


def legend_entries(manifest: dict) -> list[dict]:
    entries = []
    for obj in manifest.get("objects", []):
        entries.append({"id": obj["id"], "category": obj.get("category", "?"),
                        "synset": obj.get("synset", ""), "model": obj.get("model", ""),
                        "colour": list(palette_rgb(obj["id"]))})
    return entries


def default_every(frames: int) -> int:
    return max(1, math.ceil(frames / MAX_SHEET_ROWS))


def contact_sheet(video: Video, every: int, panel_width: int | None = None
                  ) -> tuple[Image.Image, dict]:
    """The sheet image and its layout (frames shown, panel boxes, legend entries)."""
    h, w = video.rgb[0].shape[:2]
    pw, ph = panel_size(w, h, panel_width)
    rows = list(range(0, len(video.frame_names), every))
    entries = legend_entries(video.manifest)
    width = LABEL_W + 2 * pw + 3 * MARGIN
    rows_top = HEADER_H
    legend_top = rows_top + len(rows) * (ph + MARGIN) + MARGIN
    height = legend_top + max(1, len(entries)) * LEGEND_LINE + MARGIN
    sheet = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(sheet)
    small, title = font(11), font(13)
    preset = video.manifest.get("preset", "?")
    step = "every frame" if every == 1 else f"every {every} frames"
    draw.text((MARGIN, 6), f"{video.name}   {len(video.frame_names)} frames, {step} shown   "
              f"preset {preset}", fill=FG, font=title)
    x_rgb, x_ovl = LABEL_W + MARGIN, LABEL_W + 2 * MARGIN + pw
    draw.text((x_rgb, 24), "RGB", fill=FG, font=small)
    draw.text((x_ovl, 24), "mask overlay", fill=FG, font=small)
    layout_rows = []
    for r, i in enumerate(rows):
        y = rows_top + r * (ph + MARGIN)
        rgb = resize_rgb(video.rgb[i], (pw, ph))
        ids = video.ids[i]
        ids_small = resize_ids(ids, (pw, ph)) if ids is not None else None
        sheet.paste(Image.fromarray(rgb), (x_rgb, y))
        sheet.paste(Image.fromarray(overlay(rgb, ids_small)), (x_ovl, y))
        draw.text((MARGIN, y + 2), f"frame\n{video.frame_names[i]}", fill=FG, font=small)
        layout_rows.append({"frame": video.frame_names[i],
                            "rgb_box": [x_rgb, y, x_rgb + pw, y + ph],
                            "overlay_box": [x_ovl, y, x_ovl + pw, y + ph]})
    for n, e in enumerate(entries):
        y = legend_top + n * LEGEND_LINE
        box = [MARGIN, y + 2, MARGIN + 14, y + 16]
        draw.rectangle(box, fill=tuple(e["colour"]), outline=FG)
        draw.text((MARGIN + 22, y + 2), f"{e['id']}  {e['category']}  ({e['model']})",
                  fill=FG, font=small)
        e["swatch_box"] = box
    if not entries:
        draw.text((MARGIN, legend_top), "no manifest: object categories unknown", fill=FG,
                  font=small)
    layout = {"video": video.name, "frames": len(video.frame_names), "every": every,
              "frame_size": [w, h], "panel_size": [pw, ph], "panels_per_row": 2,
              "rows": layout_rows, "legend": entries, "size": [width, height]}
    return sheet, layout


def animation_frames(video: Video, panel_width: int | None = None) -> list[Image.Image]:
    h, w = video.rgb[0].shape[:2]
    size = panel_size(w, h, panel_width)
    small = font(11)
    out = []
    for name, rgb, ids in zip(video.frame_names, video.rgb, video.ids, strict=True):
        small_rgb = resize_rgb(rgb, size)
        img = Image.fromarray(overlay(small_rgb, resize_ids(ids, size) if ids is not None
                                      else None))
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, 0, 44, 14], fill=BG)
        draw.text((3, 1), name, fill=FG, font=small)  # also keeps consecutive frames distinct
        out.append(img)
    return out


def save_animation(frames: list[Image.Image], path: Path, fps: float) -> None:
    duration = round(1000 / fps)
    kwargs = {"lossless": False, "quality": 80} if path.suffix == ".webp" else {"optimize": False}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0,
                   **kwargs)


@dataclass
class PreviewResult:
    video: str
    sheet: Path
    animation: Path
    layout: dict

    def describe(self) -> str:
        cats = ", ".join(e["category"] for e in self.layout["legend"]) or "no manifest"
        return (f"{self.video}: sheet {self.sheet} ({len(self.layout['rows'])} rows x 2 panels; "
                f"objects: {cats}); animation {self.animation} ({self.layout['frames']} frames)")


def write_preview(src: Source, video: str, out: Path, every: int | None = None,
                  fps: float = 10.0, animation: str = "gif", panel_width: int | None = None
                  ) -> PreviewResult:
    """Write ``<out>/<video>_sheet.png`` and ``<out>/<video>_overlay.<gif|webp>``."""
    v = load_video(src, video)
    every = every or default_every(len(v.frame_names))
    out.mkdir(parents=True, exist_ok=True)
    sheet, layout = contact_sheet(v, every, panel_width)
    info = PngInfo()
    info.add_text(SHEET_CHUNK, json.dumps(layout))
    sheet_path = out / f"{video}_sheet.png"
    sheet.save(sheet_path, pnginfo=info, optimize=True)
    anim_path = out / f"{video}_overlay.{animation}"
    save_animation(animation_frames(v, panel_width), anim_path, fps)
    return PreviewResult(video, sheet_path, anim_path, layout)


def thumbnail(src: Source, video: str, manifest: dict | None = None, width: int = 192) -> bytes:
    """PNG bytes of the video's middle frame with its mask overlay (report grids)."""
    names = frame_names(src, video)
    v = load_video(src, video, [names[len(names) // 2]], manifest=manifest or {})
    rgb, ids = v.rgb[0], v.ids[0]
    h, w = rgb.shape[:2]
    size = (width, max(1, round(h * width / w)))
    img = Image.fromarray(overlay(resize_rgb(rgb, size),
                                  resize_ids(ids, size) if ids is not None else None))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def read_layout(sheet: Path) -> dict:
    """The layout JSON stored in a contact sheet."""
    with Image.open(sheet) as img:
        return json.loads(img.text[SHEET_CHUNK])
