"""The video spec: a versioned, validated, pure-data description of one video.

Coordinates are Blender world units; the camera looks roughly down +Y. A polynomial ("poly") is a
list of rows, lowest degree first, each row holding the (x, y, z) coefficients, exactly like
numpy's ``polyval`` coefficient layout with one column per axis. Frame ``i`` of ``n`` is evaluated
at ``t = i / (n - 1)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, is_dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

SPEC_VERSION = 1
MAX_FRAMES = 1000
MAX_RESOLUTION = 4096
MAX_SAMPLES = 8192
MAX_OBJECTS = 16
MAX_LIGHTS = 8
MAX_POLY_DEGREE = 8
MAX_ABS_COORD = 1e4
MAX_SPEC_BYTES = 1 << 20
VIDEO_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DENOISE_PREFILTERS = ("NONE", "FAST", "ACCURATE")
DENOISE_QUALITIES = ("HIGH", "BALANCED", "FAST")
DEVICES = ("AUTO", "CPU", "GPU", "CUDA", "OPTIX")
UP_AXES = ("Y", "Z")
# Outputs a render can write (farm/io/outputs.py documents each); rgb and masks are always written.
OUTPUTS = ("rgb", "masks", "depth", "flow", "normals", "camera", "amodal")
DEFAULT_OUTPUTS = ("rgb", "masks")
DEPTH_FORMATS = ("png16", "exr")
FLOW_FORMATS = ("png16", "flo")
# Mesh files an object may name (``ObjectSpec.file``); worker/render/importers.py imports each.
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl")
LIBRARY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class SpecError(ValueError):
    """A spec (or a preset) is malformed; ``str()`` names the field and the problem."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


Poly = list[list[float]]


@dataclass(frozen=True)
class RenderSettings:
    engine: str = "CYCLES"
    samples: int = 64
    adaptive_threshold: float = 0.0  # 0 disables adaptive sampling
    adaptive_min_samples: int = 0
    denoise: bool = True
    denoise_prefilter: str = "ACCURATE"
    denoise_quality: str = "HIGH"  # OIDN quality: HIGH, BALANCED or FAST
    jpeg_quality: int = 98
    view_transform: str = "Standard"
    max_bounces: int = 12
    max_texture_size: int = 0  # 0 = keep textures at full resolution
    device: str = "AUTO"
    # Extra outputs from the same render (farm/io/outputs.py); the defaults (RGB + masks, the BL30K
    # outputs) are left out of the serialised spec, so specs and digests without extras are
    # unchanged.
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    depth_format: str = "png16"
    flow_format: str = "png16"


_RENDER_EXTRA_DEFAULTS = {"outputs": DEFAULT_OUTPUTS, "depth_format": "png16", "flow_format": "png16"}
_OBJECT_EXTRA_DEFAULTS = {"library": None, "file": None, "digest": None, "mesh_scale": 1.0,
                          "license": None}


@dataclass(frozen=True)
class CameraSpec:
    fov: float  # horizontal field of view in radians (Blender camera angle, sensor fit AUTO)
    location_poly: Poly
    look_at_poly: Poly


@dataclass(frozen=True)
class ObjectSpec:
    model: str  # "<synset>/<model>" relative to the ShapeNetCore.v2 root
    synset: str
    category: str
    location_poly: Poly
    rotation_poly: Poly  # Euler XYZ, radians
    scale_poly: Poly
    texture: str | None = None  # relative to the textures root, e.g. "texture/wood/0.jpg"
    uv_projection: str = "AUTO"  # with a texture: AUTO (smart <1000 faces, else cylinder),
    # SMART or CYLINDER
    radius: float = 0.5  # bounding-sphere radius of the unscaled mesh as rendered (0.5 normalised)
    normalize: bool = False  # centre the mesh's bounding box on the origin, scale its diagonal to 1
    up_axis: str = "Y"  # the mesh file's up axis: Y (ShapeNet, glTF) or Z
    # A model of a manifest library (docs/assets.md); left out of the serialised spec when unset,
    # so ShapeNet-layout specs and their digests are what they were before these fields existed.
    library: str | None = None  # the library's name
    file: str | None = None  # mesh file relative to the models root (OBJ, glTF/GLB, PLY, STL)
    digest: str | None = None  # sha256 of that file: the worker renders only the same bytes
    mesh_scale: float = 1.0  # the manifest's scale hint, applied after normalisation
    license: str | None = None  # the model's licence (the manifest's), for meta.json

    @property
    def obj_path(self) -> str:
        """The mesh file relative to the models root (ShapeNet's layout unless ``file``)."""
        return self.file or f"{self.model}/models/model_normalized.obj"


