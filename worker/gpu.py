"""GPU pinning: each worker claims one GPU of its host through a Redis lease (no bpy here).

Docker gives every replica of a scaled service the same GPU when ``count: 1`` is used
(docker/compose#11863), so every replica sees all GPUs and claims ``gpu:<node>:<index>`` itself.
The lease has a heartbeat; a dead worker's lease expires after its TTL. The claimed index goes into
``CUDA_VISIBLE_DEVICES`` for the render processes. No GPU means CPU rendering.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import uuid

from farm.state import FarmState, Lease

log = logging.getLogger(__name__)


def discover_gpus(spec: str | None = None) -> list[str]:
    """GPU indices: ``FARM_GPUS`` as "auto" (nvidia-smi), "none", or a list like "0,1,3"."""
    spec = (spec if spec is not None else os.environ.get("FARM_GPUS", "auto")).strip().lower()
    if spec in ("none", "cpu", ""):
        return []
    if spec != "auto":
        return [g.strip() for g in spec.split(",") if g.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("nvidia-smi failed (%s): rendering on CPU", exc)
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def node_name() -> str:
    """The physical host the GPUs belong to (replicas of one host must agree on it)."""
    return os.environ.get("FARM_NODE_NAME") or socket.gethostname()


def claim_gpu(state: FarmState, gpus: list[str], ttl_s: float = 90.0, wait_s: float = 0.0,
              poll_s: float = 5.0) -> tuple[str, Lease] | None:
    """Claim a free GPU of this node: (index, lease); retries for ``wait_s`` seconds."""
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        for index in gpus:
            lease = Lease(state, f"gpu:{node_name()}:{index}", token, ttl_s)
            if lease.acquire():
                return index, lease
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


def pin_worker(state: FarmState, ttl_s: float = 90.0) -> Lease | None:
    """Claim a GPU for this worker process and set CUDA_VISIBLE_DEVICES; log the device held.

    Waits until a GPU frees when every GPU of the node is held (more replicas than GPUs).
    """
    gpus = discover_gpus()
    if not gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return None
    while True:
        claimed = claim_gpu(state, gpus, ttl_s, wait_s=60)
        if claimed:
            index, lease = claimed
            # nvidia-smi numbers GPUs by PCI bus; make CUDA (and Cycles) agree with it
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            os.environ["CUDA_VISIBLE_DEVICES"] = index
            return lease
        log.warning("all %d GPUs of node %s are held by other workers; waiting", len(gpus),
                    node_name())


def describe_claim(lease: Lease | None) -> str:
    if lease is None:
        return "CPU (no GPU visible)"
    return f"GPU {os.environ.get('CUDA_VISIBLE_DEVICES')} of node {node_name()} (lease {lease.key})"
