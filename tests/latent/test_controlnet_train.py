"""ControlNet training command on a tiny untrained pipeline: the loop runs, logs the IoU curve, leaves the frozen
UNet unchanged, round-trips through a checkpoint; mask IoU is exact on real images; strength 0 reproduces the frozen
pipeline bit for bit. No checkpoint needed."""

import hashlib

import pytest
import torch

from lib.data.shapes import make_shapes
from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
from lib.latent.controlnet import ControlledUNet, ControlNet, condition_image
from lib.latent.controlnet_train import (
    ControlTrainConfig,
    generate_controlled,
    iou_summary,
    load_controlnet,
    mask_iou,
    save_controlnet,
    snap_step,
    train_controlnet,
    unseen_layouts,
)
from lib.latent.pipeline import LatentDenoiser, LDMConfig, TextToImage


def _pipe():
    torch.manual_seed(0)
    ae = KLAutoencoder(AutoencoderConfig(channels=(16, 16))).eval()
    den = LatentDenoiser(LDMConfig(conditioning="grouped", base_channels=8, time_dim=16, context_dim=16))
    torch.nn.init.normal_(den.unet.out[-1].weight, std=0.1)
    return TextToImage(den, ae)


def _hash(module):
    return hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(module.state_dict().items()))).hexdigest()


def test_mask_iou_is_exact_on_real_images_and_drops_when_shifted():
    data = make_shapes(20, seed=3, split="test")
    s = iou_summary(data.images, data)
    assert s["iou"] == s["iou_large"] == s["iou_small"] == 1.0 and s["n_objects"] == int(data.n_objects.sum())
    iou, size = mask_iou(data.images, torch.roll(data.masks, 1, dims=3), data.labels)  # one pixel to the right
    assert bool((iou < 1).all()) and iou[size == 0].mean() < iou[size == 1].mean()  # small objects lose more
    blank = torch.full_like(data.images, -0.8)
    assert iou_summary(blank, data)["iou"] == 0.0
    with pytest.raises(ValueError, match="masks"):
        mask_iou(data.images, data.masks[:3], data.labels)


def test_strength_zero_is_the_frozen_pipeline():
    pipe = _pipe()
    net = ControlNet.from_unet(pipe.denoiser.unet)
    torch.nn.init.normal_(net.mid_zero.weight, std=0.5)  # a "trained" ControlNet
    model = ControlledUNet(pipe.denoiser.unet, net)
    data = make_shapes(3, seed=0, split="test")
    cond = condition_image(data)
    ref = pipe.generate(labels=data.labels, w=2.0, steps=3, generator=torch.Generator().manual_seed(1)).images
    out = generate_controlled(pipe, model, cond, labels=data.labels, w=2.0, steps=3,
                              generator=torch.Generator().manual_seed(1), strength=0.0)  # fmt: skip
    assert torch.equal(out, ref)
    on = generate_controlled(pipe, model, cond, labels=data.labels, w=2.0, steps=3,
                             generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert not torch.equal(on, ref)
    with pytest.raises(ValueError, match="condition"):
        generate_controlled(pipe, model, cond[:2], labels=data.labels, steps=3)
    with pytest.raises(ValueError, match="w must"):
        generate_controlled(pipe, model, cond, labels=data.labels, w=-1.0, steps=3)


def test_training_smoke_curve_frozen_unet_and_checkpoint(tmp_path):
    pipe = _pipe()
    before = _hash(pipe.denoiser.unet)
    cfg = ControlTrainConfig(steps=4, batch_size=8, n_train=32, eval_every=2, eval_n=4, eval_steps=2, seed=0)
    trained = train_controlnet(cfg, pipe)
    assert [p["step"] for p in trained.curve] == [0, 2, 4]
    assert all(0 <= p["iou"] <= 1 for p in trained.curve)
    assert _hash(pipe.denoiser.unet) == before
    assert any(z.weight.abs().sum() > 0 for z in trained.controlnet.zero_convs)  # it did learn
    ldm = tmp_path / "ldm.bin"
    ldm.write_bytes(b"frozen unet")
    path = save_controlnet(trained, tmp_path / "cn.safetensors", "test", ldm)
    net, meta = load_controlnet(path)
    assert meta["curve"] == trained.curve and meta["config"]["p_empty"] == 0.5
    for k, v in trained.controlnet.state_dict().items():
        assert torch.equal(net.state_dict()[k], v)
    pipe.metadata = {"sha256": "0" * 64}
    with pytest.raises(ValueError, match="retrain"):
        load_controlnet(path, pipe)
    assert snap_step([{"step": 0, "iou": 0.1}, {"step": 5, "iou": 0.2}, {"step": 10, "iou": 0.8},
                      {"step": 15, "iou": 0.9}]) == 10  # fmt: skip


def test_config_errors():
    with pytest.raises(ValueError, match="kind"):
        ControlTrainConfig(kind="depth")
    with pytest.raises(ValueError, match="p_empty"):
        ControlTrainConfig(p_empty=1.5)
    with pytest.raises(ValueError, match="steps"):
        ControlTrainConfig(steps=0)
    assert ControlTrainConfig().name == "shapes_controlnet_mask"
    assert ControlTrainConfig(p_empty=0.0, seed=2).name == "shapes_controlnet_mask_noempty_s2"


def test_unseen_layouts_are_not_in_the_training_set():
    b = unseen_layouts(10, seed=5, n_train=500)
    seen = {bytes(m.numpy()) for m in condition_image(make_shapes(500, seed=0, split="train")).bool()}
    assert len(b) == 10 and not any(bytes(m.numpy()) in seen for m in condition_image(b).bool())
    assert bool((b.n_objects >= 1).all())