@dataclass(frozen=True)
class LightSpec:
    energy: float  # watts
    color: list[float]
    location_poly: Poly
    rotation_poly: Poly
    type: str = "POINT"


@dataclass(frozen=True)
class BackgroundSpec:
    image: str  # relative to the textures root, e.g. "skybox/city/1.jpg"
    strength: float
    location: list[float] = field(default_factory=lambda: [0.0, 12.0, 0.0])
    rotation: list[float] = field(default_factory=lambda: [math.pi / 2, 0.0, 0.0])
    size: float = 40.0


@dataclass(frozen=True)
class VideoSpec:
    id: str
    segment: int
    index: int
    seed: int
    frames: int
    resolution: list[int]  # [width, height]
    camera: CameraSpec
    objects: list[ObjectSpec]
    lights: list[LightSpec]
    background: BackgroundSpec
    render: RenderSettings
    source: str = "generated"  # "generated" (resamplable) or "imported"
    preset: str = "bl30k"
    attempt: int = 0  # quality-gate sub-seed that produced this spec
    generation: dict[str, Any] = field(default_factory=dict)  # de-intersection/gate records
    # Deliver this video even if its masks fail the quality gate (an explicit user choice for
    # imported specs; the manifest and meta.json record it). Otherwise a gate failure fails it.
    keep_gate_failures: bool = False
    version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain Python data (numpy scalars and arrays converted)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        return json.dumps(self, default=_plain, separators=(",", ":"))

    def to_yaml(self) -> str:
        """The spec file: ``yaml.safe_dump(self.to_dict(), sort_keys=False, width=100)``,
        byte for byte.

        Written directly from the dataclasses (``_block_mapping``) when every value is one that
        writer knows (plain str/int/float/bool/None, lists, dicts: what generated specs hold);
        anything else goes through ``to_dict`` and libyaml's emitter (``dump_yaml``).
        """
        out: list[str] = []
        try:
            _block_mapping(self.__dict__, 0, False, out)
        except (_NotBlockPlain, RecursionError):
            return dump_yaml(self.to_dict())
        return "".join(out)

    def digest(self) -> str:
        """Stable content hash: sha256 of the canonical JSON (fields in declaration order)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def frame_times(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.frames) if self.frames > 1 else np.zeros(1)

    @classmethod
    def from_dict(cls, data: Any) -> VideoSpec:
        return _parse_spec(data)


def _plain(value: Any) -> Any:
    if isinstance(value, RenderSettings):
        return {k: v for k, v in value.__dict__.items() if k not in _RENDER_EXTRA_DEFAULTS
                or (tuple(v) if isinstance(v, list) else v) != _RENDER_EXTRA_DEFAULTS[k]}
    if isinstance(value, ObjectSpec):
        return {k: v for k, v in value.__dict__.items() if k not in _OBJECT_EXTRA_DEFAULTS
                or v != _OBJECT_EXTRA_DEFAULTS[k]}
    if is_dataclass(value):
        return value.__dict__
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a spec")


def eval_poly(poly: Poly, t: np.ndarray | float) -> np.ndarray:
    """Evaluate a poly at times ``t``; returns shape ``t.shape + (3,)``."""
    coeffs = np.asarray(poly, dtype=float)
    t = np.asarray(t, dtype=float)
    powers = t[..., None] ** np.arange(len(coeffs))
    return powers @ coeffs


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


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases: a spec never needs them, and alias bombs
    ("billion laughs") would make validation walk an exponentially large document.
    (The pure-Python loader: used only where PyYAML was built without libyaml.)"""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed in a spec")
        return super().compose_node(parent, index)


_ALIAS = yaml.YAMLError("aliases are not allowed in a spec")


def load_yaml(text: str | bytes) -> Any:
    """``yaml.safe_load`` that refuses aliases, on libyaml's parser when PyYAML has it.

    libyaml's composer runs in C, so aliases cannot be refused while composing as
    ``_SpecLoader`` does; they are refused from the event stream instead. An alias is a
    ``*name`` token, so a document without any ``*`` has none and is loaded directly; one with a
    ``*`` (in a string, say) is first parsed into events (no node is built from an alias there)
    and refused if an ``AliasEvent`` comes up. libyaml also caps nesting depth (1000).
    """
    if not yaml.__with_libyaml__:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader without aliases
    star = b"*" if isinstance(text, bytes) else "*"
    if star in text:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise _ALIAS
    return yaml.load(text, Loader=yaml.CSafeLoader)  # noqa: S506 - CSafeLoader, aliases refused


