"""Mask IoU of trained ControlNets on unseen layouts, with sampling-seed and training-seed spreads; two ControlNets
composed.

Chapter: "ControlNet" (``chapters/controlnet.ipynb``). Training: :mod:`lib.latent.controlnet_train`.

    python -m lib.latent.controlnet_study study --names shapes_controlnet_mask shapes_controlnet_mask_s1 \
        shapes_controlnet_mask_s2 shapes_controlnet_mask_noempty shapes_controlnet_edges   # -> study.json
    python -m lib.latent.controlnet_study compose     # mask + edge ControlNet -> results/controlnet/compose.json

Study: for every checkpoint, sampling seed, control strength and caption mode (the caption, with classifier-free
guidance at ``w`` / the empty caption, without guidance), the mask IoU (:func:`~lib.latent.controlnet_train.mask_iou`)
of samples of unseen test layouts, and the attribute judge's shape and colour verdict on one-object samples;
strength 0 is the frozen text-only model. Two spreads are kept apart: ``summary`` is over the *sampling seeds* of
one checkpoint (one training run), ``training_seeds`` is over the *checkpoints of one setting* (kind, p_empty) that
differ only in their training seed, each checkpoint first averaged over the sampling seeds.

Composition (Zhang et al. 2023, multi-ControlNet: residuals added): the mask ControlNet and the edge ControlNet,
(a) *consistent*: both given the same layout A, at equal strengths, against each alone at strength 1;
(b) *conflicting*: the mask of layout A and the edges of another layout B: the IoU of the samples to A and to B
says which condition dominates (``iou_A_minus_B`` > 0: the mask). The caption is A's, B's or the empty one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lib.checkpoint import WEIGHTS_DIR
from lib.latent.controlnet import ControlledUNet, condition_image
from lib.latent.controlnet_train import (
    RESULTS,
    TEXT_ONLY,
    generate_controlled,
    iou_summary,
    load_controlnet,
)
from lib.latent.decoder_ft import decoder_provenance
from lib.utils import spread

IOU_KEYS = ("iou", "iou_large", "iou_small")


def unseen_layouts(n: int, seed: int, n_train: int = 20000):
    """``n`` test-split images whose union mask appears nowhere in the training images ``make_shapes(n_train,
    seed=0, split="train")`` (one-object layouts are all seen: 4 shapes x 2 sizes x 9 cells x 9 jitters)."""
    from lib.data.shapes import make_shapes

    seen = {bytes(m.numpy()) for m in condition_image(make_shapes(n_train, seed=0, split="train")).bool()}
    pool = make_shapes(4 * n, seed=seed, split="test")
    keep = [i for i, m in enumerate(condition_image(pool).bool()) if bytes(m.numpy()) not in seen][:n]
    if len(keep) < n:
        raise ValueError(f"only {len(keep)} unseen layouts among {4 * n} test images; ask for fewer")
    return pool[keep]


def _metrics(run: dict) -> list[str]:
    return [k for k, v in run.items() if isinstance(v, float) and k != "strength"]


def load_named(name: str, pipe=None, kind: str | None = None):
    """``(ControlNet, metadata)`` of ``weights/<name>.safetensors`` (or of a path ending in ``.safetensors``);
    with ``kind``, its condition must be that kind."""
    path = Path(name) if str(name).endswith(".safetensors") else WEIGHTS_DIR / f"{name}.safetensors"
    net, meta = load_controlnet(path, pipe)
    if kind is not None and meta["config"]["kind"] != kind:
        raise ValueError(f"{path.name} is a ControlNet on {meta['config']['kind']!r} conditions, expected {kind!r}")
    return net, meta


def measure(pipe, nets: dict, test, one, strengths: list[float], sample_seeds: list[int], w: float,
            steps: int) -> list[dict]:  # fmt: skip
    """The study's runs. ``nets``: ``{name: (ControlNet, training config dict)}``, in order (strength 0, the frozen
    model, only for the first); ``test``: layouts for the IoU, ``one``: one-object images for the judge."""
    from lib.latent.judge import evaluate

    runs: list[dict] = []
    first = next(iter(nets))
    for name, (net, cfg) in nets.items():
        model = ControlledUNet(pipe.denoiser.unet, net)
        setting = f"{cfg['kind']}, p_empty={cfg['p_empty']}"
        cond, cond_one = condition_image(test, cfg["kind"]), condition_image(one, cfg["kind"])
        base = {"model": name, "train_seed": cfg["seed"]}
        for seed in sample_seeds:
            for s in strengths:
                if s == 0 and name != first:  # strength 0 is the frozen model, the same for every ControlNet
                    continue
                for empty in (False, True) if s in (0.0, 1.0) else (False,):  # the empty caption at 0 and 1 only
                    images = generate_controlled(pipe, model, cond, test.captions, test.labels, w=w, steps=steps,
                                                 generator=torch.Generator().manual_seed(seed), strength=s,
                                                 empty=empty)  # fmt: skip
                    runs.append({"setting": setting if s else TEXT_ONLY, **base, "seed": seed, "strength": s,
                                 "caption": "empty" if empty else "caption", **iou_summary(images, test)})  # fmt: skip
            for s in sorted({0.0, 1.0} & set(strengths)):
                if s == 0 and name != first:
                    continue
                images = generate_controlled(pipe, model, cond_one, one.captions, one.labels, w=w, steps=steps,
                                             generator=torch.Generator().manual_seed(seed), strength=s)  # fmt: skip
                recs = evaluate(images, one.labels).records
                acc = {a: sum(r[a] for r in recs) / len(recs) for a in ("shape", "colour")}
                acc["shape_and_colour"] = sum(r["shape"] and r["colour"] for r in recs) / len(recs)
                runs.append({"setting": setting if s else TEXT_ONLY, **base, "seed": seed, "strength": s,
                             "caption": "judge_one", **acc, **iou_summary(images, one)})  # fmt: skip
            print(f"{name} seed {seed} done", flush=True)
    return runs


def summarise(runs: list[dict]) -> tuple[dict, dict]:
    """``(summary, training_seeds)`` of :func:`measure`'s runs.

    ``summary["<model> | strength <s> | <caption>"]`` (``<model>`` is ``TEXT_ONLY`` at strength 0): every metric's
    spread over the sampling seeds of that one checkpoint. ``training_seeds["<setting> | strength <s> | <caption>"]``
    (settings with two or more checkpoints only): the spread over checkpoints of their means over sampling seeds,
    plus ``sampling_std``, the mean over checkpoints of their sampling-seed std, for comparison."""
    per_model: dict[str, list[dict]] = {}
    for r in runs:
        name = TEXT_ONLY if r["strength"] == 0 else r["model"]
        per_model.setdefault(f"{name} | strength {r['strength']} | {r['caption']}", []).append(r)
    summary, by_setting = {}, {}
    for key, rs in per_model.items():
        summary[key] = {"setting": rs[0]["setting"], "model": rs[0]["model"], "train_seed": rs[0]["train_seed"],
                        "sample_seeds": [r["seed"] for r in rs],
                        **{m: spread([r[m] for r in rs]) for m in _metrics(rs[0])}}  # fmt: skip
        setting_key = f"{rs[0]['setting']} | strength {rs[0]['strength']} | {rs[0]['caption']}"
        by_setting.setdefault(setting_key, []).append(summary[key])
    training_seeds = {}
    for key, groups in by_setting.items():
        if len(groups) < 2:
            continue
        if len({tuple(sorted(g["sample_seeds"])) for g in groups}) != 1:
            raise ValueError(f"{key}: the checkpoints were sampled with different seeds, "
                             f"{[g['sample_seeds'] for g in groups]}")  # fmt: skip
        metrics = [k for k, v in groups[0].items() if isinstance(v, dict)]
        training_seeds[key] = {
            "models": [g["model"] for g in groups], "train_seeds": [g["train_seed"] for g in groups],
            **{m: spread([g[m]["mean"] for g in groups]) for m in metrics},
            "sampling_std": {m: sum(g[m]["std"] for g in groups) / len(groups) for m in metrics},
        }  # fmt: skip
    return summary, training_seeds


def run_study(names: list[str], strengths: list[float], sample_seeds: list[int], n: int, n_one: int, w: float,
              steps: int, conditioning: str = "grouped") -> dict:  # fmt: skip
    """:func:`measure` on the shipped pipeline and the named checkpoints, :func:`summarise`d; with the IoU of the
    autoencoder's reconstructions of the real test images (the ceiling)."""
    from lib.data.shapes import make_shapes
    from lib.latent.train import load_pipeline

    pipe = load_pipeline(conditioning=conditioning)
    test, one = unseen_layouts(n, seed=2000), make_shapes(n_one, seed=2001, n_objects=1, split="test")
    with torch.no_grad():
        ceiling = iou_summary(pipe.decode(pipe.autoencoder.encode(test.images)), test)
    nets = {}
    for name in names:
        net, meta = load_named(name, pipe)
        nets[name] = (net, meta["config"])
    runs = measure(pipe, nets, test, one, strengths, sample_seeds, w, steps)
    summary, training_seeds = summarise(runs)
    return {"runs": runs, "summary": summary, "training_seeds": training_seeds, "autoencoder_ceiling": ceiling,
            "w": w, "steps": steps, "n": n, "n_one": n_one, "sample_seeds": sample_seeds, "strengths": strengths,
            "models": names, "decoder": decoder_provenance()}  # fmt: skip


