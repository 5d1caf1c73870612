"""Whole flows: RealNVP and the digits Glow against the autograd Jacobian, normalisation, sampling, errors."""

import pytest
import torch

from lib.flows.base import jacobian_logdet
from lib.flows.model import GlowConfig, RealNVPConfig, build_glow, build_realnvp, count_parameters, standard_normal_logp


def _perturb(model, scale=0.1):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_realnvp_normalised_and_invertible():
    torch.manual_seed(0)
    model = _perturb(build_realnvp(RealNVPConfig(couplings=4, hidden=16)).double().eval(), 0.3)
    g = torch.linspace(-8, 8, 321, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        p = model.log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp().reshape(321, 321)
    assert float(torch.trapezoid(torch.trapezoid(p, g), g)) == pytest.approx(1.0, abs=2e-3)
    x = torch.randn(3, 2, dtype=torch.float64)
    z, ld = model(x)
    assert torch.allclose(ld, jacobian_logdet(lambda v: model(v)[0], x), atol=1e-10)
    assert torch.allclose(model.flow.inverse(z), x, atol=1e-10)
    assert model.sample(5, torch.Generator().manual_seed(0)).shape == (5, 2)


@pytest.mark.parametrize("lu", [True, False])
def test_glow_logdet_and_inverse(lu):
    torch.manual_seed(0)
    model = build_glow(GlowConfig(checker=1, steps=1, hidden=8, lu=lu))
    model.log_prob(torch.randn(16, 1, 8, 8))  # ActNorm's data-dependent initialisation
    model = _perturb(model.double().eval(), 0.05)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    z, ld = model(x)
    assert z.shape == x.shape
    assert torch.allclose(ld, jacobian_logdet(lambda v: model(v)[0], x), atol=1e-8)
    assert torch.allclose(model.flow.inverse(z), x, atol=1e-9)
    assert torch.allclose(model.log_prob(x), standard_normal_logp(z) + ld)


def test_parameter_budget_and_errors():
    assert count_parameters(build_realnvp()) == 36944
    model = build_realnvp()
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.randn(3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        model.log_prob(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="n must"):
        model.sample(0)
    with pytest.raises(TypeError, match="FlowLayer"):
        from lib.flows.model import NormalizingFlow

        NormalizingFlow(torch.nn.Linear(2, 2), (2,))
    with pytest.raises(ValueError):
        build_realnvp(RealNVPConfig(dim=1))
