"""The encoder-decoder Transformer (Vaswani et al., 2017), small enough to train on a CPU in seconds.

Encoder layer: self-attention + position-wise feed-forward; decoder layer: causal self-attention +
cross-attention to the encoder output + feed-forward. Each sublayer is wrapped in a residual
connection and a LayerNorm, either after the sum (post-LN, the paper's ``LayerNorm(x + Sublayer(x))``)
or before the sublayer (pre-LN, ``x + Sublayer(LayerNorm(x))``, Xiong et al., 2020). Training uses
teacher forcing, the warm-up schedule of the paper (:func:`warmup_lr`) and optionally label smoothing
(:class:`lib.seq.seq2seq.Seq2SeqLoss`); inference is greedy (:func:`greedy_decode`, or
:func:`greedy_decode_cached` with a KV cache). ``tie_embeddings`` shares the embedding with the output layer.
Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).

Glossary
--------
d_model, h, d_k      width, heads, per-head width ``d_model / h``
d_ff                 hidden width of the feed-forward sublayer
memory               encoder output ``(batch, S, d_model)`` that the decoder cross-attends to
src_pad              ``(batch, S)`` bool, True at PAD positions of the source
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lib.data.sequences import PAD
from lib.nn.attention import KVCache, MultiHeadAttention
from lib.nn.positional import SinusoidalPositionalEncoding
from lib.seq.seq2seq import beam_search, greedy_decode, greedy_decode_cached  # noqa: F401 (part of the API)


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes and switches of :class:`Transformer`."""

    vocab_size: int
    """Tokens (shared by source and target), special ones included."""
    d_model: int = 64
    """Model width ``d_model``."""
    n_heads: int = 4
    """Attention heads ``h``."""
    n_encoder_layers: int = 2
    """Encoder layers ``N``."""
    n_decoder_layers: int = 2
    """Decoder layers ``N``."""
    d_ff: int = 256
    """Feed-forward hidden width (4 d_model in the paper)."""
    dropout: float = 0.0
    """Dropout after attention weights' output, feed-forward and embeddings (0.1 in the paper)."""
    norm_first: bool = True
    """Pre-LN if True, the paper's post-LN if False."""
    max_len: int = 256
    """Rows of the positional-encoding table."""
    tie_embeddings: bool = False
    """Share one matrix between the token embedding and the output layer (Press & Wolf, 2017; the paper
    does): ``logits = y E^T + b``, which saves ``vocab_size * d_model`` parameters."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.vocab_size < 4 or self.d_ff < 1 or self.n_encoder_layers < 1 or self.n_decoder_layers < 1:
            raise ValueError(f"bad sizes in {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class FeedForward(nn.Sequential):
    """``FFN(x) = max(0, x W_1 + b_1) W_2 + b_2``, applied to every position independently."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class _Residual(nn.Module):
    """``LayerNorm(x + drop(f(x)))`` (post-LN) or ``x + drop(f(LayerNorm(x)))`` (pre-LN)."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm, self.drop, self.norm_first = nn.LayerNorm(d_model), nn.Dropout(dropout), norm_first

    def forward(self, x: torch.Tensor, f) -> torch.Tensor:
        if self.norm_first:
            return x + self.drop(f(self.norm(x)))
        return self.norm(x + self.drop(f(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.res1, self.res2 = (_Residual(c.d_model, c.dropout, c.norm_first) for _ in range(2))

    def forward(self, x: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
        x = self.res1(x, lambda z: self.self_attn(z, z, z, key_padding_mask=src_pad))
        return self.res2(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.res1, self.res2, self.res3 = (_Residual(c.d_model, c.dropout, c.norm_first) for _ in range(3))

    def forward(
        self, y: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor, keep: list | None = None
    ) -> torch.Tensor:
        y = self.res1(y, lambda z: self.self_attn(z, z, z, is_causal=True))

        def cross(z: torch.Tensor) -> torch.Tensor:
            out, w = self.cross_attn(z, memory, memory, key_padding_mask=src_pad, need_weights=True)
            if keep is not None:
                keep.append(w.detach())  # (B, h, T, S)
            return out

        y = self.res2(y, cross)
        return self.res3(y, self.ff)

    def step(
        self, y: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """:meth:`forward` for the next tokens ``y (B, n, d)`` only, given the self-attention ``cache`` of the
        earlier ones and the cross-attention keys/values of the memory (projected once per sequence)."""
        y = self.res1(y, lambda z: self.self_attn.forward_cached(z, cache))
        y = self.res2(y, lambda z: self.cross_attn.attend(z, *cross_kv, keep)[0])
        return self.res3(y, self.ff)


class Transformer(nn.Module):
    """Encoder-decoder Transformer; ``forward(src (B, S), tgt_in (B, T)) -> logits (B, T, vocab)``.

    One embedding table is shared by source and target (same vocabulary), scaled by ``sqrt(d_model)``
    before the sinusoidal positions are added, as in the paper.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        # std d^-1/2, so that the sqrt(d_model) factor below gives unit-size embeddings, the scale of PE
        nn.init.normal_(self.embed.weight, std=c.d_model**-0.5)
        self.pos = SinusoidalPositionalEncoding(c.d_model, c.max_len)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        # pre-LN leaves the residual stream un-normalised: one final LayerNorm on each side
        self.enc_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.dec_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.out = nn.Linear(c.d_model, c.vocab_size)
        if c.tie_embeddings:
            self.out.weight = self.embed.weight  # one (vocab, d_model) Parameter, gradients from both uses add up

    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 (batch, seq), got {tokens.dtype} {tuple(tokens.shape)}")
        return self.drop(self.pos(self.embed(tokens) * math.sqrt(self.config.d_model), offset))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(memory (B, S, d_model), src_pad (B, S))``."""
        src_pad = src == PAD
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, src_pad)
        return self.enc_norm(x), src_pad

    def decode(
        self, tgt_in: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], cross_weights: list | None = None
    ) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab)``; appends each layer's cross-attention to ``cross_weights``."""
        memory, src_pad = state
        y = self._embed(tgt_in)
        for layer in self.decoder:
            y = layer(y, memory, src_pad, cross_weights)
        return self.out(self.dec_norm(y))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src))

    def init_cache(self, state: tuple[torch.Tensor, torch.Tensor]) -> DecoderCache:
        """An empty self-attention cache per decoder layer and the memory's keys/values for cross-attention."""
        memory, src_pad = state
        return DecoderCache(
            self_attn=[KVCache() for _ in self.decoder],
            cross=[layer.cross_attn.project_kv(memory, memory) for layer in self.decoder],
            keep=~src_pad[:, None, None, :],  # (B, 1, 1, S): True where a key may be attended to
        )

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Logits ``(B, n, vocab)`` for the next ``n`` target tokens, given ``cache`` (updated in place).

        Feeding ``tgt_in`` one token at a time gives the same logits as ``decode(tgt_in, state)``.
        """
        if not isinstance(cache, DecoderCache):
            raise TypeError(f"cache must be a DecoderCache (from init_cache), got {type(cache).__name__}")
        y = self._embed(tokens, offset=cache.length)  # positions continue where the cache ends
        for layer, kv_cache, cross_kv in zip(self.decoder, cache.self_attn, cache.cross, strict=True):
            y = layer.step(y, cross_kv, cache.keep, kv_cache)
        return self.out(self.dec_norm(y))

    def reorder_cache(self, cache: DecoderCache, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the batch in ``cache`` (beam search: a hypothesis inherits its parent's keys)."""
        for kv in cache.self_attn:
            if kv.k is not None:
                kv.k, kv.v = kv.k.index_select(0, index), kv.v.index_select(0, index)
        cache.cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache.cross]
        cache.keep = cache.keep.index_select(0, index)

    @torch.no_grad()
    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention weights of every decoder layer, each ``(B, h, T, S)``."""
        weights: list[torch.Tensor] = []
        self.decode(tgt_in, self.encode(src), weights)
        return weights


@dataclass
class DecoderCache:
    """State of :meth:`Transformer.decode_step`: one :class:`~lib.nn.attention.KVCache` per decoder layer,
    the memory's cross-attention keys/values ``(B, h, S, d_k)`` per layer, and the source padding mask."""

    self_attn: list[KVCache]
    cross: list[tuple[torch.Tensor, torch.Tensor]]
    keep: torch.Tensor

    @property
    def length(self) -> int:
        """Target tokens decoded so far."""
        return self.self_attn[0].length


