"""Data-parallel training (``torch.distributed`` + DDP) and mixed precision together.

Each of ``W`` ranks holds a full replica of the model and a shard of the batch. DDP all-reduces the
gradients during ``backward`` and divides by ``W``; with equal shards of a mean loss,

    (1/W) sum_r grad( (1/n) sum_{i in shard r} l_i ) = grad( (1/(W n)) sum_i l_i ),

the full-batch gradient, so every replica applies the same update and stays identical. With FP16
loss scaling the loss scale must agree across ranks, or the replicas would diverge. Under DDP it does
without any extra communication: an inf on one rank becomes inf on every rank in the gradient
all-reduce, so every rank's ``torch.amp.GradScaler`` sees the same gradients, skips the same steps and
backs off together (``GradScaler`` itself does not communicate). Where ranks hold *different*
gradients (sharded training: FSDP, ZeRO), the overflow flag itself must be all-reduced, as FSDP's
``ShardedGradScaler`` does, and as :class:`~lib.precision.master.MasterWeightStep` does when a process
group is initialised (a hand-written step cannot assume it runs under DDP).

Run on a machine with GPUs (one process per GPU; NCCL on CUDA, gloo on CPU)::

    torchrun --standalone --nproc_per_node=2 -m lib.precision.ddp --steps 200 --amp bf16

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
W, r        world size (number of processes), rank of this process
shard       rank r's contiguous slice of the batch (equal sizes: N must be divisible by W)
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from lib.utils import seed_everything


def shard(batch: tuple[torch.Tensor, ...], rank: int, world_size: int) -> tuple[torch.Tensor, ...]:
    """Rank ``rank``'s contiguous equal slice of every tensor of ``batch`` (leading dim ``N``, ``N % W == 0``)."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    n = batch[0].shape[0]
    if n % world_size:
        raise ValueError(f"batch size {n} must be divisible by world_size={world_size} (equal shards)")
    k = n // world_size
    return tuple(t[rank * k : (rank + 1) * k] for t in batch)


def free_port() -> int:
    """A free TCP port on localhost (for a single-machine process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grad_worker(rank: int, world_size: int, port: int, seed: int, queue) -> None:
    """Spawned by :func:`check_ddp_gradients`: DDP gradient of the shard on each rank, sent by rank 0."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, batch, loss_fn = _problem(seed)
        ddp = DDP(model)
        loss_fn(ddp, shard(batch, rank, world_size)).backward()  # all-reduce (mean) happens here
        grads = [p.grad.detach().numpy().copy() for p in model.parameters()]  # by value, not shared memory
        if rank == 0:
            queue.put(grads)
    finally:
        dist.destroy_process_group()


def _problem(seed: int):
    """A float64 MLP on 48 random inputs (divisible by 1, 2, 3, 4)."""
    g = torch.Generator().manual_seed(seed)
    seed_everything(seed, threads=None, deterministic=False)  # model initialisation
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x = torch.randn(48, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=g)
    loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
    return model, (x, y), loss_fn


@dataclass(frozen=True)
class DDPCheck:
    """Result of :func:`check_ddp_gradients`."""

    world_size: int
    max_abs_diff: float
    """max |DDP gradient - single-process full-batch gradient| over all parameters (float64)."""
    max_abs_grad: float
    """max |full-batch gradient| (for scale)."""


def check_ddp_gradients(world_size: int = 2, seed: int = 0) -> DDPCheck:
    """Spawn ``world_size`` CPU processes (gloo), compare the DDP gradient with the full-batch one.

    The gradients are float64, so they agree to ~1e-16 relative: only the order of the sum differs.
    """
    if not isinstance(world_size, int) or not 1 <= world_size <= 4:
        raise ValueError(f"world_size must be an int in [1, 4], got {world_size!r}")
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(
        _grad_worker, args=(world_size, free_port(), seed, queue), nprocs=world_size, join=True, start_method="spawn"
    )
    ddp_grads = [torch.from_numpy(a) for a in queue.get()]
    model, batch, loss_fn = _problem(seed)
    loss_fn(model, batch).backward()
    full = [p.grad for p in model.parameters()]
    diff = max(float((a - b).abs().max()) for a, b in zip(ddp_grads, full, strict=True))
    return DDPCheck(world_size, diff, max(float(b.abs().max()) for b in full))


def main(argv: list[str] | None = None) -> None:
    """``torchrun`` entry point: digits MLP, DDP over all ranks, optional AMP (bf16, or fp16 + GradScaler)."""
    from lib.data.digits import load_digits
    from lib.precision.experiment import DigitsRunConfig, cross_entropy, make_mlp
    from lib.train import train
    from lib.utils import seed_everything

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("run me with torchrun, e.g. torchrun --standalone --nproc_per_node=2 -m lib.precision.ddp")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, W = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    seed_everything(0, threads=1)
    data = load_digits("train")
    n = len(data) - len(data) % W
    x, y = shard((data.x[:n].to(device), data.y[:n].to(device)), rank, W)
    model = DDP(make_mlp(DigitsRunConfig()).to(device), device_ids=[device.index] if cuda else None)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    hist = train(model, cross_entropy, [(x, y)], args.steps, lr=args.lr, autocast_dtype=amp, scaler=scaler)
    if rank == 0:
        print(f"world_size={W} amp={args.amp} final loss={hist.last():.4f} ({hist.seconds:.1f} s)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
