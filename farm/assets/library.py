"""Asset library: ShapeNetCore.v2 models plus texture/skybox image folders, indexed once.

Layouts (the same as the original BL30K generator's inputs):
- models root: ``<synset>/<model>/models/model_normalized.obj`` (+ ``.mtl``, images, and
  ShapeNet's ``model_normalized.json`` bounding box), ``taxonomy.json`` for category names;
- textures root: ``texture/<class>/<image>`` and ``skybox/<class>/<image>``.

A models root may hold a declaration, ``farm_library.yaml`` (see ``LibraryDeclaration``): whether its
meshes already follow ShapeNet's convention (centred bounding box, unit diagonal) and which axis is
up in its files. Undeclared, every mesh is normalised at render time and read as Y-up.

A models root may instead hold a manifest (``farm_manifest.jsonl``/``.csv``: one library of any
mesh formats, see ``farm.assets.manifest``) or ``farm_libraries.yaml`` (several libraries,
ShapeNet-layout trees or manifests, with weights and a category filter; ``read_libraries``).
Their models carry their library, file and digest into the spec (docs/assets.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from farm.assets import formats, gltf
from farm.assets.errors import AssetError
from farm.assets.formats import mesh_format, obj_bounds
from farm.assets.manifest import ManifestRow, file_digest, find_manifest, read_manifest
from farm.model.spec import LIBRARY_RE, UP_AXES
from farm.settings import current

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tga", ".tif", ".tiff", ".exr", ".hdr"}
INDEX_VERSION = 3
DECLARATION_FILE = "farm_library.yaml"
NORMALIZED_RADIUS = 0.5  # bounding sphere of a unit-diagonal box centred on the origin
MIN_DIAGONAL = 1e-9  # a mesh whose bounding box is (nearly) a point cannot be normalised
LIBRARIES_FILE = "farm_libraries.yaml"


@dataclass(frozen=True)
class ModelInfo:
    id: str  # "<synset>/<model>"
    synset: str
    category: str
    mapped: bool  # the .mtl has a map_Kd (the model is texture mapped)
    bounds: list[list[float]] | None  # [min, max] corners in the file's axes and units; None: unknown
    # A manifest library's model (None for a ShapeNet-layout root's): see ObjectSpec
    library: str | None = None
    path: str | None = None  # mesh file relative to the models root
    digest: str | None = None  # sha256 of the file
    up_axis: str | None = None
    normalized: bool | None = None
    scale: float = 1.0
    license: str | None = None

    @property
    def key(self) -> str:
        """The model's name in denylists and checks: ``<library>:<id>`` or the ShapeNet id."""
        return f"{self.library}:{self.id}" if self.library else self.id

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
    up_axis: str = "Y"  # up axis of the mesh files: Y (ShapeNet) or Z
    replace_textures: bool = True  # false: never replace the models' own materials


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
    unknown = sorted(str(k) for k in data if k not in ("normalized", "up_axis",
                                                        "replace_textures"))
    if unknown:
        raise AssetError(f"library declaration {path}: unknown key(s) {', '.join(unknown)} "
                         "(known: normalized, up_axis, replace_textures)")
    declared = LibraryDeclaration(**data)
    for key in ("normalized", "replace_textures"):
        if not isinstance(getattr(declared, key), bool):
            raise AssetError(f"library declaration {path}: {key} must be true or false, "
                             f"got {getattr(declared, key)!r}")
    if declared.up_axis not in UP_AXES:
        raise AssetError(f"library declaration {path}: up_axis must be Y or Z, "
                         f"got {declared.up_axis!r}")
    return declared


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
    """FARM_CACHE_DIR, else ``$XDG_CACHE_HOME/bl30k-farm``."""
    return current().cache_dir


