"""Asset health check: find meshes and images that would fail or poison renders.

Meshes are parsed as OBJ text the way Blender's importer reads it (no Blender). Errors deny a
model: unreadable, empty, faces pointing at missing vertices, non-finite coordinates, absurd size,
a missing/unreadable ``map_Kd`` image, or bounds far from ShapeNet's convention in a library that
declares its meshes normalised. Warnings are only reported: faces with fewer than three vertices,
``l`` elements, a missing material library, bounds far from the convention when the renderer
normalises them. Images must decode and stay below a sane pixel count. Errors become a denylist
that spec generation honours (``--denylist`` / ``FARM_DENYLIST``).

Other formats (a manifest library's GLB/glTF, PLY, STL; ``farm.assets.formats``) get the same
caps from their structure: a GLB's chunks and buffer sizes, its embedded textures' sizes, face
counts from headers and accessors; a broken file is an error naming what is broken.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

from PIL import Image

from farm.assets.formats import FormatError, mesh_format, mesh_stats
from farm.assets.library import (
    DECLARATION_FILE,
    MIN_DIAGONAL,
    AssetError,
    AssetLibrary,
    ModelInfo,
    check_spec_assets,
    resolve_under,
)
from farm.assets.manifest import file_digest

MAX_OBJ_BYTES = 512 * 2**20
MAX_FACES = 3_000_000
MAX_IMAGE_PIXELS = 64 * 2**20  # e.g. 8192 x 8192
DIAGONAL_RANGE = (0.5, 2.0)  # bounding-box diagonals near ShapeNet's convention (1)
MAX_CENTER_OFFSET = 0.5  # bounding-box centre's distance from the origin, in diagonals


@dataclass(frozen=True)
class Problem:
    item: str  # model id "<synset>/<model>" or image path relative to the textures root
    reason: str
    warning: bool = False  # reported only, never denied


def check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                return f"absurdly large image {width}x{height}"
            img.verify()
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable image: {exc}"
    return None


class MeshReport(NamedTuple):
    error: str | None  # the mesh is denied
    warnings: list[str]  # reported only
    materials: list[str]  # material libraries named by ``mtllib`` lines


def _obj_lines(f: BinaryIO) -> Iterator[tuple[int, list[bytes]]]:
    """(line number, whitespace-split tokens) of the non-blank lines of an OBJ file, read as bytes
    (any encoding) and with backslash continuations joined (numbered by their first line), as
    Blender's importer reads them."""
    pending: list[bytes] = []
    for number, raw in enumerate(f, 1):
        line = raw.rstrip(b"\r\n")
        if line.endswith(b"\\"):
            pending.append(line[:-1])
            continue
        tokens = b" ".join([*pending, line]).split()
        if tokens:
            yield number - len(pending), tokens
        pending = []


def _vertex_error(tokens: list[bytes]) -> str | None:
    try:
        coords = [float(x) for x in tokens[1:4]]
    except ValueError:
        coords = []
    if len(coords) < 3 or not all(math.isfinite(c) for c in coords):
        return "bad vertex (expected three finite coordinates)"
    return None


def _face_refs(tokens: list[bytes], vertices: int) -> tuple[list[int], str | None]:
    """Vertex indices of an ``f`` line (``v``, ``v/vt``, ``v//vn``, ``v/vt/vn``; negative ones are
    relative) and the error if one is not a vertex defined before it."""
    try:
        refs = [int(tok.split(b"/")[0]) for tok in tokens[1:]]
    except ValueError:
        return [], "face has a vertex index that is not an integer"
    for ref in refs:
        if ref == 0 or ref > vertices or ref < -vertices:
            return refs, (f"face refers to a missing vertex ({ref}; {vertices} defined before "
                          "this line)")
    return refs, None


def _counted(lines: list[int], what: str, consequence: str) -> str:
    return f"{len(lines)} {what} (first on line {lines[0]}): {consequence}"


