"""Asset formats: import time per format and model size, the farm's own reading costs, the index.

Models: the third-party files of the tests (Khronos GLBs, the Stanford Bunny PLY, pybullet's STL
parts) and two pybullet models (its textured duck, 4k faces, and a 125k-face scene) written by
Blender in every format (OBJ, GLB, PLY, STL), so formats compare at the same geometry. Per model:
file size, faces, the farm's index cost (bounds + sha256) and pre-render check (caps), and
Blender's import (best of ``repeats``, fresh scene each time). Then the index cache of a library
of all of them: its size per model, where it lives, first and cached open.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from farm.assets.check import mesh_size_problem
from farm.assets.formats import bounds, mesh_format
from farm.assets.indexer import index_folder
from farm.assets.library import AssetLibrary
from farm.assets.manifest import file_digest, write_manifest
from farm.assets.procedural import default_pack

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "meshes"
CONVERTED = {"duck": "duck.obj", "monastery": "samurai_monastry.obj"}  # under pybullet_data


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _models(folder: Path) -> list[tuple[str, Path]]:
    """(name, file): the test files and the converted pybullet models, copied under ``folder``."""
    from worker.render import scene
    from worker.render.importers import export_as

    out = [(p.stem, p) for p in sorted(DATA.glob("*/*")) if p.suffix in (".glb", ".ply")]
    try:
        import pybullet_data
    except ImportError:  # the test extra: without it, only the files of tests/data
        return out
    data = Path(pybullet_data.getDataPath())
    out.append(("hip_motor", data / "laikago/hip_motor.stl"))
    for name, rel in CONVERTED.items():
        scene.reset()
        parts = scene._import_model(data / rel, name, "Y")
        for suffix in (".obj", ".glb", ".ply", ".stl"):
            path = folder / f"{name}{suffix}"
            export_as(parts, path)
            out.append((name, path))
    return out


def bench_assets(repeats: int = 3) -> list[dict]:
    from worker.render import scene

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lib_dir = Path(tmp) / "library"
        lib_dir.mkdir()
        for name, path in _models(Path(tmp)):
            kind = mesh_format(path)
            index_s = _best(lambda p=path: (bounds(p), file_digest(p)), repeats)
            check_s = _best(lambda p=path: mesh_size_problem(p), repeats)
            times, faces = [], 0
            for _ in range(repeats):  # the import alone, into a fresh empty scene
                scene.reset()
                t0 = time.perf_counter()
                parts = scene._import_model(path, name, "Y")
                times.append(time.perf_counter() - t0)
                faces = sum(len(o.data.polygons) for o in parts)
            import_s = min(times)
            rows.append({"bench": "asset import", "model": name, "format": kind,
                         "faces": faces, "file_kb": round(path.stat().st_size / 1024, 1),
                         "farm_index_ms": round(index_s * 1e3, 2),
                         "farm_check_ms": round(check_s * 1e3, 2),
                         "blender_import_ms": round(import_s * 1e3, 1),
                         "import_ms_per_10k_faces": round(import_s * 1e3 * 1e4 / max(faces, 1),
                                                          2)})
            shutil.copy(path, lib_dir / f"{name}{path.suffix}")
        rows.append(_index_cache(lib_dir, Path(tmp) / "cache"))
    return rows


def _index_cache(folder: Path, cache: Path) -> dict:
    """A manifest library of every model above: index time, cache size, open times."""
    t0 = time.perf_counter()
    result = index_folder(folder, license="bench")
    write_manifest(result.rows, folder / "farm_manifest.jsonl")
    index_s = time.perf_counter() - t0
    textures = default_pack()[1]
    t0 = time.perf_counter()
    AssetLibrary.open(folder, textures, cache_dir=cache)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    AssetLibrary.open(folder, textures, cache_dir=cache)
    cached_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in cache.glob("index-*.json"))
    mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    return {"bench": "asset index", "models": len(result.rows), "library_mb": round(mb, 2),
            "index_s": round(index_s, 3), "manifest_bytes": (folder / "farm_manifest.jsonl"
                                                             ).stat().st_size,
            "first_open_s": round(first_s, 3), "cached_open_s": round(cached_s, 4),
            "cache_bytes": size, "cache_bytes_per_model": round(size / len(result.rows)),
            "cache": "FARM_CACHE_DIR (~/.cache/bl30k-farm)/index-<roots hash>.json"}
