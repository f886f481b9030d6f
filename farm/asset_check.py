"""Asset health check: find meshes and images that would fail or poison renders.

Meshes are parsed as OBJ text (no Blender): unreadable, empty, faces pointing at missing
vertices, non-finite coordinates, absurd size, or a missing/unreadable ``map_Kd`` image. Images
must decode and stay below a sane pixel count. Results become a denylist that spec generation
honours (``--denylist`` / ``FARM_DENYLIST``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from farm.assets import AssetLibrary

MAX_OBJ_BYTES = 512 * 2**20
MAX_FACES = 3_000_000
MAX_IMAGE_PIXELS = 64 * 2**20  # e.g. 8192 x 8192


@dataclass(frozen=True)
class Problem:
    item: str  # model id "<synset>/<model>" or image path relative to the textures root
    reason: str


def check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                return f"absurdly large image {width}x{height}"
            img.verify()
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable image: {exc}"
    return None


def check_obj(path: Path) -> str | None:
    """Problems of an OBJ file, parsed as text, or None."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"unreadable mesh: {exc.strerror}"
    if size > MAX_OBJ_BYTES:
        return f"absurdly large mesh file ({size / 2**20:.0f} MB)"
    vertices = faces = 0
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("v "):
                    coords = [float(x) for x in line.split()[1:4]]
                    if len(coords) < 3 or not all(math.isfinite(c) for c in coords):
                        return f"line {number}: bad vertex"
                    vertices += 1
                elif line.startswith("f "):
                    refs = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                    if len(refs) < 3 or any(r == 0 or r > vertices or r < -vertices
                                            for r in refs):
                        return f"line {number}: face refers to a missing vertex"
                    faces += 1
                    if faces > MAX_FACES:
                        return f"absurdly large mesh (over {MAX_FACES} faces)"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"unreadable mesh: {exc}"
    if faces == 0:
        return "empty mesh (no faces)"
    return None


def check_model(models_root: Path, model_id: str) -> Problem | None:
    folder = models_root / model_id / "models"
    reason = check_obj(folder / "model_normalized.obj")
    if reason is None:
        mtl = folder / "model_normalized.mtl"
        try:
            lines = mtl.read_text(errors="replace").splitlines() if mtl.exists() else []
        except OSError as exc:
            lines, reason = [], f"unreadable material file: {exc.strerror}"
        for line in lines:
            if line.strip().startswith("map_Kd"):
                image = (folder / line.split(None, 1)[1].strip()).resolve()
                problem = check_image(image) if image.is_file() else "missing"
                if problem:
                    reason = f"texture {image.name}: {problem}"
                    break
    return Problem(model_id, reason) if reason else None


def _check(job: tuple[str, Path, str]) -> Problem | None:
    kind, root, item = job
    if kind == "model":
        return check_model(root, item)
    reason = check_image(root / item)
    return Problem(item, reason) if reason else None


def check_library(library: AssetLibrary, workers: int | None = None, progress=None
                  ) -> list[Problem]:
    """Check every model, texture and background image in parallel processes."""
    jobs = [("model", library.models_root, m.id) for m in library.models]
    jobs += [("image", library.textures_root, t) for t in library.textures + library.skyboxes]
    problems = []
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for problem in pool.map(_check, jobs, chunksize=16):
            if problem:
                problems.append(problem)
            if progress:
                progress(1)
    return problems


def write_denylist(problems: list[Problem], path: Path) -> None:
    lines = ["# bl30k-farm denylist: assets spec generation skips (python -m farm assets check)"]
    lines += [f"{p.item}  # {p.reason}" for p in sorted(problems, key=lambda p: p.item)]
    path.write_text("\n".join(lines) + "\n")
