"""The output kinds a render can write, one registry entry each: folder, file names, encoding,
units, and how a kind is written from its raw render pass and read back into numpy.

Pure numpy (no bpy, no layout): ``farm/io/layout.py`` takes its output folders from here,
``farm/io/outputs.py`` runs the registry over a video (writing a frame, the manifest's formats,
the file lists, ``load_video_outputs``), and ``worker/render/outputs.py`` holds the Blender side
of each kind (which render pass it needs and how that pass is set up). Adding a kind is one
``OutputKind`` in ``KINDS`` (plus its name in ``farm.model.spec.OUTPUTS``, which validates specs
and which a test checks against ``KINDS``) and, when it needs a render pass, one entry in
``worker/render/outputs.py``.

Conventions (``farm/io/outputs.py`` states them in full): pixels x right, y down, (0, 0) = the
top-left pixel's centre (OpenCV); camera frame OpenCV (x right, y down, z forward); world: Blender
units = metres.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from farm.io.codecs import read_exr, read_flo, read_png16, write_exr, write_flo, write_png16
from farm.io.masks import save_mask

DEPTH_SCALE_M = 0.001  # metres per PNG unit: 1 mm steps up to 65.534 m
NO_HIT_DEPTH_M = 1e9  # Cycles writes ~1e10 where a ray leaves the scene
FLOW_DIRECTIONS = ("forward", "backward")


def setting(settings: Any, key: str, default: str = "png16") -> str:
    """A format setting of RenderSettings or of a manifest's ``render_settings`` dict."""
    return settings.get(key, default) if isinstance(settings, dict) else getattr(settings, key)


@dataclass
class FrameInput:
    """What a kind's writer gets for one frame."""

    frame: int
    frames: int  # the video's frame count
    settings: Any  # RenderSettings or a manifest's render_settings dict
    raw: Any  # the kind's raw render data (see each kind)
    path: Callable[[str], Path]  # sub-folder ("" for none) -> this frame's file (folder made)
    camera_to_world: np.ndarray | None = None  # Blender's camera matrix_world at this frame
    objects: list[dict] | None = None  # the frame's visible object stats (writers may add keys)


@dataclass
class VideoInput:
    """What a kind's per-video writer gets once the last frame is rendered."""

    settings: Any
    path: Callable[[str], Path]  # file name -> the file under the kind's video folder
    camera: dict  # fov_rad, width, height, matrices (Blender camera-to-world per frame), clip


@dataclass
class Reading:
    """What a kind's reader gets: one video of a dataset folder."""

    settings: dict  # the manifest's render_settings
    manifest: dict
    frames: list[int]
    num_objects: int
    file: Callable[[str, int], Path]  # (sub-folder, frame) -> the frame's file
    folder: Path  # the kind's folder of this video

    @cached_property
    def _by_frame(self) -> dict[int, dict]:
        return {f["frame"]: f for f in self.manifest.get("frames", [])}

    def per_frame(self, frame: int) -> dict:
        """The manifest's record of ``frame`` (its objects' stats, ranges...)."""
        return self._by_frame.get(frame, {})


def _none(*_args: Any) -> None:
    return None


@dataclass(frozen=True)
class OutputKind:
    """One output kind. ``write`` (per frame) returns the frame's manifest additions;
    ``finish`` (per video) the manifest's top-level additions; ``read`` the arrays
    ``load_video_outputs`` returns for it, in ``units``; ``read_stats`` arrays from the manifest's
    per-object statistics (whenever the video has the kind)."""

    name: str
    folder: str
    units: dict[str, str]
    scratch_bytes_per_pixel: float  # staged bytes per pixel and frame at most (per object)
    extension: Callable[[Any], str]
    read: Callable[[Reading], dict[str, Any]]
    write: Callable[[FrameInput], dict] | None = None  # None: the render loop writes it
    finish: Callable[[VideoInput], dict | None] = _none
    format: Callable[[Any], dict | None] = _none  # the manifest's output_formats entry
    subfolders: Callable[[int], list[str]] = lambda _objects: [""]  # per frame: one file each
    video_files: tuple[str, ...] = ()  # per-video files (then no per-frame files)
    per_object: bool = False  # one file per object per frame (scratch estimate)
    read_stats: Callable[[Reading], dict[str, Any]] = lambda _reading: {}
    needs_camera: bool = False  # its writer or finish needs Blender's camera at every frame
    extra_units: dict[str, str] = field(default_factory=dict)  # of read_stats' arrays


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



# --- the registry ------------------------------------------------------------------------------


def _stack_images(reading: Reading, sub: str = "", convert: str | None = None) -> np.ndarray:
    def one(i: int) -> np.ndarray:
        image = Image.open(reading.file(sub, i))
        return np.asarray(image.convert(convert) if convert else image)

    return np.stack([one(i) for i in reading.frames])


