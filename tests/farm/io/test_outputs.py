"""Extra outputs without Blender: spec field, presets, codecs, encodings, layout, storage, loader."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.generate.sampling import generate_spec
from farm.io import outputs as fo
from farm.io.codecs import (
    CodecError,
    read_exr,
    read_flo,
    read_png16,
    write_exr,
    write_flo,
    write_png16,
)
from farm.io.storage import FrameStreamer, LocalStorage, remove_frames, upload_video
from farm.model.camera import look_at_rotation, project
from farm.model.presets import load_preset
from farm.model.spec import OUTPUTS, SpecError
from farm.model.validate import parse_spec_text, spec_from_dict

ALL = list(OUTPUTS)


# --- spec and presets --------------------------------------------------------------------------


def test_default_outputs_leave_specs_and_digests_unchanged(library, bl30k):
    spec = generate_spec(library, bl30k, 1, 7, 2021)
    assert spec.render.outputs == ("rgb", "masks")
    render = spec.to_dict()["render"]
    assert not {"outputs", "depth_format", "flow_format"} & set(render)  # old YAML, old digest
    movi = replace(spec, render=replace(spec.render, outputs=tuple(ALL), depth_format="exr"))
    again = parse_spec_text(movi.to_yaml())
    assert again == movi and again.digest() == movi.digest() != spec.digest()
    assert again.to_dict()["render"]["outputs"] == ALL


@pytest.mark.parametrize(("value", "problem"), [
    (["rgb", "masks", "albedo"], "unknown output(s) albedo"),
    (["rgb", "depth"], "must include masks"),
    (["rgb", "masks", "depth", "depth"], "listed twice"),
    ("depth", "expected a list"),
])
def test_outputs_are_validated(library, bl30k, value, problem):
    data = generate_spec(library, bl30k, 1, 7, 2021).to_dict()
    data["render"]["outputs"] = value
    with pytest.raises(SpecError) as err:
        spec_from_dict(data)
    assert err.value.field == "render.outputs" and problem in err.value.problem
    data["render"]["outputs"] = ["rgb", "masks"]
    data["render"]["flow_format"] = "exr"
    with pytest.raises(SpecError, match="render.flow_format"):
        spec_from_dict(data)


def test_outputs_come_back_in_canonical_order(library, bl30k):
    data = generate_spec(library, bl30k, 1, 7, 2021).to_dict()
    data["render"]["outputs"] = ["amodal", "masks", "depth", "rgb"]
    assert spec_from_dict(data).render.outputs == ("rgb", "masks", "depth", "amodal")


def test_presets_select_outputs():
    assert load_preset("bl30k").render.outputs == ("rgb", "masks")
    movi = load_preset("movi-like")
    assert movi.render.outputs == tuple(ALL)
    bl30k = load_preset("bl30k")
    # movi-like is bl30k (base:) plus every output
    assert replace(movi.render, outputs=bl30k.render.outputs) == bl30k.render
    assert (movi.frames, movi.resolution) == (bl30k.frames, bl30k.resolution)
    tiny = load_preset("tiny-movi")
    assert tiny.render.outputs == tuple(ALL) and tiny.resolution == (64, 48)


# --- codecs ------------------------------------------------------------------------------------


def test_png16_round_trip_and_8_bit_pngs_from_pillow(tmp_path):
    rng = np.random.default_rng(0)
    for shape in ((37, 53), (37, 53, 3)):
        x = rng.integers(0, 65536, shape).astype(np.uint16)
        write_png16(tmp_path / "a.png", x)
        assert np.array_equal(read_png16(tmp_path / "a.png"), x)
    grey = rng.integers(0, 65536, (20, 30)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")  # Pillow reads ours, we read Pillow's
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).shape,
                          (37, 53, 3))
    assert np.array_equal(read_png16(tmp_path / "g.png"), grey)
    rgb = rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)  # optimize: all five filters
    Image.fromarray(rgb).save(tmp_path / "c.png", optimize=True)
    assert np.array_equal(read_png16(tmp_path / "c.png"), rgb)
    with pytest.raises(CodecError):
        write_png16(tmp_path / "x.png", np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("compression", ["NONE", "ZIPS", "ZIP"])
@pytest.mark.parametrize("half", [False, True])
def test_exr_round_trip(tmp_path, compression, half):
    rng = np.random.default_rng(1)
    channels = {"Z": rng.normal(5, 2, (37, 53)).astype(np.float32),
                "A": np.ones((37, 53), np.float32)}
    channels["Z"][0, 0] = np.inf
    write_exr(tmp_path / "a.exr", channels, compression, half)
    back = read_exr(tmp_path / "a.exr")
    for name, values in channels.items():
        want = values.astype(np.float16).astype(np.float32) if half else values
        assert np.array_equal(back[name], want)


def test_exr_is_readable_by_openimageio(tmp_path):
    """Interoperability: Blender's own OpenImageIO (shipped inside the bpy wheel) reads our EXR."""
    import importlib.util
    import sys

    spec = importlib.util.find_spec("bpy")
    site = next(Path(spec.submodule_search_locations[0]).glob("*/python/lib/python3.11/"
                                                              "site-packages"), None)
    if site is None:
        pytest.skip("no OpenImageIO inside bpy")
    sys.path.insert(0, str(site))
    try:
        import OpenImageIO as oiio
    finally:
        sys.path.remove(str(site))
    depth = np.random.default_rng(2).uniform(1, 20, (24, 32)).astype(np.float32)
    write_exr(tmp_path / "d.exr", {"Z": depth})
    image = oiio.ImageInput.open(str(tmp_path / "d.exr"))
    assert image.spec().channelnames == ("Z",)
    assert np.array_equal(image.read_image("float")[..., 0], depth)
    image.close()


