"""A small CLIP-style contrastive text-image model (Radford et al., 2021) for the shapes captions.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``). Stable Diffusion conditions its UNet on the token
sequence of CLIP's *text tower*, frozen (Rombach et al., 2022). We train both towers here with InfoNCE (van den Oord
et al., 2018) and a learned temperature, optionally with NegCLIP-style hard negatives (Yuksekgonul et al., 2023):
for each image an extra caption with attributes swapped between objects or the relation flipped.

    python -m lib.latent.clip [--hard-negatives] [--steps N] [--batch-size B] [--embed-init-std S]
    python -m lib.latent.clip [--hard-negatives] --evaluate-only   # re-measure a saved checkpoint

Probes: :func:`zero_shot_accuracy` (one-object images against captions differing in one attribute) and
:func:`binding_probe` (two-object images: true caption vs colours / shapes / positions swapped between the objects;
0.5 is chance, the bag-of-words failure of Yuksekgonul et al.). ``embed_init_std`` is the ablation knob of the
token embedding's initial scale against the positional embedding's (see :class:`CLIPConfig`).

Glossary
--------
ids, mask       ``(B, L)`` token ids and validity mask from :class:`lib.latent.tokenizer.Tokenizer`
tokens          ``(B, L, d)`` final (layer-normed) hidden states of the text tower: the UNet's cross-attention context
pooled          ``(B, d)`` hidden state at ``<eos>`` (CLIP pools at its end-of-text token)
u, v            ``(B, D)`` unit-norm image / text embeddings; ``logits = exp(log_s) u v^T``
log_s           learned log logit-scale, init ``log(1 / 0.07)``, clamped to ``<= log(100)`` as CLIP does
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, remeasure, save_checkpoint
from lib.latent.tokenizer import Tokenizer
from lib.seq.transformer import EncoderLayer, TransformerConfig

DEFAULT_CHECKPOINT = WEIGHTS_DIR / "shapes_clip.safetensors"
HARDNEG_CHECKPOINT = WEIGHTS_DIR / "shapes_clip_hardneg.safetensors"
LOG_S_MAX = math.log(100.0)
ATTRIBUTES = ("shape", "colour", "size", "row", "col")
"""Columns of ``ShapesBatch.labels``."""


@dataclass(frozen=True)
class CLIPConfig:
    """Sizes and training settings of :class:`CLIP`."""

    d_model: int = 64
    """Text-tower width ``d`` (the cross-attention ``context_dim``)."""
    n_layers: int = 2
    """Text transformer layers."""
    n_heads: int = 4
    """Attention heads."""
    max_len: int = 48
    """Rows of the learned positional embedding (longest caption with ``<bos>``/``<eos>``)."""
    embed_dim: int = 64
    """Joint embedding width ``D``."""
    embed_init_std: float = 1.0
    """Std of the token embedding at init (PyTorch's default 1.0; CLIP's 0.02 puts it on the scale of the
    positional embedding, std 0.01: with 1.0 the words swamp their positions and the tower starts as a bag of
    words)."""
    image_channels: tuple[int, ...] = (16, 32, 64)
    """CNN widths at 32, 16, 8 pixels (then flattened at 4x4, so position is kept)."""
    hard_negatives: bool = False
    """Add one hard-negative caption per image to the image-to-text softmax (NegCLIP)."""
    steps: int = 2000
    """Optimisation steps."""
    batch_size: int = 128
    """Image-caption pairs per step."""
    lr: float = 1e-3
    """AdamW learning rate, cosine-decayed."""
    n_train: int = 20000
    """Training images (fresh captions are drawn for them every step)."""
    seed: int = 0
    """Seed of initialisation, data and batches."""

    def __post_init__(self) -> None:
        if not self.embed_init_std > 0:
            raise ValueError(f"embed_init_std must be positive, got {self.embed_init_std}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if min(self.d_model, self.n_layers, self.max_len, self.embed_dim, self.steps, self.batch_size,
               self.n_train) < 1 or not self.image_channels:  # fmt: skip
            raise ValueError(f"sizes must be positive in {self}")


class TextEncoder(nn.Module):
    """Token + learned position embeddings, pre-LN bidirectional transformer layers, final LayerNorm."""

    def __init__(self, vocab_size: int, c: CLIPConfig) -> None:
        super().__init__()
        self.max_len = c.max_len
        self.embed = nn.Embedding(vocab_size, c.d_model)
        with torch.no_grad():
            self.embed.weight.mul_(c.embed_init_std)  # N(0, 1) -> N(0, std^2), no extra random draws
        self.pos = nn.Parameter(torch.randn(c.max_len, c.d_model) * 0.01)
        tc = TransformerConfig(vocab_size, c.d_model, c.n_heads, c.n_layers, 1, 4 * c.d_model, 0.0, True, c.max_len)
        self.layers = nn.ModuleList(EncoderLayer(tc) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ids (B, L)``, ``mask (B, L)`` (True at real tokens) -> ``(B, L, d)`` the cross-attention context."""
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"ids must be int64 (B, L), got {ids.dtype} {tuple(ids.shape)}")
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len={self.max_len}")
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, d)
        for layer in self.layers:
            x = layer(x, ~mask)  # key padding mask: True at padding
        return self.norm(x)

    def pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, d)``: the token state at ``<eos>`` (the last real token)."""
        h = self.tokens(ids, mask)
        last = mask.long().sum(1) - 1  # (B,)
        return h[torch.arange(len(h)), last]


class ImageEncoder(nn.Sequential):
    """``(B, 3, 32, 32)`` in [-1, 1] -> ``(B, embed_dim)``: strided 3x3 convs, SiLU, flatten, linear."""

    def __init__(self, c: CLIPConfig) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, c.image_channels[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(c.image_channels, c.image_channels[1:] + (c.image_channels[-1],), strict=True):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        side = 32 // 2 ** len(c.image_channels)
        layers += [nn.Flatten(), nn.Linear(c.image_channels[-1] * side * side, c.embed_dim)]
        super().__init__(*layers)


class CLIP(nn.Module):
    """Text and image towers with projections to a shared unit sphere and a learned logit scale."""

    def __init__(self, vocab_size: int, config: CLIPConfig = CLIPConfig()) -> None:  # noqa: B008
        super().__init__()
        self.config = config
        self.text = TextEncoder(vocab_size, config)
        self.text_proj = nn.Linear(config.d_model, config.embed_dim, bias=False)
        self.image = ImageEncoder(config)
        self.log_s = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings ``v (B, D)``."""
        return F.normalize(self.text_proj(self.text.pooled(ids, mask)), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``u (B, D)`` of ``images (B, 3, 32, 32)``."""
        if images.dim() != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"images must have shape (B, 3, 32, 32), got {tuple(images.shape)}")
        return F.normalize(self.image(images), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """``s = exp(log_s)`` with ``log_s`` clamped to ``[0, log 100]``."""
        return self.log_s.clamp(0.0, LOG_S_MAX).exp()


def info_nce(u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor | float, v_neg: torch.Tensor | None = None):
    """Symmetric InfoNCE: ``(CE(s u v^T, I) + CE(s v u^T, I)) / 2``; pair ``i`` is the positive of row ``i``.

    Args:
        u: image embeddings ``(B, D)``; v: text embeddings ``(B, D)``.
        scale: the logit scale ``s``.
        v_neg: optional extra text negatives ``(M, D)``, appended to the image-to-text columns only.
    """
    if u.dim() != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must both be (B, D), got {tuple(u.shape)} and {tuple(v.shape)}")
    if v_neg is not None and (v_neg.dim() != 2 or v_neg.shape[1] != v.shape[1]):
        raise ValueError(f"v_neg must be (M, {v.shape[1]}), got {tuple(v_neg.shape)}")
    target = torch.arange(len(u), device=u.device)
    cols = v if v_neg is None else torch.cat([v, v_neg])
    i2t = F.cross_entropy(scale * u @ cols.T, target)  # (B, B [+ M])
    t2i = F.cross_entropy(scale * v @ u.T, target)  # (B, B)
    return (i2t + t2i) / 2


# ---------------------------------------------------------------- captions, hard negatives, probes


def canonical_caption(labels_row: np.ndarray) -> str:
    """The probes' fixed template (one of ``shapes.caption``'s, first synonyms): "a small red circle in the top
    left"; for several objects "a small red circle left of a large blue square and the blue square is above ..."."""
    from lib.data.shapes import COLOURS, COLS, ROWS, SHAPES, SIZES, relation

    labs = [[int(v) for v in r] for r in np.asarray(labels_row).reshape(-1, 5) if r[0] >= 0]
    if not labs:
        raise ValueError("labels_row must contain at least one present object")
    phrase = [f"a {SIZES[b[2]]} {COLOURS[b[1]]} {SHAPES[b[0]]}" for b in labs]
    if len(labs) == 1:
        return f"{phrase[0]} in the {ROWS[labs[0][3]]} {COLS[labs[0][4]]}"
    text = f"{phrase[0]} {relation(labs[0], labs[1])} {phrase[1]}"
    for k in range(1, len(labs) - 1):
        text += (
            f" and the {COLOURS[labs[k][1]]} {SHAPES[labs[k][0]]} is {relation(labs[k], labs[k + 1])} {phrase[k + 1]}"
        )
    return text


