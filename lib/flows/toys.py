"""The chapter's 2D experiments: RealNVP vs a CNF trained by maximum likelihood (FFJORD) vs flow matching, on
two moons, a ring of Gaussians and a checkerboard, at the same parameter budget; reflow's few-step table.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).
``python -m lib.flows.toys`` runs the full study (three seeds) and writes ``results/flows/toys.json`` (``--out``;
the committed study is split into ``results/flows/toys_*.json``, one file per command); the chapter trains one short
version of each model live and reads the study's figures from those files.

Glossary
--------
ToyConfig        sizes, steps and learning rates of one run
exact NLL        ``-mean log p(x)`` over an independent test set: the change of variables for RealNVP, the ODE
                 likelihood (adaptive solver, exact divergence) for the CNF and flow matching
reference level  the energy distance between two independent data sets of the sample size
paired draw      teacher and student scored against one shared data set from one shared noise batch
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch

from lib.data.toy2d import checkerboard, checkerboard_log_prob, ring_mixture, two_moons, two_moons_log_prob
from lib.flows.cnf import cnf_log_prob
from lib.flows.matching import cfm_loss, euler_sample, ode_sample, straightness
from lib.flows.matching import reflow as reflow_fm
from lib.flows.model import NormalizingFlow, RealNVPConfig, build_realnvp, count_parameters
from lib.metrics import energy_distance, mean_pairwise_distance
from lib.nn.unet import MLPConfig, TimeMLP
from lib.train import train
from lib.utils import seed_everything

TOYS = ("moons", "rings", "checkerboard")
MOONS_NOISE = 0.1
"""Noise of the two moons in this chapter (in the scaled units of :func:`lib.data.toy2d.two_moons`)."""
RING = {"n_components": 8, "radius": 2.0, "std": 0.15}
"""The ring of Gaussians (``lib.data.toy2d.sample_toy("rings")``'s)."""


def toy_sample(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 2)`` float32 draws of ``"moons"``, ``"rings"`` or ``"checkerboard"``, each point independent."""
    if name == "moons":
        return two_moons(n, noise=MOONS_NOISE, generator=generator)
    if name == "rings":
        return ring_mixture(**RING).sample(n, generator)
    if name == "checkerboard":
        return checkerboard(n, generator=generator)
    raise ValueError(f"name must be one of {TOYS}, got {name!r}")


def toy_log_prob(name: str, x: torch.Tensor) -> torch.Tensor:
    """The true density's ``log p(x)`` (float64): a curve integral (moons), closed form (ring, checkerboard)."""
    if name == "moons":
        return two_moons_log_prob(x, noise=MOONS_NOISE)
    if name == "rings":
        return ring_mixture(**RING, dtype=torch.float64).log_prob(x.double())
    if name == "checkerboard":
        return checkerboard_log_prob(x)
    raise ValueError(f"name must be one of {TOYS}, got {name!r}")


def gaussian_fit_nll(train_x: torch.Tensor, test_x: torch.Tensor) -> float:
    """Test NLL (nats) of the maximum-likelihood full-covariance Gaussian fitted to ``train_x``: the baseline."""
    x = train_x.double()
    mu, cov = x.mean(0), torch.cov(x.T, correction=0)
    dist = torch.distributions.MultivariateNormal(mu, cov)
    return float(-dist.log_prob(test_x.double()).mean())


@dataclass(frozen=True)
class ToyConfig:
    """One run on one toy density (all three models share data, batch size and parameter budget)."""

    name: str = "moons"
    """``"moons"``, ``"rings"`` or ``"checkerboard"``."""
    seed: int = 0
    """Seed of data, initialisation and batches."""
    n_train: int = 20000
    """Training set size (drawn once)."""
    n_test: int = 2000
    """Test set size (independent draws)."""
    batch: int = 256
    """Batch size (RealNVP and CNF)."""
    fm_batch: int = 512
    """Batch size of flow matching (its regression target is noisy; a step costs far less than a CNF step)."""
    flow_steps: int = 3200
    """RealNVP training steps (at 800 its test NLL on the moons was still falling: the chapter's length probe)."""
    fm_steps: int = 5000
    """Flow-matching training steps."""
    cnf_steps: int = 200
    """CNF (FFJORD) training steps (each one backpropagates through an ODE solve)."""
    cnf_solver_steps: int = 8
    """RK4 steps of the CNF's training solve (with 4, longer training learns a field whose 4-step solve is a good
    density but whose exact ODE is not: the chapter's probe)."""
    lr: float = 2e-3
    """Adam learning rate (cosine decay to 0)."""
    realnvp: RealNVPConfig = RealNVPConfig(dim=2, couplings=8, hidden=64, layers=2)
    """RealNVP architecture."""
    velocity: MLPConfig = MLPConfig(dim=2, hidden=64, depth=3, time_dim=32)
    """Velocity network of the CNF and of flow matching (``lib.nn.unet.TimeMLP``)."""


def _data(c: ToyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + c.seed)
    return toy_sample(c.name, c.n_train, g), toy_sample(c.name, c.n_test, g)


def _train(model: torch.nn.Module, loss, c: ToyConfig, steps: int, train_x: torch.Tensor, desc: str,
           batch_size: int | None = None):  # fmt: skip
    g = torch.Generator().manual_seed(c.seed)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def batch(step: int) -> torch.Tensor:
        return train_x[torch.randint(0, len(train_x), (batch_size or c.batch,), generator=g)]

    return train(model, lambda m, b: loss(m, b, g), batch, steps, optimizer=opt, scheduler=sched,
                 log_every=max(1, steps // 50), desc=desc)  # fmt: skip


def train_realnvp(c: ToyConfig, train_x: torch.Tensor):
    """Maximum likelihood for RealNVP; returns ``(model, History)``."""
    seed_everything(c.seed, threads=None)
    model = build_realnvp(c.realnvp)
    return model, _train(model, lambda m, b, g: -m.log_prob(b).mean(), c, c.flow_steps, train_x, "realnvp")


def train_flow_matching(c: ToyConfig, train_x: torch.Tensor):
    """Conditional flow matching on the straight-line path; returns ``(velocity model, History)``."""
    seed_everything(c.seed, threads=None)
    model = TimeMLP(c.velocity)
    return model, _train(
        model, lambda m, b, g: cfm_loss(m, b, generator=g), c, c.fm_steps, train_x, "flow matching", c.fm_batch
    )


def train_cnf(c: ToyConfig, train_x: torch.Tensor):
    """FFJORD: maximum likelihood through an RK4 solve with the exact divergence (2D); ``(model, History)``."""
    seed_everything(c.seed, threads=None)
    model = TimeMLP(c.velocity)

    def loss(m, b, g):
        return -cnf_log_prob(m, b, steps=c.cnf_solver_steps, method="rk4").logp.mean()

    return model, _train(model, loss, c, c.cnf_steps, train_x, "cnf")


def ode_nll(velocity: torch.nn.Module, x: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> tuple[float, int]:
    """Exact test NLL (nats) of a velocity-field model through the ODE likelihood (dopri5, exact divergence, float64);
    returns ``(nll, nfe)``."""
    from lib.flows.likelihood import velocity_log_prob

    res = velocity_log_prob(velocity, x, rtol=rtol, atol=atol)
    return float(-res.logp.mean()), int(res.nfe)


def flow_nll(model: NormalizingFlow, x: torch.Tensor) -> float:
    """Exact test NLL (nats) of a discrete flow by the change of variables."""
    model.eval()
    with torch.no_grad():
        return float(-model.log_prob(x).mean())


def _curve(hist) -> dict:
    """The logged training loss (about 50 points) as ``{"steps": [...], "loss": [...]}``."""
    return {"steps": list(hist.steps), "loss": [round(v, 5) for v in hist.metrics["loss"]]}


def run_toy(c: ToyConfig, kinds: tuple[str, ...] = ("realnvp", "cnf", "fm")) -> dict:
    """Train each model kind on ``c.name`` and return test NLLs, training seconds and parameter counts next to
    the Gaussian fit's and the true density's NLL. The trained models are under ``"models"``."""
    train_x, test_x = _data(c)
    out: dict = {"name": c.name, "seed": c.seed, "gaussian_nll": gaussian_fit_nll(train_x, test_x),
                 "true_nll": float(-toy_log_prob(c.name, test_x).mean()), "models": {}}  # fmt: skip
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "realnvp":
            model, hist = train_realnvp(c, train_x)
            seconds = time.perf_counter() - t0
            nll = flow_nll(model, test_x)
        elif kind in ("cnf", "fm"):
            model, hist = (train_cnf if kind == "cnf" else train_flow_matching)(c, train_x)
            seconds = time.perf_counter() - t0
            nll, _ = ode_nll(model, test_x)
        else:
            raise ValueError(f"kinds must be among 'realnvp', 'cnf', 'fm', got {kind!r}")
        out[kind] = {"nll": nll, "train_seconds": seconds, "params": count_parameters(model),
                     "final_loss": hist.last("loss", 5), "curve": _curve(hist)}  # fmt: skip
        out["models"][kind] = model
    return out


def length_probe(c: ToyConfig, kind: str, steps: tuple[int, ...], tight: bool = False) -> list[dict]:
    """Test NLL of ``kind`` (``"realnvp"`` or ``"cnf"``) after each training length in ``steps`` (a fresh run per
    length, each with its own cosine schedule); for the CNF also the NLL under its own training solver (RK4) and
    (with ``tight``) under a 100x tighter adaptive solve: they separate under-training from evaluation error."""
    train_x, test_x = _data(c)
    out = []
    for n in steps:
        if kind == "realnvp":
            model, hist = train_realnvp(replace(c, flow_steps=n), train_x)
            row = {"nll": flow_nll(model, test_x)}
        elif kind == "cnf":
            model, hist = train_cnf(replace(c, cnf_steps=n), train_x)
            nll, nfe = ode_nll(model, test_x)
            with torch.no_grad():
                rk4 = float(-cnf_log_prob(model.eval(), test_x, steps=c.cnf_solver_steps, method="rk4").logp.mean())
            row = {"nll": nll, "nfe": nfe, "nll_train_solver": rk4, "solver_steps": c.cnf_solver_steps}
            if tight:
                row["nll_tight"], row["nfe_tight"] = ode_nll(model, test_x, rtol=1e-7, atol=1e-7)
        else:
            raise ValueError(f"kind must be 'realnvp' or 'cnf', got {kind!r}")
        row.update(kind=kind, steps=n, train_seconds=hist.seconds, curve=_curve(hist))
        out.append(row)
        print({k: v for k, v in row.items() if k != "curve"}, flush=True)
    return out


# --- reflow ---------------------------------------------------------------------------------------------------

EULER_STEPS = (1, 2, 4, 8, 100)
"""The few-step table's step counts."""


@dataclass(frozen=True)
class ReflowConfig:
    """Reflow of a trained flow-matching teacher."""

    pairs: int = 10000
    """Noise/sample pairs generated by the teacher's adaptive ODE solve."""
    steps: int = 2000
    """Training steps of the student (initialised from the teacher, as Liu et al. do)."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay)."""
    batch: int = 512
    """Batch size."""
    n_eval: int = 2000
    """Samples per energy distance (and size of each reference data set)."""
    seed: int = 0
    """Seed."""


def few_step_table(velocity, name: str, n: int, generator: torch.Generator,
                   steps: tuple[int, ...] = EULER_STEPS) -> dict:  # fmt: skip
    """Energy distance to a fresh data set of ``n`` points, per number of Euler steps and for the adaptive solver
    (``"ode"``), with the reference level (mean over 3 pairs of independent data sets) and straightness."""
    data = toy_sample(name, n, generator)
    y_self = mean_pairwise_distance(data)
    ref = sum(energy_distance(toy_sample(name, n, generator), toy_sample(name, n, generator)) for _ in range(3)) / 3
    eps = torch.randn(n, 2, generator=generator)
    velocity.eval()
    table = {str(k): energy_distance(euler_sample(velocity, eps, k), data, y_self) for k in steps}
    sol = ode_sample(velocity, eps)
    table["ode"] = energy_distance(sol.x0, data, y_self)
    return {"energy": table, "reference": ref, "ode_nfe": sol.nfe, "straightness": straightness(velocity, eps[:1000])}


def energy_noise(name: str, n: int, pairs: int, generator: torch.Generator) -> list[float]:
    """Energy distances between ``pairs`` pairs of independent ``n``-point data sets of ``name``: the spread of the
    score that a perfect sampler gets from one evaluation draw (the reference level is their mean)."""
    if not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be a positive int, got {pairs!r}")
    return [energy_distance(toy_sample(name, n, generator), toy_sample(name, n, generator)) for _ in range(pairs)]


def paired_reflow_eval(teacher: torch.nn.Module, student: torch.nn.Module, name: str, n: int, draws: int,
                       generator: torch.Generator) -> dict[str, list[float]]:  # fmt: skip
    """Teacher and student scored on the *same* evaluation draw, ``draws`` times: per draw one fresh data set of
    ``n`` points and one noise batch, and the energy distances to that data set of the teacher's adaptive solve
    (``"teacher_ode"``), the student's one Euler step (``"student_1"``) and adaptive solve (``"student_ode"``), all
    from the same noise, and of an independent data set (``"reference"``, a perfect sampler)."""
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    teacher.eval()
    student.eval()
    out: dict[str, list[float]] = {"teacher_ode": [], "student_1": [], "student_ode": [], "reference": []}
    for _ in range(draws):
        data = toy_sample(name, n, generator)
        y_self = mean_pairwise_distance(data)
        eps = torch.randn(n, 2, generator=generator)
        out["teacher_ode"].append(energy_distance(ode_sample(teacher, eps).x0, data, y_self))
        out["student_1"].append(energy_distance(euler_sample(student, eps, 1), data, y_self))
        out["student_ode"].append(energy_distance(ode_sample(student, eps).x0, data, y_self))
        out["reference"].append(energy_distance(toy_sample(name, n, generator), data, y_self))
    return out


def reflow(teacher: torch.nn.Module, name: str, rc: ReflowConfig) -> tuple[torch.nn.Module, dict]:
    """One reflow of a 2D toy's flow-matching model (:func:`lib.flows.matching.reflow` with ``rc``'s settings; the
    pairs, batches and times drawn from ``rc.seed``). Returns ``(student, info)``."""
    return reflow_fm(teacher, rc.pairs, (2,), rc.steps, rc.batch, rc.lr, torch.Generator().manual_seed(rc.seed))


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.flows.toys [--seeds 0 1 2] [--names moons rings checkerboard] [--out PATH]``."""
    import argparse
    import sys

    from lib.utils import save_results

    p = argparse.ArgumentParser(description="the flows chapter's 2D study (three models, three seeds) and reflow")
    p.add_argument("--names", nargs="+", default=list(TOYS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--kinds", nargs="+", default=["realnvp", "cnf", "fm"])
    p.add_argument("--reflow", nargs="*", default=["moons", "rings"], help="toys to reflow (seed 0's teacher)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flow-steps", type=int, default=ToyConfig.flow_steps, help="RealNVP training steps")
    p.add_argument("--cnf-steps", type=int, default=ToyConfig.cnf_steps, help="CNF training steps")
    p.add_argument("--fm-steps", type=int, default=ToyConfig.fm_steps, help="flow-matching training steps")
    p.add_argument("--cnf-solver-steps", type=int, default=ToyConfig.cnf_solver_steps, help="RK4 steps (CNF)")
    p.add_argument("--tight", action="store_true", help="probe: also evaluate the CNF at rtol = atol = 1e-7")
    p.add_argument("--probe", nargs="+", type=int, help="a length probe of --kinds at these step counts instead")
    p.add_argument("--reflow-steps", type=int, default=ReflowConfig.steps, help="reflow: student training steps")
    p.add_argument("--reflow-pairs", type=int, default=ReflowConfig.pairs, help="reflow: teacher pairs")
    p.add_argument("--reflow-draws", type=int, default=0, help="reflow: also score teacher and student on this many "
                   "shared evaluation draws (paired_reflow_eval)")  # fmt: skip
    p.add_argument("--noise", type=int, help="instead: energy distances of this many independent data-set pairs")
    p.add_argument("--out", default="results/flows/toys.json")
    args = p.parse_args(argv)
    seed_everything(0, threads=args.threads)
    command = "python -m lib.flows.toys " + " ".join(sys.argv[1:] if argv is None else argv)
    base = ToyConfig(flow_steps=args.flow_steps, cnf_steps=args.cnf_steps, fm_steps=args.fm_steps,
                     cnf_solver_steps=args.cnf_solver_steps)  # fmt: skip
    config = {k: v for k, v in asdict(base).items() if k not in ("name", "seed")}
    if args.noise:
        rc = ReflowConfig()
        g = torch.Generator().manual_seed(7000)
        noise = {name: energy_noise(name, rc.n_eval, args.noise, g) for name in args.names}
        save_results(args.out, {"config": {"n": rc.n_eval, "pairs": args.noise}, "noise": noise}, command=command)
        return 0
    if args.probe:
        probes = []
        for seed in args.seeds:
            for name in args.names:
                for kind in args.kinds:
                    for n in args.probe:  # saved after every length
                        (row,) = length_probe(replace(base, name=name, seed=seed), kind, (n,), args.tight)
                        probes.append({"name": name, "seed": seed, **row})
                        save_results(args.out, {"config": config, "probe": probes}, command=command)
        return 0
    runs, reflows = [], {}
    order = [(s, n) for s in args.seeds for n in args.names]  # seed-major: every toy gets its first seed first
    for seed, name in order:
        r = run_toy(replace(base, name=name, seed=seed), tuple(args.kinds))
        models = r.pop("models")
        runs.append(r)
        print({k: (v["nll"] if isinstance(v, dict) else v) for k, v in r.items()}, flush=True)
        if seed == args.seeds[0] and name in args.reflow and "fm" in models:
            rc = ReflowConfig(seed=seed, steps=args.reflow_steps, pairs=args.reflow_pairs)
            g = torch.Generator().manual_seed(5000 + seed)
            before = few_step_table(models["fm"], name, rc.n_eval, g)
            student, info = reflow(models["fm"], name, rc)
            after = few_step_table(student, name, rc.n_eval, g)
            reflows[name] = {"before": before, "after": after, **info, "config": asdict(rc)}
            if args.reflow_draws:
                g_pair = torch.Generator().manual_seed(6000 + seed)
                reflows[name]["paired"] = paired_reflow_eval(models["fm"], student, name, rc.n_eval,
                                                             args.reflow_draws, g_pair)  # fmt: skip
            print(name, "reflow", before, after, flush=True)
        # written after every run, so a long study can be inspected (and used) while it continues
        save_results(args.out, {"config": config, "runs": runs, "reflow": reflows}, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
