"""Spec generation: determinism, the reference distributions, de-intersection, asset walks."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import numpy as np
import pytest

from farm.generate.deintersect import min_path_distances
from farm.generate.sampling import SLOTS_PER_VIDEO, generate_spec, video_id
from farm.model.spec import eval_poly


@pytest.fixture(scope="module")
def specs(library, bl30k):
    return [generate_spec(library, bl30k, 3, i, 11) for i in range(300)]


def test_same_inputs_give_byte_identical_spec_in_any_order(library, bl30k):
    forward = {i: generate_spec(library, bl30k, 2, i, 5).to_yaml() for i in range(20)}
    backward = {i: generate_spec(library, bl30k, 2, i, 5).to_yaml() for i in reversed(range(20))}
    assert forward == backward
    alone = generate_spec(library, bl30k, 2, 13, 5).to_yaml()
    assert alone == forward[13]
    assert generate_spec(library, bl30k, 2, 13, 6).to_yaml() != alone


def test_spec_is_identical_in_another_process(pack, library, bl30k):
    code = (
        "import sys; from farm.assets.library import AssetLibrary;"
        "from farm.model.presets import load_preset;"
        "from farm.generate.sampling import generate_spec;"
        f"lib = AssetLibrary.open({str(pack.models)!r}, {str(pack.textures)!r});"
        "sys.stdout.write(generate_spec(lib, load_preset('bl30k'), 2, 41, 5).to_yaml())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout == generate_spec(library, bl30k, 2, 41, 5).to_yaml()


def test_parallel_generation_matches_serial(library, bl30k):
    from farm.generate.specgen import generate_many

    indices = list(range(250))
    parallel = [s for chunk in generate_many(library, bl30k, 4, indices, 9, workers=2, chunk=50)
                for s in chunk]
    assert [s.id for s in parallel] == [video_id(4, i) for i in indices]
    for i in (0, 77, 249):
        assert parallel[i] == generate_spec(library, bl30k, 4, i, 9)


def test_reference_distributions(specs):
    counts = collections.Counter(len(s.objects) for s in specs)
    assert set(counts) == {3, 4, 5}
    assert set(collections.Counter(len(s.lights) for s in specs)) == {1, 2, 3}
    fovs = np.array([s.camera.fov for s in specs])
    assert fovs.min() >= 0.7 and fovs.max() <= 0.8
    for s in specs:
        assert s.frames == 160 and s.resolution == [768, 512]
        cam0 = np.asarray(s.camera.location_poly[0])
        assert -0.3 <= cam0[0] <= 0.3 and -6 <= cam0[1] <= -5 and -0.3 <= cam0[2] <= 0.3
        look0 = np.asarray(s.camera.look_at_poly[0])
        assert -0.5 <= look0[0] <= 0.5 and 3 <= look0[1] <= 4
        for light in s.lights:
            assert 1000 <= light.energy <= 15000 and max(light.color) == 1.0
            assert min(light.color) >= 0.5 / 1.0 - 1e-9
            assert np.linalg.norm(light.location_poly[0]) == pytest.approx(11.0)
        assert 0.1 <= s.background.strength <= 1.0
        for o in s.objects:
            start = np.asarray(o.location_poly[0])  # poly value at t=0 is the first control point
            widen = (start[1] + 6) / 4
            assert -2 <= start[1] <= 5 and abs(start[0]) <= 1.05 * widen + 1e-9
            scale0 = np.asarray(o.scale_poly[0])
            assert np.all((scale0 >= 1.25) & (scale0 <= 3.0))
            rot0 = np.asarray(o.rotation_poly[0])
            assert np.all((rot0 >= 0) & (rot0 < 2 * np.pi))


def test_static_spans_and_step_limits(specs):
    t = np.arange(5) / 4
    static_first = moving = 0
    for s in specs:
        for o in s.objects:
            pts = eval_poly(o.location_poly, t)
            steps = np.abs(np.diff(pts, axis=0))
            static_first += np.allclose(steps[0], 0, atol=1e-9)
            moving += not np.allclose(steps, 0, atol=1e-9)
            scales = eval_poly(o.scale_poly, t)
            ratio = scales[1:] / scales[:-1]
            assert np.all(ratio >= 0.8 ** 0.25 - 1e-9) and np.all(ratio <= 1.25 ** 0.25 + 1e-9)
    total = sum(len(s.objects) for s in specs)
    # first segment static with p=0.10: expect ~10%
    assert 0.04 < static_first / total < 0.18
    assert moving > 0.8 * total


def test_texture_replacement_probabilities(specs, library):
    mapped = {m.id: m.mapped for m in library.models}
    replaced = collections.defaultdict(list)
    for s in specs:
        for o in s.objects:
            replaced[mapped[o.model]].append(o.texture is not None)
    assert all(replaced[False])  # unmapped models are always retextured
    assert 0.4 < np.mean(replaced[True]) < 0.6
    assert all(o.texture.startswith("texture/") for s in specs for o in s.objects if o.texture)
    assert all(s.background.image.startswith("skybox/") for s in specs)


def test_asset_lists_are_walked_as_permutations(library, bl30k):
    n = len(library.models)
    # The first len(models) slots of the stream are one permutation: each model exactly once.
    per_video = [generate_spec(library, bl30k, 0, i, 3) for i in range(n // SLOTS_PER_VIDEO + 1)]
    slot_models = {}
    for i, s in enumerate(per_video):
        for j, o in enumerate(s.objects):
            slot_models[i * SLOTS_PER_VIDEO + j] = o.model
    first = [m for slot, m in slot_models.items() if slot < n]
    assert len(first) == len(set(first))
    backgrounds = [generate_spec(library, bl30k, 0, i, 3).background.image
                   for i in range(len(library.skyboxes))]
    assert sorted(backgrounds) == sorted(library.skyboxes)


def test_deintersection_records_true_minimum_distances(specs):
    t = np.linspace(0, 1, 20001)
    satisfied = 0
    for s in specs[:60]:
        record = s.generation["deintersection"]
        k = len(s.objects)
        assert len(record["pairs"]) == k * (k - 1) // 2
        for a, b, d in record["pairs"]:
            brute = np.linalg.norm(eval_poly(s.objects[a].location_poly, t)
                                   - eval_poly(s.objects[b].location_poly, t), axis=1).min()
            assert d == pytest.approx(brute, abs=1e-5)
        satisfied += record["satisfied"]
        if record["satisfied"]:
            assert min(d for _, _, d in record["pairs"]) >= 0.75
    assert satisfied >= 50


def test_min_path_distance_against_brute_force():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 100001)[:, None] ** np.arange(5)
    for _ in range(50):
        a = rng.normal(0, 3, (5, 3))
        others = [rng.normal(0, 3, (5, 3)) for _ in range(4)]
        got = min_path_distances(a, others)
        want = [np.linalg.norm(t @ (o - a), axis=1).min() for o in others]
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_min_path_distance_is_the_straightforward_formula_bit_for_bit():
    """min_path_distances is written for speed; spec files depend on its exact floats, so it
    must give the same bits as the plain formula (np.square(...).sum(-1), fancy indexing)."""
    from farm.generate.deintersect import GRID, GRID_POWERS

    def reference(path, others):
        terms = max(len(path), *(len(o) for o in others))
        diff = np.zeros((len(others), terms, 3))
        for k, other in enumerate(others):
            diff[k, : len(other)] += other
        diff[:, : len(path)] -= path
        sq = np.square(GRID_POWERS[:, :terms] @ diff).sum(-1)
        rows = np.arange(len(others))
        best = np.clip(np.argmin(sq, axis=1), 1, GRID.size - 2)
        left, mid, right = sq[rows, best - 1], sq[rows, best], sq[rows, best + 1]
        curvature = left - 2 * mid + right
        shift = np.where(curvature > 0,
                         0.5 * (left - right) / np.where(curvature > 0, curvature, 1), 0)
        t = np.clip(GRID[best] + np.clip(shift, -1, 1) * (GRID[1] - GRID[0]), 0.0, 1.0)
        refined = np.square(np.einsum("kt,ktc->kc", t[:, None] ** np.arange(terms), diff)).sum(-1)
        return np.sqrt(np.minimum(refined, sq.min(axis=1)))

    rng = np.random.default_rng(3)
    for trial in range(3000):
        scale = 10.0 ** rng.integers(-2, 3)
        a = rng.normal(0, scale, (int(rng.integers(1, 10)) if trial % 5 == 0 else 5, 3))
        others = [rng.normal(0, scale, (int(rng.integers(1, 10)) if trial % 7 == 0 else 5, 3))
                  for _ in range(int(rng.integers(1, 9)))]
        if trial % 3 == 0:  # near misses: the minimum inside the grid, refined
            others = [a + rng.normal(0, 1e-2, a.shape) if o.shape == a.shape else o
                      for o in others]
        got, want = min_path_distances(a, others), reference(a, others)
        assert got.tobytes() == want.tobytes()


def test_object_path_is_the_generic_walk_bit_for_bit():
    """sample_object_path writes _walk out for speed: the same draws and floats as the generic
    walk over _frustum_point / _step_towards / Draws.u / Draws.n."""

    from farm.generate.sampling import (
        DEGREE,
        Draws,
        SamplingParams,
        _frustum_point,
        _poly,
        _step_towards,
        _walk,
        sample_object_path,
    )

    def reference(rng, p):
        d = Draws(rng, 48, 24)
        tsl = p.obj_tsl_per_frame * p.n_frames / DEGREE
        rot = p.obj_rot_per_frame * p.n_frames / DEGREE
        lo, hi = (c ** (1 / DEGREE) for c in p.scale_change)
        one_sided = p.step_clamp == "one-sided"
        loc, angles, scale = _walk(
            d,
            [_frustum_point(d, p), [d.u(0, 2 * np.pi) for _ in range(3)],
             [d.u(*p.obj_scale) for _ in range(3)]],
            [lambda d, cur: _step_towards(cur, _frustum_point(d, p),
                                          [d.n(tsl) for _ in range(3)], one_sided),
             lambda d, cur: [c + d.n(rot) for c in cur],
             lambda d, cur: [c * d.u(lo, hi) for c in cur]],
            p,
        )
        return _poly(loc), _poly(angles), _poly(scale)

    for clamp in ("one-sided", "symmetric"):
        for p in (SamplingParams(step_clamp=clamp),
                  SamplingParams(step_clamp=clamp, enter_static_prob=0.5, obj_into=(-1.0, 7.0))):
            for seed in range(300):
                got = sample_object_path(np.random.default_rng(seed), p)
                want = reference(np.random.default_rng(seed), p)
                assert np.array(got).tobytes() == np.array(want).tobytes()


def test_video_ids():
    assert video_id(0, 42) == "a00042"
    assert video_id(2, 4999) == "c04999"
    assert video_id(30, 7) == "s030_000007"
