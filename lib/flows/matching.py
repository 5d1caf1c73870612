"""Flow matching on the conditional optimal-transport (straight-line) path, its closed form for Gaussian data,
few-step Euler sampling, path straightness, and reflow (rectified flow).

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

References: Lipman, Chen, Ben-Hamu, Nickel and Le, "Flow matching for generative modeling", ICLR 2023
(CFM objective, theorem 2; OT path, eq. 20-23); Liu, Gong and Liu, "Flow straight and fast: learning to
generate and transfer data with rectified flow", ICLR 2023 (reflow, straightness, eq. 6); Albergo and
Vanden-Eijnden, "Building normalizing flows with stochastic interpolants", ICLR 2023.

Time convention (the book's): data at ``t = 0``, noise at ``t = 1``. Lipman et al. and Liu et al. both put the
noise at time 0 and the data at time 1; with their time ``s = 1 - t`` their velocity is ``-v(x, 1 - s)``.

Glossary
--------
x_0, eps     a data point and a standard-normal noise draw (independent, or coupled after reflow)
x_t          ``(1 - t) x_0 + t eps``, the straight-line (conditional OT) path
u_t          ``eps - x_0 = d x_t / dt``, the conditional velocity
v(x, t)      the marginal velocity ``E[eps - x_0 | x_t = x]``, what the model ``v_theta`` learns
CFM          ``E_{t, x_0, eps} |v_theta(x_t, t) - (eps - x_0)|^2`` (tractable)
FM           ``E_{t, x_t} |v_theta(x_t, t) - v(x_t, t)|^2`` (needs ``v``); ``CFM = FM + C``
straightness ``E int_0^1 |(eps - x_0) - v(x_t, t)|^2 dt`` along the model's own paths (0 = straight)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib.diffusion.schedules import RectifiedFlow
from lib.diffusion.timesteps import time_grid

RF = RectifiedFlow()
"""The straight-line path as the diffusion core's schedule: ``alpha(t) = 1 - t``, ``sigma(t) = t``."""

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v(x, t)``: ``x (batch, ...)``, ``t (batch,)`` -> ``(batch, ...)``."""


def _check_pair(x0: torch.Tensor, eps: torch.Tensor) -> None:
    for name, v in (("x0", x0), ("eps", eps)):
        if not torch.is_tensor(v) or not v.is_floating_point() or v.dim() < 2:
            raise ValueError(f"{name} must be a floating tensor of shape (batch, ...), got {getattr(v, 'shape', v)}")
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def ot_path(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, u_t) = ((1 - t) x_0 + t eps, eps - x_0)`` for ``t (batch,)``."""
    _check_pair(x0, eps)
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    a, s, da, ds = (_bcast(f(t), x0) for f in (RF.alpha, RF.sigma, RF.d_alpha, RF.d_sigma))
    return a * x0 + s * eps, da * x0 + ds * eps  # (1 - t) x0 + t eps, eps - x0


