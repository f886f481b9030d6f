"""The figures of a set of rendered videos, from their manifests and specs: render times by
device, objects and categories, visible area, occlusion, speed (``DEFINITIONS``). The segment
report plots them; the dataset card summarises them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from farm.model.camera import look_at_rotation, project
from farm.model.spec import eval_poly

QUANTILES = {"p5": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}

DEFINITIONS = {
    "visible_area_fraction": "visible pixels of an object in a frame / image pixels, over the "
                             "object-frames where the object is visible",
    "visible_frames_fraction": "per object: frames with at least one visible pixel / frames",
    "occlusion": "per object and frame where the object's centre projects inside the image: "
                 "1 - visible pixels / the object's largest visible pixel count in the video. "
                 "Leaving the image is not counted; shrinking with distance is, so read it "
                 "with 'overlapped by a nearer object'",
    "overlapped_by_nearer_share": "share of visible object-frames whose mask box intersects the "
                                  "mask box of another object whose centre is nearer the camera",
    "speed_world_per_frame": "per object: mean distance its centre moves per rendered frame "
                             "(scene units; farm/generate/distributions.py's object speed at 160 frames)",
    "speed_image_per_frame": "per object and pair of consecutive frames where it is visible: "
                             "displacement of its mask box centre / image width",
    "s_per_frame": "Cycles time per frame after the first (steady state), from the manifests",
    "first_frame_s": "Cycles time of frame 0 (also pays scene sync, kernel loading)",
    "overhead_s": "per video: render wall time outside Cycles (Blender start, scene build, mask "
                  "encoding, quality-gate attempts) = wall_s - sum of frame render times",
}

def summary(values) -> dict:
    a = np.asarray(values, float)
    if a.size == 0:
        return {"n": 0}
    out = {"n": int(a.size), "mean": round(float(a.mean()), 6), "min": round(float(a.min()), 6),
           "max": round(float(a.max()), 6)}
    out.update({k: round(float(np.quantile(a, q)), 6) for k, q in QUANTILES.items()})
    return out


def histogram(values, bins: int | list[float] = 20) -> dict:
    a = np.asarray(values, float)
    if a.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(a, bins=bins)
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def stat(values, bins: int | list[float] = 20) -> dict:
    values = np.asarray(values, float)
    return {**summary(values), "histogram": histogram(values, bins)}


def object_figures(manifest: dict, spec) -> dict[str, list]:
    """Per-object and per-object-frame values of one video (see DEFINITIONS)."""
    width, height = manifest["resolution"]
    frames = manifest["frames"]
    k = len(manifest["objects"])
    pixels = np.array([[o["pixels"] for o in f["objects"]] for f in frames], float).reshape(-1, k)
    boxes = [[o["bbox"] for o in f["objects"]] for f in frames]
    out: dict[str, list] = {"area": [], "visible_frames": [], "occlusion": [], "speed_world": [],
                            "speed_image": [], "overlap": []}
    visible = pixels > 0
    out["area"] = (pixels[visible] / (width * height)).tolist()
    out["visible_frames"] = visible.mean(axis=0).tolist() if len(frames) else []
    in_view = np.ones_like(visible)
    depth = None
    if spec is not None and len(spec.objects) == k:
        t = spec.frame_times()[:len(frames)]
        cam = eval_poly(spec.camera.location_poly, t)
        rot = look_at_rotation(cam, eval_poly(spec.camera.look_at_poly, t))
        centres = np.stack([eval_poly(o.location_poly, t) for o in spec.objects])  # (K, F, 3)
        col, row, depth = project(centres, cam, rot, spec.camera.fov, width, height)
        in_view = ((depth > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)).T
        steps = np.linalg.norm(np.diff(centres, axis=1), axis=-1)  # (K, F-1)
        if steps.shape[1]:
            out["speed_world"] = steps.mean(axis=1).tolist()
        depth = depth.T  # (F, K)
    best = pixels.max(axis=0) if len(frames) else np.zeros(k)
    for j in range(k):
        if best[j] > 0:
            sel = in_view[:, j]
            out["occlusion"] += (1 - pixels[sel, j] / best[j]).tolist()
    # boxes as an (F, K, 4) array, NaN where the object is not visible
    box = np.array([[b if b is not None else [np.nan] * 4 for b in row] for row in boxes],
                   float).reshape(-1, k, 4)
    centre = np.stack([box[..., 0] + box[..., 2], box[..., 1] + box[..., 3]], axis=-1) / 2
    shift = np.linalg.norm(np.diff(centre, axis=0), axis=-1) / width  # (F-1, K)
    out["speed_image"] = shift[np.isfinite(shift)].tolist()
    if depth is not None:
        a, b = box[:, :, None, :], box[:, None, :, :]  # (F, K, 1, 4) against (F, 1, K, 4)
        overlaps = ((a[..., 0] <= b[..., 2]) & (b[..., 0] <= a[..., 2])
                    & (a[..., 1] <= b[..., 3]) & (b[..., 1] <= a[..., 3]))  # NaN compares False
        nearer = depth[:, None, :] < depth[:, :, None]  # [f, j, m]: m nearer than j
        overlaps &= nearer & ~np.eye(k, dtype=bool)
        out["overlap"] = overlaps.any(axis=2)[visible].tolist()
    return out


@dataclass
class VideoFigures:
    """What the report keeps of one finished video."""

    video: str
    render: dict  # the per-video row of the render table
    steady: np.ndarray  # Cycles seconds of the frames after the first
    categories: list[str]
    values: dict[str, np.ndarray]  # object_figures, as arrays


def video_figures(video: str, manifest: dict, spec) -> VideoFigures:
    t = manifest.get("timings", {})
    frame_s = t.get("render_s", [])
    steady = frame_s[1:] or frame_s
    total = t.get("render_total_s", sum(frame_s))
    row = {"video": video, "device": manifest.get("device", "?"),
           "host": manifest.get("host", "?"), "preset": manifest.get("preset"),
           "frames": manifest.get("num_frames", len(frame_s)), "render_s": total,
           "wall_s": t.get("wall_s"),
           "s_per_frame": round(float(np.mean(steady)), 6) if steady else None,
           "first_frame_s": frame_s[0] if frame_s else None,
           "overhead_s": round(t["wall_s"] - total, 4) if t.get("wall_s") else None}
    values = {k: np.asarray(v, float) for k, v in object_figures(manifest, spec).items()}
    return VideoFigures(video, row, np.asarray(steady, float),
                        [o.get("category", "?") for o in manifest["objects"]], values)


def render_figures(videos: list[VideoFigures]) -> dict:
    per_device: dict[str, dict] = {}
    for v in videos:
        row = v.render
        d = per_device.setdefault(row["device"], {"videos": 0, "frames": 0, "steady": [],
                                                  "first": [], "wall": [], "overhead": []})
        d["videos"] += 1
        d["frames"] += row["frames"]
        d["steady"].append(v.steady)
        for key, name in (("first", "first_frame_s"), ("wall", "wall_s"),
                          ("overhead", "overhead_s")):
            if row[name] is not None:
                d[key].append(row[name])
    by_device = {dev: {"videos": d["videos"], "frames": d["frames"],
                       "s_per_frame": stat(np.concatenate(d["steady"])),
                       "first_frame_s": summary(d["first"]),
                       "video_wall_s": stat(d["wall"]), "overhead_s": summary(d["overhead"])}
                 for dev, d in sorted(per_device.items())}
    return {"by_device": by_device, "videos": [v.render for v in videos]}


def dataset_figures(videos: list[VideoFigures]) -> dict:
    categories: Counter = Counter()
    per_video: Counter = Counter()
    for v in videos:
        per_video[len(v.categories)] += 1
        categories.update(v.categories)
    keys = ("area", "visible_frames", "occlusion", "speed_world", "speed_image", "overlap")
    vals = {k: np.concatenate([v.values[k] for v in videos]) if videos else np.zeros(0)
            for k in keys}
    area_bins = np.geomspace(1e-4, 1.0, 25).tolist()
    return {
        "videos": len(videos),
        "objects": sum(categories.values()),
        "categories": dict(categories.most_common()),
        "objects_per_video": {str(k): n for k, n in sorted(per_video.items())},
        "visible_area_fraction": stat(np.clip(vals["area"], 1e-4, 1.0), area_bins),
        "visible_frames_fraction": stat(vals["visible_frames"], np.linspace(0, 1, 11).tolist()),
        "occlusion": stat(vals["occlusion"], np.linspace(0, 1, 21).tolist()),
        "overlapped_by_nearer_share": (round(float(np.mean(vals["overlap"])), 4)
                                       if vals["overlap"].size else None),
        "speed_world_per_frame": stat(vals["speed_world"]),
        "speed_image_per_frame": stat(vals["speed_image"]),
    }
