"""Scaled dot-product attention, written from the equation (the book's naive reference).

Vaswani et al. (2017), eq. (1): Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.
Chapters: "From RNNs to the Transformer" and "FlashAttention" (where this is the slow reference).
:class:`MultiHeadAttention` is section 3.2.2 of the paper; positional encodings live in
:mod:`lib.nn.positional` and are re-exported here.

Glossary
--------
q, k, v      queries ``(..., L, E)``, keys ``(..., S, E)``, values ``(..., S, Ev)``
L, S         query and key sequence lengths
attn_mask    boolean (True = may attend) or float (added to the logits), broadcast to ``(..., L, S)``
scale        the logit scale, default ``1/sqrt(E)``
h, d_k       heads of :class:`MultiHeadAttention` and their width ``d_model / h``
KVCache      keys and values of the tokens decoded so far, for incremental (cached) decoding
"""

from __future__ import annotations

import math

import torch

from lib.nn.positional import SinusoidalPositionalEncoding, apply_rotary, sincos_2d, sinusoidal_encoding  # noqa: F401 (re-export)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., seq, dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the last dim E, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must share the sequence dim S, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"k and v must share batch dims, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"batch dims of q {tuple(q.shape[:-2])} and k {tuple(k.shape[:-2])} do not broadcast"
        ) from None


