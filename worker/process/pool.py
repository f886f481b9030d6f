"""Long-lived render processes: many videos per Blender process, recycled before they age (no bpy).

The one-shot design (``worker.process.main``, still used with ``FARM_RENDER_PROCESS=oneshot`` and
by the benchmarks' "old design") starts Python, imports bpy, initialises the Cycles device and
loads its kernels for every video: ~0.7 s per video on a CPU, ~7 s on an H200 (OptiX context,
kernel modules from the cache, the denoiser), while the GPU idles. A ``RenderProcess`` pays that
once and renders video after video (``worker.process.server``). What the fresh process per video
protected is kept:

- **A crash or a leak affects one video.** A video whose process dies (Blender crash, watchdog
  kill, a hard time limit of the task) fails alone: the process is replaced, the next video
  renders in a fresh one. A job that ends in an error (broken mesh, Python exception) makes the
  server exit after answering, so nothing that job left in Blender meets the next video. Each
  video starts from Blender's factory settings.
- **Memory does not grow.** A process is recycled after ``FARM_RENDER_MAX_VIDEOS`` videos (50), or
  when its resident memory has grown ``FARM_RENDER_MAX_GROWTH_MB`` (1024) above what it held after
  its first video, or above 80 % of the cap ``FARM_RENDER_MAX_RSS_MB``. The replacement boots in
  the background at once, while the finished video uploads.
- **The watchdog** keeps the time limit (per video) and the memory cap, on the kernel's peak
  resident memory (VmHWM, reset by the server at the start of each video, so it is that video's
  peak) while it renders, once more when it ends, and on rusage when the process dies: a spike
  between two samples still fails the video that caused it, and only that one.
- **No credentials** reach it (``environment.render_env``) and it dies with its parent
  (PR_SET_PDEATHSIG, armed by the thread that starts it: start processes from a thread that
  outlives them, as the main thread of a Celery pool process or a ``worker render`` does).

``RenderPool`` holds ``size`` such processes (one per concurrent render; ``worker render`` and each
Celery pool process use one), starting them at once so that their boot (``import bpy``) overlaps
whatever comes before the first video.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from farm.settings import current
from worker.process.environment import ROOT, gpu_visible, kernel_cache_env, render_env
from worker.process.protocol import (
    DONE,
    EXIT_GATE,
    EXIT_OK,
    PROGRESS,
    READY,
    Progress,
    RenderJob,
    parse,
)
from worker.process.sandbox import job_folders
from worker.process.watchdog import Watchdog, max_rss_mb, status_mb

TITLE_SPACE = 2048  # worker.process.server.TITLE_SPACE (not imported: that module loads bpy's side)


def recycle_limits() -> tuple[int, float]:
    """(videos per process, MB of growth) before a render process is replaced."""
    settings = current()
    return settings.render_max_videos, settings.render_max_growth_mb


def boot_timeout() -> float:
    """Seconds a render process may take to start (import bpy); not the kernel compilation,
    which happens in the first render and counts against that render's limit."""
    return current().render_boot_timeout


@dataclass
class JobResult:
    """What became of one job: ``code`` as ``worker.process.main``'s exit codes (negative: killed
    by that signal), the result ``payload``, the job's peak memory, the watchdog's reason when it
    killed the process, and the last lines of the job's log."""

    code: int
    payload: dict
    peak_rss_mb: float = 0.0
    killed: str | None = None
    tail: list[str] = field(default_factory=list)
    log: Path | None = None
    process: dict = field(default_factory=lambda: {"design": "oneshot"})
    aborted: str | None = None  # the caller stopped it (runner's ``abort``), with its reason


