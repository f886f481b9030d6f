"""Validation of a video spec: every field's type, bounds and choices, with an error naming the
field (``SpecError``), for spec files, task messages and imported configs."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from farm.model.spec import (
    DEFAULT_OUTPUTS,
    DENOISE_PREFILTERS,
    DENOISE_QUALITIES,
    DEPTH_FORMATS,
    DEVICES,
    DIGEST_RE,
    FLOW_FORMATS,
    LIBRARY_RE,
    MAX_ABS_COORD,
    MAX_FRAMES,
    MAX_LIGHTS,
    MAX_OBJECTS,
    MAX_POLY_DEGREE,
    MAX_RESOLUTION,
    MAX_SAMPLES,
    MAX_SPEC_BYTES,
    MESH_SUFFIXES,
    OBJECT_EXTRA_DEFAULTS,
    OUTPUTS,
    SPEC_VERSION,
    UP_AXES,
    VIDEO_ID_RE,
    BackgroundSpec,
    CameraSpec,
    LightSpec,
    ObjectSpec,
    Poly,
    RenderSettings,
    SpecError,
    VideoSpec,
)
from farm.model.spec_yaml import load_yaml


def load_spec(path: str | Path) -> VideoSpec:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SpecError("spec", f"cannot read {path}: {exc.strerror}") from None
    if size > MAX_SPEC_BYTES:
        raise SpecError("spec", f"{path} is {size} bytes, more than {MAX_SPEC_BYTES}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError("spec", f"cannot read {path}: {exc.strerror}") from None
    return parse_spec_text(data, origin=str(path))


def parse_spec_text(text: str | bytes, origin: str = "spec") -> VideoSpec:
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError("spec", f"{origin} is larger than {MAX_SPEC_BYTES} bytes")
    try:
        data = load_yaml(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError("spec", f"{origin} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError("spec", f"{origin} is nested too deeply") from None
    return spec_from_dict(data)


def _mapping(data: Any, name: str, known: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(name, f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise SpecError(name, f"unknown field(s) {', '.join(unknown)}")
    missing = sorted(required - set(data))
    if missing:
        raise SpecError(name, f"missing field(s) {', '.join(missing)}")
    return data


def _fields(cls: type) -> tuple[set[str], set[str]]:
    from dataclasses import MISSING, fields

    all_names = {f.name for f in fields(cls)}
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    return all_names, required


def _number(value: Any, name: str, lo: float = -MAX_ABS_COORD, hi: float = MAX_ABS_COORD) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(name, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise SpecError(name, f"must be finite, got {value}")
    if not lo <= value <= hi:
        raise SpecError(name, f"{value} is outside [{lo}, {hi}]")
    return float(value)


def _integer(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise SpecError(name, f"{value} is outside [{lo}, {hi}]")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(name, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _vector(value: Any, name: str, length: int = 3, lo: float = -MAX_ABS_COORD,
            hi: float = MAX_ABS_COORD) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != length:
        raise SpecError(name, f"expected a list of {length} numbers")
    return [_number(v, f"{name}[{i}]", lo, hi) for i, v in enumerate(value)]


def _poly(value: Any, name: str) -> Poly:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_POLY_DEGREE + 1:
        raise SpecError(name, f"expected 1..{MAX_POLY_DEGREE + 1} coefficient rows of [x, y, z]")
    return [_vector(row, f"{name}[{i}]") for i, row in enumerate(value)]


def asset_path(value: Any, name: str) -> str:
    """A relative POSIX path that cannot leave its root (no '..', no absolute path)."""
    if not isinstance(value, str) or not value or len(value) > 512:
        raise SpecError(name, "expected a non-empty relative path (at most 512 characters)")
    if "\\" in value or "\x00" in value or any(ord(c) < 32 for c in value):
        raise SpecError(name, f"{value!r} contains a forbidden character")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise SpecError(name, f"{value!r} must be relative to its asset root, without '..'")
    return value


def parse_render(data: Any) -> RenderSettings:
    known, required = _fields(RenderSettings)
    d = {**RenderSettings().__dict__, **_mapping(data, "render", known, required)}
    if not isinstance(d["denoise"], bool):
        raise SpecError("render.denoise", "expected true or false")
    return RenderSettings(
        engine=_choice(d["engine"], "render.engine", ("CYCLES",)),
        samples=_integer(d["samples"], "render.samples", 1, MAX_SAMPLES),
        adaptive_threshold=_number(d["adaptive_threshold"], "render.adaptive_threshold", 0.0, 1.0),
        adaptive_min_samples=_integer(d["adaptive_min_samples"], "render.adaptive_min_samples", 0,
                                      MAX_SAMPLES),
        denoise=d["denoise"],
        denoise_prefilter=_choice(d["denoise_prefilter"], "render.denoise_prefilter",
                                  DENOISE_PREFILTERS),
        denoise_quality=_choice(d["denoise_quality"], "render.denoise_quality", DENOISE_QUALITIES),
        jpeg_quality=_integer(d["jpeg_quality"], "render.jpeg_quality", 1, 100),
        view_transform=_choice(d["view_transform"], "render.view_transform",
                               ("Standard", "AgX", "Filmic")),
        max_bounces=_integer(d["max_bounces"], "render.max_bounces", 0, 128),
        max_texture_size=_integer(d["max_texture_size"], "render.max_texture_size", 0, 16384),
        device=_choice(d["device"], "render.device", DEVICES),
        outputs=_outputs(d["outputs"]),
        depth_format=_choice(d["depth_format"], "render.depth_format", DEPTH_FORMATS),
        flow_format=_choice(d["flow_format"], "render.flow_format", FLOW_FORMATS),
    )


def _outputs(value: Any) -> tuple[str, ...]:
    """A list of known output names including rgb and masks; returned in canonical order."""
    name = "render.outputs"
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SpecError(name, f"expected a list of names among {', '.join(OUTPUTS)}")
    unknown = sorted(set(value) - set(OUTPUTS))
    if unknown:
        raise SpecError(name, f"unknown output(s) {', '.join(unknown)} (known: {', '.join(OUTPUTS)})")
    if len(set(value)) != len(value):
        raise SpecError(name, "an output is listed twice")
    missing = [o for o in DEFAULT_OUTPUTS if o not in value]
    if missing:
        raise SpecError(name, f"must include {', '.join(missing)} (every render writes them)")
    return tuple(o for o in OUTPUTS if o in value)


def _parse_object(data: Any, name: str) -> ObjectSpec:
    known, required = _fields(ObjectSpec)
    d = _mapping(data, name, known, required)
    extra = _parse_library_fields(d, name)
    if extra["file"] is None:
        model = asset_path(d["model"], f"{name}.model")
        if len(PurePosixPath(model).parts) != 2:
            raise SpecError(f"{name}.model", f"{model!r} must be '<synset>/<model>'")
    else:  # a manifest's model id: any short printable string
        model = d["model"]
        if (not isinstance(model, str) or not 0 < len(model) <= 256
                or any(ord(c) < 32 for c in model)):
            raise SpecError(f"{name}.model", "expected a model id of 1-256 printable characters")
    texture = d.get("texture")
    if texture is not None:
        texture = asset_path(texture, f"{name}.texture")
    for key in ("synset", "category"):
        if not isinstance(d[key], str) or len(d[key]) > 256:
            raise SpecError(f"{name}.{key}", "expected a string of at most 256 characters")
    if not isinstance(d.get("normalize", False), bool):
        raise SpecError(f"{name}.normalize", "expected true or false")
    return ObjectSpec(
        model=model,
        synset=d["synset"],
        category=d["category"],
        location_poly=_poly(d["location_poly"], f"{name}.location_poly"),
        rotation_poly=_poly(d["rotation_poly"], f"{name}.rotation_poly"),
        scale_poly=_poly(d["scale_poly"], f"{name}.scale_poly"),
        texture=texture,
        uv_projection=_choice(d.get("uv_projection", "AUTO"), f"{name}.uv_projection",
                              ("AUTO", "SMART", "CYLINDER")),
        radius=_number(d.get("radius", 0.5), f"{name}.radius", 1e-6, MAX_ABS_COORD),
        normalize=d.get("normalize", False),
        up_axis=_choice(d.get("up_axis", "Y"), f"{name}.up_axis", UP_AXES),
        **extra,
    )


def _parse_library_fields(d: dict, name: str) -> dict[str, Any]:
    """``library``, ``file``, ``digest``, ``mesh_scale`` and ``license`` of an object."""
    out: dict[str, Any] = dict(OBJECT_EXTRA_DEFAULTS)
    if d.get("file") is not None:
        out["file"] = asset_path(d["file"], f"{name}.file")
        if PurePosixPath(out["file"]).suffix.lower() not in MESH_SUFFIXES:
            raise SpecError(f"{name}.file", f"{out['file']!r} is not a mesh file the renderer "
                            f"imports ({', '.join(MESH_SUFFIXES)})")
    if d.get("library") is not None:
        if not isinstance(d["library"], str) or not LIBRARY_RE.match(d["library"]):
            raise SpecError(f"{name}.library", "expected 1-64 letters, digits, '_', '.' or '-'")
        out["library"] = d["library"]
    if d.get("digest") is not None:
        if not isinstance(d["digest"], str) or not DIGEST_RE.match(d["digest"]):
            raise SpecError(f"{name}.digest", "expected a sha256 digest (64 lowercase hex digits)")
        out["digest"] = d["digest"]
    if d.get("license") is not None:
        if not isinstance(d["license"], str) or len(d["license"]) > 256:
            raise SpecError(f"{name}.license", "expected a string of at most 256 characters")
        out["license"] = d["license"]
    out["mesh_scale"] = _number(d.get("mesh_scale", 1.0), f"{name}.mesh_scale", 1e-6, 1e4)
    return out


def _parse_light(data: Any, name: str) -> LightSpec:
    known, required = _fields(LightSpec)
    d = _mapping(data, name, known, required)
    return LightSpec(
        energy=_number(d["energy"], f"{name}.energy", 0.0, 1e7),
        color=_vector(d["color"], f"{name}.color", lo=0.0, hi=1.0),
        location_poly=_poly(d["location_poly"], f"{name}.location_poly"),
        rotation_poly=_poly(d["rotation_poly"], f"{name}.rotation_poly"),
        type=_choice(d.get("type", "POINT"), f"{name}.type", ("POINT",)),
    )


def spec_from_dict(data: Any) -> VideoSpec:
    """A validated VideoSpec from plain data (a loaded spec file, a task message's spec)."""
    known, required = _fields(VideoSpec)
    d = _mapping(data, "spec", known, required)
    version = d.get("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError("version", f"unsupported spec version {version!r} (expected {SPEC_VERSION})")
    if not isinstance(d["id"], str) or not VIDEO_ID_RE.match(d["id"]):
        raise SpecError("id", "expected 1-64 letters, digits, '_' or '-'")
    res = d["resolution"]
    if not isinstance(res, list | tuple) or len(res) != 2:
        raise SpecError("resolution", "expected [width, height]")
    resolution = [_integer(v, f"resolution[{i}]", 8, MAX_RESOLUTION) for i, v in enumerate(res)]

    cam_known, cam_req = _fields(CameraSpec)
    cam = _mapping(d["camera"], "camera", cam_known, cam_req)
    camera = CameraSpec(
        fov=_number(cam["fov"], "camera.fov", 0.01, 3.1),
        location_poly=_poly(cam["location_poly"], "camera.location_poly"),
        look_at_poly=_poly(cam["look_at_poly"], "camera.look_at_poly"),
    )
    objects = d["objects"]
    if not isinstance(objects, list) or not 1 <= len(objects) <= MAX_OBJECTS:
        raise SpecError("objects", f"expected a list of 1..{MAX_OBJECTS} objects")
    lights = d["lights"]
    if not isinstance(lights, list) or not 1 <= len(lights) <= MAX_LIGHTS:
        raise SpecError("lights", f"expected a list of 1..{MAX_LIGHTS} lights")

    bg_known, bg_req = _fields(BackgroundSpec)
    bg = _mapping(d["background"], "background", bg_known, bg_req)
    background = BackgroundSpec(
        image=asset_path(bg["image"], "background.image"),
        strength=_number(bg["strength"], "background.strength", 0.0, 1000.0),
        location=_vector(bg.get("location", [0.0, 12.0, 0.0]), "background.location"),
        rotation=_vector(bg.get("rotation", [math.pi / 2, 0.0, 0.0]), "background.rotation"),
        size=_number(bg.get("size", 40.0), "background.size", 0.01, 1e4),
    )
    generation = d.get("generation", {})
    if not isinstance(generation, dict):
        raise SpecError("generation", "expected a mapping")
    _check_record(generation, "generation")
    for key in ("preset", "source"):
        if key in d and (not isinstance(d[key], str) or len(d[key]) > 64):
            raise SpecError(key, "expected a string of at most 64 characters")
    return VideoSpec(
        id=d["id"],
        segment=_integer(d["segment"], "segment", 0, 10**6),
        index=_integer(d["index"], "index", 0, 10**9),
        seed=_integer(d["seed"], "seed", 0, 2**63 - 1),
        frames=_integer(d["frames"], "frames", 1, MAX_FRAMES),
        resolution=resolution,
        camera=camera,
        objects=[_parse_object(o, f"objects[{i}]") for i, o in enumerate(objects)],
        lights=[_parse_light(o, f"lights[{i}]") for i, o in enumerate(lights)],
        background=background,
        render=parse_render(d["render"]),
        source=_choice(d.get("source", "generated"), "source", ("generated", "imported")),
        preset=d.get("preset", "bl30k"),
        attempt=_integer(d.get("attempt", 0), "attempt", 0, 1000),
        generation=generation,
        keep_gate_failures=_flag(d.get("keep_gate_failures", False), "keep_gate_failures"),
        version=SPEC_VERSION,
    )


def _check_record(value: Any, name: str, depth: int = 0) -> None:
    """A free-form record (``generation``): JSON data only, finite numbers, bounded depth."""
    if depth > 8:
        raise SpecError(name, "nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(name, f"key {key!r} is not a string")
            _check_record(item, f"{name}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_record(item, f"{name}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(name, "must be finite")
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise SpecError(name, f"unexpected {type(value).__name__}")


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(name, f"expected true or false, got {value!r}")
    return value
