"""Diffusion and flow models on one core: schedules, predictions, samplers, losses, guidance, likelihoods.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); reused by the
Flows, Guidance, Latent Diffusion, ControlNet and Stable Diffusion 3 chapters.

Convention (the book's notation page): time ``t`` runs in [0, 1], data at ``t = 0``, noise at ``t = 1``;
every forward process is linear-Gaussian, ``x_t = alpha(t) x_0 + sigma(t) eps``.

Modules: :mod:`.schedules` (VP, sub-VP, VE, cosine, rectified flow, discrete tables; the derived SDE),
:mod:`.predictions` (eps / x0 / v / velocity / score and the ``Denoiser``), :mod:`.timesteps` (sampling grids,
training-time samplers), :mod:`.score` (exact Gaussian-mixture scores and denoisers), :mod:`.loss` (the
diffusion loss, condition dropout), :mod:`.guidance` (classifier-free guidance), :mod:`.samplers`,
:mod:`.likelihood` (ODE likelihoods, bits/dim), :mod:`.inpaint` (imputation), :mod:`.ema`, :mod:`.train_digits`
(digits models, unconditional and class-conditional), :mod:`.classifier` (noisy classifier, classifier guidance),
:mod:`.tilted` (exact guidance on labelled mixtures), :mod:`.guidance_study` (the Guidance chapter's sweeps),
:mod:`.discrete` (Stable Diffusion's scheduler conventions), :mod:`.rectified` (SD3's formulations as weighted
eps-losses, resolution shift).
"""
