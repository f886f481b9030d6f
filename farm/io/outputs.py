"""Extra outputs of a render beside RGB and masks: depth, optical flow, normals, camera, amodal masks.

Pure numpy (no bpy): the layout, the encodings with their units and conventions, the per-frame
statistics written to the manifest, and ``load_video_outputs``, which reads a rendered video back
into numpy arrays. ``worker/render/outputs.py`` gets the raw passes out of Blender and calls this module.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from farm.io.codecs import read_exr, read_flo, read_png16, write_exr, write_flo, write_png16
from farm.io.layout import FOLDERS, frame_name, video_keys
from farm.io.masks import save_mask
from farm.model.spec import DEFAULT_OUTPUTS

DEPTH_SCALE_M = 0.001  # metres per PNG unit: 1 mm steps up to 65.534 m
NO_HIT_DEPTH_M = 1e9  # Cycles writes ~1e10 where a ray leaves the scene
FLOW_DIRECTIONS = ("forward", "backward")
# Bytes per pixel and frame a staged output takes at most (scratch-space estimate; amodal: per
# object; flow: both directions as uncompressed .flo).
SCRATCH_BYTES_PER_PIXEL = {"rgb": 1.0, "masks": 0.2, "depth": 4.0, "flow": 16.0, "normals": 3.0,
                           "camera": 0.0, "amodal": 0.2}

UNITS = {
    "rgb": "uint8 (T, H, W, 3) sRGB",
    "masks": "uint8 (T, H, W) object ids, 0 = background",
    "depth": "float32 (T, H, W) metres along the viewing axis, inf = no surface",
    "forward_flow": "float32 (T, H, W, 2) pixels (dx right, dy down) to frame t+1, NaN = undefined",
    "backward_flow": "float32 (T, H, W, 2) pixels (dx right, dy down) to frame t-1, NaN = undefined",
    "normals": "float32 (T, H, W, 3) unit normals, OpenCV camera frame, 0 = no surface",
    "K": "float64 (3, 3) pinhole intrinsics, pixels, pixel centres at integers",
    "world_to_camera": "float64 (T, 4, 4) world -> OpenCV camera frame (x right, y down, z forward)",
    "amodal": "bool (T, K, H, W) whole silhouette of object k+1",
    "boxes": "int32 (T, K, 4) visible box [x0, y0, x1, y1] inclusive, -1 when not visible",
    "visible_pixels": "int64 (T, K)",
    "amodal_pixels": "int64 (T, K)",
    "visible_fraction": "float64 (T, K) visible / amodal pixels, NaN when out of view",
}


def outputs_of(settings: Any) -> tuple[str, ...]:
    """The outputs of RenderSettings (or a manifest's ``render_settings`` dict)."""
    if isinstance(settings, dict):
        return tuple(settings.get("outputs", DEFAULT_OUTPUTS))
    return tuple(settings.outputs)


def _fmt(settings: Any, key: str) -> str:
    return settings.get(key, "png16") if isinstance(settings, dict) else getattr(settings, key)


def scratch_bytes_per_pixel(settings: Any, num_objects: int) -> float:
    """Scratch bytes per pixel and frame a render of these outputs needs at most."""
    return sum(SCRATCH_BYTES_PER_PIXEL[o] * (num_objects if o == "amodal" else 1)
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
    if output == "rgb":
        return ".jpg"
    if output == "depth":
        return ".exr" if _fmt(settings, "depth_format") == "exr" else ".png"
    if output == "flow":
        return ".flo" if _fmt(settings, "flow_format") == "flo" else ".png"
    return ".json" if output == "camera" else ".png"


def frame_files(settings: Any, video: str, frame: int, num_objects: int) -> list[str]:
    """Paths (relative to the dataset root) of every per-frame file of ``frame``."""
    name = frame_name(frame)
    out = []
    for output in outputs_of(settings):
        folder, ext = f"{FOLDERS[output]}/{video}", extension(settings, output)
        if output == "flow":
            out += [f"{folder}/{d}/{name}{ext}" for d in FLOW_DIRECTIONS]
        elif output == "amodal":
            out += [f"{folder}/{k}/{name}{ext}" for k in range(1, num_objects + 1)]
        elif output != "camera":
            out.append(f"{folder}/{name}{ext}")
    return out


def video_files(settings: Any, video: str) -> list[str]:
    """Per-video files beside the frames (the camera JSON)."""
    return [f"{FOLDERS['camera']}/{video}/camera.json"] if "camera" in outputs_of(settings) else []


def folder_counts(settings: Any, frames: int, num_objects: int) -> dict[str, int]:
    """Files expected under ``<folder>/<video>/`` per output folder (the completeness check)."""
    counts: dict[str, int] = {}
    for path in frame_files(settings, "v", 0, num_objects) + video_files(settings, "v"):
        folder = path.split("/", 1)[0]
        counts[folder] = counts.get(folder, 0) + (1 if folder == FOLDERS["camera"] else frames)
    return counts


def formats(settings: Any) -> dict[str, dict]:
    """The manifest's ``output_formats``: per extra output its files, encoding and units."""
    outs = outputs_of(settings)
    info: dict[str, dict] = {}
    if "depth" in outs:
        if _fmt(settings, "depth_format") == "exr":
            info["depth"] = {"format": "exr", "channel": "Z", "units": "m", "no_surface": "inf"}
        else:
            info["depth"] = {"format": "png16", "scale_m": DEPTH_SCALE_M, "no_surface": 0,
                             "saturated": 65535, "max_m": 65534 * DEPTH_SCALE_M, "units": "m"}
        info["depth"]["definition"] = "distance along the camera's viewing axis (z-depth)"
    if "flow" in outs:
        info["flow"] = {"format": _fmt(settings, "flow_format"), "units": "px",
                        "convention": "(dx right, dy down) from frame t to t+1 (forward) / t-1 "
                                      "(backward)"}
        if info["flow"]["format"] == "png16":
            info["flow"]["encoding"] = ("R, G = (flow - lo) / (hi - lo) * 65535 with the frame's "
                                        "range [lo, hi]; B = 65535 where defined")
    if "normals" in outs:
        info["normals"] = {"format": "png8", "frame": "opencv camera (x right, y down, z forward)",
                           "encoding": "(n + 1) / 2 * 255, (0, 0, 0) = no surface"}
    if "camera" in outs:
        info["camera"] = {"file": "Camera/<video>/camera.json", "convention": "opencv"}
    if "amodal" in outs:
        info["amodal"] = {"format": "png8 palette, 0 or the object's id",
                          "render": "index only, 1 sample, no denoising, others left out"}
    return info


# --- depth -------------------------------------------------------------------------------------


def valid_depth(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0) & (depth < NO_HIT_DEPTH_M)


def encode_depth_png16(depth: np.ndarray, scale: float = DEPTH_SCALE_M) -> np.ndarray:
    """Metres -> uint16 (value x scale metres); 0 = no surface, 65535 = that far or farther."""
    valid = valid_depth(depth)
    q = np.clip(np.round(np.where(valid, depth, 0) / scale), 1, 65535)
    return np.where(valid, q, 0).astype(np.uint16)


def decode_depth_png16(q: np.ndarray, scale: float = DEPTH_SCALE_M) -> np.ndarray:
    d = q.astype(np.float32) * np.float32(scale)
    return np.where((q == 0) | (q == 65535), np.float32(np.inf), d)


# --- flow --------------------------------------------------------------------------------------


def flow_from_vector(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycles' Vector pass (H, W, 4) = (prev - cur, cur - next), y up -> forward and backward
    flow (H, W, 2) in pixels, dx right, dy down (measured: tests/worker/render/test_extra_outputs.py)."""
    v = np.asarray(vector, np.float32)
    forward = np.stack([-v[..., 2], v[..., 3]], axis=-1)
    backward = np.stack([v[..., 0], -v[..., 1]], axis=-1)
    return forward, backward


def encode_flow_png16(flow: np.ndarray) -> tuple[np.ndarray, list[float] | None]:
    """(H, W, 2) flow (NaN = undefined) -> uint16 (H, W, 3) and its [lo, hi] range (None when
    nothing is defined)."""
    flow = np.asarray(flow, np.float32)
    valid = np.isfinite(flow).all(axis=-1)
    out = np.zeros(flow.shape[:2] + (3,), np.uint16)
    every = bool(valid.all())
    if not every and not valid.any():
        return out, None
    values = flow if every else flow[valid]
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo if hi > lo else 1.0
    scaled = (flow if every else np.where(valid[..., None], flow, np.float32(lo))) - np.float32(lo)
    scaled *= np.float32(65535 / span)
    scaled += np.float32(0.5)  # round half up; values are >= 0
    np.clip(scaled, 0, 65535, out=scaled)
    out[..., :2] = scaled
    out[..., 2] = valid * np.uint16(65535)
    return out, [lo, hi]


def decode_flow_png16(q: np.ndarray, flow_range: Sequence[float] | None) -> np.ndarray:
    flow = np.full(q.shape[:2] + (2,), np.nan, np.float32)
    if flow_range is None:
        return flow
    lo, hi = flow_range
    span = hi - lo if hi > lo else 1.0
    valid = q[..., 2] > 0
    flow[valid] = (lo + q[..., :2][valid].astype(np.float64) / 65535 * span).astype(np.float32)
    return flow


# --- normals -----------------------------------------------------------------------------------


def camera_normals(normal_world: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """World-space normals (H, W, 3) -> unit normals in the OpenCV camera frame; pixels without a
    surface (|n| < 0.5: the pass is 0 there, or the pixel filter cancelled opposite normals) get 0."""
    rot = np.asarray(world_to_camera, np.float32)[:3, :3]
    n = np.asarray(normal_world, np.float32) @ rot.T
    length = np.sqrt(np.einsum("...i,...i->...", n, n))[..., None]
    n /= np.maximum(length, np.float32(1e-12))
    n[length[..., 0] <= 0.5] = 0.0
    return n


def encode_normals_png8(n: np.ndarray) -> np.ndarray:
    q = np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
    q[~np.any(n != 0, axis=-1)] = 0
    return q


def decode_normals_png8(q: np.ndarray) -> np.ndarray:
    n = q.astype(np.float32) / 127.5 - 1.0
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = n / np.maximum(length, 1e-6)
    n[~np.any(q != 0, axis=-1)] = 0.0
    return n


# --- camera ------------------------------------------------------------------------------------

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # camera axes: flip y and z


def intrinsics(fov: float, width: int, height: int) -> np.ndarray:
    """K for Blender's camera angle with sensor fit AUTO (the angle spans the larger side);
    pixel centres at integer coordinates (OpenCV)."""
    f = 0.5 * max(width, height) / np.tan(0.5 * fov)
    return np.array([[f, 0.0, width / 2 - 0.5], [0.0, f, height / 2 - 0.5], [0.0, 0.0, 1.0]])


def world_to_camera(camera_to_world_blender: np.ndarray) -> np.ndarray:
    """Blender's camera matrix_world (looks down -Z, +Y up) -> world-to-camera, OpenCV axes."""
    return np.linalg.inv(np.asarray(camera_to_world_blender, float) @ BLENDER_TO_OPENCV)


def camera_record(fov: float, width: int, height: int, matrices: Iterable[np.ndarray],
                  clip: Sequence[float]) -> dict:
    """The camera JSON: intrinsics and per-frame extrinsics (``matrices``: Blender's
    camera-to-world per frame)."""
    frames = []
    for i, m in enumerate(matrices):
        frames.append({"frame": i, "world_to_camera": np.round(world_to_camera(m), 9).tolist(),
                       "camera_to_world_blender": np.round(np.asarray(m, float), 9).tolist()})
    return {"model": "pinhole", "convention": "opencv: x right, y down, z forward; pixel "
            "centres at integer coordinates, (0, 0) = top-left pixel",
            "width": width, "height": height, "fov_rad": fov, "sensor_fit": "AUTO",
            "K": intrinsics(fov, width, height).tolist(), "clip_m": list(clip), "frames": frames}


def project_points(points: np.ndarray, K: np.ndarray, w2c: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) -> pixel coordinates (..., 2) and depth along the viewing axis."""
    p = np.asarray(points, float) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = p @ K.T
    return uv[..., :2] / uv[..., 2:3], p[..., 2]


# --- amodal ------------------------------------------------------------------------------------


def _bbox(mask: np.ndarray) -> list[int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def add_amodal_stats(objects: list[dict], amodal: dict[int, np.ndarray]) -> None:
    """Add ``amodal_pixels``, ``amodal_bbox`` and ``visible_fraction`` to each object's stats."""
    for k, stats in enumerate(objects, start=1):
        mask = amodal[k]
        area = int(mask.sum())
        stats["amodal_pixels"] = area
        stats["amodal_bbox"] = _bbox(mask)
        stats["visible_fraction"] = round(stats["pixels"] / area, 6) if area else None


# --- writing one frame -------------------------------------------------------------------------


def write_frame(root: Path, video: str, frame: int, frames: int, settings: Any, *,
                depth: np.ndarray | None = None, vector: np.ndarray | None = None,
                normal_world: np.ndarray | None = None, camera_to_world: np.ndarray | None = None,
                amodal_ids: dict[int, np.ndarray] | None = None,
                objects: list[dict] | None = None, timings: dict[str, float] | None = None
                ) -> dict:
    """Encode and write one frame's extra outputs under ``root``; returns the frame's manifest
    additions. ``amodal_ids``: per object id, the index pass of its own render. ``objects``
    (the frame's visible stats) gets the amodal statistics. ``timings`` accumulates CPU seconds
    per output (of this thread: the encoding overlaps the next frame's render)."""
    import time

    outs, name, record = outputs_of(settings), frame_name(frame), {}

    def path(output: str, sub: str = "") -> Path:
        p = root / FOLDERS[output] / video / sub / f"{name}{extension(settings, output)}"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def timed(output: str, t0: float) -> None:
        if timings is not None:
            timings[output] = timings.get(output, 0.0) + time.thread_time() - t0

    if "depth" in outs and depth is not None:
        t0 = time.thread_time()
        valid = valid_depth(depth)
        record["depth_range_m"] = ([round(float(depth[valid].min()), 4),
                                    round(float(depth[valid].max()), 4)] if valid.any() else None)
        if _fmt(settings, "depth_format") == "exr":
            write_exr(path("depth"), {"Z": np.where(valid, depth, np.inf)})
        else:
            Image.fromarray(encode_depth_png16(depth)).save(path("depth"), compress_level=6)
        timed("depth", t0)
    if "flow" in outs and vector is not None:
        t0 = time.thread_time()
        forward, backward = flow_from_vector(vector)
        if frame == frames - 1:
            forward[:] = np.nan  # no frame t+1
        if frame == 0:
            backward[:] = np.nan  # no frame t-1
        for direction, flow in zip(FLOW_DIRECTIONS, (forward, backward), strict=True):
            if _fmt(settings, "flow_format") == "flo":
                write_flo(path("flow", direction), flow)
            else:
                q, flow_range = encode_flow_png16(flow)
                write_png16(path("flow", direction), q)
                record[f"flow_{direction}_range_px"] = flow_range
        timed("flow", t0)
    if "normals" in outs and normal_world is not None and camera_to_world is not None:
        t0 = time.thread_time()
        n = camera_normals(normal_world, world_to_camera(camera_to_world))
        Image.fromarray(encode_normals_png8(n), mode="RGB").save(path("normals"), compress_level=6)
        timed("normals", t0)
    if "amodal" in outs and amodal_ids is not None:
        t0 = time.thread_time()
        masks = {k: ids == k for k, ids in amodal_ids.items()}
        for k, mask in masks.items():
            save_mask(np.where(mask, k, 0), path("amodal", str(k)))
        if objects is not None:
            add_amodal_stats(objects, masks)
        timed("amodal", t0)
    return record


def write_camera(root: Path, video: str, record: dict) -> Path:
    path = root / FOLDERS["camera"] / video / "camera.json"
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
    num_objects = len(manifest["objects"])
    per_frame = {f["frame"]: f for f in manifest.get("frames", [])}
    names = [frame_name(i) for i in idx]
    out: dict[str, Any] = {"video": video, "frames": idx, "outputs": list(want),
                           "units": UNITS, "manifest": manifest}

    def folder(output: str, sub: str = "") -> Path:
        return root / FOLDERS[output] / video / sub

    if "rgb" in want:
        out["rgb"] = np.stack([np.asarray(Image.open(folder("rgb") / f"{n}.jpg").convert("RGB"))
                               for n in names])
    if "masks" in want:
        out["masks"] = np.stack([np.asarray(Image.open(folder("masks") / f"{n}.png"))
                                 for n in names])
    if "depth" in want:
        ext = extension(settings, "depth")
        scale = manifest.get("output_formats", {}).get("depth", {}).get("scale_m", DEPTH_SCALE_M)
        if ext == ".exr":
            out["depth"] = np.stack([read_exr(folder("depth") / f"{n}.exr")["Z"] for n in names])
        else:
            out["depth"] = np.stack([decode_depth_png16(np.asarray(Image.open(
                folder("depth") / f"{n}.png")), scale) for n in names])
    if "flow" in want:
        ext = extension(settings, "flow")
        for direction in FLOW_DIRECTIONS:
            flows = []
            for i, n in zip(idx, names, strict=True):
                p = folder("flow", direction) / f"{n}{ext}"
                if ext == ".flo":
                    flows.append(read_flo(p))
                else:
                    rng = per_frame[i].get(f"flow_{direction}_range_px")
                    flows.append(decode_flow_png16(read_png16(p), rng))
            out[f"{direction}_flow"] = np.stack(flows)
    if "normals" in want:
        out["normals"] = np.stack([decode_normals_png8(np.asarray(Image.open(
            folder("normals") / f"{n}.png").convert("RGB"))) for n in names])
    if "camera" in want:
        cam = json.loads((folder("camera") / "camera.json").read_text())
        out["K"] = np.array(cam["K"])
        out["world_to_camera"] = np.array([cam["frames"][i]["world_to_camera"] for i in idx])
    if "amodal" in want:
        out["amodal"] = np.stack([np.stack([np.asarray(Image.open(
            folder("amodal", str(k)) / f"{n}.png")) != 0 for k in range(1, num_objects + 1)])
            for n in names])
    boxes = np.full((len(idx), num_objects, 4), -1, np.int32)
    visible = np.zeros((len(idx), num_objects), np.int64)
    amodal_px = np.zeros((len(idx), num_objects), np.int64)
    fraction = np.full((len(idx), num_objects), np.nan)
    for t, i in enumerate(idx):
        for k, obj in enumerate(per_frame.get(i, {}).get("objects", [])):
            visible[t, k] = obj["pixels"]
            if obj.get("bbox"):
                boxes[t, k] = obj["bbox"]
            amodal_px[t, k] = obj.get("amodal_pixels", 0)
            if obj.get("visible_fraction") is not None:
                fraction[t, k] = obj["visible_fraction"]
    out.update(boxes=boxes, visible_pixels=visible)
    if "amodal" in have:
        out.update(amodal_pixels=amodal_px, visible_fraction=fraction)
    return out