def _read_visible_stats(reading: Reading) -> dict[str, Any]:
    t, k = len(reading.frames), reading.num_objects
    boxes = np.full((t, k, 4), -1, np.int32)
    visible = np.zeros((t, k), np.int64)
    for row, i in enumerate(reading.frames):
        for j, obj in enumerate(reading.per_frame(i).get("objects", [])):
            visible[row, j] = obj["pixels"]
            if obj.get("bbox"):
                boxes[row, j] = obj["bbox"]
    return {"boxes": boxes, "visible_pixels": visible}


def _write_depth(f: FrameInput) -> dict:
    """raw: (H, W) metres along the viewing axis (Cycles' Depth pass)."""
    depth = f.raw
    valid = valid_depth(depth)
    record = {"depth_range_m": ([round(float(depth[valid].min()), 4),
                                 round(float(depth[valid].max()), 4)] if valid.any() else None)}
    if setting(f.settings, "depth_format") == "exr":
        write_exr(f.path(""), {"Z": np.where(valid, depth, np.inf)})
    else:
        Image.fromarray(encode_depth_png16(depth)).save(f.path(""), compress_level=6)
    return record


def _read_depth(r: Reading) -> dict[str, Any]:
    if setting(r.settings, "depth_format") == "exr":
        return {"depth": np.stack([read_exr(r.file("", i))["Z"] for i in r.frames])}
    scale = r.manifest.get("output_formats", {}).get("depth", {}).get("scale_m", DEPTH_SCALE_M)
    return {"depth": np.stack([decode_depth_png16(np.asarray(Image.open(r.file("", i))), scale)
                               for i in r.frames])}


def _depth_format(settings: Any) -> dict:
    if setting(settings, "depth_format") == "exr":
        info: dict = {"format": "exr", "channel": "Z", "units": "m", "no_surface": "inf"}
    else:
        info = {"format": "png16", "scale_m": DEPTH_SCALE_M, "no_surface": 0,
                "saturated": 65535, "max_m": 65534 * DEPTH_SCALE_M, "units": "m"}
    info["definition"] = "distance along the camera's viewing axis (z-depth)"
    return info


def _write_flow(f: FrameInput) -> dict:
    """raw: Cycles' Vector pass (H, W, 4)."""
    forward, backward = flow_from_vector(f.raw)
    if f.frame == f.frames - 1:
        forward[:] = np.nan  # no frame t+1
    if f.frame == 0:
        backward[:] = np.nan  # no frame t-1
    record = {}
    for direction, flow in zip(FLOW_DIRECTIONS, (forward, backward), strict=True):
        if setting(f.settings, "flow_format") == "flo":
            write_flo(f.path(direction), flow)
        else:
            q, flow_range = encode_flow_png16(flow)
            write_png16(f.path(direction), q)
            record[f"flow_{direction}_range_px"] = flow_range
    return record


def _read_flow(r: Reading) -> dict[str, Any]:
    out = {}
    for direction in FLOW_DIRECTIONS:
        if setting(r.settings, "flow_format") == "flo":
            flows = [read_flo(r.file(direction, i)) for i in r.frames]
        else:
            flows = [decode_flow_png16(read_png16(r.file(direction, i)),
                                       r.per_frame(i).get(f"flow_{direction}_range_px"))
                     for i in r.frames]
        out[f"{direction}_flow"] = np.stack(flows)
    return out


def _flow_format(settings: Any) -> dict:
    info = {"format": setting(settings, "flow_format"), "units": "px",
            "convention": "(dx right, dy down) from frame t to t+1 (forward) / t-1 (backward)"}
    if info["format"] == "png16":
        info["encoding"] = ("R, G = (flow - lo) / (hi - lo) * 65535 with the frame's range "
                            "[lo, hi]; B = 65535 where defined")
    return info


def _write_normals(f: FrameInput) -> dict:
    """raw: world-space normals (H, W, 3) (Cycles' Normal pass)."""
    n = camera_normals(f.raw, world_to_camera(f.camera_to_world))
    Image.fromarray(encode_normals_png8(n), mode="RGB").save(f.path(""), compress_level=6)
    return {}


def _finish_camera(v: VideoInput) -> dict:
    c = v.camera
    record = camera_record(c["fov_rad"], c["width"], c["height"], c["matrices"], c["clip"])
    path = v.path("camera.json")
    path.write_text(json.dumps(record, indent=1))
    return {"camera": record}


def _read_camera(r: Reading) -> dict[str, Any]:
    cam = json.loads((r.folder / "camera.json").read_text())
    return {"K": np.array(cam["K"]),
            "world_to_camera": np.array([cam["frames"][i]["world_to_camera"] for i in r.frames])}


def _write_amodal(f: FrameInput) -> dict:
    """raw: per object id, the index pass of its own render (H, W)."""
    masks = {k: ids == k for k, ids in f.raw.items()}
    for k, mask in masks.items():
        save_mask(np.where(mask, k, 0), f.path(str(k)))
    if f.objects is not None:
        add_amodal_stats(f.objects, masks)
    return {}


