"""What ``torch.autocast`` does to each op: run it in low precision, keep it in FP32, or leave it.

Autocast keeps three lists per device type: ops that gain from low precision (matrix products,
convolutions) are cast to the autocast dtype; numerically sensitive ops (losses, norms, ``exp``/``log``
families, large reductions on CUDA) are run in FP32; everything else runs in the dtype of its inputs.
:func:`autocast_table` observes the output dtype of a few ops, given FP32 inputs, on this machine's
torch (the lists differ between CPU and CUDA and between torch versions). :class:`AmpStep` is the canonical
FP16 AMP training step (autocast + ``torch.amp.GradScaler``: scale, backward, unscale, clip, step,
update) with gradient accumulation and a checkpointable state, as a ``step_fn`` for :func:`lib.train.train`.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "matmul": lambda a, w: a @ w,
    "linear": lambda a, w: F.linear(a, w),
    "conv2d": lambda a, w: F.conv2d(a[None, None], w[None, None]),
    "bmm": lambda a, w: torch.bmm(a[None], w[None]),
    "add": lambda a, w: a + w,
    "relu": lambda a, w: F.relu(a),
    "exp": lambda a, w: torch.exp(a),
    "sum": lambda a, w: a.sum(),
    "softmax": lambda a, w: torch.softmax(a, -1),
    "log_softmax": lambda a, w: torch.log_softmax(a, -1),
    "layer_norm": lambda a, w: F.layer_norm(a, a.shape[-1:]),
    "cross_entropy": lambda a, w: F.cross_entropy(a, torch.zeros(a.shape[0], dtype=torch.long)),
    "mse_loss": lambda a, w: F.mse_loss(a, w),
}
"""The ops of the table: ``op(a, w)`` with ``a, w`` square FP32 matrices."""


def autocast_table(dtype: torch.dtype = torch.bfloat16, device_type: str = "cpu") -> dict[str, str]:
    """How ``torch.autocast(device_type, dtype)`` treats each op of :data:`OPS`, observed.

    Each op is run on FP32 inputs and on inputs already in ``dtype``; the verdict is ``"lower"``
    (FP32 in, ``dtype`` out), ``"fp32"`` (``dtype`` in, FP32 out) or ``"as input"`` (dtype follows
    the inputs).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    a = torch.randn(4, 4, device=device_type)
    w = torch.randn(4, 4, device=device_type)
    table = {}
    with torch.autocast(device_type, dtype=dtype):
        for name, op in OPS.items():
            from_fp32, from_low = op(a, w).dtype, op(a.to(dtype), w.to(dtype)).dtype
            table[name] = "lower" if from_fp32 == dtype else "fp32" if from_low == torch.float32 else "as input"
    return table


class AmpStep:
    """``step_fn`` for :func:`lib.train.train`: the canonical FP16 AMP step with gradient accumulation.

    Call :func:`lib.train.train` with ``autocast_dtype=torch.float16`` (the forward runs under autocast)
    and one *micro-batch* per training-loop step; every ``accumulation_steps`` calls make one optimizer
    step. The recipe of PyTorch's AMP examples, in order:

    1. ``scaler.scale(loss / K).backward()``: gradients of ``S * loss / K`` accumulate in ``.grad``;
    2. after ``K`` micro-batches, ``scaler.unscale_(optimizer)``: divide by ``S`` in place (and record
       inf/NaN), so that clipping sees the true gradient norm;
    3. clip the global gradient norm (optional);
    4. ``scaler.step(optimizer)``: the update, skipped if any gradient was inf/NaN;
    5. ``scaler.update()``: back off or grow ``S``; then zero the gradients.

    Args:
        optimizer: over the model's FP32 parameters (autocast keeps them in FP32: they are the masters).
        scaler: a ``torch.amp.GradScaler``.
        accumulation_steps: ``K``, micro-batches per optimizer step (the loss is divided by ``K`` so the
            accumulated gradient is the mean over the ``K`` micro-batches).
        grad_clip: clip the global gradient norm to this value after unscaling (``None``: no clipping).

    Logged per call: ``loss_scale`` (``S`` after this call), ``optimizer_step`` (1 when this call ended
    an accumulation cycle), ``skipped`` (1 when that step was skipped because of inf/NaN gradients).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        accumulation_steps: int = 1,
        grad_clip: float | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
        self.optimizer, self.scaler = optimizer, scaler
        self.K, self.grad_clip = accumulation_steps, grad_clip
        self.micro_step = 0  # micro-batches seen so far

    def __call__(self, loss: torch.Tensor) -> dict[str, float]:
        self.scaler.scale(loss / self.K).backward()  # 1. scaled gradients accumulate in .grad
        self.micro_step += 1
        out = {"optimizer_step": 0.0, "skipped": 0.0}
        if self.micro_step % self.K == 0:
            self.scaler.unscale_(self.optimizer)  # 2. true gradients (inf/NaN recorded)
            if self.grad_clip is not None:  # 3. clip the unscaled gradients
                params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # 4. skipped if inf/NaN
            self.scaler.update()  # 5. back off (after a skip) or grow S
            self.optimizer.zero_grad(set_to_none=True)
            out = {"optimizer_step": 1.0, "skipped": float(self.scaler.get_scale() < before)}
        return {"loss_scale": float(self.scaler.get_scale()), **out}

    def state_dict(self) -> dict:
        """What a checkpoint needs besides the model: the optimizer, the scaler (``S`` and its growth
        tracker) and the position in the accumulation cycle."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "micro_step": self.micro_step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (into an ``AmpStep`` over a freshly built optimizer and scaler)."""
        missing = {"optimizer", "scaler", "micro_step"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state["micro_step"])