def _has_held_out(labels_row: np.ndarray) -> bool:
    from lib.data.shapes import COLOURS, HELD_OUT, SHAPES

    held = {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELD_OUT}
    return any((int(r[0]), int(r[1])) in held for r in labels_row if r[0] >= 0)


def swap_attribute(labels_row: np.ndarray, columns: tuple[int, ...], a: int = 0, b: int = 1) -> np.ndarray:
    """Copy of ``labels_row (K, 5)`` with ``columns`` (e.g. ``(1,)``: colour; ``(3, 4)``: position) exchanged
    between objects ``a`` and ``b``."""
    out, cols = np.array(labels_row, copy=True), list(columns)
    out[a, cols], out[b, cols] = labels_row[b, cols], labels_row[a, cols]
    return out


def hard_negative_labels(labels_row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A minimally wrong description: for >= 2 objects swap colours, shapes or positions (flipping the relation)
    between two of them; for one object change its colour. Held-out (shape, colour) pairs are never created."""
    from lib.data.shapes import COLOURS

    n = int((labels_row[:, 0] >= 0).sum())
    for _ in range(10):
        if n >= 2:
            a, b = rng.choice(n, 2, replace=False)
            out = swap_attribute(labels_row, [(1,), (0,), (3, 4)][rng.integers(3)], a, b)
        else:
            out = np.array(labels_row, copy=True)
            out[0, 1] = (out[0, 1] + rng.integers(1, len(COLOURS))) % len(COLOURS)
        if not _has_held_out(out) and not np.array_equal(out, labels_row):
            return out
    if n >= 2:
        return swap_attribute(labels_row, (3, 4), 0, 1)  # positions only: keeps every (shape, colour) pair
    out[0, 1] = next(c for c in range(len(COLOURS)) if c != labels_row[0, 1] and not _has_held_out(
        np.array([[labels_row[0, 0], c]])))  # fmt: skip
    return out


def _embed_captions(trained: TrainedCLIP, captions: list[str], chunk: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, len(captions), chunk):
        t = trained.tokenizer.encode(captions[i : i + chunk])
        out.append(trained.model.encode_text(t.ids, t.mask))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(trained: TrainedCLIP, n: int = 500, seed: int = 1, split: str = "test") -> dict[str, float]:
    """Zero-shot attribute accuracy on ``n`` one-object images: for each attribute, the image is scored against the
    :func:`canonical_caption` of every value of that attribute (the others true); accuracy = the argmax is true."""
    from lib.data.shapes import COLOURS, COLS, ROWS, SHAPES, SIZES, make_shapes

    data = make_shapes(n, seed=seed, split=split, n_objects=1)
    labels, u = data.labels.numpy(), trained.model.eval().encode_image(data.images)
    acc = {}
    for j, (name, values) in enumerate(zip(ATTRIBUTES, (SHAPES, COLOURS, SIZES, ROWS, COLS), strict=True)):
        caps = []
        for i in range(n):
            for val in range(len(values)):
                lab = labels[i].copy()
                lab[0, j] = val
                caps.append(canonical_caption(lab))
        v = _embed_captions(trained, caps).view(n, len(values), -1)  # (n, V, D)
        pred = torch.einsum("nd,nvd->nv", u, v).argmax(1)
        acc[name] = float((pred == torch.as_tensor(labels[:, 0, j])).float().mean())
    return acc


@torch.no_grad()
def binding_probe(trained: TrainedCLIP, n: int = 500, seed: int = 2, split: str = "test") -> dict[str, float]:
    """On ``n`` two-object images, the rate at which the image scores its true :func:`canonical_caption` above the
    one with colours (shapes; positions, i.e. the relation flipped) exchanged between the objects; 0.5 is chance."""
    from lib.data.shapes import make_shapes

    data = make_shapes(n, seed=seed, split=split, n_objects=2)
    labels, u = data.labels.numpy(), trained.model.eval().encode_image(data.images)
    out = {}
    for name, cols in (("colour_swap", (1,)), ("shape_swap", (0,)), ("relation_flip", (3, 4))):
        rows, true, swapped = [], [], []
        for i in range(n):
            a, b = canonical_caption(labels[i]), canonical_caption(swap_attribute(labels[i], cols))
            if a != b:
                rows, true, swapped = rows + [i], true + [a], swapped + [b]
        if rows:
            s_true = (u[rows] * _embed_captions(trained, true)).sum(1)
            s_swap = (u[rows] * _embed_captions(trained, swapped)).sum(1)
            out[name] = float((s_true > s_swap).float().mean())
            out[f"{name}_n"] = len(rows)
    return out


# ---------------------------------------------------------------- training, checkpoints, command


@dataclass
class TrainedCLIP:
    """A CLIP model with its tokenizer, config and training history."""

    model: CLIP
    tokenizer: Tokenizer
    config: CLIPConfig
    history: object | None = None
    metadata: dict | None = None

    @torch.no_grad()
    def context(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen text tower's ``(tokens (B, L, d), mask (B, L))`` for ``captions``."""
        t = self.tokenizer.encode(captions)
        return self.model.text.tokens(t.ids, t.mask), t.mask


def train_clip(config: CLIPConfig = CLIPConfig()) -> TrainedCLIP:  # noqa: B008
    """Train :class:`CLIP` with :func:`info_nce` through ``lib.train.train`` on ``make_shapes(split="train")``."""
    from lib.data.shapes import caption, make_shapes
    from lib.train import train
    from lib.utils import seed_everything

    seed_everything(config.seed, threads=None, deterministic=False)
    tok = Tokenizer()
    model = CLIP(len(tok), config)
    data = make_shapes(config.n_train, seed=config.seed, split="train")
    images, labels = data.images, data.labels.numpy()
    g, rng = torch.Generator().manual_seed(config.seed + 1), np.random.default_rng(config.seed + 1)

    def batch(step: int):
        idx = torch.randint(0, len(images), (config.batch_size,), generator=g).tolist()
        t = tok.encode([caption(labels[i], rng) for i in idx])
        neg = (
            tok.encode([caption(hard_negative_labels(labels[i], rng), rng) for i in idx])
            if config.hard_negatives
            else None
        )
        return images[idx], t, neg

    def loss_fn(m: CLIP, b) -> dict[str, torch.Tensor]:
        x, t, neg = b
        v_neg = m.encode_text(neg.ids, neg.mask) if neg is not None else None
        loss = info_nce(m.encode_image(x), m.encode_text(t.ids, t.mask), m.logit_scale(), v_neg)
        return {"loss": loss, "logit_scale": m.logit_scale().detach()}

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    hist = train(model, loss_fn, batch, config.steps, optimizer=opt, scheduler=sched, grad_clip=1.0,
                 log_every=max(1, config.steps // 100), desc="CLIP")  # fmt: skip
    return TrainedCLIP(model.eval(), tok, config, hist)


def save_clip(trained: TrainedCLIP, path: str | Path, command: str, extra: dict | None = None) -> Path:
    """Save as a verified checkpoint; the sidecar keeps the config and the tokenizer's vocabulary."""
    return save_checkpoint(path, trained.model.state_dict(), command=command, seed=trained.config.seed,
                           config=dataclasses.asdict(trained.config),
                           extra={"vocabulary": trained.tokenizer.itos[3:], **(extra or {})})  # fmt: skip


def load_clip(path: str | Path = DEFAULT_CHECKPOINT) -> TrainedCLIP:
    """Load a checkpoint written by :func:`save_clip` (sha256 verified), in eval mode."""
    state, meta = load_checkpoint(path)
    cfg = dict(meta["config"], image_channels=tuple(meta["config"]["image_channels"]))
    config, tok = CLIPConfig(**cfg), Tokenizer(meta["vocabulary"])
    model = CLIP(len(tok), config)
    model.load_state_dict(state)
    return TrainedCLIP(model.eval(), tok, config, None, meta)


def evaluate_clip(trained: TrainedCLIP, n: int = 500) -> dict:
    """Zero-shot accuracy and binding probe (test and held-out splits), the logit scale, and the mean row norms of
    the token and positional embeddings (how much word order the text tower can see)."""
    text = trained.model.text
    return {"logit_scale": float(trained.model.logit_scale().detach()),
            "zero_shot_test": zero_shot_accuracy(trained, n), "zero_shot_heldout":
            zero_shot_accuracy(trained, n, split="heldout"), "binding_test": binding_probe(trained, n),
            "binding_heldout": binding_probe(trained, n, split="heldout"),
            "embedding_norms": {"token": float(text.embed.weight.detach()[3:].norm(dim=1).mean()),
                                "position": float(text.pos.detach().norm(dim=1).mean())}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(CLIPConfig):
        if f.name == "hard_negatives":
            parser.add_argument("--hard-negatives", action="store_true")
        elif f.name != "image_channels":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evaluate-only", action="store_true", help="load --out and re-measure")
    args = vars(parser.parse_args(argv))
    out, results, n_eval, threads, only = (args.pop(k) for k in ("out", "results", "n_eval", "threads",
                                                                 "evaluate_only"))  # fmt: skip
    config = CLIPConfig(**args)
    tag = "clip_hardneg" if config.hard_negatives else "clip"
    out = out or (HARDNEG_CHECKPOINT if config.hard_negatives else DEFAULT_CHECKPOINT)
    results = results or Path(__file__).resolve().parents[2] / "results" / "latent" / f"{tag}.json"
    command = "python -m lib.latent.clip " + " ".join(sys.argv[1:] if argv is None else argv)
    if only:
        torch.set_num_threads(threads)
        trained = load_clip(out)
        remeasure(trained, evaluate_clip(trained, n_eval), results, out, command)
        return 0
    seed_everything(config.seed, threads=threads)
    trained = train_clip(config)
    hist = trained.history
    figures = {"config": dataclasses.asdict(config), "train_seconds": hist.seconds,
               "final_loss_mean_last_10": hist.last("loss", 10), **evaluate_clip(trained, n_eval)}  # fmt: skip
    path = save_clip(trained, out, command, extra={"results": figures})
    save_results(results, figures, command=command)
    print(f"saved {path} and {results}: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
