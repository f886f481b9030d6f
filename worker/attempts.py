"""One video through the quality gate: ``render_attempts`` (no bpy here).

Renders a spec (``worker.process.runner.render_spec``); when a generated spec's masks fail the
gate, samples its next attempt (``farm.generate.sampling``, deterministic) and renders that, up
to the gate's last attempt. A video no attempt passes fails (``GateFailed``) rather than ship
broken masks, unless the spec says ``keep_gate_failures``. Returns the final spec, its manifest
and the staging folder holding ``JPEGImages/<video>`` and ``Annotations/<video>`` (and any extra
outputs, farm/io/outputs.py).
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from farm.assets.check import check_spec_files
from farm.assets.library import AssetError, AssetLibrary
from farm.generate.sampling import generate_spec
from farm.io.layout import staging_dir
from farm.model.presets import Preset, QualityGate
from farm.model.spec import VideoSpec
from worker.process.pool import RenderPool
from worker.process.protocol import Progress
from worker.process.runner import (
    MaskRejected,
    PermanentRenderError,
    render_spec,
)
from worker.process.watchdog import Abort


class GateFailed(PermanentRenderError):
    """Every attempt of the video failed the quality gate: it fails rather than ship broken."""


@dataclass
class RenderOutcome:
    spec: VideoSpec
    manifest: dict
    staging: Path


def _gate_message(spec: VideoSpec, reason: str, rejected: list[dict]) -> str:
    models = ", ".join(o.model for o in spec.objects)
    tried = f"{len(rejected)} attempts" if spec.source == "generated" else "imported spec"
    return (f"{spec.id}: failed the quality gate ({tried}; last: attempt {spec.attempt}, "
            f"{reason}; models {models})")


def render_attempts(spec: VideoSpec, preset: Preset | None, models: str | Path,
                    textures: str | Path, scratch: str | Path, progress: Progress | None = None,
                    timeout: float | None = None, env: dict | None = None,
                    library: AssetLibrary | None = None, resample: bool = True,
                    pool: RenderPool | None = None, abort: Abort | None = None) -> RenderOutcome:
    """Render ``spec`` into scratch, resampling a generated spec that fails the mask gate.

    ``preset``: the spec's preset, resolved by the caller (its gate and, for resampling, its
    motion; None for a spec of an unknown preset: default gate, no resampling). ``library``:
    the index (with its denylist) a resampled attempt draws from (default: the roots' index).
    ``resample=False`` renders the spec as given and only records the verdict (benchmarks: a
    resampled spec would be the preset's full video, not the cut-down spec given). ``pool``
    renders in long-lived processes (None: a fresh process per render). ``timeout`` and
    ``abort`` apply to each render (``RenderAborted``).
    """
    models, textures = Path(models).resolve(), Path(textures).resolve()
    staging = staging_dir(scratch, spec.id)
    gate = preset.quality_gate if preset else QualityGate()
    started = time.perf_counter()
    record = spec.generation.get("gate", {})
    rejected = list(record.get("rejected", []))
    keep = spec.keep_gate_failures or not resample
    if record.get("passed") is False and not keep:
        raise GateFailed(_gate_message(spec, record.get("reason", "geometric check"), rejected))
    while True:
        try:
            check_spec_files(spec, models, textures)
        except AssetError as exc:
            raise PermanentRenderError(f"{spec.id}: {exc}") from None
        last_attempt = spec.generation.get("gate", {}).get(
            "last_attempt", gate.max_attempts - 1 if preset else spec.attempt)
        again = (resample and spec.source == "generated" and preset is not None
                 and spec.attempt < last_attempt)
        try:
            render = render_spec(spec, models, textures, staging, gate, not keep or again,
                                 timeout, progress, env, pool, abort)
            break
        except MaskRejected as exc:
            rejected.append({"attempt": spec.attempt, "check": "mask", "reason": exc.reason})
            if not again:
                shutil.rmtree(staging, ignore_errors=True)
                raise GateFailed(_gate_message(spec, exc.reason, rejected)) from None
        library = library or AssetLibrary.open(models, textures)
        spec = replace(generate_spec(library, preset, spec.segment, spec.index, spec.seed,
                                     first_attempt=spec.attempt + 1, rejected=rejected,
                                     last_attempt=last_attempt),
                       keep_gate_failures=spec.keep_gate_failures)
        rejected = list(spec.generation["gate"]["rejected"])
        if not spec.generation["gate"]["passed"]:
            shutil.rmtree(staging, ignore_errors=True)
            raise GateFailed(_gate_message(spec, spec.generation["gate"]["reason"], rejected))
    manifest = {
        "video": spec.id,
        "segment": spec.segment,
        "index": spec.index,
        "spec_digest": spec.digest(),
        "preset": spec.preset,
        "resolution": spec.resolution,
        "num_frames": spec.frames,
        "objects": [{"id": k, "model": o.model, "category": o.category, "synset": o.synset,
                     "texture": o.texture,
                     **({"library": o.library, "license": o.license} if o.library else {})}
                    for k, o in enumerate(spec.objects, start=1)],
        "attempt": spec.attempt,
        "rejected_attempts": rejected,
        "keep_gate_failures": spec.keep_gate_failures,
        "host": socket.gethostname(),
        "created_at": time.time(),
        **render,
    }
    manifest["timings"]["wall_s"] = round(time.perf_counter() - started, 3)
    return RenderOutcome(spec, manifest, staging)
