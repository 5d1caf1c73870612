"""Fixtures shared by the latent-diffusion and ControlNet tests."""

import pytest
import torch

from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
from lib.latent.pipeline import LatentDenoiser, LDMConfig, TextToImage


@pytest.fixture
def tiny_pipe() -> TextToImage:
    """An untrained text-to-image pipeline small enough for unit tests (seeded: the same weights every time)."""
    torch.manual_seed(0)
    ae = KLAutoencoder(AutoencoderConfig(channels=(16, 16))).eval()
    den = LatentDenoiser(LDMConfig(conditioning="grouped", base_channels=8, time_dim=16, context_dim=16))
    torch.nn.init.normal_(den.unet.out[-1].weight, std=0.1)  # a non-zero output layer: samples depend on the input
    return TextToImage(den, ae)
