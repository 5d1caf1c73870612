"""The chapter's experiment: a Transformer and RNN encoder-decoders learn to reverse sequences.

All models see the same batches (one seeded sampler each, same seed) for the same number of steps and
are trained by :func:`lib.train.train`; the optimisers differ (Adam with the warm-up schedule and label
smoothing for the Transformer, Adam at a fixed rate with clipping for the RNNs: "same data and steps",
not "trained identically"). Exact-sequence accuracy is measured by greedy decoding on a held-out set with
every length. Models: ``transformer``, ``lstm``/``gru``/``rnn`` (encoder-decoder without attention) and
``lstm-attention``/``gru-attention`` (the same plus Bahdanau attention, :mod:`lib.seq.bahdanau`).
The chapter runs the small default on a CPU; bigger runs (more seeds, right padding, more steps) use
the command line:

    python -m lib.seq.reversal --seeds 0 1 2 --out results/transformer/reversal_seeds.json
    python -m lib.seq.reversal --models lstm --steps 2000 --seeds 0 1 2 \
        --out results/transformer/reversal_lstm_2000.json
    python -m lib.seq.reversal --steps 1000 --pad-source right --models transformer \
        --out results/transformer/reversal_right_pad_1000.json
    python -m lib.seq.reversal --models lstm-attention --save-dir weights

``--save-dir`` writes each trained model as a verified checkpoint (:func:`save_model`, read back by
:func:`load_model`): the chapter loads the LSTM with attention, the slowest model to train, from
``weights/reversal_lstm-attention.safetensors`` instead of training it live.

Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.data.sequences import SequenceTask, held_out, sampler
from lib.seq.bahdanau import AttentionRNNSeq2Seq, AttentionRNNSeq2SeqConfig
from lib.seq.seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig, Seq2SeqLoss, accuracy_by_length
from lib.seq.transformer import Transformer, TransformerConfig, warmup_scheduler
from lib.train import History, train
from lib.utils import get_device, save_results, seed_everything


@dataclass(frozen=True)
class ReversalConfig:
    """Data, models and budget of the experiment (defaults: the chapter's run)."""

    steps: int = 250
    """Optimisation steps, the same for every model."""
    batch_size: int = 64
    """Sequences per batch."""
    n_symbols: int = 10
    """Content symbols."""
    min_len: int = 5
    """Shortest sequence."""
    max_len: int = 30
    """Longest sequence."""
    pad_source: str = "left"
    """Source padding side, see :class:`lib.data.sequences.SequenceTask`."""
    d_model: int = 64
    """Transformer width."""
    n_heads: int = 4
    """Transformer heads."""
    n_layers: int = 1
    """Transformer encoder layers = decoder layers."""
    d_ff: int = 128
    """Transformer feed-forward width."""
    warmup: int = 100
    """Warm-up steps of :func:`lib.seq.transformer.warmup_lr`."""
    lr_scale: float = 0.5
    """Multiplier of the warm-up schedule."""
    label_smoothing: float = 0.1
    """Transformer label smoothing."""
    rnn_hidden: int = 128
    """State width of the LSTM/GRU baselines."""
    rnn_lr: float = 3e-3
    """Adam learning rate of the baselines (gradient clipping at 1)."""
    models: tuple[str, ...] = ("transformer", "lstm", "gru", "lstm-attention")
    """Which models to train (see :func:`build`)."""
    seed: int = 0
    """Seed of the model initialisation."""
    data_seed: int = 1
    """Seed of the training batches."""
    test_seed: int = 1234
    """Seed of the held-out set."""
    n_test_per_length: int = 20
    """Held-out sequences per length."""

    @property
    def task(self) -> SequenceTask:
        return SequenceTask("reverse", self.n_symbols, self.min_len, self.max_len, self.pad_source)


def fit_transformer(model: Transformer, task: SequenceTask, c: ReversalConfig) -> History:
    """Adam (beta_2 = 0.98) with the paper's warm-up schedule and label smoothing."""
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.98), eps=1e-9)
    sched = warmup_scheduler(opt, model.config.d_model, warmup=c.warmup, scale=c.lr_scale)
    data = sampler(task, c.batch_size, seed=c.data_seed)
    loss = Seq2SeqLoss(label_smoothing=c.label_smoothing)
    return train(model, loss, data, c.steps, optimizer=opt, scheduler=sched, log_every=10, desc="transformer")


def fit_rnn(model: RNNSeq2Seq, task: SequenceTask, c: ReversalConfig) -> History:
    """Adam at ``rnn_lr`` with global gradient clipping at 1 (the usual recipe for RNNs)."""
    data = sampler(task, c.batch_size, seed=c.data_seed)
    return train(model, Seq2SeqLoss(), data, c.steps, lr=c.rnn_lr, grad_clip=1.0, log_every=10, desc="rnn")


MODELS = ("transformer", "lstm", "gru", "rnn", "lstm-attention", "gru-attention", "rnn-attention")


