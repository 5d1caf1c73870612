"""A noisy classifier ``p(y | x_t, t)`` for the 8x8 digits and classifier guidance of an unconditional model.

Chapter: "Guidance" (``chapters/guidance.ipynb``).

Bayes' rule on scores, ``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``, turns any unconditional
model into a conditional one given the gradient of a classifier of the *noisy* ``x_t`` (trained at every ``t``:
a classifier of clean images says nothing useful about ``x_t`` at large ``sigma_t``). In eps form (Dhariwal and
Nichol 2021, eq. 14 / algorithm 2, with ``score = -eps / sigma``), the guidance scale ``gamma`` sharpens the
classifier to ``p(y | x_t)^gamma``:

    eps_hat(x_t, t, y) = eps_theta(x_t, t) - gamma sigma_t grad_x log p_phi(y | x_t, t)

Train the shipped classifier (VP-SDE of the digits model, ``t`` uniform on ``[t_eps, 1]``, cross-entropy):

    python -m lib.diffusion.classifier --steps 4000 --threads 1 --out weights/digits_noisy_classifier.safetensors

References: Sohl-Dickstein et al. 2015 (appendix on conditioning); Song et al., ICLR 2021 (section 5,
controllable generation); Dhariwal and Nichol, "Diffusion Models Beat GANs on Image Synthesis", 2021.

Glossary
--------
p_phi(y | x_t, t)   the noisy classifier: :class:`NoisyClassifier`, logits ``(B, K)``
gamma               classifier-guidance scale (Dhariwal and Nichol's ``s``); 0 = unguided, 1 = plain Bayes
sigma_t, alpha_t    the schedule's noise and signal scales at ``t``
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from lib.diffusion.guidance import check_scale
from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import VPSDE, Schedule, bcast
from lib.nn.unet import MLPConfig, TimeMLP
from lib.utils import seed_everything

DEFAULT_CLASSIFIER = WEIGHTS_DIR / "digits_noisy_classifier.safetensors"


def check_labels(y: object, num_classes: int, n: int | None = None) -> torch.Tensor:
    """``y`` (an int or an integer tensor ``(n,)``) as a long tensor, checked to lie in ``0..num_classes-1``."""
    if isinstance(y, numbers.Integral) and not isinstance(y, bool):
        y = torch.tensor([int(y)])
    if not torch.is_tensor(y) or y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise TypeError(f"y must be an int or an integer tensor of shape (batch,), got {getattr(y, 'shape', y)!r}")
    if n is not None and y.shape[0] not in (1, n):
        raise ValueError(f"y must have 1 or {n} labels, got {y.shape[0]}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y must hold labels in 0..{num_classes - 1}, got values in {int(y.min())}..{int(y.max())}")
    return y.long()


@dataclass(frozen=True)
class NoisyClassifierConfig:
    """The noisy digits classifier and its training."""

    hidden: int = 256
    """Width of the TimeMLP trunk."""
    depth: int = 3
    """Residual blocks of the trunk."""
    time_dim: int = 128
    """Time-embedding width."""
    num_classes: int = 10
    """Number of classes K."""
    steps: int = 4000
    """Optimisation steps (batch of ``x_t`` at uniform ``t``, Adam, cosine decay)."""
    batch_size: int = 128
    """Minibatch size."""
    lr: float = 2e-3
    """Adam learning rate."""
    beta_min: float = 0.1
    """VP-SDE beta(0) (that of the diffusion model it guides)."""
    beta_max: float = 20.0
    """VP-SDE beta(1)."""
    t_eps: float = 1e-3
    """Smallest training time."""
    seed: int = 0
    """Seed of initialisation, batches and noise."""

    def __post_init__(self) -> None:
        if min(self.hidden, self.depth, self.time_dim, self.steps, self.batch_size) < 1 or self.num_classes < 2:
            raise ValueError("hidden, depth, time_dim, steps, batch_size must be >= 1 and num_classes >= 2")

    @property
    def sde(self) -> VPSDE:
        return VPSDE(self.beta_min, self.beta_max)


class NoisyClassifier(nn.Module):
    """``(x_t (B, 1, 8, 8), t (B,)) -> logits (B, K)``: a :class:`~lib.nn.unet.TimeMLP` trunk (its 64-wide
    read-out as features, time added in every block) and a linear head."""

    def __init__(self, config: NoisyClassifierConfig = NoisyClassifierConfig()) -> None:  # noqa: B008
        super().__init__()
        self.config = config
        self.trunk = TimeMLP(MLPConfig(dim=64, hidden=config.hidden, depth=config.depth, time_dim=config.time_dim))
        self.head = nn.Linear(64, config.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"x must have shape (B, 1, 8, 8), got {tuple(x.shape)}")
        return self.head(self.trunk(x.reshape(x.shape[0], 64), t))  # (B, K)


def log_prob_grad(classifier: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x log p_phi(y | x_t, t)`` for each example, shape of ``x`` (works inside ``torch.no_grad``)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logp = torch.log_softmax(classifier(x, t), dim=1)  # (B, K)
        picked = logp.gather(1, y.to(x.device).expand(x.shape[0])[:, None]).sum()
        return torch.autograd.grad(picked, x)[0]


def classifier_guided_denoiser(
    denoiser: Denoiser, classifier: nn.Module, y: int | torch.Tensor, gamma: float, schedule: Schedule,
    num_classes: int | None = None,
) -> Denoiser:  # fmt: skip
    """An ``eps`` :class:`~lib.diffusion.predictions.Denoiser` for the core samplers:
    ``eps_hat - gamma sigma_t grad_x log p_phi(y | x_t, t)`` (Dhariwal and Nichol), ``denoiser`` unconditional
    (any prediction), ``classifier(x_t, t) -> logits (B, K)``, ``y`` one label or one per example in ``0..K-1``
    (``K = num_classes``, default ``classifier.config.num_classes``). Cost per call: one model forward plus one
    classifier forward and backward."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a lib.diffusion.predictions.Denoiser, got {type(denoiser).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    gamma = check_scale("gamma", gamma)
    if num_classes is None:
        num_classes = getattr(getattr(classifier, "config", None), "num_classes", None)
        if num_classes is None:
            raise TypeError("num_classes must be given: the classifier has no config.num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y = check_labels(y, num_classes)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_labels(y, num_classes, x.shape[0])
        _, eps = denoiser.x0_eps(x, t, schedule)
        sigma = bcast(schedule.sigma(t.expand(x.shape[0])), x)
        return eps - gamma * sigma * log_prob_grad(classifier, x, t.expand(x.shape[0]), y)

    return Denoiser(guided, "eps")


@dataclass
class TrainedNoisyClassifier:
    """A trained :class:`NoisyClassifier` (eval mode) with its config, history and checkpoint metadata."""

    model: NoisyClassifier
    config: NoisyClassifierConfig
    history: object | None = None
    metadata: dict | None = None


def noisy_accuracy(classifier: nn.Module, x0: torch.Tensor, y: torch.Tensor, t: float, schedule: Schedule,
                   generator: torch.Generator | None = None) -> float:  # fmt: skip
    """Accuracy of ``classifier`` on ``x_t = alpha_t x0 + sigma_t eps`` at one time ``t``."""
    with torch.no_grad():
        x_t, _ = schedule.perturb(x0, t, generator)
        tt = torch.full((x0.shape[0],), float(t))
        return float((classifier(x_t, tt).argmax(1) == y).float().mean())


def train_noisy_classifier(config: NoisyClassifierConfig = NoisyClassifierConfig()) -> TrainedNoisyClassifier:  # noqa: B008
    """Cross-entropy on ``(x_t, y)`` from the digits train split at ``t ~ U[t_eps, 1]``, through ``lib.train``."""
    from lib.data.digits import load_digits
    from lib.diffusion.timesteps import TimeSampler
    from lib.train import train

    seed_everything(config.seed, threads=None, deterministic=False)  # initialisation
    model, data, sde = NoisyClassifier(config), load_digits("train"), config.sde
    g = torch.Generator().manual_seed(config.seed + 1)
    t_sampler = TimeSampler(t_min=config.t_eps)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(data), (config.batch_size,), generator=g)
        t = t_sampler(config.batch_size, g)
        x_t, _ = sde.perturb(data.x[idx], t, g)
        return x_t, t, data.y[idx]

    def loss_fn(m: nn.Module, b) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0], b[1]), b[2])

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    hist = train(model, loss_fn, batch, config.steps, optimizer=opt, scheduler=sched,
                 log_every=max(1, config.steps // 200), desc="noisy classifier")  # fmt: skip
    return TrainedNoisyClassifier(model.eval(), config, hist)


def load_noisy_classifier(path: str | Path = DEFAULT_CLASSIFIER) -> TrainedNoisyClassifier:
    """Load a checkpoint written by this module's command (sha256 verified); the model in eval mode."""
    state, meta = load_checkpoint(path)
    config = NoisyClassifierConfig(**meta["config"])
    model = NoisyClassifier(config)
    model.load_state_dict(state)
    return TrainedNoisyClassifier(model.eval(), config, None, meta)


EVAL_TIMES = (0.001, 0.1, 0.3, 0.5, 0.7, 0.9)
"""Times at which the command records test accuracy in the checkpoint's sidecar."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the noisy digits classifier p(y | x_t, t)")
    for f in dataclasses.fields(NoisyClassifierConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--threads", type=int, default=2)
    args = vars(parser.parse_args(argv))
    out, threads = args.pop("out"), args.pop("threads")
    config = NoisyClassifierConfig(**args)
    seed_everything(config.seed, threads=threads)
    trained = train_noisy_classifier(config)
    from lib.data.digits import load_digits

    test, g = load_digits("test"), torch.Generator().manual_seed(1234)
    acc = {str(t): noisy_accuracy(trained.model, test.x, test.y, t, config.sde, g) for t in EVAL_TIMES}
    command = "python -m lib.diffusion.classifier " + " ".join(sys.argv[1:] if argv is None else argv)
    extra = {"test_accuracy_at_t": acc, "final_loss_mean_last_50": trained.history.last("loss", 50),
             "train_seconds": trained.history.seconds}  # fmt: skip
    path = save_checkpoint(out, trained.model.state_dict(), command=command, seed=config.seed,
                           config=dataclasses.asdict(config), extra=extra)  # fmt: skip
    print(f"saved {path} (test accuracy at t: {acc}, {trained.history.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
