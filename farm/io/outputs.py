"""Extra outputs of a render beside RGB and masks: depth, optical flow, normals, camera, amodal masks.

Pure numpy (no bpy): the registry's kinds (``farm/io/output_kinds.py``: one entry per output,
with its folder, files, encoding, units, writer and reader) run over a video: one frame's writes,
the manifest's formats, the file lists and counts, the scratch estimate, and
``load_video_outputs``, which reads a rendered video back into numpy arrays.
``worker/render/outputs.py`` gets the raw passes out of Blender and calls this module.

Conventions (all outputs of one frame come from the same Cycles render, except amodal masks):

- **Pixels**: column ``x`` to the right, row ``y`` down, origin at the top-left pixel, whose
  centre is ``(0, 0)`` (OpenCV); ``W x H`` is the render resolution.
- **Camera frame**: OpenCV, x right, y down, z forward (away from the camera, into the scene).
- **Depth** (``Depth/<video>/00000.png`` or ``.exr``): metres (Blender units) along the camera's
  viewing axis (the z of the camera frame, not the distance to the camera centre), Cycles' Depth
  pass. PNG: 16-bit grey, ``value x scale_m`` metres with ``scale_m = 0.001``; 0 means no surface
  (the ray hit nothing) and 65535 is 65.535 m or farther; both read back as ``inf``. EXR: one
  FLOAT channel ``Z`` in metres, ``inf`` where no surface. The manifest gives the scale and each
  frame's depth range.
- **Optical flow** (``Flow/<video>/forward/00000.png``, ``.../backward/...``): in pixels.
  Forward flow at frame t is where the surface seen at pixel (x, y) of frame t is in frame t+1,
  minus (x, y): ``(dx, dy)``, dx positive to the right, dy positive **down**. Backward flow at t
  points to frame t-1 the same way. Forward flow of the last frame and backward flow of frame 0
  are undefined (NaN). From Cycles' Vector pass (motion blur off), which holds
  ``(prev - cur, cur - next)`` in Blender's y-up pixel space. PNG: 16-bit RGB, R = dx, G = dy
  linearly mapped from the frame's ``[lo, hi]`` range (in the manifest) onto 0..65535, B = 65535
  where the flow is defined, 0 where not. ``.flo``: Middlebury float32, undefined = 1e10.
- **Normals** (``Normals/<video>/00000.png``): unit surface normals in the camera frame (OpenCV
  axes, so a surface facing the camera has z < 0), 8-bit RGB, ``(n + 1) / 2 x 255``; (0, 0, 0)
  means no surface.
- **Camera** (``Camera/<video>/camera.json``, also in the manifest): intrinsics ``K`` (pinhole,
  pixel convention above, from the FOV spanning the larger image side: Blender's sensor fit
  AUTO) and per frame the 4x4 world-to-camera matrix (OpenCV camera frame), plus Blender's
  camera-to-world matrix (camera looks down its -Z, +Y up).
- **Amodal masks** (``AmodalAnnotations/<video>/<id>/00000.png``): each object's whole
  silhouette as if no other object were there, from extra index-only renders (1 sample, no
  denoising, the other objects and the background left out); 8-bit palette PNG holding 0 and the
  object's id (DAVIS palette). The manifest adds per object and frame ``amodal_pixels``,
  ``amodal_bbox`` and ``visible_fraction`` = visible pixels / amodal pixels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.io.layout import FOLDERS, frame_name, video_keys
from farm.io.output_kinds import (
    DEPTH_SCALE_M,
    FLOW_DIRECTIONS,
    KINDS,
    NO_HIT_DEPTH_M,
    FrameInput,
    OutputKind,
    Reading,
    VideoInput,
    add_amodal_stats,
    camera_normals,
    camera_record,
    decode_depth_png16,
    decode_flow_png16,
    decode_normals_png8,
    encode_depth_png16,
    encode_flow_png16,
    encode_normals_png8,
    flow_from_vector,
    intrinsics,
    project_points,
    units,
    valid_depth,
    world_to_camera,
)
from farm.model.spec import DEFAULT_OUTPUTS

__all__ = [  # the encoders and camera maths, re-exported from the registry's module
    "DEPTH_SCALE_M", "FLOW_DIRECTIONS", "NO_HIT_DEPTH_M", "add_amodal_stats", "camera_normals",
    "camera_record", "decode_depth_png16", "decode_flow_png16", "decode_normals_png8",
    "encode_depth_png16", "encode_flow_png16", "encode_normals_png8", "flow_from_vector",
    "intrinsics", "project_points", "valid_depth", "world_to_camera",
    "FOLDERS", "UNITS", "outputs_of", "kinds_of", "extension", "frame_files", "video_files",
    "folder_counts", "formats", "write_frame", "finish_video", "write_camera",
    "load_video_outputs", "scratch_bytes_per_pixel", "estimate_space", "SpaceEstimate",
]

UNITS = units()


def outputs_of(settings: Any) -> tuple[str, ...]:
    """The outputs of RenderSettings (or a manifest's ``render_settings`` dict)."""
    if isinstance(settings, dict):
        return tuple(settings.get("outputs", DEFAULT_OUTPUTS))
    return tuple(settings.outputs)


def kinds_of(settings: Any) -> list[OutputKind]:
    """The registry's entries of the outputs ``settings`` asks for, in registry order."""
    outs = set(outputs_of(settings))
    return [kind for name, kind in KINDS.items() if name in outs]


def scratch_bytes_per_pixel(settings: Any, num_objects: int) -> float:
    """Scratch bytes per pixel and frame a render of these outputs needs at most."""
    return sum(KINDS[o].scratch_bytes_per_pixel * (num_objects if KINDS[o].per_object else 1)
               for o in outputs_of(settings))


# Per frame: the manifest's and the marker's entries (object pixels, checksums); per video: the
# spec, the manifest's header, the marker's header (upper bounds, bytes).
BOOKKEEPING_PER_FRAME, BOOKKEEPING_PER_VIDEO = 2048, 65536


@dataclass(frozen=True)
class SpaceEstimate:
    """Upper bounds, in bytes, of what one render of a spec takes."""

    scratch: int  # on the worker's scratch disk: every staged output file and the manifest
    output: int  # in the bucket: the same files, the spec, the manifest and the marker


def estimate_space(spec: Any) -> SpaceEstimate:
    """What a render of ``spec`` (a VideoSpec) stages and uploads, from its settings alone:
    frames x resolution x the staged bytes per pixel of its outputs (amodal masks per object),
    plus the bookkeeping files."""
    width, height = spec.resolution
    files = spec.frames * width * height * scratch_bytes_per_pixel(spec.render, len(spec.objects))
    bookkeeping = BOOKKEEPING_PER_FRAME * spec.frames + BOOKKEEPING_PER_VIDEO
    return SpaceEstimate(scratch=int(files + bookkeeping), output=int(files + 2 * bookkeeping))


def extension(settings: Any, output: str) -> str:
    return KINDS[output].extension(settings)


def _frame_file(kind: OutputKind, settings: Any, video: str, sub: str, frame: int) -> str:
    return "/".join(p for p in (kind.folder, video, sub,
                                f"{frame_name(frame)}{kind.extension(settings)}") if p)


def frame_files(settings: Any, video: str, frame: int, num_objects: int) -> list[str]:
    """Paths (relative to the dataset root) of every per-frame file of ``frame``."""
    return [_frame_file(kind, settings, video, sub, frame) for kind in kinds_of(settings)
            if not kind.video_files for sub in kind.subfolders(num_objects)]


def video_files(settings: Any, video: str) -> list[str]:
    """Per-video files beside the frames (the camera JSON)."""
    return [f"{kind.folder}/{video}/{name}" for kind in kinds_of(settings)
            for name in kind.video_files]


def folder_counts(settings: Any, frames: int, num_objects: int) -> dict[str, int]:
    """Files expected under ``<folder>/<video>/`` per output folder (the completeness check)."""
    counts: dict[str, int] = {}
    for kind in kinds_of(settings):
        n = len(kind.video_files) or frames * len(kind.subfolders(num_objects))
        counts[kind.folder] = counts.get(kind.folder, 0) + n
    return counts


def formats(settings: Any) -> dict[str, dict]:
    """The manifest's ``output_formats``: per extra output its files, encoding and units."""
    return {kind.name: info for kind in kinds_of(settings)
            if (info := kind.format(settings)) is not None}


# --- writing -----------------------------------------------------------------------------------


def write_frame(root: Path, video: str, frame: int, frames: int, settings: Any,
                raw: Mapping[str, Any], *, camera_to_world: Any = None,
                objects: list[dict] | None = None, timings: dict[str, float] | None = None
                ) -> dict:
    """Encode and write one frame's outputs under ``root`` from ``raw`` (per output kind, its raw
    render data: see each kind's writer); returns the frame's manifest additions. ``objects``
    (the frame's visible stats) may get keys (amodal statistics). ``timings`` accumulates CPU
    seconds per output (of this thread: the encoding overlaps the next frame's render)."""
    record: dict = {}
    for kind in kinds_of(settings):
        if kind.write is None or raw.get(kind.name) is None or (
                kind.needs_camera and camera_to_world is None):
            continue
        t0 = time.thread_time()

        def path(sub: str, kind: OutputKind = kind) -> Path:
            p = root / _frame_file(kind, settings, video, sub, frame)
            p.parent.mkdir(parents=True, exist_ok=True)
            return p

        record.update(kind.write(FrameInput(frame, frames, settings, raw[kind.name], path,
                                            camera_to_world, objects)))
        if timings is not None:
            timings[kind.name] = timings.get(kind.name, 0.0) + time.thread_time() - t0
    return record


def finish_video(root: Path, video: str, settings: Any, camera: dict) -> dict:
    """The per-video files (the camera JSON) once every frame is rendered; returns the manifest's
    additions. ``camera``: fov_rad, width, height, matrices (Blender's camera-to-world per
    frame), clip."""
    out: dict = {}
    for kind in kinds_of(settings):
        def path(name: str, kind: OutputKind = kind) -> Path:
            p = root / kind.folder / video / name
            p.parent.mkdir(parents=True, exist_ok=True)
            return p

        out.update(kind.finish(VideoInput(settings, path, camera)) or {})
    return out


def write_camera(root: Path, video: str, record: dict) -> Path:
    """The camera JSON of a camera record (``camera_record``)."""
    path = root / KINDS["camera"].folder / video / "camera.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path


# --- reading a video back ----------------------------------------------------------------------


def load_video_outputs(root: str | Path, video: str, frames: Sequence[int] | None = None,
                       outputs: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a rendered video's outputs from a dataset folder (a ``worker render`` output or a
    segment folder copied from the bucket) into numpy arrays with the units in ``UNITS``.

    ``frames`` selects frames (default all); ``outputs`` selects outputs (default all the video
    has, from its manifest). Keys: ``rgb``, ``masks``, ``depth``, ``forward_flow``,
    ``backward_flow``, ``normals``, ``K``, ``world_to_camera``, ``amodal``, ``boxes``,
    ``visible_pixels``, ``amodal_pixels``, ``visible_fraction`` (as far as rendered), plus
    ``frames``, ``outputs``, ``units`` and ``manifest``.
    """
    root = Path(root)
    manifest = json.loads((root / video_keys("", video)["manifest"]).read_text())
    settings = manifest.get("render_settings", {})
    have = outputs_of(settings)
    want = tuple(outputs) if outputs is not None else have
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{video} has no {', '.join(missing)} output (it has {', '.join(have)})")
    idx = list(range(manifest["num_frames"])) if frames is None else list(frames)
    out: dict[str, Any] = {"video": video, "frames": idx, "outputs": list(want),
                           "units": UNITS, "manifest": manifest}

    def reading(kind: OutputKind) -> Reading:
        def file(sub: str, frame: int) -> Path:
            return root / _frame_file(kind, settings, video, sub, frame)

        return Reading(settings, manifest, idx, len(manifest["objects"]), file,
                       root / kind.folder / video)

    for name in want:
        out.update(KINDS[name].read(reading(KINDS[name])))
    for kind in kinds_of(settings):
        out.update(kind.read_stats(reading(kind)))
    return out
