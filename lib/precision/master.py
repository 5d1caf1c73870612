"""A mixed-precision optimisation step with FP32 master weights (a ``step_fn`` for ``lib.train.train``).

The model that runs forward and backward holds low-precision parameters (FP16 or BF16); the optimizer
owns FP32 *master* copies. One step (Micikevicius et al., "Mixed Precision Training", ICLR 2018):

1. backward of ``S * loss`` through the low-precision model (gradients in FP16, lifted by ``S``);
2. copy the gradients to FP32 and divide by ``S``; if any is inf/NaN, skip the update;
3. optimizer step on the FP32 masters (small updates are not swamped: ``w + dw`` keeps ``dw`` down
   to ``2**-24 |w|`` instead of ``2**-11 |w|``);
4. copy the masters back into the model, rounded to the low precision;
5. update ``S`` (:class:`~lib.precision.scaler.DynamicLossScaler`).

Steps 2 and 5 follow ``torch.amp.GradScaler`` exactly (unscaling multiplies by the FP32 reciprocal of
``S``, as ``GradScaler.unscale_`` does; tested against it as an oracle). Under ``torch.distributed`` the
overflow flag is all-reduced (MAX) so every rank skips the same steps and keeps the same ``S``.

``keep_master=False`` is the chapter's ablation of the master copy alone: the optimizer and its state
stay in FP32, but after every step the masters are overwritten by the rounded model weights, so each
update is added to an FP16 weight and rounded (the sub-ulp part of ``w + dw`` is lost, as in pure FP16).

The FP32 gradient copies of step 2 live only during the step; the memory accounting of
:mod:`lib.precision.memory` counts the persistent state (a fused implementation unscales in place).

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
params    the model's low-precision parameters (used by forward/backward)
master    FP32 copies of ``params`` (updated by the optimizer)
S         loss scale (``scaler.scale``), 1 when no scaler is given
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lib.precision.scaler import DynamicLossScaler


class MasterWeightStep:
    """``step_fn`` for :func:`lib.train.train`: loss scaling + FP32 master weights.

    Args:
        model: the low-precision model (e.g. ``model.half()``) used for forward/backward.
        make_optimizer: ``make_optimizer(master_params) -> Optimizer`` over the FP32 masters.
        scaler: a :class:`DynamicLossScaler`, or ``None`` for no loss scaling (``S = 1``).
        keep_master: ``True`` (the recipe): the FP32 masters persist across steps. ``False`` (ablation):
            they are reset to the rounded model weights after every step.

    Attributes:
        master: list of FP32 master parameters, in the order of ``model.parameters()``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
        scaler: DynamicLossScaler | None = None,
        keep_master: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if scaler is not None and not isinstance(scaler, DynamicLossScaler):
            raise TypeError(f"scaler must be a DynamicLossScaler or None, got {type(scaler).__name__}")
        if not isinstance(keep_master, bool):
            raise TypeError(f"keep_master must be a bool, got {type(keep_master).__name__}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        self.optimizer = make_optimizer(self.master)
        self.scaler = scaler
        self.keep_master = keep_master

    def __call__(self, loss: torch.Tensor) -> dict[str, float]:
        S = self.scaler.scale if self.scaler is not None else 1.0
        (loss.float() * S).backward()  # 1. every gradient is multiplied by S
        found_inf = False
        inv = float(torch.tensor(1.0 / S, dtype=torch.float32))  # GradScaler: FP32 reciprocal of S
        for p, w in zip(self.params, self.master, strict=True):  # 2. FP32 gradients, unscaled
            w.grad = None if p.grad is None else p.grad.float() * inv
            if w.grad is not None:
                found_inf |= not bool(torch.isfinite(w.grad).all())
            p.grad = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(found_inf)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            found_inf = bool(flag.item())
        if not found_inf:
            self.optimizer.step()  # 3. update the FP32 masters
            with torch.no_grad():  # 4. round the masters into the model
                for p, w in zip(self.params, self.master, strict=True):
                    p.copy_(w)
                    if not self.keep_master:  # ablation: forget the bits below the model's precision
                        w.copy_(p)
        self.optimizer.zero_grad(set_to_none=True)
        out = {"loss_scale": S, "skipped": float(found_inf)}
        if self.scaler is not None:
            self.scaler.update(found_inf)  # 5.
        return out
