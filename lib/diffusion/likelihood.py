"""Exact log-likelihoods through the probability-flow ODE (instantaneous change of variables), with the
divergence computed exactly (small dimension) or by the Hutchinson-Skilling estimator; bits per dimension.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

References: Chen, Rubanova, Bettencourt and Duvenaud, "Neural Ordinary Differential Equations", 2018
(d log p / dt = -tr(dv/dx)); Grathwohl et al., "FFJORD", 2019 and Skilling 1989 / Hutchinson 1990 (the
trace estimator ``tr(J) = E[z^T J z]``); Song et al., ICLR 2021, appendix D.2 (PF-ODE likelihoods, bits/dim).

Glossary
--------
v(x, t)      PF-ODE velocity ``f - g^2 score / 2``
div v        ``tr(dv/dx)``; ``log p_0(x_0) = log p_1(x_1) + int_0^1 div v(x_t, t) dt`` along the ODE path
z (probe)    Rademacher or Gaussian vector, fixed along one ODE solve (Skilling-Hutchinson)
bits/dim     ``-(log p(x) / D + log(bin width)) / ln 2`` for data on a grid of given bin width
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lib.diffusion.sde import LinearSDE, ScoreFn


@dataclass(frozen=True)
class LikelihoodResult:
    """What :func:`pf_ode_likelihood` returns (all per example, ``(batch,)``, except ``nfe``)."""

    logp: torch.Tensor
    """``log p_0(x)`` in nats (continuous density)."""
    prior_logp: torch.Tensor
    """``log p_1(z)`` of the ODE's end point under the prior."""
    delta_logp: torch.Tensor
    """``int div v dt`` along the path."""
    z: torch.Tensor
    """End point ``x_1`` of the ODE, shape of ``x``."""
    nfe: int
    """Velocity (score) evaluations of the solve."""


def divergence_exact(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``tr(dv/dx)`` per example by one backward pass per dimension (``D`` passes): exact, ``O(D)`` cost."""
    vf, D = v.reshape(v.shape[0], -1), v[0].numel()
    div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(D):
        (gi,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True, create_graph=False)
        div = div + gi.reshape(x.shape[0], -1)[:, i]
    return div


def divergence_hutchinson(v: torch.Tensor, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Unbiased ``z^T (dv/dx) z`` per example (one vector-Jacobian product) for a probe ``z`` with
    ``E[z z^T] = I``."""
    (vjp,) = torch.autograd.grad(v, x, grad_outputs=probe, retain_graph=False)
    return (vjp * probe).reshape(x.shape[0], -1).sum(1)


def pf_ode_likelihood(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x: torch.Tensor,
    divergence: str = "exact",
    probe: str = "rademacher",
    t_eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
) -> LikelihoodResult:
    """``log p_0(x)`` of the model defined by ``score_fn`` through its probability-flow ODE.

    Solves ``d/dt [x, l] = [v(x, t), div v(x, t)]`` from ``t_eps`` to 1 with ``torchdiffeq`` and returns
    ``prior_logp(x_1) + l(1)``. ``divergence="exact"`` costs ``D`` backward passes per evaluation;
    ``"hutchinson"`` one, with a probe (``"rademacher"`` or ``"gaussian"``) drawn once per solve.
    """
    from torchdiffeq import odeint

    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError("x must be a tensor of shape (batch, ...)")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if not 0 < t_eps < 1:
        raise ValueError(f"t_eps must be in (0, 1), got {t_eps!r}")
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if probe == "rademacher":
        z = z.sign()
    nfe = 0

    def rhs(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal nfe
        nfe += 1
        x_t = state[0].detach()
        with torch.enable_grad():
            x_t.requires_grad_(True)
            t = t.clamp(t_eps, 1.0).expand(x_t.shape[0])  # adaptive stages may overshoot the end time
            v = sde.probability_flow_drift(x_t, t, score_fn)
            div = divergence_exact(v, x_t) if divergence == "exact" else divergence_hutchinson(v, x_t, z)
        return v.detach(), div.detach()

    t_span = torch.tensor([t_eps, 1.0], dtype=x.dtype, device=x.device)
    l0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xs, ls = odeint(rhs, (x, l0), t_span, rtol=rtol, atol=atol, method=method)
    x1, delta = xs[-1], ls[-1]
    prior = sde.prior_logp(x1)
    return LikelihoodResult(prior + delta, prior, delta, x1, nfe)


def bits_per_dim(logp: torch.Tensor, num_dims: int, bin_width: float | None = None) -> torch.Tensor:
    """``-(logp / D + log(bin_width)) / ln 2``: a density's log-likelihood in bits per dimension; with
    ``bin_width`` (uniformly dequantised grid data) it bounds the discrete data's code length."""
    if not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive int, got {num_dims!r}")
    if bin_width is not None and not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    nats = -logp / num_dims - (math.log(bin_width) if bin_width is not None else 0.0)
    return nats / math.log(2)


def uniform_dequantize(x: torch.Tensor, bin_width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + u`` with ``u ~ U(-bin_width/2, bin_width/2)`` per coordinate (for bits/dim of grid data)."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
    return x + bin_width * u


def categorical_pixel_bits_per_dim(x_train: torch.Tensor, x_test: torch.Tensor, levels: int = 17) -> float:
    """Baseline code length: independent per-pixel categorical distributions over ``levels`` grey levels
    (values ``-1 + 2k / (levels - 1)``), fitted on ``x_train`` with add-one smoothing, in bits/dim on ``x_test``."""
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"x_train and x_test must have the same image shape, got {x_train.shape} and {x_test.shape}")
    to_k = lambda x: torch.round((x + 1) * (levels - 1) / 2).long().clamp(0, levels - 1).reshape(x.shape[0], -1)
    k_train, k_test = to_k(x_train), to_k(x_test)  # (n, D)
    D = k_train.shape[1]
    counts = torch.ones(D, levels, dtype=torch.float64)
    counts.scatter_add_(1, k_train.T, torch.ones(k_train.T.shape, dtype=torch.float64))
    logp = torch.log(counts / counts.sum(1, keepdim=True))  # (D, levels)
    ll = logp.gather(1, k_test.T)  # (D, n_test)
    return float(-ll.mean() / math.log(2))
