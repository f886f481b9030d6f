"""What a render process may read: confined with Landlock before it loads Blender (no bpy here).

A render process parses untrusted meshes and images. It gets no credentials in its environment
(``environment.render_env``), and two kernel mechanisms keep it from the worker's:

- **Landlock** (Linux 5.13+, unprivileged): before importing bpy, the process restricts its own
  file reads, for good, to the system's program and library folders, the Python installation,
  the project's packages and the folders of its job (models, textures, scratch, kernel cache).
  Secret files (``/run/secrets/...``, any ``*_FILE`` elsewhere), the checkout's ``secrets/`` and
  ``.env``, home folders and ``/tmp`` are outside that list, so reading them fails with EACCES.
  Writes are not restricted: nothing secret is writable.
- **Not dumpable**: the worker's own processes clear their dumpable flag
  (``PR_SET_DUMPABLE``), so ``/proc/<pid>/environ``, ``mem`` and ``maps`` of the worker, which
  holds the Redis password and the S3 key in memory, are root's and unreadable by a process of
  the same user.

``FARM_RENDER_SANDBOX=0`` turns the confinement off (a host whose GPU driver needs a path the
list lacks); a kernel without Landlock leaves the process unconfined and says so in its log.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import sysconfig
from pathlib import Path

from farm.settings import current

log = logging.getLogger(__name__)

# The system's folders a render process reads (programs, libraries, configuration, devices,
# /proc and /sys for CPU topology and the GPU driver). Not /run, /tmp, /var, /home, /root, /mnt.
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/dev", "/proc",
               "/sys")

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_READ_FILE, _READ_DIR = 1 << 2, 1 << 3
_PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 4, 38
_libc = ctypes.CDLL(None, use_errno=True)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def hide_memory() -> None:
    """Make this process's /proc files (environ, mem, maps) unreadable by other processes of
    its user; inherited by forked children, reset by exec."""
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def project_dirs() -> list[Path]:
    """The Python installation and the project's packages, wherever they are installed."""
    import farm

    paths = {sys.prefix, sys.base_prefix, *sysconfig.get_paths().values()}
    # not the checkout itself (its secrets/ and .env): only its packages
    source = Path(farm.__file__).resolve().parents[1]
    checkout = {Path.cwd().resolve()} | ({source} if (source / "pyproject.toml").exists() else set())
    paths |= {p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() not in checkout}
    packages = {Path(farm.__file__).parent, Path(__file__).resolve().parents[1]}  # farm, worker
    return sorted({Path(p) for p in paths} | packages)


def job_folders(job) -> tuple[Path, ...]:
    """The folders of a RenderJob its render process reads: assets and scratch."""
    return tuple(Path(p).resolve() for p in (job.models, job.textures, job.staging.parent))


def cache_folders() -> list[Path]:
    """The kernel caches (their variables are set for render processes) and the farm's cache."""
    from farm.assets.library import default_cache_dir

    named = [os.environ.get(k) for k in ("OPTIX_CACHE_PATH", "CUDA_CACHE_PATH")]
    return [Path(p) for p in named if p] + [default_cache_dir()]


def confine(extra: list[Path]) -> int:
    """Restrict this process's reads to the system and project folders plus ``extra``; returns
    the Landlock ABI version used, 0 when the kernel has no Landlock (nothing restricted)."""
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return 0
    attr = _RulesetAttr(_READ_FILE | _READ_DIR)
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in {*map(Path, SYSTEM_DIRS), *project_dirs(), *extra}:
            _allow(ruleset, path)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or _libc.syscall(
                _SYS_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def _allow(ruleset: int, path: Path) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here (e.g. /lib32)
    try:
        access = _READ_FILE | _READ_DIR if path.is_dir() else _READ_FILE
        rule = _PathBeneath(access, fd)
        if _libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def confine_to_job(job) -> None:
    """Confine this render process's reads to the system, the project and ``job``'s folders
    (a long-lived process does it at its first job: the pool gives it only jobs of the same
    folders)."""
    if not current().render_sandbox:
        log.warning("render process not confined (FARM_RENDER_SANDBOX=0)")
        return
    folders = [*job_folders(job), *cache_folders()]
    abi = confine(folders)
    if abi:
        log.info("render process confined (Landlock ABI %d): reads limited to the system, the "
                 "project and %s", abi, ", ".join(map(str, folders)))
    else:
        log.warning("render process not confined: this kernel has no Landlock")
