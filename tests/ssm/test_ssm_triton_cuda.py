"""GPU-only checks of the Triton selective scan at Mamba-like sizes (``make gpu`` runs files named
``test_*_cuda.py``); skipped cleanly without CUDA."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("L,groups,block_l", [(1, 1, 64), (257, 1, 64), (1000, 4, 128), (4096, 1, 64)])
def test_triton_matches_loop_on_gpu(L, groups, block_l):
    from lib.ssm.scan import selective_scan
    from lib.ssm.triton_scan import selective_scan_triton

    g = torch.Generator().manual_seed(L)
    batch, d, n = 2, 64, 16
    Bs = (batch, n, L) if groups == 1 else (batch, groups, n, L)
    t = [torch.randn(batch, d, L, generator=g), torch.randn(batch, d, L, generator=g) - 2.0,
         -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1), torch.randn(*Bs, generator=g),
         torch.randn(*Bs, generator=g), torch.randn(d, generator=g), torch.randn(batch, d, L, generator=g),
         torch.zeros(d)]  # fmt: skip
    t = [x.cuda().requires_grad_() for x in t]
    out, h = selective_scan_triton(*t[:5], *t[5:], delta_softplus=True, return_last_state=True, block_l=block_l)
    ref, h_ref = selective_scan(*t[:5], *t[5:], delta_softplus=True, return_last_state=True, impl="loop")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(out.sum() + h.sum(), t)
    ref_grads = torch.autograd.grad(ref.sum() + h_ref.sum(), t)
    for a, b in zip(grads, ref_grads, strict=True):
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-4, atol=1e-4)


def test_default_impl_on_cuda_is_triton():
    from lib.ssm.scan import selective_scan

    x = torch.randn(1, 4, 9, device="cuda")
    A, B = -torch.ones(4, 2, device="cuda"), torch.randn(1, 2, 9, device="cuda")
    torch.testing.assert_close(selective_scan(x, x, A, B, B), selective_scan(x, x, A, B, B, impl="reference"),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
