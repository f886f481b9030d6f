"""glTF 2.0 files (``.glb`` binary containers and ``.gltf`` JSON) read without Blender.

``open_gltf`` reads a GLB's header and JSON chunk only (never its binary chunk) and checks the
structure a loader relies on: chunk layout and lengths, every buffer's declared size against the
bytes that back it (the BIN chunk, a ``data:`` URI or a file beside it), buffer views inside their
buffers, accessors inside their views, and every index the document uses. From that document
alone: face counts (index or vertex counts per primitive and node instance), bounds (the POSITION
accessors' ``min``/``max``, which glTF requires, through the node transforms) and whether a
material is texture mapped. Image sizes read only each image's header bytes; ``triangles``
decodes the geometry (tests, benchmarks).
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

GLB_MAGIC = b"glTF"
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
MAX_JSON_BYTES = 256 * 2**20  # a .gltf may embed its buffers as base64
COMPONENTS = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
IMAGE_HEAD_BYTES = 1 << 20  # enough of an image for Pillow to read its size


class GltfError(ValueError):
    """A glTF file is broken; ``str()`` says where."""


@dataclass
class Gltf:
    path: Path
    doc: dict[str, Any]
    bin_offset: int | None = None  # file offset of the GLB's BIN chunk data
    bin_length: int = 0
    sizes: list[int] = field(default_factory=list)  # bytes backing each buffer

    @property
    def compressed(self) -> bool:
        """Geometry in an extension (Draco, meshopt) that only a real importer decodes."""
        return bool(set(self.doc.get("extensionsUsed", [])) & {
            "KHR_draco_mesh_compression", "EXT_meshopt_compression"})


def _items(doc: dict, key: str) -> list:
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise GltfError(f"'{key}' must be a list of objects")
    return items


def _index(value: Any, items: list, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(items):
        raise GltfError(f"{what} refers to a missing entry ({value!r}; {len(items)} defined)")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GltfError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _data_uri(uri: str) -> bytes | None:
    if not uri.startswith("data:"):
        return None
    head, _, data = uri.partition(",")
    try:
        return base64.b64decode(data, validate=True) if head.endswith(";base64") else data.encode()
    except ValueError:
        raise GltfError(f"broken base64 data URI ({head[:40]})") from None


def _external(path: Path, uri: str, what: str) -> Path:
    """A file a URI names, beside the glTF file (never outside its folder)."""
    from urllib.parse import unquote

    folder = path.parent.resolve()
    target = (folder / unquote(uri)).resolve()
    if folder not in target.parents:
        raise GltfError(f"{what} {uri!r} is outside the file's folder")
    if not target.is_file():
        raise GltfError(f"{what} {uri!r} not found ({target})")
    return target


def _read_glb(path: Path) -> tuple[dict, int | None, int]:
    """The JSON document, BIN chunk offset and length of a GLB (its header and chunk table)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(20)
        if len(head) < 20 or head[:4] != GLB_MAGIC:
            raise GltfError("not a GLB file (no 'glTF' header)")
        version, length, json_length, json_type = struct.unpack_from("<IIII", head, 4)
        if version != 2:
            raise GltfError(f"GLB version {version}, only glTF 2.0 is supported")
        if length != size:
            raise GltfError(f"header says {length} bytes, the file has {size} (truncated?)")
        if json_type != CHUNK_JSON or 20 + json_length > size or json_length > MAX_JSON_BYTES:
            raise GltfError("the first chunk is not a JSON chunk within the file")
        text = f.read(json_length)
        bin_offset, bin_length = None, 0
        at = 20 + json_length
        if at + 8 <= size:
            f.seek(at)
            bin_length, bin_type = struct.unpack("<II", f.read(8))
            if bin_type != CHUNK_BIN or at + 8 + bin_length > size:
                raise GltfError(f"the chunk after the JSON (at byte {at}) is not a BIN chunk "
                                "within the file")
            bin_offset = at + 8
    return _parse_json(text), bin_offset, bin_length


