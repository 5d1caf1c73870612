"""A tiny tabular MDP with exact objective and gradient, and sampled policy-gradient estimators.

Chapter: "Actor-critic, from the policy gradient theorem to A2C" (the check of the policy gradient
theorem, of baseline unbiasedness and of the variance each critic removes).

The MDP has S non-terminal states, A actions and one absorbing terminal state (index S in ``P``).
The policy is a tabular softmax pi_theta(a|s) = exp(theta[s, a]) / sum_b exp(theta[s, b]).

Glossary
--------
P[s, a, s']     transition probabilities, (S, A, S + 1); column S is the terminal state
R[s, a]         expected reward r(s, a), (S, A) (rewards here are deterministic)
mu0             start distribution, (S,)
P_pi            state-to-state kernel under pi: sum_a pi(a|s) P[s, a, s'], (S, S)
V, Q            V(s) = (I - gamma P_pi)^{-1} r_pi,  Q(s, a) = R[s, a] + gamma sum_s' P[s, a, s'] V(s')
J(theta)        mu0 . V, the objective
d(s)            discounted visitation sum_t gamma^t Pr(s_t = s) = [mu0^T (I - gamma P_pi)^{-1}](s)
grad J          policy gradient theorem: d(s) pi(a|s) (Q(s, a) - V(s)) for the softmax policy
estimators      per episode g = sum_t gamma^t grad log pi(a_t|s_t) Psi_t with Psi_t =
                "reinforce": G_t;  "baseline": G_t - b(s_t);  "advantage": Q(s_t,a_t) - V(s_t);
                "td": r_{t+1} + gamma V(s_{t+1}) - V(s_t)  (the one-step A2C weight, exact critic);
                "gae": GAE(lambda) with a given critic V_hat (S,), computed by ``lib.rl.returns.gae``,
                the same function the deep A2C uses
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("reinforce", "baseline", "advantage", "td")
"""The four estimators compared in the chapter; ``gradient_estimates`` also accepts ``"gae"``."""


@dataclass(frozen=True)
class TabularMDP:
    """A finite episodic MDP; all tensors float64 (see the module glossary)."""

    P: torch.Tensor
    R: torch.Tensor
    mu0: torch.Tensor
    gamma: float

    def __post_init__(self) -> None:
        if self.P.ndim != 3 or self.P.shape[2] != self.P.shape[0] + 1:
            raise ValueError(f"P must have shape (S, A, S + 1), got {tuple(self.P.shape)}")
        S, A = self.P.shape[:2]
        if not torch.allclose(self.P.sum(-1), torch.ones(S, A, dtype=self.P.dtype)) or (self.P < 0).any():
            raise ValueError("P[s, a] must be probability vectors")
        if tuple(self.R.shape) != (S, A):
            raise ValueError(f"R must have shape {(S, A)}, got {tuple(self.R.shape)}")
        if tuple(self.mu0.shape) != (S,) or abs(float(self.mu0.sum()) - 1) > 1e-9:
            raise ValueError(f"mu0 must be a probability vector of shape {(S,)}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma!r}")

    @property
    def S(self) -> int:
        return self.P.shape[0]

    @property
    def A(self) -> int:
        return self.P.shape[1]


def small_mdp() -> TabularMDP:
    """The chapter's 3-state, 2-action MDP (start in state 0, gamma 0.9, episodes of ~4 steps)."""
    P = torch.tensor(
        [
            [[0.5, 0.4, 0.0, 0.1], [0.1, 0.0, 0.8, 0.1]],
            [[0.3, 0.0, 0.2, 0.5], [0.0, 0.6, 0.2, 0.2]],
            [[0.2, 0.3, 0.0, 0.5], [0.0, 0.0, 0.7, 0.3]],
        ],
        dtype=torch.float64,
    )
    R = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-0.5, 1.5]], dtype=torch.float64)
    return TabularMDP(P, R, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), gamma=0.9)


