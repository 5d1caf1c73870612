"""Encoder-decoder plumbing shared by the Transformer and the RNN baselines: loss, greedy decoding, accuracy.

A model here has ``encode(src) -> state`` and ``decode(tgt_in, state) -> logits (batch, T, vocab)``;
training uses teacher forcing (``tgt_in`` is the shifted target) and :class:`Seq2SeqLoss` with
:func:`lib.train.train`; evaluation feeds the model its own argmax (:func:`greedy_decode`). The RNN
encoder-decoder (Sutskever et al., 2014; Cho et al., 2014) squeezes the whole input into the final
state of the encoder. Label smoothing: Szegedy et al. (2016), used by Vaswani et al. (2017).
Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).

Glossary
--------
src, tgt_in, tgt_out   token batches ``(batch, T)`` (layout in :mod:`lib.data.sequences`)
epsilon                label-smoothing weight: target ``q = (1 - epsilon) onehot(y) + epsilon / V``
V                      vocabulary size
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.data.sequences import BOS, EOS, PAD, Seq2SeqBatch
from lib.seq.rnn import Recurrent, make_cell


def label_smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float = 0.0, ignore_index: int = PAD
) -> torch.Tensor:
    """``mean over kept tokens of -sum_c q_c log p_c`` with ``q = (1 - epsilon) onehot(y) + epsilon / V``.

    Equals ``F.cross_entropy(..., label_smoothing=epsilon, ignore_index=ignore_index)``.

    Args:
        logits: ``(N, V)``.
        target: ``(N,)`` class indices; entries equal to ``ignore_index`` are left out.
        epsilon: smoothing weight in ``[0, 1)``.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"need logits (N, V) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    keep = target != ignore_index
    log_p = F.log_softmax(logits[keep], dim=-1)  # (N', V)
    nll = -log_p.gather(1, target[keep, None]).squeeze(1)  # -log p_y
    uniform = -log_p.mean(dim=1)  # -(1/V) sum_c log p_c
    return ((1 - epsilon) * nll + epsilon * uniform).mean()


@dataclass(frozen=True)
class Seq2SeqLoss:
    """``loss_fn(model, batch)`` for :func:`lib.train.train`: teacher-forced cross-entropy over non-PAD targets."""

    label_smoothing: float = 0.0
    """``epsilon`` of :func:`label_smoothed_cross_entropy`."""

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        batch = batch.to(device)
        logits = model(batch.src, batch.tgt_in)  # (B, T, V)
        V = logits.shape[-1]
        loss = label_smoothed_cross_entropy(logits.reshape(-1, V), batch.tgt_out.reshape(-1), self.label_smoothing)
        keep = batch.tgt_out != PAD
        token_acc = (logits.argmax(-1) == batch.tgt_out)[keep].float().mean()
        return {"loss": loss, "token_acc": token_acc.detach()}