def _parse_json(text: bytes) -> dict:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GltfError(f"unreadable JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise GltfError("the JSON document is not an object")
    version = str(doc.get("asset", {}).get("version", "")) if isinstance(doc.get("asset"),
                                                                         dict) else ""
    if not version.startswith("2."):
        raise GltfError(f"asset.version is {version or 'missing'}, only glTF 2.0 is supported")
    return doc


def open_gltf(path: str | Path) -> Gltf:
    """The checked structure of a ``.glb`` or ``.gltf`` file (raises GltfError, OSError)."""
    path = Path(path)
    if path.suffix.lower() == ".glb":
        doc, bin_offset, bin_length = _read_glb(path)
    else:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise GltfError(f"JSON over {MAX_JSON_BYTES >> 20} MB")
        doc, bin_offset, bin_length = _parse_json(path.read_bytes()), None, 0
    gltf = Gltf(path, doc, bin_offset, bin_length)
    try:
        _check(gltf)
    except GltfError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, OverflowError, ValueError) as exc:
        raise GltfError(f"malformed document ({type(exc).__name__}: {exc})") from None
    return gltf


def summary(g: Gltf) -> tuple[int, list, bool]:
    """(faces, image sizes, mapped) of a checked file; GltfError where a value is malformed."""
    try:
        return face_count(g), image_sizes(g), mapped(g)
    except GltfError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, OverflowError, ValueError) as exc:
        raise GltfError(f"malformed document ({type(exc).__name__}: {exc})") from None


def _check(g: Gltf) -> None:
    doc = g.doc
    buffers, views, accessors = (_items(doc, k) for k in ("buffers", "bufferViews", "accessors"))
    for i, buf in enumerate(buffers):
        declared = _count(buf.get("byteLength"), f"buffers[{i}].byteLength")
        uri = buf.get("uri")
        if buf.get("extensions", {}).get("EXT_meshopt_compression", {}).get("fallback"):
            have = declared  # a meshopt fallback: never read, decoded from another buffer
        elif uri is None:
            if i != 0 or g.bin_offset is None:
                raise GltfError(f"buffers[{i}] has no uri and no GLB BIN chunk backs it")
            have = g.bin_length
        elif not isinstance(uri, str):
            raise GltfError(f"buffers[{i}].uri is not a string")
        else:
            data = _data_uri(uri)
            have = len(data) if data is not None else _external(g.path, uri,
                                                                f"buffers[{i}]").stat().st_size
        if declared > have:
            raise GltfError(f"buffers[{i}] declares {declared} bytes, only {have} back it")
        g.sizes.append(declared)
    for i, view in enumerate(views):
        b = _index(view.get("buffer"), buffers, f"bufferViews[{i}].buffer")
        end = _count(view.get("byteOffset", 0), f"bufferViews[{i}].byteOffset") + _count(
            view.get("byteLength"), f"bufferViews[{i}].byteLength")
        if end > g.sizes[b]:
            raise GltfError(f"bufferViews[{i}] ends at byte {end}, past buffers[{b}]'s "
                            f"{g.sizes[b]} bytes")
    for i, acc in enumerate(accessors):
        what = f"accessors[{i}]"
        if acc.get("componentType") not in COMPONENTS or acc.get("type") not in TYPE_SIZES:
            raise GltfError(f"{what} has an unknown componentType or type")
        count = _count(acc.get("count"), f"{what}.count")
        if "sparse" in acc:
            raise GltfError(f"{what} is sparse (not supported)")
        if acc.get("bufferView") is None:
            continue  # zeros, or filled by a compression extension
        v = _index(acc["bufferView"], views, f"{what}.bufferView")
        elem = np.dtype(COMPONENTS[acc["componentType"]]).itemsize * TYPE_SIZES[acc["type"]]
        stride = views[v].get("byteStride") or elem
        end = _count(acc.get("byteOffset", 0), f"{what}.byteOffset") + (
            (count - 1) * stride + elem if count else 0)
        if end > views[v]["byteLength"]:
            raise GltfError(f"{what} needs {end} bytes of bufferViews[{v}], which has "
                            f"{views[v]['byteLength']}")
    meshes = _items(doc, "meshes")
    for m, mesh in enumerate(meshes):
        prims = mesh.get("primitives")
        if not isinstance(prims, list) or not prims:
            raise GltfError(f"meshes[{m}] has no primitives")
        for p, prim in enumerate(prims):
            attrs = prim.get("attributes") if isinstance(prim, dict) else None
            if not isinstance(attrs, dict) or "POSITION" not in attrs:
                raise GltfError(f"meshes[{m}].primitives[{p}] has no POSITION attribute")
            for name, a in attrs.items():
                _index(a, accessors, f"meshes[{m}].primitives[{p}].attributes.{name}")
            if prim.get("indices") is not None:
                _index(prim["indices"], accessors, f"meshes[{m}].primitives[{p}].indices")
    nodes = _items(doc, "nodes")
    for n, node in enumerate(nodes):
        if node.get("mesh") is not None:
            _index(node["mesh"], meshes, f"nodes[{n}].mesh")
        for c in node.get("children", []):
            _index(c, nodes, f"nodes[{n}].children")
    images = _items(doc, "images")
    for i, img in enumerate(images):
        if img.get("bufferView") is not None:
            _index(img["bufferView"], views, f"images[{i}].bufferView")
        elif isinstance(img.get("uri"), str):
            if _data_uri(img["uri"]) is None:
                _external(g.path, img["uri"], f"images[{i}]")
        else:
            raise GltfError(f"images[{i}] has neither a bufferView nor a uri")
    for t, tex in enumerate(_items(doc, "textures")):
        if tex.get("source") is not None:
            _index(tex["source"], images, f"textures[{t}].source")
    list(instances(g))  # node cycles


