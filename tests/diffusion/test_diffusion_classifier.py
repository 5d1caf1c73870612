"""Noisy classifier and classifier guidance: Bayes' rule on an exact mixture, gamma = 0 is the unguided model,
the guidance term against a hand-computed softmax gradient, the training command, bad inputs."""

import pytest
import torch
from torch import nn

from lib.diffusion import samplers
from lib.diffusion.classifier import (
    NoisyClassifier,
    NoisyClassifierConfig,
    check_labels,
    check_scale,
    classifier_guided_denoiser,
    load_noisy_classifier,
    main,
)
from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import VPSDE
from lib.diffusion.score import gmm_denoiser, gmm_logp
from lib.nn.unet import MLPConfig, TimeMLP

SDE = VPSDE()


class _Linear(nn.Module):
    """logits = W x + b, independent of t: grad_x log softmax_y = W_y - sum_k p_k W_k."""

    def __init__(self, k: int = 10, d: int = 64) -> None:
        super().__init__()
        self.lin = nn.Linear(d, k)

    def forward(self, x, t):
        return self.lin(x.reshape(x.shape[0], -1))


def _uncond():
    torch.manual_seed(0)
    net = TimeMLP(MLPConfig(dim=64, hidden=16, depth=1, time_dim=16, image_shape=(1, 8, 8)))
    nn.init.normal_(net.out[1].weight, std=0.1)  # not the zero read-out, so outputs differ between inputs
    return Denoiser(net, "eps")


def test_gamma_zero_is_unconditional_and_guidance_term_matches_softmax_gradient():
    den, clf = _uncond(), _Linear()
    x, t = torch.randn(6, 1, 8, 8), torch.full((6,), 0.4)
    y = torch.tensor([0, 1, 2, 3, 9, 5])
    g0 = classifier_guided_denoiser(den, clf, y, 0.0, SDE, num_classes=10)
    assert torch.equal(g0(x, t), den(x, t))
    x_T = torch.randn(6, 1, 8, 8)
    assert torch.equal(samplers.ddim(g0, SDE, x_T, 4).x, samplers.ddim(den, SDE, x_T, 4).x)
    with torch.no_grad():
        p = torch.softmax(clf(x, t), 1)  # (6, 10)
        W = clf.lin.weight  # (10, 64)
        grad = (W[y] - p @ W).reshape(x.shape)
    gamma = 2.5
    expected = den(x, t) - gamma * SDE.sigma(t)[:, None, None, None] * grad
    got = classifier_guided_denoiser(den, clf, y, gamma, SDE, num_classes=10)(x, t)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, den(x, t), atol=1e-3)  # guidance does something
    # a single label broadcasts over the batch
    one = classifier_guided_denoiser(den, clf, 3, gamma, SDE, num_classes=10)(x, t)
    assert torch.allclose(one, classifier_guided_denoiser(den, clf, torch.full((6,), 3), gamma, SDE, 10)(x, t))


def test_bayes_rule_on_exact_mixture():
    """Unconditional exact eps + gamma = 1 guidance by the exact noisy classifier = the class-conditional eps."""
    dt = torch.float64
    w = torch.tensor([0.5, 0.3, 0.2], dtype=dt)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], dtype=dt)
    covs = torch.stack([torch.eye(2, dtype=dt) * s for s in (0.3, 0.5, 0.2)])

    class Exact(nn.Module):  # log p(y | x_t) up to a constant: log w_k + log N_k(x_t)
        def forward(self, x, t):
            return torch.stack([w[k].log() + gmm_logp(x, t, SDE, w[k : k + 1] / w[k], means[k : k + 1],
                                                      covs[k : k + 1]) for k in range(3)], 1)  # fmt: skip

    x = torch.randn(8, 2, dtype=dt, generator=torch.Generator().manual_seed(1)) * 2
    for t in (0.05, 0.3, 0.8):
        tt = torch.full((8,), t, dtype=dt)
        for k in range(3):
            guided = classifier_guided_denoiser(gmm_denoiser(SDE, w, means, covs, "eps"), Exact(), k, 1.0, SDE, 3)
            cond = gmm_denoiser(SDE, torch.ones(1, dtype=dt), means[k : k + 1], covs[k : k + 1], "eps")
            assert torch.allclose(guided(x, tt), cond(x, tt), atol=1e-10, rtol=0)


