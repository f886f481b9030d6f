"""A long-lived render process: ``python -m worker.process.server`` renders video after video.

Started and driven by ``worker.process.pool.RenderProcess`` (see there for the design). It imports bpy,
and so loads Cycles' kernels and initialises the device, once, then reads one JSON job per line
on stdin and answers on its original stdout, which becomes the protocol channel
(``worker.process.protocol``: ``@@ready`` once, ``@@progress`` per frame, ``@@done`` per job).

Everything else the process prints (Blender, Cycles, logging) goes to the job's
``staging/render.log`` while a job runs and to the ``--log`` file between jobs: file
descriptors 1 and 2 are redirected, so C-level output lands there too. Each job starts from
Blender's factory settings (``build_scene`` resets them). After a job that did not end in a
rendered video or a gate rejection (a broken asset, a Python exception), the process exits:
whatever that job left behind in Blender never meets the next video.

Like the one-shot ``worker.process.main``, it dies with its parent (PR_SET_PDEATHSIG) and gets the
allow-listed environment. While rendering, its command line (``/proc/<pid>/cmdline``, what ``ps``
shows) reads ``python -m worker.process.main --spec <staging>/spec.yaml``, the one-shot render of
that spec, so tools that look for the render of a video (the chaos run's monitor, ``pgrep -f``)
find it whichever design runs; while idle it reads ``bl30k-render-server idle``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from worker.process.main import die_with_parent, run_job
from worker.process.protocol import DONE, EXIT_GATE, EXIT_OK, READY, RenderJob, message, progress_line
from worker.process.sandbox import confine_to_job

TITLE_SPACE = 2048  # bytes of command line kept for the title (the pool pads with this much)
_libc = ctypes.CDLL(None)


class Title:
    """Rewrites this process's command line in place (like setproctitle), within the length of
    the original one, which the parent pads."""

    def __init__(self) -> None:
        try:
            fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            self.start, self.end = int(fields[45]), int(fields[46])  # arg_start, arg_end
        except (OSError, IndexError, ValueError):
            self.start = self.end = 0

    def set(self, *args: str) -> bool:
        raw = b"\0".join(a.encode() for a in args) + b"\0"
        size = self.end - self.start
        if not self.start or len(raw) > size:
            return False
        ctypes.memmove(self.start, raw.ljust(size, b"\0"), size)
        return True


def reset_peak_rss() -> bool:
    """Reset VmHWM (the kernel's peak resident memory) so it measures the next job alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Output:
    """Points file descriptors 1 and 2 (Python's and C's stdout/stderr) at a log file."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def to(self, path: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        _libc.fflush(None)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def back(self) -> None:
        self.to(self.home)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    die_with_parent()
    title = Title()
    title.set("bl30k-render-server", "starting")
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", type=Path, required=True, help="output between jobs")
    ap.add_argument("--pad", default="", help="command-line room for the title")
    args = ap.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    lock = threading.Lock()

    def send(line: str) -> None:
        with lock:
            proto.write(line + "\n")
            proto.flush()

    out = Output(args.log)
    out.back()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import worker.render.frames  # noqa: F401 - loads Blender (bpy, Cycles) once for every video

    videos = 0
    title.set("bl30k-render-server", "idle")
    send(message(READY, {"pid": os.getpid(), "boot_s": round(time.perf_counter() - started, 3)}))
    for line in sys.stdin:
        if not line.strip():
            continue
        data = json.loads(line)
        if data.get("op") == "quit":
            break
        job = RenderJob.from_json(data)
        if not videos:  # before Blender reads a single untrusted file
            confine_to_job(job)
        title.set(sys.executable, "-m", "worker.process.main", "--spec", str(job.spec))
        reset_peak_rss()
        out.to(job.staging / "render.log")
        try:
            code, payload = run_job(job, lambda done, total: send(progress_line(done, total)))
        finally:
            out.back()
        videos += 1
        send(message(DONE, {"code": code, "payload": payload}))
        if code not in (EXIT_OK, EXIT_GATE):
            break  # a failed job may have left Blender in any state: the next video gets a fresh one
        title.set("bl30k-render-server", "idle", f"({videos} videos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
