"""Decoder-only fine-tuning: the encoder (the latent space) is untouched, the decoder moves and fits better, the
checkpoint is refused on another autoencoder, errors."""

import pytest
import torch

from lib.latent import autoencoder as ae_mod
from lib.latent.decoder_ft import DecoderFTConfig, finetune_decoder, main

TINY = ["--batch-size", "4", "--n-train", "16", "--n-eval", "8", "--threads", "1"]


def _autoencoder(tmp_path, seed: int):
    out = tmp_path / f"ae{seed}.safetensors"
    argv = ["--steps", "2", "--channels", "16", "16", "--seed", str(seed), "--out", str(out),
            "--results", str(tmp_path / f"results{seed}.json"), *TINY]  # fmt: skip
    assert ae_mod.main(argv) == 0
    return out


def test_command_keeps_encoder_and_moves_decoder(tmp_path):
    base = _autoencoder(tmp_path, 0)
    dec = tmp_path / "dec.safetensors"
    argv = ["--steps", "3", "--autoencoder", str(base), "--out", str(dec), "--results", str(tmp_path / "r.json"), *TINY]
    assert main(argv) == 0
    before, after = ae_mod.load_autoencoder(base), ae_mod.load_autoencoder(base, decoder=dec)
    s0, s1 = before.model.state_dict(), after.model.state_dict()
    assert s0.keys() == s1.keys()
    for k in s0:
        if k.startswith("decoder.") and k.endswith("weight"):
            assert not torch.equal(s0[k], s1[k]), k
        elif not k.startswith("decoder."):
            assert torch.equal(s0[k], s1[k]), k  # encoder and scale factor bit for bit
    assert after.metadata["decoder"]["file"] == "dec.safetensors"
    with pytest.raises(ValueError, match="another autoencoder"):
        ae_mod.load_autoencoder(_autoencoder(tmp_path, 1), decoder=dec)


def test_finetuning_lowers_the_reconstruction_error():
    from lib.data.shapes import make_shapes

    torch.manual_seed(0)
    model = ae_mod.KLAutoencoder(ae_mod.AutoencoderConfig(channels=(16, 16))).eval()
    x = make_shapes(16, seed=0, split="train").images

    def mse() -> float:
        with torch.no_grad():
            return float((model.decoder(model.posterior(x).mu) - x).pow(2).mean())

    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    start = mse()
    hist = finetune_decoder(model, DecoderFTConfig(steps=40, batch_size=8, lr=3e-3, n_train=16))
    assert mse() < 0.5 * start and hist.last("loss", 1) < hist.metrics["loss"][0]
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in enc.items())


def test_config_errors():
    with pytest.raises(ValueError, match="positive"):
        DecoderFTConfig(steps=0)
    with pytest.raises(ValueError, match="positive"):
        DecoderFTConfig(lr=0.0)
