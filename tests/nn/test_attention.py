"""lib/nn/attention.py: naive attention vs torch's SDPA; multi-head attention vs torch.nn.MultiheadAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.nn.attention import KVCache, MultiHeadAttention, attention_scores, scaled_dot_product_attention


def _qkv(batch, L, S, E, Ev, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*batch, n, e, generator=g, dtype=dtype) for n, e in ((L, E), (S, E), (S, Ev)))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    L=st.integers(1, 9),
    S=st.integers(1, 9),
    E=st.integers(1, 8),
    Ev=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    mask_kind=st.sampled_from(["none", "bool", "float", "causal"]),
    scale=st.sampled_from([None, 0.3]),
)
def test_matches_torch_sdpa(batch, L, S, E, Ev, seed, mask_kind, scale):
    q, k, v = _qkv(batch, L, S, E, Ev, seed)
    g = torch.Generator().manual_seed(seed + 1)
    kw = {"scale": scale}
    if mask_kind == "bool":
        mask = torch.rand(L, S, generator=g) > 0.3
        mask[:, 0] = True  # keep every row attendable (an empty row is NaN in both)
        kw["attn_mask"] = mask
    elif mask_kind == "float":
        kw["attn_mask"] = torch.randn(L, S, generator=g, dtype=torch.float64)
    elif mask_kind == "causal":
        kw["is_causal"] = True
    ours = scaled_dot_product_attention(q, k, v, **kw)
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    assert ours.shape == (*batch, L, Ev)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


def test_broadcast_mask_and_batch_dims():
    q, k, v = _qkv((2, 3), 4, 6, 5, 7, 0)
    mask = torch.rand(2, 1, 4, 6) > 0.2
    mask[..., 0] = True
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        atol=1e-10,
        rtol=0,
    )


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_match_torch(is_causal):
    q, k, v = (t.requires_grad_() for t in _qkv((2,), 5, 5, 4, 3, 7))
    do = torch.randn(2, 5, 3, dtype=torch.float64)
    ours = torch.autograd.grad((scaled_dot_product_attention(q, k, v, is_causal=is_causal) * do).sum(), (q, k, v))
    ref = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v, is_causal=is_causal) * do).sum(), (q, k, v))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(
        lambda a, b, c: scaled_dot_product_attention(a, b, c, is_causal=is_causal), (q, k, v)
    )


def test_causal_is_lower_triangular_and_rows_sum_to_one():
    q, k, _ = _qkv((), 6, 6, 4, 4, 3)
    w = attention_scores(q, k, is_causal=True)
    assert torch.all(w.triu(1) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(6, dtype=torch.float64))
    assert torch.isnan(attention_scores(q, k, attn_mask=torch.zeros(6, 6, dtype=torch.bool))).all()


def test_float32_matches_torch():
    q, k, v = _qkv((3,), 11, 13, 8, 8, 1, dtype=torch.float32)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv((2,), 4, 5, 3, 3, 0)
    with pytest.raises(ValueError, match="last dim E"):
        scaled_dot_product_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="sequence dim S"):
        scaled_dot_product_attention(q, k, v[:, :4])
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(TypeError, match="floating-point"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(TypeError, match="bool or floating"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 dims"):
        scaled_dot_product_attention(q[0, 0], k, v)


def test_logit_variance_grows_with_d_k():
    # q.k of unit-variance entries has variance d_k; scaling by 1/sqrt(d_k) brings it back to 1
    g = torch.Generator().manual_seed(0)
    for d_k in (4, 64, 256):
        q, k = torch.randn(2, 20000, d_k, generator=g, dtype=torch.float64)
        dots = (q * k).sum(-1)
        assert abs(float(dots.var()) / d_k - 1) < 0.05
        assert abs(float((dots / math.sqrt(d_k)).var()) - 1) < 0.05


# ---------------------------------------------------------------- multi-head attention


def _copy_to_torch(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref


@pytest.mark.parametrize("setting", ["plain", "padding", "causal", "cross"])
def test_mha_matches_torch(setting):
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).double()
    ref = _copy_to_torch(mha)
    B, L = 2, 5
    S = 7 if setting == "cross" else L
    x = torch.randn(B, L, 12, dtype=torch.float64)
    mem = torch.randn(B, S, 12, dtype=torch.float64) if setting == "cross" else x
    kw_ours, kw_ref = {}, {}
    if setting == "padding":
        pad = torch.zeros(B, S, dtype=torch.bool)
        pad[0, -2:] = True
        kw_ours["key_padding_mask"] = kw_ref["key_padding_mask"] = pad
    if setting == "causal":
        kw_ours["is_causal"] = True
        kw_ref["attn_mask"] = torch.ones(L, S, dtype=torch.bool).triu(1)  # torch: True = NOT allowed
    out, w = mha(x, mem, mem, need_weights=True, **kw_ours)
    out_ref, w_ref = ref(x, mem, mem, need_weights=True, average_attn_weights=False, **kw_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(w, w_ref, atol=1e-10, rtol=0)


def test_mha_parameter_count_and_errors():
    for d, h in ((64, 4), (64, 1), (48, 6)):
        mha = MultiHeadAttention(d, h)
        assert sum(p.numel() for p in mha.parameters()) == 4 * d * d + 4 * d
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="query must have shape"):
        mha(torch.zeros(2, 3, 5), torch.zeros(2, 3, 8), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="key_padding_mask"):
        x = torch.zeros(2, 3, 8)
        mha(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))


def test_self_attention_is_permutation_equivariant():
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 4).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    perm = torch.randperm(10)
    torch.testing.assert_close(mha(x, x, x)[:, perm], mha(x[:, perm], x[:, perm], x[:, perm]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunks", [(1,) * 7, (3, 1, 3), (7,)])
def test_kv_cache_matches_full_causal_self_attention(chunks):
    # feeding the tokens in chunks through the cache gives the rows of one causal pass
    torch.manual_seed(2)
    mha = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, sum(chunks), 12, dtype=torch.float64)
    full = mha(x, x, x, is_causal=True)
    cache, outs, t = KVCache(), [], 0
    for n in chunks:
        outs.append(mha.forward_cached(x[:, t : t + n], cache))
        t += n
        assert cache.length == t and cache.k.shape == (2, 3, t, 4)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-12, rtol=0)


def test_project_kv_and_attend_compose_to_forward():
    torch.manual_seed(3)
    mha = MultiHeadAttention(8, 2).double()
    q, m = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    out, w = mha.attend(q, *mha.project_kv(m, m))
    ref, w_ref = mha(q, m, m, need_weights=True)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)


def test_kv_cache_errors():
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        mha.forward_cached(torch.zeros(1, 1, 8), {})
    with pytest.raises(ValueError, match="x must have shape"):
        mha.forward_cached(torch.zeros(1, 1, 6), KVCache())
    cache = KVCache()
    cache.append(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="does not extend"):
        cache.append(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
