"""The ControlNet study: unseen layouts, sampling-seed vs training-seed spreads, the runs of the IoU study and of the
composition of two ControlNets (tiny untrained pipeline, or a stand-in sampler that records what it is given)."""

import json

import pytest
import torch

from lib.data.shapes import make_shapes
from lib.latent import controlnet_study
from lib.latent.controlnet import ControlledUNet, ControlNet, condition_image
from lib.latent.controlnet_study import compose, load_named, main, measure, summarise, unseen_layouts
from lib.latent.controlnet_train import TEXT_ONLY, ControlTrainConfig, TrainedControlNet, save_controlnet


def _nets(pipe, n=2, kind="mask", seed=0):
    nets = {}
    for i in range(n):
        torch.manual_seed(seed + i)
        net = ControlNet.from_unet(pipe.denoiser.unet)
        for z in [*net.zero_convs, net.mid_zero, net.condition_encoder.out]:  # a stand-in for a trained one
            torch.nn.init.normal_(z.weight, std=0.3)
        nets[f"{kind}_s{i}"] = (net.eval(), {"kind": kind, "p_empty": 0.5, "seed": i})
    return nets


def test_unseen_layouts_are_not_in_the_training_set():
    b = unseen_layouts(10, seed=5, n_train=500)
    seen = {bytes(m.numpy()) for m in condition_image(make_shapes(500, seed=0, split="train")).bool()}
    assert len(b) == 10 and not any(bytes(m.numpy()) in seen for m in condition_image(b).bool())
    assert bool((b.n_objects >= 1).all())


def _run(model, seed, iou, setting="mask, p_empty=0.5", strength=1.0, caption="caption", train_seed=None):
    return {"setting": setting, "model": model, "train_seed": train_seed if train_seed is not None else int(model[-1]),
            "seed": seed, "strength": strength, "caption": caption, "iou": iou, "n_objects": 7}  # fmt: skip


def test_training_seed_spread_is_over_checkpoint_means_not_pooled():
    offsets = {"m0": 0.70, "m1": 0.80, "m2": 0.90}  # three training seeds of one setting
    runs = [_run(m, s, off + 0.01 * s) for m, off in offsets.items() for s in (0, 1, 2)]
    runs += [_run("m0", s, 0.1 + 0.02 * s, TEXT_ONLY, 0.0) for s in (0, 1, 2)]
    runs += [_run("n9", s, 0.5, "mask, p_empty=0.0") for s in (0, 1, 2)]
    summary, train = summarise(runs)
    one = summary["m1 | strength 1.0 | caption"]
    assert one["iou"]["mean"] == pytest.approx(0.81) and one["iou"]["std"] == pytest.approx(0.01)
    assert one["iou"]["n"] == 3 and one["train_seed"] == 1 and one["setting"] == "mask, p_empty=0.5"
    assert summary[f"{TEXT_ONLY} | strength 0.0 | caption"]["iou"]["mean"] == pytest.approx(0.12)
    t = train["mask, p_empty=0.5 | strength 1.0 | caption"]
    assert t["models"] == ["m0", "m1", "m2"] and t["train_seeds"] == [0, 1, 2]
    assert t["iou"]["n"] == 3 and t["iou"]["mean"] == pytest.approx(0.81)
    assert t["iou"]["std"] == pytest.approx(0.1)  # std of 0.71, 0.81, 0.91; the pooled std of 9 runs is smaller
    assert t["sampling_std"]["iou"] == pytest.approx(0.01)
    assert set(train) == {"mask, p_empty=0.5 | strength 1.0 | caption"}  # one checkpoint: no training-seed spread
    with pytest.raises(ValueError, match="different seeds"):
        summarise([_run("m0", 0, 0.5), _run("m1", 1, 0.5)])


def test_measure_runs_on_a_tiny_pipeline(tiny_pipe):
    pipe = tiny_pipe
    test, one = make_shapes(3, seed=4, split="test"), make_shapes(2, seed=5, n_objects=1, split="test")
    runs = measure(pipe, _nets(pipe), test, one, strengths=[0.0, 1.0], sample_seeds=[0, 1], w=2.0, steps=2)
    frozen = [r for r in runs if r["strength"] == 0]
    assert {r["model"] for r in frozen} == {"mask_s0"} and {r["setting"] for r in frozen} == {TEXT_ONLY}
    # per checkpoint and seed: strength 1 with / without caption + judge; the first also strength 0 (x2) + judge
    assert len(runs) == 2 * (3 + 3) + 2 * 3
    judge = [r for r in runs if r["caption"] == "judge_one"]
    assert all(0 <= r["shape_and_colour"] <= min(r["shape"], r["colour"]) <= 1 for r in judge)
    ref = pipe.generate(labels=test.labels, w=2.0, steps=2, generator=torch.Generator().manual_seed(1)).images
    r0 = next(r for r in frozen if r["seed"] == 1 and r["caption"] == "caption")
    assert r0["iou"] == controlnet_study.iou_summary(ref, test)["iou"]  # strength 0 is the frozen pipeline
    summary, train = summarise(runs)
    assert set(train) == {"mask, p_empty=0.5 | strength 1.0 | caption", "mask, p_empty=0.5 | strength 1.0 | empty",
                          "mask, p_empty=0.5 | strength 1.0 | judge_one"}  # fmt: skip
    assert train["mask, p_empty=0.5 | strength 1.0 | caption"]["train_seeds"] == [0, 1]