@torch.no_grad()
def greedy_decode(model: nn.Module, src: torch.Tensor, steps: int) -> torch.Tensor:
    """Feed back the argmax token ``steps`` times: returns ``(batch, steps)`` predicted tokens.

    Starts from ``BOS``; tokens after a predicted ``EOS`` are set to ``PAD``. The decoder is re-run on the
    whole prefix at every step (no cache: simple, works for any model with ``encode``/``decode``; the
    cached version is :func:`greedy_decode_cached`).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    was_training = model.training
    model.eval()
    state = model.encode(src)
    ys = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    for _ in range(steps):
        logits = model.decode(ys, state)  # (B, t, V)
        ys = torch.cat([ys, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train(was_training)
    return pad_after_eos(ys[:, 1:])


@torch.no_grad()
def greedy_decode_cached(model: nn.Module, src: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`greedy_decode` for a model with ``init_cache(state)`` and ``decode_step(tokens, cache)``: same tokens.

    Each step feeds only the newest token; the model keeps what it needs of the past in ``cache`` (a
    recurrent state, or the Transformer's keys and values), so step ``t`` costs ``O(1)`` recurrent steps
    or ``O(t)`` attention work instead of re-running the whole prefix.
    """
    if not (hasattr(model, "init_cache") and hasattr(model, "decode_step")):
        raise TypeError(f"model must have init_cache and decode_step, got {type(model).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    was_training = model.training
    model.eval()
    cache = model.init_cache(model.encode(src))
    token = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    out = []
    for _ in range(steps):
        token = model.decode_step(token, cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(token)
    model.train(was_training)
    return pad_after_eos(torch.cat(out, dim=1))


@dataclass(frozen=True)
class BeamSearchResult:
    """Output of :func:`beam_search`."""

    tokens: torch.Tensor
    """``(batch, steps)`` best hypothesis per source, PAD after its first EOS."""
    log_prob: torch.Tensor
    """``(batch,)`` its log-probability ``sum_t log p(y_t | y_<t, src)`` (up to and including EOS)."""


@torch.no_grad()
def beam_search(model: nn.Module, src: torch.Tensor, steps: int, beam_size: int = 4) -> BeamSearchResult:
    """Keep the ``beam_size`` most probable prefixes at every step instead of the single greedy one.

    Needs ``init_cache``/``decode_step`` and ``reorder_cache(cache, index)`` (select cache rows, so that a
    surviving hypothesis carries its parent's cache). A hypothesis that has emitted EOS is finished: it is
    extended by PAD at no cost and competes with the others on its final score. No length penalty. With
    ``beam_size=1`` this is greedy decoding; with ``beam_size >= V^(steps-1)`` it finds the most probable
    output of length ``steps`` exactly (both tested).
    """
    if not all(hasattr(model, a) for a in ("init_cache", "decode_step", "reorder_cache")):
        raise TypeError(f"model must have init_cache, decode_step and reorder_cache, got {type(model).__name__}")
    for name, val in (("steps", steps), ("beam_size", beam_size)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    was_training = model.training
    model.eval()
    B, K = src.shape[0], beam_size
    cache = model.init_cache(model.encode(src.repeat_interleave(K, dim=0)))  # row b*K + k: beam k of source b
    token = torch.full((B * K, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.full((B, K), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    finished = torch.zeros(B, K, dtype=torch.bool, device=src.device)
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=src.device)
    for _ in range(steps):
        log_p = torch.log_softmax(model.decode_step(token, cache)[:, -1].float(), dim=-1)  # (B*K, V)
        V = log_p.shape[-1]
        log_p = log_p.view(B, K, V)
        only_pad = torch.full((V,), float("-inf"), device=src.device)
        only_pad[PAD] = 0.0
        log_p = torch.where(finished[..., None], only_pad, log_p)  # finished: PAD at no cost
        scores, idx = (scores[..., None] + log_p).view(B, K * V).topk(K, dim=-1)  # (B, K), best first
        parent, tok = idx // V, idx % V
        rows = (parent + torch.arange(B, device=src.device)[:, None] * K).view(-1)  # parent's row in (B*K)
        model.reorder_cache(cache, rows)
        seqs = torch.cat([seqs[rows], tok.view(-1, 1)], dim=1)
        finished = finished.gather(1, parent) | (tok == EOS)
        token = tok.view(-1, 1)
    model.train(was_training)
    best = seqs.view(B, K, steps)[:, 0]
    return BeamSearchResult(pad_after_eos(best), scores[:, 0])


def pad_after_eos(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens (batch, T)`` with every token strictly after the first ``EOS`` of its row set to ``PAD``."""
    is_eos = (tokens == EOS).long()
    return tokens.masked_fill(is_eos.cumsum(1) - is_eos > 0, PAD)


def exact_match(model: nn.Module, batch: Seq2SeqBatch, chunk: int = 512) -> torch.Tensor:
    """``(batch,)`` bool: the greedy output equals ``tgt_out`` token for token, EOS included.

    Uses the cached decoder when the model has one (same tokens, faster)."""
    device = next(model.parameters()).device
    hits = []
    for i in range(0, len(batch), chunk):
        src, tgt = batch.src[i : i + chunk].to(device), batch.tgt_out[i : i + chunk].to(device)
        decode = greedy_decode_cached if hasattr(model, "decode_step") else greedy_decode
        pred = decode(model, src, tgt.shape[1])
        hits.append(((pred == tgt) | (tgt == PAD)).all(dim=1).cpu())
    return torch.cat(hits)


def accuracy_by_length(model: nn.Module, batch: Seq2SeqBatch) -> dict[int, float]:
    """Exact-sequence accuracy for each content length present in ``batch``."""
    hits = exact_match(model, batch)
    return {int(n): float(hits[batch.lengths == n].float().mean()) for n in batch.lengths.unique()}


# ---------------------------------------------------------------- RNN encoder-decoder baseline


@dataclass(frozen=True)
class RNNSeq2SeqConfig:
    """An encoder-decoder RNN without attention: the encoder's last state initialises the decoder."""

    vocab_size: int
    """Tokens, special ones included."""
    cell: str = "lstm"
    """``"lstm"``, ``"gru"`` or ``"rnn"``."""
    d_embed: int = 64
    """Token embedding width."""
    hidden_size: int = 128
    """State width ``H``."""
    fused: bool = True
    """Use torch's fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (same equations as :mod:`lib.seq.rnn`, which the
    tests check, and several times faster on a CPU); ``False`` runs our cells in a Python loop."""

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "gru", "rnn"):
            raise ValueError(f"cell must be 'lstm', 'gru' or 'rnn', got {self.cell!r}")
        if self.vocab_size < 4 or self.d_embed < 1 or self.hidden_size < 1:
            raise ValueError(f"bad sizes vocab={self.vocab_size}, d_embed={self.d_embed}, hidden={self.hidden_size}")


class RNNSeq2Seq(nn.Module):
    """RNN encoder-decoder; ``forward(src, tgt_in) -> logits (batch, T, vocab)``."""

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_embed, padding_idx=PAD)
        if c.fused:
            kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell]
            self.encoder = kind(c.d_embed, c.hidden_size, batch_first=True)
            self.decoder = kind(c.d_embed, c.hidden_size, batch_first=True)
        else:
            self.encoder = Recurrent(make_cell(c.cell, c.d_embed, c.hidden_size))
            self.decoder = Recurrent(make_cell(c.cell, c.d_embed, c.hidden_size))
        self.out = nn.Linear(c.hidden_size, c.vocab_size)

    def encode(self, src: torch.Tensor):
        """Final encoder state after reading the whole source row.

        With left padding (``PAD .. BOS x_1 .. x_n``) the leading PADs have a zero embedding and carry no
        information, and ``x_n`` is the last step read. With right padding the encoder also reads the
        trailing PADs after ``EOS`` and must learn to keep its state through them.
        """
        _, state = self.encoder(self.embed(src))  # (1, B, H) (fused) or (B, H), or an (h, c) pair of them
        return state

    def decode(self, tgt_in: torch.Tensor, state) -> torch.Tensor:
        """Logits ``(batch, T, vocab)`` of the next token at each position of ``tgt_in``."""
        h, _ = self.decoder(self.embed(tgt_in), state)
        return self.out(h)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src))

    def init_cache(self, state) -> dict:
        """The decoder's recurrent state is all it needs to remember (for :func:`greedy_decode_cached`)."""
        return {"state": state}

    def decode_step(self, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
        """Logits ``(batch, n, vocab)`` for the next ``n`` tokens; advances ``cache["state"]``."""
        h, cache["state"] = self.decoder(self.embed(tokens), cache["state"])
        return self.out(h)

    def reorder_cache(self, cache: dict, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the batch in ``cache`` (beam search)."""
        dim = 1 if self.config.fused else 0  # fused states are (layers, batch, H)
        state = cache["state"]
        pick = lambda t: t.index_select(dim, index)  # noqa: E731
        cache["state"] = tuple(pick(t) for t in state) if isinstance(state, tuple) else pick(state)
