"""What the extra outputs mean, on real (small) bpy renders of spheres with known geometry.

Scene: sphere 1 static at (0, 2, 0); sphere 2 in front of it, moving by (0.5, 0, 0.25) per frame
and partly hiding sphere 1; the camera moves too. The truth comes from the spec's polynomials and
the pinhole math of farm.model.camera (checked against Blender in tests/worker/render/test_frames.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from farm.io import outputs as fo
from farm.model.camera import look_at_rotation
from farm.model.presets import find_preset, load_preset
from farm.model.spec import OUTPUTS, BackgroundSpec, CameraSpec, LightSpec, ObjectSpec, VideoSpec, eval_poly
from worker.attempts import render_attempts

pytestmark = pytest.mark.render

W, H, FOV, FRAMES = 160, 120, 0.75, 3
RADIUS = 0.5 / np.sqrt(3) * 2.0  # unit-diagonal sphere, scale 2
CENTRES = [[[0.0, 2.0, 0.0]], [[-0.6, 0.0, 0.2], [1.0, 0.0, 0.5]]]  # polys: static, moving
CAMERA = [[0.2, -5.5, 0.1], [0.3, 0.0, 0.2]]
LOOK_AT = [[0.0, 3.5, -0.2]]
PLANE_Y = 12.0  # the background plane (BackgroundSpec default location), facing -y


def sphere_spec(render) -> VideoSpec:
    objs = [ObjectSpec(model="00000001/ball", synset="00000001", category="ball",
                       location_poly=c, rotation_poly=[[0.0, 0.0, 0.0]],
                       scale_poly=[[2.0, 2.0, 2.0]], radius=0.5 / np.sqrt(3)) for c in CENTRES]
    return VideoSpec(
        id="spheres", segment=0, index=0, seed=0, frames=FRAMES, resolution=[W, H],
        camera=CameraSpec(fov=FOV, location_poly=CAMERA, look_at_poly=LOOK_AT), objects=objs,
        lights=[LightSpec(energy=5000.0, color=[1.0, 1.0, 1.0], location_poly=[[0, -8, 6]],
                          rotation_poly=[[0, 0, 0]])],
        background=BackgroundSpec(image="skybox/wood/0.jpg", strength=0.5), render=render,
        source="imported", preset="tiny-movi")


def render_and_load(spec, models, pack, tmp_path):
    outcome = render_attempts(spec, find_preset(spec.preset), models, pack.textures, tmp_path)
    root = outcome.staging
    (root / "manifests").mkdir()
    (root / "manifests" / f"{spec.id}.json").write_text(json.dumps(outcome.manifest))
    return outcome.manifest, fo.load_video_outputs(root, spec.id)


@pytest.fixture(scope="module")
def rendered(sphere_models, pack, tmp_path_factory):
    spec = sphere_spec(load_preset("tiny-movi").render)
    return render_and_load(spec, sphere_models, pack, tmp_path_factory.mktemp("movi"))


class Truth:
    """Camera and sphere geometry per frame from the spec, in OpenCV camera conventions."""

    def __init__(self) -> None:
        t = np.linspace(0, 1, FRAMES)
        self.cam = eval_poly(CAMERA, t)
        self.rot = look_at_rotation(self.cam, eval_poly(LOOK_AT, t))  # world-from-camera (Blender)
        self.centres = [eval_poly(c, t) for c in CENTRES]
        self.K = fo.intrinsics(FOV, W, H)
        self.w2c = []
        for i in range(FRAMES):
            c2w = np.eye(4)
            c2w[:3, :3], c2w[:3, 3] = self.rot[i], self.cam[i]
            self.w2c.append(fo.world_to_camera(c2w))

    def project(self, points, i):
        return fo.project_points(np.asarray(points), self.K, self.w2c[i])

    def ray(self, u, v, i):
        """Direction of the ray through pixel (u, v), in the world and in the camera frame,
        scaled to unit z-depth (camera-frame z = 1)."""
        d = np.linalg.solve(self.K, [u, v, 1.0])
        return self.w2c[i][:3, :3].T @ d, d

    def front_point(self, k, i):
        """The point of sphere k seen at its projected centre: nearest along the centre ray."""
        c = self.centres[k][i]
        u = (c - self.cam[i]) / np.linalg.norm(c - self.cam[i])
        return c - RADIUS * u

    @staticmethod
    def pixel(uv):
        return int(round(uv[1])), int(round(uv[0]))  # (row, col)


TRUTH = Truth()


def test_depth_is_metres_along_the_viewing_axis(rendered):
    _, out = rendered
    for i in range(FRAMES):
        # sphere 2's nearest point, seen at its centre pixel
        uv, _ = TRUTH.project(TRUTH.centres[1][i], i)
        _, z_front = TRUTH.project(TRUTH.front_point(1, i), i)
        assert out["depth"][i][TRUTH.pixel(uv)] == pytest.approx(z_front, rel=0.004)
        # the background plane in the image corners: z-depth, not the distance along the ray
        # (which is 6-11 % longer there)
        for u, v in ((0, 0), (W - 1, 0), (0, H - 1), (W - 1, H - 1)):
            world_dir, cam_dir = TRUTH.ray(u, v, i)
            z = (PLANE_Y - TRUTH.cam[i][1]) / world_dir[1]  # the plane point's z-depth
            assert out["depth"][i][v, u] == pytest.approx(z, rel=0.003)
            distance = z * np.linalg.norm(cam_dir)
            assert distance > 1.05 * z  # the distance along the ray would fail the check above


def _expected_flow(points_t, i, j, moved):
    """Pixel displacement of world points seen in frame i when they move by ``moved`` to frame j."""
    uv_i, _ = TRUTH.project(points_t, i)
    uv_j, _ = TRUTH.project(np.asarray(points_t) + moved, j)
    return uv_j - uv_i


def test_flow_of_a_moving_sphere_is_its_projected_displacement(rendered):
    manifest, out = rendered
    for i in range(FRAMES):
        uv, _ = TRUTH.project(TRUTH.centres[1][i], i)
        row, col = TRUTH.pixel(uv)
        assert out["masks"][i][row, col] == 2
        front = TRUTH.front_point(1, i)
        if i + 1 < FRAMES:
            want = _expected_flow(front, i, i + 1, TRUTH.centres[1][i + 1] - TRUTH.centres[1][i])
            got = out["forward_flow"][i][row, col]
            assert want[0] > 10 and want[1] < -5  # moves right and up in the image
            np.testing.assert_allclose(got, want, atol=0.25)
        if i > 0:
            want = _expected_flow(front, i, i - 1, TRUTH.centres[1][i - 1] - TRUTH.centres[1][i])
            np.testing.assert_allclose(out["backward_flow"][i][row, col], want, atol=0.25)
    # a static surface moves in the image only with the camera: the background's corners
    for i in range(FRAMES - 1):
        for u, v in ((0, 0), (W - 1, H - 1)):
            world_dir, _ = TRUTH.ray(u, v, i)
            point = TRUTH.cam[i] + world_dir * (PLANE_Y - TRUTH.cam[i][1]) / world_dir[1]
            want = _expected_flow(point, i, i + 1, 0.0)
            np.testing.assert_allclose(out["forward_flow"][i][v, u], want, atol=0.25)
    assert np.isnan(out["forward_flow"][-1]).all() and np.isnan(out["backward_flow"][0]).all()
    assert not np.isnan(out["forward_flow"][:-1]).any()
    assert manifest["frames"][0]["flow_backward_range_px"] is None


def test_normals_face_the_camera_in_the_camera_frame(rendered):
    _, out = rendered
    n = out["normals"]
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=0.02)
    for i in range(FRAMES):
        c = TRUTH.centres[1][i]
        uv, _ = TRUTH.project(c, i)
        r_px = TRUTH.K[0, 0] * RADIUS / TRUTH.project(c, i)[1]
        for du, dv in ((0, 0), (0.6, 0), (-0.6, 0), (0, 0.6), (0, -0.6)):
            u, v = uv[0] + du * r_px, uv[1] + dv * r_px
            row, col = TRUTH.pixel((u, v))
            world_dir, _ = TRUTH.ray(col, row, i)
            world_dir = world_dir / np.linalg.norm(world_dir)
            # ray-sphere intersection -> the true outward normal, in the camera frame
            oc = TRUTH.cam[i] - c
            b = world_dir @ oc
            s = -b - np.sqrt(b * b - (oc @ oc - RADIUS ** 2))
            normal_world = (TRUTH.cam[i] + s * world_dir - c) / RADIUS
            want = TRUTH.w2c[i][:3, :3] @ normal_world
            assert n[i][row, col] @ want > 0.99
            if (du, dv) == (0, 0):
                assert n[i][row, col][2] < -0.98  # facing the camera: -z in OpenCV axes
            if du > 0:
                assert n[i][row, col][0] > 0.4  # right half of the sphere leans right
            if dv > 0:
                assert n[i][row, col][1] > 0.4  # lower half leans down (+y)
        plane = TRUTH.w2c[i][:3, :3] @ np.array([0.0, -1.0, 0.0])
        assert n[i][0, 0] @ plane > 0.99 and n[i][H - 1, W - 1] @ plane > 0.99


def test_camera_projects_the_sphere_centres_onto_their_masks(rendered):
    manifest, out = rendered
    np.testing.assert_allclose(out["K"], TRUTH.K, rtol=1e-6)
    np.testing.assert_allclose(manifest["camera"]["K"], out["K"])
    for i in range(FRAMES):
        # Blender's camera matrix (what was rendered) equals the spec's look-at
        np.testing.assert_allclose(out["world_to_camera"][i], TRUTH.w2c[i], atol=1e-5)
        uv, z = fo.project_points(TRUTH.centres[1][i], out["K"], out["world_to_camera"][i])
        ys, xs = np.nonzero(out["masks"][i] == 2)  # sphere 2 is never hidden
        assert xs.mean() == pytest.approx(uv[0], abs=0.7)
        assert ys.mean() == pytest.approx(uv[1], abs=0.7)
        assert z > 0


def test_amodal_masks_cover_the_hidden_part(rendered):
    manifest, out = rendered
    hidden = 0
    for i in range(FRAMES):
        objects = manifest["frames"][i]["objects"]
        for k in (1, 2):
            visible, amodal = out["masks"][i] == k, out["amodal"][i, k - 1]
            assert not (visible & ~amodal).any()  # the visible mask is inside the amodal one
            assert objects[k - 1]["amodal_pixels"] == amodal.sum()
            assert objects[k - 1]["visible_fraction"] == pytest.approx(visible.sum() / amodal.sum(),
                                                                       abs=1e-6)
            assert out["visible_fraction"][i, k - 1] == pytest.approx(
                objects[k - 1]["visible_fraction"])
            c = TRUTH.centres[k - 1][i]
            uv, z = TRUTH.project(c, i)
            ys, xs = np.nonzero(amodal)  # the whole disc, where the centre projects
            assert xs.mean() == pytest.approx(uv[0], abs=0.7)
            assert ys.mean() == pytest.approx(uv[1], abs=0.7)
            assert amodal.sum() == pytest.approx(np.pi * (TRUTH.K[0, 0] * RADIUS / z) ** 2,
                                                 rel=0.12)
        # sphere 1 is behind sphere 2: partly hidden; sphere 2 is whole
        assert out["amodal"][i, 0].sum() > (out["masks"][i] == 1).sum()
        hidden += objects[0]["visible_fraction"] < 0.9
        assert objects[1]["visible_fraction"] == 1.0
        assert objects[0]["amodal_bbox"] != objects[0]["bbox"] or objects[0]["visible_fraction"] > 0.9
    assert hidden >= 2


def test_exr_depth_and_flo_flow_hold_the_same_values(rendered, sphere_models, pack, tmp_path):
    _, png = rendered
    settings = replace(load_preset("tiny-movi").render, outputs=("rgb", "masks", "depth", "flow"),
                       depth_format="exr", flow_format="flo")
    manifest, raw = render_and_load(sphere_spec(settings), sphere_models, pack, tmp_path)
    assert manifest["output_formats"]["depth"]["format"] == "exr"
    assert (tmp_path / "spheres.staging/Depth/spheres/00000.exr").is_file()
    assert (tmp_path / "spheres.staging/Flow/spheres/forward/00000.flo").is_file()
    assert not (tmp_path / "spheres.staging/Normals").exists()
    finite = np.isfinite(png["depth"])
    assert np.array_equal(finite, np.isfinite(raw["depth"]))
    assert np.abs(png["depth"][finite] - raw["depth"][finite]).max() <= 0.0005 + 1e-5
    for direction in ("forward", "backward"):
        a, b = png[f"{direction}_flow"], raw[f"{direction}_flow"]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) < 0.01


def test_movi_like_video_renders_locally_with_every_output(library, tmp_path):
    """``farm render --preset tiny-movi`` (the movi-like outputs at test size) on a generated
    spec: every folder complete, the loader reads it back, the outputs agree with each other."""
    from farm.generate.sampling import generate_spec

    spec = generate_spec(library, load_preset("tiny"), 0, 3, 2021)
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "-q", "render", "--spec", str(path), "--preset",
         "tiny-movi", "--out", str(out), "--models", str(library.models_root), "--textures",
         str(library.textures_root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    settings = load_preset("tiny-movi").render
    k = len(spec.objects)
    want = {f for i in range(3) for f in fo.frame_files(settings, spec.id, i, k)}
    want |= set(fo.video_files(settings, spec.id))
    have = {str(p.relative_to(out)) for folder in fo.FOLDERS.values()
            for p in (out / folder).rglob("*") if p.is_file()}
    assert have == want
    got = fo.load_video_outputs(out, spec.id)
    assert got["outputs"] == list(OUTPUTS)
    masks, amodal = got["masks"], got["amodal"]
    for j in range(k):
        assert not ((masks == j + 1) & ~amodal[:, j]).any()
    assert np.isfinite(got["depth"]).all()  # the background plane is behind everything
    assert np.all(got["depth"][masks > 0].max() < got["depth"][masks == 0].max())
    assert Image.open(out / "AmodalAnnotations" / spec.id / "1" / "00000.png").mode == "P"
    depth_png = Image.open(out / "Depth" / spec.id / "00000.png")
    assert depth_png.mode in ("I;16", "I") and depth_png.size == (64, 48)
    assert got["world_to_camera"].shape == (3, 4, 4)


def test_every_output_kind_has_its_blender_side():
    """A kind's raw data comes from the render loop itself (RGB, masks) or from its one entry in
    worker.render.outputs.BLENDER, which reads a pass for every kind that writes per frame."""
    from farm.io.output_kinds import KINDS
    from worker.render.outputs import BLENDER, RENDER_LOOP

    assert set(BLENDER) | set(RENDER_LOOP) == set(KINDS) and not set(BLENDER) & set(RENDER_LOOP)
    for name in BLENDER:
        assert (BLENDER[name].take is None) == (KINDS[name].write is None), name
