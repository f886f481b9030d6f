"""Asset library: ShapeNetCore.v2 models plus texture/skybox image folders, indexed once.

Layouts (the same as the original BL30K generator's inputs):
- models root: ``<synset>/<model>/models/model_normalized.obj`` (+ ``.mtl``, images, and
  ShapeNet's ``model_normalized.json`` bounding box), ``taxonomy.json`` for category names;
- textures root: ``texture/<class>/<image>`` and ``skybox/<class>/<image>``.

A models root may hold a declaration, ``farm_library.yaml`` (see ``LibraryDeclaration``): whether its
meshes already follow ShapeNet's convention (centred bounding box, unit diagonal) and which axis is
up in its files. Undeclared, every mesh is normalised at render time and read as Y-up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from farm.model.spec import UP_AXES
from farm.settings import text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tga", ".tif", ".tiff", ".exr", ".hdr"}
INDEX_VERSION = 3
DECLARATION_FILE = "farm_library.yaml"
NORMALIZED_RADIUS = 0.5  # bounding sphere of a unit-diagonal box centred on the origin
MIN_DIAGONAL = 1e-9  # a mesh whose bounding box is (nearly) a point cannot be normalised
_VERTEX_RE = re.compile(rb"^[ \t]*v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.M)


class AssetError(RuntimeError):
    """A model, texture or asset root is missing or unreadable."""


@dataclass(frozen=True)
class ModelInfo:
    id: str  # "<synset>/<model>"
    synset: str
    category: str
    mapped: bool  # the .mtl has a map_Kd (the model is texture mapped)
    bounds: list[list[float]] | None  # [min, max] corners in the file's axes and units; None: unknown

    @property
    def radius(self) -> float:
        """Bounding-sphere radius around the file's origin (its farthest bounding-box corner)."""
        if self.bounds is None:
            return NORMALIZED_RADIUS
        return math.hypot(*(max(abs(lo), abs(hi)) for lo, hi in zip(*self.bounds, strict=True)))

    @property
    def diagonal(self) -> float:
        return math.dist(*self.bounds) if self.bounds else 0.0

    @property
    def center_offset(self) -> float:
        """Distance of the bounding-box centre from the file's origin."""
        return math.hypot(*((lo + hi) / 2 for lo, hi in zip(*self.bounds, strict=True))
                          ) if self.bounds else 0.0


@dataclass(frozen=True)
class LibraryDeclaration:
    """``<models root>/farm_library.yaml``; a missing file means the defaults."""

    normalized: bool = False  # true: meshes already follow ShapeNet's convention; render them as is
    up_axis: str = "Y"  # up axis of the OBJ files: Y (ShapeNet) or Z


def read_declaration(models_root: Path) -> LibraryDeclaration:
    """The library declaration of ``models_root``, parsed strictly (unknown keys are errors)."""
    path = models_root / DECLARATION_FILE
    if not path.is_file():
        return LibraryDeclaration()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AssetError(f"cannot read library declaration {path}: {str(exc).splitlines()[0]}"
                         ) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise AssetError(f"library declaration {path}: expected a mapping with normalized, up_axis")
    unknown = sorted(str(k) for k in data if k not in ("normalized", "up_axis"))
    if unknown:
        raise AssetError(f"library declaration {path}: unknown key(s) {', '.join(unknown)} "
                         "(known: normalized, up_axis)")
    declared = LibraryDeclaration(**data)
    if not isinstance(declared.normalized, bool):
        raise AssetError(f"library declaration {path}: normalized must be true or false, "
                         f"got {declared.normalized!r}")
    if declared.up_axis not in UP_AXES:
        raise AssetError(f"library declaration {path}: up_axis must be Y or Z, "
                         f"got {declared.up_axis!r}")
    return declared


def obj_bounds(path: Path) -> list[list[float]] | None:
    """[min, max] over an OBJ's ``v`` lines, or None (unreadable, no vertex, non-finite)."""
    try:
        coords = _VERTEX_RE.findall(path.read_bytes())
        vertices = np.array(coords, dtype=np.bytes_).astype(np.float64)
    except (OSError, ValueError):
        return None
    if not len(vertices) or not np.isfinite(vertices).all():
        return None
    return [vertices.min(0).tolist(), vertices.max(0).tolist()]


