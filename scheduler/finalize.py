"""Finishing a segment: check every finished video against its completion marker (names and
MD5s of every file), re-send broken ones, prune failed videos' frames; the index files
(``meta.json``, splits) and the dataset card are farm.view.card's."""

from __future__ import annotations

import json
import sys

from farm.io.dataset import read_manifests
from farm.io.layout import FOLDERS, join, video_keys
from farm.io.storage import Storage, remove_frames, verify_video
from farm.model.validate import spec_from_dict
from scheduler.context import Context
from scheduler.publish import held_presets, send


def segment_manifests(storage: Storage, base: str, videos: list[str]
                      ) -> tuple[dict[str, dict], list[str], dict[str, str]]:
    """The manifests of the finished ``videos`` that go into the dataset's index files, the
    videos kept on purpose although their masks failed the quality gate
    (``--keep-gate-failures``), and those delivered failing it without that flag (video ->
    reason), which are left out."""
    manifests = read_manifests(storage, base, videos)
    failed_gate = {v: m for v, m in manifests.items() if m.get("gate", {}).get("passed") is False}
    shipped = {v: str(m["gate"].get("reason")) for v, m in failed_gate.items()
               if not m.get("keep_gate_failures")}
    kept = sorted(set(failed_gate) - set(shipped))
    return {v: m for v, m in manifests.items() if v not in shipped}, kept, shipped


def check_videos(storage, base: str, videos: set[str],
                 digests: dict[str, str] | None = None) -> dict[str, str]:
    """Problems per finished video: its marker records the spec the farm holds (``digests``:
    video -> the enqueued spec's digest), its frames are exactly 00000..N-1 of its marker, every
    file (frames and the extra outputs: depth, flow, normals, camera, amodal masks) the content
    the marker records (MD5), each extra folder as many files as the marker lists, and its spec
    and manifest present."""
    checksums = storage.checksums(base)
    counts: dict[tuple[str, str], int] = {}
    for key in checksums:
        parts = key[len(base):].strip("/").split("/")
        if len(parts) >= 3 and parts[0] in FOLDERS.values():
            counts[(parts[0], parts[1])] = counts.get((parts[0], parts[1]), 0) + 1
    problems = {}
    for video in sorted(videos):
        keys = video_keys(base, video)
        marker = json.loads(storage.get_bytes(keys["marker"]) or b"{}")
        recorded, wanted = marker.get("enqueued_digest"), (digests or {}).get(video)
        problem = (f"the marker records spec {recorded[:12]}, the farm holds {wanted[:12]} "
                   "(rendered from another enqueue)"
                   if recorded and wanted and recorded != wanted else None)
        archived = bool(marker.get("archive")) and join(base, marker["archive"]) in checksums
        problem = problem or next((f"{folder} holds {counts.get((folder, video), 0)} files, marker says "
                        f"{count}" for folder, count in (marker.get("files") or {}).items()
                        if not archived and counts.get((folder, video), 0) != count), None)
        problem = problem or verify_video(marker, checksums, base, video)
        for key in (keys["spec"], keys["manifest"]):
            if problem is None and key not in checksums:
                problem = f"missing {key}"
        if problem:
            problems[video] = problem
    return problems


def held_digests(ctx: Context, segment: int, videos: set[str]) -> dict[str, str]:
    """video -> digest of the spec the farm holds for it (Redis)."""
    held = {}
    for video in videos:
        stored = ctx.state.spec(segment, video)
        if stored is not None:
            held[video] = spec_from_dict(stored).digest()
    return held


def requeue_broken(ctx: Context, segment: int, videos: list[str]) -> int:
    """Send videos whose delivery is broken again: their marker goes, a fresh render replaces
    their frames (each delivery removes an earlier one's)."""
    storage = ctx.storage
    specs = []
    for video in videos:
        stored = ctx.state.spec(segment, video)
        if stored is None:
            print(f"warning: no stored spec for {video}; enqueue it again", file=sys.stderr)
            continue
        storage.delete([video_keys(ctx.base(segment), video)["marker"]])
        specs.append(spec_from_dict(stored))
    send(ctx, specs, None, held=held_presets(ctx, [s.id for s in specs]))
    return len(specs)


def prune(ctx: Context, segment: int) -> int:
    """Remove the frames of failed and cancelled videos, so folder-listing loaders never see
    them; returns how many videos had frames."""
    states = ctx.state.states(segment)
    pruned = 0
    for video, st in sorted(states.items()):
        if st in ("failed", "cancelled") and remove_frames(ctx.storage, ctx.base(segment), video):
            pruned += 1
    return pruned
