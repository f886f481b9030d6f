"""``python -m scheduler``: enqueue segments, watch progress, retry failures, finalize.

Configuration comes from the environment (see farm/config.py): FARM_REDIS_URL, REDIS_PASSWORD,
FARM_STORAGE_URL, FARM_S3_ENDPOINT, AWS credentials, FARM_MODELS/FARM_TEXTURES, FARM_SEED.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from kombu.exceptions import OperationalError
from tqdm import tqdm

from farm.assets import AssetError, read_denylist
from farm.config import ConfigError, Settings, load_settings, segment_base
from farm.outputs import FOLDERS as OUTPUT_FOLDERS
from farm.presets import load_preset
from farm.spec import DEFAULT_OUTPUTS, OUTPUTS, SpecError, VideoSpec, load_spec
from farm.state import STATES, BrokerUnavailable, FarmState, connect
from farm.storage import StorageError, join

BATCH = 500

class Context:
    """Lazily opened services, so each command touches only what it needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._state: FarmState | None = None
        self._storage = None
        self._library = None

    @property
    def state(self) -> FarmState:
        if self._state is None:
            self._state = FarmState(connect(self.settings.redis_url_with_password))
        return self._state

    @property
    def storage(self):
        if self._storage is None:
            self._storage = self.settings.storage()
        return self._storage

    @property
    def library(self):
        if self._library is None:
            self._library = self.settings.library()
        return self._library

    def base(self, segment: int) -> str:
        return join(self.storage[1], segment_base(segment))

    def done_videos(self, segment: int) -> set[str]:
        """Videos whose completion marker exists in storage."""
        storage = self.storage[0]
        keys = storage.list(join(self.base(segment), "done"))
        return {k.rsplit("/", 1)[-1].removesuffix(".json") for k in keys if k.endswith(".json")}


def task_kwargs(spec: VideoSpec, whole: bool = False) -> dict:
    """A generated spec travels as its recipe (workers regenerate it and check the digest);
    any other spec (imported, or read from a file a user may have edited) travels whole."""
    if spec.source == "generated" and not whole:
        recipe = {"video": spec.id, "segment": spec.segment, "index": spec.index,
                  "seed": spec.seed, "preset": spec.preset, "digest": spec.digest()}
        first_attempt = spec.generation.get("gate", {}).get("first_attempt", 0)
        return {**recipe, "first_attempt": first_attempt} if first_attempt else recipe
    return {"video": spec.id, "segment": spec.segment, "spec": spec.to_dict()}


def send(ctx: Context, specs: list[VideoSpec], priority: int | None, whole: bool = False) -> None:
    """Register specs in Redis and publish one task per video."""
    from worker.celery_app import TASK_NAME, app, task_id

    by_segment: dict[int, list[VideoSpec]] = {}
    for spec in specs:
        by_segment.setdefault(spec.segment, []).append(spec)
    for segment, group in by_segment.items():
        ctx.state.register(segment, group)
    # kombu's publish batch sends the LPUSHes through one Redis pipeline per batch
    with app.producer_or_acquire() as producer, producer.batch(max_size=BATCH):
        for spec in specs:
            soft, hard = load_preset(spec.preset).time_limits(spec.frames)
            app.send_task(
                TASK_NAME, kwargs=task_kwargs(spec, whole), task_id=task_id(spec.id), producer=producer,
                priority=priority, soft_time_limit=soft, time_limit=hard, ignore_result=True,
                argsrepr="()", kwargsrepr=f"{{'video': '{spec.id}', 'segment': {spec.segment}}}",
            )


def cmd_init_storage(ctx: Context, args: argparse.Namespace) -> int:
    storage, _ = ctx.storage
    print(storage.create())
    return 0


