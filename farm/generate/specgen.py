"""Generate many specs quickly: chunks of indices across worker processes, results in order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from farm.assets.library import AssetLibrary
from farm.generate.sampling import generate_spec
from farm.model.presets import Preset
from farm.model.spec import VideoSpec, save_spec

_state: dict = {}


def _init(models_root: Path, textures_root: Path, preset: Preset, denylist: set[str]) -> None:
    _state["lib"] = AssetLibrary.open(models_root, textures_root, denylist=denylist)
    _state["preset"] = preset


def _chunk(args: tuple[int, list[int], int]) -> list[VideoSpec]:
    segment, indices, seed = args
    return [generate_spec(_state["lib"], _state["preset"], segment, i, seed) for i in indices]


def _write(specs: list[VideoSpec], out: Path) -> tuple[int, int]:
    for spec in specs:
        save_spec(spec, out / f"{spec.id}.yaml")
    return len(specs), sum(not s.generation["gate"]["passed"] for s in specs)


def _write_chunk(args: tuple[int, list[int], int, Path]) -> tuple[int, int]:
    segment, indices, seed, out = args
    return _write(_chunk((segment, indices, seed)), out)


def generate_many(library: AssetLibrary, preset: Preset, segment: int, indices: list[int],
                  seed: int, workers: int | None = None, chunk: int = 100,
                  denylist: set[str] | None = None) -> Iterator[list[VideoSpec]]:
    """Yield lists of specs (in index order), one list per chunk, using ``workers`` processes.

    Each spec depends only on (seed, segment, index) and the asset lists, so splitting the work
    changes nothing in the output.
    """
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [indices[i:i + chunk] for i in range(0, len(indices), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield [generate_spec(library, preset, segment, i, seed) for i in c]
        return
    init = (library.models_root, library.textures_root, preset, denylist or set())
    with ProcessPoolExecutor(workers, initializer=_init, initargs=init) as pool:
        yield from pool.map(_chunk, [(segment, c, seed) for c in chunks])


def write_many(library: AssetLibrary, preset: Preset, segment: int, indices: list[int], seed: int,
               out: Path, workers: int | None = None, chunk: int = 100,
               denylist: set[str] | None = None) -> Iterator[tuple[int, int]]:
    """Generate the specs and write them as ``out/<id>.yaml``, in ``workers`` processes; yield
    (written, failed the geometric gate) per chunk.

    The worker processes write their own files, so only two integers per chunk travel back (not
    the specs) and the parent does no YAML: the whole job scales with the cores.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [indices[i:i + chunk] for i in range(0, len(indices), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield _write([generate_spec(library, preset, segment, i, seed) for i in c], out)
        return
    init = (library.models_root, library.textures_root, preset, denylist or set())
    with ProcessPoolExecutor(workers, initializer=_init, initargs=init) as pool:
        yield from pool.map(_write_chunk, [(segment, c, seed, out) for c in chunks])
