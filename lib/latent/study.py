"""The latent-diffusion evaluation: samples for fixed caption sets, several seeds and guidance weights, judged by
the independent attribute judge (``lib.latent.judge``); and the latent-vs-pixel step cost.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``).

    python -m lib.latent.study run --conditioning grouped   # -> results/latent/study_grouped.json (each conditioning)
    python -m lib.latent.study merge                        # -> results/latent/study.json (means, spreads, table)
    python -m lib.latent.study step_cost                    # -> results/latent/step_cost.json

Caption sets (fixed seeds, disjoint from training): one-object and two-object captions of the ``"test"`` split,
and of the ``"heldout"`` split (every image has a (shape, colour) pair never seen in training). Per caption, seed
and weight one sample; the judge scores it against the caption's labels: per-attribute and joint accuracy (one
object), binding accuracy and swap rate (two objects). Guidance convention: ``w`` is Ho and Salimans' weight,
``eps_hat = (1 + w) eps(c) - w eps(null)``; ``diffusers``' ``guidance_scale`` is ``s = 1 + w`` (``w = 0``: no
guidance). Means and standard deviations are over the seeds (the sampling noise), on fixed captions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lib.latent.conditioning import CONDITIONINGS

RESULTS = Path(__file__).resolve().parents[2] / "results" / "latent"
CONVENTION = ("w: Ho and Salimans' guidance weight, eps_hat = (1 + w) eps(caption) - w eps(null); diffusers' "
              "guidance_scale s = 1 + w; w = 0 is the conditional model without guidance")  # fmt: skip
GROUPS = {"one": ("test", 1), "two": ("test", 2), "heldout_one": ("heldout", 1), "heldout_two": ("heldout", 2)}
"""Caption set -> (split, objects per image)."""
ONE_KEYS = ("shape", "colour", "size", "row", "col", "joint", "count")
TWO_KEYS = ("binding", "swap", "colour_swap", "size_swap", "objects", "relation", "count")


def caption_sets(sizes: dict[str, int], seed: int = 100):
    """``{group: ShapesBatch}`` of fixed captions (and the real images they came from)."""
    from lib.data.shapes import make_shapes

    if set(sizes) - set(GROUPS) or any(not isinstance(n, int) or n < 1 for n in sizes.values()):
        raise ValueError(f"sizes must map groups of {tuple(GROUPS)} to positive ints, got {sizes!r}")
    return {g: make_shapes(n, seed=seed, n_objects=GROUPS[g][1], split=GROUPS[g][0]) for g, n in sizes.items()}


def _rates(report, k: int) -> dict[str, float]:
    keys = ONE_KEYS if k == 1 else TWO_KEYS
    return {key: float(report.rates[k][key]) for key in keys}


def judge_set(images: torch.Tensor, batch, judge=None) -> dict[str, float]:
    """The judge's rates of ``images`` against ``batch.labels`` (all images of one object count ``k``)."""
    from lib.latent.judge import evaluate

    k = int(batch.n_objects[0])
    return _rates(evaluate(images, batch.labels, judge), k)