def attention_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """The attention weights ``softmax(q k^T * scale + mask)``, shape ``(..., L, S)``.

    Rows whose every entry is masked get NaN, as in ``torch.nn.functional.scaled_dot_product_attention``
    on the math backend (there is nothing to attend to).
    """
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        if attn_mask is not None:
            raise ValueError("pass either attn_mask or is_causal=True, not both")
        # query i may attend to keys j <= i (top-left aligned, as in torch)
        causal = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    elif attn_mask is not None:
        if not torch.is_tensor(attn_mask):
            raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        try:
            torch.broadcast_shapes(attn_mask.shape, logits.shape)
        except RuntimeError:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (..., L, S) = {tuple(logits.shape)}"
            ) from None
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask.is_floating_point():
            logits = logits + attn_mask
        else:
            raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    return torch.softmax(logits, dim=-1)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` with the semantics of ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        q: ``(..., L, E)``.
        k: ``(..., S, E)``.
        v: ``(..., S, Ev)``.
        attn_mask: boolean (True = may attend) or float (added to the logits), broadcastable to
            ``(..., L, S)``.
        is_causal: mask out keys after each query (top-left aligned); excludes ``attn_mask``.
        scale: logit scale; default ``1/sqrt(E)``.

    Returns:
        ``(..., L, Ev)``. Materialises the full ``(..., L, S)`` weight matrix (the point of the
        FlashAttention chapter is not to).
    """
    _check_qkv(q, k, v)
    return attention_scores(q, k, attn_mask, is_causal, scale) @ v


class MultiHeadAttention(torch.nn.Module):
    """Multi-head attention (Vaswani et al., 2017, section 3.2.2).

    ``head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i)``, ``MultiHead(Q, K, V) = Concat(head_1..head_h) W^O``.
    The ``h`` per-head projections ``(d_model, d_k)`` are stored side by side as one
    ``(d_model, d_model)`` linear map each for Q, K and V, so the layer has ``4 d^2 + 4 d`` parameters
    (with biases) whatever ``h``.

    Args:
        d_model: model width ``d``.
        n_heads: number of heads ``h``; ``d_k = d / h``.
        bias: biases on the four projections.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(d_model, int) or not isinstance(n_heads, int) or d_model < 1 or n_heads < 1:
            raise ValueError(f"d_model and n_heads must be positive ints, got {d_model!r}, {n_heads!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_k = d_model, n_heads, d_model // n_heads
        self.q_proj = torch.nn.Linear(d_model, d_model, bias=bias)  # W^Q, all heads
        self.k_proj = torch.nn.Linear(d_model, d_model, bias=bias)  # W^K
        self.v_proj = torch.nn.Linear(d_model, d_model, bias=bias)  # W^V
        self.out_proj = torch.nn.Linear(d_model, d_model, bias=bias)  # W^O

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``query (B, L, d)`` to ``key (B, S, d)`` / ``value (B, S, d)``.

        Args:
            attn_mask: boolean (True = may attend) or float additive mask, broadcastable to ``(B, h, L, S)``.
            key_padding_mask: ``(B, S)`` boolean, True marks PADDING keys (torch.nn.MultiheadAttention's
                convention), which no query attends to.
            is_causal: query ``i`` sees keys ``j <= i`` only.
            need_weights: also return the attention weights ``(B, h, L, S)``.

        Returns:
            ``(B, L, d)``, or ``((B, L, d), (B, h, L, S))`` with ``need_weights``.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not torch.is_tensor(t) or t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (batch, seq, {self.d_model}), got {getattr(t, 'shape', t)}")
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        if key.shape[:2] != value.shape[:2] or key.shape[0] != B:
            raise ValueError(f"key {tuple(key.shape)} / value {tuple(value.shape)} / query batch {B} mismatch")
        mask = attn_mask
        if is_causal:
            if attn_mask is not None:
                raise ValueError("pass either attn_mask or is_causal=True, not both")
            mask = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, S) or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be bool ({B}, {S}), got {key_padding_mask.dtype} "
                    f"{tuple(key_padding_mask.shape)}"
                )
            keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
            if mask is None:
                mask = keep
            elif mask.dtype == torch.bool:
                mask = mask & keep
            else:
                mask = mask.masked_fill(~keep, float("-inf"))
        k, v = self.project_kv(key, value)
        out, weights = self.attend(query, k, v, mask)
        return (out, weights) if need_weights else out

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values ``(K W^K, V W^V)``, each ``(B, h, S, d_k)``: what a cache stores."""
        return self._split(self.k_proj(key)), self._split(self.v_proj(value))

    def attend(
        self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from raw ``query (B, L, d)`` to projected ``k, v (B, h, S, d_k)``.

        Returns ``(out (B, L, d), weights (B, h, L, S))``; :meth:`forward` and cached decoding share it.
        """
        B, L = query.shape[0], query.shape[1]
        q = self._split(self.q_proj(query))  # (B, h, L, d_k)
        weights = attention_scores(q, k, attn_mask)  # (B, h, L, S)
        heads = weights @ v  # (B, h, L, d_k)
        out = self.out_proj(heads.transpose(1, 2).reshape(B, L, self.d_model))  # concat heads, then W^O
        return out, weights

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal self-attention of ``x (B, n, d)``, the next ``n`` tokens, given the keys/values cached so far.

        Appends the new tokens' keys and values to ``cache`` (in place), then lets new token ``i`` attend
        to every cached token and to new tokens ``<= i``: the same result as :meth:`forward` with
        ``is_causal=True`` on the whole prefix, at the cost of the ``n`` new rows only.
        """
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        if not torch.is_tensor(x) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (batch, n, {self.d_model}), got {getattr(x, 'shape', x)}")
        n, t0 = x.shape[1], cache.length
        k, v = cache.append(*self.project_kv(x, x))  # (B, h, t0 + n, d_k)
        # new token i sits at position t0 + i and may see keys j <= t0 + i (bottom-right aligned causal mask)
        mask = torch.ones(n, t0 + n, dtype=torch.bool, device=x.device).tril(diagonal=t0)
        return self.attend(x, k, v, mask)[0]


class KVCache:
    """Keys and values of the tokens decoded so far, ``(B, h, t, d_k)`` each, for one attention layer.

    Autoregressive decoding recomputes nothing: step ``t`` projects one new token and attends to the
    ``t`` cached ones, ``O(t d)`` work instead of the ``O(t^2 d)`` of re-running the whole prefix.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached tokens ``t``."""
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate ``k, v (B, h, n, d_k)`` along the sequence and return the whole cache."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            if k.shape[:2] != self.k.shape[:2] or k.shape[-1] != self.k.shape[-1]:
                raise ValueError(f"k of shape {tuple(k.shape)} does not extend a cache of {tuple(self.k.shape)}")
            self.k, self.v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        return self.k, self.v
