"""Render presets (``configs/<name>.yaml``): frame count, resolution, render settings, gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from farm.model.spec import RenderSettings, SpecError, VideoSpec
from farm.model.validate import parse_render
from farm.settings import current


def config_dir() -> Path:
    """The preset folder (FARM_CONFIGS, else the repository's ``configs/``)."""
    return current().configs


@dataclass(frozen=True)
class QualityGate:
    min_first_frame_pixels_fraction: float = 0.001
    min_visible_frames_fraction: float = 0.5
    max_attempts: int = 8

    def min_pixels(self, width: int, height: int) -> int:
        return max(1, round(self.min_first_frame_pixels_fraction * width * height))


@dataclass(frozen=True)
class Preset:
    name: str
    frames: int
    resolution: tuple[int, int]
    render: RenderSettings
    quality_gate: QualityGate
    seconds_per_frame: float = 20.0
    overhead_seconds: float = 120.0
    step_clamp: str = "one-sided"  # motion: the original's one-sided step clamp, or "symmetric"

    def time_limits(self, frames: int | None = None, attempts: int | None = None
                    ) -> tuple[int, int]:
        """(soft, hard) Celery time limits in seconds for one video of this preset.

        Every quality-gate attempt may render the whole video, so each is budgeted (default: the
        gate's ``max_attempts``; an imported spec is rendered once).
        """
        n = frames or self.frames
        tries = attempts or self.quality_gate.max_attempts
        soft = int(self.overhead_seconds + self.seconds_per_frame * n * tries)
        return soft, soft + max(60, soft // 10)

    def to_dict(self) -> dict[str, Any]:
        """The preset resolved into plain data, in the preset file's shape (``base:`` merged):
        ``preset_from_data`` reads it back. Task messages carry it, so workers render with the
        scheduler's preset and never re-read ``configs/``."""
        return {"name": self.name, "frames": self.frames, "resolution": list(self.resolution),
                "render": json.loads(json.dumps(asdict(self.render))),
                "quality_gate": asdict(self.quality_gate),
                "time_limit": {"seconds_per_frame": self.seconds_per_frame,
                               "overhead_seconds": self.overhead_seconds},
                "motion": {"step_clamp": self.step_clamp}}


def available() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


STEP_CLAMPS = ("one-sided", "symmetric")


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def _read(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """A preset file's data with its ``base:`` preset (by name, in the same folder) merged under."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpecError("preset", f"no preset {name_or_path!r} (available: {', '.join(available())})")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SpecError("preset", f"{path} is not a mapping")
    base = data.pop("base", None)
    if base is None:
        return path, data
    if not isinstance(base, str) or base in seen:
        raise SpecError("preset.base", f"{path}: base must name another preset, without cycles")
    _, base_data = _read(str(path.parent / f"{base}.yaml"), (*seen, base))
    base_data.pop("name", None)
    return path, _merge(base_data, data)


@lru_cache(maxsize=32)
def load_preset(name_or_path: str) -> Preset:
    """A preset by name (``configs/<name>.yaml``) or path; cached (presets are immutable).

    A preset may start from another one (``base: <name>``) and override some of its keys.
    """
    path, data = _read(name_or_path)
    return preset_from_data({"name": path.stem, **data})


def find_preset(name: str) -> Preset | None:
    """``load_preset``, or None for a preset unknown here (an imported spec may name one)."""
    try:
        return load_preset(name)
    except SpecError:
        return None


def preset_from_data(data: Any) -> Preset:
    """A preset from a preset file's data (``base:`` already merged) or ``Preset.to_dict()``."""
    if not isinstance(data, dict):
        raise SpecError("preset", "expected a mapping")
    gate = data.get("quality_gate", {})
    limits = data.get("time_limit", {})
    motion = data.get("motion", {})
    if not isinstance(motion, dict) or set(motion) - {"step_clamp"}:
        raise SpecError("preset.motion", "expected a mapping with step_clamp")
    step_clamp = motion.get("step_clamp", "one-sided")
    if step_clamp not in STEP_CLAMPS:
        raise SpecError("preset.motion.step_clamp",
                        f"{step_clamp!r} is not one of {', '.join(STEP_CLAMPS)}")
    gate_names = {f.name for f in fields(QualityGate)}
    if not isinstance(gate, dict) or set(gate) - gate_names:
        raise SpecError("preset.quality_gate", f"expected fields among {sorted(gate_names)}")
    try:
        return Preset(
            name=str(data["name"]),
            frames=int(data["frames"]),
            resolution=(int(data["resolution"][0]), int(data["resolution"][1])),
            render=parse_render(data.get("render", {})),
            quality_gate=QualityGate(**gate),
            seconds_per_frame=float(limits.get("seconds_per_frame", 20)),
            overhead_seconds=float(limits.get("overhead_seconds", 120)),
            step_clamp=step_clamp,
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SpecError("preset", f"malformed preset data: {exc!r}") from None


def apply_preset(spec: VideoSpec, preset: Preset, **render_overrides: Any) -> VideoSpec:
    """Return ``spec`` with the preset's frames, resolution and render settings."""
    return replace(
        spec,
        frames=preset.frames,
        resolution=list(preset.resolution),
        render=replace(preset.render, **render_overrides),
        preset=preset.name,
    )