def parse_spec_text(text: str | bytes, origin: str = "spec") -> VideoSpec:
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError("spec", f"{origin} is larger than {MAX_SPEC_BYTES} bytes")
    try:
        data = load_yaml(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError("spec", f"{origin} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError("spec", f"{origin} is nested too deeply") from None
    return _parse_spec(data)


# --- writing: safe_dump's output from events -------------------------------------------------
#
# ``yaml.safe_dump`` spends most of its time in PyYAML's Python representer and resolver (one
# node and two resolver look-ups per scalar; a spec has ~400 scalars), even with libyaml's
# emitter. ``dump_yaml`` hands libyaml the serializer's events directly: the same events with the
# same implicit-tag flags give the same text (tests compare it with safe_dump on many specs).

_STR, _RESOLVER = "tag:yaml.org,2002:str", yaml.resolver.Resolver()
_PLAIN = (True, False)  # a number, bool or null: its plain text resolves to its own type


@lru_cache(maxsize=65536)
def _str_implicit(value: str) -> tuple[bool, bool]:
    """The serializer's ``implicit`` for a string: may it be written plain (it would not be read
    back as another type)?"""
    return (_RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STR, True)


def _float_text(value: float) -> str:
    """SafeRepresenter.represent_float, finite values (a spec holds no others)."""
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


def _events(data: Any, out: list) -> None:
    if isinstance(data, str):
        out.append(yaml.ScalarEvent(None, None, _str_implicit(data), data))
    elif isinstance(data, bool):
        out.append(yaml.ScalarEvent(None, None, _PLAIN, "true" if data else "false"))
    elif isinstance(data, int):
        out.append(yaml.ScalarEvent(None, None, _PLAIN, str(data)))
    elif isinstance(data, float):
        if not math.isfinite(data):
            raise TypeError("non-finite float")
        out.append(yaml.ScalarEvent(None, None, _PLAIN, _float_text(data)))
    elif data is None:
        out.append(yaml.ScalarEvent(None, None, _PLAIN, "null"))
    elif isinstance(data, list):
        out.append(yaml.SequenceStartEvent(None, None, True, flow_style=False))
        for item in data:
            _events(item, out)
        out.append(yaml.SequenceEndEvent())
    elif isinstance(data, dict):
        out.append(yaml.MappingStartEvent(None, None, True, flow_style=False))
        for key, value in data.items():
            if not isinstance(key, str):
                raise TypeError("non-string key")
            _events(key, out)
            _events(value, out)
        out.append(yaml.MappingEndEvent())
    else:
        raise TypeError(type(data).__name__)


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, width=100)`` for plain JSON-like data (str keys,
    finite floats), several times faster; anything else goes through safe_dump itself."""
    if not yaml.__with_libyaml__:
        return yaml.safe_dump(data, sort_keys=False, width=100)
    events = [yaml.StreamStartEvent(), yaml.DocumentStartEvent(explicit=False)]
    try:
        _events(data, events)
    except (TypeError, RecursionError):
        return yaml.safe_dump(data, sort_keys=False, width=100)
    events += [yaml.DocumentEndEvent(explicit=False), yaml.StreamEndEvent()]
    return yaml.emit(events, Dumper=yaml.CSafeDumper, width=100)


# --- writing: the common case without events ------------------------------------------------
#
# Even fed with events, libyaml's path costs building ~550 event objects per spec plus the JSON
# round trip of ``to_dict``. Generated specs use a small part of YAML: block mappings and
# sequences of finite floats, ints, bools, nulls and short strings of [A-Za-z0-9_./-]. For those
# the emitter's layout is fixed (keys at the mapping's indent; a sequence under a key at the
# key's indent, "- " items; a collection inside a sequence item starts on the item's line,
# indented by 2; empty collections as [] / {}), so the text is written directly. Any other value
# raises ``_NotBlockPlain`` and the whole spec goes through ``dump_yaml`` (tests compare both
# with safe_dump).


class _NotBlockPlain(Exception):
    """A value outside what ``_block_mapping`` writes; the caller falls back to ``dump_yaml``."""


_SIMPLE_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,99}").fullmatch
_SPEC_CLASSES = frozenset({VideoSpec, CameraSpec, ObjectSpec, LightSpec, BackgroundSpec,
                           RenderSettings})


@lru_cache(maxsize=65536)
def _str_text(value: str) -> str | None:
    """A simple string's emitted text (None: not simple). Such a string has no quote, space or
    indicator: it is plain, or single-quoted where it would read back as another type."""
    if _SIMPLE_STR(value) is None:
        return None
    return value if _str_implicit(value)[0] else f"'{value}'"


def _scalar_text(value: Any) -> str | None:
    """The emitted text of a scalar; None for a collection; raises for anything unknown."""
    kind = type(value)
    if kind is float:
        if value - value != 0.0:  # inf or nan
            raise _NotBlockPlain
        text = repr(value)
        return text if "e" not in text else _float_text(value)
    if kind is str:
        text = _str_text(value)
        if text is None:
            raise _NotBlockPlain
        return text
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is list or kind is tuple or kind is dict or kind in _SPEC_CLASSES:
        return None
    raise _NotBlockPlain


def _mapping_items(value: Any) -> dict:
    """What ``to_dict`` makes of a mapping-like value (``_plain`` for the spec's dataclasses)."""
    kind = type(value)
    if kind is dict:
        return value
    if kind is RenderSettings or kind is ObjectSpec:
        return _plain(value)
    if kind in _SPEC_CLASSES:
        return value.__dict__
    raise _NotBlockPlain


def _block_mapping(data: dict, indent: int, inline: bool, out: list[str]) -> None:
    """Append the block mapping ``data`` with keys at column ``indent``; ``inline``: the first
    key goes on the current line (after a sequence item's "- ")."""
    pad = " " * indent
    lead = "" if inline else pad
    for key, value in data.items():
        if type(key) is not str:
            raise _NotBlockPlain
        key_text = _scalar_text(key)
        text = _scalar_text(value)
        if text is not None:
            out.append(f"{lead}{key_text}: {text}\n")
        elif type(value) is list or type(value) is tuple:
            if value:
                out.append(f"{lead}{key_text}:\n")
                _block_sequence(value, indent, False, out)
            else:
                out.append(f"{lead}{key_text}: []\n")
        else:
            items = _mapping_items(value)
            if items:
                out.append(f"{lead}{key_text}:\n")
                _block_mapping(items, indent + 2, False, out)
            else:
                out.append(f"{lead}{key_text}: {{}}\n")
        lead = pad


def _block_sequence(data: list | tuple, indent: int, inline: bool, out: list[str]) -> None:
    """Append the block sequence ``data`` with its "- " at column ``indent`` (see
    ``_block_mapping`` for ``inline``)."""
    pad = " " * indent
    lead = "" if inline else pad
    for value in data:
        if type(value) is float and value - value == 0.0:  # most values: finite floats
            text = repr(value)
            out.append(f"{lead}- {text}\n" if "e" not in text else
                       f"{lead}- {_float_text(value)}\n")
            lead = pad
            continue
        if type(value) is list and len(value) == 3:  # most lists: [x, y, z] rows of polys
            x, y, z = value
            if type(x) is float and type(y) is float and type(z) is float:
                tx, ty, tz = repr(x), repr(y), repr(z)
                joined = tx + ty + tz
                if "e" not in joined and "n" not in joined:  # no exponent, no inf or nan
                    out.append(f"{lead}- - {tx}\n{pad}  - {ty}\n{pad}  - {tz}\n")
                    lead = pad
                    continue
        text = _scalar_text(value)
        if text is not None:
            out.append(f"{lead}- {text}\n")
        elif type(value) is list or type(value) is tuple:
            if value:
                out.append(f"{lead}- ")
                _block_sequence(value, indent + 2, True, out)
            else:
                out.append(f"{lead}- []\n")
        else:
            items = _mapping_items(value)
            if items:
                out.append(f"{lead}- ")
                _block_mapping(items, indent + 2, True, out)
            else:
                out.append(f"{lead}- {{}}\n")
        lead = pad


def save_spec(spec: VideoSpec, path: str | Path) -> None:
    path = Path(path)
    data = spec.to_yaml().encode()  # ASCII: non-ASCII characters are written escaped
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:  # the folder usually exists: one system call less per file than mkdir(exist_ok=True)
        file = open(tmp, "wb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(tmp, "wb")  # noqa: SIM115
    with file:
        file.write(data)
    tmp.replace(path)


# --- validation -------------------------------------------------------------------------------


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


def _parse_render(data: Any) -> RenderSettings:
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
    out: dict[str, Any] = dict(_OBJECT_EXTRA_DEFAULTS)
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


def _parse_spec(data: Any) -> VideoSpec:
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
        render=_parse_render(d["render"]),
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
