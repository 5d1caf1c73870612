"""Reusable network building blocks (time-conditioned UNet and MLP for diffusion). Chapter: "Diffusion as SDEs"."""
