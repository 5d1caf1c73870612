"""Reinforcement learning: policies, value functions, rollouts, returns and actor-critic trainers.

Chapter: "Actor-critic, from the policy gradient theorem to A2C" (``chapters/actor_critic.ipynb``:
``tabular``, ``returns``, ``actor_critic``, ``study``, ``off_policy``, importance-sampled actor-critic);
"DDPG, the deterministic policy gradient" (``chapters/ddpg.ipynb``) reuses the networks, rollout and
evaluation code and adds ``ddpg`` (DDPG and TD3, one loop), ``replay``, ``noise``, ``lqr`` (the exact
check of the deterministic policy gradient) and ``ddpg_study``. ``gymnasium`` is imported only
inside the functions that create environments, so ``import lib.rl`` stays cheap.
"""
