"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd (Debian's slurm-wlm),
run as root in a private folder with their own ports, munge socket and key, and fake GPUs as
``gres`` (character devices: slurmd rejects plain files). Nothing of the host's /etc is used."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from devtools.processes import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo")


def missing_tools() -> list[str]:
    return [t for t in DAEMONS if not shutil.which(t)]


class SlurmCluster:
    """``with SlurmCluster(gpus=2, cpus=2) as c: c.run("sbatch", ...)``; every daemon is
    stopped by its pid on exit."""

    def __init__(self, gpus: int = 2, cpus: int = 2, memory_mb: int = 4000,
                 kill_wait_s: int = 30) -> None:
        self.gpus, self.cpus, self.memory_mb, self.kill_wait_s = gpus, cpus, memory_mb, kill_wait_s
        # Not under pytest's 0700 tmp folders: the munge user must reach its socket.
        self.folder = Path(tempfile.mkdtemp(prefix="slurm-test-"))
        self.folder.chmod(0o755)
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname().split(".")[0]  # Slurm's short host name
        self.env = {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}

    # --- start / stop ----------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        try:
            self._munge()
            self._configure()
            conf = self.env["SLURM_CONF"]
            self.procs.append(self._spawn(["slurmctld", "-D", "-f", conf], "slurmctld"))
            self.procs.append(self._spawn(["slurmd", "-D", "-f", conf, "-N", self.node], "slurmd"))
            self.wait_idle(timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if len(self.procs) == 3 and all(p.poll() is None for p in self.procs):
            self.run("scancel", "--full", f"--user={os.getuid()}", check=False)  # this cluster's
            deadline = time.monotonic() + self.kill_wait_s + 10
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.procs):  # slurmd, slurmctld, munged: by pid
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._kill_leftover_steps()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _kill_leftover_steps(self) -> None:
        """slurmstepd processes of this cluster's jobs (a job still running when slurmd
        stopped) and their children, found by this cluster's folder in their environment."""
        marker = str(self.folder).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if marker in (proc / "environ").read_bytes():
                    os.kill(int(proc.name), 9)
            except (OSError, ProcessLookupError):
                continue

    def _spawn(self, cmd: list[str], name: str, **kwargs) -> subprocess.Popen:
        with open(self.folder / f"{name}.out", "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    **kwargs)

    def _munge(self) -> None:
        """munged as the munge user, with its own key and socket."""
        folder = self.folder / "munge"
        folder.mkdir()
        folder.chmod(0o755)  # the socket's folder must be reachable by every user
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        import pwd

        munge = pwd.getpwnam("munge")
        for path in (folder, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self.munge_socket = folder / "munge.socket"
        self.procs.append(self._spawn(
            ["munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--log-file={folder / 'munged.log'}", f"--pid-file={folder / 'munged.pid'}",
             f"--seed-file={folder / 'munged.seed'}"], "munged",
            user=munge.pw_uid, group=munge.pw_gid, extra_groups=[]))
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("munged did not start: " + self.log("munged.out"))
            time.sleep(0.05)

    def _configure(self) -> None:
        d = self.folder
        devices = d / "dev"
        devices.mkdir()
        for i in range(self.gpus):  # /dev/null's numbers: a real character device
            os.mknod(devices / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        (d / "gres.conf").write_text("".join(
            f"NodeName={self.node} Name=gpu File={devices}/nvidia{i}\n" for i in range(self.gpus)))
        (d / "slurm.conf").write_text(f"""\
ClusterName=farmtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
MpiDefault=none
KillWait={self.kill_wait_s}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} \
Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=gpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    # --- commands --------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() != "idle":
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                raise RuntimeError("the Slurm node did not become idle:\n"
                                   + self.log("slurmctld.log")[-2000:] + self.log("slurmd.log")[-2000:])
            time.sleep(0.2)

    def jobs(self) -> dict[str, str]:
        """Job id (``123_0`` for array tasks) -> state, for jobs slurmctld still knows."""
        out = self.run("squeue", "-h", "-a", "-r", "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def job_field(self, job: str, name: str) -> str:
        out = self.run("scontrol", "-o", "show", "job", job).stdout
        for part in out.split():
            if part.startswith(f"{name}="):
                return part.split("=", 1)[1]
        raise KeyError(name)

    def log(self, name: str) -> str:
        path = self.folder / name
        return path.read_text(errors="replace") if path.exists() else ""
