"""The bridge from RNNs to the Transformer: an RNN encoder-decoder with additive attention (Bahdanau et al., 2015).

The encoder-decoder of :mod:`lib.seq.seq2seq` squeezes the source into the encoder's last state. Bahdanau
et al. keep every encoder state ``h_j`` and let the decoder look back at them at each output step:

    e_ij = v^T tanh(W s_{i-1} + U h_j)          (alignment score, eq. 6 of the paper)
    alpha_ij = softmax_j(e_ij)                   (over the non-PAD source positions)
    c_i = sum_j alpha_ij h_j                     (context vector)
    s_i = f(s_{i-1}, [E y_{i-1}; c_i])           (the decoder cell reads the context)
    logits_i = W_out [s_i; c_i] + b_out

Everything else (embedding, cell, sizes, state hand-over from encoder to decoder) is the baseline of
:class:`lib.seq.seq2seq.RNNSeq2Seq`, so training both on the same data isolates what attention adds.
The paper's encoder is bidirectional and its read-out a maxout layer; ours keeps the baseline's
one-directional encoder so that attention is the only difference (an ablation, not a replica).
The Transformer keeps the attention and drops the recurrence.
Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).

Glossary
--------
h_j          encoder state at source position j, ``(batch, S, H)``
s_i          decoder state before/after output step i, ``(batch, H)``
W, U, v      ``attention.W`` ``(H -> d_attn)``, ``attention.U`` ``(H -> d_attn)``, ``attention.v`` ``(d_attn -> 1)``
alpha_ij     attention of output step i on source position j, ``(batch, T, S)``
c_i          context vector ``(batch, H)``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lib.data.sequences import PAD
from lib.seq.rnn import Recurrent, make_cell


class AdditiveAttention(nn.Module):
    """``alpha = softmax_j(v^T tanh(W s + U h_j))`` and ``c = sum_j alpha_j h_j`` (Bahdanau et al., 2015).

    Args:
        d_query: width of the decoder state ``s``.
        d_key: width of the encoder states ``h_j``.
        d_attn: width of the hidden layer of the score (``n'`` in the paper).
    """

    def __init__(self, d_query: int, d_key: int, d_attn: int) -> None:
        super().__init__()
        for name, val in (("d_query", d_query), ("d_key", d_key), ("d_attn", d_attn)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.W = nn.Linear(d_query, d_attn, bias=False)
        self.U = nn.Linear(d_key, d_attn)
        self.v = nn.Linear(d_attn, 1, bias=False)

    def forward(
        self, s: torch.Tensor, h: torch.Tensor, pad: torch.Tensor | None = None, Uh: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ``(B, d_key)`` and weights ``(B, S)`` for query ``s (B, d_query)`` over ``h (B, S, d_key)``.

        Args:
            pad: ``(B, S)`` bool, True at padding positions (weight 0).
            Uh: ``U h`` precomputed, ``(B, S, d_attn)``: it does not depend on the output step.
        """
        if s.dim() != 2 or h.dim() != 3 or s.shape[0] != h.shape[0]:
            raise ValueError(f"need s (B, d_query) and h (B, S, d_key), got {tuple(s.shape)} and {tuple(h.shape)}")
        Uh = self.U(h) if Uh is None else Uh
        e = self.v(torch.tanh(self.W(s)[:, None, :] + Uh)).squeeze(-1)  # (B, S) alignment scores
        if pad is not None:
            e = e.masked_fill(pad, float("-inf"))
        alpha = torch.softmax(e, dim=-1)  # (B, S)
        return torch.bmm(alpha[:, None, :], h).squeeze(1), alpha  # c = sum_j alpha_j h_j: (B, d_key)


@dataclass(frozen=True)
class AttentionRNNSeq2SeqConfig:
    """The baseline encoder-decoder of :class:`lib.seq.seq2seq.RNNSeq2SeqConfig` plus additive attention."""

    vocab_size: int
    """Tokens, special ones included."""
    cell: str = "lstm"
    """``"lstm"``, ``"gru"`` or ``"rnn"``."""
    d_embed: int = 64
    """Token embedding width."""
    hidden_size: int = 128
    """State width ``H`` of encoder and decoder."""
    d_attn: int = 64
    """Hidden width of the additive score."""
    fused: bool = True
    """torch's ``nn.LSTM``/``nn.LSTMCell`` (faster) or our cells of :mod:`lib.seq.rnn` (same equations)."""

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "gru", "rnn"):
            raise ValueError(f"cell must be 'lstm', 'gru' or 'rnn', got {self.cell!r}")
        if self.vocab_size < 4 or self.d_embed < 1 or self.hidden_size < 1 or self.d_attn < 1:
            raise ValueError(f"bad sizes in {self}")


