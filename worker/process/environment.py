"""What a render process sees of its host: the allow-listed environment, the host's kernel cache
and its GPUs (no bpy here).

The kernel cache (``FARM_KERNEL_CACHE``, default ``<cache>/kernels``) holds OptiX's and CUDA's
compiled kernels, shared by the workers of a host (worker/warmup.py). GPUs come from ``FARM_GPUS``
("auto": nvidia-smi; "none"; or indices / UUIDs); worker/gpu.py leases one per worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from farm.settings import current

ROOT = Path(__file__).resolve().parents[2]  # the repository: where render processes run
CUDA_CACHE_BYTES = str(4 << 30)


# What a render process may see of the worker's environment: it parses untrusted meshes and
# images, so no credentials, broker URL or storage settings reach it.
RENDER_ENV_NAMES = {"PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH",
                    "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_CACHE_HOME",
                    "FARM_CACHE_DIR", "FARM_CONFIGS", "FARM_RENDER_SANDBOX",
                    "OCIO"}
RENDER_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OPTIX_", "OMP_", "OPENBLAS_", "MKL_",
                       "BLENDER_", "CYCLES_")


def render_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment of a render process."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if k in RENDER_ENV_NAMES or k.startswith(RENDER_ENV_PREFIXES)}


def kernel_cache_dir() -> Path:
    """FARM_KERNEL_CACHE, else ``$FARM_CACHE_DIR/kernels``."""
    return current().kernel_cache


def kernel_cache_env(environ: dict | None = None) -> dict[str, str]:
    """OPTIX_CACHE_PATH, CUDA_CACHE_PATH and CUDA_CACHE_MAXSIZE for render processes: in the
    host's kernel cache, unless the environment already sets them."""
    environ = os.environ if environ is None else environ
    root = kernel_cache_dir()
    wanted = {"OPTIX_CACHE_PATH": str(root / "optix"), "CUDA_CACHE_PATH": str(root / "cuda"),
              "CUDA_CACHE_MAXSIZE": CUDA_CACHE_BYTES}
    out = {k: v for k, v in wanted.items() if not environ.get(k)}
    for key in ("OPTIX_CACHE_PATH", "CUDA_CACHE_PATH"):
        if key in out:
            with contextlib.suppress(OSError):
                Path(out[key]).mkdir(parents=True, exist_ok=True)
    return out


def gpu_visible() -> bool:
    """Whether render processes of this worker will see a GPU (after its GPU pin)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1", "none")
    return bool(discover_gpus())


def say(message: str) -> None:
    """worker_init runs before Celery configures logging: write straight to stderr."""
    print(f"[gpu] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Gpu:
    index: str  # nvidia-smi's index (a label), or the entry of FARM_GPUS
    uuid: str | None = None  # GPU-xxxxxxxx-...: the physical device

    def lease_key(self, node: str) -> str:
        return f"gpu:{self.uuid}" if self.uuid else f"gpu:{node}:{self.index}"

    @property
    def visible(self) -> str:
        """The value for CUDA_VISIBLE_DEVICES (the UUID when known: immune to index order)."""
        return self.uuid or self.index

    def __str__(self) -> str:
        return f"{self.index} ({self.uuid})" if self.uuid and self.uuid != self.index else self.index


def _nvidia_smi() -> list[Gpu] | None:
    """The host's GPUs with their UUIDs; None without a working nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        say(f"nvidia-smi failed ({exc}): no GPU used")
        return None
    gpus = []
    for line in out.splitlines():
        index, _, gpu_uuid = (part.strip() for part in line.partition(","))
        if index:
            gpus.append(Gpu(index, gpu_uuid or None))
    return gpus


def discover_gpus(spec: str | None = None) -> list[Gpu]:
    """``FARM_GPUS``: "auto" (nvidia-smi), "none", or indices / UUIDs like "0,1" or "GPU-...".

    Listed indices get their UUIDs from nvidia-smi when it is there.
    """
    spec = (spec if spec is not None else current().gpus).strip()
    if spec.lower() in ("none", "cpu", ""):
        return []
    listed = _nvidia_smi()
    if spec.lower() == "auto":
        return listed or []
    by_index = {g.index: g for g in listed or []}
    by_uuid = {g.uuid: g for g in listed or [] if g.uuid}
    gpus = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        if entry.upper().startswith("GPU-"):
            gpus.append(by_uuid.get(entry) or Gpu(entry, entry))
        else:
            gpus.append(by_index.get(entry) or Gpu(entry))
    return gpus
