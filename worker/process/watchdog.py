"""The watchdog of a render process: time limit, memory cap (peak resident memory) and the
caller's abort (no bpy here)."""

from __future__ import annotations

import functools
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from farm.settings import Settings, current
from worker.process.environment import discover_gpus

Abort = Callable[[], str | None]  # polled while rendering: a reason to stop, or None
MEMORY_SHARE = 0.8  # of the worker's memory, for its render processes together
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max",  # cgroup v2
                 "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1


def cgroup_limit_bytes(paths: tuple[str, ...] = CGROUP_LIMITS) -> int | None:
    """The memory limit of this process's cgroup (a container's), or None when unlimited."""
    for path in paths:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 2**60:  # v1 says "unlimited" with a huge number
            return int(raw)
        return None
    return None


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def auto_max_rss_mb(limit: int | None, host: int, workers_on_host: int, renders: int) -> float:
    """The default cap of one render process: a share of the worker's memory (its cgroup limit,
    else the host's divided among its workers) per concurrent render."""
    memory = limit if limit is not None else host / max(1, workers_on_host)
    return round(MEMORY_SHARE * memory / max(1, renders) / 2**20)


def max_rss_mb(settings: Settings | None = None) -> float | None:
    """FARM_RENDER_MAX_RSS_MB: resident-memory cap of one render process in MB; ``auto`` (the
    default) derives it from the memory this worker may use, ``off`` sets none."""
    settings = settings or current()
    cap = settings.render_max_rss_mb
    if cap != "auto":
        return cap
    return auto_max_rss_mb(*_memory_facts(), settings.renders_per_gpu or 1)


@functools.cache
def _memory_facts() -> tuple[int | None, int, int]:
    """(cgroup limit, host memory, GPUs on the host: one worker each), read once per process."""
    return cgroup_limit_bytes(), host_memory_bytes(), len(discover_gpus("auto"))


def status_mb(pid: int, field: str) -> float:
    """A memory figure of ``/proc/<pid>/status`` in MB, e.g. ``VmHWM`` (peak resident memory:
    a spike between two samples of the watchdog still counts) or ``VmRSS``; 0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Watchdog:
    """Kills a render process that runs past its time limit, holds too much memory (its peak,
    VmHWM) or that the caller stops (``abort``); samples every ``interval`` seconds: one-shot
    processes, and the pool's long-lived ones per video.

    A poison asset (an absurd mesh or texture) then fails as a crash with a reason instead of
    taking the machine's memory; the worker itself is unaffected.
    """

    def __init__(self, proc: subprocess.Popen, timeout: float | None, max_rss: float | None,
                 interval: float = 0.5, abort: Abort | None = None) -> None:
        self.proc, self.timeout, self.max_rss, self.interval = proc, timeout, max_rss, interval
        self.abort = abort
        self.reason: str | None = None
        self.aborted: str | None = None  # the caller's reason to stop, when it stopped it
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            self.aborted = self.abort() if self.abort else None
            if self.aborted:
                self.proc.kill()
                return
            rss = self._sample()
            if self.timeout and time.monotonic() - started > self.timeout:
                self.reason = f"exceeded the {self.timeout:.0f} s time limit"
            elif self.max_rss and rss > self.max_rss:
                self.reason = f"resident memory {rss:.0f} MB over the {self.max_rss:.0f} MB limit"
            if self.reason:
                self.proc.kill()
                return

    def _sample(self) -> float:
        rss = status_mb(self.proc.pid, "VmHWM")
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the job's peak once more (a spike between two samples counts); a
        # process that has exited has no memory figures left and is not reaped here

    def reap(self) -> int:
        """Wait for the process and return its exit code; its lifetime peak memory (rusage)
        is checked once more, so a spike shorter than the sampling interval still counts."""
        self.stop()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = max(self.peak_rss_mb, usage.ru_maxrss / 1024)  # KiB on Linux
        if not self.reason and self.max_rss and self.peak_rss_mb > self.max_rss:
            self.reason = (f"resident memory {self.peak_rss_mb:.0f} MB over the "
                           f"{self.max_rss:.0f} MB limit")
        return self.proc.returncode
