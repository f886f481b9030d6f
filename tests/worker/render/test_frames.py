"""Real (tiny) bpy renders: layout, palette masks, mask geometry, manifest, asset errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.generate.sampling import generate_spec
from farm.io.masks import PALETTE
from farm.model.camera import focal_pixels, look_at_rotation, project
from farm.model.presets import apply_preset, find_preset
from farm.model.spec import BackgroundSpec, CameraSpec, LightSpec, ObjectSpec, VideoSpec, eval_poly
from farm.model.validate import load_spec
from worker.attempts import render_attempts
from worker.cli import write_videos
from worker.process.runner import PermanentRenderError

pytestmark = pytest.mark.render


@pytest.fixture(scope="module")
def rendered(library, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("render")
    specs = [generate_spec(library, tiny, 0, i, 2021) for i in (3, 4)]
    manifests, failed = write_videos(specs, library, out, quiet=True)
    assert not failed
    return out, specs, manifests


def test_davis_layout_and_palette_masks(rendered):
    out, specs, _ = rendered
    for spec in specs:
        jpgs = sorted((out / "JPEGImages" / spec.id).iterdir())
        pngs = sorted((out / "Annotations" / spec.id).iterdir())
        names = [f"{i:05d}" for i in range(spec.frames)]
        assert [p.name for p in jpgs] == [f"{n}.jpg" for n in names]
        assert [p.name for p in pngs] == [f"{n}.png" for n in names]
        for jpg, png in zip(jpgs, pngs, strict=True):
            rgb, mask = Image.open(jpg), Image.open(png)
            assert rgb.format == "JPEG" and rgb.mode == "RGB" and rgb.size == (64, 48)
            assert mask.mode == "P" and mask.size == (64, 48)
            assert mask.getpalette()[:30] == PALETTE[:30]
            assert mask.getpalette()[3:6] == [128, 0, 0]
            ids = np.unique(np.asarray(mask))
            assert set(ids) <= set(range(len(spec.objects) + 1))
        first = np.unique(np.asarray(Image.open(pngs[0])))
        assert set(range(1, len(spec.objects) + 1)) <= set(first)  # every object in frame 0
        assert (out / "done" / f"{spec.id}.json").is_file()


def test_manifest_matches_masks(rendered):
    out, specs, manifests = rendered
    for spec, manifest in zip(specs, manifests, strict=True):
        saved = json.loads((out / "manifests" / f"{spec.id}.json").read_text())
        assert saved == json.loads(json.dumps(manifest))
        assert saved["spec_digest"] == load_spec(out / "specs" / f"{spec.id}.yaml").digest()
        assert saved["blender_version"].startswith("5.0")
        assert saved["device"] == "CPU"
        assert saved["render_settings"]["samples"] == 1
        assert len(saved["timings"]["render_s"]) == spec.frames
        for frame in saved["frames"]:
            ids = np.asarray(Image.open(out / "Annotations" / spec.id / f"{frame['frame']:05d}.png"))
            for k, obj in enumerate(frame["objects"], start=1):
                assert obj["pixels"] == int((ids == k).sum())
                if obj["pixels"]:
                    ys, xs = np.nonzero(ids == k)
                    assert obj["bbox"] == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_loads_with_a_davis_style_loader(rendered):
    """The way DAVIS/BL30K training code reads a video: sorted frames, P-mode masks."""
    out, specs, _ = rendered
    video = specs[0].id
    frames = sorted((out / "JPEGImages" / video).glob("*.jpg"))
    masks = [np.array(Image.open(out / "Annotations" / video / f.name.replace(".jpg", ".png")))
             for f in frames]
    images = [np.array(Image.open(f).convert("RGB")) for f in frames]
    assert len(images) == len(masks) == specs[0].frames
    num_objects = max(int(m.max()) for m in masks)
    assert num_objects == len(specs[0].objects)


def test_mask_agrees_with_projected_geometry(sphere_models, pack, tiny, tmp_path):
    """Spheres: mask centroid and area match the pinhole projection of farm.model.camera."""
    radius = 0.5 / np.sqrt(3)  # unit-diagonal bounding box of a sphere
    centers = [[-0.8, 2.0, 0.3], [0.9, 0.5, -0.4]]
    scales = [2.0, 1.5]
    objs = [ObjectSpec(model="00000001/ball", synset="00000001", category="ball",
                       location_poly=[c, [0.0, 0.0, 0.0]], rotation_poly=[[0.0, 0.0, 0.0]],
                       scale_poly=[[s, s, s]], radius=radius)
            for c, s in zip(centers, scales, strict=True)]
    cam_loc, look = [0.2, -5.5, 0.1], [0.0, 3.5, -0.2]
    spec = VideoSpec(
        id="spheres", segment=0, index=0, seed=0, frames=2, resolution=[160, 120],
        camera=CameraSpec(fov=0.75, location_poly=[cam_loc], look_at_poly=[look]),
        objects=objs,
        lights=[LightSpec(energy=5000.0, color=[1.0, 1.0, 1.0], location_poly=[[0, -8, 6]],
                          rotation_poly=[[0, 0, 0]])],
        background=BackgroundSpec(image="skybox/wood/0.jpg", strength=0.5),
        render=tiny.render, source="imported", preset="tiny")
    outcome = render_attempts(spec, find_preset(spec.preset), sphere_models, pack.textures, tmp_path)
    assert "render device: CPU" in (outcome.staging / "render.log").read_text()  # choice logged
    ids = np.asarray(Image.open(outcome.staging / "Annotations/spheres/00000.png"))
    rot = look_at_rotation(np.array(cam_loc), np.array(look))
    f = focal_pixels(0.75, 160, 120)
    for k, (c, s) in enumerate(zip(centers, scales, strict=True), start=1):
        col, row, depth = project(np.array(c), np.array(cam_loc), rot, 0.75, 160, 120)
        ys, xs = np.nonzero(ids == k)
        # pixel (x, y) covers [x, x+1): its centre is x + 0.5
        assert xs.mean() + 0.5 == pytest.approx(col, abs=1.0)
        assert ys.mean() + 0.5 == pytest.approx(row, abs=1.0)
        expected_area = np.pi * (f * radius * s / depth) ** 2
        assert len(xs) == pytest.approx(expected_area, rel=0.12)


def test_camera_math_matches_blender(library, tiny):
    """farm.model.camera's look-at rotation (the gate, the report and the camera output use it)
    is the rotation of the camera Blender renders with, frame by frame."""
    from worker.render.scene import build_scene

    for index in range(5):
        spec = generate_spec(library, tiny, 0, index, 2021)
        scene = build_scene(spec, library.models_root, library.textures_root)
        t = spec.frame_times()
        loc = eval_poly(spec.camera.location_poly, t)
        target = eval_poly(spec.camera.look_at_poly, t)
        for frame in range(spec.frames):
            scene.frame_set(frame)
            blender = np.array(scene.camera.matrix_world.to_3x3())
            np.testing.assert_allclose(look_at_rotation(loc[frame], target[frame]), blender,
                                       atol=1e-5)


def _spec_with_model(library, tiny, **changes):
    spec = generate_spec(library, tiny, 0, 5, 2021)
    return replace(spec, objects=[replace(spec.objects[0], **changes), *spec.objects[1:]])


def test_missing_model_is_a_clear_permanent_error(library, tiny, tmp_path):
    spec = _spec_with_model(library, tiny, model="02691156/missing")
    with pytest.raises(PermanentRenderError, match="02691156/missing.*not found"):
        render_attempts(spec, find_preset(spec.preset), library.models_root, library.textures_root, tmp_path)


def test_broken_obj_is_a_clear_permanent_error(library, pack, tiny, tmp_path):
    bad = pack.models / "02691156" / "broken"
    (bad / "models").mkdir(parents=True)
    (bad / "models" / "model_normalized.obj").write_bytes(b"\x00\xffnot an obj\nf 1 2 x\n")
    try:
        spec = _spec_with_model(library, tiny, model="02691156/broken")
        with pytest.raises(PermanentRenderError, match="02691156/broken.*no faces"):
            render_attempts(spec, find_preset(spec.preset),
                            library.models_root, library.textures_root, tmp_path)
    finally:
        import shutil

        shutil.rmtree(bad)


def test_unreadable_texture_is_a_clear_permanent_error(library, pack, tiny, tmp_path):
    bad = pack.textures / "texture" / "wood" / "corrupt.jpg"
    bad.write_bytes(b"this is not a jpeg")
    try:
        spec = _spec_with_model(library, tiny, texture="texture/wood/corrupt.jpg")
        with pytest.raises(PermanentRenderError, match="cannot read image .*corrupt.jpg"):
            render_attempts(spec, find_preset(spec.preset),
                            library.models_root, library.textures_root, tmp_path)
    finally:
        bad.unlink()


def test_cli_render_reports_errors_without_traceback(library, pack, tiny, tmp_path):
    spec = _spec_with_model(library, tiny, model="02691156/missing")
    path = tmp_path / "bad.yaml"
    path.write_text(spec.to_yaml())
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "-q", "render", "--spec", str(path), "--out",
         str(tmp_path / "out"), "--models", str(pack.models), "--textures", str(pack.textures)],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "02691156/missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    path.write_text("id: [broken")
    proc = subprocess.run([sys.executable, "-m", "worker", "render", "--spec", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_preset_override_on_render(library, tiny, bl30k):
    spec = generate_spec(library, bl30k, 0, 1, 2021)
    small = apply_preset(spec, tiny)
    assert small.frames == 3 and small.resolution == [64, 48] and small.render == tiny.render
    assert small.objects == spec.objects


def test_scratch_is_cleaned(rendered):
    out, _, _ = rendered
    assert not (out / ".scratch").exists()
    assert not list(Path(out).rglob("*.tmp"))
