"""Latent diffusion (Stable Diffusion) end to end on the procedural shapes data (:mod:`lib.data.shapes`).

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``); the ControlNet and SD3 chapters reuse it.
Modules: :mod:`.tokenizer`, :mod:`.autoencoder` (KL autoencoder), :mod:`.decoder_ft` (decoder-only fine-tuning),
:mod:`.clip` (CLIP-style text encoder), :mod:`.judge` (the independent attribute judge), :mod:`.conditioning` (CLIP
and object-grouped conditioners),
:mod:`.pipeline` (text-to-image: UNet in latent space, CFG, DDIM, img2img), :mod:`.train`, :mod:`.study`,
:mod:`.controlnet`, :mod:`.controlnet_train` and :mod:`.controlnet_study`.
"""
