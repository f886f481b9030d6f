"""Training-ready output (real renders), read as third-party VOS code reads it: the index files of a local
render (meta.json, ImageSets, empty masks, first-appearance annotations), the DAVIS toolkit's
and YouTube-VOS's layouts, shards read by the real ``webdataset`` package, the clip reader,
pack -> unpack byte for byte, and verification that notices a changed byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.io.dataset import (
    first_appearances,
    missing_at_first_frame,
    split_videos,
)

pytestmark = pytest.mark.render

VIDEOS = 4
FRAMES = 10  # the tiny-clips preset: longer than the trainers' 8-frame clips


def farm(*args: str, package: str = "farm") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", package, "-q", *args], capture_output=True,
                          text=True, timeout=600)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rendered(pack, tmp_path_factory) -> Path:
    """Four tiny-clips videos rendered by ``python -m worker render`` (real bpy), one of them in
    the validation split, with first-appearance annotations."""
    tmp = tmp_path_factory.mktemp("training")
    assets = ["--models", str(pack.models), "--textures", str(pack.textures)]
    proc = farm("specs", "--segment", "0", "--count", str(VIDEOS), "--preset", "tiny-clips",
                "--out", str(tmp / "specs"), *assets)
    assert proc.returncode == 0, proc.stderr
    out = tmp / "out"
    proc = farm("render", "--spec", *map(str, sorted((tmp / "specs").glob("*.yaml"))), "--out",
                str(out), "--val", "1", "--first-appearance", *assets, package="worker")
    assert proc.returncode == 0, proc.stderr
    assert "ImageSets/2017/train.txt, ImageSets/2017/val.txt (train 3, val 1)" in proc.stdout
    return out


def test_meta_json_imagesets_and_empty_masks_of_a_local_render(rendered):
    meta = json.loads((rendered / "meta.json").read_text())
    assert sorted(meta["videos"]) == [f"a{i:05d}" for i in range(VIDEOS)]
    sets = {s: (rendered / "ImageSets" / "2017" / f"{s}.txt").read_text().split()
            for s in ("train", "val")}
    assert len(sets["val"]) == 1 and len(sets["train"]) == VIDEOS - 1
    assert sets == split_videos(sorted(meta["videos"]), 1, 0)
    for video, entry in meta["videos"].items():
        assert entry["split"] == ("val" if video in sets["val"] else "train")
        manifest = json.loads((rendered / "manifests" / f"{video}.json").read_text())
        for obj_id, obj in entry["objects"].items():  # visible frames == pixels in the masks
            ids = [np.array(Image.open(rendered / "Annotations" / video / f"{f:05d}.png"))
                   for f in range(FRAMES)]
            assert obj["frames"] == [f"{f:05d}" for f in range(FRAMES) if (ids[f] == int(obj_id)).any()]
        empty = [f"{f:05d}" for f in range(FRAMES)
                 if not np.array(Image.open(rendered / "Annotations" / video / f"{f:05d}.png")).any()]
        assert entry["empty_frames"] == empty
        assert entry["missing_at_first_frame"] == missing_at_first_frame(manifest)
    # Cutie: load_subset (a video a line) and load_empty_masks (JSON, looked up per video)
    subset = set((rendered / "ImageSets" / "2017" / "train.txt").read_text().splitlines())
    empties = json.loads((rendered / "empty_masks.json").read_text())
    assert empties == {v: e["empty_frames"] for v, e in meta["videos"].items()}
    assert all(isinstance(empties[v], list) for v in subset)


def test_first_appearance_annotations_follow_the_non_exhaustive_protocol(rendered):
    """XMem's YouTube-VOS loop: an annotation file may only hold objects not seen before
    ("Old labels found in non-exhaustive mode" otherwise), and each object is given once, whole,
    in the frame it first appears."""
    (val,) = (rendered / "ImageSets" / "2017" / "val.txt").read_text().split()
    folder = rendered / "AnnotationsFirstAppearance" / val
    manifest = json.loads((rendered / "manifests" / f"{val}.json").read_text())
    assert sorted(int(p.stem) for p in folder.glob("*.png")) == list(first_appearances(manifest))
    seen: set[int] = set()
    for f in range(FRAMES):
        path = folder / f"{f:05d}.png"
        if not path.exists():
            continue
        img = Image.open(path)
        assert img.mode == "P"
        labels = set(np.unique(np.array(img)).tolist()) - {0}
        assert labels and not labels & seen, f"old labels in frame {f}"
        full = np.array(Image.open(rendered / "Annotations" / val / f"{f:05d}.png"))
        for k in labels:
            assert np.array_equal(np.array(img) == k, full == k)
        seen |= labels
    assert seen == {o["id"] for o in manifest["objects"] if any(
        fr["objects"][o["id"] - 1]["pixels"] for fr in manifest["frames"])}
    # train videos get none
    assert sorted(p.name for p in (rendered / "AnnotationsFirstAppearance").iterdir()) == [val]


def davis_toolkit_read(view: Path, subset: str) -> dict[str, tuple[int, int]]:
    """What the DAVIS 2017 toolkit's DAVIS class and evaluation read: ImageSets/2017/<subset>.txt,
    JPEGImages/480p/<seq>/*.jpg and Annotations/480p/<seq>/*.png (same names), objects = the
    highest id in frame 0. Returns seq -> (frames, objects)."""
    out = {}
    for seq in (view / "ImageSets" / "2017" / f"{subset}.txt").read_text().split():
        images = sorted((view / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        masks = sorted((view / "Annotations" / "480p" / seq).glob("*.png"))
        assert [p.stem for p in images] == [p.stem for p in masks] and images
        out[seq] = (len(images), int(np.array(Image.open(masks[0])).max()))
    return out


def test_davis_view_leaves_out_videos_whose_first_frame_lacks_an_object(rendered, tmp_path):
    meta = json.loads((rendered / "meta.json").read_text())
    proc = farm("view", "davis", str(rendered), "--out", str(tmp_path / "davis"))
    assert proc.returncode == 0, proc.stderr
    read = {**davis_toolkit_read(tmp_path / "davis", "train"),
            **davis_toolkit_read(tmp_path / "davis", "val")}
    complete = [v for v, e in meta["videos"].items() if not e["missing_at_first_frame"]]
    assert sorted(read) == sorted(complete)
    for video, (frames, objects) in read.items():
        assert frames == FRAMES and objects == len(meta["videos"][video]["objects"])

    # a copy whose video a00000 lacks its last object in frame 0: left out, and said so
    copy = tmp_path / "copy"
    for rel, body in tree(rendered).items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(body)
    meta["videos"]["a00000"]["missing_at_first_frame"] = [len(meta["videos"]["a00000"]["objects"])]
    (copy / "meta.json").write_text(json.dumps(meta))
    proc = farm("view", "davis", str(copy), "--out", str(tmp_path / "davis2"))
    assert proc.returncode == 0, proc.stderr
    assert "a00000: left out: object(s)" in proc.stdout
    read = {**davis_toolkit_read(tmp_path / "davis2", "train"),
            **davis_toolkit_read(tmp_path / "davis2", "val")}
    assert "a00000" not in read and len(read) == len(complete) - ("a00000" in complete)


def test_youtube_vos_view(rendered, tmp_path):
    proc = farm("view", "youtube-vos", str(rendered), "--out", str(tmp_path / "yt"))
    assert proc.returncode == 0, proc.stderr
    (val,) = (rendered / "ImageSets" / "2017" / "val.txt").read_text().split()
    yt = tmp_path / "yt"
    assert sorted(p.name for p in (yt / "valid" / "Annotations" / val).iterdir()) == \
        sorted(p.name for p in (rendered / "AnnotationsFirstAppearance" / val).iterdir())
    assert len(list((yt / "all_frames" / "valid_all_frames" / "JPEGImages" / val).glob("*.jpg"))) == FRAMES
    assert list(json.loads((yt / "valid" / "meta.json").read_text())["videos"]) == [val]
    train = json.loads((yt / "train" / "meta.json").read_text())["videos"]
    assert len(train) == VIDEOS - 1 and val not in train
    for video in train:
        assert len(list((yt / "train" / "Annotations" / video).glob("*.png"))) == FRAMES


def test_pack_unpack_byte_for_byte_and_the_webdataset_package_reads_the_shards(rendered, tmp_path):
    import webdataset as wds

    packed = tmp_path / "packed"
    proc = farm("pack", str(rendered), str(packed), "--shard-size", "40KB")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((packed / "index.json").read_text())
    assert (packed / "index.sha256").read_text() == \
        f"{hashlib.sha256((packed / 'index.json').read_bytes()).hexdigest()}  index.json\n"
    assert len(index["shards"]) > 1 and index["videos"] == VIDEOS
    assert sorted(v for s in index["shards"] for v in s["videos"]) == [f"a{i:05d}" for i in range(VIDEOS)]
    for shard in index["shards"]:  # a video is never split, a shard passes the size only alone
        path = packed / shard["key"]
        assert shard["bytes"] == path.stat().st_size
        assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert len(shard["videos"]) == 1 or shard["bytes"] <= 40_000 + 10_240 * 2
        with tarfile.open(path) as tar:
            keys = [m.name.partition(".")[0] for m in tar.getmembers()]
        assert sorted(set(keys)) == shard["videos"]
        assert keys == sorted(keys, key=shard["videos"].index)  # a sample's members are consecutive

    # the webdataset package: one sample per video, members by extension
    urls = [str(packed / s["key"]) for s in index["shards"]]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        video = sample["__key__"]
        seen.append(video)
        for f in range(FRAMES):
            assert sample[f"{f:05d}.jpg"] == (rendered / "JPEGImages" / video / f"{f:05d}.jpg").read_bytes()
            assert sample[f"{f:05d}.png"] == (rendered / "Annotations" / video / f"{f:05d}.png").read_bytes()
        assert sample["spec.yaml"] == (rendered / "specs" / f"{video}.yaml").read_bytes()
        assert json.loads(sample["manifest.json"])["video"] == video
    assert seen == [f"a{i:05d}" for i in range(VIDEOS)]
    decoded = next(iter(wds.WebDataset(urls[:1], shardshuffle=False, empty_check=False).decode("rgb8")))
    assert decoded["00000.jpg"].shape == (48, 64, 3)

    proc = farm("unpack", str(packed), str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "back") == tree(rendered)  # every file, byte for byte
    for where in (packed, tmp_path / "back", rendered):
        proc = farm("verify", str(where))
        assert proc.returncode == 0 and "every file verified" in proc.stdout, proc.stdout + proc.stderr


def test_the_clip_reader_yields_the_folders_frames(rendered, tmp_path):
    from farm.io.clips import ClipStats, clips
    from farm.io.shards import pack
    from farm.io.storage import LocalStorage

    pack(LocalStorage(rendered), "", LocalStorage(tmp_path / "p"), "", shard_bytes=60_000)
    stats = ClipStats()
    got = list(clips(str(tmp_path / "p"), length=8, stride=2, stats=stats))
    assert stats.videos == VIDEOS and stats.clips == VIDEOS * 2 and not stats.short  # starts 0, 2
    for clip in got:
        assert clip.rgb.shape == (8, 48, 64, 3) and clip.masks.shape == (8, 48, 64)
        assert clip.frames == [f"{f:05d}" for f in range(clip.start, clip.start + 8)]
        for i, name in enumerate(clip.frames):
            assert np.array_equal(clip.rgb[i], np.asarray(Image.open(
                rendered / "JPEGImages" / clip.video / f"{name}.jpg")))
            assert np.array_equal(clip.masks[i], np.array(Image.open(
                rendered / "Annotations" / clip.video / f"{name}.png")))
        assert clip.masks[0].any()  # a trainer's first-frame mask is not empty
    # each data-loader worker its own shards, together all of them, once
    shares = [{(c.video, c.start) for c in clips(str(tmp_path / "p"), 8, 2, rank, 2)} for rank in (0, 1)]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == {(c.video, c.start) for c in got}
    # clips longer than the videos: none, and the short videos are named
    short = ClipStats()
    assert not list(clips(str(tmp_path / "p"), length=FRAMES + 1, stats=short))
    assert sorted(short.short) == [f"a{i:05d}" for i in range(VIDEOS)]


def test_clip_samples_round_trip_and_read_as_clips(rendered, tmp_path):
    """``pack --clip 8``: samples of 8 frames (the last one the rest), each with the video's
    spec, manifest and marker; webdataset reads them, unpack gives the same folders."""
    import webdataset as wds

    from farm.io.clips import ClipStats, clips

    packed = tmp_path / "clips"
    proc = farm("pack", str(rendered), str(packed), "--clip", "8")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((packed / "index.json").read_text())
    assert index["samples"] == "clip" and index["clip_frames"] == 8
    keys = [s["__key__"] for s in wds.WebDataset([str(packed / s["key"]) for s in index["shards"]],
                                                shardshuffle=False, empty_check=False)]
    assert keys == [f"a{i:05d}-{start:05d}" for i in range(VIDEOS) for start in (0, 8)]
    stats = ClipStats()
    got = list(clips(str(packed), length=8, stats=stats))
    assert [(c.video, c.start) for c in got] == [(f"a{i:05d}", 0) for i in range(VIDEOS)]
    assert sorted(stats.short) == [f"a{i:05d}-00008" for i in range(VIDEOS)]  # 2 frames each
    proc = farm("unpack", str(packed), str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "back") == tree(rendered)
    assert farm("verify", str(packed)).returncode == 0


def test_verify_names_a_changed_byte_in_a_shard_a_frame_and_an_index_file(rendered, tmp_path):
    from farm.io.shards import pack
    from farm.io.storage import LocalStorage

    pack(LocalStorage(rendered), "", LocalStorage(tmp_path / "p"), "")
    shard = tmp_path / "p" / "shards" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = farm("verify", str(tmp_path / "p"))
    assert proc.returncode == 1 and "shards/shard-000000.tar" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert farm("unpack", str(tmp_path / "p"), str(tmp_path / "u")).returncode == 2

    copy = tmp_path / "copy"
    for rel, body in tree(rendered).items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(body)
    frame = copy / "JPEGImages" / "a00001" / "00003.jpg"
    frame.write_bytes(frame.read_bytes() + b"\0")
    (copy / "ImageSets" / "2017" / "val.txt").write_text("a00000\n")
    proc = farm("verify", str(copy))
    assert proc.returncode == 1
    assert "a00001: JPEGImages/a00001/00003.jpg is not the file its marker records" in proc.stdout
    assert "ImageSets/2017/val.txt: not the file the card records" in proc.stdout


def test_the_dataset_card(rendered):
    card = json.loads((rendered / "dataset.json").read_text())
    assert card["videos"] == VIDEOS and card["frames"] == VIDEOS * FRAMES
    assert card["presets"] == {"tiny-clips": VIDEOS} and card["seeds"] == [2021]
    assert card["splits"] == {"train": VIDEOS - 1, "val": 1}
    assert card["files"]["meta.json"] == hashlib.sha256((rendered / "meta.json").read_bytes()).hexdigest()
    assert sum(card["figures"]["categories"].values()) == card["objects"]
    assert card["asset_libraries"] == [{"name": "shapenet-layout", "objects": card["objects"],
                                        "licence": "not declared (ShapeNet-layout models root)"}]
    page = (rendered / "DATASET.md").read_text()
    assert card["content_sha256"] in page and "python -m farm verify" in page


def test_bad_input_is_one_clear_line(tmp_path, rendered):
    for args, message in [
        (("pack", str(tmp_path / "none"), str(tmp_path / "x")), "no finished videos"),
        (("unpack", str(rendered), str(tmp_path / "x")), "no index.json"),
        (("view", "davis", str(tmp_path), "--out", str(tmp_path / "v")), "meta.json: no such file"),
        (("pack", str(rendered), str(tmp_path / "x"), "--shard-size", "lots"), "give a size"),
        (("index", str(rendered), "--val", "2.5"), "whole number of videos"),
    ]:
        proc = farm(*args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, \
            (args, proc.stderr)