def test_flo_round_trip_with_unknown_flow(tmp_path):
    flow = np.random.default_rng(3).normal(0, 4, (20, 30, 2)).astype(np.float32)
    flow[3, 4] = np.nan
    write_flo(tmp_path / "a.flo", flow)
    back = read_flo(tmp_path / "a.flo")
    assert np.array_equal(np.isnan(back), np.isnan(flow))
    assert np.array_equal(back[~np.isnan(flow)], flow[~np.isnan(flow)])
    raw = (tmp_path / "a.flo").read_bytes()
    assert raw[:4] == b"PIEH"  # the Middlebury tag every .flo reader checks


# --- encodings ---------------------------------------------------------------------------------


def test_depth_png16_units_and_special_values():
    depth = np.array([[0.0, 1.0, 5.4321], [17.5, 70.0, 1e10]], np.float32)
    q = fo.encode_depth_png16(depth)
    assert q.tolist() == [[0, 1000, 5432], [17500, 65535, 0]]
    back = fo.decode_depth_png16(q)
    assert back[0, 1] == pytest.approx(1.0) and back[1, 0] == pytest.approx(17.5)
    assert np.isinf(back[0, 0]) and np.isinf(back[1, 1]) and np.isinf(back[1, 2])


def test_flow_from_blender_vector_pass_sign_convention():
    """Blender: (prev - cur, cur - next) with y up. An object moving 3 px right and 2 px down per
    frame: prev - cur = (-3, +2) in y-up pixels, cur - next = (-3, +2)."""
    vector = np.zeros((2, 2, 4), np.float32)
    vector[...] = [-3.0, 2.0, -3.0, 2.0]
    forward, backward = fo.flow_from_vector(vector)
    assert forward[0, 0].tolist() == [3.0, 2.0]  # to t+1: right and down
    assert backward[0, 0].tolist() == [-3.0, -2.0]  # to t-1: left and up


def test_flow_png16_precision_and_undefined():
    rng = np.random.default_rng(4)
    flow = rng.uniform(-40, 25, (30, 40, 2)).astype(np.float32)
    flow[0, :3] = np.nan
    q, flow_range = fo.encode_flow_png16(flow)
    assert flow_range == [pytest.approx(float(np.nanmin(flow))),
                          pytest.approx(float(np.nanmax(flow)))]
    back = fo.decode_flow_png16(q, flow_range)
    step = (flow_range[1] - flow_range[0]) / 65535
    ok = ~np.isnan(flow)
    assert np.abs(back[ok] - flow[ok]).max() <= step / 2 + 1e-5
    assert np.isnan(back[0, :3]).all() and not np.isnan(back[1:]).any()
    nothing, none = fo.encode_flow_png16(np.full((4, 4, 2), np.nan, np.float32))
    assert none is None and np.isnan(fo.decode_flow_png16(nothing, None)).all()
    still, rng0 = fo.encode_flow_png16(np.zeros((4, 4, 2), np.float32))  # constant flow
    assert np.array_equal(fo.decode_flow_png16(still, rng0), np.zeros((4, 4, 2)))


