"""Quality at equal cost: PSNR/SSIM of render settings against a high-sample reference.

Frame 0 of several different scenes is rendered with each candidate setting and with a reference
(many samples, no denoising); images are compared on 8-bit RGB (PSNR) and luminance (SSIM,
11x11 Gaussian, sigma 1.5). Frames are written as JPEG quality 100 for every setting alike.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
from PIL import Image

from farm.assets import AssetLibrary
from farm.presets import load_preset
from farm.sampling import generate_spec
from farm.synth_assets import default_pack

CANDIDATES: dict[str, dict] = {
    "seed: 64 spp + OIDN accurate": {"samples": 64, "denoise": True,
                                     "denoise_prefilter": "ACCURATE"},
    "adaptive 0.01 min 8 max 64 + accurate": {"samples": 64, "adaptive_threshold": 0.01,
                                              "adaptive_min_samples": 8},
    "adaptive 0.02 min 8 max 64 + accurate": {"samples": 64, "adaptive_threshold": 0.02,
                                              "adaptive_min_samples": 8},
    "48 spp + accurate": {"samples": 48},
    "64 spp + FAST": {"samples": 64, "denoise_prefilter": "FAST"},
    "adaptive 0.02 min 8 max 64 + FAST": {"samples": 64, "adaptive_threshold": 0.02,
                                          "adaptive_min_samples": 8, "denoise_prefilter": "FAST"},
    "32 spp + FAST": {"samples": 32, "denoise_prefilter": "FAST"},
    "16 spp + FAST": {"samples": 16, "denoise_prefilter": "FAST"},
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
                  reference_samples: int = 2048, candidates: list[str] | None = None
                  ) -> list[dict]:
    from worker.runner import render_spec

    models, textures = default_pack()
    lib = AssetLibrary.open(models, textures)
    base = load_preset("bl30k")
    names = candidates or list(CANDIDATES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        def render(spec, **overrides) -> tuple[np.ndarray, float]:
            spec = replace(spec, render=replace(base.render, jpeg_quality=100, **overrides))
            out = render_spec(spec, models, textures, f"{tmp}/{spec.id}")
            image = np.asarray(Image.open(out.staging / "JPEGImages" / spec.id / "00000.jpg"))
            return image, out.manifest["timings"]["render_s"][0]

        results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
        for index in range(scenes):
            spec = replace(generate_spec(lib, base, 0, index, 2021), frames=1,
                           resolution=[width, height])
            reference, _ = render(spec, samples=reference_samples, denoise=False)
            for name in names:
                image, seconds = render(spec, **CANDIDATES[name])
                results[name].append((seconds, psnr(image, reference), ssim(image, reference)))
        seed_time = np.mean([r[0] for r in results[names[0]]])
        for name in names:
            t, p, s = (np.array(col) for col in zip(*results[name], strict=True))
            rows.append({"bench": "quality", "setting": name, "scenes": scenes,
                         "resolution": f"{width}x{height}", "s_per_frame": round(t.mean(), 3),
                         "speedup": round(seed_time / t.mean(), 2),
                         "psnr_mean": round(p.mean(), 2), "psnr_min": round(p.min(), 2),
                         "ssim_mean": round(s.mean(), 4), "ssim_min": round(s.min(), 4)})
    return rows
