"""Cycles device selection: OptiX, then CUDA, on GPU; CPU otherwise. Imports bpy."""

from __future__ import annotations

import logging

import bpy

log = logging.getLogger(__name__)

GPU_BACKENDS = ("OPTIX", "CUDA")


def select_device(scene: bpy.types.Scene, wanted: str = "AUTO") -> str:
    """Configure ``scene`` for ``wanted`` (AUTO, CPU, GPU, CUDA, OPTIX); return what is used.

    GPU visibility is controlled by CUDA_VISIBLE_DEVICES, set before the process imports bpy.
    AUTO and GPU fall back to CPU when no GPU device is found; CUDA/OPTIX insist on that backend.
    """
    scene.cycles.device = "CPU"
    if wanted == "CPU":
        log.info("render device: CPU (requested)")
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    backends = GPU_BACKENDS if wanted in ("AUTO", "GPU") else (wanted,)
    for backend in backends:
        try:
            prefs.compute_device_type = backend
        except TypeError:  # backend not compiled in
            continue
        prefs.refresh_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if not gpus:
            continue
        for d in prefs.devices:
            d.use = d.type == backend
        scene.cycles.device = "GPU"
        names = ", ".join(d.name for d in gpus)
        log.info("render device: %s (%s)", backend, names)
        return f"{backend}: {names}"
    if wanted in ("CUDA", "OPTIX"):
        raise RuntimeError(f"render.device {wanted} requested but no {wanted} device was found")
    log.info("render device: CPU (no OptiX/CUDA device found)")
    return "CPU"
