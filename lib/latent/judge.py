"""The independent attribute judge: segment the objects of a shapes image, classify each crop, score captions.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``); reused by the ControlNet and SD3 chapters.
Data: :mod:`lib.data.shapes`. Binding failures (the right attributes on the wrong objects) follow Yuksekgonul et al.,
"When and why vision-language models behave like bags-of-words", 2023, and T2I-CompBench (Huang et al., 2023).

Objects are found by their difference from the background (the per-channel median of the image): pixels further than
:data:`THRESHOLD` in some channel are foreground and its 8-connected components are the objects (exact on real images:
objects are a background pixel apart). A small CNN (:class:`AttributeJudge`) reads a fixed-size crop around each
object (other objects painted over with the background) and predicts shape, colour and size; row and column come from
the box centre. :func:`evaluate` scores images against the labels they were generated from.

Glossary
--------
detection        one segmented object with its predicted (shape, colour, size, row, col)
joint            one-object images: exactly one object found and every attribute right
binding          k-object images: exactly k objects found, matched one-to-one to the labelled objects with the same
                 shape, colour and size, and the relation of every consecutive labelled pair true of the matched ones
colour swap      k objects found whose shapes match the labels, whose colours are the labelled colours, but on the
                 wrong objects (size swap: the same for sizes)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.data.shapes import ATTRIBUTES, COLOURS, SHAPES, SIZES, relation, relation_holds

THRESHOLD = 0.7
"""Foreground: some channel differs from the background by more than this (images in [-1, 1]; real objects differ by
at least 1.3)."""
MIN_PIXELS = 4
"""Components smaller than this are ignored (specks in generated images; the smallest real object has 9 pixels)."""
CROP = 15
"""Side of the crop the CNN reads, centred on the object's box."""
_HEADS = (len(SHAPES), len(COLOURS), len(SIZES))


@dataclass(frozen=True)
class SegmentedObject:
    """One 8-connected foreground component."""

    mask: torch.Tensor
    """``(H, W)`` bool."""
    bbox: tuple[int, int, int, int]
    """``(y0, x0, y1, x1)``, inclusive pixel bounds."""
    centroid: tuple[float, float]
    """``(y, x)`` mean pixel position (pixel centres at ``i + 0.5``)."""

    @property
    def cell(self) -> tuple[int, int]:
        """``(row, col)`` of the 3x3 grid cell holding the centre of the box."""
        y0, x0, y1, x1 = self.bbox
        side = self.mask.shape[0] / 3
        return min(int((y0 + y1 + 1) / 2 / side), 2), min(int((x0 + x1 + 1) / 2 / side), 2)


def _check_images(images: Any) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, 3, H, W), got {getattr(images, 'shape', type(images))}")


