"""``python -m scheduler report --segment S --out report.html [--json FILE]``: one segment on one page.

The page is self-contained (plots and thumbnails are base64 PNGs in ``data:`` URIs, CSS inline):
state counts and failure reasons from Redis; render time per frame and per video by device from
the manifests; dataset statistics from the manifests and specs; a grid of preview thumbnails.
``--json`` writes the same figures (histograms included) for scripts.

Definitions (also printed on the page, ``DEFINITIONS``) are per object and frame of the rendered
videos, from the per-frame pixel counts and boxes of each manifest and the spec's trajectories.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from farm.io.layout import MARKERS, join, marker_video, video_keys
from farm.io.storage import Storage, StorageError
from farm.model.spec import SpecError
from farm.model.validate import parse_spec_text, spec_from_dict
from farm.queue.state import PREFIX, STATES, FarmState, unpack_spec
from farm.view.figures import (
    DEFINITIONS,
    VideoFigures,
    dataset_figures,
    render_figures,
    video_figures,
)

THUMBNAILS = 24
READ_THREADS = 16

# Failure reasons, first match wins (messages from worker/tasks.py and worker/process/runner.py).
REASONS = [
    ("quality gate", r"failed the quality gate"),
    ("spec differs from the scheduler's", r"differs from the scheduler's"),
    ("time limit", r"time limit"),
    ("memory limit", r"resident memory"),
    ("worker lost", r"worker lost"),
    ("Blender crash", r"Blender process died|render crashed"),
    ("storage or broker (gave up)", r"gave up after"),
    ("bad spec or asset", r"."),
]


def failure_reason(error: str) -> str:
    for name, pattern in REASONS:
        if re.search(pattern, error or ""):
            return name
    return "unknown"


# --- gathering ---------------------------------------------------------------------------------

def gather(state: FarmState, storage: Storage, base: str, segment: int,
           thumbnails: int = THUMBNAILS) -> tuple[dict, dict[str, bytes]]:
    """The report's figures (JSON-able) and thumbnail PNGs per video."""
    counts = state.counts(segment)
    total = sum(counts.values())
    done = sorted(v for v in map(marker_video, storage.list(join(base, MARKERS))) if v)
    if not total and not done:
        raise StorageError(f"segment {segment}: nothing enqueued in Redis and no finished "
                           f"video in {storage.describe()}")
    figures: dict = {"segment": segment, "storage": storage.describe(),
                     "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "counts": {**{s: counts.get(s, 0) for s in STATES}, "total": total},
                     "definitions": DEFINITIONS}

    # failures, from the farm state
    failed = state.videos_in(segment, "failed")
    pipe = state.r.pipeline(transaction=False)
    for video in failed:
        pipe.hgetall(f"{PREFIX}video:{video}")
    rows = []
    for video, info in zip(failed, pipe.execute(), strict=True):
        error = info.get("last_error", "")
        rows.append({"video": video, "reason": failure_reason(error), "error": error,
                     "crashes": int(info.get("crashes", 0)),
                     "lost_deliveries": int(info.get("lost_deliveries", 0))})
    by_reason = Counter(r["reason"] for r in rows)
    figures["failures"] = {
        "by_reason": [{"reason": reason, "count": n,
                       "videos": [r["video"] for r in rows if r["reason"] == reason]}
                      for reason, n in by_reason.most_common()],
        "videos": rows}

    # per finished video, its figures (the manifest itself is not kept: segments are large).
    # Specs come from Redis when they are the rendered ones (YAML parsing is the slow part).
    stored: dict[str, str] = {}
    for start in range(0, len(done), 1000):
        chunk = done[start:start + 1000]
        blobs = state.r.hmget(f"{PREFIX}seg:{segment}:specs", chunk)
        stored.update({v: b for v, b in zip(chunk, blobs, strict=True) if b})
    with ThreadPoolExecutor(READ_THREADS) as pool:
        per_video = [v for v in pool.map(
            lambda v: read_video(storage, base, v, stored.get(v)), done) if v]
    figures["render"] = render_figures(per_video)
    figures["dataset"] = dataset_figures(per_video)

    from farm.view.preview import Source, thumbnail

    src = Source(storage, base, storage.describe())

    def thumb(video: str) -> bytes | None:
        try:
            return thumbnail(src, video, {})
        except (StorageError, OSError) as exc:  # a broken video must not cost the whole report
            print(f"warning: no thumbnail for {video}: {exc}", file=sys.stderr)
            return None

    chosen = [v.video for v in per_video][:thumbnails]
    with ThreadPoolExecutor(4) as pool:
        thumbs = {v: png for v, png in zip(chosen, pool.map(thumb, chosen), strict=True) if png}
    figures["thumbnails"] = list(thumbs)
    return figures, thumbs