def _read_amodal(r: Reading) -> dict[str, Any]:
    return {"amodal": np.stack([np.stack([np.asarray(Image.open(r.file(str(k), i))) != 0
                                          for k in range(1, r.num_objects + 1)])
                                for i in r.frames])}


def _read_amodal_stats(r: Reading) -> dict[str, Any]:
    t, k = len(r.frames), r.num_objects
    area = np.zeros((t, k), np.int64)
    fraction = np.full((t, k), np.nan)
    for row, i in enumerate(r.frames):
        for j, obj in enumerate(r.per_frame(i).get("objects", [])):
            area[row, j] = obj.get("amodal_pixels", 0)
            if obj.get("visible_fraction") is not None:
                fraction[row, j] = obj["visible_fraction"]
    return {"amodal_pixels": area, "visible_fraction": fraction}


def _fixed(ext: str) -> Callable[[Any], str]:
    return lambda _settings: ext


KINDS: dict[str, OutputKind] = {}


def register(kind: OutputKind) -> OutputKind:
    """Add ``kind`` to the registry (its order: the order of folders, files and formats)."""
    if kind.name in KINDS:
        raise ValueError(f"output kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    KINDS.pop(name)


for _kind in (
    OutputKind("rgb", "JPEGImages", {"rgb": "uint8 (T, H, W, 3) sRGB"}, 1.0, _fixed(".jpg"),
               read=lambda r: {"rgb": _stack_images(r, convert="RGB")}),
    OutputKind("masks", "Annotations", {"masks": "uint8 (T, H, W) object ids, 0 = background"},
               0.2, _fixed(".png"), read=lambda r: {"masks": _stack_images(r)},
               read_stats=_read_visible_stats, extra_units={
                   "boxes": "int32 (T, K, 4) visible box [x0, y0, x1, y1] inclusive, -1 when "
                            "not visible",
                   "visible_pixels": "int64 (T, K)"}),
    OutputKind("depth", "Depth",
               {"depth": "float32 (T, H, W) metres along the viewing axis, inf = no surface"}, 4.0,
               lambda s: ".exr" if setting(s, "depth_format") == "exr" else ".png",
               read=_read_depth, write=_write_depth, format=_depth_format),
    OutputKind("flow", "Flow", {
        "forward_flow": "float32 (T, H, W, 2) pixels (dx right, dy down) to frame t+1, "
                        "NaN = undefined",
        "backward_flow": "float32 (T, H, W, 2) pixels (dx right, dy down) to frame t-1, "
                         "NaN = undefined"}, 16.0,
               lambda s: ".flo" if setting(s, "flow_format") == "flo" else ".png",
               read=_read_flow, write=_write_flow, format=_flow_format,
               subfolders=lambda _objects: list(FLOW_DIRECTIONS)),
    OutputKind("normals", "Normals",
               {"normals": "float32 (T, H, W, 3) unit normals, OpenCV camera frame, 0 = no "
                           "surface"}, 3.0, _fixed(".png"),
               read=lambda r: {"normals": np.stack([decode_normals_png8(a) for a in
                                                    _stack_images(r, convert="RGB")])},
               write=_write_normals, needs_camera=True,
               format=lambda _s: {"format": "png8",
                                  "frame": "opencv camera (x right, y down, z forward)",
                                  "encoding": "(n + 1) / 2 * 255, (0, 0, 0) = no surface"}),
    OutputKind("camera", "Camera", {
        "K": "float64 (3, 3) pinhole intrinsics, pixels, pixel centres at integers",
        "world_to_camera": "float64 (T, 4, 4) world -> OpenCV camera frame (x right, y down, "
                           "z forward)"}, 0.0, _fixed(".json"), read=_read_camera,
               finish=_finish_camera, video_files=("camera.json",), needs_camera=True,
               format=lambda _s: {"file": "Camera/<video>/camera.json", "convention": "opencv"}),
    OutputKind("amodal", "AmodalAnnotations",
               {"amodal": "bool (T, K, H, W) whole silhouette of object k+1"}, 0.2,
               _fixed(".png"), read=_read_amodal, write=_write_amodal, per_object=True,
               subfolders=lambda objects: [str(k) for k in range(1, objects + 1)],
               read_stats=_read_amodal_stats, extra_units={
                   "amodal_pixels": "int64 (T, K)",
                   "visible_fraction": "float64 (T, K) visible / amodal pixels, NaN when out of "
                                       "view"},
               format=lambda _s: {"format": "png8 palette, 0 or the object's id",
                                  "render": "index only, 1 sample, no denoising, others left out"}),
):
    register(_kind)


def units() -> dict[str, str]:
    """What every array ``load_video_outputs`` can return holds (the registry's kinds)."""
    return {key: text for kind in KINDS.values() for key, text in
            (*kind.units.items(), *kind.extra_units.items())}