def background(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` per-image, per-channel median: the background level (objects cover under a quarter of the image)."""
    _check_images(images)
    return images.flatten(2).median(dim=2).values


def segment(
    images: torch.Tensor, threshold: float = THRESHOLD, min_pixels: int = MIN_PIXELS
) -> list[list[SegmentedObject]]:
    """Per image, its objects in raster order of their first pixel. ``images``: ``(N, 3, H, W)`` in [-1, 1]."""
    from scipy import ndimage

    _check_images(images)
    fg = ((images - background(images)[:, :, None, None]).abs().amax(1) > threshold).numpy()  # (N, H, W)
    out = []
    for f in fg:
        comps, count = ndimage.label(f, structure=np.ones((3, 3)))
        objs = []
        for j in range(1, count + 1):
            m = comps == j
            if m.sum() < min_pixels:
                continue
            ys, xs = np.nonzero(m)
            bbox = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
            objs.append(SegmentedObject(torch.from_numpy(m), bbox, (float(ys.mean()) + 0.5, float(xs.mean()) + 0.5)))
        out.append(objs)
    return out


def crops(images: torch.Tensor, objects: list[list[SegmentedObject]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, 3, CROP, CROP)`` crops minus the background, one per object (other objects and a pixel around them
    painted with the background), and ``(M,)`` the image index of each."""
    _check_images(images)
    if len(objects) != images.shape[0]:
        raise ValueError(f"objects must have one list per image ({images.shape[0]}), got {len(objects)}")
    bg = background(images)[:, :, None, None]
    h = CROP // 2
    out, index = [], []
    for i, objs in enumerate(objects):
        if not objs:
            continue
        masks = torch.stack([o.mask for o in objs]).float()[:, None]  # (k, 1, H, W)
        grown = nn.functional.max_pool2d(masks, 3, 1, 1)[:, 0].bool()
        img = nn.functional.pad(images[i] - bg[i], (h, h, h, h))  # background 0 outside the image
        for j, o in enumerate(objs):
            others = (grown[:j].any(0) | grown[j + 1 :].any(0)) & ~o.mask
            cy, cx = (o.bbox[0] + o.bbox[2]) // 2, (o.bbox[1] + o.bbox[3]) // 2
            crop = img.masked_fill(nn.functional.pad(others, (h, h, h, h)), 0.0)[:, cy : cy + CROP, cx : cx + CROP]
            out.append(crop)
            index.append(i)
    if not out:
        return images.new_zeros(0, 3, CROP, CROP), torch.zeros(0, dtype=torch.long)
    return torch.stack(out), torch.tensor(index)


@dataclass(frozen=True)
class JudgeConfig:
    """The judge CNN and its training run."""

    channels: int = 32
    """Channels of the first two convolutions (the third has twice as many)."""
    hidden: int = 128
    """Width of the hidden layer before the three heads."""
    steps: int = 1500
    """Training steps (Adam)."""
    batch_size: int = 256
    """Crops per step."""
    lr: float = 2e-3
    """Adam learning rate (cosine decay to zero)."""
    n_images: int = 6000
    """Training images from the ``"train"`` split, plus a quarter as many ``"heldout"`` images (the judge must
    recognise held-out pairs too); half of each drawn on the gradient background."""
    noise: float = 0.15
    """Augmentation: Gaussian noise with standard deviation uniform in [0, noise] (images in [-1, 1])."""
    seed: int = 0
    """Seed of the training data, initialisation and batches."""


class AttributeJudge(nn.Module):
    """``(M, 3, CROP, CROP)`` crops -> logits ``(M, 4 + 6 + 2)`` of shape, colour and size."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or JudgeConfig()
        c = config.channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * c * (CROP // 4) ** 2, config.hidden), nn.ReLU(), nn.Linear(config.hidden, sum(_HEADS)),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (3, CROP, CROP):
            raise ValueError(f"x must have shape (M, 3, {CROP}, {CROP}), got {tuple(x.shape)}")
        return self.net(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, 3)`` int64: (shape, colour, size) indices."""
        with torch.no_grad():
            logits = self(x).split(_HEADS, dim=1)
        return torch.stack([g.argmax(1) for g in logits], dim=1)


def detect(images: torch.Tensor, judge: AttributeJudge | None = None) -> list[list[tuple[int, ...]]]:
    """Per image, per segmented object, largest first: (shape, colour, size, row, col) as indices."""
    judge = judge if judge is not None else default_judge()
    objects = [sorted(objs, key=lambda o: -int(o.mask.sum())) for objs in segment(images)]
    x, index = crops(images, objects)
    pred = judge.predict(x).tolist() if len(x) else []
    out: list[list[tuple[int, ...]]] = [[] for _ in objects]
    for p, i, o in zip(pred, index.tolist(), [o for objs in objects for o in objs], strict=True):
        out[i].append((*p, *o.cell))
    return out


def score_image(detected: list[tuple[int, ...]], labels: Any) -> dict[str, bool]:
    """Score one image's detections against its labels ``(K, 5)`` (``-1`` rows absent); see the glossary."""
    labs = [tuple(int(v) for v in r) for r in torch.as_tensor(labels).reshape(-1, 5).tolist() if r[0] >= 0]
    k = len(labs)
    if k == 0:
        raise ValueError("labels must contain at least one present object")
    count = len(detected) == k
    res = {"count": count, "objects": False, "relation": False, "binding": False, "colour_swap": False,
           "size_swap": False}  # fmt: skip
    if k == 1:
        best = detected[0] if detected else None
        for a, name in enumerate(ATTRIBUTES):
            res[name] = best is not None and best[a] == labs[0][a]
        res["joint"] = res["binding"] = count and all(res[name] for name in ATTRIBUTES)
        res["objects"] = count and best[:3] == labs[0][:3]
        del res["relation"]  # no pair to relate
        return res
    if not count:
        return res
    for p in itertools.permutations(range(k)):
        d = [detected[j] for j in p]  # d[i] is matched to labs[i]
        same = [[d[i][a] == labs[i][a] for i in range(k)] for a in range(3)]  # shape, colour, size
        rel = all(relation_holds(relation(labs[i], labs[i + 1]), d[i][3:5], d[i + 1][3:5]) for i in range(k - 1))
        if all(same[0]) and all(same[1]) and all(same[2]):
            res["objects"] = True
            res["relation"] |= rel
            res["binding"] |= rel
        elif all(same[0]):  # shapes right: are colours (or sizes) the labelled ones, on the wrong objects?
            for a, name in ((1, "colour_swap"), (2, "size_swap")):
                others = [b for b in (1, 2) if b != a]
                if all(all(same[b]) for b in others) and sorted(x[a] for x in d) == sorted(x[a] for x in labs):
                    res[name] = True
    return res


@dataclass
class JudgeReport:
    """What :func:`evaluate` returns: rates per number of labelled objects, and per-image records."""

    rates: dict[int, dict[str, float]]
    """``k -> {metric: fraction of k-object images}``; metrics of :func:`score_image` (for k = 1 also one per
    attribute and ``joint``), plus ``"n"`` (images) and ``"swap"`` (colour or size swap)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """Per image: ``n_objects``, ``detected`` (list of attribute tuples) and the scores of :func:`score_image`."""

    def summary(self) -> dict[str, dict[str, float]]:
        """JSON-ready rates (keys as strings)."""
        return {str(k): v for k, v in self.rates.items()}


def evaluate(images: torch.Tensor, labels: torch.Tensor, judge: AttributeJudge | None = None) -> JudgeReport:
    """Judge ``images (N, 3, H, W)`` in [-1, 1] against the ``labels (N, K, 5)`` they should show (e.g. those of
    the captions they were generated from)."""
    _check_images(images)
    if not torch.is_tensor(labels) or labels.dim() != 3 or labels.shape[2] != 5 or labels.shape[0] != len(images):
        raise ValueError(f"labels must be a tensor (N={len(images)}, K, 5), got {getattr(labels, 'shape', labels)}")
    records = []
    for det, lab in zip(detect(images, judge), labels, strict=True):
        rec = score_image(det, lab)
        rec["swap"] = rec["colour_swap"] or rec["size_swap"]
        records.append({"n_objects": int((lab[:, 0] >= 0).sum()), "detected": det, **rec})
    rates: dict[int, dict[str, float]] = {}
    for k in sorted({r["n_objects"] for r in records}):
        group = [r for r in records if r["n_objects"] == k]
        keys = [key for key, v in group[0].items() if isinstance(v, bool)]
        rates[k] = {"n": len(group), **{key: sum(r[key] for r in group) / len(group) for key in keys}}
    return JudgeReport(rates, records)


def attribute_accuracy(
    images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, judge: AttributeJudge | None = None
) -> dict[str, float]:
    """Per-attribute accuracy over every labelled object (``masks (N, K, H, W)`` of the real image the ``images``
    show, e.g. real images or their autoencoder reconstructions): each labelled object is compared with the detection
    overlapping its mask most (none: wrong). Returns ``{attribute: accuracy, "joint": ..., "n_objects": M}``.

    The judge's bars: >= 99.5% per attribute on real test objects (``results/latent/judge.json``), and >= 98% on
    autoencoder reconstructions: ``attribute_accuracy(decode(encode(b.images)), b.labels, b.masks)`` for a test
    batch ``b = make_shapes(n, seed=..., split="test")``."""
    _check_images(images)
    if masks.shape[:2] != labels.shape[:2] or masks.shape[0] != len(images):
        raise ValueError(
            f"labels (N, K, 5) and masks (N, K, H, W) must match images, got {labels.shape}, {masks.shape}"
        )
    judge = judge if judge is not None else default_judge()
    objects = [sorted(objs, key=lambda o: -int(o.mask.sum())) for objs in segment(images)]  # detect()'s order
    det = detect(images, judge)
    hits = {name: 0 for name in (*ATTRIBUTES, "joint")}
    total = 0
    for objs, d, lab, ms in zip(objects, det, labels.tolist(), masks, strict=True):
        for row, m in zip(lab, ms, strict=True):
            if row[0] < 0:
                continue
            total += 1
            overlap = [int((o.mask & m).sum()) for o in objs]
            if not overlap or max(overlap) == 0:
                continue
            best = d[int(np.argmax(overlap))]
            ok = [best[a] == row[a] for a in range(5)]
            for name, v in zip(ATTRIBUTES, ok, strict=True):
                hits[name] += v
            hits["joint"] += all(ok)
    return {**{k: v / max(total, 1) for k, v in hits.items()}, "n_objects": total}


# --- training ---------------------------------------------------------------------------------------------------


def _objects_from_masks(masks: torch.Tensor) -> list[list[SegmentedObject]]:
    """The generator's masks ``(N, K, H, W)`` as :class:`SegmentedObject` lists (absent slots skipped)."""
    out = []
    for ms in masks:
        objs = []
        for m in ms:
            ys, xs = torch.nonzero(m, as_tuple=True)
            if len(ys):
                bbox = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
                objs.append(SegmentedObject(m, bbox, (float(ys.float().mean()) + 0.5, float(xs.float().mean()) + 0.5)))
        out.append(objs)
    return out


def object_crops(n: int, seed: int, split: str = "train", background: str = "plain"):
    """Crops ``(M, 3, CROP, CROP)`` and targets ``(M, 3)`` (shape, colour, size) of every object of ``n`` real
    images of ``split``."""
    from lib.data.shapes import ShapesConfig, make_shapes

    b = make_shapes(n, seed=seed, split=split, config=ShapesConfig(background=background))
    x, _ = crops(b.images, _objects_from_masks(b.masks))
    return x, b.labels[b.labels[..., 0] >= 0][:, :3]


def _augment(x: torch.Tensor, g: torch.Generator, noise: float) -> torch.Tensor:
    """Random one-pixel shift, blur, colour gain and Gaussian noise (a reconstruction or a sample is never exact)."""
    m = x.shape[0]
    dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    blur = nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    alpha = 0.7 * torch.rand(m, 1, 1, 1, generator=g)
    x = (1 - alpha) * x + alpha * blur
    x = x * (1 + 0.1 * (2 * torch.rand(m, 3, 1, 1, generator=g) - 1))
    return x + noise * torch.rand(m, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)


def train_judge(config: JudgeConfig | None = None) -> AttributeJudge:
    """Train the judge on real object crops through ``lib.train.train`` (about two minutes on one thread)."""
    from lib.train import train

    config = config or JudgeConfig()
    n, s = config.n_images, config.seed
    parts = [object_crops(n // 2, s, "train", "plain"), object_crops(n - n // 2, s, "train", "gradient"),
             object_crops(n // 8, s, "heldout", "plain"), object_crops(n // 8, s, "heldout", "gradient")]  # fmt: skip
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    torch.manual_seed(s)
    model = AttributeJudge(config)
    g = torch.Generator().manual_seed(s)

    def batch(step: int):
        idx = torch.randint(0, len(x), (config.batch_size,), generator=g)
        return _augment(x[idx], g, config.noise), y[idx]

    def loss_fn(m, b):
        logits = m(b[0]).split(_HEADS, dim=1)
        return sum(nn.functional.cross_entropy(z, b[1][:, a]) for a, z in enumerate(logits))

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    train(model, loss_fn, batch, config.steps, optimizer=opt, scheduler=sched, log_every=50, desc="judge")
    return model.eval()


def load_judge(path: Any = None) -> AttributeJudge:
    """The shipped judge ``weights/shapes_judge.safetensors`` (sha256 verified), in eval mode."""
    from lib.checkpoint import WEIGHTS_DIR, load_checkpoint

    state, meta = load_checkpoint(path or WEIGHTS_DIR / "shapes_judge.safetensors")
    model = AttributeJudge(JudgeConfig(**meta["config"]))
    model.load_state_dict(state)
    return model.eval()


@lru_cache(maxsize=1)
def default_judge() -> AttributeJudge:
    """:func:`load_judge` cached per process (the judge every chapter uses; made by ``python -m lib.latent.judge``)."""
    return load_judge()


def judge_accuracies(judge: AttributeJudge, n: int = 1500, seed: int = 1) -> dict[str, Any]:
    """:func:`attribute_accuracy` on ``n`` fresh real images per condition: the test split (plain; gradient
    background; Gaussian noise 0.1 and 0.2; half and full 3x3 box blur) and the held-out split. Also
    ``distinct_test_crops``: how many different crops the plain test objects give (42: on the plain background a real
    crop is fixed by shape, colour and size, 21 allowed pairs x 2 sizes, all seen in training, so "test" accuracy is
    training accuracy; the perturbed conditions and autoencoder reconstructions are the real checks)."""
    from lib.data.shapes import ShapesConfig, make_shapes

    test, held = make_shapes(n, seed=seed, split="test"), make_shapes(n, seed=seed, split="heldout")
    grad = make_shapes(n, seed=seed, split="test", config=ShapesConfig(background="gradient"))
    g = torch.Generator().manual_seed(seed)
    box = nn.functional.avg_pool2d(test.images, 3, 1, 1, count_include_pad=False)
    cases = {"test": test.images, "test_noise_0.1": test.images + 0.1 * torch.randn(test.images.shape, generator=g),
             "test_noise_0.2": test.images + 0.2 * torch.randn(test.images.shape, generator=g),
             "test_blur": (box + test.images) / 2, "test_box_blur": box}  # fmt: skip
    out: dict[str, Any] = {k: attribute_accuracy(im, test.labels, test.masks, judge) for k, im in cases.items()}
    out["test_gradient"] = attribute_accuracy(grad.images, grad.labels, grad.masks, judge)
    out["heldout"] = attribute_accuracy(held.images, held.labels, held.masks, judge)
    x, _ = crops(test.images, _objects_from_masks(test.masks))
    out["distinct_test_crops"] = len(torch.unique(x.flatten(1), dim=0))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.latent.judge [--steps S] [--seed S] [--out PATH] [--evaluate-only]``: train, measure, save
    (only if every test attribute is >= 99.5% right); ``--evaluate-only`` re-measures the saved judge."""
    import argparse
    import dataclasses
    import sys
    import time
    from pathlib import Path

    from lib.checkpoint import WEIGHTS_DIR, save_checkpoint
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description="train and save the shapes attribute judge")
    parser.add_argument("--out", default=str(WEIGHTS_DIR / "shapes_judge.safetensors"))
    parser.add_argument("--results", default=str(Path(__file__).resolve().parents[2] / "results/latent/judge.json"))
    parser.add_argument("--steps", type=int, default=JudgeConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate-only", action="store_true", help="load --out and re-measure")
    args = parser.parse_args(argv)
    command = run_command = "python -m lib.latent.judge " + " ".join(sys.argv[1:] if argv is None else argv)
    config = JudgeConfig(steps=args.steps, seed=args.seed)
    seed_everything(config.seed)
    if args.evaluate_only:
        from lib.checkpoint import load_checkpoint

        judge, meta = load_judge(args.out), load_checkpoint(args.out)[1]
        config, seconds, command = JudgeConfig(**meta["config"]), meta["train_seconds"], meta["provenance"]["command"]
    else:
        t0 = time.perf_counter()
        judge = train_judge(config)
        seconds = time.perf_counter() - t0
    acc = judge_accuracies(judge)
    worst = min(acc["test"][a] for a in ATTRIBUTES)
    print({k: {a: round(v, 5) for a, v in r.items()} if isinstance(r, dict) else r for k, r in acc.items()})
    if worst < 0.995:
        raise SystemExit(f"worst test attribute accuracy {worst:.4f} < 0.995: not saved")
    if not args.evaluate_only:
        extra = {"accuracy": acc, "train_seconds": seconds}
        save_checkpoint(args.out, judge.state_dict(), command=command, seed=config.seed,
                        config=dataclasses.asdict(config), extra=extra)  # fmt: skip
    results = {"accuracy": acc, "train_seconds": seconds, "train_command": command, "bar": 0.995,
               "config": dataclasses.asdict(config), "checkpoint": Path(args.out).name}  # fmt: skip
    save_results(args.results, results, command=run_command)
    print(f"saved {args.results}" + ("" if args.evaluate_only else f" and {args.out}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
