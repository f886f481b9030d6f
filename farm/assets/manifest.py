"""A library manifest: one row per model (id, category, mesh file, up axis, scale, licence).

``farm_manifest.jsonl`` (one JSON object a line) or ``farm_manifest.csv`` (a header row) in a
library's folder; paths are relative to that folder (``farm.assets.indexer`` writes one from a
folder). Reading is strict: an unknown field, a bad value, a duplicate id or an unsupported format is an
error naming the file, the line and the field.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from farm.assets.errors import AssetError
from farm.assets.formats import FormatError, mesh_format
from farm.model.spec import UP_AXES

MANIFEST_NAMES = ("farm_manifest.jsonl", "farm_manifest.csv")
FIELDS = ("id", "category", "path", "up_axis", "scale", "normalized", "license", "synset",
          "sha256")
REQUIRED = ("id", "category", "path")
_ID_RE = re.compile(r"^[^\x00-\x1f]{1,256}$")


class ManifestError(AssetError):
    """A manifest file or row is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class ManifestRow:
    id: str
    category: str
    path: str  # mesh file relative to the manifest's folder
    up_axis: str | None = None  # Y or Z; None: the library's declaration (default Y)
    scale: float = 1.0  # scale hint applied after normalisation (or to the raw file)
    normalized: bool | None = None  # None: the library's declaration (default false)
    license: str | None = None
    synset: str | None = None  # a grouping id; default: the category
    sha256: str | None = None  # the file's digest; computed by the library when absent

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None
                           and not (k == "scale" and v == 1.0)}, separators=(", ", ": "))


def find_manifest(folder: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _row(data: object, where: str) -> ManifestRow:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected an object with {', '.join(REQUIRED)}")
    data = {k: v for k, v in data.items() if v not in (None, "")}
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)} "
                            f"(known: {', '.join(FIELDS)})")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("id", "category", "path", "license", "synset", "sha256"):
        if key in data and (not isinstance(data[key], str) or not _ID_RE.match(data[key])):
            raise ManifestError(f"{where}: field '{key}' must be a string of 1-256 printable "
                                f"characters, got {data[key]!r}")
    path = data["path"]
    pure = PurePosixPath(path)
    if "\\" in path or pure.is_absolute() or ".." in pure.parts:
        raise ManifestError(f"{where}: field 'path' {path!r} must be relative to the manifest's "
                            "folder, with '/' and without '..'")
    try:
        mesh_format(path)
    except FormatError as exc:
        raise ManifestError(f"{where}: field 'path' {path!r}: {exc}") from None
    if data.get("up_axis") is not None and data["up_axis"] not in UP_AXES:
        raise ManifestError(f"{where}: field 'up_axis' must be Y or Z, got {data['up_axis']!r}")
    scale = data.get("scale", 1.0)
    if isinstance(scale, str):
        with contextlib.suppress(ValueError):
            scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (
            math.isfinite(scale) and 1e-6 <= scale <= 1e4):
        raise ManifestError(f"{where}: field 'scale' must be a number in [1e-06, 10000], got "
                            f"{data.get('scale')!r}")
    normalized = data.get("normalized")
    if isinstance(normalized, str) and normalized.lower() in ("true", "false"):
        normalized = normalized.lower() == "true"
    if normalized is not None and not isinstance(normalized, bool):
        raise ManifestError(f"{where}: field 'normalized' must be true or false, got "
                            f"{normalized!r}")
    if "sha256" in data and not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
        raise ManifestError(f"{where}: field 'sha256' must be 64 lowercase hex digits")
    return ManifestRow(data["id"], data["category"], path, data.get("up_axis"), float(scale),
                       normalized, data.get("license"), data.get("synset"), data.get("sha256"))


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows of a ``.jsonl`` or ``.csv`` manifest (raises ManifestError naming the line)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    rows: list[ManifestRow] = []
    lines: dict[str, int] = {}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        records = [(reader.line_num, r) for r in reader]
        if reader.fieldnames is None:
            raise ManifestError(f"manifest {path}: empty (expected a header row)")
        if any(None in r for _, r in records):
            n = next(n for n, r in records if None in r)
            raise ManifestError(f"manifest {path} line {n}: more values than header fields")
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                records.append((n, json.loads(line)))
            except ValueError as exc:
                raise ManifestError(f"manifest {path} line {n}: not JSON ({exc})") from None
    for n, record in records:
        row = _row(record, f"manifest {path} line {n}")
        if row.id in lines:
            raise ManifestError(f"manifest {path} line {n}: id {row.id!r} is already on line "
                                f"{lines[row.id]}")
        lines[row.id] = n
        rows.append(row)
    if not rows:
        raise ManifestError(f"manifest {path} lists no models")
    return rows


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    """JSONL (or CSV by suffix), written to a temporary file first."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".csv":
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    else:
        tmp.write_text("".join(row.to_json() + "\n" for row in rows))
    tmp.replace(path)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