def _json_bounds(path: Path) -> list[list[float]] | None:
    """ShapeNet's ``model_normalized.json`` "min"/"max" corners, or None."""
    try:
        box = json.loads(path.read_text())
        corners = [[float(c) for c in box[key]] for key in ("min", "max")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = all(len(c) == 3 and all(math.isfinite(x) for x in c) for c in corners)
    return corners if ok else None


def default_cache_dir() -> Path:
    base = text("FARM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bl30k-farm")
    return Path(base)


def resolve_under(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` as an existing file, refusing anything that escapes ``root``."""
    root = root.resolve()
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise AssetError(f"{what} {rel!r} escapes its root {root}")
    if not path.is_file():
        raise AssetError(f"{what} {rel!r} not found: {path}")
    return path


def _read_taxonomy(models_root: Path) -> dict[str, str]:
    path = models_root / "taxonomy.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {e["synsetId"]: str(e["name"]).split(",")[0] for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise AssetError(f"unreadable taxonomy {path}: {exc}") from None


def _model_info(models_root: Path, model_id: str, category: str) -> ModelInfo:
    folder = models_root / model_id / "models"
    mapped = False
    try:
        with open(folder / "model_normalized.mtl", errors="replace") as f:
            mapped = any("map_Kd" in line for line in f)
    except FileNotFoundError:
        pass
    bounds = _json_bounds(folder / "model_normalized.json") or obj_bounds(
        folder / "model_normalized.obj")
    synset = model_id.split("/")[0]
    return ModelInfo(model_id, synset, category, mapped, bounds)


def _list_images(root: Path, kind: str) -> list[str]:
    base = root / kind
    if not base.is_dir():
        raise AssetError(f"textures root {root} has no {kind}/ folder")
    out = []
    for cls in sorted(p for p in base.iterdir() if p.is_dir()):
        out += [f"{kind}/{cls.name}/{f.name}" for f in sorted(cls.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not out:
        raise AssetError(f"no images under {base}/<class>/")
    return out


def _stamp(models_root: Path, textures_root: Path) -> list[list]:
    """Modification times that change when models or images are added or removed."""
    tops = [models_root, textures_root / "texture", textures_root / "skybox"]
    dirs = [d for d in tops if d.is_dir()]
    dirs += [p for d in list(dirs) for p in d.iterdir() if p.is_dir()]
    return sorted([str(p), p.stat().st_mtime_ns] for p in dirs)


@dataclass
class AssetLibrary:
    models_root: Path
    textures_root: Path
    models: list[ModelInfo]
    textures: list[str]
    skyboxes: list[str]
    declaration: LibraryDeclaration = LibraryDeclaration()

    @classmethod
    def open(cls, models_root: str | Path, textures_root: str | Path,
             cache_dir: Path | None = None, denylist: set[str] | None = None) -> AssetLibrary:
        models_root, textures_root = Path(models_root).resolve(), Path(textures_root).resolve()
        for root, what in ((models_root, "models"), (textures_root, "textures")):
            if not root.is_dir():
                raise AssetError(f"{what} root {root} is not a directory")
        lib = cls._load_cached(models_root, textures_root, cache_dir or default_cache_dir())
        lib.declaration = read_declaration(models_root)
        if denylist:
            lib.models = [m for m in lib.models if m.id not in denylist]
            lib.textures = [t for t in lib.textures if t not in denylist]
            lib.skyboxes = [s for s in lib.skyboxes if s not in denylist]
        if not lib.models:
            raise AssetError(f"no usable models under {models_root}")
        return lib

    @classmethod
    def _load_cached(cls, models_root: Path, textures_root: Path, cache_dir: Path) -> AssetLibrary:
        key = hashlib.sha256(f"{models_root}\n{textures_root}".encode()).hexdigest()[:16]
        cache = cache_dir / f"index-{key}.json"
        stamp = _stamp(models_root, textures_root)
        try:
            data = json.loads(cache.read_text())
            if data["version"] == INDEX_VERSION and data["stamp"] == stamp:
                return cls(models_root, textures_root, [ModelInfo(**m) for m in data["models"]],
                           data["textures"], data["skyboxes"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        lib = cls._scan(models_root, textures_root)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({
                "version": INDEX_VERSION, "stamp": stamp, "models": [asdict(m) for m in lib.models],
                "textures": lib.textures, "skyboxes": lib.skyboxes}))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only cache only costs a rescan next time
        return lib

    @classmethod
    def _scan(cls, models_root: Path, textures_root: Path) -> AssetLibrary:
        taxonomy = _read_taxonomy(models_root)
        ids = []
        for synset in sorted(p for p in models_root.iterdir() if p.is_dir()):
            for model in sorted(p for p in synset.iterdir() if p.is_dir()):
                if (model / "models" / "model_normalized.obj").is_file():
                    ids.append(f"{synset.name}/{model.name}")
        with ThreadPoolExecutor(max_workers=16) as pool:
            models = list(pool.map(
                lambda i: _model_info(models_root, i, taxonomy.get(i.split("/")[0], i.split("/")[0])),
                ids))
        return cls(models_root, textures_root, models,
                   _list_images(textures_root, "texture"), _list_images(textures_root, "skybox"))

    def model(self, model_id: str) -> ModelInfo:
        for m in self.models:
            if m.id == model_id:
                return m
        raise AssetError(f"model {model_id!r} is not in the library at {self.models_root}")

    def geometry(self, model: ModelInfo) -> dict:
        """The ObjectSpec fields that tell the renderer how to place ``model``: whether to
        normalise it, its up axis, and the bounding-sphere radius of the mesh it renders."""
        normalize = not self.declaration.normalized
        radius = NORMALIZED_RADIUS if normalize else round(model.radius, 6)
        return {"normalize": normalize, "up_axis": self.declaration.up_axis, "radius": radius}

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the asset lists: specs are reproducible only against the same lists."""
        h = hashlib.sha256()
        for item in [m.id for m in self.models] + self.textures + self.skyboxes:
            h.update(item.encode() + b"\n")
        return h.hexdigest()[:16]


def read_denylist(path: str | Path | None) -> set[str]:
    """Model ids / image paths, one per line; ``#`` starts a comment."""
    if not path:
        return set()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise AssetError(f"cannot read denylist {path}: {exc.strerror}") from None
    return {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}


def check_spec_assets(spec, models_root: Path, textures_root: Path) -> None:
    """Raise AssetError naming the first model or image of ``spec`` that is missing."""
    for i, obj in enumerate(spec.objects):
        resolve_under(models_root, obj.obj_path, f"objects[{i}] model")
        if obj.texture:
            resolve_under(textures_root, obj.texture, f"objects[{i}] texture")
    resolve_under(textures_root, spec.background.image, "background image")
