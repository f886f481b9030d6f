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