@dataclass
class BahdanauCache:
    """What :meth:`AttentionRNNSeq2Seq.decode_step` carries from one output step to the next."""

    h: torch.Tensor
    """Encoder states ``(B, S, H)``."""
    pad: torch.Tensor
    """``(B, S)`` bool, True at padding."""
    Uh: torch.Tensor
    """``U h``, ``(B, S, d_attn)``."""
    s: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    """Decoder state ``s_i`` (an ``(h, c)`` pair for the LSTM)."""


class AttentionRNNSeq2Seq(nn.Module):
    """RNN encoder-decoder with additive attention; ``forward(src, tgt_in) -> logits (batch, T, vocab)``.

    The decoder is a Python loop over output steps: the context ``c_i`` depends on ``s_{i-1}``, which
    depends on ``c_{i-1}``, so even with teacher forcing the steps cannot run in parallel.
    """

    def __init__(self, config: AttentionRNNSeq2SeqConfig) -> None:
        super().__init__()
        c = self.config = config
        H = c.hidden_size
        self.embed = nn.Embedding(c.vocab_size, c.d_embed, padding_idx=PAD)
        if c.fused:
            self.encoder = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell](c.d_embed, H, batch_first=True)
            self.decoder = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[c.cell](c.d_embed + H, H)
        else:
            self.encoder = Recurrent(make_cell(c.cell, c.d_embed, H))
            self.decoder = make_cell(c.cell, c.d_embed + H, H)
        self.attention = AdditiveAttention(H, H, c.d_attn)
        self.out = nn.Linear(2 * H, c.vocab_size)

    def encode(self, src: torch.Tensor):
        """``(h (B, S, H), pad (B, S), s_0)``: every encoder state, the padding mask, the decoder's first state."""
        h, state = self.encoder(self.embed(src))
        if self.config.fused:  # nn.LSTM/GRU return (1, B, H) states
            state = tuple(t[0] for t in state) if isinstance(state, tuple) else state[0]
        return h, src == PAD, state

    def init_cache(self, state) -> BahdanauCache:
        """Decoding state: the encoder states, ``U h`` (computed once per sequence) and the current ``s``."""
        h, pad, s = state
        return BahdanauCache(h, pad, self.attention.U(h), s)

    def decode_step(self, tokens: torch.Tensor, cache: BahdanauCache, weights: list | None = None) -> torch.Tensor:
        """Logits ``(B, n, vocab)`` for the next ``n`` tokens (one decoder step each); advances ``cache.s``.

        Appends each step's attention ``(B, S)`` to ``weights`` if given.
        """
        emb = self.embed(tokens)  # (B, n, d_embed)
        outputs = []
        for i in range(tokens.shape[1]):
            s_prev = cache.s[0] if isinstance(cache.s, tuple) else cache.s  # the LSTM's h part is its output
            c, alpha = self.attention(s_prev, cache.h, cache.pad, cache.Uh)  # c_i from s_{i-1}
            if weights is not None:
                weights.append(alpha.detach())
            cache.s = self.decoder(torch.cat([emb[:, i], c], dim=-1), cache.s)  # s_i = f(s_{i-1}, [E y_{i-1}; c_i])
            outputs.append(torch.cat([cache.s[0] if isinstance(cache.s, tuple) else cache.s, c], dim=-1))
        return self.out(torch.stack(outputs, dim=1))  # one read-out for all steps: (B, n, 2H) -> (B, n, vocab)

    def reorder_cache(self, cache: BahdanauCache, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the batch in ``cache`` (beam search)."""
        cache.h, cache.pad, cache.Uh = cache.h[index], cache.pad[index], cache.Uh[index]
        cache.s = tuple(t[index] for t in cache.s) if isinstance(cache.s, tuple) else cache.s[index]

    def decode(self, tgt_in: torch.Tensor, state, weights: list | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` under teacher forcing: :meth:`decode_step` over the whole ``tgt_in``."""
        return self.decode_step(tgt_in, self.init_cache(state), weights)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src))

    @torch.no_grad()
    def attention_weights(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """``alpha (B, T, S)`` under teacher forcing."""
        weights: list[torch.Tensor] = []
        self.decode(tgt_in, self.encode(src), weights)
        return torch.stack(weights, dim=1)
