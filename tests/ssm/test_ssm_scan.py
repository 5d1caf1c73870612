"""Selective scans (lib/ssm/scan.py) against each other and against an independent encoding of the semantics of
``mamba_ssm``'s ``selective_scan_ref`` (that package builds CUDA code, so the test re-states its documented
behaviour instead of importing it: BOOK.md rule 14)."""

import pytest
import torch
import torch.nn.functional as F

from lib.ssm import bench
from lib.ssm.scan import (
    chunked_scan,
    combine,
    logdepth_scan,
    selective_scan,
    selective_scan_loop,
)

IMPLS = ["reference", "loop", "logdepth", "chunked"]
LENGTHS = [1, 7, 100, 257]


def mamba_ref_semantics(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The documented algorithm of mamba_ssm's selective_scan_ref (real A, variable B/C), written independently:
    deltaA = exp(einsum('bdl,dn->bdln')), deltaB_u = einsum('bdl,bnl,bdl->bdln'), x = deltaA x + deltaB_u,
    y = einsum('bdn,bn->bd', x, C[:, :, i]); out = y + D u; out *= silu(z)."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim = u.shape[:2]
    if B.dim() == 4:  # (B, G, N, L) -> per channel
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    else:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        Ci = C[:, :, :, i] if C.dim() == 4 else C[:, None, :, i]
        ys.append((x * Ci).sum(-1))
    out = torch.stack(ys, 2)
    if D is not None:
        out = out + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out, x


def make(L, groups=1, dtype=torch.float64, batch=2, d=4, n=3, seed=0):
    g = torch.Generator().manual_seed(seed + L)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    Bshape = (batch, n, L) if groups == 1 else (batch, groups, n, L)
    return dict(
        u=r(batch, d, L),
        delta=0.5 * r(batch, d, L),
        A=-torch.rand(d, n, generator=g, dtype=dtype) - 0.1,
        B=r(*Bshape),
        C=r(*Bshape),
        D=r(d),
        z=r(batch, d, L),
        delta_bias=r(d),
    )


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("groups", [1, 2])
def test_reference_matches_mamba_semantics(L, groups):
    t = make(L, groups)
    want, last = mamba_ref_semantics(**t, delta_softplus=True)
    out, h = selective_scan(**t, delta_softplus=True, return_last_state=True, impl="reference")
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h, last)


