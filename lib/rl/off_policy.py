"""Off-policy actor-critic with importance sampling: the bridge from A2C to DDPG.

Chapter: "Actor-critic, from the policy gradient theorem to A2C", section "Off-policy actor-critic".
References: Precup et al. (2000) per-decision importance sampling; Degris, White & Sutton (2012) Off-PAC;
Wang et al. (2017) ACER (truncated importance weights); Silver et al. (2014) deterministic policy gradient.

The data come from a behaviour policy pi_b; the actor pi_theta is the target policy. The importance ratio
of one step re-weights an action drawn from pi_b to one drawn from pi_theta.

Glossary (tabular part: H steps, M episodes; deep part: B samples)
--------
pi_b                    behaviour policy that generated the data (``theta_b`` for the tabular softmax)
rho_t                   pi_theta(a_t|s_t) / pi_b(a_t|s_t), the one-step importance ratio
rho_{0:t}               prod_{k<=t} rho_k, the per-decision weight of step t (Precup et al. 2000)
d^b                     discounted state visitation of pi_b
g_b                     Off-PAC gradient  sum_s d^b(s) sum_a grad pi_theta(a|s) Q^pi(s, a)  (Degris et al. 2012)
"per-decision"          sum_t gamma^t rho_{0:t} grad log pi(a_t|s_t) A^pi(s_t, a_t): unbiased for grad J
"one-step"              sum_t gamma^t rho_t grad log pi(a_t|s_t) A^pi(s_t, a_t): unbiased for g_b, not grad J
"""

from __future__ import annotations

import torch

from lib.rl.tabular import (
    Episodes,
    TabularMDP,
    _check_theta,
    accumulate_scores,
    discounted_visitation,
    exact_values,
    softmax_policy,
)

KINDS = ("per-decision", "one-step")
"""The two importance-sampling estimators of :func:`off_policy_gradient_estimates`."""


def importance_ratios(theta: torch.Tensor, theta_b: torch.Tensor, ep: Episodes) -> torch.Tensor:
    """rho_t = pi_theta(a_t|s_t) / pi_b(a_t|s_t) of every step, (H, M); 1 on padded steps."""
    if not torch.is_tensor(theta_b) or theta_b.shape != theta.shape:
        raise ValueError(f"theta_b must be a tensor of shape {tuple(theta.shape)} like theta")
    s = ep.states.clamp(max=theta.shape[0] - 1)
    pi, pi_b = softmax_policy(theta.detach()), softmax_policy(theta_b.detach())
    rho = pi[s, ep.actions] / pi_b[s, ep.actions]
    return torch.where(ep.alive, rho, torch.ones_like(rho))


def off_policy_gradient_estimates(
    mdp: TabularMDP, theta: torch.Tensor, theta_b: torch.Tensor, ep: Episodes, kind: str
) -> torch.Tensor:
    """One estimate per episode of ``ep`` (sampled from pi_b), (M, S, A), with the exact critic A^pi.

    ``kind="per-decision"`` weights step t by rho_{0:t}: the product of the ratios so far re-weights the
    state distribution at time t from pi_b's to pi_theta's, the last ratio the action; unbiased for
    grad J(theta), with a variance that grows with t. ``kind="one-step"`` keeps only rho_t: the states
    stay distributed as under pi_b, which estimates the Off-PAC gradient :func:`excursion_gradient`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _check_theta(mdp, theta)
    rho = importance_ratios(theta, theta_b, ep)  # (H, M)
    weight = rho.cumprod(0) if kind == "per-decision" else rho
    V, Q = (x.detach() for x in exact_values(mdp, theta))
    s = ep.states.clamp(max=mdp.S - 1)
    A = Q[s, ep.actions] - V[s]  # (H, M), the exact critic isolates the importance sampling
    H = ep.states.shape[0]
    discount = (mdp.gamma ** torch.arange(H, dtype=A.dtype))[:, None]
    return accumulate_scores(mdp, theta, ep, discount * weight * A * ep.alive)


def excursion_gradient(mdp: TabularMDP, theta: torch.Tensor, theta_b: torch.Tensor) -> torch.Tensor:
    """Off-PAC's gradient g_b = d^b(s) pi(a|s) A^pi(s, a) for the tabular softmax, (S, A).

    The policy gradient theorem's formula with pi_b's visitation d^b in place of d^pi (Degris et al.
    2012 drop the term sum_a pi grad Q^pi, whose exact form would need d^b-weighted grad Q). Equal
    to grad J when theta_b = theta.
    """
    _check_theta(mdp, theta)
    _check_theta(mdp, theta_b)
    V, Q = exact_values(mdp, theta)
    return discounted_visitation(mdp, theta_b)[:, None] * softmax_policy(theta) * (Q - V[:, None])


def off_policy_actor_loss(
    dist: torch.distributions.Distribution,
    actions: torch.Tensor,
    log_prob_b: torch.Tensor,
    psi: torch.Tensor,
    rho_clip: float | None = None,
) -> torch.Tensor:
    """Off-PAC actor loss -mean(rho Psi): its gradient is -mean(rho grad log pi(a|s) Psi), rho = pi/pi_b.

    Args:
        dist: pi_theta(.|s) of the batch states (a ``torch.distributions`` object with batch shape (B,)).
        actions: (B,) or (B, act_dim), drawn from the behaviour policy.
        log_prob_b: (B,) log pi_b(a|s) recorded when the actions were drawn.
        psi: (B,) the critic's weight (an advantage estimate), treated as a constant.
        rho_clip: truncate the ratio at this value, rho -> min(rho, c) as a constant times
            grad log pi (ACER's truncation, Wang et al. 2017); None keeps the exact ratio.

    With ``log_prob_b`` equal to pi_theta's own log-probabilities the gradient is the on-policy
    ``-mean(grad log pi Psi)``; without clipping, -mean(rho Psi) is the surrogate objective that PPO
    clips.
    """
    if not isinstance(dist, torch.distributions.Distribution):
        raise TypeError(f"dist must be a torch.distributions.Distribution, got {type(dist).__name__}")
    for name, x in (("log_prob_b", log_prob_b), ("psi", psi)):
        if not torch.is_tensor(x) or x.ndim != 1:
            raise ValueError(f"{name} must be a 1-D tensor (B,), got {getattr(x, 'shape', type(x))}")
    log_prob = dist.log_prob(actions)  # (B,)
    if log_prob.shape != psi.shape or log_prob_b.shape != psi.shape:
        raise ValueError(
            f"actions, log_prob_b and psi must give matching (B,), got {tuple(log_prob.shape)}, "
            f"{tuple(log_prob_b.shape)}, {tuple(psi.shape)}"
        )
    if rho_clip is not None and rho_clip <= 0:
        raise ValueError(f"rho_clip must be > 0 or None, got {rho_clip!r}")
    rho = torch.exp(log_prob - log_prob_b.detach())  # (B,), grad rho = rho grad log pi
    if rho_clip is None:
        return -(rho * psi.detach()).mean()
    return -(rho.detach().clamp(max=rho_clip) * log_prob * psi.detach()).mean()
