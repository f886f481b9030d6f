"""What users see: previews (local folder and S3 segment) and the segment report, opened in a real
headless Chromium, on real renders (the demo, and a segment rendered by the local farm)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.assets.library import AssetLibrary
from farm.generate.sampling import generate_spec
from farm.io.masks import PALETTE
from farm.model.presets import load_preset
from farm.view.preview import read_layout, resize_ids, resize_rgb

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.render]


def farm_cli(*args: str, env: dict | None = None, package: str = "farm"
             ) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", package, "-q", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_preview(sheet: Path, animation: Path, frames_dir: Path, masks_dir: Path,
                  manifest: dict, every: int) -> None:
    """The sheet shows every Nth frame as RGB + overlay panels and a legend of the manifest's
    objects; the animation has one frame per video frame."""
    frames = sorted(p.stem for p in frames_dir.glob("*.jpg"))
    layout = read_layout(sheet)
    img = np.asarray(Image.open(sheet).convert("RGB"))
    pw, ph = layout["panel_size"]
    shown = frames[::every]
    assert [r["frame"] for r in layout["rows"]] == shown
    assert layout["panels_per_row"] == 2 and len(layout["rows"]) == math.ceil(len(frames) / every)
    # the sheet holds rows x 2 panels of the panel size, side by side, rows one under another
    assert img.shape[1] >= 2 * pw and img.shape[0] >= len(shown) * ph
    assert (img.shape[1], img.shape[0]) == tuple(layout["size"])
    for r, row in enumerate(layout["rows"]):
        x0, y0, x1, y1 = row["rgb_box"]
        ox0, oy0, ox1, oy1 = row["overlay_box"]
        assert (x1 - x0, y1 - y0) == (ox1 - ox0, oy1 - oy0) == (pw, ph)
        assert ox0 >= x1 and oy0 == y0 and (r == 0 or y0 >= layout["rows"][r - 1]["rgb_box"][3])
        rgb_panel = img[y0:y1, x0:x1].astype(int)
        ovl_panel = img[oy0:oy1, ox0:ox1].astype(int)
        # the RGB panel is the frame itself (scaled)
        frame = np.asarray(Image.open(frames_dir / f"{row['frame']}.jpg").convert("RGB"))
        assert np.array_equal(rgb_panel, resize_rgb(frame, (pw, ph)))
        # the overlay: background untouched, each object's pixels pulled towards its colour
        ids = resize_ids(np.asarray(Image.open(masks_dir / f"{row['frame']}.png")), (pw, ph))
        assert np.array_equal(ovl_panel[ids == 0], rgb_panel[ids == 0])
        for k in set(np.unique(ids)) - {0}:
            colour = np.array(PALETTE[3 * k:3 * k + 3])
            before = np.abs(rgb_panel[ids == k] - colour).sum(axis=1).mean()
            after = np.abs(ovl_panel[ids == k] - colour).sum(axis=1).mean()
            assert after < 0.6 * before, (row["frame"], k)
    # the legend lists the manifest's objects, with their categories and palette colours
    legend = layout["legend"]
    assert [(e["id"], e["category"]) for e in legend] == \
        [(o["id"], o["category"]) for o in manifest["objects"]]
    for e in legend:
        x0, y0, x1, y1 = e["swatch_box"]
        assert tuple(img[(y0 + y1) // 2, (x0 + x1) // 2]) == tuple(PALETTE[3 * e["id"]:3 * e["id"] + 3])
    with Image.open(animation) as anim:
        assert anim.n_frames == len(frames)
        assert anim.size == (pw, ph)


def test_demo_writes_previews_and_preview_reads_a_local_folder(pack, tmp_path):
    out = tmp_path / "demo"
    proc = farm_cli("demo", "--preset", "tiny", "--count", "1", "--out", str(out),
                    "--models", str(pack.models), "--textures", str(pack.textures),
                    package="worker")
    sheet, gif = out / "previews" / "a00000_sheet.png", out / "previews" / "a00000_overlay.gif"
    assert f"  {sheet}\n  {gif}" in proc.stdout  # make demo prints where its previews are
    manifest = json.loads((out / "manifests" / "a00000.json").read_text())
    check_preview(sheet, gif, out / "JPEGImages" / "a00000", out / "Annotations" / "a00000",
                  manifest, every=1)

    proc = farm_cli("preview", str(out), "--every", "2", "--animation", "webp", "--out",
                    str(tmp_path / "p"))
    sheet, webp = tmp_path / "p" / "a00000_sheet.png", tmp_path / "p" / "a00000_overlay.webp"
    cats = ", ".join(o["category"] for o in manifest["objects"])
    assert f"a00000: sheet {sheet} (2 rows x 2 panels; objects: {cats})" in proc.stdout
    check_preview(sheet, webp, out / "JPEGImages" / "a00000", out / "Annotations" / "a00000",
                  manifest, every=2)

    bad = subprocess.run([sys.executable, "-m", "farm", "preview", str(tmp_path / "nowhere"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "no such folder" in bad.stderr and "Traceback" not in bad.stderr


# --- the report in a browser -----------------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed to check the report: `make system-deps` installs it")


def browse(page: Path, profile: Path, *args: str) -> str:
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--window-size=1280,2400", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class DomReader(HTMLParser):
    """Tables (by id: rows of cell texts), images (attributes) and the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self.body: dict = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "body":
            self.body = a

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.mark.services
def test_report_of_a_farm_segment_in_a_browser_and_previews_from_s3(farm, pack, tmp_path):
    segment, base = 8, "bl30k/8"
    preset = load_preset("tiny")
    lib = AssetLibrary.open(pack.models, pack.textures)
    specs = [generate_spec(lib, preset, segment, i, 2021) for i in range(4)]
    victim = specs[0].objects[0].model  # broken on the worker: video 0 fails at once
    assert all(victim not in [o.model for o in s.objects] for s in specs[1:3])
    worker_models = tmp_path / "worker-models"
    shutil.copytree(pack.models, worker_models)
    (worker_models / victim / "models" / "model_normalized.obj").write_text("not a mesh\n")

    farm.cli("enqueue", "--segment", str(segment), "--count", "4", "--preset", "tiny")
    farm.cli("cancel", "--segment", str(segment), "--video", specs[3].id)
    farm.start_worker("w1", FARM_MODELS=str(worker_models))
    status = farm.wait_for(segment, done=2, failed=1, cancelled=1)

    html_path, json_path = tmp_path / "report" / "report.html", tmp_path / "report.json"
    out = farm.cli("report", "--segment", str(segment), "--out", str(html_path), "--json",
                   str(json_path)).stdout
    assert f"segment {segment}: 2 done, 1 failed, 1 cancelled of 4" in out
    figures = json.loads(json_path.read_text())

    # the JSON: counts as `scheduler status` says; figures from the manifests in the bucket
    assert figures["counts"] == {k: status[k] for k in figures["counts"]}
    assert [(r["reason"], r["videos"]) for r in figures["failures"]["by_reason"]] == \
        [("bad spec or asset", [specs[0].id])]
    manifests = {s.id: json.loads(farm.s3.get_object(
        Bucket=farm.bucket, Key=f"{base}/manifests/{s.id}.json")["Body"].read())
        for s in specs[1:3]}
    cats = Counter(o["category"] for m in manifests.values() for o in m["objects"])
    assert figures["dataset"]["categories"] == dict(cats)
    assert figures["dataset"]["objects_per_video"] == dict(Counter(
        str(len(m["objects"])) for m in manifests.values()))
    cpu = figures["render"]["by_device"]["CPU"]
    assert cpu["videos"] == 2 and cpu["frames"] == 6
    steady = [s for m in manifests.values() for s in m["timings"]["render_s"][1:]]
    assert cpu["s_per_frame"]["n"] == len(steady)
    assert cpu["s_per_frame"]["median"] == pytest.approx(float(np.median(steady)), abs=1e-6)
    visible = [o["pixels"] / (64 * 48) for m in manifests.values() for f in m["frames"]
               for o in f["objects"] if o["pixels"]]
    assert figures["dataset"]["visible_area_fraction"]["n"] == len(visible)
    assert figures["dataset"]["visible_area_fraction"]["median"] == \
        pytest.approx(float(np.median(visible)), abs=1e-6)
    occ = figures["dataset"]["occlusion"]
    assert occ["n"] > 0 and occ["min"] >= 0 and occ["max"] <= 1
    assert figures["dataset"]["speed_world_per_frame"]["n"] == sum(cats.values())
    assert figures["thumbnails"] == sorted(manifests)

    # the page in a real browser: screenshot kept with the test's artifacts, assertions on the DOM
    shot = tmp_path / "report.png"
    browse(html_path, tmp_path / "chromium", f"--screenshot={shot}")
    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
    dom = DomReader()
    dom.feed(browse(html_path, tmp_path / "chromium", "--dump-dom"))
    counts = {row[0]: int(row[1]) for row in dom.tables["counts"][1:]}
    assert counts == {**{k: status[k] for k in ("queued", "running", "retrying", "done",
                                                 "failed", "cancelled")}, "total": 4}
    assert [row[0] for row in dom.tables["failed-videos"][1:]] == [specs[0].id]
    assert dom.tables["render-by-device"][1][:3] == ["CPU", "2", "6"]
    assert {row[0]: int(row[1]) for row in dom.tables["categories"][1:]} == dict(cats)
    thumbs = [i for i in dom.images if i.get("class") == "thumb"]
    assert [i["alt"] for i in thumbs] == sorted(manifests)
    plots = {i["id"] for i in dom.images if i.get("class") == "plot"}
    assert {"plot-counts", "plot-s_per_frame", "plot-categories", "plot-visible_area",
            "plot-occlusion", "plot-speed_world"} <= plots
    assert all(i["src"].startswith("data:image/png;base64,") for i in dom.images)  # one file
    assert dom.body["data-images-decoded"] == dom.body["data-images"] == str(len(dom.images))

    # previews straight from the S3 segment, with the farm's endpoint and credentials
    prev = tmp_path / "previews"
    proc = farm_cli("preview", f"s3://{farm.bucket}/{base}", "--out", str(prev),
                    env=farm.env)
    assert proc.stdout.count(": sheet ") == 2
    for video, m in manifests.items():
        layout = read_layout(prev / f"{video}_sheet.png")
        assert [e["category"] for e in layout["legend"]] == [o["category"] for o in m["objects"]]
        assert len(layout["rows"]) == 3 and layout["panels_per_row"] == 2
        with Image.open(prev / f"{video}_overlay.gif") as gif:
            assert gif.n_frames == 3