@pytest.mark.parametrize("impl", IMPLS[1:])
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("groups", [1, 2])
def test_scans_equal_reference_values_and_gradients(impl, L, groups):
    t = make(L, groups)
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    outs = {}
    for name in ("reference", impl):
        o, h = selective_scan(**leaves, delta_softplus=True, return_last_state=True, impl=name)
        loss = (o * torch.cos(o)).sum() + (h**2).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves.values(), strict=True)]
        outs[name] = (o, h, grads)
    (o0, h0, g0), (o1, h1, g1) = outs["reference"], outs[impl]
    torch.testing.assert_close(o1, o0)
    torch.testing.assert_close(h1, h0)
    for name, a, b in zip(t, g1, g0, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("kwargs", [{}, {"D": True}, {"z": True}, {"delta_bias": True, "delta_softplus": True}])
def test_optional_arguments_float32(kwargs):
    t = make(33, dtype=torch.float32)
    args = {k: t[k] for k in ("u", "delta", "A", "B", "C")}
    args.update({k: t[k] for k in kwargs if k != "delta_softplus"})
    args["delta_softplus"] = kwargs.get("delta_softplus", False)
    ref = selective_scan(**args, impl="reference")
    assert ref.dtype == torch.float32 and ref.shape == t["u"].shape
    for impl in IMPLS[1:]:
        torch.testing.assert_close(selective_scan(**args, impl=impl), ref, rtol=1e-4, atol=1e-4)


def test_hand_written_backward_gradcheck():
    t = make(6, groups=2, batch=1, d=2, n=2)
    leaves = tuple(t[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))

    def fn(u, delta, A, B, C, D, z, bias):
        out, h = selective_scan_loop(u, delta, A, B, C, D, z, bias, True, True)
        return out, h

    assert torch.autograd.gradcheck(fn, leaves)


def test_combine_is_associative_and_scans_match_loop():
    g = torch.Generator().manual_seed(1)
    a, x = torch.rand(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    left = combine(combine((a[0], x[0]), (a[1], x[1])), (a[2], x[2]))
    right = combine((a[0], x[0]), combine((a[1], x[1]), (a[2], x[2])))
    torch.testing.assert_close(left, right)
    a, x = torch.rand(37, 4, generator=g, dtype=torch.float64), torch.randn(37, 4, generator=g, dtype=torch.float64)
    h, want = torch.zeros(4, dtype=torch.float64), []
    for t in range(37):
        h = a[t] * h + x[t]
        want.append(h)
    want = torch.stack(want)
    torch.testing.assert_close(logdepth_scan(a, x), want)
    torch.testing.assert_close(chunked_scan(torch.log(a), x, chunk=5), want)


def test_factored_form_overflows_segment_sum_form_does_not():
    L = 200
    log_a = torch.full((L, 1), -1.0)  # summed decay 200 > 88
    x = torch.ones(L, 1)
    want = logdepth_scan(torch.exp(log_a), x)
    assert not torch.isfinite(chunked_scan(log_a, x, chunk=L, factored=True)).all()
    assert torch.isfinite(chunked_scan(log_a, x, chunk=32, factored=True)).all()  # short chunks keep it finite here
    torch.testing.assert_close(chunked_scan(log_a, x, chunk=32, factored=True), want)
    for chunk in (L, 64, 7):  # the segment-sum form: every factor <= 1, finite at any chunk length
        torch.testing.assert_close(chunked_scan(log_a, x, chunk=chunk), want)


def test_chunked_scan_finite_and_exact_at_benchmark_scales():
    """At the benchmark's Mamba-like inputs (A = -(1..16), delta = softplus(-2 + noise)) a 64-step chunk sums
    far more than 88 of decay: the factored form overflows, the library's segment-sum form does not."""
    r = bench.Row("chunked", "fwd", batch=1, d=16, L=1024)
    u, delta, A, B, C, D, z, bias = bench.inputs(r, torch.device("cpu"))
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    y = selective_scan(u, delta, A, B, C, **kw, impl="chunked")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, selective_scan(u, delta, A, B, C, **kw, impl="loop"), rtol=1e-4, atol=1e-4)
    dt = F.softplus(delta)
    log_a = torch.einsum("bdl,dn->lbdn", dt, A)
    x = torch.einsum("bdl,bnl->lbdn", dt * u, B)
    assert float((-log_a[:64].sum(0)).max()) > 88  # one chunk's summed decay passes float32's limit
    assert not torch.isfinite(chunked_scan(log_a, x, 64, factored=True)).all()
    bench.check_output(r, torch.device("cpu"))  # what the benchmark asserts before timing
    leaves = [x.clone().requires_grad_() for x in (u, delta, A, B, C)]  # and the backward at the same scale
    grads = {
        impl: torch.autograd.grad(selective_scan(*leaves, **kw, impl=impl).sum(), leaves)
        for impl in ("chunked", "loop")
    }
    for g, want in zip(grads["chunked"], grads["loop"], strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-3)


def test_input_errors_name_the_argument():
    t = make(5, dtype=torch.float32)
    base = {k: t[k] for k in ("u", "delta", "A", "B", "C")}
    bad = [
        ({"u": t["u"][0]}, "u must have shape"),
        ({"delta": t["delta"][:, :, :4]}, "delta must have the shape"),
        ({"A": t["A"][:2]}, "A must have shape"),
        ({"B": t["B"][:, :, :4]}, "B must have shape"),
        ({"C": t["C"].unsqueeze(1).expand(-1, 3, -1, -1)}, "C must have shape"),
        ({"B": t["B"].unsqueeze(1).expand(-1, 2, -1, -1)}, "same number of groups"),
        ({"D": t["D"][:2]}, "D must have shape"),
        ({"z": t["z"][:, :2]}, "z must have shape"),
    ]
    for change, msg in bad:
        with pytest.raises(ValueError, match=msg):
            selective_scan(**{**base, **change})
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        selective_scan(**{**base, "u": [1.0]})
    with pytest.raises(TypeError, match="A must be a real floating-point"):
        selective_scan(**{**base, "A": torch.ones(4, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="impl must be one of"):
        selective_scan(**base, impl="cuda")
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_scan(torch.zeros(3, 1), torch.zeros(3, 1), chunk=0)
    with pytest.raises(ValueError, match="log_a must have the shape of x"):
        chunked_scan(torch.zeros(3, 2), torch.zeros(3, 1))
