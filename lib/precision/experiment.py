"""The chapter's experiment: one small classifier on the digits, trained in four precisions.

All runs start from the same FP32 initialisation, see the same full-batch data and use the same
optimizer and hyper-parameters; only the number formats differ:

``"fp32"``         FP32 everywhere (the reference);
``"fp16"``         pure FP16: parameters, activations, gradients, loss, optimizer state and update in
                   FP16, no loss scaling (what ``model.half()`` gives you);
``"fp16_master"``  the same FP16 forward/backward, plus dynamic loss scaling and FP32 master weights
                   (:class:`~lib.precision.master.MasterWeightStep`);
``"bf16"``         FP32 parameters with ``torch.autocast(dtype=torch.bfloat16)`` (no scaler);
``"fp16_master_unscaled"``  ablation: FP32 master weights but no loss scaling (``S = 1``).

Every run goes through :func:`lib.train.train`. Chapter: "Mixed precision training".

Glossary
--------
N            number of training images (full-batch gradient descent: the mean loss over all N)
final_loss   FP32 cross-entropy of the final weights on the whole training set
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


@dataclass(frozen=True)
class DigitsRunConfig:
    """Hyper-parameters shared by the four runs."""

    hidden: int = 64
    """Width of the hidden layers."""
    depth: int = 2
    """Number of hidden layers."""
    steps: int = 200
    """Full-batch gradient steps (Adam: one step = one update of all weights)."""
    optimizer: str = "adam"
    """``"adam"`` (torch defaults: betas (0.9, 0.999), eps 1e-8) or ``"sgd"`` (momentum 0.9)."""
    lr: float = 1e-3
    """Learning rate."""
    init_scale: float = 2.0**16
    """Initial loss scale of the ``fp16_master`` run."""
    growth_interval: int = 100
    """Finite steps before the loss scale doubles (GradScaler's default is 2000; ours is short so the
    chapter's 300 steps show growth)."""
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


def train_digits(mode: str, x: torch.Tensor, y: torch.Tensor, cfg: DigitsRunConfig | None = None) -> PrecisionRun:
    """Train :func:`make_mlp` full-batch on ``(x, y)`` in precision ``mode`` (one of :data:`MODES`).

    Args:
        mode: ``"fp32"``, ``"fp16"``, ``"fp16_master"``, ``"bf16"`` or ``"fp16_master_unscaled"``.
        x: images ``(N, 1, 8, 8)`` float32; y: labels ``(N,)`` int64.
        cfg: hyper-parameters (default :class:`DigitsRunConfig`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (N, 1, 8, 8) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    cfg = cfg or DigitsRunConfig()
    model = make_mlp(cfg)
    if cfg.optimizer == "adam":
        opt = lambda params: torch.optim.Adam(params, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = lambda params: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)
    else:
        raise ValueError(f"cfg.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    kwargs: dict = {}
    scaler = None
    if mode.startswith("fp16"):
        model = model.half()
    if mode == "fp16_master":
        scaler = DynamicLossScaler(cfg.init_scale, growth_interval=cfg.growth_interval)
    if mode.startswith("fp16_master"):
        kwargs["step_fn"] = MasterWeightStep(model, opt, scaler)
    else:
        kwargs["optimizer"] = opt(model.parameters())
    if mode == "bf16":
        kwargs["autocast_dtype"] = torch.bfloat16
    hist = train(model, cross_entropy, [(x, y)], cfg.steps, stop_on_nan=True, desc=mode, **kwargs)
    return PrecisionRun(
        mode, hist, full_loss(model, x, y), model, skipped_steps=scaler.skipped_steps if scaler is not None else 0
    )


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
