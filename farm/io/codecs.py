"""Small pure-numpy image codecs for the extra outputs (no bpy, no OpenCV/OpenEXR dependency).

- 16-bit PNG (grey or RGB): Pillow writes and reads 16-bit greyscale but not 16-bit RGB, which
  the flow files need, so both are written here (``write_png16``) and read back by
  ``read_png16`` (any 8/16-bit grey, grey+alpha, RGB or RGBA non-interlaced PNG).
- OpenEXR, single-part scanline, HALF/FLOAT channels, NONE, ZIPS or ZIP compression: the depth
  ``.exr`` files (``write_exr``) and Blender's raw render passes (``read_exr``).
- Middlebury ``.flo`` optical flow (``write_flo``/``read_flo``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> channels


class CodecError(ValueError):
    """A file is not in a format (or a variant of it) these codecs read."""


# --- 16-bit PNG --------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png16(array: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a uint16 array (H, W) grey or (H, W, 3) RGB; rows use the 'Up' filter."""
    a = np.asarray(array)
    if a.dtype != np.uint16:
        raise CodecError(f"expected uint16 pixels, got {a.dtype}")
    if a.ndim == 2:
        a, colour = a[..., None], 0
    elif a.ndim == 3 and a.shape[2] == 3:
        colour = 2
    else:
        raise CodecError(f"expected (H, W) or (H, W, 3) pixels, got shape {a.shape}")
    h, w, _ = a.shape
    raw = a.astype(">u2").view(np.uint8).reshape(h, -1)
    up = raw.copy()
    up[1:] -= raw[:-1]  # uint8 arithmetic wraps mod 256, as the filter wants
    rows = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b""))


def write_png16(path: str | Path, array: np.ndarray) -> None:
    Path(path).write_bytes(encode_png16(array))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(data: np.ndarray, h: int, stride: int, bpp: int) -> np.ndarray:
    rows = data.reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum per byte lane
            cur = np.empty(stride, np.uint8)
            for lane in range(bpp):
                cur[lane::bpp] = np.cumsum(line[lane::bpp], dtype=np.uint64) % 256
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):  # Average / Paeth: sequential (slow path, never written here)
            cur = np.zeros(stride, np.int64)
            up = prev.astype(np.int64)
            for x in range(stride):
                left = cur[x - bpp] if x >= bpp else 0
                upleft = up[x - bpp] if x >= bpp else 0
                pred = (left + up[x]) // 2 if kind == 3 else _paeth(left, up[x], upleft)
                cur[x] = (int(line[x]) + pred) % 256
            cur = cur.astype(np.uint8)
        else:
            raise CodecError(f"PNG row {y}: unknown filter type {kind}")
        out[y] = cur
        prev = cur
    return out


def read_png16(path: str | Path) -> np.ndarray:
    """Pixels of an 8- or 16-bit non-interlaced PNG: (H, W) or (H, W, C), uint8 or uint16."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise CodecError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise CodecError(f"{path}: PNG without IHDR")
    w, h, depth, colour, _, _, interlace = header
    if depth not in (8, 16) or colour not in _PNG_CHANNELS or interlace:
        raise CodecError(f"{path}: unsupported PNG variant (bit depth {depth}, colour type "
                         f"{colour}, interlace {interlace})")
    channels, nbytes = _PNG_CHANNELS[colour], depth // 8
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    pixels = _unfilter(raw, h, w * channels * nbytes, channels * nbytes)
    out = pixels.view(">u2").astype(np.uint16) if nbytes == 2 else pixels
    out = out.reshape(h, w, channels)
    return out[..., 0] if channels == 1 else out


# --- OpenEXR -----------------------------------------------------------------------------------

EXR_MAGIC = 20000630
_EXR_TYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 0: np.dtype("<u4")}  # HALF, FLOAT, UINT
_EXR_COMPRESSION = {"NONE": (0, 1), "ZIPS": (2, 1), "ZIP": (3, 16)}  # id, lines per chunk
_EXR_LINES = {0: 1, 2: 1, 3: 16}


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _zip_predict(raw: bytes) -> bytes:
    """OpenEXR's ZIP pre-processing: split even/odd bytes, then byte deltas (+128)."""
    b = np.frombuffer(raw, np.uint8)
    t = np.concatenate([b[0::2], b[1::2]]).astype(np.int16)
    d = t.copy()
    d[1:] = (t[1:] - t[:-1] + 128) % 256
    return d.astype(np.uint8).tobytes()


def _zip_unpredict(data: bytes) -> bytes:
    d = np.frombuffer(data, np.uint8).astype(np.int64)
    d[1:] -= 128
    t = (np.cumsum(d) % 256).astype(np.uint8)
    half = (len(t) + 1) // 2
    out = np.empty(len(t), np.uint8)
    out[0::2], out[1::2] = t[:half], t[half:]
    return out.tobytes()


