"""ControlNet training command on a tiny untrained pipeline: the loop runs, logs the IoU curve, leaves the frozen
UNet unchanged, round-trips through a checkpoint; mask IoU is exact on real images; strength 0 reproduces the frozen
pipeline bit for bit. No checkpoint needed."""

import dataclasses
import hashlib
import json

import pytest
import torch

from lib.data.shapes import make_shapes
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
)


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


def test_strength_zero_is_the_frozen_pipeline(tiny_pipe):
    pipe = tiny_pipe
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


def test_training_smoke_curve_frozen_unet_and_checkpoint(tiny_pipe, tmp_path):
    pipe = tiny_pipe
    before = _hash(pipe.denoiser.unet)
    cfg = ControlTrainConfig(steps=4, batch_size=8, n_train=32, eval_every=2, eval_n=4, eval_steps=2, seed=0)
    trained = train_controlnet(cfg, pipe)
    assert [p["step"] for p in trained.curve] == [0, 2, 4]
    from lib.latent.controlnet_study import unseen_layouts

    test = unseen_layouts(cfg.eval_n, seed=1000, n_train=cfg.n_train)  # the log's layouts and noise (seed 12345)
    frozen = generate_controlled(pipe, ControlledUNet(pipe.denoiser.unet, ControlNet.from_unet(pipe.denoiser.unet)),
                                 condition_image(test), test.captions, test.labels, w=cfg.w, steps=cfg.eval_steps,
                                 generator=torch.Generator().manual_seed(12345), strength=0.0)  # fmt: skip
    assert trained.curve[0]["iou"] == iou_summary(frozen, test)["iou"]  # step 0 of the log is the frozen model
    assert _hash(pipe.denoiser.unet) == before
    assert any(z.weight.abs().sum() > 0 for z in trained.controlnet.zero_convs)  # it did learn
    other = train_controlnet(dataclasses.replace(cfg, seed=1, steps=2, eval_every=2), pipe)
    assert other.curve[0] == trained.curve[0]  # the same test layouts and noise for every training seed ...
    w0, w1 = (t.controlnet.condition_encoder.net[0].weight for t in (trained, other))
    assert not torch.equal(w0, w1)  # ... but another initialisation
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


def test_train_command_replay_without_checkpoint(tmp_path):
    from lib.checkpoint import WEIGHTS_DIR
    from lib.latent.controlnet_train import main

    shas = []
    for decoder in ("original", "finetuned"):
        out = tmp_path / f"{decoder}.json"
        args = ["train", "--seed", "98", "--steps", "2", "--n-train", "64", "--batch-size", "4", "--eval-n", "4",
                "--eval-every", "1", "--eval-steps", "1", "--no-checkpoint", "--decoder", decoder,
                "--results", str(out)]  # fmt: skip
        assert main(args) == 0
        res = json.loads(out.read_text())["results"]
        assert res["checkpoint"] is None and [p["step"] for p in res["curve"]] == [0, 1, 2]
        shas.append(res["curve_decoder"]["sha256"])
    assert res["curve_decoder"]["file"] == "shapes_decoder_ft.safetensors" and shas[0] != shas[1]
    assert not (WEIGHTS_DIR / "shapes_controlnet_mask_s98.safetensors").exists()
