"""The image metrics the quality benchmark relies on."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality import psnr, ssim


def test_psnr_and_ssim_behave():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert psnr(img, img) == float("inf")
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    assert 30 < psnr(img, noisy) < 40 and psnr(img, noisier) < psnr(img, noisy)
    assert ssim(img, noisier) < ssim(img, noisy) < 1.0
    # PSNR of a known constant error: 255 / 1 -> 48.13 dB
    assert psnr(np.zeros((4, 4, 3)), np.ones((4, 4, 3))) == pytest.approx(48.13, abs=0.01)


def test_choose_applies_the_issue_rules():
    from bench.quality import choose

    def row(name, speedup, worst, ssim_min):
        return {"bench": "quality", "setting": name, "speedup": speedup, "dpsnr_worst": worst,
                "ssim_min": ssim_min}

    rows = [row("seed", 1.0, 0.0, 0.996), row("a", 1.3, 0.3, 0.995), row("b", 1.9, 0.6, 0.995),
            row("c", 4.5, 2.5, 0.991), row("d", 5.0, 3.0, 0.985), {"bench": "other"}]
    # b is faster but drops 0.6 dB on one scene; d is fastest but below SSIM 0.99
    assert choose(rows) == {"default": "a", "fast": "c"}
    assert choose(rows[:1]) == {"default": "seed", "fast": None}


def test_presets_are_the_settings_the_quality_study_measured():
    """bl30k, fast and seed render exactly what BENCHMARKS.md's quality tables measured."""
    from dataclasses import replace

    from bench.quality import CANDIDATES, DEFAULT, FAST, SEED
    from farm.model.presets import load_preset
    from farm.model.spec import RenderSettings

    for preset, name in (("bl30k", DEFAULT), ("fast", FAST), ("seed", SEED)):
        measured = RenderSettings(**CANDIDATES[name])
        assert replace(load_preset(preset).render, jpeg_quality=measured.jpeg_quality) == measured