def compose(pipe, mask_net, edge_net, a, b, strengths: list[float], sample_seeds: list[int], w: float,
            steps: int) -> list[dict]:  # fmt: skip
    """Runs of the composition study for layouts ``a`` and ``b`` (``ShapesBatch`` of equal length): each ControlNet
    alone at strength 1 on A; both on A (consistent) and mask of A + edges of B (conflicting) at ``(s, s)`` for
    ``s`` in ``strengths``. Each run has the IoU to A (``*_A``), to B (``*_B``) and ``iou_A_minus_B``."""
    if len(a) != len(b):
        raise ValueError(f"layouts a and b must have the same length, got {len(a)} and {len(b)}")
    unet = pipe.denoiser.unet
    alone = {"mask": ControlledUNet(unet, mask_net), "edges": ControlledUNet(unet, edge_net)}
    pair = ControlledUNet(unet, [mask_net, edge_net])
    consistent = condition_image(a, "mask+edges")  # (N, 2, 32, 32): mask and edges of A
    conflicting = torch.cat([condition_image(a, "mask"), condition_image(b, "edges")], 1)  # mask of A, edges of B
    prompts = {"caption": a, "caption A": a, "caption B": b, "empty": a}  # "empty": the null context (length only)
    runs: list[dict] = []

    def run(what, model, cond, strength, caption, seed):
        p = prompts[caption]
        gen = torch.Generator().manual_seed(seed)
        images = generate_controlled(pipe, model, cond, p.captions, p.labels, w=w, steps=steps, generator=gen,
                                     strength=strength, empty=caption == "empty")  # fmt: skip
        ra, rb = iou_summary(images, a), iou_summary(images, b)
        runs.append({"composition": what, "strength": strength, "caption": caption, "seed": seed,
                     **{f"{k}_A": ra[k] for k in IOU_KEYS}, **{f"{k}_B": rb[k] for k in IOU_KEYS},
                     "iou_A_minus_B": ra["iou"] - rb["iou"]})  # fmt: skip

    for seed in sample_seeds:
        for caption in ("caption", "empty"):
            for kind, model in alone.items():
                run(f"{kind} alone (A)", model, condition_image(a, kind), 1.0, caption, seed)
            for s in strengths:
                run("mask + edges (A, A)", pair, consistent, [s, s], caption, seed)
        for caption in ("caption A", "caption B", "empty"):
            for s in strengths:
                run("mask A + edges B", pair, conflicting, [s, s], caption, seed)
        print(f"composition seed {seed} done", flush=True)
    return runs


