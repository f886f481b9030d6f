"""Deterministic BL30K spec generation: (master seed, segment, index) -> VideoSpec.

Reproduces the original generator's distributions (see ``SamplingParams``). Every random draw of a
video comes from its own ``numpy`` generator seeded by (seed, segment, index, attempt), so a spec
does not depend on which other specs were generated, in which order or process. Asset lists are
walked as reshuffled permutations like the original ``Sampler``: video ``i`` owns fixed slots of a
segment-wide stream of permutations, so usage stays even without sequential state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from farm.assets.library import AssetLibrary, ModelInfo
from farm.generate.deintersect import min_path_distances
from farm.model.gate import geometric_gate
from farm.model.presets import Preset
from farm.model.spec import BackgroundSpec, CameraSpec, LightSpec, ObjectSpec, VideoSpec

DEGREE = 4
CONTROL_T = np.arange(DEGREE + 1) / DEGREE
# Exact degree-4 fit through 5 control points: coefficients = FIT @ points.
FIT = np.linalg.inv(CONTROL_T[:, None] ** np.arange(DEGREE + 1))
SLOTS_PER_VIDEO = 5  # model and texture slots each video owns in the permutation streams
STREAMS = {"models": 1, "textures": 2, "skyboxes": 3}
POOL_STREAM = 10  # several libraries: the library draw, then one walk per library (11, 12, ...)


@dataclass(frozen=True)
class SamplingParams:
    """The original generator's hyper-parameters (generate_yaml.py)."""

    n_frames: int = 160  # motion is sampled for 160 frames; presets may render fewer samples of it
    fov: tuple[float, float] = (0.7, 0.8)
    num_objects: tuple[int, int] = (3, 5)
    obj_scale: tuple[float, float] = (1.25, 3.0)
    scale_change: tuple[float, float] = (0.8, 1.25)
    obj_tsl_per_frame: float = 0.03
    obj_rot_per_frame: float = 0.02
    cam_tsl_per_frame: float = 0.10
    look_at_shift_per_frame: float = 0.10
    enter_static_prob: float = 0.10
    continue_static_prob: float = 0.35
    num_lights: tuple[int, int] = (1, 3)
    light_energy: tuple[int, int] = (1000, 15000)
    light_radius: float = 11.0
    cam_base: tuple[float, float] = (-0.3, 0.3)
    cam_into: tuple[float, float] = (-6.0, -5.0)
    look_at_base: tuple[float, float] = (-0.5, 0.5)
    look_at_into: tuple[float, float] = (3.0, 4.0)
    obj_base: tuple[float, float] = (-1.05, 1.05)
    obj_into: tuple[float, float] = (-2.0, 5.0)
    sky_strength: tuple[float, float] = (0.1, 1.0)
    mapped_replace_prob: float = 0.5
    unmapped_replace_prob: float = 1.0
    min_path_distance: float = 0.75
    max_path_retries: int = 50
    step_clamp: str = "one-sided"  # or "symmetric" (set from the preset, see presets.STEP_CLAMPS)


def video_id(segment: int, index: int) -> str:
    """BL30K-style name: segment letter + 5-digit index (segment 0 -> 'a00000')."""
    if 0 <= segment < 26 and 0 <= index < 100_000:
        return f"{chr(ord('a') + segment)}{index:05d}"
    return f"s{segment:03d}_{index:06d}"


def video_rng(seed: int, segment: int, index: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, segment, index, attempt]))


@lru_cache(maxsize=64)
def _permutation(seed: int, segment: int, stream: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, segment, 1000 + stream, epoch])
                                 ).permutation(n)


def permuted_pick(items: list, seed: int, segment: int, stream: str, position: int):
    """Item at ``position`` of an endless walk through reshuffled permutations of ``items``."""
    n = len(items)
    epoch, offset = divmod(position, n)
    return items[int(_permutation(seed, segment, STREAMS[stream], epoch, n)[offset])]


def pick_model(lib: AssetLibrary, seed: int, segment: int, slot: int) -> ModelInfo:
    """The model of a slot. One library: the permutation walk over its models. Several: a
    library drawn by weight from the slot's own seed, then that library's permutation walk at
    the slot (so each library's models are used evenly, and a slot's pick depends on nothing
    else)."""
    if lib.category_weights:
        return _pick_by_category(lib, seed, segment, slot)
    if len(lib.pools) <= 1:
        return permuted_pick(lib.models, seed, segment, "models", slot)
    u = _slot_uniforms(seed, segment, slot, 1)[0]
    k = _weighted(u, [pool.weight for pool in lib.pools])
    return _walk_pick(lib.pools[k].models, seed, segment, POOL_STREAM + 1 + k, slot)


