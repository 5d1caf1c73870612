"""Diffusion models as stochastic differential equations: forward SDEs, scores, samplers, likelihoods.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); reused by
the Guidance, Latent Diffusion, ControlNet and Stable Diffusion 3 chapters.

Convention (the book's notation page): time ``t`` runs in [0, 1], data at ``t = 0``, noise at ``t = 1``;
every forward process is linear-Gaussian, ``x_t = alpha(t) x_0 + sigma(t) eps``.

Modules: :mod:`.sde` (VP, VE, sub-VP), :mod:`.score` (exact mixture scores, DSM loss, parameterisation
converters), :mod:`.samplers` (Euler-Maruyama, predictor-corrector, PF-ODE, DDPM, DDIM),
:mod:`.likelihood` (PF-ODE log-likelihood, bits/dim).
"""