def check_obj(path: Path) -> MeshReport:
    """Errors and warnings of an OBJ file, parsed as text the way Blender's importer reads it.

    Blender drops faces with fewer than three vertices and does not render ``l`` elements:
    warnings. A face referring to a vertex not defined before it (Blender drops it too), a bad
    vertex, no face at all or an absurd size: errors.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        return MeshReport(f"unreadable mesh: {exc.strerror}", [], [])
    if size > MAX_OBJ_BYTES:
        return MeshReport(f"absurdly large mesh file ({size / 2**20:.0f} MB)", [], [])
    vertices = faces = 0
    short: list[int] = []
    edges: list[int] = []
    materials: list[str] = []
    try:
        with open(path, "rb") as f:
            for number, tokens in _obj_lines(f):
                key, error = tokens[0], None
                if key == b"v":
                    error = _vertex_error(tokens)
                    vertices += 1
                elif key == b"f":
                    refs, error = _face_refs(tokens, vertices)
                    if len(refs) < 3:
                        short.append(number)
                    else:
                        faces += 1
                elif key == b"l":
                    edges.append(number)
                elif key == b"mtllib":
                    materials.append(b" ".join(tokens[1:]).decode(errors="replace").strip('"'))
                if error:
                    return MeshReport(f"line {number}: {error}", [], materials)
                if faces > MAX_FACES:
                    return MeshReport(f"absurdly large mesh (over {MAX_FACES} faces)", [], materials)
    except OSError as exc:
        return MeshReport(f"unreadable mesh: {exc}", [], materials)
    warnings = []
    if short:
        warnings.append(_counted(short, "faces with fewer than three vertices",
                                 "Blender drops them"))
    if edges:
        warnings.append(_counted(edges, "line elements ('l')", "not rendered"))
    if faces == 0:
        return MeshReport("empty mesh (no faces with three or more vertices)", warnings, materials)
    return MeshReport(None, warnings, materials)


def _material_files(folder: Path, named: list[str]) -> tuple[list[Path], list[str]]:
    """The material libraries Blender reads for ``folder``'s OBJ (those its ``mtllib`` lines name,
    then ``model_normalized.mtl``, the OBJ's own name), and warnings for the missing ones."""
    fallback = folder / "model_normalized.mtl"
    files, warnings = [], []
    for name in named:
        path = folder / name
        if path.is_file():
            files.append(path.resolve())
        elif not fallback.is_file():
            warnings.append(f"material library {name!r} not found: Blender renders its default "
                            "material")
    if fallback.is_file() and fallback.resolve() not in files:
        files.append(fallback.resolve())
    return files, warnings


def _find_image(folder: Path, name: str) -> Path | None:
    """Where Blender's importer finds a ``map_Kd`` image: the path as written (relative to the
    .mtl's folder), then its base name (``/`` or ``\\`` separated) in that folder."""
    for path in (folder / name, folder / re.split(r"[\\/]", name)[-1]):
        if path.is_file():
            return path
    return None


def _texture_error(mtl: Path) -> str | None:
    """The first ``map_Kd`` image of ``mtl`` that is missing (Cycles renders it magenta) or
    unreadable."""
    try:
        lines = mtl.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"unreadable material file {mtl.name}: {exc.strerror}"
    for line in lines:
        if line.strip().startswith("map_Kd") and len(line.split(None, 1)) == 2:
            name = line.split(None, 1)[1].strip()
            image = _find_image(mtl.parent, name)
            problem = check_image(image) if image else "missing"
            if problem:
                return f"texture {name}: {problem}"
    return None


def convention_problem(model: ModelInfo) -> str | None:
    """How ``model``'s bounds are far from ShapeNet's convention (centred, unit diagonal)."""
    if model.bounds is None:
        return None
    diagonal, offset = model.diagonal, model.center_offset
    if diagonal < MIN_DIAGONAL:
        return "degenerate bounding box (zero diagonal)"
    if not DIAGONAL_RANGE[0] <= diagonal <= DIAGONAL_RANGE[1]:
        return (f"bounding-box diagonal {diagonal:.3g} is outside [{DIAGONAL_RANGE[0]}, "
                f"{DIAGONAL_RANGE[1]}] (ShapeNet's convention: 1)")
    if offset > MAX_CENTER_OFFSET * diagonal:
        return (f"bounding-box centre is {offset:.3g} from the origin, more than "
                f"{MAX_CENTER_OFFSET} of its diagonal {diagonal:.3g}")
    return None


