"""Reinforcement learning: policies, value functions, rollouts, returns and actor-critic trainers.

Chapter: "Actor-critic, from the policy gradient theorem to A2C" (``chapters/actor_critic.ipynb``);
the DDPG chapter reuses the networks, rollout and evaluation code. ``gymnasium`` is imported only
inside the functions that create environments, so ``import lib.rl`` stays cheap.
"""