def read_video(storage: Storage, base: str, video: str, packed: str | None = None
               ) -> VideoFigures | None:
    """The figures of a finished video from its manifest and spec (None without a manifest).

    ``packed`` is the spec the scheduler stored in Redis; it is used when its digest is the
    manifest's (else the video was resampled: the spec uploaded beside the frames is read).
    """
    raw = storage.get_bytes(video_keys(base, video)["manifest"])
    if raw is None:
        return None
    manifest = json.loads(raw)
    spec = None
    try:
        if packed:
            spec = spec_from_dict(unpack_spec(packed))
            if spec.digest() != manifest.get("spec_digest"):
                spec = None
        if spec is None:
            text = storage.get_bytes(video_keys(base, video)["spec"])
            spec = parse_spec_text(text, video) if text else None
    except SpecError:
        spec = None
    return video_figures(video, manifest, spec)


# --- the page ----------------------------------------------------------------------------------

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, xlabel: str, ylabel: str = "count", bars: bool = False):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not bars:  # histograms: a few x ticks, integer counts (bar charts set their own)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.yaxis.set_major_locator(MaxNLocator(6, integer=True))
    return fig, ax


def _hist_plot(title: str, xlabel: str, series: dict[str, dict], log_x: bool = False) -> str:
    fig, ax = _figure(title, xlabel)
    for label, h in series.items():
        if h["counts"]:
            ax.stairs(h["counts"], h["edges"], fill=len(series) == 1, alpha=0.7, label=label)
    if log_x:
        ax.set_xscale("log")
    if len(series) > 1:
        ax.legend()
    return _png(fig)


def _bar_plot(title: str, xlabel: str, data: dict[str, int], horizontal: bool = False) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(title, "count" if horizontal else xlabel, xlabel if horizontal else "count",
                      bars=True)
    names, values = list(data), list(data.values())
    (ax.barh if horizontal else ax.bar)(names, values, color="#4878a8")
    (ax.xaxis if horizontal else ax.yaxis).set_major_locator(MaxNLocator(6, integer=True))
    if horizontal:
        ax.invert_yaxis()
    return _png(fig)


