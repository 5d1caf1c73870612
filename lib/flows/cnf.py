"""Continuous normalizing flows: the instantaneous change of variables, exact and Hutchinson divergences, a
differentiable CNF log-likelihood for maximum-likelihood training (FFJORD), direct backpropagation through the
solver vs the adjoint method, and the linear ODE whose CNF density is known in closed form.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``). Evaluation of a
trained model's likelihood uses the diffusion core's ODE likelihood (the same code as the PF-ODE); this module
holds what training and the chapter's checks need.

References: Chen, Rubanova, Bettencourt and Duvenaud, "Neural ordinary differential equations", NeurIPS 2018
(theorem 1, instantaneous change of variables; the adjoint method, section 2); Grathwohl, Chen, Bettencourt,
Sutskever and Duvenaud, "FFJORD", ICLR 2019 (Hutchinson's estimator, section 3.1); Hutchinson 1990.

Glossary
--------
v(x, t)          the velocity field; ``dx/dt = v``, data at ``t = 0``, latent at ``t = 1``
div v            ``tr(dv/dx)``; ``d log p_t(x_t) / dt = -div v(x_t, t)``
l(t)             ``int_0^t div v ds``; ``log p_0(x_0) = log p_1(x_1) + l(1)``
z (probe)        Rademacher or Gaussian, ``E[z z^T] = I``: ``E[z^T J z] = tr J``
adjoint a(t)     ``dL/dx(t)``, solved backwards: ``da/dt = -a^T dv/dx``; memory independent of solver steps
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lib.diffusion.likelihood import divergence_exact, divergence_hutchinson, make_probe
from lib.flows.model import standard_normal_logp
from lib.utils import saved_tensor_bytes as _saved_tensor_bytes


def hutchinson_variance(J: torch.Tensor, kind: str = "rademacher") -> float:
    """Closed-form variance of ``z^T J z`` for one probe: with ``S = (J + J^T)/2``, ``2 |S|_F^2`` (Gaussian) or
    ``2 (|S|_F^2 - sum_i S_ii^2)`` (Rademacher: no variance from the diagonal)."""
    if J.dim() != 2 or J.shape[0] != J.shape[1]:
        raise ValueError(f"J must be a square matrix, got {tuple(J.shape)}")
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"kind must be 'rademacher' or 'gaussian', got {kind!r}")
    S = 0.5 * (J + J.T)
    fro = float(S.pow(2).sum())
    return 2 * fro if kind == "gaussian" else 2 * (fro - float(torch.diagonal(S).pow(2).sum()))


def linear_ode_logp(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Closed-form CNF density of ``dx/dt = A x`` on ``[0, 1]`` with a standard-normal latent at ``t = 1``:
    ``x_1 = e^A x_0`` and ``log p_0(x_0) = log N(e^A x_0; 0, I) + tr A`` (``det e^A = e^{tr A}``)."""
    if A.dim() != 2 or A.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"A must be ({x.shape[1]}, {x.shape[1]}) for x of shape {tuple(x.shape)}")
    x1 = x @ torch.linalg.matrix_exp(A).T
    return standard_normal_logp(x1) + torch.trace(A)


class CNFDynamics(nn.Module):
    """The augmented right-hand side ``d/dt [x, l] = [v(x, t), div v(x, t)]`` as an ``nn.Module`` (the adjoint
    solver needs one). ``probe``: ``None`` for the exact divergence, else a fixed Hutchinson probe."""

    def __init__(self, velocity: nn.Module) -> None:
        super().__init__()
        self.velocity = velocity
        self.probe: torch.Tensor | None = None
        self.nfe = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        outer = torch.is_grad_enabled()  # False inside the adjoint's forward solve and in evaluation
        x = state[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.velocity(x, t.to(x.dtype).expand(x.shape[0]))
            if self.probe is None:
                div = divergence_exact(v, x, create_graph=outer)
            else:
                div = divergence_hutchinson(v, x, self.probe, create_graph=outer)
        return (v, div) if outer else (v.detach(), div.detach())


@dataclass(frozen=True)
class CNFResult:
    """What :func:`cnf_log_prob` returns."""

    logp: torch.Tensor
    """``log p_0(x)``, ``(batch,)``, differentiable in the velocity's parameters."""
    z: torch.Tensor
    """The latent ``x_1``."""
    nfe: int
    """Function evaluations of the forward solve."""


def cnf_log_prob(
    velocity: nn.Module, x: torch.Tensor, *, steps: int = 8, method: str = "rk4", probe: str | None = None,
    adjoint: bool = False, generator: torch.Generator | None = None, rtol: float = 1e-5, atol: float = 1e-5,
) -> CNFResult:  # fmt: skip
    """Differentiable ``log p_0(x) = log N(x_1; 0, I) + int_0^1 div v dt`` (FFJORD's training objective).

    ``method``: a fixed-grid ``torchdiffeq`` method (``"rk4"``, ``"euler"``, ``"midpoint"``) on ``steps`` steps,
    or an adaptive one (``"dopri5"``, tolerances ``rtol``/``atol``). ``probe``: ``None`` (exact divergence,
    ``D`` backward passes per evaluation) or ``"rademacher"``/``"gaussian"`` (Hutchinson, one probe per solve).
    ``adjoint``: gradients by the adjoint ODE (``odeint_adjoint``) instead of backpropagation through the solver.
    """
    from torchdiffeq import odeint, odeint_adjoint

    if not torch.is_tensor(x) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (batch, ...), got {getattr(x, 'shape', x)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has non-finite entries")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    dyn = CNFDynamics(velocity)
    dyn.probe = None if probe is None else make_probe(x, probe, generator)
    ts = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
    l0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    opts = {"rtol": rtol, "atol": atol} if method in ("dopri5", "dopri8", "bosh3", "adaptive_heun") else {
        "options": {"step_size": 1.0 / steps}}  # fmt: skip
    if adjoint:
        params = tuple(p for p in velocity.parameters() if p.requires_grad)
        xs, ls = odeint_adjoint(dyn, (x, l0), ts, method=method, adjoint_params=params, **opts)
    else:
        xs, ls = odeint(dyn, (x, l0), ts, method=method, **opts)
    z = xs[-1]
    return CNFResult(standard_normal_logp(z) + ls[-1], z, dyn.nfe)


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``fn()`` and count the bytes of the tensors that autograd saved for the backward pass and that are still
    alive when ``fn`` returns: the activation memory held between forward and backward (storages counted once;
    parameters saved by a layer count too). Returns ``(fn's output, bytes)``; :func:`lib.utils.saved_tensor_bytes`
    with ``alive_only``, so that the graphs of an adjoint's inner solves, freed inside ``fn``, do not count."""
    return _saved_tensor_bytes(fn, alive_only=True)


def nll_nats_to_bits_per_dim(nll: float, dims: int) -> float:
    """``nll / (D ln 2)``."""
    return nll / (dims * math.log(2))
