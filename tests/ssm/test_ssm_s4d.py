"""S4D (lib/ssm/s4d.py): the Vandermonde kernel equals the kernel of the discretised diagonal SSM, FFT
convolution equals direct convolution, initialisations have the documented spectra."""

import math

import pytest
import torch

from lib.ssm import discretize as dz
from lib.ssm.s4d import S4DKernel, fft_conv, s4d_lambda, vandermonde_kernel


def test_vandermonde_equals_discretised_kernel():
    g = torch.Generator().manual_seed(0)
    N, L, dt = 8, 50, 0.1
    lam = s4d_lambda(N, "lin")
    B = torch.complex(
        torch.randn(N // 2, generator=g, dtype=torch.float64), torch.randn(N // 2, generator=g, dtype=torch.float64)
    )
    C = torch.complex(
        torch.randn(N // 2, generator=g, dtype=torch.float64), torch.randn(N // 2, generator=g, dtype=torch.float64)
    )
    K = vandermonde_kernel(lam[None], B[None], C[None], torch.tensor([math.log(dt)], dtype=torch.float64), L)[0]
    # the same system with the conjugate pairs written out: A = diag(lam, conj(lam))
    A = torch.diag(torch.cat([lam, lam.conj()]))
    Ab, Bb = torch.linalg.matrix_exp(dt * A), None
    Bb = torch.linalg.solve(A, (Ab - torch.eye(N, dtype=A.dtype)) @ torch.cat([B, B.conj()]))
    K_ref = dz.kernel(Ab, Bb, torch.cat([C, C.conj()]), L)
    torch.testing.assert_close(K.to(K_ref.dtype), K_ref, rtol=1e-9, atol=1e-9)


def test_fft_conv_equals_direct():
    g = torch.Generator().manual_seed(1)
    u, K = torch.randn(2, 3, 17, generator=g, dtype=torch.float64), torch.randn(3, 17, generator=g, dtype=torch.float64)
    direct = torch.stack([sum(K[:, j] * u[..., l - j] for j in range(l + 1)) for l in range(17)], -1)
    torch.testing.assert_close(fft_conv(u, K), direct)


def test_initialisations_and_layer():
    assert torch.allclose(s4d_lambda(8, "lin").real, torch.tensor(-0.5, dtype=torch.float64))
    torch.testing.assert_close(s4d_lambda(8, "lin").imag, math.pi * torch.arange(4, dtype=torch.float64))
    torch.testing.assert_close(s4d_lambda(6, "real").real, -torch.arange(1, 4, dtype=torch.float64))
    assert s4d_lambda(8, "inv").shape == (4,) and s4d_lambda(8, "legs").shape == (4,)
    layer = S4DKernel(5, 8)
    y = layer(torch.randn(2, 5, 33))
    assert y.shape == (2, 5, 33)
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_errors():
    with pytest.raises(ValueError, match="N must be an even int"):
        s4d_lambda(5)
    with pytest.raises(ValueError, match="init must be one of"):
        s4d_lambda(4, "foo")
    lam = s4d_lambda(4)[None]
    with pytest.raises(ValueError, match="B must have the shape"):
        vandermonde_kernel(lam, lam[:, :1], lam, torch.zeros(1), 4)
    with pytest.raises(ValueError, match="K must have shape"):
        fft_conv(torch.zeros(1, 2, 5), torch.zeros(2, 4))
