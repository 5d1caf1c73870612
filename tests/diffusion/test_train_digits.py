"""Smoke run of the digits entry point; checkpoints round-trip and detect tampering."""

import pytest
import torch

from lib.checkpoint import load_checkpoint
from lib.diffusion.train_digits import (
    DigitsDiffusionConfig,
    load_digits_diffusion,
    main,
    save_digits,
    train_digits_diffusion,
)


def test_train_save_load(tmp_path):
    cfg = DigitsDiffusionConfig(hidden=16, depth=1, time_dim=16, steps=3, batch_size=8, ema_decay=0.9)
    trained = train_digits_diffusion(cfg, device="cpu")
    path = save_digits(trained, tmp_path / "m.safetensors", command="test")
    loaded = load_digits_diffusion(path)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert torch.allclose(loaded.model(x, t), trained.model(x, t))
    assert loaded.config == cfg and loaded.metadata["provenance"]["command"] == "test"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(path)


def test_cli_smoke(tmp_path):
    out = tmp_path / "cli.safetensors"
    assert (
        main(
            ["--steps", "2", "--hidden", "8", "--depth", "1", "--batch-size", "4", "--threads", "1", "--out", str(out)]
        )
        == 0
    )
    assert out.exists() and out.with_suffix(".json").exists()
    with pytest.raises(ValueError, match="arch"):
        DigitsDiffusionConfig(arch="transformer")


def test_ema_and_unet_arch():
    from lib.diffusion.ema import EMA

    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(2.0)
    before = ema.model.weight.clone()
    ema.update()
    assert torch.allclose(ema.model.weight, 0.5 * before + 0.5 * net.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
    cfg = DigitsDiffusionConfig(arch="unet", base_channels=8, time_dim=16, steps=1, batch_size=2)
    assert train_digits_diffusion(cfg, device="cpu").model(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)
    # --arch unet uses base_channels, not the MLP's hidden=256 (which made a 40M-parameter UNet)
    from lib.diffusion.train_digits import make_model

    n_unet = sum(p.numel() for p in make_model(DigitsDiffusionConfig(arch="unet")).parameters())
    assert n_unet < 2_000_000 and make_model(DigitsDiffusionConfig(arch="unet")).config.base_channels == 32
    with pytest.raises(ValueError, match="base_channels"):
        DigitsDiffusionConfig(base_channels=0)


def test_class_conditional_with_condition_dropout(tmp_path):
    cfg = DigitsDiffusionConfig(hidden=16, depth=1, time_dim=16, steps=3, batch_size=8, num_classes=10, p_uncond=0.2)
    trained = train_digits_diffusion(cfg, device="cpu")
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    out = trained.model(x, t, y=torch.tensor([0, 9, 10]))  # 10 = the null label
    assert out.shape == (3, 1, 8, 8)
    loaded = load_digits_diffusion(save_digits(trained, tmp_path / "c.safetensors", command="test"))
    assert loaded.config == cfg and torch.equal(loaded.model(x, t, y=torch.tensor([1, 2, 3])),
                                                trained.model(x, t, y=torch.tensor([1, 2, 3])))  # fmt: skip
    null = trained.model.null_condition({"y": torch.tensor([4, 5])}, {"y": torch.tensor([True, False])})
    assert null["y"].tolist() == [10, 5]
    with pytest.raises(ValueError, match="p_uncond"):
        DigitsDiffusionConfig(p_uncond=0.1)  # dropout needs a class-conditional model
    with pytest.raises(ValueError, match="p_uncond"):
        DigitsDiffusionConfig(num_classes=10, p_uncond=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        DigitsDiffusionConfig(num_classes=-1)


def test_shipped_unconditional_checkpoint_still_loads():
    shipped = load_digits_diffusion()  # written before num_classes / p_uncond existed: their defaults apply
    assert shipped.config.num_classes == 0 and shipped.config.p_uncond == 0.0
    assert shipped.model.config.num_classes is None
    with pytest.raises(ValueError, match="num_classes=None"):
        shipped.model(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.tensor([1, 2]))
