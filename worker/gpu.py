"""GPU pinning: each worker claims one GPU of its host through a Redis lease (no bpy here).

Docker gives every replica of a scaled service the same GPU when ``count: 1`` is used
(docker/compose#11863), so every replica sees all GPUs and claims one itself. It fails closed:

- ``CUDA_VISIBLE_DEVICES`` is set to ``""`` (no GPU) before anything else, so a worker that has
  not claimed a GPU can never render on all of them;
- a worker that cannot claim one (Redis unreachable, every GPU held) retries for
  ``FARM_GPU_CLAIM_TIMEOUT`` seconds, then exits non-zero (the container restarts and tries again);
- the lease is renewed by a heartbeat; when it is lost (another holder, deleted, Redis away
  longer than the TTL allows) the worker hands its render back and exits non-zero.

A GPU is keyed by its UUID (``nvidia-smi --query-gpu=index,uuid``): ``gpu:GPU-...`` identifies the
physical device whatever host or container names say, and ``CUDA_VISIBLE_DEVICES`` takes the UUID.
GPUs given only as indices (``FARM_GPUS=0,1`` without nvidia-smi) are keyed
``gpu:<FARM_NODE_NAME>:<index>``, where the node name defaults to the host name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from farm.queue.state import PREFIX, BrokerUnavailable, FarmState
from farm.settings import current
from worker.process.environment import Gpu, discover_gpus, say

EXIT_NO_GPU = 69  # EX_UNAVAILABLE: no GPU could be claimed within FARM_GPU_CLAIM_TIMEOUT
EXIT_GPU_LOST = 75  # EX_TEMPFAIL: the GPU lease was lost; restart and claim again


def node_name() -> str:
    """This host's name in GPU lease keys and metrics: FARM_NODE_NAME, else the host name
    (never a shared constant: two hosts with one name would compete for index-keyed leases)."""
    return current().node_name


_claimed: str | None = None  # the index of the GPU this worker claimed (forked children share it)


def claimed_index() -> str | None:
    """The GPU this worker claimed (``pin_worker``), None on a CPU."""
    return _claimed


@dataclass
class GpuLease:
    """A GPU lease renewed by a heartbeat thread, strictly: it is *lost* as soon as the key no
    longer holds our token (another holder, or deleted) or Redis stayed unreachable for most of
    the TTL (the key may have expired). A lost lease is never taken back: ``on_lost`` is called
    once and the worker must stop using the GPU."""

    state: FarmState
    key: str
    token: str
    ttl_s: float
    on_lost: Callable[[str], None] | None = None
    lost: str | None = None  # why, once lost
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.state.acquire(self.key, self.token, self.ttl_s):
            return False
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{self.key}")
        self._thread.start()
        return True

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if self.state.renew(self.key, self.token, self.ttl_s):
                    renewed = time.monotonic()
                    continue
                holder = self.state.holder(self.key)
                reason = (f"GPU lease {self.key} is now held by {holder}" if holder
                          else f"GPU lease {self.key} disappeared from Redis")
            except redis.RedisError as exc:
                if time.monotonic() - renewed < self.ttl_s * 2 / 3:
                    continue  # Redis briefly away: the key outlives this
                reason = (f"GPU lease {self.key} not renewed for "
                          f"{time.monotonic() - renewed:.0f} s (TTL {self.ttl_s:.0f} s): {exc}")
            if self._stop.is_set():
                return
            self.lost = reason
            if self.on_lost:
                self.on_lost(reason)
            return

    def release(self) -> None:
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.lost:
            return
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self.state.release(self.key, self.token)


def claim_gpu(state: FarmState, gpus: list, ttl_s: float = 90.0, wait_s: float = 0.0,
              poll_s: float = 5.0, on_lost: Callable[[str], None] | None = None
              ) -> tuple[str, GpuLease] | None:
    """Claim a free GPU: (its CUDA_VISIBLE_DEVICES value, lease); retries for ``wait_s``."""
    gpus = [g if isinstance(g, Gpu) else Gpu(str(g)) for g in gpus]
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    node = node_name()
    while True:
        for gpu in gpus:
            lease = GpuLease(state, gpu.lease_key(node), token, ttl_s, on_lost)
            if lease.acquire():
                if gpu.uuid:  # labels for the exporter: which node and index this UUID is
                    state.r.hset(f"{PREFIX}gpuinfo:{gpu.uuid}",
                                 mapping={"node": node, "index": gpu.index})
                return gpu.visible, lease
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


class NoGpu(RuntimeError):
    """No GPU could be claimed in time."""


def claim_timeout() -> float:
    return current().gpu_claim_timeout


def pin_worker(connect: Callable[[], FarmState], ttl_s: float = 90.0,
               timeout_s: float | None = None, poll_s: float = 2.0,
               on_lost: Callable[[str], None] | None = None) -> GpuLease | None:
    """Claim a GPU for this worker process and point CUDA_VISIBLE_DEVICES at it.

    No GPU visible first; no GPU on the host (or FARM_GPUS=none) means CPU rendering. Raises
    ``NoGpu`` after ``timeout_s`` (FARM_GPU_CLAIM_TIMEOUT, 300 s) without a claim: Redis
    unreachable, or every GPU held by other workers.
    """
    global _claimed
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # fail closed: nothing visible until claimed
    _claimed = None
    gpus = discover_gpus(current().gpus)
    if not gpus:
        return None
    timeout_s = claim_timeout() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    why = "no attempt"
    while True:
        try:
            claimed = claim_gpu(connect(), gpus, ttl_s, wait_s=0, on_lost=on_lost)
            why = (f"all {len(gpus)} GPUs of node {node_name()} are held by other workers"
                   if claimed is None else "")
        except (BrokerUnavailable, redis.RedisError) as exc:
            claimed, why = None, f"cannot reach Redis to claim a GPU: {exc}"
        if claimed:
            visible, lease = claimed
            gpu = next(g for g in gpus if g.visible == visible)
            # nvidia-smi numbers GPUs by PCI bus; make CUDA (and Cycles) agree with it
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
            _claimed = gpu.index
            return lease
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoGpu(f"no GPU claimed within {timeout_s:.0f} s (FARM_GPU_CLAIM_TIMEOUT): {why}")
        say(f"{why}; retrying ({left:.0f} s left)")
        time.sleep(min(poll_s, max(left, 0.1)))


def describe_claim(lease: GpuLease | None) -> str:
    if lease is None:
        return "CPU (no GPU visible)"
    index = _claimed or os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    label = f"GPU {index}" + (f" ({visible})" if visible and visible != index else "")
    return f"{label} of node {node_name()} (lease {lease.key})"
