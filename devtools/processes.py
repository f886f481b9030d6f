"""Starting and stopping the local services' processes (tests, the local farm, chaos runs)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f} s")


def spawn(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def stop(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM (Celery: warm shutdown), then SIGKILL after ``timeout``."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, parent pid, ...
    (OSError when the process is gone)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_state(pid: int) -> str:
    """``ps``'s state letter (R, S, T stopped, Z zombie, ...); "" when the process is gone."""
    try:
        return stat_fields(pid)[0]
    except (OSError, IndexError):
        return ""


def render_processes() -> dict[int, list[bytes]]:
    """Live render processes (pid: command line) as ``ps`` shows them, whichever design runs.

    A render process's vfork child (Blender runs ``sh -c xdg-user-dir`` at each factory reset)
    shows its parent's command line until it execs: it is left out, or one render would look
    like two.
    """
    found: dict[int, tuple[int, list[bytes]]] = {}
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"worker.process.main" in args:
                ppid = int(stat_fields(int(proc.name))[1])
                found[int(proc.name)] = (ppid, args)
        except (OSError, ValueError, IndexError):
            continue
    return {pid: args for pid, (ppid, args) in found.items()
            if found.get(ppid, (0, None))[1] != args}