def write_exr(path: str | Path, channels: dict[str, np.ndarray], compression: str = "ZIP",
              half: bool = False) -> None:
    """A single-part scanline EXR of equally sized (H, W) channels, FLOAT (or HALF) pixels."""
    names = sorted(channels)  # the file stores channels in alphabetical order
    arrays = [np.asarray(channels[n], np.float16 if half else np.float32) for n in names]
    h, w = arrays[0].shape
    if any(a.shape != (h, w) for a in arrays):
        raise CodecError("EXR channels must have one (H, W) shape")
    ptype = 1 if half else 2
    comp, lines = _EXR_COMPRESSION[compression]
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", ptype, 0, 1, 1) for n in names)
    box = struct.pack("<iiii", 0, 0, w - 1, h - 1)
    header = (struct.pack("<ii", EXR_MAGIC, 2)
              + _attr("channels", "chlist", chlist + b"\0")
              + _attr("compression", "compression", bytes([comp]))
              + _attr("dataWindow", "box2i", box) + _attr("displayWindow", "box2i", box)
              + _attr("lineOrder", "lineOrder", b"\0")
              + _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
              + _attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
              + _attr("screenWindowWidth", "float", struct.pack("<f", 1.0)) + b"\0")
    stacked = np.stack(arrays, axis=1).astype(arrays[0].dtype.newbyteorder("<"))  # (H, C, W)
    chunks = []
    for y in range(0, h, lines):
        raw = stacked[y:y + lines].tobytes()
        if comp:
            packed = zlib.compress(_zip_predict(raw), 6)
            raw = packed if len(packed) < len(raw) else raw
        chunks.append(struct.pack("<ii", y, len(raw)) + raw)
    offsets, pos = [], len(header) + 8 * len(chunks)
    for c in chunks:
        offsets.append(pos)
        pos += len(c)
    Path(path).write_bytes(header + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(chunks))


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Channels of a single-part scanline EXR (NONE/ZIPS/ZIP) as float32 (H, W) arrays."""
    data = Path(path).read_bytes()
    magic, version = struct.unpack("<ii", data[:8])
    if magic != EXR_MAGIC:
        raise CodecError(f"{path}: not an OpenEXR file")
    if version & 0x1A00:  # tiled, deep or multi-part (long names are fine)
        raise CodecError(f"{path}: only single-part scanline EXR files are supported")
    pos, attrs = 8, {}
    while data[pos] != 0:
        end = data.index(b"\0", pos)
        name = data[pos:end].decode()
        kend = data.index(b"\0", end + 1)
        (size,) = struct.unpack("<i", data[kend + 1:kend + 5])
        attrs[name] = data[kend + 5:kend + 5 + size]
        pos = kend + 5 + size
    pos += 1
    chans, cl = [], attrs["channels"]
    i = 0
    while cl[i] != 0:
        end = cl.index(b"\0", i)
        ptype, _, xs, ys = struct.unpack("<iB3xii", cl[end + 1:end + 17])
        if (xs, ys) != (1, 1):
            raise CodecError(f"{path}: subsampled channels are not supported")
        chans.append((cl[i:end].decode(), _EXR_TYPES[ptype]))
        i = end + 17
    comp = attrs["compression"][0]
    if comp not in _EXR_LINES:
        raise CodecError(f"{path}: EXR compression {comp} is not supported (NONE, ZIPS, ZIP)")
    x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"])
    w, h, lines = x1 - x0 + 1, y1 - y0 + 1, _EXR_LINES[comp]
    nchunks = -(-h // lines)
    offsets = struct.unpack(f"<{nchunks}Q", data[pos:pos + 8 * nchunks])
    out = {name: np.empty((h, w), np.float32) for name, _ in chans}
    for off in offsets:
        y, size = struct.unpack("<ii", data[off:off + 8])
        n = min(lines, y1 + 1 - y)
        expect = n * w * sum(dt.itemsize for _, dt in chans)
        block = data[off + 8:off + 8 + size]
        if comp and size < expect:
            block = _zip_unpredict(zlib.decompress(block))
        at, row = 0, y - y0
        for line in range(n):
            for name, dt in chans:
                nb = w * dt.itemsize
                out[name][row + line] = np.frombuffer(block, dt, w, at)
                at += nb
    return out


# --- Middlebury .flo ---------------------------------------------------------------------------

FLO_MAGIC = 202021.25
FLO_UNKNOWN = 1e10  # Middlebury: components above 1e9 mean "unknown flow"


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """(H, W, 2) float flow; NaN (undefined) is written as Middlebury's unknown value 1e10."""
    f = np.asarray(flow, np.float32)
    h, w, _ = f.shape
    f = np.where(np.isfinite(f), f, np.float32(FLO_UNKNOWN))
    Path(path).write_bytes(struct.pack("<fii", FLO_MAGIC, w, h) + f.astype("<f4").tobytes())


def read_flo(path: str | Path) -> np.ndarray:
    """(H, W, 2) float32 flow; unknown values (> 1e9) come back as NaN."""
    data = Path(path).read_bytes()
    magic, w, h = struct.unpack("<fii", data[:12])
    if magic != FLO_MAGIC:
        raise CodecError(f"{path}: not a Middlebury .flo file")
    f = np.frombuffer(data, "<f4", h * w * 2, 12).reshape(h, w, 2).astype(np.float32)
    return np.where(np.abs(f) > 1e9, np.float32(np.nan), f)