def resolve_under(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` as an existing file, refusing anything that escapes ``root``."""
    root = root.resolve()
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise AssetError(f"{what} {rel!r} escapes its root {root}")
    if not path.is_file():
        raise AssetError(f"{what} {rel!r} not found: {path}")
    return path


def read_taxonomy(models_root: Path) -> dict[str, str]:
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
    """Modification times that change when models or images are added or removed; for manifest
    libraries also each library file's time and size."""
    tops = [models_root, textures_root / "texture", textures_root / "skybox"]
    dirs = [d for d in tops if d.is_dir()]
    dirs += [p for d in list(dirs) for p in d.iterdir() if p.is_dir()]
    stamp = sorted([str(p), p.stat().st_mtime_ns] for p in dirs)
    for source in _sources(models_root):
        folder = models_root / source.path
        if not find_manifest(folder):  # a ShapeNet-layout tree
            stamp += sorted([str(p), p.stat().st_mtime_ns] for p in [folder, *folder.iterdir()]
                            if p.is_dir())
        for f in (models_root / LIBRARIES_FILE, *(folder / n for n in (
                DECLARATION_FILE, "farm_manifest.jsonl", "farm_manifest.csv"))):
            if f.is_file():
                stamp.append([str(f), f.stat().st_mtime_ns, f.stat().st_size])
    return stamp


# --- libraries: several model collections behind one models root --------------------------


@dataclass(frozen=True)
class LibrarySource:
    """One library of a models root: a folder (relative to the root) holding a manifest or a
    ShapeNet-layout tree, its share of the sampled objects and its texture policy."""

    name: str
    path: str = "."
    weight: float = 1.0
    replace_textures: bool | None = None  # None: the folder's farm_library.yaml (default true)


@dataclass(frozen=True)
class Pool:
    name: str
    weight: float
    replace_textures: bool
    models: list[ModelInfo]


def read_libraries(models_root: Path
                   ) -> tuple[list[LibrarySource], list[str] | dict[str, float] | None] | None:
    """``farm_libraries.yaml`` of a models root: its libraries and category filter (a list, or
    a mapping of category weights; None: every category), or None without such a file.
    Strict: unknown keys, bad names, weights or paths are errors naming the key."""
    path = models_root / LIBRARIES_FILE
    if not path.is_file():
        return None
    where = f"library list {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AssetError(f"cannot read {where}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or set(data) - {"libraries", "categories"}:
        raise AssetError(f"{where}: expected a mapping with libraries (and categories)")
    categories = data.get("categories")
    if isinstance(categories, dict):  # category -> weight: categories drawn first
        for name, weight in categories.items():
            if not isinstance(name, str) or isinstance(weight, bool) or not isinstance(
                    weight, int | float) or not (math.isfinite(weight) and weight > 0):
                raise AssetError(f"{where}: categories.{name}: expected a positive weight, "
                                 f"got {weight!r}")
        categories = {name: float(w) for name, w in categories.items()}
    elif categories is not None and (not isinstance(categories, list) or not all(
            isinstance(c, str) for c in categories)):
        raise AssetError(f"{where}: categories must be a list of names or a mapping of "
                         "name: weight")
    entries = data.get("libraries")
    if not isinstance(entries, list) or not entries:
        raise AssetError(f"{where}: libraries must be a non-empty list")
    sources, names = [], set()
    for i, entry in enumerate(entries):
        key = f"{where}: libraries[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "path", "weight",
                                                        "replace_textures"}:
            raise AssetError(f"{key}: expected a mapping of name, path, weight, replace_textures")
        name = entry.get("name")
        if not isinstance(name, str) or not LIBRARY_RE.match(name) or name in names:
            raise AssetError(f"{key}.name: expected a new name of 1-64 letters, digits, '_', '.' "
                             f"or '-', got {name!r}")
        names.add(name)
        rel = entry.get("path", name)
        if not isinstance(rel, str) or rel.startswith(("/", "~")) or ".." in Path(rel).parts:
            raise AssetError(f"{key}.path: expected a folder relative to the models root, "
                             f"got {rel!r}")
        if not (models_root / rel).is_dir():
            raise AssetError(f"{key}.path: {models_root / rel} is not a directory")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
                math.isfinite(weight) and weight > 0):
            raise AssetError(f"{key}.weight: expected a positive number, got {weight!r}")
        replace = entry.get("replace_textures")
        if replace is not None and not isinstance(replace, bool):
            raise AssetError(f"{key}.replace_textures: expected true or false, got {replace!r}")
        sources.append(LibrarySource(name, rel, float(weight), replace))
    return sources, categories


def _sources(models_root: Path) -> list[LibrarySource]:
    """The libraries of a root: its list, a lone manifest, or none (a ShapeNet-layout root)."""
    listed = read_libraries(models_root)
    if listed is not None:
        return listed[0]
    if find_manifest(models_root):
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in models_root.name)[:64]
        return [LibrarySource(name if LIBRARY_RE.match(name) else "library")]
    return []


def shapenet_rows(folder: Path) -> list[ManifestRow]:
    """A ShapeNet-layout tree as manifest rows (its taxonomy and declaration)."""
    taxonomy, declared = read_taxonomy(folder), read_declaration(folder)
    rows = []
    for obj in sorted(folder.glob("*/*/models/model_normalized.obj")):
        synset, model = obj.parts[-4], obj.parts[-3]
        rows.append(ManifestRow(f"{synset}/{model}", taxonomy.get(synset, synset),
                                obj.relative_to(folder).as_posix(), declared.up_axis, 1.0,
                                declared.normalized, synset=synset))
    return rows


def _mesh_mapped(path: Path) -> bool:
    """The model has a texture of its own (a ``map_Kd`` in a material library the OBJ names or
    that shares its name, a glTF base colour texture)."""
    kind = mesh_format(path)
    if kind == "OBJ":
        named = re.findall(rb"^mtllib[ \t]+(.+?)\s*$", path.read_bytes(), re.M)
        mtls = [path.parent / n.decode(errors="replace").strip('"') for n in named]
        for mtl in dict.fromkeys(m for m in [*mtls, path.with_suffix(".mtl")] if m.is_file()):
            if "map_Kd" in mtl.read_text(errors="replace"):
                return True
        return False
    if kind in ("GLB", "glTF"):
        try:
            return gltf.summary(gltf.open_gltf(path))[2]
        except (OSError, ValueError):  # broken: the check denies it
            return False
    return False


def _row_model(models_root: Path, source: LibrarySource, folder: Path, row: ManifestRow,
               declared: LibraryDeclaration, where: str) -> ModelInfo:
    file = folder / row.path
    if not file.is_file():
        raise AssetError(f"{where}: model {row.id!r}: file {row.path!r} not found ({file})")
    if file.name == "model_normalized.obj":
        bounds = _json_bounds(file.with_suffix(".json")) or formats.bounds(file)
    else:
        bounds = formats.bounds(file)
    return ModelInfo(row.id, row.synset or row.category, row.category, _mesh_mapped(file),
                     bounds, source.name, posixpath.normpath(f"{source.path}/{row.path}"),
                     row.sha256 or file_digest(file),
                     row.up_axis or declared.up_axis,
                     declared.normalized if row.normalized is None else row.normalized,
                     row.scale, row.license)


def _library_models(models_root: Path, source: LibrarySource) -> list[ModelInfo]:
    folder = (models_root / source.path).resolve()
    manifest = find_manifest(folder)
    rows = read_manifest(manifest) if manifest else shapenet_rows(folder)
    if not rows:
        raise AssetError(f"library {source.name!r} at {folder}: no manifest "
                         "(farm_manifest.jsonl/.csv) and no ShapeNet-layout models")
    declared = read_declaration(folder)
    where = f"manifest {manifest}" if manifest else f"library {source.name!r} ({folder})"
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda r: _row_model(models_root, source, folder, r, declared,
                                                  where), rows))


@dataclass
class AssetLibrary:
    models_root: Path
    textures_root: Path
    models: list[ModelInfo]
    textures: list[str]
    skyboxes: list[str]
    declaration: LibraryDeclaration = LibraryDeclaration()
    pools: list[Pool] = field(default_factory=list)  # manifest libraries; [] for a ShapeNet root
    category_weights: dict[str, float] = field(default_factory=dict)  # {}: libraries drawn first

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
            lib.models = [m for m in lib.models if m.key not in denylist]
            lib.textures = [t for t in lib.textures if t not in denylist]
            lib.skyboxes = [s for s in lib.skyboxes if s not in denylist]
        lib._make_pools()
        if not lib.models:
            raise AssetError(f"no usable models under {models_root}")
        return lib

    def _make_pools(self) -> None:
        sources = _sources(self.models_root)
        if not sources:
            return
        listed = read_libraries(self.models_root)
        categories = listed[1] if listed else None
        if categories is not None:
            self.models = [m for m in self.models if m.category in categories]
        if isinstance(categories, dict):
            present = {m.category for m in self.models}
            self.category_weights = {c: w for c, w in categories.items() if c in present}
        for source in sources:
            replace = source.replace_textures
            if replace is None:
                replace = read_declaration(self.models_root / source.path).replace_textures
            members = [m for m in self.models if m.library == source.name]
            if members:
                self.pools.append(Pool(source.name, source.weight, replace, members))

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
                "version": INDEX_VERSION, "stamp": stamp, "models": [
                    {k: v for k, v in asdict(m).items() if v != _MODEL_DEFAULTS.get(k, ...)}
                    for m in lib.models],
                "textures": lib.textures, "skyboxes": lib.skyboxes}))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only cache only costs a rescan next time
        return lib

    @classmethod
    def _scan(cls, models_root: Path, textures_root: Path) -> AssetLibrary:
        sources = _sources(models_root)
        if sources:
            models = [m for s in sources for m in _library_models(models_root, s)]
            return cls(models_root, textures_root, models, _list_images(textures_root, "texture"),
                       _list_images(textures_root, "skybox"))
        taxonomy = read_taxonomy(models_root)
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

    def model(self, model_id: str, library: str | None = None) -> ModelInfo:
        for m in self.models:
            if m.id == model_id and m.library == library:
                return m
        raise AssetError(f"model {model_id!r} is not in the library at {self.models_root}")

    def replaces_textures(self, model: ModelInfo) -> bool:
        """Whether sampling may replace ``model``'s materials (its library's policy)."""
        for pool in self.pools:
            if pool.name == model.library:
                return pool.replace_textures
        return self.declaration.replace_textures

    def geometry(self, model: ModelInfo) -> dict:
        """The ObjectSpec fields that tell the renderer how to place ``model``: whether to
        normalise it, its up axis, and the bounding-sphere radius of the mesh it renders (and,
        for a manifest library's model, its library, file, digest, scale and licence)."""
        if model.library is None:
            normalize = not self.declaration.normalized
            radius = NORMALIZED_RADIUS if normalize else round(model.radius, 6)
            return {"normalize": normalize, "up_axis": self.declaration.up_axis, "radius": radius}
        normalize = not model.normalized
        radius = (NORMALIZED_RADIUS if normalize else model.radius) * model.scale
        return {"normalize": normalize, "up_axis": model.up_axis or "Y",
                "radius": round(radius, 6), "library": model.library, "file": model.path,
                "digest": model.digest, "mesh_scale": model.scale, "license": model.license}

    @cached_property
    def category_holders(self) -> dict[str, list[tuple[int, list[ModelInfo]]]]:
        """Per weighted category, the (pool index, its models of the category) holding it."""
        out: dict[str, list[tuple[int, list[ModelInfo]]]] = {}
        for k, pool in enumerate(self.pools):
            by: dict[str, list[ModelInfo]] = {}
            for m in pool.models:
                by.setdefault(m.category, []).append(m)
            for category in self.category_weights:
                if category in by:
                    out.setdefault(category, []).append((k, by[category]))
        return out

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the asset lists: specs are reproducible only against the same lists."""
        h = hashlib.sha256()
        models = [m.id if m.library is None else f"{m.library}:{m.id}:{m.digest}"
                  for m in self.models]
        for item in models + self.textures + self.skyboxes:
            h.update(item.encode() + b"\n")
        for pool in self.pools if len(self.pools) > 1 else []:
            h.update(f"pool {pool.name} {pool.weight!r} {pool.replace_textures}\n".encode())
        for category, weight in self.category_weights.items():
            h.update(f"category {category} {weight!r}\n".encode())
        return h.hexdigest()[:16]


_MODEL_DEFAULTS = {k: v for k, v in asdict(ModelInfo("", "", "", False, None)).items()
                   if k in ("library", "path", "digest", "up_axis", "normalized", "scale",
                            "license")}


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
