"""Normalizing flows, continuous normalizing flows and flow matching.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

Convention (the book's notation page): a flow maps data to the latent, the direction of the book's time (data at
``t = 0``, noise at ``t = 1``); ``forward(x) -> (z, log |det dz/dx|)``.

Modules: :mod:`.base` (the layer interface, composition, the autograd log-det reference), :mod:`.coupling`
(NICE and RealNVP couplings, masks, conditioners), :mod:`.layers` (ActNorm, invertible 1x1 convolution with LU,
squeeze, multi-scale split), :mod:`.model` (the change of variables as a model; RealNVP and a small Glow),
:mod:`.cnf` (instantaneous change of variables, Hutchinson, adjoint, FFJORD training), :mod:`.likelihood`
(likelihoods of velocity fields through the diffusion core's ODE likelihood), :mod:`.matching` (flow matching,
Gaussian closed forms, Euler sampling, straightness, reflow), :mod:`.toys` (the 2D study, ``python -m
lib.flows.toys``).
"""
