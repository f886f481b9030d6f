"""Process entry point for one render: ``python -m worker.process.main --spec FILE ...``.

The one-shot design: a fresh process per video, so Blender state and memory never leak between
videos and a Blender crash kills only this render. Reports through a JSON result file, the exit
code and progress lines on stderr (``worker.process.protocol``). ``run_job`` is the job itself;
the long-lived render server (``worker.process.server``) runs the same function for each video it
is sent.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from worker.process.protocol import (
    EXIT_GATE,
    EXIT_OK,
    EXIT_PERMANENT,
    GATE_MODES,
    RenderJob,
    progress_line,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Be killed by the kernel when the worker process dies (a hard time limit or an OOM kill of
    the worker must not leave Blender rendering, orphaned)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


def run_job(job: RenderJob, progress: Callable[[int, int], None] | None = None
            ) -> tuple[int, dict]:
    """Render one job into its staging folder: (exit code, result payload), see the protocol."""
    from farm.assets.library import AssetError
    from farm.model.gate import mask_gate
    from farm.model.presets import QualityGate
    from farm.model.spec import SpecError
    from farm.model.validate import load_spec

    try:
        spec = load_spec(job.spec)
        gate = QualityGate(**job.gate)
    except (SpecError, TypeError) as exc:
        return EXIT_PERMANENT, {"status": "error", "kind": "spec", "message": str(exc)}

    verdict: dict = {}

    def check(counts):
        reason = mask_gate(counts, gate, *spec.resolution)
        verdict.update(passed=reason is None, reason=reason, frames_checked=len(counts))
        return None if job.gate_mode == "record" else reason

    def on_frame(frame: int) -> None:
        if progress:
            progress(frame + 1, spec.frames)

    from worker.render.frames import GateRejected, render_frames

    try:
        render = render_frames(spec, job.models, job.textures, job.staging, check, on_frame)
    except GateRejected as exc:
        return EXIT_GATE, {"status": "rejected", "reason": str(exc)}
    except (AssetError, SpecError) as exc:
        return EXIT_PERMANENT, {"status": "error", "kind": "asset", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent with the traceback
        return 1, {"status": "error", "kind": "crash", "message": f"{type(exc).__name__}: "
                   f"{exc}", "traceback": traceback.format_exc()}
    render["gate"] = {k: verdict.get(k) for k in ("passed", "reason")}
    render["render_settings"] = asdict(spec.render)
    return EXIT_OK, {"status": "ok", "render": render}


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True, type=Path)
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--textures", required=True, type=Path)
    ap.add_argument("--staging", required=True, type=Path)
    ap.add_argument("--result", required=True, type=Path)
    ap.add_argument("--gate", choices=GATE_MODES, default="record")
    ap.add_argument("--quality-gate", type=json.loads, default={},
                    help="the preset's quality_gate fields, as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    def progress(done: int, total: int) -> None:
        sys.stderr.write(progress_line(done, total) + "\n")  # one write: mask thread + logging
        sys.stderr.flush()

    job = RenderJob(args.spec, args.models, args.textures, args.staging, args.gate,
                    args.quality_gate)
    from worker.process.sandbox import confine_to_job

    confine_to_job(job)  # before Blender reads a single untrusted file
    code, payload = run_job(job, progress)
    args.result.write_text(json.dumps(payload))
    return code


if __name__ == "__main__":
    sys.exit(main())