def test_normals_in_the_opencv_camera_frame():
    # camera at the origin looking down +y (world), world up +z
    c2w = np.eye(4)
    c2w[:3, :3] = look_at_rotation(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    w2c = fo.world_to_camera(c2w)
    world = np.array([[[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    n = fo.camera_normals(world, w2c)
    # facing the camera -> -z; world up -> -y (y is down); world +x -> +x (right)
    np.testing.assert_allclose(n[0, :3], [[0, 0, -1], [0, -1, 0], [1, 0, 0]], atol=1e-9)
    assert not n[0, 3].any()  # no surface
    back = fo.decode_normals_png8(fo.encode_normals_png8(n))
    np.testing.assert_allclose(back, n, atol=0.01)
    assert not back[0, 3].any()


def test_intrinsics_and_extrinsics_agree_with_the_pinhole_math():
    """K and world_to_camera project like farm.model.camera.project (which matches Blender's render,
    tests/worker/render/test_frames.py), shifted by half a pixel to OpenCV's pixel centres."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        loc, target = rng.normal(0, 1, 3) + [0, -5, 0], rng.normal(0, 1, 3) + [0, 4, 0]
        fov, (w, h) = rng.uniform(0.5, 1.2), ((768, 512), (300, 400))[rng.integers(2)]
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = look_at_rotation(loc, target), loc
        cam = fo.camera_record(fov, w, h, [c2w], (0.01, 1000.0))
        K, w2c = np.array(cam["K"]), np.array(cam["frames"][0]["world_to_camera"])
        points = rng.normal(0, 1, (20, 3)) + [0, 3, 0]
        uv, z = fo.project_points(points, K, w2c)
        col, row, depth = project(points, loc, look_at_rotation(loc, target), fov, w, h)
        np.testing.assert_allclose(uv[:, 0], col - 0.5, atol=1e-6)
        np.testing.assert_allclose(uv[:, 1], row - 0.5, atol=1e-6)
        np.testing.assert_allclose(z, depth, atol=1e-9)
        np.testing.assert_allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-9)


# --- a staged video, storage and the loader ----------------------------------------------------


def fake_video(root: Path, settings, frames: int = 3, k: int = 2, size=(24, 32)) -> dict:
    """Write a video's outputs from known arrays as the worker does; returns the arrays."""
    rng = np.random.default_rng(6)
    h, w = size
    video, truth = "v00001", {"depth": [], "forward": [], "backward": [], "normals": [],
                              "amodal": []}
    records, objects, mats = [], [], []
    for i in range(frames):
        ids = np.zeros((h, w), np.uint8)
        ids[4:10, 5:12], ids[8:14, 10:20] = 1, 2
        amodal = {1: np.where(np.pad(np.ones((6, 9)), ((4, 14), (5, 18))) > 0, 1, 0),
                  2: np.where(ids == 2, 2, 0)}
        from farm.io.masks import object_stats, save_mask

        for folder, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
            (root / folder / video).mkdir(parents=True, exist_ok=True)
            if ext == ".jpg":
                Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(
                    root / folder / video / f"{i:05d}.jpg")
            else:
                save_mask(ids, root / folder / video / f"{i:05d}.png")
        stats = object_stats(ids, k)
        depth = rng.uniform(2, 20, (h, w)).astype(np.float32)
        depth[0, 0] = 1e10
        vector = rng.uniform(-9, 9, (h, w, 4)).astype(np.float32)
        normal = rng.normal(0, 1, (h, w, 3))
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        c2w = np.eye(4)
        c2w[:3, 3] = [0.1 * i, -5, 0]
        mats.append(c2w)
        records.append(fo.write_frame(root, video, i, frames, settings,
                                      {"depth": depth, "flow": vector, "normals": normal,
                                       "amodal": amodal}, camera_to_world=c2w, objects=stats))
        objects.append(stats)
        fwd, bwd = fo.flow_from_vector(vector)
        truth["depth"].append(np.where(fo.valid_depth(depth), depth, np.inf))
        truth["forward"].append(fwd if i < frames - 1 else np.full_like(fwd, np.nan))
        truth["backward"].append(bwd if i > 0 else np.full_like(bwd, np.nan))
        truth["normals"].append(fo.camera_normals(normal, fo.world_to_camera(c2w)))
        truth["amodal"].append(np.stack([amodal[j] != 0 for j in (1, 2)]))
    cam = fo.camera_record(0.75, w, h, mats, (0.01, 1000.0))
    fo.write_camera(root, video, cam)
    manifest = {"video": video, "num_frames": frames, "resolution": [w, h],
                "objects": [{"id": j, "category": "ball", "synset": "0", "model": "0/b"}
                            for j in range(1, k + 1)],
                "render_settings": {"outputs": list(settings.outputs),
                                    "depth_format": settings.depth_format,
                                    "flow_format": settings.flow_format},
                "outputs": list(settings.outputs), "output_formats": fo.formats(settings),
                "frames": [{"frame": i, "objects": o, **r}
                           for i, (o, r) in enumerate(zip(objects, records, strict=True))],
                "camera": cam}
    (root / "manifests").mkdir(exist_ok=True)
    (root / "manifests" / f"{video}.json").write_text(json.dumps(manifest))
    return {"video": video, "manifest": manifest, "camera": cam, **truth}


@pytest.mark.parametrize(("depth_format", "flow_format"), [("png16", "png16"), ("exr", "flo")])
def test_loader_round_trip_with_documented_units(tmp_path, depth_format, flow_format):
    settings = replace(load_preset("tiny-movi").render, depth_format=depth_format,
                       flow_format=flow_format)
    truth = fake_video(tmp_path, settings)
    got = fo.load_video_outputs(tmp_path, truth["video"])
    assert got["outputs"] == ALL and got["rgb"].shape == (3, 24, 32, 3)
    assert got["masks"].shape == (3, 24, 32) and set(np.unique(got["masks"])) == {0, 1, 2}
    depth = np.stack(truth["depth"])
    assert np.isinf(got["depth"][:, 0, 0]).all()
    tol = 0.0005 + 1e-6 if depth_format == "png16" else 0
    assert np.abs(got["depth"][:, 1:] - depth[:, 1:]).max() <= tol
    for direction in ("forward", "backward"):
        want, have = np.stack(truth[direction]), got[f"{direction}_flow"]
        assert np.array_equal(np.isnan(want), np.isnan(have))
        ok = ~np.isnan(want)
        assert np.abs(want[ok] - have[ok]).max() <= (18 / 65535 if flow_format == "png16" else 0)
    assert np.isnan(got["forward_flow"][2]).all() and np.isnan(got["backward_flow"][0]).all()
    np.testing.assert_allclose(got["normals"], np.stack(truth["normals"]), atol=0.01)
    np.testing.assert_allclose(got["K"], truth["camera"]["K"])
    assert got["world_to_camera"].shape == (3, 4, 4)
    assert got["world_to_camera"][2, 0, 3] == pytest.approx(-0.2)  # camera moved +0.2 in x
    assert np.array_equal(got["amodal"], np.stack(truth["amodal"]))
    # boxes and visibility: object 1's amodal box is larger than what is visible
    assert got["boxes"][0, 0].tolist() == [5, 4, 11, 9]
    assert got["visible_pixels"][0].tolist() == [int((got["masks"][0] == k).sum()) for k in (1, 2)]
    assert got["amodal_pixels"][0].tolist() == [54, 60]
    np.testing.assert_allclose(got["visible_fraction"][0],
                               got["visible_pixels"][0] / got["amodal_pixels"][0], atol=1e-6)
    some = fo.load_video_outputs(tmp_path, truth["video"], frames=[1], outputs=["depth"])
    assert some["depth"].shape == (1, 24, 32) and "rgb" not in some
    with pytest.raises(ValueError, match="no albedo"):
        fo.load_video_outputs(tmp_path, truth["video"], outputs=["albedo"])


def test_layout_counts_and_file_names():
    movi = load_preset("tiny-movi").render
    files = fo.frame_files(movi, "c00001", 7, 3)
    assert files == ["JPEGImages/c00001/00007.jpg", "Annotations/c00001/00007.png",
                     "Depth/c00001/00007.png", "Flow/c00001/forward/00007.png",
                     "Flow/c00001/backward/00007.png", "Normals/c00001/00007.png",
                     "AmodalAnnotations/c00001/1/00007.png", "AmodalAnnotations/c00001/2/00007.png",
                     "AmodalAnnotations/c00001/3/00007.png"]
    assert fo.video_files(movi, "c00001") == ["Camera/c00001/camera.json"]
    assert fo.folder_counts(movi, 10, 3) == {"JPEGImages": 10, "Annotations": 10, "Depth": 10,
                                             "Flow": 20, "Normals": 10, "AmodalAnnotations": 30,
                                             "Camera": 1}
    assert fo.folder_counts(load_preset("bl30k").render, 10, 3) == {"JPEGImages": 10,
                                                                    "Annotations": 10}


def test_upload_stream_marker_and_completeness_check(tmp_path):
    """Every output folder goes up (streamed per frame, the rest at the end), the marker lists what
    each folder must hold, the completeness check notices a missing file, and a failed video's
    extra outputs are removed with its frames."""
    from farm.io.dataset import youtube_vos_meta
    from scheduler.finalize import check_videos

    settings = load_preset("tiny-movi").render
    staging = tmp_path / "staging"
    truth = fake_video(staging, settings)
    video, manifest = truth["video"], truth["manifest"]
    storage = LocalStorage(tmp_path / "bucket")
    streamer = FrameStreamer(storage, "seg", staging, video)
    streamer.frame_done(1)  # frame 0 of every folder
    sent = streamer.close()
    assert {str(p.relative_to(staging)) for p in sent} == set(fo.frame_files(settings, video, 0, 2))
    result = upload_video(storage, "seg", staging, video, "spec", manifest, streamed=sent)
    want = ({f"seg/{f}" for i in range(3) for f in fo.frame_files(settings, video, i, 2)}
            | {f"seg/Camera/{video}/camera.json"})
    keys = set(storage.list("seg"))
    assert want <= keys and result["streamed"] == len(sent)
    marker = json.loads(storage.get_bytes(f"seg/done/{video}.json"))
    assert marker["outputs"] == ALL and marker["files"]["Flow"] == 6
    assert check_videos(storage, "seg", {video}) == {}
    storage.delete([f"seg/Flow/{video}/backward/00002.png"])
    assert check_videos(storage, "seg", {video}) == {video: "Flow holds 5 files, marker says 6"}
    loaded = fo.load_video_outputs(tmp_path / "bucket" / "seg", video, outputs=["camera"])
    assert loaded["world_to_camera"].shape == (3, 4, 4)
    meta = youtube_vos_meta({video: manifest})
    assert meta["outputs"] == ALL and meta["videos"][video]["outputs"] == ALL
    assert remove_frames(storage, "seg", video) == len(want) - 1
    assert not [k for k in storage.list("seg") if video + "/" in k]


def test_space_estimate_from_a_specs_settings(library):
    """The figures a 4096 x 4096 render reaches (far beyond a compose worker's 8 GiB scratch), and
    the estimate grows with frames, resolution and outputs."""
    movi = replace(generate_spec(library, load_preset("movi-like"), 0, 0, 2021),
                   resolution=(4096, 4096))
    objects = len(movi.objects)
    per_pixel = 1.0 + 0.2 + 4.0 + 16.0 + 3.0 + 0.2 * objects
    assert fo.estimate_space(movi).scratch >= 160 * 4096 * 4096 * per_pixel
    assert fo.estimate_space(movi).scratch / 2**30 > 60
    long = replace(generate_spec(library, load_preset("bl30k"), 0, 0, 2021), frames=500,
                   resolution=(4096, 4096))
    assert 9.3 < fo.estimate_space(long).scratch / 2**30 < 9.6
    assert fo.estimate_space(long).output >= fo.estimate_space(long).scratch
    short = replace(long, frames=250)
    assert fo.estimate_space(short).scratch < fo.estimate_space(long).scratch


@pytest.mark.render
def test_space_estimate_bounds_a_real_render(library, tmp_path):
    """A real render of every output stages no more than the estimate says."""
    from worker.attempts import render_attempts

    preset = load_preset("tiny-movi")
    spec = generate_spec(library, preset, 0, 5, 2021)
    outcome = render_attempts(spec, preset, library.models_root, library.textures_root,
                              tmp_path / "scratch")
    staged = sum(p.stat().st_size for p in outcome.staging.rglob("*") if p.is_file())
    estimate = fo.estimate_space(outcome.spec)
    assert 0 < staged <= estimate.scratch, (staged, estimate)
    assert estimate.scratch < 20 * staged  # an upper bound, not a wild one
