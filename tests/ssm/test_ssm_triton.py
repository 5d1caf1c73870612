"""The Triton selective-scan kernel (lib/ssm/triton_scan.py) against the reference scan: forward, last state and
gradients, on awkward lengths with every optional argument. On CPU it runs under TRITON_INTERPRET=1 (slow, so
the sizes are small); on CUDA the same tests run the compiled kernel."""

import pytest
import torch

ts = pytest.importorskip("lib.ssm.triton_scan")
from lib.ssm.scan import selective_scan  # noqa: E402


def _device():
    return "cpu" if ts.INTERPRET else "cuda"


@pytest.mark.parametrize("L,groups,n,block_l", [(1, 1, 4, 16), (7, 2, 3, 4), (100, 1, 16, 32), (257, 2, 5, 64)])
def test_triton_matches_reference(L, groups, n, block_l):
    g = torch.Generator().manual_seed(L)
    batch, d = 1, 2
    Bs = (batch, n, L) if groups == 1 else (batch, groups, n, L)
    t = [torch.randn(batch, d, L, generator=g), 0.5 * torch.randn(batch, d, L, generator=g),
         -torch.rand(d, n, generator=g) - 0.1, torch.randn(*Bs, generator=g), torch.randn(*Bs, generator=g),
         torch.randn(d, generator=g), torch.randn(batch, d, L, generator=g), torch.randn(d, generator=g)]  # fmt: skip
    t = [x.to(_device()).requires_grad_() for x in t]
    out, h = ts.selective_scan_triton(*t[:5], *t[5:], delta_softplus=True, return_last_state=True, block_l=block_l)
    ref, h_ref = selective_scan(*t[:5], *t[5:], delta_softplus=True, return_last_state=True, impl="reference")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    dy = torch.randn(out.shape, generator=g).to(out.device)
    grads = torch.autograd.grad((out * dy).sum() + h.sum(), t)
    ref_grads = torch.autograd.grad((ref * dy).sum() + h_ref.sum(), t)
    for i, (a, b) in enumerate(zip(grads, ref_grads, strict=True)):
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"grad {i}: {m}")


def test_triton_rejects_bad_block_and_device():
    x = torch.zeros(1, 2, 3, device=_device())
    A, B = -torch.ones(2, 2, device=_device()), torch.zeros(1, 2, 3, device=_device())
    with pytest.raises(ValueError, match="block_l must be a power of two"):
        ts.selective_scan_triton(x, x, A, B, B, block_l=12)
    if not ts.INTERPRET:
        with pytest.raises(ValueError, match="kernel was defined for"):
            ts.selective_scan_triton(x.cpu(), x.cpu(), A.cpu(), B.cpu(), B.cpu())