def build(name: str, c: ReversalConfig) -> torch.nn.Module:
    """One of :data:`MODELS` with the sizes of ``c``: the Transformer, an RNN encoder-decoder, or one with attention."""
    V = c.task.vocab_size
    if name == "transformer":
        cfg = TransformerConfig(
            V, c.d_model, c.n_heads, c.n_layers, c.n_layers, c.d_ff, max_len=max(256, c.max_len + 1)
        )
        return Transformer(cfg)
    if name in ("lstm", "gru", "rnn"):
        return RNNSeq2Seq(RNNSeq2SeqConfig(V, name, d_embed=c.d_model, hidden_size=c.rnn_hidden))
    if name in ("lstm-attention", "gru-attention", "rnn-attention"):
        cell = name.split("-")[0]
        return AttentionRNNSeq2Seq(AttentionRNNSeq2SeqConfig(V, cell, d_embed=c.d_model, hidden_size=c.rnn_hidden))
    raise ValueError(f"model name must be one of {MODELS}, got {name!r}")


def fit(name: str, model: torch.nn.Module, c: ReversalConfig) -> History:
    """The recipe of ``name``: :func:`fit_transformer` for the Transformer, :func:`fit_rnn` for the rest."""
    return (fit_transformer if name == "transformer" else fit_rnn)(model, c.task, c)


@dataclass(frozen=True)
class TrainedModel:
    """A model read back by :func:`load_model`, with the config and training history it was made with."""

    name: str
    """One of :data:`MODELS`."""
    model: torch.nn.Module
    """The trained model, in eval mode, on the CPU."""
    config: ReversalConfig
    """The experiment's config (data, sizes, steps, seeds)."""
    history: History
    """Logged training metrics and the training wall time (of the run that made the checkpoint)."""


def save_model(name: str, model: torch.nn.Module, history: History, c: ReversalConfig, path: str | Path) -> Path:
    """Save a model trained by :func:`fit` as a verified checkpoint (:func:`lib.checkpoint.save_checkpoint`)."""
    from lib.checkpoint import save_checkpoint

    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS}, got {name!r}")
    extra = {"model": name, "history": {"steps": history.steps, "metrics": history.metrics,
                                        "seconds": history.seconds}}  # fmt: skip
    argv = sys.argv[1:]
    command = "python -m lib.seq.reversal " + shlex.join(argv) if argv else "lib.seq.reversal.save_model"
    return save_checkpoint(path, model.state_dict(), command=command, seed=c.seed, config=dataclasses.asdict(c),
                           extra=extra)  # fmt: skip


def load_model(path: str | Path) -> TrainedModel:
    """Read a checkpoint written by :func:`save_model` (sha256 verified) and rebuild the model with :func:`build`."""
    from lib.checkpoint import load_checkpoint

    state, meta = load_checkpoint(path)
    if meta.get("model") not in MODELS or "history" not in meta:
        raise ValueError(f"{path} is not a checkpoint of lib.seq.reversal.save_model (no model name or history)")
    cfg = dict(meta["config"])
    cfg["models"] = tuple(cfg["models"])
    c = ReversalConfig(**cfg)
    model = build(meta["model"], c)
    model.load_state_dict(state)
    h = meta["history"]
    return TrainedModel(meta["model"], model.eval(), c, History(h["steps"], h["metrics"], [], h["seconds"]))


def run(c: ReversalConfig, device: torch.device | None = None, save_dir: str | Path | None = None) -> dict[str, dict]:
    """Train every model of ``c.models`` and return, per model, seconds, final loss and accuracy by length.

    With ``save_dir``, also save each trained model as ``save_dir/reversal_<name>.safetensors`` (:func:`save_model`).
    """
    device = device or get_device()
    task, results = c.task, {}
    test = held_out(task, c.n_test_per_length, seed=c.test_seed)
    for name in c.models:
        seed_everything(c.seed)  # threads: BOOK_THREADS, default 2
        model = build(name, c).to(device)
        hist = fit(name, model, c)
        acc = accuracy_by_length(model, test)
        long = [a for n, a in acc.items() if n >= 20] or list(acc.values())
        results[name] = {
            "seconds": hist.seconds,
            "final_loss": hist.last("loss", 3),
            "accuracy_by_length": acc,
            "accuracy_len_ge_20": sum(long) / len(long),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if save_dir is not None:
            save_model(name, model.cpu(), hist, c, Path(save_dir) / f"reversal_{name}.safetensors")
        print(f"{name:12s} acc(n>=20) {results[name]['accuracy_len_ge_20']:6.1%}  {hist.seconds:6.1f} s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(ReversalConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "models":
            parser.add_argument(flag, nargs="+", default=list(f.default), choices=MODELS)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="run each seed s with seed=s, data_seed=s+1 (overrides both)"
    )
    parser.add_argument("--out", default=None, help="write a JSON results file with provenance")
    parser.add_argument("--save-dir", default=None, help="save each trained model there (single-seed runs only)")
    args = vars(parser.parse_args(argv))
    out, seeds, save_dir = args.pop("out"), args.pop("seeds"), args.pop("save_dir")
    if save_dir is not None and seeds is not None:
        parser.error("--save-dir saves one run: use it without --seeds")
    args["models"] = tuple(args["models"])
    config = ReversalConfig(**args)
    if seeds is None:
        payload = {"config": dataclasses.asdict(config), "results": run(config, save_dir=save_dir)}
    else:
        runs = {str(s): run(dataclasses.replace(config, seed=s, data_seed=s + 1)) for s in seeds}
        payload = {"config": dataclasses.asdict(config), "seeds": runs}
    if out:
        save_results(out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