def test_guidance_is_the_same_whatever_the_denoiser_predicts():
    """The guided eps does not depend on what the unconditional model predicts (each converted exactly)."""
    dt = torch.float64
    w, means = torch.tensor([0.6, 0.4], dtype=dt), torch.tensor([[-1.0, 0.5], [1.5, -1.0]], dtype=dt)
    covs = torch.stack([torch.eye(2, dtype=dt) * s for s in (0.3, 0.6)])
    x, t = torch.randn(5, 2, dtype=dt, generator=torch.Generator().manual_seed(2)), torch.full((5,), 0.4, dtype=dt)
    clf = nn.Linear(2, 2).double()

    def logits(x, t):
        return clf(x)

    got = {p: classifier_guided_denoiser(gmm_denoiser(SDE, w, means, covs, p), logits, 1, 2.0, SDE, 2)(x, t)
           for p in ("eps", "x0", "v", "velocity", "score")}  # fmt: skip
    assert not torch.allclose(got["eps"], gmm_denoiser(SDE, w, means, covs, "eps")(x, t), atol=1e-3)
    for p in ("x0", "v", "velocity", "score"):
        assert torch.allclose(got[p], got["eps"], atol=1e-10, rtol=0), p


def test_cli_trains_saves_loads(tmp_path):
    out = tmp_path / "clf.safetensors"
    args = ["--steps", "3", "--hidden", "16", "--depth", "1", "--time-dim", "16", "--batch-size", "8"]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    loaded = load_noisy_classifier(out)
    assert loaded.config.hidden == 16 and set(loaded.metadata["test_accuracy_at_t"]) == {
        "0.001", "0.1", "0.3", "0.5", "0.7", "0.9"}  # fmt: skip
    assert loaded.model(torch.randn(5, 1, 8, 8), torch.rand(5)).shape == (5, 10)
    assert loaded.metadata["provenance"]["command"].startswith("python -m lib.diffusion.classifier")


def test_bad_inputs():
    den, clf = _uncond(), NoisyClassifier(NoisyClassifierConfig(hidden=8, depth=1, time_dim=8))
    for bad in (10, -1, torch.tensor([0, 10])):
        with pytest.raises(ValueError, match="y must hold labels in 0..9"):
            classifier_guided_denoiser(den, clf, bad, 1.0, SDE)
    with pytest.raises(TypeError, match="y must be"):
        classifier_guided_denoiser(den, clf, torch.tensor([0.5]), 1.0, SDE)
    for bad in ("2", None, True, torch.tensor([1.0, 2.0])):
        with pytest.raises(TypeError, match="gamma must be a real number"):
            classifier_guided_denoiser(den, clf, 1, bad, SDE)
    with pytest.raises(ValueError, match="gamma must be finite"):
        classifier_guided_denoiser(den, clf, 1, float("nan"), SDE)
    with pytest.raises(TypeError, match="denoiser"):
        classifier_guided_denoiser(den.model, clf, 1, 1.0, SDE)
    with pytest.raises(TypeError, match="num_classes must be given"):
        classifier_guided_denoiser(den, _Linear(), 1, 1.0, SDE)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        classifier_guided_denoiser(den, _Linear(), 1, 1.0, SDE, num_classes=0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        classifier_guided_denoiser(den, _Linear(), 1, 1.0, SDE, num_classes=2.0)
    g = classifier_guided_denoiser(den, clf, torch.tensor([1, 2, 3]), 1.0, SDE)
    with pytest.raises(ValueError, match="1 or 4 labels"):
        g(torch.randn(4, 1, 8, 8), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="x must have shape"):
        clf(torch.randn(2, 64), torch.rand(2))
    with pytest.raises(ValueError, match="num_classes"):
        NoisyClassifierConfig(num_classes=1)
    assert check_scale("w", 3) == 3.0 and check_labels(4, 10).tolist() == [4]
