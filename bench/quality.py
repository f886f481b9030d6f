"""Quality at equal cost: PSNR/SSIM of render settings against a high-sample reference.

Frame 0 of several different scenes is rendered with each candidate setting and with a reference
(many samples, no denoising); images are compared on 8-bit RGB (PSNR) and luminance (SSIM,
11x11 Gaussian, sigma 1.5). Frames are written as JPEG quality 100 for every setting alike.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import replace
from importlib.metadata import version

import numpy as np
from PIL import Image

from farm.assets.library import AssetLibrary, default_cache_dir
from farm.assets.procedural import default_pack
from farm.generate.sampling import generate_spec
from farm.io.layout import frame_dirs, image_file
from farm.model.presets import load_preset
from farm.model.spec import RenderSettings, VideoSpec

SEED = "seed: 64 spp + OIDN accurate"  # the original generator's settings (`seed` preset)
DEFAULT = "adaptive 0.005 min 8 max 64 + accurate"  # the `bl30k` preset's settings
FAST = "16 spp + FAST, OIDN fast"  # the `fast` preset's settings
SHORTLIST = [SEED, DEFAULT, FAST, "adaptive 0.01 min 32 max 96 + FAST"]  # `python -m bench all`
CANDIDATES: dict[str, dict] = {
    SEED: {"samples": 64, "denoise_prefilter": "ACCURATE"},
    "adaptive 0.01 min 8 max 64 + accurate": {"adaptive_threshold": 0.01,
                                              "adaptive_min_samples": 8},
    "adaptive 0.02 min 8 max 64 + accurate": {"adaptive_threshold": 0.02,
                                              "adaptive_min_samples": 8},
    "48 spp + accurate": {"samples": 48},
    "64 spp + FAST": {"denoise_prefilter": "FAST"},
    "48 spp + FAST": {"samples": 48, "denoise_prefilter": "FAST"},
    "adaptive 0.01 min 8 max 64 + FAST": {"adaptive_threshold": 0.01, "adaptive_min_samples": 8,
                                          "denoise_prefilter": "FAST"},
    "adaptive 0.01 min 16 max 64 + FAST": {"adaptive_threshold": 0.01,
                                           "adaptive_min_samples": 16,
                                           "denoise_prefilter": "FAST"},
    "adaptive 0.01 min 8 + FAST, 4 bounces": {"adaptive_threshold": 0.01,
                                              "adaptive_min_samples": 8,
                                              "denoise_prefilter": "FAST", "max_bounces": 4},
    "adaptive 0.02 min 8 max 64 + FAST": {"adaptive_threshold": 0.02, "adaptive_min_samples": 8,
                                          "denoise_prefilter": "FAST"},
    "32 spp + FAST": {"samples": 32, "denoise_prefilter": "FAST"},
    "16 spp + FAST": {"samples": 16, "denoise_prefilter": "FAST"},
    "adaptive 0.03 min 4 max 16 + FAST": {"samples": 16, "adaptive_threshold": 0.03,
                                          "adaptive_min_samples": 4, "denoise_prefilter": "FAST"},
    "12 spp + FAST": {"samples": 12, "denoise_prefilter": "FAST"},
    # second round, after the first 6-scene table (BENCHMARKS.md)
    "adaptive 0.01 min 16 max 128 + FAST": {"samples": 128, "adaptive_threshold": 0.01,
                                            "adaptive_min_samples": 16,
                                            "denoise_prefilter": "FAST"},
    "adaptive 0.005 min 16 max 64 + FAST": {"adaptive_threshold": 0.005,
                                            "adaptive_min_samples": 16,
                                            "denoise_prefilter": "FAST"},
    "adaptive 0.01 min 32 max 96 + FAST": {"samples": 96, "adaptive_threshold": 0.01,
                                           "adaptive_min_samples": 32, "denoise_prefilter": "FAST"},
    "adaptive 0.01 min 16 max 96 + accurate": {"samples": 96, "adaptive_threshold": 0.01,
                                               "adaptive_min_samples": 16},
    "adaptive 0.005 min 8 max 64 + accurate": {"adaptive_threshold": 0.005,
                                               "adaptive_min_samples": 8},
    "14 spp + FAST": {"samples": 14, "denoise_prefilter": "FAST"},
    "adaptive 0.05 min 4 max 16 + FAST": {"samples": 16, "adaptive_threshold": 0.05,
                                          "adaptive_min_samples": 4, "denoise_prefilter": "FAST"},
    "adaptive 0.02 min 8 max 24 + FAST": {"samples": 24, "adaptive_threshold": 0.02,
                                          "adaptive_min_samples": 8, "denoise_prefilter": "FAST"},
    "adaptive 0.03 min 8 max 32 + FAST": {"samples": 32, "adaptive_threshold": 0.03,
                                          "adaptive_min_samples": 8, "denoise_prefilter": "FAST"},
    # third round
    "adaptive 0.005 min 16 max 96 + FAST": {"samples": 96, "adaptive_threshold": 0.005,
                                            "adaptive_min_samples": 16,
                                            "denoise_prefilter": "FAST"},
    "adaptive 0.0075 min 16 max 64 + FAST": {"adaptive_threshold": 0.0075,
                                             "adaptive_min_samples": 16,
                                             "denoise_prefilter": "FAST"},
    "16 spp + FAST, 3 bounces": {"samples": 16, "denoise_prefilter": "FAST", "max_bounces": 3},
    "16 spp + FAST, 2 bounces": {"samples": 16, "denoise_prefilter": "FAST", "max_bounces": 2},
    # fourth round: the denoiser's own quality setting
    "16 spp + FAST, OIDN balanced": {"samples": 16, "denoise_prefilter": "FAST",
                                     "denoise_quality": "BALANCED"},
    "16 spp + FAST, OIDN fast": {"samples": 16, "denoise_prefilter": "FAST",
                                 "denoise_quality": "FAST"},
    "20 spp + FAST, OIDN fast": {"samples": 20, "denoise_prefilter": "FAST",
                                 "denoise_quality": "FAST"},
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _blur(img: np.ndarray, sigma: float = 1.5, size: int = 11) -> np.ndarray:
    x = np.arange(size) - size // 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    rows = np.lib.stride_tricks.sliding_window_view(img, size, axis=1) @ k
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=0) @ k


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM on luminance (Rec. 601), valid region only."""
    luma = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(float) @ luma, b.astype(float) @ luma
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _blur(x), _blur(y)
    vx, vy, cxy = _blur(x * x) - mx**2, _blur(y * y) - my**2, _blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def bench_quality(scenes: int = 3, width: int = 384, height: int = 256,
                  reference_samples: int = 2048, candidates: list[str] | None = None,
                  device: str = "AUTO") -> list[dict]:
    """One row per candidate: steady-state s/frame, speed-up, PSNR/SSIM against the reference.

    Each candidate renders frames 0 and 1: frame 0 is compared, frame 1 is timed (frame 0 also
    pays the scene sync, which a 160-frame video pays once). PSNR drops are per scene against the
    seed's settings on that scene; ``dpsnr_worst`` is the largest.
    """
    from bench.render import render_bench
    from worker.process.pool import RenderPool

    lib = AssetLibrary.open(*default_pack())
    base = load_preset("bl30k")
    names = [SEED, *(n for n in candidates or CANDIDATES if n != SEED)]
    rows = []
    # one long-lived render process for every render (timings are of frame 1, in Cycles)
    with tempfile.TemporaryDirectory() as tmp, RenderPool(1) as pool:

        def render(spec: VideoSpec, frames: int, **overrides) -> tuple[np.ndarray, float]:
            spec = replace(spec, frames=frames,
                           render=RenderSettings(jpeg_quality=100, device=device, **overrides))
            out = render_bench(spec, f"{tmp}/{spec.id}", pool=pool)
            image = np.asarray(Image.open(frame_dirs(out.staging, spec.id)[0] / image_file(0)))
            return image, out.manifest["timings"]["render_s"][-1]

        def reference(spec: VideoSpec) -> np.ndarray:
            """The reference image, cached: it costs as much as all candidates together."""
            scene = replace(spec, frames=1, render=RenderSettings()).to_dict()
            del scene["render"]  # keyed by the scene and the reference's settings alone
            key = hashlib.sha256(json.dumps([scene, reference_samples, device, version("bpy")],
                                            sort_keys=True).encode()).hexdigest()
            path = default_cache_dir() / "bench-references" / f"{key[:24]}.npy"
            if path.is_file():
                return np.load(path)
            image, _ = render(spec, 1, samples=reference_samples, denoise=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, image)
            return image

        results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
        for index in range(scenes):
            spec = replace(generate_spec(lib, base, 0, index, 2021), resolution=[width, height])
            ref_image = reference(spec)
            for name in names:
                image, seconds = render(spec, 2, **CANDIDATES[name])
                results[name].append((seconds, psnr(image, ref_image), ssim(image, ref_image)))
                print(f"scene {index} {name}: {seconds:.3f} s, {results[name][-1][1]:.2f} dB",
                      file=sys.stderr, flush=True)
        seed_t, seed_p, _ = (np.array(col) for col in zip(*results[SEED], strict=True))
        for name in names:
            t, p, s = (np.array(col) for col in zip(*results[name], strict=True))
            rows.append({"bench": "quality", "setting": name, "scenes": scenes,
                         "resolution": f"{width}x{height}", "s_per_frame": round(t.mean(), 3),
                         "speedup": round(seed_t.mean() / t.mean(), 2),
                         "psnr_mean": round(p.mean(), 2), "psnr_min": round(p.min(), 2),
                         "dpsnr_mean": round((seed_p - p).mean(), 2),
                         "dpsnr_worst": round((seed_p - p).max(), 2),
                         "ssim_mean": round(s.mean(), 5), "ssim_min": round(s.min(), 5)})
    return rows


def choose(rows: list[dict], max_drop_db: float = 0.5, min_ssim: float = 0.99,
           min_speedup: float = 4.0) -> dict[str, str | None]:
    """The issue's rules: ``default`` is the fastest setting within ``max_drop_db`` of the seed on
    every scene; ``fast`` the fastest with SSIM >= ``min_ssim`` on every scene and at least
    ``min_speedup`` times the seed's speed."""
    rows = [r for r in rows if r.get("bench") == "quality"]

    def fastest(ok: list[dict]) -> str | None:
        return max(ok, key=lambda r: r["speedup"])["setting"] if ok else None

    return {"default": fastest([r for r in rows if r["dpsnr_worst"] <= max_drop_db]),
            "fast": fastest([r for r in rows if r["ssim_min"] >= min_ssim
                             and r["speedup"] >= min_speedup])}
