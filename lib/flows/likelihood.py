"""Exact log-likelihood of a velocity-field model (a CNF, a flow-matching model) through the diffusion core's
ODE likelihood: the same code that gives the diffusion chapter's probability-flow ODE its likelihoods.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).
"""

from __future__ import annotations

import copy

import torch

from lib.diffusion.likelihood import ODELikelihood, ode_likelihood
from lib.flows.model import standard_normal_logp


@torch.no_grad()
def velocity_log_prob(
    velocity: torch.nn.Module, x: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact",
    generator: torch.Generator | None = None, float64: bool = True,
) -> ODELikelihood:  # fmt: skip
    """``log p_0(x)`` of ``dx/dt = velocity(x, t)`` (data at ``t = 0``) with a standard-normal latent at ``t = 1``:
    ``lib.diffusion.likelihood.ode_likelihood`` with dopri5, on a float64 copy of the model unless ``float64`` is
    False (then ``x``'s dtype)."""
    if not isinstance(velocity, torch.nn.Module):
        raise TypeError(f"velocity must be an nn.Module, got {type(velocity).__name__}")
    model = copy.deepcopy(velocity).eval()
    if float64:
        model, x = model.double(), x.double()
    return ode_likelihood(model, x, standard_normal_logp, divergence=divergence, rtol=rtol, atol=atol,
                          generator=generator)  # fmt: skip
