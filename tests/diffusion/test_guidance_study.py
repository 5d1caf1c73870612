"""The guidance sweeps command on tiny checkpoints (schema of its results files), its metrics on real images,
the guidance-interval and autoguidance denoisers, CFG at w = 0 against plain conditional sampling."""

import json

import pytest
import torch

from lib.diffusion import samplers
from lib.diffusion.guidance import guided_denoiser
from lib.diffusion.guidance_study import (
    METRICS,
    StudyConfig,
    autoguided_denoiser,
    interval_denoiser,
    main,
    sample_metrics,
)
from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import VPSDE
from lib.nn.unet import MLPConfig, TimeMLP

SDE = VPSDE()


def _net(seed: int, num_classes=10):
    torch.manual_seed(seed)
    net = TimeMLP(MLPConfig(dim=64, hidden=16, depth=1, time_dim=16, num_classes=num_classes, image_shape=(1, 8, 8)))
    torch.nn.init.normal_(net.out[1].weight, std=0.1)
    return net.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from lib.diffusion.classifier import main as clf_main
    from lib.diffusion.train_digits import main as diff_main

    d = tmp_path_factory.mktemp("ckpt")
    tiny = ["--steps", "2", "--hidden", "16", "--depth", "1", "--time-dim", "16", "--batch-size", "8", "--threads", "1"]
    for name, extra in (("long", ["--num-classes", "10", "--p-uncond", "0.2"]), ("brief", ["--num-classes", "10"]),
                        ("uncond", [])):  # fmt: skip
        diff_main([*tiny, *extra, "--seed", str(len(name)), "--out", str(d / f"{name}.safetensors")])
    clf_main([*tiny, "--out", str(d / "clf.safetensors")])
    return d


def test_command_writes_documented_schema(ckpts, tmp_path):
    paths = [f"--{k}={ckpts / (k + '.safetensors')}" for k in ("long", "brief", "uncond")]
    args = ["all", "--n", "20", "--seeds", "2", "--steps", "2", "--sde-steps", "2", "--ws", "0", "1", "5",
            "--gammas", "0", "3", *paths, f"--classifier={ckpts / 'clf.safetensors'}", "--threads", "1",
            "--out-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    cfg = json.loads((tmp_path / "cfg_sweep.json").read_text())
    assert cfg["provenance"]["command"] == "python -m lib.diffusion.guidance_study " + " ".join(args)
    res = cfg["results"]
    assert res["config"]["ws"] == [0.0, 1.0, 5.0] and len(res["reference"]["fd_floor"]) == 3
    assert len(res["rows"]) == 2 * 2 * 3  # models x samplers x w
    for row in res["rows"]:
        assert set(row["per_seed"]) == set(METRICS) and all(len(v) == 2 for v in row["per_seed"].values())
        assert 0 <= row["mean"]["accuracy"] <= 1 and row["std"]["fd"] >= 0
    assert {"best_w", "fd_w0", "fd_best", "fd_w5", "fd_drop_beyond_spread", "acc_best_ge_0995"} <= set(res["bars"])
    assert res["bars"]["best_w"] in (1.0, 5.0)
    cg = json.loads((tmp_path / "cg_sweep.json").read_text())["results"]
    assert {r["scale"] for r in cg["rows"]} == {0.0, 3.0} and "acc_gamma0" in cg["bars"]
    ext = json.loads((tmp_path / "extensions.json").read_text())["results"]
    assert {r["method"] for r in ext["rows"]} == {"interval", "autoguidance"}
    cost = json.loads((tmp_path / "cost.json").read_text())["results"]
    assert len(cost["seconds_per_sample"]) == 4 and all(v > 0 for v in cost["seconds_per_sample"].values())
    assert cost["ratio"]["conditional"] == 1.0 and len(cost["times"]["cg"]) == 7


def test_metrics_on_real_images():
    from lib.data.digits import load_digits
    from lib.metrics import digits_classifier

    clf, test = digits_classifier().model, load_digits("test")
    m = sample_metrics(test.x, test.y, test.x, clf)
    assert m["accuracy"] > 0.95 and abs(m["fd"]) < 1e-4 and m["saturation"] == 0.0 and m["diversity"] > 0
    assert sample_metrics(test.x * 2, test.y, test.x, clf)["saturation"] > 0.1
    same = test.x[test.y == 0][:1].expand(20, 1, 8, 8)  # one image repeated: no diversity
    assert sample_metrics(same, torch.zeros(20, dtype=torch.long), test.x, clf)["diversity"] == 0.0


def test_cfg_w0_equals_conditional_sampling():
    net, y = _net(0), torch.arange(6) % 10
    x_T = torch.randn(6, 1, 8, 8)
    plain = samplers.ddpm_ancestral(Denoiser(net, "eps", y=y), SDE, x_T, 5, generator=torch.Generator().manual_seed(3))
    guided = samplers.ddpm_ancestral(guided_denoiser(net, w=0.0, y=y), SDE, x_T, 5,
                                     generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.allclose(plain.x, guided.x, atol=1e-5)


def test_interval_and_autoguidance():
    net, weak, y = _net(0), _net(1), torch.arange(4)
    x = torch.randn(4, 1, 8, 8)
    g, p = guided_denoiser(net, w=3.0, y=y), Denoiser(net, "eps", y=y)
    t_in, t_out = torch.full((4,), 0.3), torch.full((4,), 0.99)  # sigma/alpha ~ 1.2 and ~ 148
    d = interval_denoiser(g, p, SDE, 0.28, 5.42)
    assert torch.equal(d(x, t_in), g(x, t_in)) and torch.equal(d(x, t_out), p(x, t_out))
    mixed = torch.tensor([0.3, 0.99, 0.3, 0.99])
    both = torch.where((torch.arange(4) % 2 == 0)[:, None, None, None], g(x, mixed), p(x, mixed))
    assert torch.allclose(d(x, mixed), both)
    t = torch.full((4,), 0.5)
    assert torch.allclose(autoguided_denoiser(net, weak, 0.0, y=y)(x, t), p(x, t))
    assert torch.allclose(autoguided_denoiser(net, net, 4.0, y=y)(x, t), p(x, t), atol=1e-6)
    a = autoguided_denoiser(net, weak, 2.0, y=y)(x, t)
    assert torch.allclose(a, 3 * net(x, t, y) - 2 * weak(x, t, y), atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="n >= 20"):
        StudyConfig(n=10)
    with pytest.raises(ValueError, match="seeds >= 2"):
        StudyConfig(seeds=1)
    with pytest.raises(TypeError, match="real number"):
        StudyConfig(ws=(0.0, "big"))
    with pytest.raises(TypeError, match="w must be a real number"):
        autoguided_denoiser(_net(0), _net(1), "1", y=torch.arange(2))
    with pytest.raises(TypeError, match="lo must be a real number"):
        interval_denoiser(Denoiser(_net(0)), Denoiser(_net(0)), SDE, None, 1.0)