def cfm_loss(
    v_theta: VelocityFn, x0: torch.Tensor, eps: torch.Tensor | None = None, t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """The conditional flow-matching loss ``mean |v_theta(x_t, t) - (eps - x_0)|^2`` (summed over dimensions,
    averaged over the batch); ``eps ~ N(0, I)`` and ``t ~ U(0, 1)`` unless given (pass ``eps`` paired with
    ``x0`` for reflow)."""
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    x_t, u_t = ot_path(x0, eps, t)
    return (v_theta(x_t, t) - u_t).pow(2).flatten(1).sum(1).mean()


# --- Gaussian data: everything in closed form ----------------------------------------------------------


def _gaussian_terms(t: torch.Tensor, mu: torch.Tensor, Sigma: torch.Tensor):
    d = mu.numel()
    tb = t.reshape(-1, 1, 1)
    eye = torch.eye(d, dtype=Sigma.dtype, device=Sigma.device)
    S = (1 - tb) ** 2 * Sigma + tb**2 * eye  # Cov(x_t), (n, d, d)
    C = tb * eye - (1 - tb) * Sigma  # Cov(u, x_t) with u = eps - x_0
    return S, C, eye


def gaussian_marginal_velocity(x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, Sigma: torch.Tensor) -> torch.Tensor:
    """``v(x, t) = E[eps - x_0 | x_t = x]`` for data ``N(mu, Sigma)``: with ``S = (1-t)^2 Sigma + t^2 I`` and
    ``C = t I - (1-t) Sigma``, ``v = -mu + C S^{-1} (x - (1-t) mu)``. ``x (n, d)``, ``t (n,)``."""
    if x.dim() != 2 or x.shape[1] != mu.numel() or Sigma.shape != (mu.numel(), mu.numel()):
        raise ValueError("need x (n, d), mu (d,) and Sigma (d, d)")
    S, C, _ = _gaussian_terms(t, mu, Sigma)
    r = x - (1 - t[:, None]) * mu  # (n, d)
    return -mu + (C @ torch.linalg.solve(S, r[..., None]))[..., 0]


def gaussian_cfm_gap(t: torch.Tensor, Sigma: torch.Tensor) -> torch.Tensor:
    """``E |u_t - v(x_t, t)|^2 = tr(Cov(u | x_t)) = tr(I + Sigma - C S^{-1} C^T)`` at each ``t (n,)``: the CFM
    loss of the exact marginal velocity (the constant ``C`` in ``CFM = FM + C``, before averaging over t)."""
    mu = torch.zeros(Sigma.shape[0], dtype=Sigma.dtype, device=Sigma.device)
    S, C, eye = _gaussian_terms(t, mu, Sigma)
    cond = eye + Sigma - C @ torch.linalg.solve(S, C.transpose(1, 2))
    return torch.diagonal(cond, dim1=1, dim2=2).sum(1)


def gaussian_fm_loss(
    v_theta: VelocityFn, mu: torch.Tensor, Sigma: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo ``(CFM, FM)`` on the *same* draws ``(t, x_0, eps)`` for data ``N(mu, Sigma)``: their gradients
    in ``theta`` agree (Lipman et al., theorem 2), their difference estimates ``E_t gaussian_cfm_gap(t)``."""
    d = mu.numel()
    L = torch.linalg.cholesky(Sigma)
    x0 = mu + torch.randn(n, d, generator=generator, dtype=mu.dtype) @ L.T
    eps = torch.randn(n, d, generator=generator, dtype=mu.dtype)
    t = torch.rand(n, generator=generator, dtype=mu.dtype)
    x_t, u_t = ot_path(x0, eps, t)
    v = v_theta(x_t, t)
    cfm = (v - u_t).pow(2).sum(1).mean()
    fm = (v - gaussian_marginal_velocity(x_t, t, mu, Sigma)).pow(2).sum(1).mean()
    return cfm, fm


# --- sampling, straightness, reflow ------------------------------------------------------------------------


@torch.no_grad()
def euler_sample(v_theta: VelocityFn, eps: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate ``dx/dt = v_theta(x, t)`` from ``x_1 = eps`` to ``t = 0`` with ``steps`` Euler steps."""
    if not torch.is_tensor(eps) or eps.dim() < 2:
        raise ValueError("eps must be a tensor of shape (batch, ...)")
    ts = time_grid(steps, "uniform", t_min=0.0, dtype=eps.dtype, device=eps.device)
    x = eps
    for i in range(steps):
        t = ts[i].expand(x.shape[0])
        x = x + (ts[i + 1] - ts[i]) * v_theta(x, t)
    return x


@dataclass(frozen=True)
class ODESample:
    """What :func:`ode_sample` returns."""

    x0: torch.Tensor
    """The end point at ``t = 0`` (a sample)."""
    nfe: int
    """Velocity evaluations of the adaptive solve."""


@torch.no_grad()
def ode_sample(
    v_theta: VelocityFn, eps: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5"
) -> ODESample:
    """Integrate from ``t = 1`` to ``t = 0`` with an adaptive ``torchdiffeq`` solver (the reference sampler)."""
    from torchdiffeq import odeint

    if not torch.is_tensor(eps) or eps.dim() < 2:
        raise ValueError("eps must be a tensor of shape (batch, ...)")
    nfe = 0

    def rhs(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return v_theta(x, t.clamp(0.0, 1.0).expand(x.shape[0]))

    ts = torch.tensor([1.0, 0.0], dtype=eps.dtype, device=eps.device)
    return ODESample(odeint(rhs, eps, ts, rtol=rtol, atol=atol, method=method)[-1], nfe)


@torch.no_grad()
def straightness(v_theta: VelocityFn, eps: torch.Tensor, steps: int = 100) -> float:
    """Liu et al.'s straightness ``E int_0^1 |(x_1 - x_0) - v(x_t, t)|^2 dt`` of the model's Euler paths from
    ``eps`` (``steps`` steps; the end point ``x_0`` is the path's own): 0 iff every path is a straight line
    travelled at constant speed."""
    ts = time_grid(steps, "uniform", t_min=0.0, dtype=eps.dtype, device=eps.device)
    vs = []
    x = eps
    for i in range(steps):
        v = v_theta(x, ts[i].expand(x.shape[0]))
        vs.append(v)
        x = x + (ts[i + 1] - ts[i]) * v
    chord = eps - x  # x_1 - x_0
    dev = torch.stack([(chord - v).pow(2).flatten(1).sum(1) for v in vs])  # (steps, batch)
    return float(dev.mean())


@torch.no_grad()
def reflow_pairs(
    v_theta: VelocityFn, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
    rtol: float = 1e-5, atol: float = 1e-5, batch: int = 4096, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Reflow's training set: ``n`` noise draws ``eps`` and the teacher's ODE end points ``x_0 = ODE(eps)``, a
    coupling ``(x_0, eps)`` whose straight lines no longer cross (much). Returns ``(x0, eps)``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    eps = torch.randn(n, *shape, generator=generator).to(device)
    x0 = torch.cat([ode_sample(v_theta, e, rtol, atol).x0 for e in eps.split(batch)])
    return x0, eps


def reflow(teacher: torch.nn.Module, pairs: int, shape: tuple[int, ...], steps: int, batch: int, lr: float,
           generator: torch.Generator, rtol: float = 1e-5, atol: float = 1e-5,
           desc: str = "reflow") -> tuple[torch.nn.Module, dict]:  # fmt: skip
    """One reflow (Liu et al. 2023): :func:`reflow_pairs` of ``teacher`` (``pairs`` draws of ``shape``), then flow
    matching on those fixed pairs for ``steps`` Adam steps (cosine decay from ``lr``), starting from the teacher's
    weights; ``generator`` drives the pairs, the batches and the loss's times. Returns ``(student, info)``."""
    import copy
    import time

    from lib.train import train

    teacher.eval()
    t0 = time.perf_counter()
    x0, eps = reflow_pairs(teacher, pairs, shape, generator=generator, rtol=rtol, atol=atol)
    pair_seconds = time.perf_counter() - t0
    student = copy.deepcopy(teacher)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, pairs, (batch,), generator=generator)
        return x0[idx], eps[idx]

    hist = train(student, lambda m, b: cfm_loss(m, b[0], b[1], generator=generator), next_batch, steps,
                 optimizer=opt, scheduler=sched, log_every=max(1, steps // 50), desc=desc)  # fmt: skip
    student.eval()
    return student, {"pair_seconds": pair_seconds, "train_seconds": hist.seconds, "final_loss": hist.last("loss", 5)}
