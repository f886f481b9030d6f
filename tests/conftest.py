"""Shared fixtures: a procedural asset pack and presets, generated per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_YAML = Path(__file__).resolve().parent / "data" / "original_yaml"


@dataclass(frozen=True)
class Pack:
    models: Path
    textures: Path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["FARM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def pack(tmp_path_factory) -> Pack:
    from farm.synth_assets import synthesize

    models, textures = synthesize(tmp_path_factory.mktemp("pack"), seed=0)
    return Pack(models, textures)


@pytest.fixture(scope="session")
def library(pack):
    from farm.assets import AssetLibrary

    return AssetLibrary.open(pack.models, pack.textures)


@pytest.fixture(scope="session")
def tiny():
    from farm.presets import load_preset

    return load_preset("tiny")


@pytest.fixture(scope="session")
def bl30k():
    from farm.presets import load_preset

    return load_preset("bl30k")
