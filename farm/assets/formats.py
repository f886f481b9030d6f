"""Mesh file formats the farm renders (OBJ, glTF/GLB, PLY, STL), read without Blender.

Per format: bounds in the file's axes and units (for the gate's bounding spheres and the
convention check), face counts and texture sizes (the caps applied before Blender loads a file)
and whether the model is texture mapped. Collada (DAE) is refused with the reason: Blender 5.0
removed its importer.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from farm.assets import gltf
from farm.model.spec import MESH_SUFFIXES

FORMATS = {".obj": "OBJ", ".glb": "GLB", ".gltf": "glTF", ".ply": "PLY", ".stl": "STL"}
assert tuple(FORMATS) == MESH_SUFFIXES
UNSUPPORTED = {
    ".dae": "Collada (DAE): Blender 5.0 removed its importer; convert it to glTF or OBJ",
    ".fbx": "FBX is not imported by the farm; convert it to glTF",
    ".blend": ".blend files are not imported by the farm; export glTF",
    ".3ds": "3DS is not imported by Blender 5.0; convert it to glTF or OBJ",
    ".usd": "USD is not imported by the farm; convert it to glTF",
    ".usdz": "USD is not imported by the farm; convert it to glTF",
}
_VERTEX_RE = re.compile(rb"^[ \t]*v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.M)
_STL_VERTEX_RE = re.compile(rb"^\s*vertex\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2",
             "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
             "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4", "double": "f8",
             "float64": "f8"}


class FormatError(ValueError):
    """A mesh file's format is unknown or unsupported, or the file is broken."""


def mesh_format(path: str | Path) -> str:
    """The format name of a mesh file by its suffix (raises FormatError with the reason)."""
    suffix = Path(path).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    reason = UNSUPPORTED.get(suffix, f"unknown mesh format {suffix or '(no suffix)'!r} "
                                     f"(supported: {', '.join(FORMATS)})")
    raise FormatError(reason)


def _finite_box(vertices: np.ndarray) -> list[list[float]] | None:
    if not len(vertices) or not np.isfinite(vertices).all():
        return None
    return [vertices.min(0).tolist(), vertices.max(0).tolist()]


def obj_bounds(path: Path) -> list[list[float]] | None:
    """[min, max] over an OBJ's ``v`` lines, or None (unreadable, no vertex, non-finite)."""
    try:
        coords = _VERTEX_RE.findall(path.read_bytes())
        vertices = np.array(coords, dtype=np.bytes_).astype(np.float64)
    except (OSError, ValueError):
        return None
    return _finite_box(vertices)


# --- STL -----------------------------------------------------------------------------------