def warmup_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """The paper's schedule: ``scale * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)`` with ``s = step + 1``.

    Linear growth for ``warmup`` steps to the peak ``scale / sqrt(d_model * warmup)``, then ``1/sqrt(s)`` decay.
    Use with ``torch.optim.lr_scheduler.LambdaLR`` and a base learning rate of 1 (see :func:`warmup_scheduler`).
    """
    if warmup < 1 or d_model < 1:
        raise ValueError(f"need warmup >= 1 and d_model >= 1, got warmup={warmup}, d_model={d_model}")
    s = step + 1
    return scale * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)


def warmup_scheduler(
    optimizer: torch.optim.Optimizer, d_model: int, warmup: int, scale: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` that sets every group's learning rate to ``warmup_lr(step)`` (base lr forced to 1)."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] = 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_lr(step, d_model, warmup, scale))


def layer_gradient_norms(model: Transformer, loss: torch.Tensor, param: str | None = None) -> dict[str, list[float]]:
    """Backpropagate ``loss`` and return each layer's gradient norm, input side first, per stack.

    Args:
        param: a parameter name inside a layer (e.g. ``"ff.3.weight"``, the feed-forward ``W_2`` that
            Xiong et al., 2020, analyse); default: all of the layer's parameters together.

    Used to compare post-LN and pre-LN at initialisation. Clears the gradients after.
    """
    if param is not None and param not in dict(model.decoder[0].named_parameters()):
        raise ValueError(f"param must name a parameter of a layer (e.g. 'ff.3.weight'), got {param!r}")
    model.zero_grad(set_to_none=True)
    loss.backward()

    def norm(module: nn.Module) -> float:
        grads = [p.grad for n, p in module.named_parameters() if p.grad is not None and param in (None, n)]
        return float(torch.sqrt(sum((g**2).sum() for g in grads)))

    out = {"encoder": [norm(m) for m in model.encoder], "decoder": [norm(m) for m in model.decoder]}
    model.zero_grad(set_to_none=True)
    return out