def _slot_uniforms(seed: int, segment: int, slot: int, n: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, segment, 1000 + POOL_STREAM, slot])
                                 ).random(n)


def _weighted(u: float, weights: list[float]) -> int:
    w = np.asarray(weights, dtype=float)
    return min(int(np.searchsorted(np.cumsum(w) / w.sum(), u, side="right")), len(w) - 1)


def _walk_pick(models: list, seed: int, segment: int, stream: int, slot: int):
    epoch, offset = divmod(slot, len(models))
    return models[int(_permutation(seed, segment, stream, epoch, len(models))[offset])]


def _pick_by_category(lib: AssetLibrary, seed: int, segment: int, slot: int) -> ModelInfo:
    """Category weights: a category by weight, then a library holding it by weight, then that
    library's models of the category walked in permutations (so a category is as frequent
    whichever libraries hold how many of its models)."""
    u_category, u_pool = _slot_uniforms(seed, segment, slot, 2)
    categories = list(lib.category_weights)
    c = _weighted(u_category, [lib.category_weights[k] for k in categories])
    holders = lib.category_holders[categories[c]]
    k, models = holders[_weighted(u_pool, [lib.pools[k].weight for k, _ in holders])]
    return _walk_pick(models, seed, segment, POOL_STREAM + 1 + 1000 * (c + 1) + k, slot)


class Draws:
    """Random numbers pre-drawn in two numpy calls and consumed in order as Python floats.

    Sampling a path takes a few dozen scalars; drawing them one numpy call at a time costs more
    than the arithmetic. Sizes are upper bounds of what one path can consume.
    """

    def __init__(self, rng: np.random.Generator, uniforms: int, normals: int) -> None:
        self._u = rng.random(uniforms).tolist()
        self._n = rng.standard_normal(normals).tolist()

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + self._u.pop() * (hi - lo)

    def n(self, scale: float) -> float:
        return self._n.pop() * scale


Vec = list[float]


def _frustum_point(d: Draws, p: SamplingParams) -> Vec:
    """A point in the object box, widening with depth like the view frustum."""
    y = d.u(*p.obj_into)
    widen = (y - p.cam_into[0]) / (p.obj_into[0] - p.cam_into[0])
    x = d.u(p.obj_base[0] * widen, p.obj_base[1] * widen)
    z = d.u(p.obj_base[0] * widen, p.obj_base[1] * widen)
    return [x, y, z]


def _block_point(d: Draws, base: tuple[float, float], into: tuple[float, float]) -> Vec:
    x = d.u(*base)
    y = d.u(*into)
    return [x, y, d.u(*base)]


def _step_towards(current: Vec, target: Vec, max_delta: Vec, one_sided: bool) -> Vec:
    """Move towards ``target``, each axis's move limited by ``|max_delta|``.

    ``one_sided`` is the original generator's clamp (``if d > max: d = max``): only moves in the
    positive direction are limited, so negative moves jump all the way to the target. BL30K as
    published has that motion (objects ~1.6x faster); ``symmetric`` limits both directions.
    """
    return [c + (min(abs(m), t - c) if one_sided else max(-abs(m), min(abs(m), t - c)))
            for c, t, m in zip(current, target, max_delta, strict=True)]


Step = Callable[[Draws, Vec], Vec]


def _walk(d: Draws, starts: list[Vec], steps: list[Step], p: SamplingParams) -> list[np.ndarray]:
    """Control points for several channels that move or stay static together.

    The first segment is static with ``enter_static_prob``; after each move the path enters a
    static span with ``enter_static_prob``; a static span continues with ``continue_static_prob``.
    """
    points = [[start] for start in starts]
    static = d.u() < p.enter_static_prob
    for _ in range(DEGREE):
        if static:
            for pts in points:
                pts.append(pts[-1])
            static = d.u() < p.continue_static_prob
        else:
            for pts, step in zip(points, steps, strict=True):
                pts.append(step(d, pts[-1]))
            static = d.u() < p.enter_static_prob
    return [np.array(pts) for pts in points]


def _poly(points: np.ndarray) -> list[list[float]]:
    return (FIT @ points).tolist()