@torch.no_grad()
def sample_set(pipe, batch, w: float, seed: int, steps: int, chunk: int = 250) -> torch.Tensor:
    """One sample per caption of ``batch`` (captions or labels, as the conditioning reads), noise from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(batch), chunk):
        part = batch[i : i + chunk]
        out.append(pipe.generate(part.captions, part.labels, w=w, steps=steps, generator=g).images)
    return torch.cat(out)


def run(pipe, ws: list[float], seeds: list[int], sizes: dict[str, int], steps: int = 20, judge=None) -> dict:
    """Judge rates per weight, seed and caption set for one pipeline (``lib.latent.train.load_pipeline``), with
    their mean and std over seeds."""
    meta = pipe.metadata or {}
    conditioning = pipe.config.conditioning
    sets = caption_sets(sizes)
    out: dict = {"checkpoint": meta.get("file"), "checkpoint_sha256": meta.get("sha256"),
                 "train_command": meta.get("provenance", {}).get("command"), "w": {}}  # fmt: skip
    t0 = time.perf_counter()
    for w in ws:
        per_seed = {}
        for s in seeds:
            per_seed[str(s)] = {g: judge_set(sample_set(pipe, b, w, s, steps), b, judge) for g, b in sets.items()}
            print(f"{conditioning} w={w} seed={s}: {per_seed[str(s)]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        out["w"][str(w)] = {"seeds": per_seed, **spread(per_seed)}
    out["seconds"] = time.perf_counter() - t0
    return out


def spread(per_seed: dict) -> dict:
    """``{"mean": {group: {metric: ...}}, "std": ...}`` over seeds (sample std; 0 for one seed)."""
    first = next(iter(per_seed.values()))
    res: dict = {"mean": {}, "std": {}}
    for g, metrics in first.items():
        vals = {m: [per_seed[s][g][m] for s in per_seed] for m in metrics}
        res["mean"][g] = {m: statistics.fmean(v) for m, v in vals.items()}
        res["std"][g] = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in vals.items()}
    return res


def reference(sizes: dict[str, int]) -> dict:
    """The judge on the real images of the caption sets and on their autoencoder reconstructions (the ceiling)."""
    from lib.latent.autoencoder import reconstruct
    from lib.latent.train import shipped_autoencoder

    ae = shipped_autoencoder()
    sets = caption_sets(sizes)
    return {"real": {g: judge_set(b.images, b) for g, b in sets.items()},
            "reconstructed": {g: judge_set(reconstruct(ae, b.images), b) for g, b in sets.items()}}  # fmt: skip


def table(per_conditioning: dict) -> list[dict]:
    """One row per (conditioning, w): the headline means and stds."""
    rows = []
    for cond, res in per_conditioning.items():
        for w, r in res["w"].items():
            m, s = r["mean"], r["std"]
            row = {"conditioning": cond, "w": float(w), "guidance_scale": 1 + float(w)}
            if "one" in m:
                attrs = [m["one"][a] for a in ONE_KEYS[:5]]
                row.update(one_min_attribute=min(attrs), one_joint=m["one"]["joint"], one_joint_std=s["one"]["joint"])
            for g in ("two", "heldout_two"):
                if g in m:
                    row.update({f"{g}_binding": m[g]["binding"], f"{g}_binding_std": s[g]["binding"],
                                f"{g}_swap": m[g]["swap"], f"{g}_swap_std": s[g]["swap"]})  # fmt: skip
            if "heldout_one" in m:
                row.update(heldout_one_joint=m["heldout_one"]["joint"], heldout_one_joint_std=s["heldout_one"]["joint"])
            rows.append(row)
    return rows


def ablation_of(label: str) -> str | None:
    """``None`` for a shipped conditioning; for another study label (e.g. ``grouped_full_1500``, a checkpoint of the
    ``grouped_full`` conditioning trained differently) the conditioning it is an ablation of."""
    if label in CONDITIONINGS:
        return None
    bases = [c for c in CONDITIONINGS if label.startswith(c + "_")]
    if not bases:
        raise ValueError(f"study label {label!r} is neither a conditioning of {CONDITIONINGS} nor <conditioning>_<tag>")
    return max(bases, key=len)


def bars(per_conditioning: dict) -> dict:
    """Issue 18's bars per conditioning at its chosen ``w`` (the weight with the best mean of one-object joint
    accuracy and two-object binding, selected on these captions), and the hard-negative effect per ``w``. An
    ablation row (:func:`ablation_of`) gets its chosen ``w`` and rates but no bar verdicts: the bars belong to the
    shipped checkpoints."""
    out: dict = {}
    for cond, res in per_conditioning.items():
        w = max(res["w"], key=lambda w, r=res["w"]: r[w]["mean"]["one"]["joint"] + r[w]["mean"]["two"]["binding"])
        m = res["w"][w]["mean"]
        out[cond] = {"chosen_w": float(w), "one_min_attribute": min(m["one"][a] for a in ONE_KEYS[:5]),
                     "one_joint": m["one"]["joint"], "two_binding": m["two"]["binding"],
                     "two_swap": m["two"]["swap"]}  # fmt: skip
        base = ablation_of(cond)
        if base is not None:
            out[cond]["ablation_of"] = base
            continue
        out[cond].update({"one_attributes_ge_0.97": out[cond]["one_min_attribute"] >= 0.97,
                          "one_joint_ge_0.95": m["one"]["joint"] >= 0.95})  # fmt: skip
        if cond.startswith("grouped"):
            out[cond]["two_binding_ge_0.80"] = m["two"]["binding"] >= 0.80
    if {"clip", "clip_hardneg"} <= set(per_conditioning):
        a, b = per_conditioning["clip"]["w"], per_conditioning["clip_hardneg"]["w"]
        out["hardneg_effect"] = {
            w: {key: {"clip": a[w]["mean"]["two"][key], "clip_hardneg": b[w]["mean"]["two"][key],
                      "difference": b[w]["mean"]["two"][key] - a[w]["mean"]["two"][key],
                      "std_clip": a[w]["std"]["two"][key], "std_clip_hardneg": b[w]["std"]["two"][key]}
                for key in ("binding", "swap")}
            for w in a if w in b
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    from lib.utils import load_results, save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("run", "merge", "step_cost"))
    parser.add_argument("--conditioning", choices=CONDITIONINGS, default="grouped")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default weights/shapes_ldm_<conditioning>")
    parser.add_argument("--ws", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-one", type=int, default=200)
    parser.add_argument("--n-two", type=int, default=200)
    parser.add_argument("--n-heldout", type=int, default=50, help="per held-out set (one- and two-object)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps on SD's leading grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    seed_everything(0, threads=args.threads)
    command = "python -m lib.latent.study " + " ".join(sys.argv[1:] if argv is None else argv)
    sizes = {"one": args.n_one, "two": args.n_two, "heldout_one": args.n_heldout, "heldout_two": args.n_heldout}
    if args.what == "step_cost":
        from lib.latent.pipeline import LDMConfig, step_cost

        res = {"same_config": step_cost(LDMConfig(), batch=16, repeat=9),  # the chapter's UNet, attention at 2 levels
               "attention_mid_only": step_cost(LDMConfig(attention_levels=()), batch=16, repeat=9)}  # fmt: skip
        path = save_results(args.out or RESULTS / "step_cost.json", res, command)
        for k, r in res.items():
            print(f"{k}: latent {r['latent_ms']:.2f} ms, pixel {r['pixel_ms']:.2f} ms, ratio {r['ratio']:.1f}x")
        print(f"-> {path}")
        return 0
    if args.what == "run":
        from lib.latent.train import load_pipeline

        pipe = load_pipeline(args.checkpoint, conditioning=args.conditioning)
        label = args.checkpoint.stem.removeprefix("shapes_ldm_") if args.checkpoint else args.conditioning
        from lib.latent.decoder_ft import decoder_provenance

        res = {"convention": CONVENTION, "steps": args.steps, "sizes": sizes, "seeds": args.seeds, "ws": args.ws,
               "decoder": decoder_provenance(),
               label: run(pipe, args.ws, args.seeds, sizes, args.steps)}  # fmt: skip
        if label == "grouped":
            res["reference"] = reference(sizes)
        path = save_results(args.out or RESULTS / f"study_{label}.json", res, command)
        print(f"-> {path}")
        return 0
    files = sorted(p for p in RESULTS.glob("study_*.json"))  # one per conditioning, plus e.g. study_grouped_long
    parts = {p.stem.removeprefix("study_"): load_results(p) for p in files}
    if not parts:
        raise SystemExit("no results/latent/study_<conditioning>.json to merge: run `study run` first")
    per = {c: p["results"][c] for c, p in parts.items()}
    first = next(iter(parts.values()))["results"]
    res = {k: first[k] for k in ("convention", "steps", "sizes", "seeds", "ws")}
    for key in ("steps", "sizes", "seeds", "ws", "decoder"):  # comparable rows: the same settings and decoder
        values = {c: p["results"].get(key) for c, p in parts.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            raise SystemExit(f"the study files differ in {key}: {values}")
    res["decoder"] = first.get("decoder")
    res.update(
        conditionings=per, table=table(per), bars=bars(per), sources={c: p["provenance"] for c, p in parts.items()}
    )
    if "grouped" in parts:
        res["reference"] = parts["grouped"]["results"].get("reference")
    path = save_results(args.out or RESULTS / "study.json", res, command)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