def _node_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        m = np.asarray(node["matrix"], dtype=float)
        if m.shape != (16,) or not np.isfinite(m).all():
            raise GltfError("a node matrix is not 16 finite numbers")
        return m.reshape(4, 4).T  # column-major
    t = np.asarray(node.get("translation", [0, 0, 0]), dtype=float)
    x, y, z, w = np.asarray(node.get("rotation", [0, 0, 0, 1]), dtype=float)
    s = np.asarray(node.get("scale", [1, 1, 1]), dtype=float)
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    m = np.eye(4)
    m[:3, :3] = rot * s
    m[:3, 3] = t
    if not np.isfinite(m).all():
        raise GltfError("a node transform is not finite")
    return m


def instances(g: Gltf):
    """(mesh index, world matrix) of every mesh instance of the default scene (every root node
    when the file has no scene), as an importer places them."""
    nodes, scenes = _items(g.doc, "nodes"), _items(g.doc, "scenes")
    if scenes:
        scene = scenes[g.doc.get("scene", 0)] if isinstance(g.doc.get("scene", 0), int) and \
            0 <= g.doc.get("scene", 0) < len(scenes) else scenes[0]
        roots = [_index(n, nodes, "scene node") for n in scene.get("nodes", [])]
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [n for n in range(len(nodes)) if n not in children]
    stack = [(n, np.eye(4), (n,)) for n in roots]
    while stack:
        n, parent, path = stack.pop()
        world = parent @ _node_matrix(nodes[n])
        if nodes[n].get("mesh") is not None:
            yield nodes[n]["mesh"], world
        for c in nodes[n].get("children", []):
            if c in path:
                raise GltfError(f"nodes[{c}] is its own ancestor (a cycle)")
            stack.append((c, world, (*path, c)))


def _prim_faces(g: Gltf, prim: dict) -> int:
    accessors = g.doc["accessors"]
    count = accessors[prim["indices"] if prim.get("indices") is not None
                      else prim["attributes"]["POSITION"]]["count"]
    mode = prim.get("mode", 4)
    return count // 3 if mode == 4 else max(count - 2, 0) if mode in (5, 6) else 0


def face_count(g: Gltf) -> int:
    """Triangles the importer creates: per mesh instance, per triangle primitive."""
    meshes = g.doc.get("meshes", [])
    return sum(_prim_faces(g, prim) for m, _ in instances(g) for prim in meshes[m]["primitives"])


def bounds(g: Gltf) -> list[list[float]] | None:
    """[min, max] of every instance's POSITION ``min``/``max`` box through its node transform
    (the box of the transformed corners), in the file's axes (glTF: Y up); None if unknown."""
    meshes, accessors = g.doc.get("meshes", []), g.doc.get("accessors", [])
    corners = []
    for m, world in instances(g):
        for prim in meshes[m]["primitives"]:
            acc = accessors[prim["attributes"]["POSITION"]]
            lo, hi = acc.get("min"), acc.get("max")
            if not (isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == 3):
                return None
            box = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
            corners.append((box @ world.T)[:, :3])
    if not corners:
        return None
    pts = np.concatenate(corners)
    if not np.isfinite(pts).all():
        return None
    return [pts.min(0).tolist(), pts.max(0).tolist()]


