"""CNF pieces: the linear ODE's closed-form density, exact divergence, Hutchinson unbiasedness and variance,
adjoint gradients = direct backpropagation, adjoint memory independent of the number of solver steps."""

import pytest
import torch
from torch import nn

from lib.diffusion.likelihood import divergence_exact, make_probe
from lib.flows.cnf import cnf_log_prob, hutchinson_variance, linear_ode_logp, saved_tensor_bytes
from lib.flows.likelihood import velocity_log_prob
from lib.nn.unet import MLPConfig, TimeMLP


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, x, t):
        return x @ self.A.T


def test_linear_ode_closed_form():
    g = torch.Generator().manual_seed(0)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    ref = linear_ode_logp(A, x)
    r = cnf_log_prob(Linear(A), x, method="dopri5", rtol=1e-10, atol=1e-10)
    assert torch.allclose(r.logp, ref, atol=1e-7)
    r = velocity_log_prob(Linear(A), x, rtol=1e-10, atol=1e-10)  # the diffusion core's ODE likelihood
    assert torch.allclose(r.logp, ref, atol=1e-7)
    with torch.no_grad():  # an RK4 grid of 20 steps is accurate to ~1e-6 here
        assert torch.allclose(cnf_log_prob(Linear(A), x, steps=20).logp, ref, atol=1e-5)


def test_divergence_exact_and_hutchinson():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.tanh(x @ A.T)
    f = lambda u: torch.tanh(u @ A.T)  # noqa: E731
    J = torch.stack([torch.autograd.functional.jacobian(f, x[i].detach()) for i in range(5)])
    assert torch.allclose(divergence_exact(v, x), torch.diagonal(J, dim1=1, dim2=2).sum(1), atol=1e-12)
    for kind in ("rademacher", "gaussian"):
        n = 40000
        z = make_probe(torch.empty(n, 4, dtype=torch.float64), kind, g)
        est = ((z @ A) * z).sum(1)  # z^T A z
        var = hutchinson_variance(A, kind)
        assert float(est.mean()) == pytest.approx(float(torch.trace(A)), abs=5 * (var / n) ** 0.5)
        assert float(est.var()) == pytest.approx(var, rel=0.05)
    assert hutchinson_variance(torch.diag(torch.tensor([1.0, 2.0])), "rademacher") == 0.0
    with pytest.raises(ValueError, match="square"):
        hutchinson_variance(torch.ones(2, 3))


def _net():
    torch.manual_seed(0)
    net = TimeMLP(MLPConfig(dim=2, hidden=16, depth=2, time_dim=8)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


class Tanh(nn.Module):
    """A small smooth time-dependent field (cheap enough for tight adaptive tolerances)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W1 = nn.Parameter(0.7 * torch.randn(8, 3, generator=g, dtype=torch.float64))
        self.W2 = nn.Parameter(0.7 * torch.randn(2, 8, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        return torch.tanh(torch.cat([x, t[:, None]], 1) @ self.W1.T) @ self.W2.T


def test_adjoint_equals_direct_backprop():
    net, x = Tanh(), torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for adjoint in (False, True):
        net.zero_grad()
        cnf_log_prob(net, x, method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint).logp.mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-6


def test_adjoint_memory_does_not_grow_with_steps():
    net, x = _net(), torch.randn(32, 2, dtype=torch.float64)
    mem = {}
    for adjoint in (False, True):
        for steps in (2, 8):
            _, mem[adjoint, steps] = saved_tensor_bytes(
                lambda s=steps, a=adjoint: cnf_log_prob(net, x, steps=s, adjoint=a).logp
            )
    assert mem[True, 2] == mem[True, 8]
    assert mem[False, 8] > 3.5 * mem[False, 2] and mem[False, 2] > 10 * mem[True, 2]


def test_errors():
    net = _net()
    with pytest.raises(ValueError, match="non-finite"):
        cnf_log_prob(net, torch.tensor([[float("nan"), 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="steps"):
        cnf_log_prob(net, torch.zeros(1, 2, dtype=torch.float64), steps=0)
    with pytest.raises(ValueError, match="A must"):
        linear_ode_logp(torch.eye(3), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="velocity"):
        velocity_log_prob(lambda x, t: x, torch.zeros(2, 2))
