"""Guidance measured on the 8x8 digits: classifier-free guidance (CFG) sweeps over ``w``, classifier guidance (CG)
sweeps over ``gamma``, the guidance interval, autoguidance and an equal-cost timing, judged by the independent
classifier of :mod:`lib.metrics` (not the guidance classifier).

Chapter: "Guidance" (``chapters/guidance.ipynb``). The command writes the chapter's results files:

    python -m lib.diffusion.guidance_study all --threads 1 --out-dir results/guidance

References: Ho and Salimans 2022 (CFG, the FID/IS trade-off over ``w``); Dhariwal and Nichol 2021 (CG);
Kynkaanniemi et al., "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in
Diffusion Models", 2024; Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself", 2024.

Glossary
--------
w            CFG weight (Ho and Salimans): ``(1 + w) eps(x, y) - w eps(x, null)``; ``w = 0`` the conditional model
gamma        CG scale: ``eps(x) - gamma sigma_t grad log p_phi(y | x_t, t)``
accuracy     share of samples the independent digits classifier labels as the requested class
fd           classifier-Frechet distance of the ``n`` samples (clamped to [-1, 1]) to the 450 test images
diversity    mean pairwise Euclidean distance between samples of the same requested class, in the independent
             classifier's 64-d feature space (inputs clamped), averaged over the 10 classes
saturation   share of pixels outside the data range [-1, 1] by more than half a grey level (1/16), before clamping
interval     guidance only where ``sigma_t / alpha_t`` is in ``(lo, hi]`` (the conditional model elsewhere)

Results files (``lib.utils.save_results``: ``{"provenance": {..., "command"}, "results": ...}``), ``results`` =
``{"config": StudyConfig as a dict, "reference": REF, "rows": [ROW, ...], "bars": {...}}`` where

    REF = {"fd_floor": [3 floats: n real train images vs test], "fd_floor_mean", "fd_floor_std",
           "test_diversity", "train_diversity" (the same statistic on real images), "n_test": 450}
    ROW = {"method": "cfg" | "cg" | "interval" | "autoguidance", "model": "long" | "brief" | "uncond",
           "sampler": "ddim" | "ddpm", "scale_name": "w" | "gamma", "scale": float, "steps": int,
           "per_seed": {metric: [one float per seed]}, "mean": {metric: float}, "std": {metric: float},
           "low_saturation": bool}                   (metric in accuracy, fd, diversity, saturation;
                                                      std: sample std over seeds, ddof = 1)

``cfg_sweep.json`` (bars: ``best_w``, ``fd_w0``, ``fd_best``, ``fd_w5`` as ``[mean, std]``, ``acc_best``,
``fd_drop_beyond_spread`` (mean drop > sum of the two stds), ``fd_w5_ge_2x_best``, ``acc_best_ge_0995``),
``cg_sweep.json`` (bars: ``acc_gamma0``, ``best_gamma`` (highest DDIM accuracy), ``acc_best``, ``acc_ge_095``,
``first_gamma_ge_095``), ``extensions.json``
(interval rows with ``"interval": [lo, hi]``, autoguidance rows with ``"guide": "brief"``), ``cost.json``
(``results`` = ``{"config", "reference", "steps", "scales", "seconds_per_sample": {name: float},
"times": {name: [s, ...]}, "work_per_step": {name: str}, "ratio": {name: float}}``, names conditional, cfg,
unconditional, cg; ``ratio``: median over timing rounds of the time over the conditional model's).
Seed ``i`` draws ``x_T`` (and the ancestral noise) from
``Generator().manual_seed(1000 + i)``: every scale, method and model sees the same noise (common random numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.checkpoint import WEIGHTS_DIR
from lib.diffusion import samplers
from lib.diffusion.classifier import check_labels, check_scale, classifier_guided_denoiser, load_noisy_classifier
from lib.diffusion.guidance import combine, guided_denoiser
from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import VPSDE, Schedule, bcast
from lib.diffusion.train_digits import load_digits_diffusion
from lib.utils import save_results, seed_everything

METRICS = ("accuracy", "fd", "diversity", "saturation")


@dataclass(frozen=True)
class StudyConfig:
    """What the sweeps run."""

    n: int = 450
    """Samples per run (labels ``i mod 10``: 45 per class), the size of the test set."""
    seeds: int = 3
    """Seeds per setting (starting noise and sampler noise; the same for every scale)."""
    steps: int = 50
    """DDIM (deterministic, eta = 0) steps."""
    sde_steps: int = 100
    """Ancestral (DDPM posterior) steps."""
    ws: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
    """CFG weights."""
    gammas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    """CG scales."""
    interval: tuple[float, float] = (0.28, 5.42)
    """Guidance interval in ``sigma/alpha`` (Kynkaanniemi et al.'s EDM2 interval)."""
    saturation_margin: float = 0.0625
    """A pixel is saturated when ``|x| > 1 + margin``: half a step of the data's 17 grey levels, so that pixels
    which would round back onto the data's levels (the last step's ``sigma ~ 0.01`` jitter around the -1
    background) do not count."""
    saturation_threshold: float = 0.05
    """Diversity is compared only where saturation is at most this."""
    long: str = "weights/digits_cond_mlp.safetensors"
    """The long-trained conditional model (relative paths: to the working directory, else the repo root)."""
    brief: str = "weights/digits_cond_mlp_brief.safetensors"
    """The briefly trained conditional model (also autoguidance's weak model)."""
    uncond: str = "weights/digits_vp_mlp.safetensors"
    """The SDE chapter's unconditional model, guided by the classifier."""
    classifier: str = "weights/digits_noisy_classifier.safetensors"
    """The noisy classifier of classifier guidance."""

    def __post_init__(self) -> None:
        if self.n < 20 or self.seeds < 2 or min(self.steps, self.sde_steps) < 1:
            raise ValueError("need n >= 20 (2 per class), seeds >= 2 and steps >= 1")
        for v in (*self.ws, *self.gammas, *self.interval):
            check_scale("ws/gammas/interval", v)


def _path(p: str) -> Path:
    return Path(p) if Path(p).is_absolute() or Path(p).exists() else WEIGHTS_DIR.parent / p


def interval_denoiser(guided: Denoiser, plain: Denoiser, schedule: Schedule, lo: float, hi: float) -> Denoiser:
    """``guided`` where ``lo < sigma_t / alpha_t <= hi``, ``plain`` elsewhere (both read as eps); only the
    denoiser that is needed runs when the whole batch is on one side."""
    lo, hi = check_scale("lo", lo), check_scale("hi", hi)

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r = schedule.sigma(t) / schedule.alpha(t)
        inside = (r > lo) & (r <= hi)
        if bool(inside.all()) or not bool(inside.any()):
            return (guided if bool(inside.all()) else plain).x0_eps(x, t, schedule)[1]
        return torch.where(bcast(inside, x), guided.x0_eps(x, t, schedule)[1], plain.x0_eps(x, t, schedule)[1])

    return Denoiser(f, "eps")


def autoguided_denoiser(strong, weak, w: float, prediction: str = "eps", **cond) -> Denoiser:
    """Autoguidance (Karras et al. 2024): ``(1 + w) strong(x, y) - w weak(x, y)``, a weaker model of the same
    task in place of the unconditional one; two forwards per call."""
    w = check_scale("w", w)
    return Denoiser(lambda x, t: combine(strong(x, t, **cond), weak(x, t, **cond), w=w), prediction)


def _reference(n: int, x_test: torch.Tensor, y_test: torch.Tensor, clf) -> dict:
    from lib.data.digits import load_digits
    from lib.metrics import classifier_frechet_distance

    train, g = load_digits("train"), torch.Generator().manual_seed(0)
    floor = [classifier_frechet_distance(train.x[torch.randperm(len(train), generator=g)[:n]], x_test)
             for _ in range(3)]  # fmt: skip
    idx = torch.randperm(len(train), generator=g)[:n]
    return {"fd_floor": floor, "fd_floor_mean": statistics.mean(floor), "fd_floor_std": statistics.stdev(floor),
            "test_diversity": diversity(x_test, y_test, clf), "n_test": len(x_test),
            "train_diversity": diversity(train.x[idx], train.y[idx], clf)}  # fmt: skip


def diversity(x: torch.Tensor, y: torch.Tensor, clf) -> float:
    """Mean over classes (with >= 2 members) of the mean distance between distinct pairs of same-class
    feature vectors of the independent classifier ``clf``."""
    with torch.no_grad():
        f = clf.features(x.clamp(-1, 1)).double()
    return statistics.mean(float(torch.nn.functional.pdist(f[y == k]).mean()) for k in y.unique() if (y == k).sum() > 1)


def sample_metrics(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, clf, margin: float = 0.0625) -> dict:
    """Accuracy, FD to ``x_test``, within-class diversity and saturation (share of ``|x| > 1 + margin``) of
    samples ``x (n, 1, 8, 8)`` with requested labels ``y (n,)``."""
    from lib.metrics import classifier_frechet_distance

    with torch.no_grad():
        acc = float((clf(x.clamp(-1, 1)).argmax(1) == y).float().mean())
    return {"accuracy": acc, "fd": classifier_frechet_distance(x, x_test, clf), "diversity": diversity(x, y, clf),
            "saturation": float((x.abs() > 1 + margin).float().mean())}  # fmt: skip


class Study:
    """Models, data and seeds shared by every sweep; :meth:`run` samples one setting at every seed."""

    def __init__(self, config: StudyConfig) -> None:
        from lib.data.digits import load_digits
        from lib.metrics import digits_classifier

        self.config = c = config
        self._models: dict = {}  # loaded when first used, so one job needs only its own checkpoints
        self.sde = VPSDE(0.1, 20.0)  # every checkpoint's schedule (checked on load)
        self.clf = digits_classifier().model
        test = load_digits("test")
        self.x_test, self.y = test.x, check_labels(torch.arange(c.n) % 10, 10)
        self.reference = _reference(c.n, test.x, test.y, self.clf)

    def model(self, name: str) -> torch.nn.Module:
        """``"long"``, ``"brief"``, ``"uncond"`` (digits diffusion models) or ``"classifier"`` (the noisy one)."""
        if name not in self._models:
            path = _path(getattr(self.config, name))
            loaded = load_noisy_classifier(path) if name == "classifier" else load_digits_diffusion(path)
            sde = loaded.config.sde
            if (sde.beta_min, sde.beta_max) != (self.sde.beta_min, self.sde.beta_max):
                raise ValueError(f"{path} uses {sde}, the study samples with {self.sde}")
            self._models[name] = loaded.model
        return self._models[name]

    def sample(self, den: Denoiser, sampler: str, seed: int) -> torch.Tensor:
        c, g = self.config, torch.Generator().manual_seed(1000 + seed)
        x_T = self.sde.prior_sample((c.n, 1, 8, 8), generator=g)
        if sampler == "ddim":
            return samplers.ddim(den, self.sde, x_T, c.steps).x
        return samplers.ddpm_ancestral(den, self.sde, x_T, c.sde_steps, generator=g).x

    def run(self, make, method: str, model: str, sampler: str, scale_name: str, scale: float, **extra) -> dict:
        c, per = self.config, {k: [] for k in METRICS}
        for seed in range(c.seeds):
            seed_everything(seed, threads=None, deterministic=False)
            m = sample_metrics(self.sample(make(), sampler, seed), self.y, self.x_test, self.clf, c.saturation_margin)
            for k in METRICS:
                per[k].append(m[k])
        mean = {k: statistics.mean(v) for k, v in per.items()}
        std = {k: statistics.stdev(v) for k, v in per.items()}
        steps = self.config.steps if sampler == "ddim" else self.config.sde_steps
        fd = f"fd {mean['fd']:6.2f}+-{std['fd']:.2f}"
        print(f"{method:12s} {model:6s} {sampler:4s} {scale_name}={scale:<5g} acc {mean['accuracy']:.4f} {fd} "
              f"div {mean['diversity']:.2f} sat {mean['saturation']:.4f}")  # fmt: skip
        return {"method": method, "model": model, "sampler": sampler, "scale_name": scale_name, "scale": scale,
                "steps": steps, "per_seed": per, "mean": mean, "std": std,
                "low_saturation": mean["saturation"] <= self.config.saturation_threshold, **extra}  # fmt: skip

    def cfg(self, model: str, w: float) -> Denoiser:
        return guided_denoiser(self.model(model), "eps", w=w, y=self.y)

    def cg(self, gamma: float) -> Denoiser:
        uncond = Denoiser(self.model("uncond"))
        return classifier_guided_denoiser(uncond, self.model("classifier"), self.y, gamma, self.sde)


def _ms(row: dict, k: str = "fd") -> list[float]:
    return [row["mean"][k], row["std"][k]]


def cfg_sweep(study: Study) -> dict:
    rows = [study.run(lambda m=m, w=w: study.cfg(m, w), "cfg", m, s, "w", w)
            for m in ("long", "brief") for s in ("ddim", "ddpm") for w in study.config.ws]  # fmt: skip
    sel = {r["scale"]: r for r in rows if r["model"] == "long" and r["sampler"] == "ddim"}
    best = min((w for w in sel if w > 0), key=lambda w: sel[w]["mean"]["fd"])
    r0, rb, r5 = sel.get(0.0), sel[best], sel.get(5.0)
    bars = {"best_w": best, "fd_best": _ms(rb), "acc_best": rb["mean"]["accuracy"],
            "acc_best_ge_0995": rb["mean"]["accuracy"] >= 0.995}  # fmt: skip
    if r0 is not None:
        bars |= {"fd_w0": _ms(r0), "fd_drop_beyond_spread": _ms(r0)[0] - _ms(rb)[0] > _ms(r0)[1] + _ms(rb)[1]}
    if r5 is not None:
        bars |= {"fd_w5": _ms(r5), "fd_w5_ge_2x_best": _ms(r5)[0] >= 2 * _ms(rb)[0]}
    return {"rows": rows, "bars": bars}


def cg_sweep(study: Study) -> dict:
    rows = [study.run(lambda g=g: study.cg(g), "cg", "uncond", s, "gamma", g)
            for s in ("ddim", "ddpm") for g in study.config.gammas]  # fmt: skip
    sel = {r["scale"]: r for r in rows if r["sampler"] == "ddim"}
    best = max(sel, key=lambda g: sel[g]["mean"]["accuracy"])
    reach = [g for g in sel if sel[g]["mean"]["accuracy"] >= 0.95]
    acc = sel[best]["mean"]["accuracy"]
    bars = {"best_gamma": best, "acc_best": acc, "acc_ge_095": acc >= 0.95, "first_gamma_ge_095": min(reach or [None])}
    if 0.0 in sel:
        bars["acc_gamma0"] = sel[0.0]["mean"]["accuracy"]
    return {"rows": rows, "bars": bars}


def extensions(study: Study) -> dict:
    c, rows = study.config, []
    for w in (w for w in c.ws if w > 0):
        rows.append(study.run(lambda w=w: interval_denoiser(study.cfg("long", w), study.cfg("long", 0.0), study.sde,
                                                            *c.interval), "interval", "long", "ddim", "w", w,
                              interval=list(c.interval)))  # fmt: skip
    strong, weak = study.model("long"), study.model("brief")
    for w in c.ws:
        rows.append(study.run(lambda w=w: autoguided_denoiser(strong, weak, w, y=study.y), "autoguidance", "long",
                              "ddim", "w", w, guide="brief"))  # fmt: skip
    return {"rows": rows}


def cost(study: Study, w: float = 0.5, gamma: float = 2.0, repeat: int = 7) -> dict:
    """Seconds per sample of DDIM at ``steps`` (equal NFE: one denoiser call per step) for the conditional model
    alone, CFG at ``w``, the unconditional model alone and CG at ``gamma``, timed interleaved; ``ratio`` is the
    median over rounds of each time over the conditional model's time in the same round (robust to load drift)."""
    from lib.utils import compare

    dens = {"conditional": Denoiser(study.model("long"), "eps", y=study.y), "cfg": study.cfg("long", w),
            "unconditional": Denoiser(study.model("uncond"), "eps"), "cg": study.cg(gamma)}  # fmt: skip
    times = compare({k: (lambda d=d: study.sample(d, "ddim", 0)) for k, d in dens.items()}, 1, repeat, "cpu")
    work = {"conditional": "one forward of n", "cfg": "one forward of 2n (conditional + null, batched)",
            "unconditional": "one forward of n", "cg": "one forward of n + classifier forward, backward"}  # fmt: skip
    return {"seconds_per_sample": {k: t.median / study.config.n for k, t in times.items()},
            "times": {k: list(t.times) for k, t in times.items()}, "steps": study.config.steps,
            "scales": {"cfg": {"w": w}, "cg": {"gamma": gamma}}, "work_per_step": work,
            "ratio": {k: statistics.median(a / b for a, b in zip(t.times, times["conditional"].times, strict=True))
                      for k, t in times.items()}}  # fmt: skip


JOBS = {"cfg": ("cfg_sweep.json", cfg_sweep), "cg": ("cg_sweep.json", cg_sweep),
        "extensions": ("extensions.json", extensions), "cost": ("cost.json", cost)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="guidance sweeps on digits (writes results/guidance/*.json)")
    parser.add_argument("job", choices=[*JOBS, "all"])
    for f in dataclasses.fields(StudyConfig):
        kind = type(f.default)
        if kind is tuple:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=float, nargs="+", default=f.default)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    parser.add_argument("--out-dir", type=Path, default=Path("results/guidance"))
    parser.add_argument("--threads", type=int, default=2)
    args = vars(parser.parse_args(argv))
    job, out_dir, threads = args.pop("job"), args.pop("out_dir"), args.pop("threads")
    config = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    seed_everything(0, threads=threads)
    study = Study(config)
    command = "python -m lib.diffusion.guidance_study " + " ".join(sys.argv[1:] if argv is None else argv)
    for name in JOBS if job == "all" else [job]:
        fname, fn = JOBS[name]
        res = {"config": dataclasses.asdict(config), "reference": study.reference, **fn(study)}
        print(f"wrote {save_results(out_dir / fname, res, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
