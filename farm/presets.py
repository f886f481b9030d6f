"""Render presets (``configs/<name>.yaml``): frame count, resolution, render settings, gate."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from farm.spec import RenderSettings, SpecError, VideoSpec, _parse_render

CONFIG_DIR = Path(os.environ.get("FARM_CONFIGS", Path(__file__).resolve().parent.parent / "configs"))


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

    def time_limits(self, frames: int | None = None) -> tuple[int, int]:
        """(soft, hard) Celery time limits in seconds for one video of this preset."""
        n = frames or self.frames
        soft = int(self.overhead_seconds + self.seconds_per_frame * n)
        return soft, soft + max(60, soft // 10)


def available() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@lru_cache(maxsize=32)
def load_preset(name_or_path: str) -> Preset:
    """A preset by name (``configs/<name>.yaml``) or path; cached (presets are immutable)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpecError("preset", f"no preset {name_or_path!r} (available: {', '.join(available())})")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SpecError("preset", f"{path} is not a mapping")
    gate = data.get("quality_gate", {})
    limits = data.get("time_limit", {})
    gate_names = {f.name for f in fields(QualityGate)}
    if not isinstance(gate, dict) or set(gate) - gate_names:
        raise SpecError("preset.quality_gate", f"expected fields among {sorted(gate_names)}")
    return Preset(
        name=str(data.get("name", path.stem)),
        frames=int(data["frames"]),
        resolution=(int(data["resolution"][0]), int(data["resolution"][1])),
        render=_parse_render(data.get("render", {})),
        quality_gate=QualityGate(**gate),
        seconds_per_frame=float(limits.get("seconds_per_frame", 20)),
        overhead_seconds=float(limits.get("overhead_seconds", 120)),
    )


def apply_preset(spec: VideoSpec, preset: Preset, **render_overrides: Any) -> VideoSpec:
    """Return ``spec`` with the preset's frames, resolution and render settings."""
    return replace(
        spec,
        frames=preset.frames,
        resolution=list(preset.resolution),
        render=replace(preset.render, **render_overrides),
        preset=preset.name,
    )
