"""The sequential bottleneck, timed: a recurrent layer (Python loop and torch's fused kernel) against self-attention.

Three ways to turn ``x (batch, T, d)`` into ``(batch, T, d)``:

``rnn_loop``    :class:`lib.seq.rnn.Recurrent` over our :class:`~lib.seq.rnn.RNNCell`: ``T`` dependent steps,
                each a few small tensor operations dispatched from Python;
``rnn_fused``   ``torch.nn.RNN``, the same equations with the loop inside one C++/cuDNN call
                (still ``T`` dependent steps: ``h_t`` needs ``h_{t-1}``; on a CPU it first computes the
                input projections ``W_ih x_t`` of all steps in one matrix product, so only
                ``W_hh h_{t-1}`` and the tanh stay inside the loop);
``attention``   :class:`lib.nn.attention.MultiHeadAttention` self-attention: a few large matrix products
                with no dependency between positions, ``O(T^2 d)`` arithmetic.

The gap between the first two is mostly interpreter and per-operation dispatch overhead (plus the
batched input projection); the gap between the last two is the
price of the dependency chain against that of quadratic arithmetic. The chapter times the CPU live;
GPU figures come only from a results file written by this command on a GPU machine:

    python -m lib.seq.bench --out results/transformer/sequential_bench_cuda.json

Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

import torch

from lib.nn.attention import MultiHeadAttention
from lib.seq.rnn import Recurrent, RNNCell
from lib.utils import compare, get_device, save_results, seed_everything

LAYERS = ("rnn_loop", "rnn_fused", "attention")


@dataclass(frozen=True)
class SequentialBenchConfig:
    """Sizes of :func:`time_layers` (defaults: the chapter's CPU run)."""

    lengths: tuple[int, ...] = (16, 64, 256, 1024)
    """Sequence lengths ``T``."""
    width: int = 64
    """Width ``d`` of input, state and model."""
    heads: int = 4
    """Attention heads."""
    batch: int = 1
    """Sequences per call."""
    warmup: int = 2
    """Untimed calls per layer and length."""
    repeat: int = 15
    """Timed rounds (each times every layer once; the median is kept)."""

    def __post_init__(self) -> None:
        if not self.lengths or any(not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"lengths must be positive ints, got {self.lengths!r}")
        if self.width < 1 or self.width % self.heads or self.batch < 1 or self.repeat < 1 or self.warmup < 0:
            raise ValueError(f"bad sizes in {self}")


def sequence_layers(width: int, heads: int) -> dict[str, torch.nn.Module]:
    """The three layers of the module docstring, at width ``width``."""
    rnn_loop = Recurrent(RNNCell(width, width))
    rnn_fused = torch.nn.RNN(width, width, batch_first=True)
    rnn_fused.load_state_dict({k + "_l0": v for k, v in rnn_loop.cell.state_dict().items()})  # same weights
    return {"rnn_loop": rnn_loop, "rnn_fused": rnn_fused, "attention": MultiHeadAttention(width, heads)}


@torch.no_grad()
def time_layers(
    config: SequentialBenchConfig, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> dict[str, list[float]]:
    """Median forward time in seconds of each layer at each length: ``{"lengths": [...], "rnn_loop": [...], ...}``.

    At each length the layers are timed round-robin (:func:`lib.utils.compare`: every round runs each layer
    once), so that a change of machine load affects all three alike and the ratios at one length stay meaningful.
    """
    device = torch.device(device)
    layers = {name: m.to(device).eval() for name, m in sequence_layers(config.width, config.heads).items()}
    out: dict[str, list[float]] = {"lengths": list(config.lengths), **{name: [] for name in LAYERS}}
    for T in config.lengths:
        x = torch.randn(config.batch, T, config.width, generator=generator).to(device)
        calls = {
            "rnn_loop": lambda x=x: layers["rnn_loop"](x),
            "rnn_fused": lambda x=x: layers["rnn_fused"](x),
            "attention": lambda x=x: layers["attention"](x, x, x),
        }
        timings = compare(calls, warmup=config.warmup, repeat=config.repeat, device=device)
        for name in LAYERS:
            out[name].append(timings[name].median)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default=None, help="default: lib.utils.get_device()")
    parser.add_argument("--out", default=None, help="write a JSON results file with provenance")
    args = parser.parse_args(argv)
    seed_everything(0)
    config = SequentialBenchConfig(tuple(args.lengths), args.width, args.heads, args.batch, 3, args.repeat)
    device = torch.device(args.device) if args.device else get_device()
    times = time_layers(config, device)
    for i, T in enumerate(times["lengths"]):
        print(f"T={T:6d}  " + "  ".join(f"{name} {1e3 * times[name][i]:9.3f} ms" for name in LAYERS), flush=True)
    if args.out:
        save_results(args.out, {"config": dataclasses.asdict(config), "device": str(device), "times_s": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
