"""``python -m scheduler``: enqueue segments, watch progress, retry failures, finalize.

Configuration comes from the environment (see farm/settings.py): FARM_REDIS_URL, REDIS_PASSWORD,
FARM_STORAGE_URL, FARM_S3_ENDPOINT, AWS credentials, FARM_MODELS/FARM_TEXTURES, FARM_SEED.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from farm.io.splits import split_options, split_opts
from farm.settings import ConfigError, current
from scheduler.context import Context
from scheduler.progress import segment_status, stranded_videos
from scheduler.slurm import add_parser as add_slurm_parser

if TYPE_CHECKING:
    from farm.model.spec import VideoSpec

# Each command imports what it uses: `status` needs Redis only, and loads neither Celery, boto3
# nor numpy (about 0.15 CPU s of imports instead of 0.5).


def cmd_init_storage(ctx: Context, args: argparse.Namespace) -> int:
    storage = ctx.storage
    print(storage.create())
    return 0


def load_spec_files(paths: list[str]) -> list[VideoSpec]:
    """Spec YAML files (or folders of them), validated; errors name the file."""
    from farm.model.spec import SpecError
    from farm.model.validate import load_spec

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
    from tqdm import tqdm

    from farm.assets.library import read_denylist
    from farm.generate.specgen import generate_many
    from farm.model.presets import load_preset
    from scheduler.publish import BATCH, send

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
        chunks = generate_many(ctx.library, preset, args.segment, indices, seed,
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


def _eta(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    while True:
        segments = [args.segment] if args.segment is not None else ctx.state.segments()
        stranded = stranded_videos(ctx, segments)  # one pass over the broker's messages
        rows = [segment_status(ctx, s, args.window, args.stranded_after, stranded[s])
                for s in segments]
        unhealthy = ctx.state.unhealthy_workers()
        for r in rows:
            r["unhealthy_workers"] = sorted(unhealthy)
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
            for r in rows:
                if r["stranded"]:
                    print(f"warning: segment {r['segment']}: {len(r['stranded'])} videos pending "
                          f"with no message and no lease for over {args.stranded_after:.0f} s "
                          f"({' '.join(r['stranded'][:20])}); the reconciler re-sends them "
                          "(or run: python -m scheduler reconcile)")
            for node, info in sorted(unhealthy.items()):
                print(f"warning: worker {node} is unhealthy and consumes nothing: "
                      f"{info['reason']}")
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
    from farm.generate.sampling import generate_spec
    from farm.model.presets import load_preset, preset_from_data
    from farm.model.validate import spec_from_dict
    from scheduler.publish import send

    segments = [args.segment] if args.segment is not None else ctx.state.segments()
    specs, fresh = [], 0
    held: dict[str, dict] = {}
    for segment in segments:
        for video in ctx.state.videos_in(segment, "failed"):
            stored = ctx.state.spec(segment, video)
            if stored is None:
                print(f"warning: no stored spec for {video}; enqueue it again", file=sys.stderr)
                continue
            spec = spec_from_dict(stored)
            info = ctx.state.video(video)
            preset = ctx.state.preset(video)
            if preset is not None:
                held[video] = preset
            if info.get("gate_failed") and spec.source == "generated":
                spec = generate_spec(ctx.library,
                                     preset_from_data(preset) if preset else
                                     load_preset(spec.preset), segment, spec.index,
                                     spec.seed, first_attempt=int(info["next_attempt"]))
                fresh += 1
            ctx.state.clear(video, "crashes", "lost_deliveries", "running", "gate_failed",
                            "next_attempt")
            specs.append(spec)
    send(ctx, specs, args.priority, held=held)
    print(f"re-enqueued {len(specs)} failed videos"
          + (f" ({fresh} with fresh quality-gate attempts)" if fresh else ""))
    return 0


def cmd_reconcile(ctx: Context, args: argparse.Namespace) -> int:
    """Re-send videos that are pending but have no message in Redis and no live lease.

    A message can be lost when the broker restarts at the wrong moment (popped, not yet recorded
    as unacknowledged). Re-sending is safe: a finished video is a no-op, the lease keeps a
    duplicate from rendering beside a live copy, and a new generation supersedes the lost one.
    With ``--every`` it runs as the farm's reconciler service, and SIGTERM (``docker stop``)
    ends it at once with status 0: nothing of a pass needs finishing (the next one redoes it).
    """
    from kombu.exceptions import OperationalError

    from farm.queue.state import BrokerUnavailable
    from scheduler.publish import reconcile_once

    if args.every:
        signal.signal(signal.SIGTERM, _exit_quietly)
    while True:
        segments = [args.segment] if args.segment is not None else ctx.state.segments()
        try:
            sent = reconcile_once(ctx, segments, args.min_age if args.every else 0.0)
        except (BrokerUnavailable, OperationalError) as exc:
            if not args.every:
                raise
            print(f"reconcile: {exc}; trying again in {args.every:.0f} s", file=sys.stderr)
            sent = []
        if sent or not args.every:
            print(f"re-sent {len(sent)} videos without a message in the broker"
                  + (f": {' '.join(sent)}" if sent else ""), flush=True)
        if not args.every:
            return 0
        time.sleep(args.every)


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_exporter(ctx: Context, args: argparse.Namespace) -> int:
    from scheduler.exporter import serve

    return serve(ctx.settings.redis_url_with_password, args.port, args.address)


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    from farm.queue.app import app
    from farm.queue.broker import task_id

    states = ctx.state.states(args.segment)
    asked = args.video or [v for v, s in states.items() if s in ("queued", "retrying")]
    was = {v: ctx.state.cancel(args.segment, v) for v in asked}
    videos = [v for v, st in was.items() if st not in ("", "done")]
    # Tasks still in the queue are dropped; a later enqueue is a new generation (a new task id).
    app.control.revoke([task_id(v, ctx.state.generation(v)) for v in videos])
    print(f"cancelled {len(videos)} videos of segment {args.segment} (running ones finish; "
          "cancelled ones are skipped when a worker picks them up)")
    for why, state in (("already done", "done"), (f"not in segment {args.segment}", "")):
        if left := sorted(v for v, st in was.items() if st == state):
            print(f"not cancelled, {why}: {' '.join(left)}")
    return 0


def cmd_finalize(ctx: Context, args: argparse.Namespace) -> int:
    from farm.view.card import describe_dataset, write_dataset
    from scheduler.enqueued import read_record
    from scheduler.finalize import (
        check_videos,
        held_digests,
        prune,
        requeue_broken,
        segment_manifests,
    )

    storage = ctx.storage
    base = ctx.base(args.segment)
    record = read_record(storage, args.segment)  # the bucket's record of every enqueue: Redis may forget
    in_redis = set(ctx.state.states(args.segment))
    expected = in_redis | set(record)
    done = ctx.done_videos(args.segment)
    missing = sorted(expected - done)
    unknown = sorted(set(record) - in_redis - done)
    if unknown:
        print(f"segment {args.segment}: {len(unknown)} videos enqueued (the segment's record in "
              f"the bucket) are unknown to Redis and not done: {' '.join(unknown[:50])}"
              f"{' ...' if len(unknown) > 50 else ''}; enqueue them again")
    if args.prune:
        print(f"pruned the frames of {prune(ctx, args.segment)} failed or cancelled videos")
    digests = {**held_digests(ctx, args.segment, done),
               **{v: e["digest"] for v, e in record.items() if v in done}}
    problems = check_videos(storage, base, done, digests)
    for video, problem in problems.items():
        print(f"{video}: {problem}")
    if problems and args.requeue:
        sent = requeue_broken(ctx, args.segment, sorted(problems))
        print(f"re-enqueued {sent} videos whose frames do not match their marker")
    if missing:
        print(f"segment {args.segment} is incomplete: {len(missing)} of {len(expected)} videos "
              f"missing: {' '.join(missing[:50])}{' ...' if len(missing) > 50 else ''}")
    if (missing or problems) and not args.force:
        return 1
    videos = sorted(done - set(problems))
    manifests, kept, shipped = segment_manifests(storage, base, videos)
    for video, reason in sorted(shipped.items()):
        print(f"{video}: delivered although its masks failed the quality gate ({reason}), "
              "without --keep-gate-failures")
    if shipped and not args.force:
        return 1
    files, _ = write_dataset(storage, base, manifests, split_options(args),
                             f"segment {args.segment}", {"gate_failures_kept": kept})
    print(f"segment {args.segment}: {len(videos)} videos complete, every frame verified; wrote "
          f"{describe_dataset(files)} in {storage.describe()}/{base}")
    return 0


def cmd_report(ctx: Context, args: argparse.Namespace) -> int:
    from scheduler.report import run

    return run(ctx, args)


def cmd_plan(ctx: Context, args: argparse.Namespace) -> int:
    from scheduler.calibration import CalibrationError
    from scheduler.plan import run

    try:
        return run(ctx.settings, args)
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_slurm(ctx: Context, args: argparse.Namespace) -> int:
    from scheduler.slurm import run

    return run(ctx.settings, args)


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
    st.add_argument("--stranded-after", type=float, default=120.0,
                    help="flag pending videos with no message and no lease for this long")
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
    rec.add_argument("--every", type=float, default=None,
                     help="keep running: a round every N seconds (the reconciler service)")
    rec.add_argument("--min-age", type=float, default=30.0,
                     help="with --every: re-send a video only after it stayed stranded this long")
    rec.set_defaults(func=cmd_reconcile)

    exp = sub.add_parser("exporter", help="serve the farm's Prometheus metrics (/metrics)")
    exp.add_argument("--port", type=int, default=9808)
    exp.add_argument("--address", default="0.0.0.0", help="listen address (default: all)")
    exp.set_defaults(func=cmd_exporter)

    cancel = sub.add_parser("cancel", help="cancel a segment's queued videos")
    cancel.add_argument("--segment", type=int, required=True)
    cancel.add_argument("--video", nargs="*", help="only these videos")
    cancel.set_defaults(func=cmd_cancel)

    fin = sub.add_parser("finalize", help="completeness check and meta.json for a segment")
    fin.add_argument("--segment", type=int, required=True)
    fin.add_argument("--force", action="store_true", help="write meta.json even if incomplete")
    fin.add_argument("--requeue", action="store_true",
                     help="re-enqueue videos whose frames do not match their completion marker")
    fin.add_argument("--prune", action="store_true",
                     help="first remove the frames of failed and cancelled videos")
    split_opts(fin)
    fin.set_defaults(func=cmd_finalize)

    rep = sub.add_parser("report", help="one self-contained HTML page on a segment (+ --json)")
    rep.add_argument("--segment", type=int, required=True)
    rep.add_argument("--out", default="report.html", help="HTML file to write")
    rep.add_argument("--json", help="also write the figures as JSON here")
    rep.add_argument("--thumbnails", type=int, default=24, help="preview thumbnails on the page")
    rep.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="wall time, GPU-hours, bucket size and cost of N videos")
    plan.add_argument("--videos", type=int, required=True)
    plan.add_argument("--preset", default="bl30k")
    plan.add_argument("--gpus", type=int, help="workers rendering at once (1 per GPU; default 1)")
    plan.add_argument("--nodes", type=int, help="machines (with --gpus-per-node: --gpus N x G)")
    plan.add_argument("--gpus-per-node", type=int, help="GPUs per machine")
    plan.add_argument("--device",
                      help="CPU, CUDA, OPTIX... (default: OPTIX, else CUDA, else CPU, as calibrated)")
    plan.add_argument("--machine", help="only calibration entries whose machine contains this")
    plan.add_argument("--frames", type=int, help="frames per video (default: the preset's)")
    plan.add_argument("--price-per-gpu-hour", type=float)
    plan.add_argument("--price-per-gb-month", type=float, help="bucket storage price")
    plan.add_argument("--calibration", action="append",
                      help="calibration file (bench calibrate) on top of the shipped figures")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)

    add_slurm_parser(sub).set_defaults(func=cmd_slurm)

    return ap


def user_errors() -> tuple[type[Exception], ...]:
    """Bad input or an unreachable service: one ``error:`` line and exit 2, no traceback.
    Imported only when a command raised something (a command loads only what it uses)."""
    from kombu.exceptions import OperationalError

    from farm.assets.library import AssetError
    from farm.io.storage import StorageError
    from farm.model.spec import SpecError
    from farm.queue.state import BrokerUnavailable

    return BrokerUnavailable, StorageError, ConfigError, SpecError, AssetError, OperationalError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(Context(current()), args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