def plots(fig: dict) -> dict[str, str]:
    """Every plot of the page as a data URI, by id."""
    render, data = fig["render"], fig["dataset"]
    out = {"counts": _bar_plot("videos by state", "state",
                               {s: fig["counts"][s] for s in STATES})}
    if render["by_device"]:
        out["s_per_frame"] = _hist_plot(
            "render seconds per frame (steady state)", "s / frame",
            {dev: d["s_per_frame"]["histogram"] for dev, d in render["by_device"].items()})
        out["video_wall_s"] = _hist_plot(
            "render wall seconds per video", "s / video",
            {dev: d["video_wall_s"]["histogram"] for dev, d in render["by_device"].items()})
    if data["videos"]:
        out["categories"] = _bar_plot("objects per category", "category", data["categories"],
                                      horizontal=True)
        out["objects_per_video"] = _bar_plot("objects per video", "objects",
                                             data["objects_per_video"])
        out["visible_area"] = _hist_plot("visible area per object and frame",
                                         "fraction of the image",
                                         {"": data["visible_area_fraction"]["histogram"]},
                                         log_x=True)
        out["visible_frames"] = _hist_plot("frames each object is visible",
                                           "fraction of the video's frames",
                                           {"": data["visible_frames_fraction"]["histogram"]})
        out["occlusion"] = _hist_plot("occlusion (area lost vs the object's best frame)",
                                      "1 - pixels / max pixels",
                                      {"": data["occlusion"]["histogram"]})
        out["speed_world"] = _hist_plot("object speed (scene)", "units / frame",
                                        {"": data["speed_world_per_frame"]["histogram"]})
        out["speed_image"] = _hist_plot("object speed (image)", "box centre shift / width",
                                        {"": data["speed_image_per_frame"]["histogram"]})
    return out


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px} th{background:#eee} td.l,th.l{text-align:left}
.row{display:flex;gap:24px;align-items:flex-start} .row img{width:360px}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots img{width:400px}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(192px,1fr));gap:6px}
figure{margin:0;font-size:12px;text-align:center} figure img{width:100%}
dl{font-size:13px} dt{font-weight:600}
"""


def _table(table_id: str, header: list[str], rows: list[list]) -> str:
    """Numbers right-aligned, text left-aligned (headers follow their first row)."""
    first = rows[0] if rows else []

    def cell(tag: str, i: int, v) -> str:
        probe = first[i] if tag == "th" and i < len(first) else v
        numeric = isinstance(probe, int | float) or re.fullmatch(r"[-+.\d e()]+", str(probe))
        cls = "" if numeric else ' class="l"'
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def render_html(fig: dict, thumbs: dict[str, bytes]) -> str:
    p = plots(fig)
    img = lambda key: (f'<img class="plot" id="plot-{key}" alt="{key}" src="{p[key]}">'  # noqa: E731
                       if key in p else "")
    c = fig["counts"]
    parts = [f"<h1>Segment {fig['segment']}</h1>",
             f"<p>{html.escape(fig['storage'])}; generated {html.escape(fig['generated_at'])}"
             f"; {fig['dataset']['videos']} finished videos with manifests.</p>",
             "<h2>Videos by state</h2>",
             '<div class="row">' + _table("counts", ["state", "videos"],
                                          [[s, c[s]] for s in (*STATES, "total")])
             + img("counts") + "</div>",
             "<h2>Failures</h2>"]
    fails = fig["failures"]
    if fails["videos"]:
        parts.append(_table("failure-reasons", ["reason", "videos", "examples"],
                            [[r["reason"], r["count"], " ".join(r["videos"][:8])]
                             for r in fails["by_reason"]]))
        parts.append(_table("failed-videos", ["video", "reason", "crashes", "lost", "last error"],
                            [[r["video"], r["reason"], r["crashes"], r["lost_deliveries"],
                              r["error"][:300]] for r in fails["videos"]]))
    else:
        parts.append('<p id="no-failures">No failed videos.</p>')
    parts.append("<h2>Render time</h2>")
    rows = []
    for dev, d in fig["render"]["by_device"].items():
        s, w, o = d["s_per_frame"], d["video_wall_s"], d["overhead_s"]
        rows.append([dev, d["videos"], d["frames"], _fmt(s.get("median")), _fmt(s.get("p95")),
                     _fmt(d["first_frame_s"].get("median")), _fmt(w.get("median")),
                     _fmt(w.get("p95")), _fmt(o.get("median"))])
    parts.append(_table("render-by-device",
                        ["device", "videos", "frames", "s/frame median", "s/frame p95",
                         "first frame s", "s/video median", "s/video p95", "overhead s median"],
                        rows))
    parts.append(f'<div class="plots">{img("s_per_frame")}{img("video_wall_s")}</div>')
    d = fig["dataset"]
    parts.append("<h2>Dataset</h2>")
    summary_rows = [["videos", d["videos"]], ["objects", d["objects"]],
                    ["overlapped by a nearer object (share of visible object-frames)",
                     _fmt(d["overlapped_by_nearer_share"])]]
    for key, label in (("visible_area_fraction", "visible area / image"),
                       ("visible_frames_fraction", "frames visible / frames"),
                       ("occlusion", "occlusion"),
                       ("speed_world_per_frame", "speed, scene units / frame"),
                       ("speed_image_per_frame", "speed, image widths / frame")):
        s = d[key]
        summary_rows.append([f"{label}: median (p5-p95)",
                             f"{_fmt(s.get('median'))} ({_fmt(s.get('p5'))}-{_fmt(s.get('p95'))})"])
    parts.append(_table("dataset-summary", ["figure", "value"], summary_rows))
    parts.append(_table("categories", ["category", "objects"], list(d["categories"].items())))
    parts.append('<div class="plots">' + "".join(img(k) for k in (
        "categories", "objects_per_video", "visible_area", "visible_frames", "occlusion",
        "speed_world", "speed_image")) + "</div>")
    parts.append("<h3>Definitions</h3><dl>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
        for k, v in fig["definitions"].items()) + "</dl>")
    parts.append(f"<h2>Previews</h2><p>Middle frame with the mask overlay of the first "
                 f"{len(thumbs)} finished videos (<code>python -m farm preview</code> writes "
                 f"contact sheets and animations).</p>")
    parts.append('<div class="thumbs" id="thumbnails">' + "".join(
        f'<figure><img class="thumb" alt="{v}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{v}</figcaption></figure>'
        for v, png in thumbs.items()) + "</div>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Segment "
            f"{fig['segment']} report</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + f"<script>{ONLOAD}</script></body></html>")


# Records on <body> how many images the browser decoded (tests read it from the DOM).
ONLOAD = ("addEventListener('load',()=>{const i=[...document.images];"
          "document.body.dataset.imagesDecoded=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
          "document.body.dataset.images=i.length;});")


def run(ctx, args) -> int:
    """The ``report`` command (ctx: scheduler.context.Context)."""
    storage = ctx.storage
    figures, thumbs = gather(ctx.state, storage, ctx.base(args.segment), args.segment,
                             args.thumbnails)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(figures, thumbs))
    print(f"segment {args.segment}: {figures['counts']['done']} done, "
          f"{figures['counts']['failed']} failed, {figures['counts']['cancelled']} cancelled of "
          f"{figures['counts']['total']}; report written to {out} ({out.stat().st_size // 1024} KB)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
        print(f"figures written to {args.json}")
    return 0
