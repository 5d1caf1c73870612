"""Greedy (deterministic) evaluation of a policy, and frames of one episode for a filmstrip.

Chapter: "Actor-critic, from the policy gradient theorem to A2C" (reused by the DDPG chapter).
Evaluation steps are not counted in the training budget (the usual convention).
"""

from __future__ import annotations

import numpy as np
import torch


def _check(policy, env_id: str, episodes: int, seed: int) -> None:
    if not hasattr(policy, "act"):
        raise TypeError(f"policy must have an act(obs, deterministic) method, got {type(policy).__name__}")
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a str, got {type(env_id).__name__}")
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def evaluate_returns(policy, env_id: str, episodes: int = 20, seed: int = 0) -> np.ndarray:
    """Returns (episodes,) of greedy play: one episode in each of ``episodes`` parallel copies,
    seeded ``seed, seed + 1, ...``; actions are argmax (discrete) or the mean (Gaussian), clipped
    to the action box."""
    import gymnasium as gym

    _check(policy, env_id, episodes, seed)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(episodes)])
    try:
        space = envs.single_action_space
        box = (space.low, space.high) if hasattr(space, "low") else None
        obs, _ = envs.reset(seed=seed)
        returns, alive = np.zeros(episodes), np.ones(episodes, dtype=bool)
        while alive.any():
            a = policy.act(torch.as_tensor(obs, dtype=torch.float32), deterministic=True).numpy()
            obs, r, term, trunc, _ = envs.step(a if box is None else np.clip(a, *box))
            returns += r * alive
            alive &= ~(term | trunc)  # an env that finished keeps stepping (autoreset); ignore it
    finally:
        envs.close()
    return returns


def evaluate(policy, env_id: str, episodes: int = 20, seed: int = 0) -> float:
    """Mean return of ``episodes`` episodes of greedy/deterministic play (see :func:`evaluate_returns`)."""
    return float(evaluate_returns(policy, env_id, episodes, seed).mean())


def episode_frames(policy, env_id: str, seed: int = 0, every: int = 1, max_frames: int = 1000) -> list[np.ndarray]:
    """RGB frames (H, W, 3) uint8 of one greedy episode, every ``every``-th step (for a filmstrip).

    Rendering is off-screen: unless ``SDL_VIDEODRIVER`` is already set, it is set to ``"dummy"`` (no
    window, and no SDL complaint about a missing display on a headless machine).
    """
    import os

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gymnasium as gym

    _check(policy, env_id, 1, seed)
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}")
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=seed)
        frames, t, done = [env.render()], 0, False
        while not done and len(frames) < max_frames:
            a = policy.act(torch.as_tensor(obs, dtype=torch.float32)[None], deterministic=True)[0].numpy()
            obs, _, term, trunc, _ = env.step(a)
            t, done = t + 1, term or trunc
            if t % every == 0 or done:
                frames.append(env.render())
    finally:
        env.close()
    return frames
