"""Exact log-likelihoods of continuous flows (instantaneous change of variables), with the divergence computed
exactly (small dimension) or by the Hutchinson-Skilling estimator; the PF-ODE likelihood; bits per dimension.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); the Flows
chapter's CNF and flow-matching models use :func:`ode_likelihood` directly.

References: Chen, Rubanova, Bettencourt and Duvenaud, "Neural Ordinary Differential Equations", 2018
(d log p / dt = -tr(dv/dx)); Grathwohl et al., "FFJORD", 2019 and Skilling 1989 / Hutchinson 1990 (the
trace estimator ``tr(J) = E[z^T J z]``); Song et al., ICLR 2021, appendix D.2 (PF-ODE likelihoods, bits/dim).

Glossary
--------
v(x, t)      a flow's velocity; for a diffusion the PF-ODE's ``f - g^2 score / 2 = alpha' x0_hat + sigma' eps_hat``
div v        ``tr(dv/dx)``; ``log p_0(x_0) = log p_1(x_1) + int_0^1 div v(x_t, t) dt`` along the ODE path
z (probe)    Rademacher or Gaussian vector, fixed along one ODE solve (Skilling-Hutchinson)
bits/dim     ``-(log p(x) / D + log(bin width)) / ln 2`` for data on a grid of given bin width
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import Schedule


@dataclass(frozen=True)
class ODELikelihood:
    """What :func:`ode_likelihood` returns (per example ``(batch,)``, except ``z`` and ``nfe``)."""

    logp: torch.Tensor
    """``log p(x)`` at ``t_start`` in nats (a continuous density)."""
    prior_logp: torch.Tensor
    """``prior_logp(z)`` of the end point."""
    delta_logp: torch.Tensor
    """``int_{t_start}^{t_end} div v dt`` along the path."""
    z: torch.Tensor
    """The state at ``t_end``, shape of ``x``."""
    nfe: int
    """Velocity evaluations of the solve."""


def divergence_exact(v: torch.Tensor, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """``tr(dv/dx)`` per example by one backward pass per dimension (``D`` passes): exact, ``O(D)`` cost.
    ``v = velocity(x)`` must have been computed from ``x`` with grad enabled; ``create_graph`` keeps the
    result differentiable (maximum-likelihood training of a CNF, :mod:`lib.flows.cnf`)."""
    if v.shape != x.shape:
        raise ValueError(f"v and x must have the same shape, got {tuple(v.shape)} and {tuple(x.shape)}")
    vf, D = v.reshape(v.shape[0], -1), v[0].numel()
    div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(D):
        (gi,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
        div = div + gi.reshape(x.shape[0], -1)[:, i]
    return div


def divergence_hutchinson(
    v: torch.Tensor, x: torch.Tensor, probe: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Unbiased ``z^T (dv/dx) z`` per example (one vector-Jacobian product) for a probe ``z`` with
    ``E[z z^T] = I``; ``create_graph`` as in :func:`divergence_exact`."""
    if v.shape != x.shape or probe.shape != x.shape:
        raise ValueError(
            f"v, x and probe must have one shape, got {tuple(v.shape)}, {tuple(x.shape)}, {tuple(probe.shape)}"
        )
    (vjp,) = torch.autograd.grad(v, x, grad_outputs=probe, create_graph=create_graph)
    return (vjp * probe).reshape(x.shape[0], -1).sum(1)


def make_probe(x: torch.Tensor, kind: str = "rademacher", generator: torch.Generator | None = None) -> torch.Tensor:
    """A Hutchinson probe shaped like ``x``: ``"rademacher"`` (+-1) or ``"gaussian"``."""
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return z.sign() if kind == "rademacher" else z


def ode_likelihood(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    prior_logp: Callable[[torch.Tensor], torch.Tensor],
    *,
    t_start: float = 0.0,
    t_end: float = 1.0,
    divergence: str = "exact",
    probe: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> ODELikelihood:
    """``log p(x)`` of a continuous flow ``dx/dt = velocity_fn(x, t)`` by the instantaneous change of variables.

    Integrates ``d/dt [x, l] = [v(x, t), div v(x, t)]`` from the data at ``t_start`` to ``t_end`` with
    ``torchdiffeq`` (either direction) and returns ``prior_logp(z) + l(t_end)``, ``z = x(t_end)``.
    ``velocity_fn(x (batch, ...), t (batch,))`` returns ``dx/dt``; ``divergence="exact"`` costs ``D`` backward
    passes per evaluation, ``"hutchinson"`` one, with one ``probe`` drawn per solve from ``generator``.
    """
    from torchdiffeq import odeint

    if not callable(velocity_fn) or not callable(prior_logp):
        raise TypeError("velocity_fn and prior_logp must be callable")
    if not torch.is_tensor(x) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (batch, ...), got {getattr(x, 'shape', x)!r}")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if t_start == t_end:
        raise ValueError(f"t_start and t_end must differ, got {t_start!r}")
    z = make_probe(x, probe, generator)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    nfe = 0

    def rhs(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal nfe
        nfe += 1
        x_t = state[0].detach()
        with torch.enable_grad():
            x_t.requires_grad_(True)
            tt = t.clamp(lo, hi).to(x_t.dtype).expand(x_t.shape[0])  # adaptive stages may overshoot the end
            v = velocity_fn(x_t, tt)
            div = divergence_exact(v, x_t) if divergence == "exact" else divergence_hutchinson(v, x_t, z)
        return v.detach(), div.detach()

    t_span = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
    l0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xs, ls = odeint(rhs, (x, l0), t_span, rtol=rtol, atol=atol, method=method)
    x1, delta = xs[-1], ls[-1]
    prior = prior_logp(x1)
    return ODELikelihood(prior + delta, prior, delta, x1, nfe)


def pf_ode_likelihood(
    denoiser: Denoiser,
    schedule: Schedule,
    x: torch.Tensor,
    *,
    t_min: float = 1e-5,
    divergence: str = "exact",
    probe: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> ODELikelihood:
    """``log p(x)`` of the diffusion model ``denoiser`` (any prediction) through its probability-flow ODE,
    ``dx/dt = alpha' x0_hat + sigma' eps_hat``, from ``t_min`` to 1 with the schedule's Gaussian prior: a thin
    wrapper of :func:`ode_likelihood`. The density is that of ``x_{t_min}``."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a lib.diffusion.predictions.Denoiser, got {type(denoiser).__name__}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must be in (0, 1), got {t_min!r}")
    return ode_likelihood(lambda x_t, t: denoiser.velocity(x_t, t, schedule), x, schedule.prior_logp,
                          t_start=t_min, t_end=1.0, divergence=divergence, probe=probe, method=method,
                          rtol=rtol, atol=atol, generator=generator)  # fmt: skip


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