def _stl_binary_count(path: Path) -> int | None:
    """Triangles of a binary STL (its size is 84 + 50 per triangle), None for ASCII."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(84)
    if len(head) == 84:
        (count,) = struct.unpack_from("<I", head, 80)
        if size == 84 + 50 * count:
            return count
    if head.lstrip().startswith(b"solid"):
        return None
    raise FormatError(f"broken STL: neither ASCII ('solid ...') nor binary (84 + 50 x "
                      f"triangles bytes; the file has {size})")


def stl_faces(path: Path) -> int:
    count = _stl_binary_count(path)
    if count is not None:
        return count
    return path.read_bytes().count(b"endfacet")


def stl_vertices(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (3 per triangle) and triangles of an STL file."""
    count = _stl_binary_count(path)
    if count is None:
        coords = _STL_VERTEX_RE.findall(path.read_bytes())
        verts = np.array(coords, dtype=np.bytes_).astype(np.float64).reshape(-1, 3)
    else:
        record = np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
        data = np.fromfile(path, dtype=record, count=count, offset=84)
        verts = data["v"].reshape(-1, 3).astype(np.float64)
    verts = verts[:len(verts) // 3 * 3]
    return verts, np.arange(len(verts)).reshape(-1, 3)


# --- PLY -----------------------------------------------------------------------------------


@dataclass
class PlyHeader:
    format: str  # ascii, binary_little_endian, binary_big_endian
    elements: list[tuple[str, int, list[tuple[str, str, str | None]]]] = field(
        default_factory=list)  # (name, count, [(property, type, list count type or None)])
    data_offset: int = 0
    texture: str | None = None  # "comment TextureFile <name>"

    def count(self, name: str) -> int:
        return next((n for e, n, _ in self.elements if e == name), 0)


def ply_header(path: Path) -> PlyHeader:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise FormatError("broken PLY: no 'ply' magic or 'end_header' in its first 64 KB")
    newline = head.find(b"\n", end)
    header = PlyHeader("", data_offset=newline + 1 if newline >= 0 else len(head))
    for number, line in enumerate(head[:end].decode(errors="replace").splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if words[0] == "format" and len(words) >= 2:
            header.format = words[1]
        elif words[0] == "comment" and len(words) >= 3 and words[1] == "TextureFile":
            header.texture = " ".join(words[2:])
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            header.elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and header.elements:
            props = header.elements[-1][2]
            if len(words) == 5 and words[1] == "list":
                props.append((words[4], words[3], words[2]))
            elif len(words) == 3 and words[1] in PLY_TYPES:
                props.append((words[2], words[1], None))
            else:
                raise FormatError(f"broken PLY: header line {number}: {line.strip()!r}")
    if header.format not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise FormatError(f"broken PLY: unknown format {header.format!r}")
    return header


def ply_comment_lines(path: Path) -> list[int]:
    """Line numbers of ``comment`` lines in an ASCII PLY's body (after ``end_header``), which
    some real files have (the Stanford Bunny's removed triangles) and Blender's importer fails
    on ("Invalid face size"); ``worker.render.importers`` imports such a file without them."""
    header = ply_header(path)
    if header.format != "ascii":
        return []
    with open(path, "rb") as f:
        head = f.read(header.data_offset)
        first = head.count(b"\n") + 1
        return [first + n for n, line in enumerate(f) if line.lstrip().startswith(b"comment")]


def ply_vertices(path: Path) -> np.ndarray:
    """x, y, z of a PLY's vertex element (the vertex element must come first)."""
    header = ply_header(path)
    if not header.elements or header.elements[0][0] != "vertex":
        raise FormatError("PLY: the first element is not 'vertex'")
    _, count, props = header.elements[0]
    names = [p[0] for p in props]
    if any(p[2] for p in props) or not {"x", "y", "z"} <= set(names):
        raise FormatError("PLY: vertices need scalar x, y, z properties")
    columns = [names.index(a) for a in "xyz"]
    if header.format == "ascii":
        with open(path, "rb") as f:
            f.seek(header.data_offset)
            rows = [f.readline().split() for _ in range(count)]
        if any(len(r) < len(names) for r in rows):
            raise FormatError(f"PLY: fewer than {count} vertex lines")
        return np.array([[r[c] for c in columns] for r in rows], dtype=np.bytes_
                        ).astype(np.float64)
    order = "<" if header.format == "binary_little_endian" else ">"
    dtype = np.dtype([(n, order + PLY_TYPES[t]) for n, t, _ in props])
    data = np.fromfile(path, dtype=dtype, count=count, offset=header.data_offset)
    if len(data) < count:
        raise FormatError(f"PLY: {len(data)} of {count} vertices in the file (truncated)")
    return np.stack([data[a].astype(np.float64) for a in "xyz"], axis=1)


# --- any format ----------------------------------------------------------------------------


def bounds(path: Path) -> list[list[float]] | None:
    """[min, max] corners in the file's axes and units; None when unknown or broken (the
    asset check says why)."""
    try:
        kind = mesh_format(path)
        if kind == "OBJ":
            return obj_bounds(path)
        if kind in ("GLB", "glTF"):
            g = gltf.open_gltf(path)
            if not g.compressed:  # exact: the transformed vertices
                verts, _ = gltf.triangles(g)
                return _finite_box(verts)
            return gltf.bounds(g)
        if kind == "STL":
            return _finite_box(stl_vertices(path)[0])
        return _finite_box(ply_vertices(path))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError):
        return None  # broken: the check says why


@dataclass
class MeshStats:
    faces: int
    images: list[tuple[str, int, int] | tuple[str, str]]  # (name, w, h) or (name, problem)
    mapped: bool
    warnings: list[str] = field(default_factory=list)


def mesh_stats(path: Path) -> MeshStats:
    """Faces, textures (their header sizes) and mapping of a non-OBJ mesh, cheaply: the caps
    ``farm.assets.check`` applies before Blender loads it. Raises FormatError, OSError."""
    kind = mesh_format(path)
    if kind in ("GLB", "glTF"):
        try:
            g = gltf.open_gltf(path)
        except gltf.GltfError as exc:
            raise FormatError(f"broken {kind}: {exc}") from None
        try:
            return MeshStats(*gltf.summary(g))
        except gltf.GltfError as exc:
            raise FormatError(f"broken {kind}: {exc}") from None
    if kind == "STL":
        return MeshStats(stl_faces(path), [], False)
    if kind == "PLY":
        header, comments = ply_header(path), ply_comment_lines(path)
        warnings = [f"{len(comments)} 'comment' lines in the body (first on line {comments[0]}): "
                    "left out on import (Blender's importer fails on them)"] if comments else []
        return MeshStats(header.count("face"), [], False, warnings)
    raise FormatError(f"{kind}: use farm.assets.check's OBJ reader")
