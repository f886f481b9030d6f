"""Procedural asset pack in the ShapeNetCore.v2 and BL30K texture layouts (for demo and tests).

``<out>/models/<synset>/<model>/models/model_normalized.{obj,mtl,json}`` (+ ``../images/`` for
texture-mapped models), ``<out>/models/taxonomy.json``, ``<out>/textures/texture/<class>/*.jpg``
and ``<out>/textures/skybox/<class>/*.jpg``. Everything derives from one seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from farm.assets.library import default_cache_dir

PACK_VERSION = 1
Mesh = tuple[np.ndarray, np.ndarray, np.ndarray]  # vertices (n,3), uvs (n,2), triangles (m,3)

# Real ShapeNet synset ids and names; the shapes only loosely evoke them.
CATEGORIES = {
    "02691156": "airplane",
    "02876657": "bottle",
    "02958343": "car",
    "03001627": "chair",
    "03797390": "mug",
    "04379243": "table",
}


def _grid(nu: int, nv: int, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Mesh:
    """A (nu x nv) parametric surface patch; fn maps (u, v) in [0,1]^2 to points."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    verts = fn(u, v).reshape(-1, 3)
    uvs = np.stack([u, v], -1).reshape(-1, 2)
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                           np.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, uvs, tris


def sphere(rx=1.0, ry=1.0, rz=1.0, n=24) -> Mesh:
    def f(u, v):
        th, ph = u * 2 * np.pi, v * np.pi
        return np.stack([rx * np.sin(ph) * np.cos(th), ry * np.sin(ph) * np.sin(th),
                         rz * np.cos(ph)], -1)
    return _grid(n, n // 2, f)


def torus(major=1.0, minor=0.3, n=32) -> Mesh:
    def f(u, v):
        th, ph = u * 2 * np.pi, v * 2 * np.pi
        r = major + minor * np.cos(ph)
        return np.stack([r * np.cos(th), r * np.sin(th), minor * np.sin(ph)], -1)
    return _grid(n, n // 2, f)


def lathe(profile: Callable[[np.ndarray], np.ndarray], height=1.0, n=24) -> Mesh:
    """Surface of revolution about Z; ``profile`` gives the radius at height fraction v.

    Ends are closed by making the profile reach radius 0 there.
    """
    def f(u, v):
        th = u * 2 * np.pi
        r = profile(v)
        return np.stack([r * np.cos(th), r * np.sin(th), (v - 0.5) * height], -1)
    return _grid(n, 16, f)


def box(sx=1.0, sy=1.0, sz=1.0, center=(0.0, 0.0, 0.0)) -> Mesh:
    parts = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            a1, a2 = [i for i in range(3) if i != axis]

            def f(u, v, axis=axis, sign=sign, a1=a1, a2=a2):
                p = np.zeros(u.shape + (3,))
                p[..., axis] = sign * 0.5
                p[..., a1] = (u - 0.5) * sign
                p[..., a2] = v - 0.5
                return p
            parts.append(_grid(1, 1, f))
    verts, uvs, tris = merge(parts)
    return verts * [sx, sy, sz] + center, uvs, tris


def merge(parts: list[Mesh]) -> Mesh:
    verts, uvs, tris, offset = [], [], [], 0
    for v, uv, t in parts:
        verts.append(v)
        uvs.append(uv)
        tris.append(t + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(uvs), np.concatenate(tris)


def translate(mesh: Mesh, offset) -> Mesh:
    return mesh[0] + offset, mesh[1], mesh[2]


def make_shape(category: str, rng: np.random.Generator) -> Mesh:
    r = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if category == "airplane":
        body = lathe(lambda v: 0.15 * np.sin(np.pi * v) ** 0.5, height=2.0)
        body = (body[0][:, [2, 0, 1]], body[1], body[2])  # fuselage along X
        return merge([body, box(r(0.4, 0.6), r(1.6, 2.2), 0.05),
                      box(0.2, r(0.5, 0.8), 0.04, (-0.85, 0, 0)), box(0.2, 0.04, 0.4, (-0.85, 0, 0.2))])
    if category == "bottle":
        neck = r(0.25, 0.4)
        return lathe(lambda v: np.where(v < 0.6, 0.35, 0.35 - (0.35 - 0.12) * np.minimum(
            (v - 0.6) / neck, 1)) * np.sin(np.pi * np.clip(v, 0.02, 0.98)) ** 0.1, height=r(1.2, 1.8))
    if category == "car":
        return merge([box(2.0, 0.9, 0.35, (0, 0, 0.25)), box(1.1, 0.8, 0.3, (-0.1, 0, 0.55))]
                     + [translate(sphere(0.18, 0.08, 0.18, 12), (x, y, 0.08))
                        for x in (-0.7, 0.7) for y in (-0.45, 0.45)])
    if category == "chair":
        legs = [box(0.08, 0.08, 0.5, (x, y, 0.25)) for x in (-0.3, 0.3) for y in (-0.3, 0.3)]
        return merge(legs + [box(0.7, 0.7, 0.08, (0, 0, 0.54)),
                             box(0.7, 0.08, r(0.5, 0.8), (0, 0.31, 0.9))])
    if category == "mug":
        return merge([lathe(lambda v: 0.4 + 0.0 * v, height=0.9),
                      translate(torus(0.2, 0.05, 16), (0.45, 0, 0))])
    if category == "table":
        top = box(r(1.2, 2.0), r(0.8, 1.2), 0.08, (0, 0, 0.75)) if rng.random() < 0.5 else \
            translate(lathe(lambda v: 0.8 * np.sin(np.pi * np.clip(v, 0.01, 0.99)) ** 0.05, 0.08),
                      (0, 0, 0.75))
        legs = [box(0.08, 0.08, 0.72, (x, y, 0.36)) for x in (-0.5, 0.5) for y in (-0.3, 0.3)]
        return merge([top, *legs])
    # any other category: a random blob
    return sphere(r(0.5, 1), r(0.5, 1), r(0.5, 1))


def normalize(mesh: Mesh) -> Mesh:
    """Centre the bounding box at the origin and scale its diagonal to 1 (ShapeNet's convention)."""
    verts = mesh[0]
    lo, hi = verts.min(0), verts.max(0)
    verts = (verts - (lo + hi) / 2) / np.linalg.norm(hi - lo)
    return verts, mesh[1], mesh[2]


def pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random procedural RGB image (uint8, size x size x 3)."""
    y, x = np.mgrid[0:size, 0:size] / size
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    if kind == 0:  # checker
        n = rng.integers(4, 12)
        w = ((np.floor(x * n) + np.floor(y * n)) % 2)[..., None]
    elif kind == 1:  # stripes
        n, angle = rng.uniform(4, 20), rng.uniform(0, np.pi)
        w = (0.5 + 0.5 * np.sin(2 * np.pi * n * (x * np.cos(angle) + y * np.sin(angle))))[..., None]
    elif kind == 2:  # smooth value noise
        coarse = rng.random((8, 8))
        w = np.kron(coarse, np.ones((size // 8, size // 8)))[:size, :size]
        for _ in range(3):
            w = (w + np.roll(w, 3, 0) + np.roll(w, 3, 1) + np.roll(w, -3, 0) + np.roll(w, -3, 1)) / 5
        w = w[..., None]
    else:  # radial rings
        d = np.hypot(x - rng.random(), y - rng.random())
        w = (0.5 + 0.5 * np.cos(d * rng.uniform(10, 40)))[..., None]
    img = c1 * w + c2 * (1 - w) + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_obj(folder: Path, mesh: Mesh, texture: str | None, color: np.ndarray) -> None:
    verts, uvs, tris = mesh
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# procedural model (bl30k-farm synth_assets)", "mtllib model_normalized.mtl"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in verts]
    if texture:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs]
    lines += ["o model", "usemtl material_0"]
    one = tris + 1
    lines += ([f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in one] if texture
              else [f"f {a} {b} {c}" for a, b, c in one])
    (folder / "model_normalized.obj").write_text("\n".join(lines) + "\n")
    mtl = ["newmtl material_0", f"Kd {color[0]:.4f} {color[1]:.4f} {color[2]:.4f}",
           "Ka 0 0 0", "Ks 0.2 0.2 0.2", "Ns 20", "d 1", "illum 2"]
    if texture:
        mtl.append(f"map_Kd {texture}")
    (folder / "model_normalized.mtl").write_text("\n".join(mtl) + "\n")
    lo, hi = verts.min(0), verts.max(0)
    (folder / "model_normalized.json").write_text(json.dumps(
        {"min": lo.tolist(), "max": hi.tolist(), "centroid": verts.mean(0).tolist()}))


def synthesize(out: str | Path, seed: int = 0, models_per_category: int = 4,
               texture_classes: tuple[str, ...] = ("wood", "city", "fabric"),
               images_per_class: int = 4) -> tuple[Path, Path]:
    """Write the pack; returns (models root, textures root)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    models_root, textures_root = out / "models", out / "textures"
    models_root.mkdir(parents=True, exist_ok=True)
    taxonomy = []
    for synset, name in CATEGORIES.items():
        taxonomy.append({"synsetId": synset, "name": f"{name},{name}s", "children": [],
                         "numInstances": models_per_category})
        for m in range(models_per_category):
            model_dir = models_root / synset / f"model{m:03d}"
            mesh = normalize(make_shape(name, rng))
            texture = None
            if m % 2 == 1:  # every other model is texture mapped, like the reference toy tree
                (model_dir / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(pattern(rng, 128)).save(model_dir / "images" / "texture0.png")
                texture = "../images/texture0.png"
            write_obj(model_dir / "models", mesh, texture, rng.uniform(0.2, 0.9, 3))
    (models_root / "taxonomy.json").write_text(json.dumps(taxonomy, indent=1))
    for kind, size in (("texture", 256), ("skybox", 512)):
        for cls in texture_classes:
            folder = textures_root / kind / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(images_per_class):
                Image.fromarray(pattern(rng, size)).save(folder / f"{i}.jpg", quality=90)
    return models_root, textures_root


def default_pack() -> tuple[Path, Path]:
    """The procedural pack, built once into the cache directory: (models root, textures root)."""
    pack = default_cache_dir() / f"procedural-pack-v{PACK_VERSION}"
    if not (pack / ".complete").exists():
        tmp = pack.with_name(pack.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        synthesize(tmp)
        (tmp / ".complete").touch()
        if not (pack / ".complete").exists():  # another process may have won the race
            shutil.rmtree(pack, ignore_errors=True)
            with contextlib.suppress(OSError):
                tmp.rename(pack)
        shutil.rmtree(tmp, ignore_errors=True)
    return pack / "models", pack / "textures"
