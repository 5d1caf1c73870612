from pathlib import Path

import pytest
import torch

from lib.data.shapes import ATTRIBUTES, COLOURS, PALETTE, ShapesConfig, make_shapes
from lib.latent.judge import (
    CROP,
    AttributeJudge,
    JudgeConfig,
    attribute_accuracy,
    crops,
    evaluate,
    load_judge,
    score_image,
    segment,
    train_judge,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def _mask_sets(masks):
    return sorted(tuple(m.flatten().nonzero()[:, 0].tolist()) for m in masks)


@pytest.mark.parametrize("background", ["plain", "gradient"])
def test_segment_recovers_the_generator_masks(background):
    b = make_shapes(200, seed=4, config=ShapesConfig(background=background))
    for objs, masks, k in zip(segment(b.images), b.masks, b.n_objects.tolist(), strict=True):
        assert _mask_sets([o.mask for o in objs]) == _mask_sets(masks[:k])
        for o in objs:
            ys, xs = torch.nonzero(o.mask, as_tuple=True)
            assert o.bbox == (ys.min(), xs.min(), ys.max(), xs.max())
            assert o.centroid == pytest.approx((float(ys.float().mean()) + 0.5, float(xs.float().mean()) + 0.5))


def test_segment_ignores_specks_and_blank_images():
    img = torch.full((2, 3, 32, 32), -0.8)
    img[1, :, 3:5, 3:4] = 1.0  # two pixels: a speck
    img[1, :, 10:13, 10:13] = 1.0  # nine pixels: an object
    objs = segment(img)
    assert objs[0] == [] and len(objs[1]) == 1 and objs[1][0].bbox == (10, 10, 12, 12) and objs[1][0].cell == (1, 1)


def test_crops_centre_the_object_and_paint_out_the_others():
    b = make_shapes(30, seed=2, n_objects=3)
    objs = segment(b.images)
    x, index = crops(b.images, objs)
    assert x.shape == (90, 3, CROP, CROP) and torch.equal(index, torch.arange(30).repeat_interleave(3))
    j = 0
    for img_objs, img in zip(objs, b.images, strict=True):
        for o in img_objs:
            ys, xs = torch.nonzero(o.mask, as_tuple=True)
            own = img[:, ys[0], xs[0]]  # this object's colour
            fg = (x[j].abs().amax(0) > 0.7).nonzero()  # foreground pixels of the crop
            assert len(fg) == int(o.mask.sum())  # only this object's pixels are foreground
            vals = x[j][:, fg[:, 0], fg[:, 1]]  # crops are minus the background level (-0.8)
            assert torch.allclose(vals, (own + 0.8)[:, None].expand_as(vals), atol=1e-6)
            mid = CROP // 2  # the box centre is the crop centre
            cy, cx = fg.float().amax(0) / 2 + fg.float().amin(0) / 2
            assert abs(float(cy) - mid) <= 0.5 and abs(float(cx) - mid) <= 0.5
            j += 1


# labels: (shape, colour, size, row, col); a red small circle top-left, a blue large square top-right
_A, _B = (0, 0, 0, 0, 0), (1, 2, 1, 0, 2)


def test_score_image_binding_and_swaps():
    labels = torch.tensor([_A, _B])
    good = score_image([_B, _A], labels)  # order of detections does not matter
    assert good["binding"] and good["objects"] and good["relation"] and good["count"] and not good["colour_swap"]
    colour_swap = score_image([(0, 2, 0, 0, 0), (1, 0, 1, 0, 2)], labels)
    assert colour_swap["colour_swap"] and not colour_swap["binding"] and not colour_swap["size_swap"]
    size_swap = score_image([(0, 0, 1, 0, 0), (1, 2, 0, 0, 2)], labels)
    assert size_swap["size_swap"] and not size_swap["binding"] and not size_swap["colour_swap"]
    wrong_colour = score_image([(0, 3, 0, 0, 0), (1, 2, 1, 0, 2)], labels)  # yellow is not a captioned colour
    assert not any(wrong_colour[k] for k in ("binding", "colour_swap", "size_swap", "objects"))
    flipped = score_image([(0, 0, 0, 0, 2), (1, 2, 1, 0, 0)], labels)  # right objects, relation reversed
    assert flipped["objects"] and not flipped["relation"] and not flipped["binding"]
    loose = score_image([(0, 0, 0, 2, 1), (1, 2, 1, 0, 2)], labels)  # "left of" only needs the columns
    assert loose["binding"]
    assert not score_image([_A], labels)["count"] and not score_image([_A, _B, _B], labels)["binding"]
    three = torch.tensor([_A, _B, (2, 1, 0, 2, 2)])  # triangle below the square: relations (0, 1) and (1, 2)
    assert score_image([three[2].tolist(), _A, _B], three)["binding"]
    assert not score_image([(2, 1, 0, 0, 1), _A, _B], three)["binding"]  # triangle above the square


def test_score_image_one_object():
    labels = torch.tensor([_B, (-1,) * 5])
    assert score_image([_B], labels)["joint"]
    off = score_image([(1, 2, 1, 1, 2)], labels)
    assert not off["joint"] and off["shape"] and off["colour"] and not off["row"] and off["objects"]
    assert not score_image([], labels)["shape"] and not score_image([_B, _A], labels)["joint"]
    with pytest.raises(ValueError, match="labels"):
        score_image([_A], torch.full((2, 5), -1))


def test_evaluate_real_images_with_their_labels(judge):
    b = make_shapes(240, seed=9, split="test")
    report = evaluate(b.images, b.labels, judge)
    assert set(report.rates) == {1, 2, 3} and sum(r["n"] for r in report.rates.values()) == 240
    assert report.rates[1]["joint"] == 1.0 and all(report.rates[1][a] == 1.0 for a in ATTRIBUTES)
    for k in (2, 3):
        assert report.rates[k]["binding"] == 1.0 and report.rates[k]["swap"] == 0.0
    assert len(report.records) == 240 and report.summary()["2"]["binding"] == 1.0


def test_evaluate_reports_deliberate_swaps(judge):
    b = make_shapes(80, seed=10, split="test", n_objects=2)
    colours = b.labels.clone()
    colours[:, [0, 1], 1] = b.labels[:, [1, 0], 1]  # the colours exchanged between the two objects
    r = evaluate(b.images, colours, judge).rates[2]
    assert r["binding"] == 0.0 and r["colour_swap"] == 1.0 and r["objects"] == 0.0
    differ = b.labels[:, 0, 2] != b.labels[:, 1, 2]
    sizes = b.labels[differ].clone()
    sizes[:, [0, 1], 2] = sizes[:, [1, 0], 2]
    r = evaluate(b.images[differ], sizes, judge).rates[2]
    assert r["size_swap"] == 1.0 and r["colour_swap"] == 0.0 and r["binding"] == 0.0
    cells = b.labels.clone()
    cells[:, [0, 1], 3:] = b.labels[:, [1, 0], 3:]  # the positions exchanged: the relation is reversed
    r = evaluate(b.images, cells, judge).rates[2]
    assert r["objects"] == 1.0 and r["relation"] == 0.0 and r["binding"] == 0.0


def test_attribute_accuracy_and_shipped_results(judge):
    b = make_shapes(200, seed=11, split="heldout")
    acc = attribute_accuracy(b.images, b.labels, b.masks, judge)
    assert acc["n_objects"] == int(b.n_objects.sum()) and acc["joint"] == 1.0
    blank = attribute_accuracy(torch.full_like(b.images, -0.8), b.labels, b.masks, judge)
    assert blank["shape"] == 0.0 and blank["joint"] == 0.0
    from lib.utils import load_results

    res = load_results(ROOT / "results/latent/judge.json")["results"]
    for case in ("test", "heldout"):
        assert res["accuracy"][case]["n_objects"] >= 2000
        assert min(res["accuracy"][case][a] for a in ATTRIBUTES) >= 0.995


def test_train_judge_smoke():
    model = train_judge(JudgeConfig(steps=3, n_images=16, channels=4, hidden=8, batch_size=8))
    assert isinstance(model, AttributeJudge) and not model.training
    pred = model.predict(torch.zeros(5, 3, CROP, CROP))
    assert pred.shape == (5, 3) and pred.dtype == torch.int64


def test_bad_inputs(judge):
    with pytest.raises(ValueError, match="images"):
        segment(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="images"):
        segment(torch.zeros(2, 3, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="objects"):
        crops(torch.zeros(2, 3, 32, 32), [[]])
    with pytest.raises(ValueError, match="labels"):
        evaluate(torch.zeros(2, 3, 32, 32), torch.zeros(3, 2, 5, dtype=torch.long), judge)
    with pytest.raises(ValueError, match="x must"):
        judge(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="masks"):
        attribute_accuracy(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 5), torch.zeros(2, 2, 32, 32), judge)
    assert PALETTE.shape == (len(COLOURS), 3)
