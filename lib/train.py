"""The book's one training loop.

Every chapter that trains by gradient descent calls :func:`train`; what differs between chapters is
the loss (``loss_fn(model, batch)``), the data (an iterable or a ``batch(step)`` function) and, for
mixed precision, the optimisation step (``step_fn``). Chapter: "Running this book".

Glossary
--------
loss_fn     ``loss_fn(model, batch) -> Tensor | dict`` (a dict must hold ``"loss"``; other
            entries are logged as metrics)
step_fn     ``step_fn(loss) -> dict`` does backward and the parameter update; default
            :class:`OptimizerStep` (optional GradScaler, gradient clipping)
History     per-step metrics, evaluation results and wall time, returned by :func:`train`
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

Batch = Any


@dataclass
class History:
    """What :func:`train` returns."""

    steps: list[int] = field(default_factory=list)
    """Step index (0-based) of each logged entry."""
    metrics: dict[str, list[float]] = field(default_factory=dict)
    """Metric name -> values, one per logged step (``"loss"`` always present)."""
    evals: list[dict[str, float]] = field(default_factory=list)
    """Results of ``eval_fn``, each with its ``"step"``."""
    seconds: float = 0.0
    """Wall time of the whole loop."""

    def log(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(float(v))

    def last(self, name: str = "loss", k: int = 1) -> float:
        """Mean of the last ``k`` logged values of ``name``."""
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r}; have {sorted(self.metrics)}")
        vals = self.metrics[name][-k:]
        return sum(vals) / len(vals)


class OptimizerStep:
    """Default ``step_fn``: ``backward``, optional unscale + clip, optimizer step, zero grads.

    Args:
        optimizer: the optimizer over the model's parameters.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        scaler: an optional ``torch.amp.GradScaler`` (FP16 loss scaling).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
        self.optimizer, self.grad_clip, self.scaler = optimizer, grad_clip, scaler

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def __call__(self, loss: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self._params(), self.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            out["loss_scale"] = float(self.scaler.get_scale())
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int, pct_start: float = 0.05):
    """``OneCycleLR`` over ``steps`` with a warm-up share ``pct_start``; for ``steps < 40`` the share is raised so
    that neither phase has zero length (torch divides by each phase's length)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    pct = pct_start if steps >= 40 else min(0.45, 2.5 / steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=pct)


def _batches(data: Iterable[Batch] | Callable[[int], Batch]) -> Iterator[Batch]:
    """Endless stream of batches: ``data(step)`` for a function, else cycle the iterable."""
    if callable(data) and not isinstance(data, Iterable):
        return (data(i) for i in itertools.count())

    def cycle() -> Iterator[Batch]:
        while True:
            empty = True
            for b in data:
                empty = False
                yield b
            if empty:
                raise ValueError("data is an empty iterable")

    return cycle()


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor | dict[str, torch.Tensor]],
    data: Iterable[Batch] | Callable[[int], Batch],
    steps: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    step_fn: Callable[[torch.Tensor], dict[str, float]] | None = None,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    eval_every: int | None = None,
    log_every: int = 1,
    stop_on_nan: bool = False,
    desc: str = "train",
) -> History:
    """Train ``model`` for ``steps`` optimisation steps and return its :class:`History`.

    Args:
        model: put in ``train()`` mode during steps and ``eval()`` mode during ``eval_fn``.
        loss_fn: ``loss_fn(model, batch)`` returns the scalar loss, or a dict with ``"loss"``
            and further scalar metrics to log.
        data: an iterable of batches (cycled) or a function ``batch(step)``.
        steps: number of optimisation steps (>= 1).
        optimizer: defaults to ``Adam(model.parameters(), lr)``.
        scheduler: stepped once after every optimisation step.
        grad_clip: global gradient-norm clipping (default step only).
        autocast_dtype: run ``loss_fn`` under ``torch.autocast`` with this dtype
            (``torch.float16`` / ``torch.bfloat16``) on the model's device.
        scaler: a ``GradScaler`` for FP16 (default step only).
        step_fn: replaces the default backward/update (e.g. FP32 master weights); gets the loss,
            returns extra metrics to log.
        eval_fn: ``eval_fn(model) -> dict`` run every ``eval_every`` steps and after the last.
        log_every: log metrics every this many steps (and at the last step).
        stop_on_nan: end early (logging the step) when the loss is not finite.
        desc: label of the progress bar (silenced with ``TQDM_DISABLE=1``).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every!r}")
    if eval_every is not None and (eval_fn is None or eval_every < 1):
        raise ValueError("eval_every needs an eval_fn and must be >= 1")
    if step_fn is not None and (scaler is not None or grad_clip is not None):
        raise ValueError("scaler and grad_clip belong to the default step; pass them to your step_fn")
    if step_fn is None:
        optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
        step_fn = OptimizerStep(optimizer, grad_clip=grad_clip, scaler=scaler)
    try:
        device_type = next(model.parameters()).device.type
    except StopIteration:
        device_type = "cpu"

    def run_eval(step: int) -> None:
        model.eval()
        with torch.no_grad():
            result = {k: float(v) for k, v in eval_fn(model).items()}
        model.train()
        hist.evals.append({"step": step, **result})

    hist = History()
    batches = _batches(data)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        batch = next(batches)
        ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        with ctx:
            out = loss_fn(model, batch)
        metrics = dict(out) if isinstance(out, dict) else {"loss": out}
        if "loss" not in metrics:
            raise ValueError("loss_fn returned a dict without a 'loss' entry")
        loss = metrics["loss"]
        finite = bool(torch.isfinite(loss.detach()).all())
        extra = step_fn(loss)
        if scheduler is not None:
            scheduler.step()
        last = step == steps - 1 or (stop_on_nan and not finite)
        if step % log_every == 0 or last:
            values = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in metrics.items()}
            values.update(extra or {})
            hist.log(step, values)
            bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
        if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or last):
            if not hist.evals or hist.evals[-1]["step"] != step:
                run_eval(step)
        if stop_on_nan and not finite:
            break
    bar.close()
    hist.seconds = time.perf_counter() - t0
    return hist
