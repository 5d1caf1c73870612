"""The digits entry points: smoke runs on CPU in seconds (tiny models, a few steps, a few test images)."""

import math

import pytest
import torch

from lib.data.digits import load_digits
from lib.flows.digits import (
    DIFFUSION_T_MIN_GRID,
    DigitsFlowConfig,
    diffusion_bpd_study,
    fm_bits_per_dim,
    glow_bits_per_dim,
    reflow_digits,
    train_fm,
    train_glow,
)
from lib.flows.model import GlowConfig
from lib.nn.unet import MLPConfig


def test_digits_smoke():
    c = DigitsFlowConfig(glow=GlowConfig(checker=1, steps=1, hidden=4), batch=8,
                         velocity=MLPConfig(dim=64, hidden=8, depth=1, time_dim=8, image_shape=(1, 8, 8)))  # fmt: skip
    glow, _ = train_glow(c, steps=2)
    fm, _ = train_fm(c, steps=2)
    x = load_digits("test").x[:4]
    g = torch.Generator().manual_seed(0)
    bpd = glow_bits_per_dim(glow, x, g)
    bpd_fm, nfe = fm_bits_per_dim(fm, x, g, divergence="hutchinson")
    assert math.isfinite(bpd) and math.isfinite(bpd_fm) and nfe > 0
    assert glow.sample(2, g).shape == (2, 1, 8, 8)
    student, info = reflow_digits(fm, c, pairs=6, steps=2, generator=g)
    assert info["pairs"] == 6 and student is not fm
    assert not torch.equal(next(student.parameters()), next(fm.parameters()))  # trained from the teacher's weights


def test_diffusion_bpd_smoke():
    res = diffusion_bpd_study(select=3, draws=1, n_test=3)
    assert res["t_min"] in DIFFUSION_T_MIN_GRID and res["test_images"] == 3 and res["nfe"] > 0
    assert math.isfinite(res["bits_per_dim"]) and len(res["hutchinson_draws"]) == 1
    assert set(res["selection_bits_per_dim"]) == {str(t) for t in DIFFUSION_T_MIN_GRID}


def test_diffusion_bpd_rejects_bad_draws():
    with pytest.raises(ValueError, match="draws"):
        diffusion_bpd_study(draws=0)
