"""The SD3 text-to-image pipeline: training command round trip, pooled text embedding, deterministic guided
sampling on SD3's grid, and argument errors."""

import pytest
import torch

from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
from lib.latent.clip import CLIP, CLIPConfig, TrainedCLIP
from lib.latent.tokenizer import Tokenizer
from lib.nn.mmdit import MMDiT, MMDiTConfig
from lib.sd3.pipeline import SD3Pipeline, SD3TrainConfig, load_pipeline, main, save_mmdit, text_condition, train_mmdit

CAPTIONS = ["a small red circle in the top left", "a large blue square left of a small green cross"]


def _parts():
    torch.manual_seed(0)
    tok = Tokenizer()
    cfg = CLIPConfig(d_model=16, n_layers=1, n_heads=2, embed_dim=8, image_channels=(8, 8))
    return KLAutoencoder(AutoencoderConfig(channels=(16, 16))).eval(), TrainedCLIP(CLIP(len(tok), cfg), tok, cfg)


def _tiny():
    return SD3TrainConfig(steps=20, batch_size=8, n_train=32, d_model=16, depth=2, heads=2)


def test_text_condition_pooled_is_the_eos_state():
    _, clip = _parts()
    cond = text_condition(clip, CAPTIONS)
    t = clip.tokenizer.encode(CAPTIONS)
    assert cond["context"].shape == (2, t.ids.shape[1], 16) and torch.equal(cond["context_mask"], t.mask)
    torch.testing.assert_close(cond["pooled"], clip.model.text.pooled(t.ids, t.mask))


def test_train_save_load_generate(tmp_path):
    ae, clip = _parts()
    model, hist, shas = train_mmdit(_tiny(), autoencoder=ae, clip=clip)
    assert all(v == v for v in hist.metrics["loss"]) and shas == {"autoencoder_sha256": None, "clip_sha256": None}
    assert model.config.qk_norm and model.config.pooled_dim == model.config.context_dim == 16
    path = save_mmdit(model, hist, shas, _tiny(), tmp_path / "m.safetensors", "test")
    pipe = load_pipeline(path, autoencoder=ae, clip=clip)
    for k, v in pipe.model.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0)
    a = pipe.generate(CAPTIONS, w=2.0, steps=3, generator=torch.Generator().manual_seed(1))
    b = pipe.generate(CAPTIONS, None, w=2.0, steps=3, generator=torch.Generator().manual_seed(1))
    assert a.images.shape == (2, 3, 32, 32) and a.latents.shape == (2, 4, 8, 8) and a.nfe == 3
    assert torch.equal(a.images, b.images) and a.images.abs().max() <= 1
    c = pipe.generate(CAPTIONS, w=0.0, steps=3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a.latents, c.latents)  # guidance changes the trained model's samples


def test_zero_model_sampler_returns_the_noise_transported_by_zero_velocity():
    ae, clip = _parts()
    model = MMDiT(MMDiTConfig(context_dim=16, pooled_dim=16, d_model=16, depth=1, heads=2))  # zero at init
    pipe = SD3Pipeline(model, ae, clip)
    out = pipe.generate(CAPTIONS, w=1.0, steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.latents, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)))


def test_errors(tmp_path):
    ae, clip = _parts()
    with pytest.raises(ValueError, match="p_uncond"):
        SD3TrainConfig(p_uncond=1.0)
    with pytest.raises(ValueError, match="steps >= 4"):
        SD3TrainConfig(steps=3)
    with pytest.raises(ValueError, match="captions"):
        text_condition(clip, "a red circle")
    with pytest.raises(TypeError, match="text stream"):
        SD3Pipeline(MMDiT(MMDiTConfig(d_model=16, heads=2, depth=1)), ae, clip)
    with pytest.raises(TypeError, match="clip"):
        SD3Pipeline(MMDiT(MMDiTConfig(context_dim=16, d_model=16, heads=2, depth=1)), ae, object())
    pipe = SD3Pipeline(MMDiT(MMDiTConfig(context_dim=16, d_model=16, heads=2, depth=1)), ae, clip)
    with pytest.raises(ValueError, match="w must be"):
        pipe.generate(CAPTIONS, w=-1.0, steps=2)
    with pytest.raises(TypeError, match="w must be"):
        pipe.generate(CAPTIONS, w="2", steps=2)
    with pytest.raises(SystemExit):
        main(["sample"])
    with pytest.raises(SystemExit):  # --no-mmdit with nothing else to evaluate
        main(["evaluate", "--no-mmdit"])
    with pytest.raises(SystemExit):  # a UNet that does not read the clip text tower
        main(["evaluate", "--unet", "grouped", "--no-mmdit", "--n", "1", "--out", str(tmp_path / "x.json")])