def _convention(model: ModelInfo, normalized: bool) -> Problem | None:
    """Far from the convention: a warning when the renderer normalises the library's meshes, an
    error when the library declares them normalised (or the box cannot be normalised)."""
    problem = convention_problem(model)
    if problem is None:
        return None
    declared = "the manifest" if model.library else DECLARATION_FILE
    if normalized:
        return Problem(model.key, f"{problem}, but the library declares its meshes normalised "
                                  f"({declared})")
    if model.diagonal < MIN_DIAGONAL:
        return Problem(model.key, f"{problem}: cannot be normalised")
    return Problem(model.key, f"{problem}: normalised at render time", warning=True)


def _stats_report(path: Path) -> MeshReport:
    """A non-OBJ mesh's error (broken structure, over the face cap, a texture over the pixel cap
    or unreadable) and warnings."""
    try:
        stats = mesh_stats(path)
    except (FormatError, OSError) as exc:
        return MeshReport(str(exc), [], [])
    error = None
    if stats.faces == 0:
        error = "empty mesh (no triangles)"
    elif stats.faces > MAX_FACES:
        error = f"absurdly large mesh ({stats.faces} faces, over {MAX_FACES})"
    for name, *size in stats.images:
        if error is None and len(size) == 1:
            error = f"texture {name}: {size[0]}"
        elif error is None and size[0] * size[1] > MAX_IMAGE_PIXELS:
            error = f"texture {name}: absurdly large image {size[0]}x{size[1]}"
    return MeshReport(error, stats.warnings, [])


def check_model(models_root: Path, model: ModelInfo, normalized: bool = False) -> list[Problem]:
    """The error (at most one: the model is denied) and the warnings of one model."""
    if model.path:  # a manifest library's model: its own file, any format
        path, normalized = models_root / model.path, bool(model.normalized)
    else:
        path = models_root / model.id / "models" / "model_normalized.obj"
    size = path.stat().st_size if path.is_file() else 0
    if not path.is_file():
        report = MeshReport(f"mesh file not found: {path}", [], [])
    elif size > MAX_OBJ_BYTES:
        report = MeshReport(f"absurdly large mesh file ({size / 2**20:.0f} MB)", [], [])
    elif mesh_format(path) == "OBJ":
        report = check_obj(path)
    else:
        report = _stats_report(path)
    error = report.error
    files, warnings = (_material_files(path.parent, report.materials)
                       if path.suffix.lower() == ".obj" else ([], []))
    for mtl in files:
        error = error or _texture_error(mtl)
    problems = [Problem(model.key, w, warning=True) for w in report.warnings + warnings]
    convention = None if report.error else _convention(model, normalized)
    if convention and convention.warning:
        problems.append(convention)
    elif convention:
        error = error or convention.reason
    return ([Problem(model.key, error)] if error else []) + problems


def _check(job: tuple[Path, ModelInfo | str], normalized: bool) -> list[Problem]:
    root, item = job
    if isinstance(item, ModelInfo):
        return check_model(root, item, normalized)
    reason = check_image(root / item)
    return [Problem(item, reason)] if reason else []


def check_library(library: AssetLibrary, workers: int | None = None, progress=None
                  ) -> list[Problem]:
    """Check every model, texture and background image in parallel processes: errors (the
    denylist) and warnings (``Problem.warning``)."""
    jobs: list[tuple[Path, ModelInfo | str]] = [(library.models_root, m) for m in library.models]
    jobs += [(library.textures_root, t) for t in library.textures + library.skyboxes]
    problems = []
    check = partial(_check, normalized=library.declaration.normalized)
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for found in pool.map(check, jobs, chunksize=16):
            problems += found
            if progress:
                progress(1)
    return problems


def write_denylist(problems: list[Problem], path: Path) -> None:
    lines = ["# bl30k-farm denylist: assets spec generation skips (python -m farm assets check)"]
    lines += [f"{p.item}  # {p.reason}" for p in sorted(problems, key=lambda p: p.item)
              if not p.warning]
    path.write_text("\n".join(lines) + "\n")


