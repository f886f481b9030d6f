"""Measured cost figures per (preset, device, machine): what ``scheduler plan`` computes from.

The shipped file, ``configs/calibration.json``, holds the figures in BENCHMARKS.md (CPU, the
project's 2-core VM) and the H200 OptiX figures. ``python -m bench calibrate`` measures this
machine and merges its entries into ``calibration.json`` (``--out``). The planner reads the shipped
file, then ``./calibration.json`` if present, ``$FARM_CALIBRATION`` and ``--calibration FILE``;
for one preset and device, an entry from a later file wins over the shipped one. An entry:

- ``s_per_frame``: Cycles seconds per frame in steady state (frames after the first);
- ``overhead_s``: the rest of a video's render time, so that a video of n frames takes
  ``n * s_per_frame + overhead_s`` (Blender start, scene build, first-frame extra, mask encoding);
- ``bytes_per_frame``: JPEG + palette PNG + the manifest's per-frame share, stored in the bucket;
- ``bytes_per_video``: spec, completion marker and the manifest's fixed part;
- ``machine`` and ``source``: where the figures came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from farm.model.presets import config_dir
from farm.settings import Settings

FIELDS = ("s_per_frame", "overhead_s", "bytes_per_frame", "bytes_per_video")
GPU_PREFERENCE = ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI", "CPU")


class CalibrationError(ValueError):
    """No usable figure for what was asked (the message says what exists and how to measure)."""


LOCAL_FILE = Path("calibration.json")  # what ``bench calibrate`` writes by default


def shipped_file() -> Path:
    """The shipped figures, beside the presets (FARM_CONFIGS in images)."""
    return config_dir() / "calibration.json"


def default_paths(settings: Settings, extra: list[str] | None = None) -> list[Path]:
    """Files the planner reads, lowest priority first."""
    paths = [shipped_file()]
    if LOCAL_FILE.exists() and LOCAL_FILE.resolve() != paths[0].resolve():
        paths.append(LOCAL_FILE)
    if settings.calibration:
        paths.append(settings.calibration)
    return paths + [Path(p) for p in extra or []]


def load_all(paths: list[Path]) -> list[dict]:
    """Entries of every file, each tagged with its file's rank (``_rank``: later files win)."""
    return [{**e, "_rank": rank, "_file": str(path)}
            for rank, path in enumerate(paths) for e in load(path)]


def load(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CalibrationError(f"calibration file {path} is not JSON: {exc}") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CalibrationError(f"calibration file {path} has no 'entries' list")
    for n, e in enumerate(entries):
        missing = [k for k in ("preset", "device", "machine", *FIELDS) if k not in e]
        if missing:
            raise CalibrationError(f"{path}: entry {n} lacks {', '.join(missing)}")
        if not all(isinstance(e[k], int | float) and e[k] >= 0 for k in FIELDS):
            raise CalibrationError(f"{path}: entry {n} has a negative or non-numeric figure")
    return entries


def select(entries: list[dict], preset: str, device: str | None = None,
           machine: str | None = None, where: str = "the calibration files") -> dict:
    """The entry for ``preset`` on ``device`` (default: the fastest kind of device calibrated,
    OptiX first), optionally on a machine whose name contains ``machine``. Among several, the
    one from the latest file (``_rank``), then the newest (``measured_at``), wins."""
    have = sorted({(e["preset"], e["device"]) for e in entries})
    listing = ", ".join(f"{p} on {d}" for p, d in have) or "nothing"
    candidates = [e for e in entries if e["preset"] == preset]
    if machine:
        candidates = [e for e in candidates if machine.lower() in e["machine"].lower()]
    if not candidates:
        raise CalibrationError(
            f"no calibration for preset {preset}{f' on a machine matching {machine!r}' if machine else ''}"
            f" in {where} (they have: {listing}); measure it with `python -m bench calibrate "
            f"--presets {preset}` on the render machine")
    if device is None:
        kinds = {e["device"] for e in candidates}
        device = next((d for d in GPU_PREFERENCE if d in kinds), sorted(kinds)[0])
    chosen = [e for e in candidates if e["device"].upper() == device.upper()]
    if not chosen:
        raise CalibrationError(
            f"no calibration for preset {preset} on device {device.upper()} in {where} (they "
            f"have: {listing}); measure it with `python -m bench calibrate --presets {preset} "
            f"--devices {device.upper()}` on a machine with that device")
    return max(chosen, key=lambda e: (e.get("_rank", 0), e.get("measured_at", "")))


def merge(path: str | Path, new: list[dict]) -> list[dict]:
    """Add ``new`` entries to the file (replacing the same preset, device and machine)."""
    path = Path(path)
    try:
        old = load(path) if path.exists() else []
    except CalibrationError:
        old = []
    key = lambda e: (e["preset"], e["device"], e["machine"])  # noqa: E731
    replaced = {key(e) for e in new}
    entries = [e for e in old if key(e) not in replaced] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "entries": entries}, indent=1) + "\n")
    return entries