def sample_camera(rng: np.random.Generator, p: SamplingParams) -> CameraSpec:
    d = Draws(rng, 40, 24)
    fov = d.u(*p.fov)
    tsl = p.cam_tsl_per_frame * p.n_frames / DEGREE
    shift = p.look_at_shift_per_frame * p.n_frames / DEGREE

    one_sided = p.step_clamp == "one-sided"

    def move(base, into, scale):
        return lambda d, cur: _step_towards(cur, _block_point(d, base, into),
                                            [d.n(scale) for _ in range(3)], one_sided)

    loc, look = _walk(
        d,
        [_block_point(d, p.cam_base, p.cam_into), _block_point(d, p.look_at_base, p.look_at_into)],
        [move(p.cam_base, p.cam_into, tsl), move(p.look_at_base, p.look_at_into, shift)],
        p,
    )
    return CameraSpec(fov=fov, location_poly=_poly(loc), look_at_poly=_poly(look))


def sample_object_path(rng: np.random.Generator, p: SamplingParams) -> tuple[list, list, list]:
    d = Draws(rng, 48, 24)
    tsl = p.obj_tsl_per_frame * p.n_frames / DEGREE
    rot = p.obj_rot_per_frame * p.n_frames / DEGREE
    lo, hi = (c ** (1 / DEGREE) for c in p.scale_change)
    one_sided = p.step_clamp == "one-sided"
    # ``_walk`` over (location, angles, scale) written out: this runs ~8 times per video. The
    # same draws in the same order and the same arithmetic as ``_frustum_point``,
    # ``d.u(lo, hi)`` (lo + x * (hi - lo)) and ``d.n(scale)`` (x * scale).
    u, n = d._u.pop, d._n.pop
    (y0, y1), (b0, b1), c0 = p.obj_into, p.obj_base, p.cam_into[0]
    s0, s1 = p.obj_scale
    two_pi = 2 * np.pi

    def frustum_point() -> Vec:
        y = y0 + u() * (y1 - y0)
        widen = (y - c0) / (y0 - c0)
        a, b = b0 * widen, b1 * widen
        x = a + u() * (b - a)
        return [x, y, a + u() * (b - a)]

    loc = [frustum_point()]
    angles = [[0 + u() * (two_pi - 0) for _ in range(3)]]
    scale = [[s0 + u() * (s1 - s0) for _ in range(3)]]
    static = u() < p.enter_static_prob
    for _ in range(DEGREE):
        if static:
            loc.append(loc[-1])
            angles.append(angles[-1])
            scale.append(scale[-1])
            static = u() < p.continue_static_prob
        else:
            (tx, ty, tz), (cx, cy, cz) = frustum_point(), loc[-1]
            mx, my, mz = abs(n() * tsl), abs(n() * tsl), abs(n() * tsl)
            if one_sided:  # _step_towards
                loc.append([cx + min(mx, tx - cx), cy + min(my, ty - cy), cz + min(mz, tz - cz)])
            else:
                loc.append([cx + max(-mx, min(mx, tx - cx)), cy + max(-my, min(my, ty - cy)),
                            cz + max(-mz, min(mz, tz - cz))])
            angles.append([c + n() * rot for c in angles[-1]])
            scale.append([c * (lo + u() * (hi - lo)) for c in scale[-1]])
            static = u() < p.enter_static_prob
    # _poly of each channel, in one (batched, slice by slice identical) matmul
    loc_poly, angles_poly, scale_poly = (FIT @ np.array([loc, angles, scale])).tolist()
    return loc_poly, angles_poly, scale_poly


def sample_light(rng: np.random.Generator, p: SamplingParams) -> LightSpec:
    energy = float(rng.integers(p.light_energy[0], p.light_energy[1] + 1))
    color = 0.5 + rng.random(3) * 0.5
    color /= color.max()
    direction = rng.normal(0, 1, 3)
    location = p.light_radius * direction / np.linalg.norm(direction)
    rotation = rng.random(3) * 3.14 * 2  # the original's constant
    return LightSpec(energy=energy, color=color.tolist(), location_poly=[location.tolist()],
                     rotation_poly=[rotation.tolist()])