def run_composition(mask: str, edges: str, strengths: list[float], sample_seeds: list[int], n: int, w: float,
                    steps: int, conditioning: str = "grouped") -> dict:  # fmt: skip
    """:func:`compose` on the shipped pipeline: A = the study's unseen layouts, B = the same layouts shifted by one
    (B[i] = A[i + 1]); spreads over sampling seeds per (composition, strengths, caption)."""
    from lib.latent.train import load_pipeline

    pipe = load_pipeline(conditioning=conditioning)
    (mask_net, _), (edge_net, _) = load_named(mask, pipe, "mask"), load_named(edges, pipe, "edges")
    a = unseen_layouts(n, seed=2000)
    b = a[torch.roll(torch.arange(n), -1).tolist()]
    runs = compose(pipe, mask_net, edge_net, a, b, strengths, sample_seeds, w, steps)
    summary: dict[str, dict] = {}
    for r in runs:
        s = r["strength"]
        key = f"{r['composition']} | strength {s if isinstance(s, float) else tuple(s)} | {r['caption']}"
        summary.setdefault(key, []).append(r)
    summary = {k: {m: spread([r[m] for r in rs]) for m in _metrics(rs[0])} for k, rs in summary.items()}
    overlap = {"A_images_vs_B": iou_summary(a.images, b), "B_images_vs_A": iou_summary(b.images, a)}
    return {"runs": runs, "summary": summary, "layout_overlap": overlap, "models": {"mask": mask, "edges": edges},
            "w": w, "steps": steps, "n": n, "sample_seeds": sample_seeds, "strengths": strengths,
            "decoder": decoder_provenance()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("study", help="IoU / judge study over trained ControlNets")
    st.add_argument("--names", nargs="+", default=["shapes_controlnet_mask"])
    st.add_argument("--strengths", nargs="+", type=float, default=[0.0, 0.5, 1.0, 1.5])
    st.add_argument("--n-one", type=int, default=200, help="one-object test images for the judge")
    co = sub.add_parser("compose", help="a mask and an edge ControlNet composed")
    co.add_argument("--mask", default="shapes_controlnet_mask")
    co.add_argument("--edges", default="shapes_controlnet_edges")
    co.add_argument("--strengths", nargs="+", type=float, default=[0.5, 1.0], help="s of the pair (s, s)")
    for p, out in ((st, "study.json"), (co, "compose.json")):
        p.add_argument("--sample-seeds", nargs="+", type=int, default=[0])
        p.add_argument("--n", type=int, default=200, help="test layouts (1-3 objects) per run")
        p.add_argument("--w", type=float, default=2.0)
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--conditioning", default="grouped")
        p.add_argument("--out", default=str(RESULTS / out))
        p.add_argument("--threads", type=int, default=1)
    args = vars(parser.parse_args(argv))
    command = "python -m lib.latent.controlnet_study " + " ".join(sys.argv[1:] if argv is None else argv)
    cmd, out = args.pop("cmd"), args.pop("out")
    seed_everything(0, threads=args.pop("threads"))
    results = run_study(**args) if cmd == "study" else run_composition(**args)
    save_results(out, results, command=command)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
