"""The quality gate (farm/model/gate.py): geometric and mask checks, and the attempts generation
resamples through."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from farm.generate.sampling import generate_spec
from farm.model.gate import geometric_gate, mask_gate
from farm.model.presets import QualityGate

GATE = QualityGate(min_first_frame_pixels_fraction=0.001, min_visible_frames_fraction=0.5,
                   max_attempts=3)


def _moved(spec, k, location_poly):
    objects = list(spec.objects)
    objects[k] = replace(objects[k], location_poly=location_poly)
    return replace(spec, objects=objects)


def test_geometric_gate_rejects_hidden_and_out_of_view_objects(library, bl30k):
    spec = generate_spec(library, bl30k, 0, 0, 2021)
    assert geometric_gate(spec, GATE) is None
    behind = _moved(spec, 1, [[0.0, -9.0, 0.0]])  # behind the camera (y ~ -5.5)
    assert geometric_gate(behind, GATE) == "object 2 is out of view in frame 0"
    far_left = _moved(spec, 0, [[-40.0, 3.0, 0.0]])
    assert "object 1 is out of view" in geometric_gate(far_left, GATE)
    # object 1 leaves the view at t = 0.2 and stays out
    leaves = _moved(spec, 0, [[0.0, 3.0, 0.0], [200.0, 0.0, 0.0]])
    assert "object 1 is in view in only" in geometric_gate(leaves, GATE)
    cam = np.asarray(spec.camera.location_poly[0])
    look = np.asarray(spec.camera.look_at_poly[0])
    direction = (look - cam) / np.linalg.norm(look - cam)
    # a big object right in front of the camera, and object 2 far behind it on the same ray
    big = replace(spec.objects[0], location_poly=[(cam + 2.0 * direction).tolist()],
                  scale_poly=[[3.0, 3.0, 3.0]])
    small = replace(spec.objects[1], location_poly=[(cam + 8.0 * direction).tolist()],
                    scale_poly=[[0.5, 0.5, 0.5]])
    hidden = replace(spec, objects=[big, small, *spec.objects[2:]], frames=1)
    assert geometric_gate(hidden, GATE) == "object 2 is hidden behind object 1 in frame 0"


def test_generation_resamples_until_the_gate_passes(library, bl30k):
    specs = [generate_spec(library, bl30k, 1, i, 77) for i in range(400)]
    resampled = [s for s in specs if s.attempt > 0]
    assert resampled, "expected some geometric rejections in 400 specs"
    for s in resampled:
        record = s.generation["gate"]
        assert record["passed"] and len(record["rejected"]) == s.attempt
        assert [r["attempt"] for r in record["rejected"]] == list(range(s.attempt))
        assert geometric_gate(s, bl30k.quality_gate) is None


def test_mask_gate():
    counts = np.array([[500, 900, 20], [400, 0, 30]])
    assert mask_gate(counts, GATE, 768, 512) == "object 3 has 20 pixels in frame 0 (minimum 393)"
    counts[0, 2] = 393
    assert mask_gate(counts, GATE, 768, 512) is None
    counts = np.array([[500, 900], [400, 0], [300, 0]])
    assert mask_gate(counts, GATE, 768, 512) == "object 2 is visible in only 33% of frames"


def test_attempt_budget_continues_after_a_failed_run(library, tiny):
    spec = generate_spec(library, tiny, 0, 7, 5, first_attempt=3)
    record = spec.generation["gate"]
    assert spec.attempt >= 3 and record["first_attempt"] == 3
    assert record["last_attempt"] == 3 + tiny.quality_gate.max_attempts - 1


def test_object_discs_are_the_straightforward_formula_bit_for_bit(library, bl30k, tiny):
    """object_discs evaluates all polys in one matmul and look_at_rotation writes out np.cross
    and np.linalg.norm; gate decisions (and so spec files) depend on their exact floats."""
    from farm.generate.sampling import sample_spec
    from farm.model.camera import WORLD_UP, focal_pixels, look_at_rotation, project
    from farm.model.gate import MAX_CHECKED_FRAMES, NEAR, object_discs
    from farm.model.spec import eval_poly

    def rotation(location, target):
        forward = np.asarray(target, float) - np.asarray(location, float)
        forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
        x = np.cross(forward, WORLD_UP)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        return np.stack([x, np.cross(x, forward), -forward], axis=-1)

    def reference(spec):
        t = spec.frame_times()
        if len(t) > MAX_CHECKED_FRAMES:
            t = t[np.linspace(0, len(t) - 1, MAX_CHECKED_FRAMES).round().astype(int)]
        width, height = spec.resolution
        cam_loc = eval_poly(spec.camera.location_poly, t)
        rot = rotation(cam_loc, eval_poly(spec.camera.look_at_poly, t))
        centers = np.stack([eval_poly(o.location_poly, t) for o in spec.objects])
        scales = np.stack([np.abs(eval_poly(o.scale_poly, t)).max(axis=-1) for o in spec.objects])
        radius = scales * np.array([o.radius for o in spec.objects])[:, None]
        col, row, depth = project(centers, cam_loc, rot, spec.camera.fov, width, height)
        rad_px = focal_pixels(spec.camera.fov, width, height) * radius / np.maximum(depth, NEAR)
        return col, row, rad_px, depth

    for preset in (bl30k, tiny):
        for index in range(40):
            spec = sample_spec(library, preset, 5, index, 2021, index % 3)
            for got, want in zip(object_discs(spec), reference(spec), strict=True):
                assert got.tobytes() == want.tobytes()
    rng = np.random.default_rng(2)
    for shape in [(3,), (64, 3), (2, 16, 3)]:
        loc, target = rng.normal(0, 5, shape), rng.normal(0, 5, shape)
        assert look_at_rotation(loc, target).tobytes() == rotation(loc, target).tobytes()