def _reap(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc``: (exit code, lifetime peak memory from rusage in MB)."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # already reaped
        return (proc.returncode if proc.returncode is not None else -9), 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def _tail(path: Path | None, lines: int = 30) -> list[str]:
    try:
        text = path.read_text(errors="replace") if path else ""
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class RenderProcess:
    """One ``python -m worker.process.server`` process; see the module docstring.

    Starting it returns at once; ``run`` waits for it to be ready before sending the job.
    """

    def __init__(self, env: dict | None = None, log_dir: str | Path | None = None) -> None:
        self.env = dict(env or {})
        child_env = {**kernel_cache_env(), **render_env(), **self.env, "PYTHONUNBUFFERED": "1"}
        fd, log = tempfile.mkstemp(prefix="bl30k-render-server-", suffix=".log", dir=log_dir)
        os.close(fd)
        self.log = Path(log)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.process.server", "--log", str(self.log),
             "--pad", "." * TITLE_SPACE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, errors="replace",
            env=child_env, cwd=ROOT)
        self.ready: dict | None = None
        self.ready_s: float | None = None  # seconds from start to ready
        # the job folders it confined its reads to at its first job (worker/process/sandbox.py)
        self.folders: tuple[Path, ...] | None = None
        self.videos = 0
        self.baseline_rss_mb: float | None = None
        self.rss_mb = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_ready(self, timeout: float | None = None) -> dict:
        """Block until the process has loaded Blender; RuntimeError if it died meanwhile."""
        if self.ready is not None:
            return self.ready
        assert self.proc.stdout is not None
        watch = Watchdog(self.proc, timeout or boot_timeout(), None)
        try:
            for line in self.proc.stdout:
                kind, data = parse(line) or (None, None)
                if kind == READY:
                    self.ready = data
                    self.ready_s = round(time.monotonic() - self.started, 3)
                    return self.ready
        finally:
            watch.stop()
        code, _ = _reap(self.proc)
        why = f" ({watch.reason})" if watch.reason else ""
        raise RuntimeError(f"render process {self.pid} exited with code {code} while starting"
                           f"{why}: {' | '.join(_tail(self.log, 8))}")

    def run(self, job: RenderJob, timeout: float | None = None, progress: Progress | None = None,
            max_rss: float | None = None, abort=None) -> JobResult:
        """Render one job (its spec file already in its staging folder) as
        ``worker.process.main`` would, in this process."""
        log = job.staging / "render.log"
        self.folders = self.folders or job_folders(job)
        try:
            self.wait_ready()
        except RuntimeError as exc:
            return JobResult(1, {"status": "error", "kind": "crash", "message": str(exc)},
                             tail=_tail(self.log), log=self.log)
        try:
            self._send(job.to_json())
        except OSError:  # it died since the last video (an OOM kill, say): this one failed
            self.proc.kill()
            code, rusage_peak = _reap(self.proc)
            return JobResult(code, {}, rusage_peak, None, _tail(self.log), self.log)
        watch = Watchdog(self.proc, timeout, max_rss, abort=abort)
        done = None
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                kind, data = parse(line) or (None, None)
                if kind == PROGRESS and progress:
                    progress(*data)
                elif kind == DONE:
                    done = data
                    break
        except BaseException:  # a soft time limit, a lost lease, a shutdown: never orphan it
            self.kill()
            raise
        finally:
            watch.stop()
        self.videos += 1
        peak = watch.peak_rss_mb
        if done is None or watch.reason or watch.aborted:  # died, or killed by the watchdog
            self.proc.kill()
            code, rusage_peak = _reap(self.proc)
            return JobResult(code, {}, max(peak, rusage_peak), watch.reason, _tail(log), log,
                             aborted=watch.aborted)
        if max_rss and peak > max_rss:  # a spike between two samples, seen at the end
            self.kill()
            return JobResult(-9, {}, peak, f"resident memory {peak:.0f} MB over the "
                             f"{max_rss:.0f} MB limit", _tail(log), log)
        code = int(done["code"])
        if code not in (EXIT_OK, EXIT_GATE):  # the server exits after a failed job; wait for it
            self.close()
        else:
            self.rss_mb = status_mb(self.pid, "VmRSS")
            if self.baseline_rss_mb is None:
                self.baseline_rss_mb = self.rss_mb
        return JobResult(code, done["payload"], peak, None, _tail(log), log,
                         {"design": "server", "pid": self.pid, "video": self.videos,
                          "ready_s": self.ready_s})

    def worn_out(self, max_videos: int, max_growth_mb: float, max_rss: float | None) -> str | None:
        """Why this process should be replaced before the next video (None: it may go on)."""
        if self.videos >= max_videos:
            return f"rendered {self.videos} videos"
        if self.baseline_rss_mb is not None and self.rss_mb - self.baseline_rss_mb > max_growth_mb:
            return (f"resident memory grew from {self.baseline_rss_mb:.0f} to "
                    f"{self.rss_mb:.0f} MB")
        if max_rss and self.rss_mb > 0.8 * max_rss:
            return f"resident memory {self.rss_mb:.0f} MB near the {max_rss:.0f} MB limit"
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        _reap(self.proc)
        self._close_pipes()
        self.log.unlink(missing_ok=True)

    def close(self, timeout: float = 15.0) -> None:
        """Ask the process to exit (kill it if it does not); drop its between-jobs log."""
        if self.proc.poll() is None:
            try:
                self._send(json.dumps({"op": "quit"}))
                self.proc.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
        _reap(self.proc)
        self._close_pipes()
        self.log.unlink(missing_ok=True)  # a failed start was reported with its tail

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe:
                    pipe.close()
            except OSError:
                pass


