"""A discounted linear-quadratic regulator, where J(K), V^mu and Q^mu of a linear policy are closed form.

Chapter: "DDPG, the deterministic policy gradient" (``chapters/ddpg.ipynb``): the exact check of the
deterministic policy gradient theorem (Silver et al. 2014), the counterpart of the tabular check of the
policy gradient theorem in the actor-critic chapter. Closed forms as in Fazel et al. (2018).

Dynamics s_{t+1} = A s_t + B a_t, reward r = -(s' Q s + a' R a), s_0 ~ N(0, Sigma_0), linear deterministic
policy a = mu_K(s) = -K s. With A_K = A - B K:

    P_K         = Q + K' R K + gamma A_K' P_K A_K              (Lyapunov)  so V^mu(s) = -s' P_K s
    Q^mu(s, a)  = -(s' Q s + a' R a) - gamma (A s + B a)' P_K (A s + B a)
    J(K)        = E_{s_0}[V^mu(s_0)] = -tr(P_K Sigma_0)
    Sigma_K     = Sigma_0 + gamma A_K Sigma_K A_K'              = sum_t gamma^t E[s_t s_t'] (discounted visits)
    grad_K J    = E_{s ~ rho^mu}[ grad_K mu_K(s) grad_a Q^mu(s, a)|_{a = -K s} ]   (DPG theorem)
                = -2 [ (R + gamma B' P_K B) K - gamma B' P_K A ] Sigma_K
    K*          = gamma (R + gamma B' P B)^{-1} B' P A,  with the discounted Riccati equation
    P           = Q + gamma A' P A - gamma^2 A' P B (R + gamma B' P B)^{-1} B' P A

Glossary: ``K`` (m, n) gain; ``P`` (n, n); ``Sigma`` (n, n); n = state dimension, m = action dimension.
Everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _f64(x, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t


def solve_lyapunov(F: torch.Tensor, C: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """X with X = C + gamma F' X F (n, n), by the Kronecker (vec) linear system; needs gamma rho(F)^2 < 1."""
    F, C = _f64(F, "F"), _f64(C, "C")
    n = F.shape[0]
    if F.shape != (n, n) or C.shape != (n, n):
        raise ValueError(f"F and C must be square and of one size, got {tuple(F.shape)}, {tuple(C.shape)}")
    # vec(F' X F) = (F' kron F') vec(X) with row-major vec
    M = torch.eye(n * n, dtype=torch.float64) - gamma * torch.kron(F.T, F.T)
    return torch.linalg.solve(M, C.reshape(-1)).reshape(n, n)


