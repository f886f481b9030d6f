"""Import configs written by the original BL30K generator (``generate_yaml.py``) as our specs.

Every polynomial, the FOV, resolution, frame count, lights, textures and background are kept
exactly; ``<args:0>`` (models root) and ``<args:1>`` (textures root) placeholders become paths
relative to our roots. Render settings come from a preset.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from farm.assets.library import AssetError, AssetLibrary, resolve_under
from farm.model.presets import Preset
from farm.model.spec import BackgroundSpec, CameraSpec, LightSpec, ObjectSpec, SpecError, VideoSpec
from farm.model.validate import asset_path, spec_from_dict

NAME_RE = re.compile(r"^([a-z]?)(\d+)$")


def _module(modules: list, name: str, origin: str) -> dict:
    for m in modules:
        if isinstance(m, dict) and m.get("module") == name:
            return m.get("config") or {}
    raise SpecError(origin, f"no {name} module")


def _strip(value: Any, placeholder: str, field: str) -> str:
    if not isinstance(value, str) or not value.startswith(placeholder + "/"):
        raise SpecError(field, f"expected a path starting with {placeholder}/, got {value!r}")
    return asset_path(value[len(placeholder) + 1:], field)


def _name(data: dict, path: Path) -> str:
    out_dir = str(data.get("global", {}).get("all", {}).get("output_dir", ""))
    return PurePosixPath(out_dir).name if out_dir else path.stem


def convert(data: Any, origin: str, library: AssetLibrary, preset: Preset) -> VideoSpec:
    """Convert one parsed original config into a VideoSpec (validated)."""
    if not isinstance(data, dict) or not isinstance(data.get("modules"), list):
        raise SpecError(origin, "not an original BL30K config (no 'modules' list)")
    name = _name(data, Path(origin))
    match = NAME_RE.match(name)
    segment = ord(match.group(1)) - ord("a") if match and match.group(1) else 0
    index = int(match.group(2)) if match else 0
    traj = _module(data["modules"], "composite.VOSTrajRunner", origin)
    sky = _module(data["modules"], "loader.SkyBoxLoader", origin)
    cam = traj["camera_runner"]["config"]
    objects = []
    for i, runner in enumerate(traj["object_runners"]):
        cfg = runner["config"]
        rel = _strip(cfg["path"], "<args:0>", f"object_runners[{i}].path")
        parts = PurePosixPath(rel).parts
        if len(parts) != 4 or parts[2:] != ("models", "model_normalized.obj"):
            raise SpecError(f"object_runners[{i}].path",
                            f"{rel!r} is not <synset>/<model>/models/model_normalized.obj")
        model_id = f"{parts[0]}/{parts[1]}"
        info = library.model(model_id)
        texture = cfg.get("texture")
        poses = cfg["poses"]
        objects.append(ObjectSpec(
            model=model_id, synset=info.synset, category=info.category,
            location_poly=poses["location_poly"], rotation_poly=poses["rotation_poly"],
            scale_poly=poses["scale_poly"],
            texture=_strip(texture, "<args:1>", f"object_runners[{i}].texture") if texture else None,
            # The original rendered the files as they are, Y-up: so does the spec, whatever the
            # library declares (ShapeNet's files are unit-diagonal but not exactly centred).
            radius=info.radius, normalize=False, up_axis="Y",
        ))
    lights = [LightSpec(energy=r["config"]["light"]["energy"], color=r["config"]["light"]["color"],
                        type=r["config"]["light"].get("type", "POINT"),
                        location_poly=r["config"]["poses"]["location_poly"],
                        rotation_poly=r["config"]["poses"]["rotation_poly"])
              for r in traj["light_runners"]]
    spec = VideoSpec(
        id=name, segment=segment, index=index, seed=0,
        frames=traj["n_frames"],
        resolution=[cam["intrinsics"]["resolution_x"], cam["intrinsics"]["resolution_y"]],
        camera=CameraSpec(fov=cam["intrinsics"]["fov"],
                          location_poly=cam["cam_poses"]["location_poly"],
                          look_at_poly=cam["cam_poses"]["look_at_poly"]),
        objects=objects, lights=lights,
        background=BackgroundSpec(image=_strip(sky["path"], "<args:1>", "SkyBoxLoader.path"),
                                  strength=sky["strength"], location=list(sky["location"]),
                                  rotation=list(sky["rotation"])),
        render=preset.render, source="imported", preset=preset.name,
        generation={"original": {"file": origin, "object_seeds": [
            r["config"].get("seed") for r in traj["object_runners"]]}},
    )
    spec = spec_from_dict(spec.to_dict())  # full validation of the converted values
    for i, obj in enumerate(spec.objects):
        if obj.texture:
            resolve_under(library.textures_root, obj.texture, f"object {i + 1} texture")
    resolve_under(library.textures_root, spec.background.image, "background image")
    return spec


def import_file(path: Path, library: AssetLibrary, preset: Preset) -> VideoSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(str(path), f"cannot read: {str(exc).splitlines()[0]}") from None
    try:
        return convert(data, str(path), library, preset)
    except (KeyError, TypeError, IndexError) as exc:
        raise SpecError(str(path), f"malformed original config ({type(exc).__name__}: {exc})"
                        ) from None
    except AssetError as exc:
        raise SpecError(str(path), str(exc)) from None


def find_configs(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p]
    return files