class RenderPool:
    """``size`` render processes, each rendering one video at a time; ``run`` takes a free one
    (waiting if none is), replaces it when it died or wore out, and gives it back.

    ``env`` is added to every process's environment; a job with another ``env`` restarts its
    process with it.
    """

    def __init__(self, size: int = 1, env: dict | None = None, start: bool = True,
                 log_dir: str | Path | None = None) -> None:
        self.size, self.env, self.log_dir = size, dict(env or {}), log_dir
        self.max_videos, self.max_growth_mb = recycle_limits()
        self.pid = os.getpid()
        self._slots: list[RenderProcess | None] = [None] * size
        self._free: deque[int] = deque(range(size))
        self._cond = threading.Condition()
        self.recycled: list[str] = []  # why processes were replaced (for logs and benchmarks)
        if start:
            self._slots = [self._spawn(self.env) for _ in range(size)]

    def _spawn(self, env: dict) -> RenderProcess:
        return RenderProcess(env, self.log_dir)

    def _acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.popleft()

    def _release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    def processes(self) -> list[RenderProcess]:
        return [p for p in self._slots if p is not None]

    def run(self, job: RenderJob, timeout: float | None = None, progress: Progress | None = None,
            env: dict | None = None, abort=None) -> JobResult:
        env = {**self.env, **(env or {})}
        slot = self._acquire()
        try:
            proc = self._slots[slot]
            if proc is not None and (not proc.alive or proc.env != env
                                     or proc.folders not in (None, job_folders(job))):
                proc.close()
                proc = None
            if proc is None:
                proc = self._slots[slot] = self._spawn(env)
            cap = max_rss_mb()
            try:
                result = proc.run(job, timeout, progress, cap, abort)
            except BaseException:  # a soft time limit, a shutdown: this process goes
                proc.kill()
                self._slots[slot] = None  # the next video starts a fresh one
                raise
            why = (("died" if result.killed is None else result.killed) if not proc.alive
                   else proc.worn_out(self.max_videos, self.max_growth_mb, cap))
            if why:
                self.recycled.append(why)
                proc.close()
                # the replacement boots now, while this video is uploaded
                self._slots[slot] = self._spawn(env)
            return result
        finally:
            self._release(slot)

    def close(self) -> None:
        with self._cond:
            slots, self._slots = self._slots, [None] * self.size
        for proc in slots:
            if proc is not None:
                proc.close()

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the render pool of a Celery worker process ----------------------------------------------

_worker_pool: RenderPool | None = None


def renders_per_device() -> int:
    """FARM_RENDERS_PER_GPU: videos rendered at once on one device. Default 2 on a GPU (one
    process path-traces while the other does its CPU part: scene sync, compositing, image and
    mask encoding, scene build between videos; measured at ~45 % GPU use for one alone) and 1
    on a CPU (Cycles already uses every core)."""
    renders = current().renders_per_gpu
    if renders is not None:
        return max(1, renders)
    return 2 if gpu_visible() else 1


def render_design() -> str:
    """FARM_RENDER_PROCESS: ``server`` (default: long-lived render processes) or ``oneshot``
    (a fresh process per video, the previous design; benchmarks compare the two)."""
    return current().render_process


def worker_pool() -> RenderPool | None:
    """This process's pool (one render process; None in the one-shot design). Created on first
    use, or by ``start_worker_pool`` when a Celery pool process starts; a forked child makes its
    own."""
    global _worker_pool
    if render_design() == "oneshot":
        return None
    if _worker_pool is None or _worker_pool.pid != os.getpid():
        _worker_pool = RenderPool(size=1)
    return _worker_pool


def start_worker_pool() -> None:
    """Start this worker process's render process now (it boots while the worker gets ready)."""
    worker_pool()


def stop_worker_pool() -> None:
    global _worker_pool
    if _worker_pool is not None and _worker_pool.pid == os.getpid():
        _worker_pool.close()
    _worker_pool = None
