"""The latent UNet's training command runs (grouped and clip), saves a verified checkpoint and loads it back."""

import pytest
import torch

from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
from lib.latent.clip import CLIP, CLIPConfig, TrainedCLIP
from lib.latent.tokenizer import Tokenizer
from lib.latent.train import LDMTrainConfig, checkpoint_path, load_pipeline, save_ldm, train_ldm


def _parts():
    torch.manual_seed(0)
    tok = Tokenizer()
    cfg = CLIPConfig(d_model=16, n_layers=1, n_heads=2, embed_dim=8, image_channels=(8, 8))
    return KLAutoencoder(AutoencoderConfig(channels=(16, 16))).eval(), TrainedCLIP(CLIP(len(tok), cfg), tok, cfg)


@pytest.mark.parametrize("conditioning", ["grouped", "grouped_full", "clip"])
def test_train_save_load_round_trip(conditioning, tmp_path):
    ae, clip = _parts()
    cfg = LDMTrainConfig(conditioning=conditioning, steps=4, batch_size=8, n_train=32, base_channels=8, context_dim=16)
    trained = train_ldm(cfg, autoencoder=ae, clip=clip)
    assert len(trained.history.metrics["loss"]) >= 1 and all(v == v for v in trained.history.metrics["loss"])
    before = {k: v.clone() for k, v in trained.denoiser.state_dict().items()}
    path = save_ldm(trained, tmp_path / "ldm.safetensors", "test")
    pipe = load_pipeline(path, autoencoder=ae, clip=clip)
    assert pipe.config.conditioning == conditioning and pipe.metadata["config"]["steps"] == 4
    for k, v in pipe.denoiser.state_dict().items():
        assert torch.equal(v, before[k])
    assert (trained.denoiser.grouped is not None) == conditioning.startswith("grouped")
    labels = torch.tensor([[[0, 0, 0, 0, 0], [-1] * 5, [-1] * 5]])
    out = pipe.generate(
        ["a small red circle in the top left"], labels, steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert out.images.shape == (1, 3, 32, 32)


def test_errors():
    with pytest.raises(ValueError, match="conditioning"):
        LDMTrainConfig(conditioning="bag")
    with pytest.raises(ValueError, match="p_uncond"):
        LDMTrainConfig(p_uncond=1.0)
    with pytest.raises(ValueError, match="positive"):
        LDMTrainConfig(steps=0)
    with pytest.raises(ValueError, match="conditioning"):
        checkpoint_path("words")
    assert checkpoint_path("clip_hardneg").name == "shapes_ldm_clip_hardneg.safetensors"