def _sample_objects(rng, lib: AssetLibrary, seed: int, segment: int, index: int,
                    p: SamplingParams) -> tuple[list[ObjectSpec], dict]:
    count = int(rng.integers(p.num_objects[0], p.num_objects[1] + 1))
    objects: list[ObjectSpec] = []
    paths: list[np.ndarray] = []
    pairs, retries = [], []
    for j in range(count):
        slot = index * SLOTS_PER_VIDEO + j
        model = pick_model(lib, seed, segment, slot)
        replace_prob = p.mapped_replace_prob if model.mapped else p.unmapped_replace_prob
        texture = None
        if rng.random() < replace_prob and lib.replaces_textures(model):
            texture = permuted_pick(lib.textures, seed, segment, "textures", slot)
        tries = 0
        while True:  # resample the path until it keeps its distance, at most max_path_retries
            loc, ang, scl = sample_object_path(rng, p)
            path = np.asarray(loc)
            dists = min_path_distances(path, paths)
            if dists.size == 0 or dists.min() >= p.min_path_distance or tries == p.max_path_retries:
                break
            tries += 1
        retries.append(tries)
        pairs += [[k, j, round(float(d), 6)] for k, d in enumerate(dists)]
        paths.append(path)
        objects.append(ObjectSpec(
            model=model.id, synset=model.synset, category=model.category, location_poly=loc,
            rotation_poly=ang, scale_poly=scl, texture=texture, **lib.geometry(model)))
    record = {
        "min_distance": p.min_path_distance,
        "pairs": pairs,  # [earlier object, object, achieved minimum path distance]
        "retries": retries,
        "satisfied": all(d >= p.min_path_distance for _, _, d in pairs),
    }
    return objects, record


def sample_spec(lib: AssetLibrary, preset: Preset, segment: int, index: int, seed: int,
                attempt: int, p: SamplingParams = SamplingParams()) -> VideoSpec:
    """One sampling attempt, without the quality gate; the preset chooses the step clamp."""
    if p.step_clamp != preset.step_clamp:
        p = replace(p, step_clamp=preset.step_clamp)
    rng = video_rng(seed, segment, index, attempt)
    camera = sample_camera(rng, p)
    objects, deintersection = _sample_objects(rng, lib, seed, segment, index, p)
    lights = [sample_light(rng, p) for _ in range(int(rng.integers(p.num_lights[0],
                                                                    p.num_lights[1] + 1)))]
    background = BackgroundSpec(
        image=permuted_pick(lib.skyboxes, seed, segment, "skyboxes", index),
        strength=float(rng.random() * (p.sky_strength[1] - p.sky_strength[0]) + p.sky_strength[0]),
    )
    return VideoSpec(
        id=video_id(segment, index), segment=segment, index=index, seed=seed,
        frames=preset.frames, resolution=list(preset.resolution), camera=camera, objects=objects,
        lights=lights, background=background, render=preset.render, source="generated",
        preset=preset.name, attempt=attempt,
        generation={"assets": lib.fingerprint, "step_clamp": p.step_clamp,
                    "deintersection": deintersection},
    )


def generate_spec(lib: AssetLibrary, preset: Preset, segment: int, index: int, seed: int,
                  first_attempt: int = 0, p: SamplingParams = SamplingParams(),
                  rejected: list[dict] | None = None, last_attempt: int | None = None
                  ) -> VideoSpec:
    """Sample attempts from ``first_attempt`` until one passes the geometric quality gate.

    A video's attempts are ``first_attempt .. last_attempt`` (default: ``max_attempts`` of the
    preset's gate from ``first_attempt``; a retry of a failed video starts after the last one).
    ``rejected`` and ``last_attempt`` carry an earlier rejection (e.g. by the render-time mask
    check) and the attempt budget into a continuation. The last attempt is returned even when
    it fails, with ``gate.passed = false``; the renderer then fails the video.
    """
    rejected = list(rejected or [])
    gate = preset.quality_gate
    if last_attempt is None:
        last_attempt = first_attempt + gate.max_attempts - 1
    attempt = first_attempt
    while True:
        spec = sample_spec(lib, preset, segment, index, seed, attempt, p)
        reason = geometric_gate(spec, gate)
        if reason is None or attempt >= last_attempt:
            break
        rejected.append({"attempt": attempt, "check": "geometric", "reason": reason})
        attempt += 1
    record = {"passed": reason is None, "rejected": rejected, "first_attempt": first_attempt,
              "last_attempt": last_attempt}
    if reason is not None:
        record["reason"] = reason
    return replace(spec, generation={**spec.generation, "gate": record})
