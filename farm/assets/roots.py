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


def library_at(models: str | Path | None, textures: str | Path | None,
               denylist: str | Path | None) -> AssetLibrary:
    """The library of these roots (or the procedural pack) with the denylist file applied."""
    return AssetLibrary.open(*asset_roots(models, textures), denylist=read_denylist(denylist))


def open_library(settings: Settings) -> AssetLibrary:
    """The farm's asset library with its denylist (scheduler and workers must agree)."""
    return library_at(settings.models, settings.textures, settings.denylist)
