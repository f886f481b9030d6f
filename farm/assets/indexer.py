"""Indexing a folder of meshes into a manifest (``python -m farm assets index DIR``).

Layouts: ShapeNet's (``<synset>/<model>/models/model_normalized.obj``, its ``taxonomy.json`` and
``farm_library.yaml``), Google Scanned Objects' (``<object>/meshes/model.obj`` with
``materials/textures/`` and ``metadata.pbtxt``; Z up, CC-BY-4.0), or any folder of meshes (id:
the path without its suffix, category: its first folder). Every mesh is read once (bounds, a
digest); what cannot be used is skipped with the reason.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from farm.assets.errors import AssetError
from farm.assets.formats import FORMATS, UNSUPPORTED, FormatError, bounds, mesh_format, mesh_stats
from farm.assets.library import read_declaration, read_taxonomy
from farm.assets.manifest import ManifestRow, file_digest

GSO_LICENSE = "CC-BY-4.0"  # Google Scanned Objects' licence


@dataclass
class IndexResult:
    layout: str  # shapenet, gso or flat
    rows: list[ManifestRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)
    companions: int = 0  # textures, materials, buffers and other files beside the meshes

    def summary(self) -> str:
        formats: dict[str, int] = {}
        for row in self.rows:
            formats[mesh_format(row.path)] = formats.get(mesh_format(row.path), 0) + 1
        cats = {r.category for r in self.rows}
        found = ", ".join(f"{n} {k}" for k, n in sorted(formats.items())) or "none"
        return (f"{self.layout} layout: {len(self.rows)} models ({found}) in {len(cats)} "
                f"categories; {len(self.skipped)} skipped; {self.companions} other files "
                "(textures, materials, metadata)")


def detect_layout(root: Path) -> str:
    if any(root.glob("*/*/models/model_normalized.obj")):
        return "shapenet"
    if any(root.glob("*/meshes/model.obj")):
        return "gso"
    return "flat"


def _gso_metadata(folder: Path) -> tuple[str | None, str | None]:
    """Category and licence from a GSO object's ``metadata.pbtxt`` (Gazebo Fuel's text
    protobuf: ``categories: "Shoe"``, ``license: "..."``), where it has them."""
    try:
        text = (folder / "metadata.pbtxt").read_text(errors="replace")
    except OSError:
        return None, None
    category = re.search(r'^\s*categories\s*:\s*"([^"]+)"', text, re.M)
    license = re.search(r'^\s*license\s*:\s*"([^"]+)"', text, re.M)
    return (category.group(1).strip().lower() if category else None,
            license.group(1).strip() if license else None)


def _geometry_problem(path: Path) -> str | None:
    """Why a mesh cannot be indexed (broken, no geometry), or None."""
    box = bounds(path)
    if box is None:
        try:
            if mesh_format(path) != "OBJ":
                mesh_stats(path)
        except (FormatError, OSError) as exc:
            return str(exc)
        return "no readable, finite vertex coordinates"
    if math.dist(*box) <= 1e-9:
        return "degenerate bounding box (zero diagonal)"
    return None


def index_folder(root: Path, layout: str = "auto", category: str | None = None,
                 license: str | None = None, up_axis: str | None = None) -> IndexResult:
    """Manifest rows for the meshes under ``root`` (paths relative to it) and what was skipped
    and why. ``category``/``license``/``up_axis`` fill what the layout does not say."""
    root = root.resolve()
    if not root.is_dir():
        raise AssetError(f"{root} is not a directory")
    layout = detect_layout(root) if layout == "auto" else layout
    result = IndexResult(layout)
    used: set[Path] = set()
    candidates: list[tuple[Path, str, str, str | None, str | None, bool | None]] = []
    if layout == "shapenet":
        taxonomy = read_taxonomy(root)
        declared = read_declaration(root)
        for obj in sorted(root.glob("*/*/models/model_normalized.obj")):
            synset, model = obj.parts[-4], obj.parts[-3]
            candidates.append((obj, f"{synset}/{model}", taxonomy.get(synset, synset),
                               declared.up_axis, license, declared.normalized))
            used.add(obj.parent.parent)
    elif layout == "gso":
        for obj in sorted(root.glob("*/meshes/model.obj")):
            folder = obj.parent.parent
            meta_category, meta_license = _gso_metadata(folder)
            candidates.append((obj, folder.name, meta_category or category or "object",
                               up_axis or "Z", license or meta_license or GSO_LICENSE, None))
            used.add(folder)
    meshes = {c[0] for c in candidates}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("farm_") or path in meshes:
            continue
        if any(u in path.parents for u in used):  # an object folder's other files
            result.companions += 1
            continue
        suffix = path.suffix.lower()
        if suffix in UNSUPPORTED:
            result.skipped.append((rel, UNSUPPORTED[suffix]))
        elif suffix in FORMATS and layout == "flat":
            parts = PurePosixPath(rel).with_suffix("").parts
            candidates.append((path, "/".join(parts), parts[0] if len(parts) > 1 else
                               category or "object", up_axis, license, None))
        elif suffix in FORMATS:
            result.skipped.append((rel, f"outside the {layout} layout"))
        else:
            result.companions += 1
    ids = [c[1] for c in candidates]
    candidates = [(c[0], c[0].relative_to(root).as_posix() if ids.count(c[1]) > 1 else c[1],
                   *c[2:]) for c in candidates]  # duck.glb beside duck.obj: ids with suffixes
    def read(path: Path) -> tuple[str | None, str | None]:  # (problem, digest)
        problem = _geometry_problem(path)
        return problem, None if problem else file_digest(path)

    with ThreadPoolExecutor(max_workers=8) as pool:  # file reads and hashing release the GIL
        found = list(pool.map(read, [c[0] for c in candidates]))
    for (path, model_id, cat, axis, lic, normalized), (problem, digest) in zip(
            candidates, found, strict=True):
        rel = path.relative_to(root).as_posix()
        if problem:
            result.skipped.append((rel, problem))
        else:
            result.rows.append(ManifestRow(model_id, cat, rel, axis, 1.0, normalized, lic,
                                           sha256=digest))
    return result
