"""The chapter's experiment: one small classifier on the digits, trained in several precisions.

All runs of one comparison start from the same FP32 initialisation, see the same full-batch data and
use the same optimizer and hyper-parameters; only the number formats differ (:data:`MODES`):

``"fp32"``         FP32 everywhere (the reference);
``"fp16"``         pure FP16: parameters, activations, gradients, loss, optimizer state and update in
                   FP16, no loss scaling (what ``model.half()`` gives you);
``"fp16_master"``  the same FP16 forward/backward, plus dynamic loss scaling and FP32 master weights
                   (:class:`~lib.precision.master.MasterWeightStep`);
``"bf16"``         FP32 parameters with ``torch.autocast(dtype=torch.bfloat16)`` (no scaler);
``"fp16_master_unscaled"``  ablation: FP32 master weights but no loss scaling (``S = 1``);
``"fp8"``          FP32 parameters, every linear layer's product with FP8-rounded operands (E4M3 forward,
                   E5M2 output gradients) and delayed per-tensor scaling (:mod:`lib.precision.fp8`);
``"fp8_unscaled"`` ablation: the same FP8 rounding without scaling (``s = 1``);
``"fp16_no_master"`` ablation of the master copy alone: FP16 model, optimizer and its state in FP32,
                   no loss scaling, but the FP32 weights are reset to the rounded FP16 weights after
                   every step (``MasterWeightStep(keep_master=False)``), so updates are swamped as in
                   pure FP16 while the optimizer state is the same as in ``fp16_master_unscaled``.

The ablations of the chapter change the configuration, not the mode: Adam's ``eps``, SGD instead of
Adam, a small ``loss_weight`` (gradients in the underflow zone), fine-tuning at a small learning rate
(updates in the swamping zone). :mod:`lib.precision.study` runs all of them over several seeds.

Every run goes through :func:`lib.train.train`. Chapter: "Mixed precision training".

Glossary
--------
N            number of training images (full-batch gradient descent: the mean loss over all N)
final_loss   FP32 cross-entropy of the final weights on the whole training set (without loss_weight)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib.precision.master import MasterWeightStep
from lib.precision.scaler import DynamicLossScaler
from lib.train import History, train
from lib.utils import seed_everything

MODES = ("fp32", "fp16", "fp16_master", "bf16", "fp16_master_unscaled")
"""The five modes of the chapter's main comparison."""
FP8_MODES = ("fp8", "fp8_unscaled")
"""The emulated FP8 modes (slower on a CPU: every product rounds its operands)."""
ABLATION_MODES = ("fp16_no_master",)
"""Modes that exist only for an ablation (the swamping arm of the study)."""


@dataclass(frozen=True)
class DigitsRunConfig:
    """Hyper-parameters shared by the runs of one comparison."""

    hidden: int = 64
    """Width of the hidden layers."""
    depth: int = 2
    """Number of hidden layers."""
    steps: int = 200
    """Full-batch gradient steps (Adam: one step = one update of all weights)."""
    optimizer: str = "adam"
    """``"adam"`` (betas (0.9, 0.999)) or ``"sgd"`` (with ``momentum``)."""
    lr: float = 1e-3
    """Learning rate."""
    eps: float = 1e-8
    """Adam's epsilon (torch's default 1e-8 rounds to 0 in FP16; the chapter's ablation uses 1e-4)."""
    momentum: float = 0.9
    """SGD momentum."""
    loss_weight: float = 1.0
    """Multiplies the loss (and so every gradient). A small weight, like the mean over millions of
    elements of a large model's loss, pushes the gradients into FP16's underflow zone."""
    init_scale: float = 2.0**16
    """Initial loss scale of the ``fp16_master`` run."""
    growth_interval: int = 100
    """Finite steps before the loss scale doubles (GradScaler's default is 2000; ours is short so the
    chapter's 200 steps show growth)."""
    seed: int = 0
    """Seed of the initialisation."""


