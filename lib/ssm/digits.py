"""Sequential digits: scikit-learn's 8x8 digits read pixel by pixel (64 steps, one value per step), classified by
an S4D model, an LSTM and a Transformer encoder of similar size (the toy cousin of sequential MNIST).

``python -m lib.ssm.digits`` trains all three over seeds and writes ``results/ssm/digits.json``.
Chapter: "State space models" (``chapters/ssm.ipynb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lib.data.digits import load_digits
from lib.nn.positional import SinusoidalPositionalEncoding
from lib.seq.rnn import LSTMCell, Recurrent
from lib.seq.transformer import EncoderLayer, TransformerConfig
from lib.ssm.mamba import count_parameters
from lib.ssm.s4d import S4DKernel
from lib.train import History, train
from lib.utils import save_results, seed_everything

MODELS = ("s4d", "lstm", "transformer")
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results" / "ssm"


@dataclass(frozen=True)
class DigitsConfig:
    """One sequential-digits run."""

    model: str = "s4d"
    """``"s4d"``, ``"lstm"`` or ``"transformer"``."""
    d_model: int = 64
    """Width (LSTM hidden size, S4D channels, Transformer d_model)."""
    n_layers: int = 2
    """S4D blocks or Transformer encoder layers (the LSTM has one layer)."""
    d_state: int = 32
    """S4D state size N."""
    steps: int = 400
    """Optimisation steps (batches of ``batch`` training images)."""
    batch: int = 64
    """Images per step."""
    lr: float = 3e-3
    """AdamW learning rate (cosine-decayed)."""
    seed: int = 0
    """Seed of initialisation and batch order."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("d_model", "n_layers", "d_state", "steps", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")


class S4DBlock(nn.Module):
    """``x + GLU(W GELU(S4D(LayerNorm(x)) + D LayerNorm(x)))`` on ``(batch, L, H)`` (the S4D paper's block)."""

    def __init__(self, H: int, N: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(H)
        self.ssm = S4DKernel(H, N, init="lin", dt_min=1e-2, dt_max=1e-1)
        self.D = nn.Parameter(torch.randn(H))
        self.out = nn.Linear(H, 2 * H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(x).transpose(1, 2)  # (batch, H, L)
        y = F.gelu(self.ssm(u) + self.D[:, None] * u).transpose(1, 2)
        return x + F.glu(self.out(y), dim=-1)


class SequenceClassifier(nn.Module):
    """Pixels ``(batch, 64)`` -> class logits ``(batch, 10)``: encoder, then the mean over steps (S4D,
    Transformer) or the last state (LSTM), then a linear head."""

    def __init__(self, c: DigitsConfig, n_classes: int = 10) -> None:
        super().__init__()
        self.config, H = c, c.d_model
        if c.model == "lstm":
            self.rnn = Recurrent(LSTMCell(1, H))
        else:
            self.embed = nn.Linear(1, H)
            if c.model == "s4d":
                self.layers = nn.ModuleList(S4DBlock(H, c.d_state) for _ in range(c.n_layers))
            else:
                tc = TransformerConfig(vocab_size=4, d_model=H, n_heads=4, d_ff=2 * H, max_len=64)
                self.pos = SinusoidalPositionalEncoding(H, max_len=64)
                self.layers = nn.ModuleList(EncoderLayer(tc) for _ in range(c.n_layers))
            self.norm = nn.LayerNorm(H)
        self.head = nn.Linear(H, n_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 2:
            raise ValueError(f"pixels must be (batch, L), got {tuple(pixels.shape)}")
        x = pixels[..., None]  # (batch, L, 1)
        if self.config.model == "lstm":
            out, _ = self.rnn(x)
            return self.head(out[:, -1])
        x = self.embed(x)
        if self.config.model == "transformer":
            x = self.pos(x)
            for layer in self.layers:
                x = layer(x, None)
        else:
            for layer in self.layers:
                x = layer(x)
        return self.head(self.norm(x).mean(1))


def as_sequences(x: torch.Tensor) -> torch.Tensor:
    """Images ``(n, 1, 8, 8)`` -> pixel sequences ``(n, 64)`` in raster order."""
    return x.flatten(1)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


def fit(c: DigitsConfig) -> tuple[SequenceClassifier, History]:
    """Train one classifier on the training split; evaluates the test split at the end (``History.evals``)."""
    seed_everything(c.seed)
    train_set, test_set = load_digits("train"), load_digits("test")
    xtr, ytr = as_sequences(train_set.x), train_set.y
    xte, yte = as_sequences(test_set.x), test_set.y
    model = SequenceClassifier(c)
    gen = torch.Generator().manual_seed(c.seed)

    def batch(step: int):
        idx = torch.randint(0, len(ytr), (c.batch,), generator=gen)
        return xtr[idx], ytr[idx]

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, c.steps)
    hist = train(
        model, loss_fn, batch, c.steps, optimizer=opt, scheduler=sched, grad_clip=1.0, log_every=20,
        eval_fn=lambda m: {"acc": test_accuracy(m, xte, yte)}, desc=f"digits-{c.model}",
    )  # fmt: skip
    return model, hist


def run_study(seeds: list[int], models: list[str], steps: int, out: Path | None, command: str) -> dict[str, Any]:
    """Train every (model, seed); test accuracy, parameters and wall time per run; rewrites ``out`` per run."""
    runs: list[dict[str, Any]] = []
    results = {"config": dataclasses.asdict(DigitsConfig(steps=steps)), "runs": runs}
    for name in models:
        for seed in seeds:
            c = DigitsConfig(model=name, seed=seed, steps=steps)
            t0 = time.perf_counter()
            model, hist = fit(c)
            runs.append({
                "model": name, "seed": seed, "params": count_parameters(model), "test_acc": hist.evals[-1]["acc"],
                "seconds": time.perf_counter() - t0,
            })  # fmt: skip
            print(runs[-1], flush=True)
            if out is not None:
                save_results(out, results, command=command)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.ssm.digits", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--steps", type=int, default=DigitsConfig.steps)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "digits.json")
    a = p.parse_args(argv)
    command = "python -m lib.ssm.digits " + " ".join(sys.argv[1:] if argv is None else argv)
    run_study(a.seeds, a.models, a.steps, a.out, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
