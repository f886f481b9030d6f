"""A model library that always fails the quality gate, for gate-failure tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from farm.assets.procedural import normalize, sphere, write_obj


def speck_models(models: Path, taxonomy_from: Path) -> Path:
    """One model whose bounding box claims a unit diagonal but whose mesh is 1000x smaller (in a
    library that declares its meshes normalised, so the renderer keeps them as they are): it
    passes the geometric check and fails the mask check on every attempt."""
    folder = models / "00000002" / "speck" / "models"
    verts, uvs, tris = normalize(sphere(n=8))
    write_obj(folder, (verts * 0.001, uvs, tris), None, np.array([1.0, 1.0, 1.0]))
    (folder / "model_normalized.json").write_text(json.dumps({"min": [-0.5] * 3, "max": [0.5] * 3}))
    shutil.copy(taxonomy_from / "taxonomy.json", models / "taxonomy.json")
    (models / "farm_library.yaml").write_text("normalized: true\n")
    return models