def _check_theta(mdp: TabularMDP, theta: torch.Tensor) -> None:
    if not torch.is_tensor(theta):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if tuple(theta.shape) != (mdp.S, mdp.A):
        raise ValueError(f"theta must have shape {(mdp.S, mdp.A)}, got {tuple(theta.shape)}")


def softmax_policy(theta: torch.Tensor) -> torch.Tensor:
    """pi(a|s) = softmax(theta[s])_a, (S, A)."""
    return torch.softmax(theta, dim=-1)


def exact_values(mdp: TabularMDP, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V (S,) and Q (S, A) of the softmax policy, by solving the Bellman equations (differentiable)."""
    _check_theta(mdp, theta)
    pi = softmax_policy(theta)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P[:, :, : mdp.S])  # (S, S), terminal column dropped
    r_pi = (pi * mdp.R).sum(-1)  # (S,)
    V = torch.linalg.solve(torch.eye(mdp.S, dtype=theta.dtype) - mdp.gamma * P_pi, r_pi)
    Q = mdp.R + mdp.gamma * mdp.P[:, :, : mdp.S] @ V  # (S, A)
    return V, Q


def objective(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """J(theta) = sum_s mu0(s) V(s), a differentiable scalar."""
    return mdp.mu0 @ exact_values(mdp, theta)[0]


def discounted_visitation(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """d(s) = sum_t gamma^t Pr(s_t = s), (S,)."""
    pi = softmax_policy(theta)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P[:, :, : mdp.S])
    return torch.linalg.solve((torch.eye(mdp.S, dtype=theta.dtype) - mdp.gamma * P_pi).T, mdp.mu0)


def policy_gradient(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """grad_theta J by the policy gradient theorem: d(s) pi(a|s) (Q(s, a) - V(s)), (S, A)."""
    V, Q = exact_values(mdp, theta)
    return discounted_visitation(mdp, theta)[:, None] * softmax_policy(theta) * (Q - V[:, None])


@dataclass(frozen=True)
class Episodes:
    """M sampled episodes padded to H steps: states, actions (H, M) int64; rewards (H, M); alive (H, M) bool."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    alive: torch.Tensor


def sample_episodes(mdp: TabularMDP, theta: torch.Tensor, episodes: int, seed: int, horizon: int = 500) -> Episodes:
    """Run ``episodes`` episodes of pi_theta in parallel (cut at ``horizon``, far beyond any real episode)."""
    _check_theta(mdp, theta)
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    g = torch.Generator().manual_seed(seed)
    pi_cdf = softmax_policy(theta.detach()).cumsum(-1)  # (S, A)
    P_cdf = mdp.P.cumsum(-1)  # (S, A, S + 1)

    def draw(cdf: torch.Tensor) -> torch.Tensor:  # inverse-CDF sampling, cdf (M, K) -> (M,)
        u = torch.rand(cdf.shape[0], 1, generator=g, dtype=cdf.dtype)
        return (cdf < u).sum(-1).clamp(max=cdf.shape[-1] - 1)

    s = draw(mdp.mu0.cumsum(0).expand(episodes, -1))  # (M,)
    alive = torch.ones(episodes, dtype=torch.bool)
    out: dict[str, list[torch.Tensor]] = {"states": [], "actions": [], "rewards": [], "alive": []}
    for _ in range(horizon):
        if not alive.any():
            break
        s_safe = s.clamp(max=mdp.S - 1)  # finished episodes sit in the terminal state; masked below
        a = draw(pi_cdf[s_safe])
        s_next = draw(P_cdf[s_safe, a])
        for k, v in zip(out, (s, a, mdp.R[s_safe, a] * alive, alive.clone()), strict=True):
            out[k].append(v)
        alive = alive & (s_next < mdp.S)
        s = torch.where(alive, s_next, torch.full_like(s, mdp.S))
    return Episodes(*(torch.stack(out[k]) for k in out))


def gradient_estimates(
    mdp: TabularMDP,
    theta: torch.Tensor,
    ep: Episodes,
    kind: str,
    baseline: torch.Tensor | None = None,
    lam: float = 1.0,
    values: torch.Tensor | None = None,
    rollout: int | None = None,
) -> torch.Tensor:
    """One gradient estimate per episode, (M, S, A): g = sum_t gamma^t grad log pi(a_t|s_t) Psi_t.

    ``kind`` picks Psi_t (module glossary); ``baseline`` b (S,) is used by "baseline" (default: V);
    ``lam``, the critic ``values`` V_hat (S,) (default: the exact V) and ``rollout`` by "gae".
    ``rollout`` = T cuts every episode into rollouts of T steps, as the deep agents do: GAE's sum stops
    at the end of each rollout and bootstraps from V_hat(s) of the state where the next one starts
    (None: the sum runs to the end of the episode).
    """
    if kind not in (*KINDS, "gae"):
        raise ValueError(f"kind must be one of {(*KINDS, 'gae')}, got {kind!r}")
    if rollout is not None and (not isinstance(rollout, int) or rollout < 1):
        raise ValueError(f"rollout must be a positive int or None, got {rollout!r}")
    H, M = ep.states.shape
    V, Q = (x.detach() for x in exact_values(mdp, theta))
    s = ep.states.clamp(max=mdp.S - 1)  # padded steps point at a real state; their weight is 0
    G = torch.zeros_like(ep.rewards)
    running = torch.zeros(M, dtype=ep.rewards.dtype)
    for t in reversed(range(H)):
        running = ep.rewards[t] + mdp.gamma * running  # G_t = r_{t+1} + gamma G_{t+1}
        G[t] = running
    if kind == "reinforce":
        psi = G
    elif kind == "baseline":
        b = V if baseline is None else baseline
        if tuple(b.shape) != (mdp.S,):
            raise ValueError(f"baseline must have shape {(mdp.S,)}, got {tuple(b.shape)}")
        psi = G - b[s]
    elif kind == "advantage":
        psi = Q[s, ep.actions] - V[s]
    elif kind == "td":  # delta_t = r_{t+1} + gamma V(s_{t+1}) - V(s_t), V(terminal) = 0
        V_next = torch.cat([V[s[1:]] * ep.alive[1:], torch.zeros(1, M, dtype=V.dtype)])
        psi = ep.rewards + mdp.gamma * V_next - V[s]
    else:  # "gae": the deep agents' GAE code on these episodes, with critic V_hat
        from lib.rl.returns import gae

        V_hat = V if values is None else values
        if tuple(V_hat.shape) != (mdp.S,):
            raise ValueError(f"values must have shape {(mdp.S,)}, got {tuple(V_hat.shape)}")
        alive = ep.alive.to(V_hat.dtype)
        alive_next = torch.cat([alive[1:], torch.zeros(1, M, dtype=V_hat.dtype)])
        V_next = torch.cat([V_hat[s[1:]], torch.zeros(1, M, dtype=V_hat.dtype)]) * alive_next
        terminated = ep.alive & (alive_next == 0)  # the last step of each episode
        cut = torch.zeros_like(terminated)
        if rollout is not None:  # the last step of every rollout that does not end the episode
            cut[rollout - 1 :: rollout] = True
            cut &= ep.alive & ~terminated
        psi = gae(ep.rewards, V_hat[s] * alive, V_next, terminated, cut, mdp.gamma, lam)
    w = (mdp.gamma ** torch.arange(H, dtype=psi.dtype))[:, None] * psi * ep.alive  # (H, M)
    return accumulate_scores(mdp, theta, ep, w)


def accumulate_scores(mdp: TabularMDP, theta: torch.Tensor, ep: Episodes, w: torch.Tensor) -> torch.Tensor:
    """Per-episode sums g = sum_t w_t grad_theta log pi(a_t|s_t), (M, S, A), for step weights w (H, M).

    The weights carry everything else (gamma^t, Psi_t, importance ratios, the alive mask).
    """
    H, M = ep.states.shape
    if tuple(w.shape) != (H, M):
        raise ValueError(f"w must have shape {(H, M)} like ep.states, got {tuple(w.shape)}")
    s = ep.states.clamp(max=mdp.S - 1)
    pi = softmax_policy(theta.detach())
    # grad_theta log pi(a|s) = e_s (e_a - pi(.|s))^T
    score = torch.nn.functional.one_hot(ep.actions, mdp.A).to(w.dtype) - pi[s]  # (H, M, A)
    g = torch.zeros(M, mdp.S, mdp.A, dtype=w.dtype)
    g.index_put_(
        (torch.arange(M).expand(H, M).reshape(-1), s.reshape(-1)),
        (w[..., None] * score).reshape(H * M, mdp.A),
        accumulate=True,
    )
    return g


def score_sq_norm(theta: torch.Tensor) -> torch.Tensor:
    """|grad_theta log pi(a|s)|^2 of the tabular softmax, (S, A): sum_b (1[a=b] - pi(b|s))^2."""
    pi = softmax_policy(theta)
    return 1.0 - 2.0 * pi + (pi**2).sum(-1, keepdim=True)


def optimal_baseline(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """b*(s) = E_a[|grad log pi|^2 Q(s, a)] / E_a[|grad log pi|^2], a ~ pi(.|s); (S,).

    The state baseline that minimises the variance of the one-step term grad log pi(a|s) (Q(s, a) - b(s))
    given s (Greensmith et al. 2004; Peters & Schaal 2008): set the derivative in b of
    E_a[|grad log pi|^2 (Q - b)^2] to zero. It weights Q(s, a) by pi(a|s) |grad log pi(a|s)|^2 instead of
    V(s)'s pi(a|s), so rare actions (large score) count more.
    """
    _check_theta(mdp, theta)
    _, Q = exact_values(mdp, theta)
    w = softmax_policy(theta) * score_sq_norm(theta)  # (S, A)
    return (w * Q).sum(-1) / w.sum(-1)


def one_step_variance(mdp: TabularMDP, theta: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Exact tr Cov over a ~ pi(.|s) of grad log pi(a|s) (Q(s, a) - b(s)), per state, (S,).

    The one-step estimator with the exact Q; :func:`optimal_baseline` minimises it in every state.
    """
    _check_theta(mdp, theta)
    if not torch.is_tensor(baseline) or tuple(baseline.shape) != (mdp.S,):
        raise ValueError(f"baseline must be a tensor of shape {(mdp.S,)}")
    pi, (_, Q) = softmax_policy(theta), exact_values(mdp, theta)
    second = (pi * score_sq_norm(theta) * (Q - baseline[:, None]) ** 2).sum(-1)  # E|score (Q - b)|^2
    score = torch.eye(mdp.A, dtype=theta.dtype)[None] - pi[:, None, :]  # (S, a, b): d log pi(a|s) / d theta_sb
    mean = (pi[..., None] * score * Q[..., None]).sum(1)  # (S, A), the baseline term has mean 0
    return second - (mean**2).sum(-1)


def variance_optimal_baseline(mdp: TabularMDP, theta: torch.Tensor, ep: Episodes) -> torch.Tensor:
    """The state baseline b (S,) that minimises the sample tr Cov of the "baseline" estimator on ``ep``.

    The estimator is affine in b: g(b) = g(0) - sum_s b_s h_s with h_s = g(0) - g(e_s), so its total
    variance is a quadratic in b, minimised by least squares on the centred per-episode vectors. Unlike
    :func:`optimal_baseline` it accounts for the correlations between the steps of an episode.
    """
    zero = torch.zeros(mdp.S, dtype=mdp.P.dtype)
    g0 = gradient_estimates(mdp, theta, ep, "baseline", baseline=zero).flatten(1)  # (M, S*A)
    h = torch.stack(
        [g0 - gradient_estimates(mdp, theta, ep, "baseline", baseline=e).flatten(1) for e in torch.eye(mdp.S)], -1
    )  # (M, S*A, S)
    y = (g0 - g0.mean(0)).reshape(-1)  # (M*S*A,)
    X = (h - h.mean(0)).reshape(-1, mdp.S)  # (M*S*A, S)
    return torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