@dataclass(frozen=True)
class LQR:
    """The regulator; the defaults are the chapter's 2-state, 1-action system (a damped double integrator)."""

    A: tuple = ((1.0, 0.1), (0.0, 0.95))
    """(n, n) dynamics."""
    B: tuple = ((0.0,), (0.1,))
    """(n, m) input matrix."""
    Q: tuple = ((1.0, 0.0), (0.0, 0.1))
    """(n, n) state cost, symmetric positive semi-definite."""
    R: tuple = ((0.1,),)
    """(m, m) action cost, symmetric positive definite."""
    gamma: float = 0.95
    """Discount factor."""
    Sigma0: tuple = ((1.0, 0.0), (0.0, 1.0))
    """(n, n) covariance of the initial state."""

    def __post_init__(self) -> None:
        A = _f64(self.A, "A")
        n = A.shape[0]
        if A.shape != (n, n):
            raise ValueError(f"A must be square, got {tuple(A.shape)}")
        B = _f64(self.B, "B")
        if B.dim() != 2 or B.shape[0] != n:
            raise ValueError(f"B must have shape ({n}, m), got {tuple(B.shape)}")
        _f64(self.Q, "Q", (n, n)), _f64(self.R, "R", (B.shape[1], B.shape[1])), _f64(self.Sigma0, "Sigma0", (n, n))
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma!r}")

    @property
    def n(self) -> int:
        return len(self.A)

    @property
    def m(self) -> int:
        return len(self.B[0])

    def mats(self) -> tuple[torch.Tensor, ...]:
        """(A, B, Q, R, Sigma0) as float64 tensors."""
        return tuple(
            _f64(x, name) for x, name in zip((self.A, self.B, self.Q, self.R, self.Sigma0), "ABQRS", strict=True)
        )

    def _gain(self, K) -> torch.Tensor:
        K = _f64(K, "K", (self.m, self.n))
        A, B = _f64(self.A, "A"), _f64(self.B, "B")
        rho = torch.linalg.eigvals(A - B @ K).abs().max().item()
        if self.gamma * rho**2 >= 1.0:
            raise ValueError(
                f"K does not stabilise the discounted system (gamma * rho(A - BK)^2 = {self.gamma * rho**2:.3g} >= 1)"
            )
        return K

    def P(self, K) -> torch.Tensor:
        """P_K (n, n): V^mu(s) = -s' P_K s."""
        K = self._gain(K)
        A, B, Q, R, _ = self.mats()
        return solve_lyapunov(A - B @ K, Q + K.T @ R @ K, self.gamma)

    def J(self, K) -> torch.Tensor:
        """J(K) = E[sum_t gamma^t r_t] = -tr(P_K Sigma0), a float64 scalar (differentiable in K)."""
        return -(self.P(K) * _f64(self.Sigma0, "Sigma0")).sum()

    def Q_value(self, K, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Q^mu(s, a) for s (B, n), a (B, m) -> (B,): one step of reward, then V^mu (differentiable in a)."""
        P = self.P(K)
        A, B, Q, R, _ = self.mats()
        s, a = _f64(s, "s"), torch.as_tensor(a).to(torch.float64)
        if s.dim() != 2 or s.shape[1] != self.n or a.shape != (s.shape[0], self.m):
            raise ValueError(f"s must be (B, {self.n}) and a (B, {self.m}), got {tuple(s.shape)}, {tuple(a.shape)}")
        s_next = s @ A.T + a @ B.T
        r = -((s @ Q) * s).sum(-1) - ((a @ R) * a).sum(-1)
        return r - self.gamma * ((s_next @ P) * s_next).sum(-1)

    def J_gaussian(self, K, sigma: float) -> torch.Tensor:
        """J of the stochastic policy a = -K s + sigma xi, xi ~ N(0, I): the zero-variance limit is J(K).

        The noise costs sigma^2 tr R at every step and drives the state with covariance sigma^2 B B', so
        V_sigma(s) = -s' P_K s - c with c = sigma^2 (tr R + gamma tr(B' P_K B)) / (1 - gamma), and
        J_sigma(K) = J(K) - c: grad J_sigma -> grad J as sigma -> 0, with a gap of order sigma^2.
        """
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        _, B, _, R, _ = self.mats()
        P = self.P(K)
        c = sigma**2 * (torch.trace(R) + self.gamma * torch.trace(B.T @ P @ B)) / (1.0 - self.gamma)
        return self.J(K) - c

    def Sigma(self, K) -> torch.Tensor:
        """Sigma_K = sum_t gamma^t E[s_t s_t'] (n, n), the second moment of the discounted visit measure rho^mu."""
        K = self._gain(K)
        A, B, _, _, S0 = self.mats()
        return solve_lyapunov((A - B @ K).T, S0, self.gamma)

    def dpg_gradient(self, K) -> torch.Tensor:
        """grad_K J by the DPG theorem, E_rho[grad_K mu grad_a Q^mu], in closed form (m, n)."""
        K = self._gain(K)
        A, B, _, R, _ = self.mats()
        P = self.P(K)
        return -2.0 * ((R + self.gamma * B.T @ P @ B) @ K - self.gamma * B.T @ P @ A) @ self.Sigma(K)

    def optimal(self, iters: int = 10_000, tol: float = 1e-13) -> tuple[torch.Tensor, torch.Tensor]:
        """(K*, P*) from the discounted Riccati equation, by value iteration until ``tol``."""
        A, B, Q, R, _ = self.mats()
        g = self.gamma
        P = Q.clone()
        for _ in range(iters):
            K = g * torch.linalg.solve(R + g * B.T @ P @ B, B.T @ P @ A)
            P_new = Q + K.T @ R @ K + g * (A - B @ K).T @ P @ (A - B @ K)
            if (P_new - P).abs().max() < tol:
                P = P_new
                break
            P = P_new
        K = g * torch.linalg.solve(R + g * B.T @ P @ B, B.T @ P @ A)
        return K, P

    def sample_visits(self, K, episodes: int, horizon: int, generator: torch.Generator | None = None):
        """States of ``episodes`` rollouts of mu_K, (horizon, episodes, n), and weights gamma^t (horizon,).

        sum_t gamma^t mean_episodes[f(s_t)] estimates E_rho[f(s)] (truncated at ``horizon``).
        """
        K = self._gain(K)
        A, B, _, _, S0 = self.mats()
        L = torch.linalg.cholesky(S0)
        s = torch.randn(episodes, self.n, generator=generator, dtype=torch.float64) @ L.T
        states = []
        for _ in range(horizon):
            states.append(s)
            s = s @ (A - B @ K).T
        return torch.stack(states), self.gamma ** torch.arange(horizon, dtype=torch.float64)


def dpg_gradient_sampled(lqr: LQR, K, episodes: int = 256, horizon: int = 200, generator=None) -> torch.Tensor:
    """The DPG theorem as an algorithm would use it: visited states, autograd through mu_K and Q^mu.

    grad_K J ~ sum_t gamma^t mean_i[ grad_K mu_K(s_ti) grad_a Q^mu(s_ti, a)|_{a = mu_K(s_ti)} ], where
    grad_a Q is taken with the critic frozen (it is evaluated at the current K but not differentiated in K).
    """
    K = lqr._gain(K).clone().requires_grad_(True)
    states, w = lqr.sample_visits(K.detach(), episodes, horizon, generator)
    s = states.reshape(-1, lqr.n)
    a = (-s @ K.T).detach().requires_grad_(True)
    (dq_da,) = torch.autograd.grad(lqr.Q_value(K.detach(), s, a).sum(), a)  # grad_a Q^mu at a = mu(s)
    weights = w.repeat_interleave(episodes) / episodes  # (horizon * episodes,)
    mu = -s @ K.T
    (grad,) = torch.autograd.grad((weights[:, None] * mu * dq_da).sum(), K)  # chain rule: grad_K mu . dQ/da
    return grad


def train_linear_policy(lqr: LQR, K0, lr: float = 0.05, steps: int = 2_000) -> tuple[torch.Tensor, list[float]]:
    """Gradient ascent on J with the DPG gradient: K <- K + lr grad_K J. Returns the final K and J per step."""
    if not lr > 0 or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"lr must be > 0 and steps a positive int, got {lr!r}, {steps!r}")
    K = lqr._gain(K0).clone()
    history = []
    for _ in range(steps):
        history.append(float(lqr.J(K)))
        K = K + lr * lqr.dpg_gradient(K)
    return K, history
