"""Which asset library a process uses: given roots, or the procedural pack (built once)."""

from __future__ import annotations

from pathlib import Path

from farm.assets.library import AssetError, AssetLibrary, read_denylist
from farm.assets.procedural import default_pack
from farm.settings import Settings


def asset_roots(models: str | Path | None, textures: str | Path | None) -> tuple[Path, Path]:
    """(models, textures): both given, or neither (the procedural pack)."""
    if bool(models) != bool(textures):
        raise AssetError("give both the models and the textures root, or neither (procedural "
                         "pack)")
    if models and textures:
        return Path(models), Path(textures)
    return default_pack()


def settings_roots(settings: Settings) -> tuple[Path, Path]:
    return asset_roots(settings.models, settings.textures)


def open_library(settings: Settings) -> AssetLibrary:
    """The farm's asset library with its denylist (scheduler and workers must agree)."""
    return AssetLibrary.open(*settings_roots(settings), denylist=read_denylist(settings.denylist))
