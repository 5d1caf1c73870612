"""The latent-channels study at tiny sizes: 8- and 16-channel autoencoders through the shipped recipe, an MMDiT on
their latents (shapes follow C), the C-mismatch errors, and the merge's table and fairness checks."""

import copy

import pytest
import torch

from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
from lib.latent.clip import CLIP, CLIPConfig, TrainedCLIP
from lib.latent.tokenizer import Tokenizer
from lib.nn.mmdit import MMDiT, MMDiTConfig
from lib.sd3.channels import (
    AE_STEPS,
    MMDIT,
    autoencoder_path,
    load_channel_autoencoder,
    main,
    merge,
    run_channel,
    train_channel_autoencoder,
)
from lib.sd3.pipeline import SD3Pipeline, SD3TrainConfig, train_mmdit

CAPTIONS = ["a small red circle in the top left", "a large blue square left of a small green cross"]
TINY_AE = {"channels": (16, 16), "batch_size": 4, "n_train": 16}


def _clip():
    torch.manual_seed(0)
    tok = Tokenizer()
    cfg = CLIPConfig(d_model=16, n_layers=1, n_heads=2, embed_dim=8, image_channels=(8, 8))
    return TrainedCLIP(CLIP(len(tok), cfg), tok, cfg)


def _tiny_mmdit():
    return SD3TrainConfig(steps=6, batch_size=8, n_train=24, d_model=16, depth=1, heads=2)


def test_the_recipe_is_the_shipped_autoencoders():
    import json

    from lib.checkpoint import WEIGHTS_DIR

    shipped = json.loads((WEIGHTS_DIR / "shapes_autoencoder.json").read_text())["config"]
    default = AutoencoderConfig()
    assert shipped["steps"] == AE_STEPS and shipped["latent_channels"] == 4
    for k in ("channels", "beta", "batch_size", "lr", "n_train", "seed"):  # train_channel_autoencoder's defaults
        assert list(shipped[k]) == list(getattr(default, k)) if k == "channels" else shipped[k] == getattr(default, k)
    assert autoencoder_path(4) == WEIGHTS_DIR / "shapes_autoencoder.safetensors"
    assert autoencoder_path(16).name == "shapes_autoencoder_c16.safetensors"


@pytest.mark.parametrize("C", [8, 16])
def test_autoencoder_and_mmdit_follow_the_channel_count(tmp_path, C):
    path = train_channel_autoencoder(C, tmp_path / f"ae{C}.safetensors", "test", steps=3, n_eval=4, **TINY_AE)
    ae = load_channel_autoencoder(path, C)
    assert ae.config.latent_channels == C and ae.metadata["config"]["steps"] == 3
    assert 0 < ae.metadata["results"]["psnr_test"] < 100 and ae.metadata["results"]["scale_factor"] > 0
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert ae.model.encode(x).shape == (3, C, 8, 8) and ae.model.decode(ae.model.encode(x)).shape == (3, 3, 32, 32)
    clip = _clip()
    model, _, _ = train_mmdit(_tiny_mmdit(), autoencoder=ae.model, clip=clip)
    assert model.config.in_channels == C
    out = SD3Pipeline(model, ae.model, clip).generate(CAPTIONS, w=1.0, steps=2, generator=torch.Generator())
    assert out.latents.shape == (2, C, 8, 8) and out.images.shape == (2, 3, 32, 32)


def test_channel_mismatch_errors(tmp_path):
    path = train_channel_autoencoder(8, tmp_path / "ae8.safetensors", "test", steps=2, n_eval=2, **TINY_AE)
    with pytest.raises(ValueError, match="8 latent channels, latent_channels=16"):
        load_channel_autoencoder(path, 16)
    ae8 = KLAutoencoder(AutoencoderConfig(latent_channels=8, channels=(16, 16)))
    mm4 = MMDiT(MMDiTConfig(in_channels=4, context_dim=16, pooled_dim=16, d_model=16, depth=1, heads=2))
    with pytest.raises(ValueError, match="denoises 4 latent channels, the autoencoder has 8"):
        SD3Pipeline(mm4, ae8, _clip())
    with pytest.raises(ValueError, match="latent_channels must be a positive int"):
        autoencoder_path(0)
    with pytest.raises(SystemExit):
        main(["merge", "--channels", "4", "4"])
    with pytest.raises(SystemExit):
        main(["sample"])
    with pytest.raises(SystemExit):  # never overwrites the shipped 4-channel autoencoder
        main(["autoencoder", "--channels", "4"])


def test_run_channel_end_to_end_and_merge(tmp_path):
    from lib.latent.judge import default_judge

    clip, judge = _clip(), default_judge()
    parts = {}
    for C in (4, 8):
        ae = train_channel_autoencoder(C, tmp_path / f"ae{C}.safetensors", "test", steps=2, n_eval=4, **TINY_AE)
        parts[C] = run_channel(ae, C, _tiny_mmdit(), tmp_path / f"mm{C}.safetensors", "test", seeds=(0, 1), n=3,
                               eval_steps=2, n_psnr=4, shift_ablation=True, clip=clip, judge=judge)  # fmt: skip
        assert parts[C]["mmdit"]["model"]["in_channels"] == C and parts[C]["autoencoder"]["config"]["steps"] == 2
    table = merge(parts)["table"]
    assert [r["latent_channels"] for r in table] == [4, 8]
    for r in table:
        seeds = parts[r["latent_channels"]]["evaluation"]["judge"]["w"]["2.0"]["seeds"]
        vals = [seeds[s]["one"]["joint"] for s in ("0", "1")]
        assert r["one_joint"]["values"] == vals and r["one_joint"]["mean"] == pytest.approx(sum(vals) / 2)
        assert r["psnr_test"] == parts[r["latent_channels"]]["autoencoder"]["psnr_test"]
    assert parts[4]["evaluation"]["shifted"] is None and "shifted_one_joint" not in table[0]  # alpha = 1: no rerun
    shifted = parts[8]["evaluation"]["shifted"]
    assert shifted["shift"] == pytest.approx(2**0.5) and table[1]["shift"] == shifted["shift"]
    vals = [shifted["judge"]["w"]["2.0"]["seeds"][s]["one"]["joint"] for s in ("0", "1")]
    assert table[1]["shifted_one_joint"]["values"] == vals
    unfair = copy.deepcopy(parts)
    unfair[8]["mmdit"]["config"]["steps"] += 1
    with pytest.raises(ValueError, match="MMDiT config"):
        merge(unfair)
    unfair = copy.deepcopy(parts)
    unfair[8]["evaluation"]["seeds"] = [0]
    with pytest.raises(ValueError, match="evaluation"):
        merge(unfair)
    unfair = copy.deepcopy(parts)
    unfair[8]["evaluation"]["shift_ablation"] = False
    with pytest.raises(ValueError, match="evaluation"):
        merge(unfair)
    with pytest.raises(ValueError, match="latent_channels=8"):
        merge({4: parts[8]})
    with pytest.raises(ValueError, match="empty"):
        merge({})


def test_default_mmdit_is_the_shipped_architecture():
    shipped = SD3TrainConfig()
    for k in ("d_model", "depth", "heads", "patch_size", "qk_norm", "batch_size", "p_uncond", "n_train"):
        assert getattr(MMDIT, k) == getattr(shipped, k)
