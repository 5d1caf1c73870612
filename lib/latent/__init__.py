"""Latent diffusion (Stable Diffusion) end to end: tokenizer, KL autoencoder, CLIP-style text encoder, judge."""
