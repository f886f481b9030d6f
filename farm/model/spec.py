"""The video spec: a versioned, pure-data description of one video (its validation:
farm/model/validate.py; its YAML: farm/model/spec_yaml.py).

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
from pathlib import Path
from typing import Any

import numpy as np

from farm.model.spec_yaml import MAPPINGS, write_yaml

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


RENDER_EXTRA_DEFAULTS = {"outputs": DEFAULT_OUTPUTS, "depth_format": "png16", "flow_format": "png16"}
OBJECT_EXTRA_DEFAULTS = {"library": None, "file": None, "digest": None, "mesh_scale": 1.0,
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
        byte for byte (farm/model/spec_yaml.py)."""
        return write_yaml(self.__dict__, self.to_dict)

    def digest(self) -> str:
        """Stable content hash: sha256 of the canonical JSON (fields in declaration order)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def frame_times(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.frames) if self.frames > 1 else np.zeros(1)


def _plain(value: Any) -> Any:
    if isinstance(value, RenderSettings):
        return {k: v for k, v in value.__dict__.items() if k not in RENDER_EXTRA_DEFAULTS
                or (tuple(v) if isinstance(v, list) else v) != RENDER_EXTRA_DEFAULTS[k]}
    if isinstance(value, ObjectSpec):
        return {k: v for k, v in value.__dict__.items() if k not in OBJECT_EXTRA_DEFAULTS
                or v != OBJECT_EXTRA_DEFAULTS[k]}
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


MAPPINGS.update({VideoSpec: vars, CameraSpec: vars, LightSpec: vars, BackgroundSpec: vars,
                 RenderSettings: _plain, ObjectSpec: _plain})


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