# --- Before a render: the same caps, cheaply, on the files of one spec ----------------------


def image_size_problem(path: Path) -> str | None:
    """The pixel cap from the image's header alone (no decoding). An image Pillow cannot read
    (a format it lacks, such as OpenEXR, or a broken file) is left to Blender, which reads more
    formats and says clearly what it cannot."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        return f"image over the cap of {MAX_IMAGE_PIXELS} pixels ({exc})"
    except (OSError, SyntaxError, ValueError):
        return None
    if width * height > MAX_IMAGE_PIXELS:
        return f"image of {width}x{height} pixels, over the cap of {MAX_IMAGE_PIXELS} pixels"
    return None


def _face_lines_and_mtllibs(path: Path, chunk: int = 16 * 2**20) -> tuple[int, list[str]]:
    """Face lines (``f ...``) and ``mtllib`` names of an OBJ, read in chunks of whole lines."""
    faces, named, rest = 0, [], b"\n"
    with open(path, "rb") as f:
        while block := f.read(chunk):
            head, _, tail = (rest + block).rpartition(b"\n")
            faces += head.count(b"\nf ")
            named += [m.group(1).decode(errors="replace").strip().strip('"')
                      for m in re.finditer(rb"^mtllib[ \t]+(.+)$", head, re.M)]
            rest = b"\n" + tail
    faces += rest.startswith(b"\nf ")
    named += [m.group(1).decode(errors="replace").strip().strip('"')
              for m in re.finditer(rb"^mtllib[ \t]+(.+)$", rest, re.M)]
    return faces, named


def mesh_size_problem(path: Path) -> str | None:
    """The byte and face caps of an OBJ (face lines counted, nothing parsed), and the pixel cap
    of every ``map_Kd`` image its material libraries name; for the other formats the caps from
    their structure (a broken GLB, say, is a problem too)."""
    size = path.stat().st_size
    if size > MAX_OBJ_BYTES:
        return f"mesh file of {size / 2**20:.0f} MB, over the cap of {MAX_OBJ_BYTES >> 20} MB"
    try:
        kind = mesh_format(path)
    except FormatError as exc:
        return str(exc)
    if kind != "OBJ":
        return _stats_report(path).error
    faces, named = _face_lines_and_mtllibs(path)
    if faces > MAX_FACES:
        return f"mesh of about {faces} faces, over the cap of {MAX_FACES}"
    for mtl in _material_files(path.parent, named)[0]:
        for line in mtl.read_text(errors="replace").splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] == "map_Kd":
                image = _find_image(mtl.parent, parts[1].strip())
                problem = image and image_size_problem(image)
                if problem:
                    return f"texture {parts[1].strip()}: {problem}"
    return None


def check_spec_files(spec, models_root: Path, textures_root: Path) -> None:
    """Before Blender loads anything of ``spec``: every file exists (``check_spec_assets``) and
    is within the caps a hostile or broken asset would break (bytes and faces of a mesh, pixels
    of an image), so it fails with a reason instead of exhausting the worker's memory."""
    check_spec_assets(spec, models_root, textures_root)
    for i, obj in enumerate(spec.objects):
        label = f"objects[{i}] model {obj.model}"
        path = resolve_under(models_root, obj.obj_path, label)
        try:
            problem = mesh_size_problem(path)
            if problem is None and obj.digest and file_digest(path) != obj.digest:
                problem = (f"the file's sha256 differs from the spec's {obj.digest[:12]}... (the "
                           "library changed since the spec was made: index it again and "
                           "generate new specs)")
        except OSError as exc:
            problem = f"unreadable: {exc.strerror or exc}"
        if problem:
            raise AssetError(f"{label} ({path}): {problem}")
        if obj.texture:
            texture = resolve_under(textures_root, obj.texture, f"objects[{i}] texture")
            problem = image_size_problem(texture)
            if problem:
                raise AssetError(f"objects[{i}] texture {texture}: {problem}")
    background = resolve_under(textures_root, spec.background.image, "background image")
    problem = image_size_problem(background)
    if problem:
        raise AssetError(f"background image {background}: {problem}")
