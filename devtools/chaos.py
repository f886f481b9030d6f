"""Chaos run: a local farm renders a segment while faults are injected, then the end state is
checked, not assumed.

Faults: ``kill -9`` of whole workers in the middle of a render (restarted like a container
would be), a worker frozen (SIGSTOP) past its lease mid-render and then resumed (the zombie-lease
case), duplicate messages for running videos, cancel + re-enqueue of queued videos, a Redis
restart (AOF persistence), SIGTERM redeploys of every worker, S3 answering 503 to HEAD requests
for a while, the S3 server unreachable for a while, and a worker whose scratch disk is full (a
tiny tmpfs; skipped where mounting is not permitted), a black-hole worker (every render it
starts crashes: it must stop itself and give its videos back uncounted), and a running video
enqueued again with another seed (``--force``; the running generation must not complete it).
The farm's reconciler service runs as in production. Checks: every video done exactly once (one
upload), every frame's name and MD5 the ones its marker records and every marker the spec the
farm holds (no mixed output), spec and manifest present, nothing pending without a message
(stranded), no video rendered by two live processes of this farm at once, the black hole
stopped, the queue drained.

``python -m devtools chaos --videos 24 --workers 3``
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from devtools.faults import HttpFaultProxy
from devtools.local import farm_env, start_reconciler, start_redis, start_s3, start_worker
from devtools.processes import ROOT, free_port, process_state, render_processes, stop
from farm.io.layout import marker_video, segment_base, staged_video
from farm.io.storage import S3Storage
from farm.model.validate import spec_from_dict
from farm.queue.state import FarmState, connect

SEGMENT = 7
BUCKET = "chaos"
BLACK_HOLE = "blackhole"
SPECIAL = ("full", BLACK_HOLE)  # workers the kill, freeze and redeploy faults leave alone
OTHER_SEED = 999


@dataclass
class Report:
    videos: int
    faults: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    mixed: dict[str, str] = field(default_factory=dict)  # frames not the ones the marker records
    stranded: list[str] = field(default_factory=list)  # pending with no message, no lease
    incomplete: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    concurrent: set[str] = field(default_factory=set)
    queue_left: int = 0
    leftover: list[str] = field(default_factory=list)  # messages left in the broker
    worker_restarts: int = 0  # workers that died on their own (not killed by us) and restarted
    resent: int = 0  # videos re-sent by reconcile after the broker lost their message
    repaired: int = 0  # videos finalize re-sent because a frame was not its marker's
    failed: dict[str, str] = field(default_factory=dict)
    black_hole_running: bool = False  # the black-hole worker never stopped itself
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.mixed or self.stranded or self.incomplete
                    or self.duplicates or self.concurrent or self.queue_left
                    or self.black_hole_running)

    def summary(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (f"faults: {faults or 'none'}; videos={self.videos} lost={len(self.lost)} "
                f"duplicates={len(self.duplicates)} mixed={len(self.mixed)} "
                f"stranded={len(self.stranded)} concurrent={len(self.concurrent)} "
                f"incomplete={len(self.incomplete)} failed={len(self.failed)} "
                f"queue_left={self.queue_left} black_hole_running={int(self.black_hole_running)} "
                f"worker_restarts={self.worker_restarts} "
                f"resent={self.resent} repaired={self.repaired} wall={self.wall_s:.0f}s")


class RenderMonitor(threading.Thread):
    """Samples /proc: two live render processes of one video at once is a violation.

    Only renders staged under ``root`` (this run's folder) count: another farm on the same
    machine renders the same video ids.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root.absolute()
        self.violations: set[str] = set()
        self.seen: Counter = Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            live = Counter()
            for pid, args in render_processes().items():
                # a worker frozen with SIGSTOP renders nothing until it resumes, and then
                # its lost lease stops its render at once
                if b"--spec" in args and process_state(pid) not in ("T", "t", ""):
                    spec = Path(args[args.index(b"--spec") + 1].decode())
                    if spec.is_relative_to(self.root):
                        live[staged_video(spec.parent) or spec.parent.name] += 1
            self.seen.update(live.keys())
            self.violations.update(v for v, n in live.items() if n > 1)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _rendering_worker(workers: dict[str, subprocess.Popen]) -> str | None:
    """Name of a worker whose process group currently runs a render."""
    for name, proc in workers.items():
        if proc.poll() is not None:
            continue
        for pid in render_processes():
            try:
                if os.getpgid(pid) == proc.pid:
                    return name
            except OSError:
                continue
    return None


def _mount_tiny_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


def run_chaos(videos: int = 12, workers: int = 3, kills: int = 2, preset: str = "tiny",
              s3_outage_s: float = 8.0, timeout_s: float = 900.0, folder: Path | None = None,
              log=print, lease_ttl: int = 5, visibility_s: float | None = 20.0) -> Report:
    """Run the farm under faults and return the checked end state.

    ``visibility_s=None`` keeps the broker's visibility timeout derived from the presets (as in
    production); with a lease of 90 s that is the production-like round.
    """
    folder = Path(folder or tempfile.mkdtemp(prefix="farm-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(videos)
    started = time.monotonic()
    redis_port, s3_port = free_port(), free_port()
    password = "chaos-" + os.urandom(6).hex()
    services: list[subprocess.Popen] = []
    pool: dict[str, subprocess.Popen] = {}
    monitor = RenderMonitor(folder)
    proxy = None
    full_scratch = folder / "full-scratch"
    try:
        services.append(start_redis(folder / "redis", redis_port, password))
        services.append(start_s3(s3_port, folder / "s3.log"))
        proxy = HttpFaultProxy(s3_port)
        env = {**os.environ, **farm_env(redis_port, password, proxy.port, BUCKET,
                                         folder / "scratch"),
               "FARM_GPUS": "none", "FARM_LEASE_TTL": str(int(lease_ttl)),
               "FARM_RETRY_BACKOFF": "1", "FARM_RETRY_BACKOFF_MAX": "4",
               "FARM_MAX_DELIVERIES": str(kills + 3), "FARM_SCRATCH_FULL_PAUSE": "3"}
        if visibility_s is not None:
            # redelivery within seconds on purpose: the video lease de-duplicates
            env |= {"FARM_VISIBILITY_TIMEOUT": str(int(visibility_s)),
                    "FARM_SHORT_VISIBILITY_OK": "1"}
        broker = f"redis://:{password}@127.0.0.1:{redis_port}/0"
        state = FarmState(connect(broker))

        def scheduler(*args: str) -> str:
            proc = subprocess.run([sys.executable, "-m", "scheduler", "-q", *args], env=env,
                                  cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"scheduler {' '.join(args)} failed: {proc.stderr.strip()}")
            return proc.stdout

        def start(name: str, **extra: str) -> None:
            pool[name] = start_worker({**env, **extra}, name, folder / f"{name}.log",
                                      own_session=True)

        def done() -> int:
            try:
                return state.counts(SEGMENT).get("done", 0)
            except Exception:  # noqa: BLE001 - Redis may be restarting
                return -1

        def rendering() -> str | None:
            return _rendering_worker({k: v for k, v in pool.items() if k not in SPECIAL})

        scheduler("init-storage")
        for i in range(workers):
            start(f"w{i + 1}")
        if _mount_tiny_tmpfs(full_scratch):
            start("full", FARM_SCRATCH=str(full_scratch))
            report.faults["full_scratch_worker"] += 1
        else:
            report.skipped.append("full scratch disk (mounting a tmpfs is not permitted here)")
        # every render it starts is killed at once (a 1 MB memory cap), as on a broken GPU
        # it stops after 2 different videos crash in a row (not the default 3): on a loaded
        # machine the healthy workers may leave it no third before the segment is done
        start(BLACK_HOLE, FARM_RENDER_MAX_RSS_MB="1", FARM_RENDER_PROCESS="oneshot",
              FARM_WARMUP="off", FARM_WORKER_FAILURE_LIMIT="2",
              FARM_UNHEALTHY_FILE=str(folder / f"{BLACK_HOLE}.unhealthy"))
        report.faults["black_hole_worker"] += 1
        services.append(start_reconciler(env, folder / "reconciler.log", every_s=3.0,
                                         min_age_s=lease_ttl + 5))
        monitor.start()
        # A reserve of videos is held back until the mid-render faults are in, or until the
        # farm runs out of work before one landed: however slow or loaded the machine, there is
        # a render to kill, freeze and enqueue again (the waits below are per fault).
        first = max(1, videos - max(1, videos // 4))
        scheduler("enqueue", "--segment", str(SEGMENT), "--count", str(first), "--preset", preset)
        log(f"chaos: {videos} videos ({videos - first} held back), {workers} workers, "
            f"state in {folder}")
        reserve = [videos - first]

        def release_reserve() -> None:
            if reserve[0]:
                scheduler("enqueue", "--segment", str(SEGMENT), "--start", str(first),
                          "--count", str(reserve[0]), "--preset", preset)
                log(f"chaos: enqueued the {reserve[0]} held-back videos ({done()} done)")
                reserve[0] = 0

        def rendering_or_release(probe):
            def wait_probe():
                found = probe()
                if not found and reserve[0] and _out_of_work(state):
                    release_reserve()
                return found
            return wait_probe

        queued = sorted(v for v, st in state.states(SEGMENT).items() if st == "queued")[-2:]
        if queued:
            log(f"chaos: cancel + re-enqueue {' '.join(queued)} while queued")
            scheduler("cancel", "--segment", str(SEGMENT), "--video", *queued)
            scheduler("enqueue", "--segment", str(SEGMENT), "--count", str(first), "--preset",
                      preset)
            report.faults["cancel_reenqueue"] += 1

        video = _wait_for(rendering_or_release(
            lambda: _running_video(state, folder / "scratch", rendering)), timeout_s / 4)
        if video:  # enqueue --force of a running video with another seed
            index = state.spec(SEGMENT, video)["index"]
            log(f"chaos: re-enqueue {video} with another seed while it renders ({done()} done)")
            scheduler("enqueue", "--segment", str(SEGMENT), "--start", str(index), "--count", "1",
                      "--preset", preset, "--seed", str(OTHER_SEED), "--force")
            report.faults["reenqueue_other_seed"] += 1

        # the fault schedule, driven by progress so every fault lands mid-run
        for _ in range(kills):
            victim = _wait_for(rendering_or_release(rendering), timeout_s / 4)
            if not victim:
                break
            os.killpg(pool[victim].pid, signal.SIGKILL)
            pool[victim].wait()
            report.faults["worker_kill9"] += 1
            log(f"chaos: kill -9 {victim} mid-render ({done()} done)")
            time.sleep(1.0)
            start(victim)  # like a container restart
            time.sleep(2.0)

        victim = _wait_for(rendering_or_release(rendering), timeout_s / 4)
        if victim:
            running = [v for v, st in state.states(SEGMENT).items() if st == "running"]
            log(f"chaos: freezing {victim} for {lease_ttl + 3:.0f} s (lease {lease_ttl:.0f} s)"
                f" and sending duplicates of {' '.join(running)} ({done()} done)")
            os.killpg(pool[victim].pid, signal.SIGSTOP)
            for video in running:  # a duplicate of every running video's live message
                _publish_duplicate(broker, state, video)
                report.faults["duplicate_message"] += 1
            time.sleep(lease_ttl + 3)
            os.killpg(pool[victim].pid, signal.SIGCONT)
            report.faults["worker_freeze"] += 1
        release_reserve()

        log(f"chaos: S3 answers 503 to HEAD for {s3_outage_s:.0f} s ({done()} done)")
        proxy.fail_heads = True
        time.sleep(s3_outage_s)
        proxy.fail_heads = False
        report.faults["s3_head_503"] += 1

        log(f"chaos: SIGTERM redeploy of every worker ({done()} done)")
        for name in [n for n in pool if n not in SPECIAL]:
            pool[name].send_signal(signal.SIGTERM)
        for name in [n for n in pool if n not in SPECIAL]:
            try:
                pool[name].wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(pool[name].pid, signal.SIGKILL)
                pool[name].wait()
            start(name)
        report.faults["sigterm_redeploy"] += 1

        log(f"chaos: restarting Redis ({done()} done)")
        services[0].terminate()
        services[0].wait(timeout=30)
        time.sleep(1.0)
        services[0] = start_redis(folder / "redis", redis_port, password)
        report.faults["redis_restart"] += 1
        time.sleep(2.0)

        log(f"chaos: S3 unreachable for {s3_outage_s:.0f} s ({done()} done)")
        proxy.down = True
        time.sleep(s3_outage_s)
        proxy.down = False
        report.faults["s3_outage"] += 1

        # Like compose's restart policy: restart workers that died on their own.
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            counts = state.counts(SEGMENT)
            if counts.get("done", 0) + counts.get("failed", 0) >= videos:
                break
            for name, proc in list(pool.items()):
                if proc.poll() is not None and name != BLACK_HOLE:
                    log(f"chaos: {name} exited with {proc.returncode}; restarting it")
                    report.worker_restarts += 1
                    start(name, **({"FARM_SCRATCH": str(full_scratch)} if name == "full" else {}))
            time.sleep(1.0)
        # Leftover messages (duplicates, superseded generations, a killed worker's message
        # restored after the visibility timeout) must each be consumed as a no-op. kombu sweeps
        # visible unacknowledged messages back every 10th poll of 10 s, so allow ~100 s more.
        drain_by = time.monotonic() + (visibility_s or 0) + 3 * lease_ttl + 120
        while _queue_left(state) and time.monotonic() < drain_by:
            time.sleep(1.0)
        time.sleep(2.0)  # let acknowledgements land
        # The operator's last step: finalize proves every frame against its marker and re-sends
        # a video with a foreign frame (an upload a frozen worker had in flight can land after
        # the new holder's marker; no lease can stop a request already sent).
        report.repaired = _repair(env, state, videos, deadline)
        monitor.stop()
        report.resent = _resent(folder / "reconciler.log")
        report.black_hole_running = not any(n.startswith(f"{BLACK_HOLE}@")
                                            for n in state.unhealthy_workers())
        _check(report, state, S3Storage(BUCKET, "bl30k", endpoint_url=f"http://127.0.0.1:{s3_port}",
                                        access_key="x", secret_key="x"), monitor, env)
    finally:
        if monitor.is_alive():
            monitor.stop()
        for proc in pool.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stop(services)
        if proxy:
            proxy.close()
        subprocess.run(["umount", str(full_scratch)], capture_output=True)
    report.wall_s = time.monotonic() - started
    return report


def _repair(env: dict, state: FarmState, videos: int, deadline: float) -> int:
    """Run ``finalize --requeue`` and wait for the re-sent videos; returns how many there were."""
    proc = subprocess.run([sys.executable, "-m", "scheduler", "-q", "finalize", "--segment",
                           str(SEGMENT), "--requeue"], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("re-enqueued ")), "")
    repaired = int(line.split()[1]) if line else 0
    while repaired and time.monotonic() < deadline:
        counts = state.counts(SEGMENT)
        if counts.get("done", 0) + counts.get("failed", 0) >= videos and not _queue_left(state):
            break
        time.sleep(1.0)
    return repaired


def _running_video(state: FarmState, scratch: Path, rendering) -> str | None:
    """A video a healthy worker is rendering now (its staging folder in that worker's scratch,
    its state running)."""
    name = rendering()
    if name is None:
        return None
    try:
        running = {v for v, st in state.states(SEGMENT).items() if st == "running"}
    except Exception:  # noqa: BLE001 - Redis may be restarting
        return None
    staged = {staged_video(p) for p in (scratch / name).glob("*.staging")}
    return min(running & staged, default=None)


def _wait_for(probe, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    return None


def _publish_duplicate(broker: str, state: FarmState, video: str) -> None:
    """A second copy of the video's live message (same task id and generation)."""
    from celery import Celery

    from farm.queue.broker import TASK_NAME, task_id

    app = Celery("chaos", broker=broker)
    app.conf.broker_transport_options = {"priority_steps": list(range(10)), "sep": ":",
                                         "queue_order_strategy": "priority"}
    generation = state.generation(video)
    app.send_task(TASK_NAME, kwargs={"video": video, "segment": SEGMENT,
                                     "spec": state.spec(SEGMENT, video),
                                     "generation": generation},
                  task_id=task_id(video, generation), queue="render", priority=5,
                  ignore_result=True)


def _resent(log_file: Path) -> int:
    """Videos the reconciler service re-sent, from its log."""
    try:
        lines = log_file.read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if line.startswith("re-sent "))


def _check(report: Report, state: FarmState, storage: S3Storage, monitor: RenderMonitor,
           env: dict) -> None:
    from farm.generate.sampling import video_id
    from scheduler.finalize import check_videos

    base = segment_base(SEGMENT)
    expected = {video_id(SEGMENT, i) for i in range(report.videos)}
    markers = {v for v in map(marker_video, storage.list(base)) if v}
    report.lost = sorted(expected - markers)
    held = {v: spec_from_dict(spec).digest() for v in markers
            if (spec := state.spec(SEGMENT, v)) is not None}
    # names and MD5s against each marker, each marker against the spec the farm holds
    problems = check_videos(storage, base, markers, held)
    report.mixed = {v: p for v, p in problems.items() if not p.startswith("missing ")}
    report.incomplete = {v: p for v, p in problems.items() if p.startswith("missing ")}
    status = subprocess.run([sys.executable, "-m", "scheduler", "-q", "status", "--segment",
                             str(SEGMENT), "--json", "--stranded-after", "0"], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    report.stranded = json.loads(status)[0]["stranded"]
    report.failed = {v: state.video(v).get("last_error", "") for v in
                     state.videos_in(SEGMENT, "failed")}
    uploads = {v: int(state.video(v).get("uploads", 0)) for v in expected}
    report.duplicates = sorted(v for v, n in uploads.items() if n > 1)
    report.concurrent = monitor.violations
    report.queue_left = _queue_left(state)
    if report.queue_left:
        report.leftover = _leftover(state)


def _leftover(state: FarmState) -> list[str]:
    """Task ids (and ETAs) of the messages still queued or unacknowledged."""
    found = []
    for key in state.r.keys("render*"):
        if state.r.type(key) == "list":
            found += [f"queued {json.loads(raw)['headers']['id']}"
                      for raw in state.r.lrange(key, 0, -1)]
    for tag, raw in state.r.hgetall("unacked").items():
        headers = json.loads(raw)[0]["headers"]
        since = state.r.zscore("unacked_index", tag)
        found.append(f"unacked {headers['id']} eta {headers.get('eta')}, "
                     + (f"held {time.time() - since:.0f} s" if since else "not in unacked_index"))
    if found and state.r.exists("unacked_mutex"):
        found.append(f"kombu's unacked_mutex held, {state.r.ttl('unacked_mutex')} s left")
    return found


def _out_of_work(state: FarmState) -> bool:
    """No video queued, running or due for a retry: nothing left to fault mid-render."""
    try:
        counts = state.counts(SEGMENT)
    except Exception:  # noqa: BLE001 - Redis may be restarting
        return False
    return not any(counts.get(st, 0) for st in ("queued", "running", "retrying"))


def _queue_left(state: FarmState) -> int:
    """Messages still queued or unacknowledged."""
    try:
        queues = [k for k in state.r.keys("render*") if state.r.type(k) == "list"]
        return sum(state.r.llen(q) for q in queues) + state.r.hlen("unacked")
    except Exception:  # noqa: BLE001 - Redis may be restarting
        return -1


def add_arguments(ap) -> None:
    """The chaos run's options (``python -m devtools chaos``)."""
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--s3-outage", type=float, default=10.0)
    ap.add_argument("--lease-ttl", type=int, default=5, help="FARM_LEASE_TTL of the workers")
    ap.add_argument("--production-visibility", action="store_true",
                    help="keep the visibility timeout derived from the presets (production-like; "
                         "default: 20 s so redeliveries happen within the run)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this long")
    ap.add_argument("--dir", type=Path, default=None, help="keep state and logs here")
    ap.add_argument("--json", type=Path, help="write the report here")


def run(args) -> int:
    report = run_chaos(args.videos, args.workers, args.kills, args.preset, args.s3_outage,
                       timeout_s=args.timeout, folder=args.dir, lease_ttl=args.lease_ttl,
                       visibility_s=None if args.production_visibility else 20.0)
    for note in report.skipped:
        print(f"skipped: {note}")
    for video, problem in {**report.mixed, **report.incomplete}.items():
        print(f"incomplete: {video}: {problem}")
    for video in report.stranded:
        print(f"stranded: {video}")
    for message in report.leftover:
        print(f"left in the broker: {message}")
    for video, error in report.failed.items():
        print(f"failed: {video}: {error}")
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({**report.__dict__, "faults": dict(report.faults),
                                         "concurrent": sorted(report.concurrent)}, indent=1))
    return 0 if report.ok else 1