def make_mlp(cfg: DigitsRunConfig) -> torch.nn.Sequential:
    """MLP ``(B, 1, 8, 8) -> (B, 10)`` logits: Flatten, ``depth`` x (Linear, ReLU), Linear (seeded)."""
    seed_everything(cfg.seed, threads=None, deterministic=False)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    width = 64
    for _ in range(cfg.depth):
        layers += [torch.nn.Linear(width, cfg.hidden), torch.nn.ReLU()]
        width = cfg.hidden
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def cross_entropy(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the batch.

    The images are cast to the model's parameter dtype (an FP16 model computes in FP16); the loss, a
    softmax and a mean over the batch, is computed in FP32 from the logits, as autocast does.
    """
    x, y = batch  # (B, 1, 8, 8), (B,)
    dtype = next(model.parameters()).dtype
    logits = model(x.to(dtype))  # (B, 10) in the model's dtype
    return F.cross_entropy(logits.float(), y)


def full_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FP32 mean cross-entropy of ``model``'s weights (cast to FP32) on ``(x, y)``."""
    ref = make_like_fp32(model)
    with torch.no_grad():
        return float(F.cross_entropy(ref(x.float()), y))


def make_like_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """An FP32 copy of ``model``."""
    import copy

    return copy.deepcopy(model).float()


@dataclass
class PrecisionRun:
    """Result of :func:`train_digits`."""

    mode: str
    history: History
    """The training loop's history (``metrics["loss"]`` is the full-batch loss in the run's precision)."""
    final_loss: float
    """FP32 training-set loss of the final weights."""
    model: torch.nn.Module
    """The trained model (FP16 parameters for the FP16 runs)."""
    skipped_steps: int = 0
    """Steps skipped by the loss scaler (``fp16_master``)."""
    optimizer: torch.optim.Optimizer | None = None
    """The optimizer (over the FP32 masters for the ``fp16_master*`` modes), for inspecting its state."""


def train_digits(
    mode: str,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DigitsRunConfig | None = None,
    init: dict[str, torch.Tensor] | None = None,
) -> PrecisionRun:
    """Train :func:`make_mlp` full-batch on ``(x, y)`` in precision ``mode`` (one of :data:`MODES`).

    Args:
        mode: one of :data:`MODES`, :data:`FP8_MODES` or :data:`ABLATION_MODES`.
        x: images ``(N, 1, 8, 8)`` float32; y: labels ``(N,)`` int64.
        cfg: hyper-parameters (default :class:`DigitsRunConfig`).
        init: FP32 ``state_dict`` to start from (fine-tuning) instead of the seeded initialisation.
    """
    if mode not in MODES + FP8_MODES + ABLATION_MODES:
        raise ValueError(f"mode must be one of {MODES + FP8_MODES + ABLATION_MODES}, got {mode!r}")
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (N, 1, 8, 8) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    cfg = cfg or DigitsRunConfig()
    model = make_mlp(cfg)
    if init is not None:
        model.load_state_dict(init)
    if not cfg.loss_weight > 0:
        raise ValueError(f"cfg.loss_weight must be > 0, got {cfg.loss_weight!r}")
    if cfg.optimizer == "adam":
        opt = lambda params: torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps)
    elif cfg.optimizer == "sgd":
        opt = lambda params: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    else:
        raise ValueError(f"cfg.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    kwargs: dict = {}
    scaler = None
    if mode.startswith("fp16"):
        model = model.half()
    if mode.startswith("fp8"):
        from lib.precision.fp8 import to_fp8

        to_fp8(model, "delayed" if mode == "fp8" else "none")
    if mode == "fp16_master":
        scaler = DynamicLossScaler(cfg.init_scale, growth_interval=cfg.growth_interval)
    if mode.startswith("fp16_master") or mode == "fp16_no_master":
        kwargs["step_fn"] = MasterWeightStep(model, opt, scaler, keep_master=mode != "fp16_no_master")
        optimizer = kwargs["step_fn"].optimizer
    else:
        optimizer = kwargs["optimizer"] = opt(model.parameters())
    if mode == "bf16":
        kwargs["autocast_dtype"] = torch.bfloat16
    w = cfg.loss_weight
    loss_fn = cross_entropy if w == 1.0 else lambda m, b: w * cross_entropy(m, b)
    hist = train(model, loss_fn, [(x, y)], cfg.steps, stop_on_nan=True, desc=mode, **kwargs)
    skipped = scaler.skipped_steps if scaler is not None else 0
    return PrecisionRun(mode, hist, full_loss(model, x, y), model, skipped_steps=skipped, optimizer=optimizer)


@dataclass(frozen=True)
class GradientSample:
    """FP32 gradients of one backward pass, flattened."""

    weights: torch.Tensor
    """Gradients of all parameters, ``(P,)`` float32."""
    activations: torch.Tensor
    """Gradients of the loss w.r.t. every layer's output, ``(A,)`` float32."""


def gradient_sample(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> GradientSample:
    """Parameter and activation gradients of :func:`cross_entropy` for an FP32 copy of ``model``."""
    ref = make_like_fp32(model)
    acts: list[torch.Tensor] = []

    def keep_grad(_module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        out.register_hook(lambda g: acts.append(g.detach().flatten()))

    hooks = [m.register_forward_hook(keep_grad) for m in ref if isinstance(m, torch.nn.Linear | torch.nn.ReLU)]
    try:
        cross_entropy(ref, (x.float(), y)).backward()
    finally:
        for h in hooks:
            h.remove()
    weights = torch.cat([p.grad.detach().flatten() for p in ref.parameters()])
    return GradientSample(weights=weights, activations=torch.cat(acts))


def underflow_fraction(g: torch.Tensor, dtype: torch.dtype = torch.float16) -> float:
    """Fraction of the non-zero entries of ``g`` that round to zero when cast to ``dtype``."""
    if not isinstance(g, torch.Tensor) or not g.is_floating_point():
        raise TypeError("g must be a floating-point tensor")
    nz = g[g != 0]
    if nz.numel() == 0:
        return 0.0
    return float((nz.to(dtype) == 0).float().mean())
