"""Shared fixtures: a procedural asset pack and presets, generated per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Pack:
    models: Path
    textures: Path


SLOW_MARKS = ("long", "slurm", "services", "render")


def pytest_collection_modifyitems(items):
    """The longest tests, then those that start clusters, services or renders, first (stable
    within each kind): on parallel runs (``-n``) the long ones start early and the fast ones
    fill the end."""
    items.sort(key=lambda item: next(
        (i for i, mark in enumerate(SLOW_MARKS) if item.get_closest_marker(mark)), len(SLOW_MARKS)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["FARM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _settings_of_this_test():
    """Each test's process settings are read from the environment as the test sets it (a
    ``monkeypatch.setenv`` before the first use); none outlives the test."""
    from farm import settings

    settings.use(None)
    yield
    settings.use(None)


@pytest.fixture(scope="session")
def pack(tmp_path_factory) -> Pack:
    from farm.assets.procedural import synthesize

    models, textures = synthesize(tmp_path_factory.mktemp("pack"), seed=0)
    return Pack(models, textures)


@pytest.fixture(scope="session")
def library(pack):
    from farm.assets.library import AssetLibrary

    return AssetLibrary.open(pack.models, pack.textures)


@pytest.fixture(scope="session")
def tiny():
    from farm.model.presets import load_preset

    return load_preset("tiny")


@pytest.fixture(scope="session")
def bl30k():
    from farm.model.presets import load_preset

    return load_preset("bl30k")


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory):
    """A real redis-server (AOF, password) on a free loopback port."""
    from devtools.local import start_redis
    from devtools.processes import free_port, stop

    port, password = free_port(), "test-password"
    proc = start_redis(tmp_path_factory.mktemp("redis"), port, password)
    yield port, password
    stop([proc])


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory):
    """moto's S3 server: a real HTTP S3 endpoint on a free loopback port."""
    from devtools.local import start_s3
    from devtools.processes import free_port, stop

    port = free_port()
    proc = start_s3(port, tmp_path_factory.mktemp("s3") / "s3.log")
    yield port
    stop([proc])


_bucket_counter = iter(range(10**6))


@pytest.fixture
def farm(redis_service, s3_service, pack, tmp_path):
    """A clean farm per test: empty Redis, a new bucket, workers stopped at the end."""
    import redis
    from services import Farm

    port, password = redis_service
    redis.Redis(port=port, password=password).flushall()
    f = Farm(port, password, s3_service, f"bucket-{next(_bucket_counter)}", tmp_path,
             pack.models, pack.textures)
    yield f
    f.close()


@pytest.fixture(scope="module")
def sphere_models(tmp_path_factory):
    """A ShapeNet-layout models root holding one unit sphere (``00000001/ball``): mask geometry
    can be checked against the pinhole projection."""
    import numpy as np

    from farm.assets.procedural import normalize, sphere, write_obj

    root = tmp_path_factory.mktemp("spheres")
    write_obj(root / "models/00000001/ball/models", normalize(sphere(n=48)), None,
              np.array([0.8, 0.8, 0.8]))
    return root / "models"