def test_composition_wiring(tiny_pipe, monkeypatch):
    """A stand-in sampler records each call and returns the real images of A: IoU to A is 1, to B the overlap."""
    pipe = tiny_pipe
    a = make_shapes(4, seed=6, split="test")
    b = a[[1, 2, 3, 0]]
    nets = _nets(pipe)
    (m, _), (e, _) = nets["mask_s0"], nets["mask_s1"]
    calls = []

    def fake(pipe_, model, cond, captions, labels, *, w, steps, generator, strength, empty):
        calls.append({"model": model, "cond": cond, "captions": captions, "strength": strength, "empty": empty})
        return a.images

    monkeypatch.setattr(controlnet_study, "generate_controlled", fake)
    runs = compose(pipe, m, e, a, b, strengths=[0.5, 1.0], sample_seeds=[0, 1], w=2.0, steps=2)
    assert len(runs) == len(calls) == 2 * (2 * (2 + 2) + 3 * 2)
    overlap = controlnet_study.iou_summary(a.images, b)["iou"]
    assert all(r["iou_A"] == 1.0 and r["iou_B"] == overlap and r["iou_A_minus_B"] == 1 - overlap for r in runs)
    for r, c in zip(runs, calls, strict=True):
        pair = r["composition"] != "mask alone (A)" and r["composition"] != "edges alone (A)"
        assert isinstance(c["model"], ControlledUNet) and len(c["model"].controlnets) == (2 if pair else 1)
        assert c["empty"] == (r["caption"] == "empty")
        assert c["captions"] == (b if r["caption"] == "caption B" else a).captions
        if r["composition"] == "mask A + edges B":
            assert torch.equal(c["cond"], torch.cat([condition_image(a, "mask"), condition_image(b, "edges")], 1))
            assert c["strength"] == [r["strength"][0]] * 2
        elif r["composition"] == "mask + edges (A, A)":
            assert torch.equal(c["cond"], condition_image(a, "mask+edges"))
        else:
            assert torch.equal(c["cond"], condition_image(a, r["composition"].split()[0])) and c["strength"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        compose(pipe, m, e, a, b[:3], strengths=[1.0], sample_seeds=[0], w=2.0, steps=2)


def test_composition_at_strength_zero_is_the_frozen_pipeline(tiny_pipe):
    pipe = tiny_pipe
    a = make_shapes(3, seed=7, split="test")
    b = a[[1, 2, 0]]
    nets = _nets(pipe)
    runs = compose(pipe, nets["mask_s0"][0], nets["mask_s1"][0], a, b, strengths=[0.0, 1.0], sample_seeds=[3],
                   w=2.0, steps=2)  # fmt: skip
    get = lambda what, s, cap: next(r for r in runs if r["composition"] == what and r["strength"] == s
                                    and r["caption"] == cap)  # fmt: skip
    for cap, cap_conflict in (("caption", "caption A"), ("empty", "empty")):  # the conditions do not matter at 0
        assert get("mask + edges (A, A)", [0.0, 0.0], cap)["iou_A"] == get("mask A + edges B", [0.0, 0.0],
                                                                            cap_conflict)["iou_A"]  # fmt: skip


def test_load_named_checks_the_kind(tiny_pipe, tmp_path):
    pipe = tiny_pipe
    net = ControlNet.from_unet(pipe.denoiser.unet)
    (tmp_path / "ldm.bin").write_bytes(b"unet")
    path = save_controlnet(TrainedControlNet(net, ControlTrainConfig(kind="edges")), tmp_path / "cn.safetensors",
                           "test", tmp_path / "ldm.bin")  # fmt: skip
    _, meta = load_named(str(path), kind="edges")
    assert meta["config"]["kind"] == "edges"
    with pytest.raises(ValueError, match="expected 'mask'"):
        load_named(str(path), kind="mask")


def test_commands_on_the_shipped_checkpoints(tmp_path):
    out = tmp_path / "s.json"
    assert main(["study", "--names", "shapes_controlnet_mask", "--strengths", "0", "1", "--n", "2", "--n-one", "2",
                 "--steps", "1", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["provenance"]["command"].startswith("python -m lib.latent.controlnet_study study")
    assert res["results"]["training_seeds"] == {} and len(res["results"]["runs"]) == 6
    assert res["results"]["decoder"]["file"] == "shapes_decoder_ft.safetensors"
    out = tmp_path / "c.json"
    assert main(["compose", "--strengths", "1", "--n", "2", "--steps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert len(res["runs"]) == 2 * 3 + 3 and "mask A + edges B | strength (1.0, 1.0) | empty" in res["summary"]