def mapped(g: Gltf) -> bool:
    """A material has a base colour (or diffuse) texture."""
    for mat in g.doc.get("materials", []):
        pbr = mat.get("pbrMetallicRoughness", {})
        gloss = mat.get("extensions", {}).get("KHR_materials_pbrSpecularGlossiness", {})
        if "baseColorTexture" in pbr or "diffuseTexture" in gloss:
            return True
    return False


def _read(g: Gltf, buffer: int, offset: int, length: int) -> bytes:
    uri = g.doc["buffers"][buffer].get("uri")
    if uri is None:
        with open(g.path, "rb") as f:
            f.seek(g.bin_offset + offset)
            return f.read(length)
    data = _data_uri(uri)
    if data is not None:
        return data[offset:offset + length]
    with open(_external(g.path, uri, f"buffers[{buffer}]"), "rb") as f:
        f.seek(offset)
        return f.read(length)


def image_sizes(g: Gltf) -> list[tuple[str, int, int] | tuple[str, str]]:
    """Per image (name, width, height), or (name, problem) where its header is unreadable."""
    from PIL import Image

    out: list = []
    for i, img in enumerate(g.doc.get("images", [])):
        name = str(img.get("name") or img.get("uri", "")[:40] or f"images[{i}]")
        if img.get("bufferView") is not None:
            view = g.doc["bufferViews"][img["bufferView"]]
            head = _read(g, view["buffer"], view.get("byteOffset", 0),
                         min(view["byteLength"], IMAGE_HEAD_BYTES))
        else:
            data = _data_uri(img["uri"])
            if data is None:
                with open(_external(g.path, img["uri"], f"images[{i}]"), "rb") as f:
                    data = f.read(IMAGE_HEAD_BYTES)
            head = data[:IMAGE_HEAD_BYTES]
        try:
            with Image.open(BytesIO(head)) as im:
                out.append((name, *im.size))
        except Image.DecompressionBombError:
            out.append((name, "over Pillow's pixel limit"))
        except (OSError, SyntaxError, ValueError) as exc:
            out.append((name, f"unreadable image ({exc})"))
    return out


def _accessor(g: Gltf, index: int) -> np.ndarray:
    acc = g.doc["accessors"][index]
    if acc.get("bufferView") is None:
        raise GltfError(f"accessors[{index}] has no bufferView (compressed geometry is decoded "
                        "only by Blender's importer)")
    view = g.doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(COMPONENTS[acc["componentType"]])
    width = TYPE_SIZES[acc["type"]]
    elem = dtype.itemsize * width
    stride = view.get("byteStride") or elem
    count = acc["count"]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    raw = _read(g, view["buffer"], start, (count - 1) * stride + elem if count else 0)
    rows = np.ndarray((count, width), dtype=dtype, buffer=raw.ljust(count * stride, b"\0"),
                      strides=(stride, dtype.itemsize))
    return rows.astype(np.float64 if dtype.kind == "f" else np.int64)


def triangles(g: Gltf) -> tuple[np.ndarray, np.ndarray]:
    """World-space vertices (n, 3) and triangles (m, 3) of the default scene (file axes);
    triangle primitives only. Raises GltfError for compressed geometry."""
    meshes, verts, faces, base = g.doc.get("meshes", []), [], [], 0
    for m, world in instances(g):
        for prim in meshes[m]["primitives"]:
            if prim.get("mode", 4) != 4:
                continue
            pos = _accessor(g, prim["attributes"]["POSITION"])
            idx = (_accessor(g, prim["indices"]).reshape(-1) if prim.get("indices") is not None
                   else np.arange(len(pos)))
            verts.append(np.c_[pos, np.ones(len(pos))] @ world.T)
            faces.append(idx[:len(idx) // 3 * 3].reshape(-1, 3) + base)
            base += len(pos)
    if not verts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(verts)[:, :3], np.concatenate(faces)