def load_spec_files(paths: list[str]) -> list[VideoSpec]:
    """Spec YAML files (or folders of them), validated; errors name the file."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    specs = []
    for f in files:
        try:
            specs.append(load_spec(f))
        except SpecError as exc:
            raise SpecError(str(f), str(exc)) from None
    return specs


def cmd_enqueue(ctx: Context, args: argparse.Namespace) -> int:
    from farm.specgen import generate_many

    t0 = time.perf_counter()
    if args.specs:
        specs = load_spec_files(args.specs)
        if args.keep_gate_failures:
            specs = [replace(s, keep_gate_failures=True) for s in specs]
        chunks, total = [specs], len(specs)
    else:
        if args.segment is None or args.count is None:
            raise ConfigError("enqueue needs --segment and --count (or --specs FILE...)")
        if args.keep_gate_failures:
            raise ConfigError("--keep-gate-failures applies to --specs files: a generated video "
                              "that fails the quality gate is resampled, then fails")
        preset = load_preset(args.preset)
        seed = args.seed if args.seed is not None else ctx.settings.seed
        indices = list(range(args.start, args.start + args.count))
        chunks = generate_many(ctx.settings.library(), preset, args.segment, indices, seed,
                               chunk=BATCH, denylist=read_denylist(ctx.settings.denylist))
        total = len(indices)
    done: dict[int, set[str]] = {}
    states: dict[int, dict[str, str]] = {}
    active = {"queued", "running", "retrying"}
    skipped_done = skipped_active = sent = 0
    with tqdm(total=total, unit="video", disable=args.quiet) as bar:
        for chunk in chunks:
            batch = []
            for spec in chunk:
                if spec.segment not in done:
                    done[spec.segment] = ctx.done_videos(spec.segment)
                    states[spec.segment] = ctx.state.states(spec.segment)
                if spec.id in done[spec.segment]:
                    skipped_done += 1
                elif states[spec.segment].get(spec.id) in active and not args.force:
                    skipped_active += 1
                else:
                    batch.append(spec)
            send(ctx, batch, args.priority, whole=bool(args.specs))
            sent += len(batch)
            bar.update(len(chunk))
    dt = time.perf_counter() - t0
    segments = ", ".join(map(str, sorted(done))) or "-"
    print(f"segment {segments}: enqueued {sent} videos in {dt:.2f} s "
          f"({sent / max(dt, 1e-9):.0f}/s); skipped {skipped_done} already done, "
          f"{skipped_active} already queued or running")
    return 0


def segment_status(ctx: Context, segment: int, window: float) -> dict:
    counts = ctx.state.counts(segment)
    total = sum(counts.values())
    started = ctx.state.started(segment)
    if started:  # a segment younger than the window: rate over its age
        window = max(1.0, min(window, time.time() - started))
    videos, frames = ctx.state.recent(window, segment)
    remaining = sum(counts.get(s, 0) for s in ("queued", "running", "retrying"))
    per_hour = videos * 3600 / window
    return {
        "segment": segment, "total": total,
        **{s: counts.get(s, 0) for s in STATES},
        "percent_done": round(100 * counts.get("done", 0) / total, 1) if total else 0.0,
        "videos_per_hour": round(per_hour, 1), "frames_per_s": round(frames / window, 2),
        "eta_s": round(remaining / per_hour * 3600) if per_hour > 0 and remaining else None,
    }


def _eta(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    while True:
        segments = [args.segment] if args.segment is not None else ctx.state.segments()
        rows = [segment_status(ctx, s, args.window) for s in segments]
        if args.json:
            print(json.dumps(rows))
        else:
            print(f"{'segment':>7} {'total':>6} {'queued':>6} {'running':>7} {'retry':>5} "
                  f"{'done':>6} {'failed':>6} {'cancel':>6} {'done%':>6} {'videos/h':>8} "
                  f"{'frames/s':>8} {'ETA':>8}")
            for r in rows:
                print(f"{r['segment']:>7} {r['total']:>6} {r['queued']:>6} {r['running']:>7} "
                      f"{r['retrying']:>5} {r['done']:>6} {r['failed']:>6} {r['cancelled']:>6} "
                      f"{r['percent_done']:>5}% {r['videos_per_hour']:>8} "
                      f"{r['frames_per_s']:>8} {_eta(r['eta_s']):>8}")
            if not rows:
                print("no segments enqueued yet")
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)


def cmd_failed(ctx: Context, args: argparse.Namespace) -> int:
    segments = [args.segment] if args.segment is not None else ctx.state.segments()
    rows = []
    for segment in segments:
        for video in ctx.state.videos_in(segment, "failed"):
            info = ctx.state.video(video)
            rows.append({"video": video, "segment": segment, "error": info.get("last_error", ""),
                         "crashes": int(info.get("crashes", 0)),
                         "lost_deliveries": int(info.get("lost_deliveries", 0))})
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no failed videos")
    for r in rows if not args.json else []:
        print(f"{r['video']} (segment {r['segment']}, crashes {r['crashes']}, lost deliveries "
              f"{r['lost_deliveries']}): {r['error']}")
    return 0


def cmd_retry(ctx: Context, args: argparse.Namespace) -> int:
    """Re-enqueue failed videos; a generated video that failed the quality gate gets fresh
    attempts (numbered after its last one), any other the same spec."""
    from farm.sampling import generate_spec

    segments = [args.segment] if args.segment is not None else ctx.state.segments()
    specs, fresh = [], 0
    for segment in segments:
        for video in ctx.state.videos_in(segment, "failed"):
            stored = ctx.state.spec(segment, video)
            if stored is None:
                print(f"warning: no stored spec for {video}; enqueue it again", file=sys.stderr)
                continue
            spec = VideoSpec.from_dict(stored)
            info = ctx.state.video(video)
            if info.get("gate_failed") and spec.source == "generated":
                spec = generate_spec(ctx.library, load_preset(spec.preset), segment, spec.index,
                                     spec.seed, first_attempt=int(info["next_attempt"]))
                fresh += 1
            ctx.state.clear(video, "crashes", "lost_deliveries", "running", "gate_failed",
                            "next_attempt")
            specs.append(spec)
    send(ctx, specs, args.priority)
    print(f"re-enqueued {len(specs)} failed videos"
          + (f" ({fresh} with fresh quality-gate attempts)" if fresh else ""))
    return 0


def broker_task_ids(r) -> set[str]:
    """Task ids of every message Redis holds: queued (all priority lists) or unacknowledged."""
    ids = set()
    for key in r.scan_iter("render*"):
        if r.type(key) == "list":
            for raw in r.lrange(key, 0, -1):
                ids.add(json.loads(raw)["headers"]["id"])
    for raw in r.hvals("unacked"):
        ids.add(json.loads(raw)[0]["headers"]["id"])
    return ids


def cmd_reconcile(ctx: Context, args: argparse.Namespace) -> int:
    """Re-send videos that are pending but have no message in Redis and no live lease.

    A message can be lost when the broker restarts at the wrong moment (popped, not yet recorded
    as unacknowledged). Re-sending is safe: a finished video is a no-op and the lease keeps a
    duplicate from rendering beside a live copy.
    """
    from worker.celery_app import task_id

    segments = [args.segment] if args.segment is not None else ctx.state.segments()
    present = broker_task_ids(ctx.state.r)
    lost = []
    for segment in segments:
        for video, st in ctx.state.states(segment).items():
            if st in ("queued", "retrying", "running") and task_id(video) not in present \
                    and ctx.state.holder(f"video:{video}") is None:
                spec = ctx.state.spec(segment, video)
                if spec:
                    lost.append(VideoSpec.from_dict(spec))
    send(ctx, lost, None)
    print(f"re-sent {len(lost)} videos without a message in the broker"
          + (f": {' '.join(s.id for s in lost)}" if lost else ""))
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    from worker.celery_app import app, task_id

    states = ctx.state.states(args.segment)
    videos = args.video or [v for v, s in states.items() if s in ("queued", "retrying")]
    for video in videos:
        ctx.state.set_state(args.segment, video, "cancelled")
    app.control.revoke([task_id(v) for v in videos])  # tasks still in the queue are dropped
    print(f"cancelled {len(videos)} videos of segment {args.segment} (running ones finish; "
          "cancelled ones are skipped when a worker picks them up)")
    return 0


def youtube_vos_meta(manifests: dict[str, dict]) -> dict:
    """YouTube-VOS ``meta.json``: per video, per object id its category and visible frames, and
    the outputs it has; ``outputs``: those of the whole segment (the union)."""
    videos, every = {}, set()
    for video, m in sorted(manifests.items()):
        objects = {}
        for obj in m["objects"]:
            frames = [f"{f['frame']:05d}" for f in m["frames"]
                      if f["objects"][obj["id"] - 1]["pixels"] > 0]
            objects[str(obj["id"])] = {"category": obj["category"], "synset": obj["synset"],
                                       "model": obj["model"], "frames": frames}
        outputs = list(m.get("outputs") or m.get("render_settings", {}).get("outputs")
                       or DEFAULT_OUTPUTS)
        every.update(outputs)
        videos[video] = {"objects": objects, "outputs": outputs}
    return {"videos": videos, "outputs": [o for o in OUTPUTS if o in every]}


def check_videos(storage, base: str, videos: set[str]) -> dict[str, str]:
    """Problems per finished video: every frame's JPEG and mask (and every file of the extra
    outputs its marker lists: depth, flow, normals, camera, amodal masks), spec and manifest
    present."""
    keys = storage.list(base)
    found: dict[tuple[str, str], int] = {}
    for key in keys:
        parts = key[len(base):].strip("/").split("/")
        if len(parts) >= 3 and parts[0] in OUTPUT_FOLDERS.values():
            found[(parts[0], parts[1])] = found.get((parts[0], parts[1]), 0) + 1
    present = set(keys)
    problems = {}
    for video in sorted(videos):
        marker = json.loads(storage.get_bytes(join(base, "done", f"{video}.json")) or b"{}")
        frames = marker.get("frames")
        expected = marker.get("files") or {"JPEGImages": frames, "Annotations": frames}
        for folder, count in expected.items():
            if found.get((folder, video), 0) != count:
                what = "frames" if folder in ("JPEGImages", "Annotations") else "files"
                problems[video] = (f"{folder} holds {found.get((folder, video), 0)} {what}, "
                                   f"marker says {count}")
        for key in (join(base, "specs", f"{video}.yaml"), join(base, "manifests", f"{video}.json")):
            if key not in present:
                problems[video] = f"missing {key}"
    return problems


def cmd_finalize(ctx: Context, args: argparse.Namespace) -> int:
    storage, _ = ctx.storage
    base = ctx.base(args.segment)
    expected = set(ctx.state.states(args.segment))
    done = ctx.done_videos(args.segment)
    missing = sorted(expected - done)
    problems = check_videos(storage, base, done)
    for video, problem in problems.items():
        print(f"{video}: {problem}")
    if missing:
        print(f"segment {args.segment} is incomplete: {len(missing)} of {len(expected)} videos "
              f"missing: {' '.join(missing[:50])}{' ...' if len(missing) > 50 else ''}")
    if (missing or problems) and not args.force:
        return 1
    videos = sorted(done - set(problems))

    def manifest(video: str) -> tuple[str, dict]:
        return video, json.loads(storage.get_bytes(join(base, "manifests", f"{video}.json")))

    with ThreadPoolExecutor(16) as pool:
        manifests = dict(pool.map(manifest, videos))
    failed_gate = {v: m for v, m in manifests.items() if m.get("gate", {}).get("passed") is False}
    shipped = {v for v, m in failed_gate.items() if not m.get("keep_gate_failures")}
    for video in sorted(shipped):
        print(f"{video}: delivered although its masks failed the quality gate "
              f"({failed_gate[video]['gate'].get('reason')}), without --keep-gate-failures")
    if shipped and not args.force:
        return 1
    meta = youtube_vos_meta({v: m for v, m in manifests.items() if v not in shipped})
    # Videos a user chose to keep although they failed the gate (imported, --keep-gate-failures).
    meta["gate_failures_kept"] = sorted(set(failed_gate) - shipped)
    storage.put_bytes(join(base, "meta.json"), json.dumps(meta).encode())
    print(f"segment {args.segment}: {len(videos)} videos complete, every frame present; wrote "
          f"{join(base, 'meta.json')} in {storage.describe()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-q", "--quiet", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("init-storage", help="create the bucket (or folder)").set_defaults(
        func=cmd_init_storage)

    enq = sub.add_parser("enqueue", help="generate, validate and enqueue a segment's videos")
    enq.add_argument("--segment", type=int)
    enq.add_argument("--count", type=int)
    enq.add_argument("--specs", nargs="+", help="enqueue these spec files/folders instead")
    enq.add_argument("--start", type=int, default=0)
    enq.add_argument("--preset", default="bl30k")
    enq.add_argument("--seed", type=int, default=None, help="master seed (default FARM_SEED)")
    enq.add_argument("--priority", type=int, choices=range(10), default=None,
                     help="0 (first) .. 9 (last); default 5")
    enq.add_argument("--force", action="store_true", help="re-send videos already queued")
    enq.add_argument("--keep-gate-failures", action="store_true",
                     help="with --specs: deliver videos whose masks fail the quality gate, marked "
                          "in their manifest and meta.json")
    enq.set_defaults(func=cmd_enqueue)

    st = sub.add_parser("status", help="progress per segment")
    st.add_argument("--segment", type=int)
    st.add_argument("--watch", type=float, nargs="?", const=5.0, default=None,
                    help="refresh every N seconds (default 5)")
    st.add_argument("--window", type=float, default=900.0, help="rate window in seconds")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    failed = sub.add_parser("failed", help="failed videos with their last error")
    failed.add_argument("--segment", type=int)
    failed.add_argument("--json", action="store_true")
    failed.set_defaults(func=cmd_failed)

    retry = sub.add_parser("retry", help="re-enqueue failed videos")
    retry.add_argument("--failed", action="store_true", required=True)
    retry.add_argument("--segment", type=int)
    retry.add_argument("--priority", type=int, choices=range(10), default=None)
    retry.set_defaults(func=cmd_retry)

    rec = sub.add_parser("reconcile", help="re-send pending videos whose message was lost")
    rec.add_argument("--segment", type=int)
    rec.set_defaults(func=cmd_reconcile)

    cancel = sub.add_parser("cancel", help="cancel a segment's queued videos")
    cancel.add_argument("--segment", type=int, required=True)
    cancel.add_argument("--video", nargs="*", help="only these videos")
    cancel.set_defaults(func=cmd_cancel)

    fin = sub.add_parser("finalize", help="completeness check and meta.json for a segment")
    fin.add_argument("--segment", type=int, required=True)
    fin.add_argument("--force", action="store_true", help="write meta.json even if incomplete")
    fin.set_defaults(func=cmd_finalize)

    chaos = sub.add_parser("chaos", help="fault-injection run of a local farm (see --help)",
                           add_help=False)
    chaos.add_argument("rest", nargs=argparse.REMAINDER)

    local = sub.add_parser("local-up", help="run redis, S3, workers and flower as local processes")
    local.add_argument("--workers", type=int, default=2)
    local.add_argument("--dir", default="local-farm", help="state folder (data, logs, env file)")
    local.add_argument("--redis-port", type=int, default=6379)
    local.add_argument("--s3-port", type=int, default=9000)
    local.add_argument("--flower-port", type=int, default=5555)
    local.set_defaults(func=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chaos"]:  # its own options, parsed by scheduler.chaos
        from scheduler.chaos import main as chaos_main

        return chaos_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "local-up":
            from scheduler.local import run_local_farm

            return run_local_farm(args)
        return args.func(Context(load_settings()), args)
    except (BrokerUnavailable, StorageError, ConfigError, SpecError, AssetError,
            OperationalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
