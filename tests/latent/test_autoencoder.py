"""KL autoencoder: shapes, the closed-form KL against torch.distributions and Monte Carlo, gradients through the
reparameterisation, the scale factor, PSNR, errors, and a smoke run of the training command."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lib.latent.autoencoder import (
    AutoencoderConfig,
    KLAutoencoder,
    Posterior,
    elbo_loss,
    latent_std,
    load_autoencoder,
    main,
    psnr,
)

SMALL = AutoencoderConfig(channels=(16, 16), steps=2, batch_size=4, n_train=16)


def test_shapes():
    m = KLAutoencoder(SMALL)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    q = m.posterior(x)
    assert q.mu.shape == q.logvar.shape == (3, 4, 8, 8)
    assert m.encode(x).shape == (3, 4, 8, 8) and m.decode(m.encode(x)).shape == (3, 3, 32, 32)
    assert KLAutoencoder(AutoencoderConfig(latent_channels=8, channels=(16, 16))).encode(x).shape == (3, 8, 8, 8)


def test_kl_closed_form():
    g = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64),
    )
    q = Posterior(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), ref)
    # Monte Carlo: E_q[log q(z) - log p(z)] with 4000 samples of one image's posterior
    mu1, lv1 = mu[:1].expand(4000, -1, -1, -1), logvar[:1].expand(4000, -1, -1, -1)
    z = Posterior(mu1, lv1).sample(g)
    mc = (Normal(mu1, (0.5 * lv1).exp()).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).flatten(1).sum(1)
    assert abs(float(mc.mean()) - float(q.kl()[0])) < 4 * float(mc.std()) / math.sqrt(4000)
    assert float(Posterior(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)).kl()) == 0.0


def test_reparameterisation_gradients_flow():
    mu = torch.zeros(2, 4, 8, 8, requires_grad=True)
    logvar = torch.zeros(2, 4, 8, 8, requires_grad=True)
    z = Posterior(mu, logvar).sample(torch.Generator().manual_seed(1))
    z.pow(2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    m = KLAutoencoder(SMALL)
    elbo_loss(m, torch.rand(2, 3, 32, 32) * 2 - 1)["loss"].backward()
    assert all(p.grad is not None for p in m.encoder.parameters())


def test_scale_factor_as_documented():
    m = KLAutoencoder(SMALL).eval()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = m.posterior(x).sample(torch.Generator().manual_seed(3))
    assert latent_std(m, x, torch.Generator().manual_seed(3)) == pytest.approx(float(z.flatten().std()))
    m.scale_factor.fill_(1 / float(z.flatten().std()))
    with torch.no_grad():
        z_scaled = m.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    assert float(z_scaled.flatten().std()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(m.decode(m.encode(x)), m.decoder(m.posterior(x).mu))


def test_psnr():
    x = torch.zeros(2, 3, 4, 4)
    assert psnr(x + 0.2, x) == pytest.approx(20.0)  # error 0.1 in [0, 1]
    assert psnr(x, x) == float("inf")
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:1])


def test_errors():
    m = KLAutoencoder(SMALL)
    with pytest.raises(ValueError, match="x must"):
        m.posterior(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="z_scaled"):
        m.decode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="beta"):
        AutoencoderConfig(beta=-1.0)
    with pytest.raises(ValueError, match="channels"):
        AutoencoderConfig(channels=(16, 24))


def test_command_smoke(tmp_path):
    out, res = tmp_path / "ae.safetensors", tmp_path / "results.json"
    argv = ["--steps", "2", "--batch-size", "4", "--n-train", "16", "--channels", "16", "16", "--n-eval", "8",
            "--threads", "1", "--out", str(out), "--results", str(res)]  # fmt: skip
    assert main(argv) == 0
    trained = load_autoencoder(out)
    assert trained.config.channels == (16, 16) and trained.metadata["results"]["psnr_test"] > 0
    assert float(trained.model.scale_factor) == pytest.approx(trained.metadata["results"]["scale_factor"])
    assert main(argv + ["--evaluate-only"]) == 0
    from lib.utils import load_results

    assert load_results(res)["results"]["psnr_test"] == pytest.approx(trained.metadata["results"]["psnr_test"])
