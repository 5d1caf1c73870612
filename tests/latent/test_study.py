"""The study's caption sets, spreads over seeds and summary table (the sampling itself runs in the command)."""

import pytest

from lib.latent.study import CONVENTION, caption_sets, spread, table


def test_caption_sets_are_fixed_and_split():
    a, b = caption_sets({"one": 5, "heldout_two": 4}), caption_sets({"one": 5, "heldout_two": 4})
    assert a["one"].captions == b["one"].captions and (a["one"].n_objects == 1).all()
    assert (a["heldout_two"].n_objects == 2).all() and len(a["heldout_two"]) == 4
    with pytest.raises(ValueError, match="sizes"):
        caption_sets({"three": 5})
    assert "s = 1 + w" in CONVENTION


def test_spread_and_table():
    per_seed = {"0": {"two": {"binding": 0.8, "swap": 0.1}}, "1": {"two": {"binding": 0.6, "swap": 0.3}}}
    s = spread(per_seed)
    assert s["mean"]["two"]["binding"] == pytest.approx(0.7) and s["std"]["two"]["binding"] == pytest.approx(
        0.1414, rel=1e-3
    )
    rows = table({"clip": {"w": {"2.0": {"seeds": per_seed, **s}}}})
    assert rows == [
        {
            "conditioning": "clip",
            "w": 2.0,
            "guidance_scale": 3.0,
            "two_binding": pytest.approx(0.7),
            "two_binding_std": pytest.approx(0.1414, rel=1e-3),
            "two_swap": pytest.approx(0.2),
            "two_swap_std": pytest.approx(0.1414, rel=1e-3),
        }
    ]


def test_run_on_a_tiny_pipeline():
    """The study loop end to end on an untrained tiny pipeline and two captions per set (rates in [0, 1])."""
    import torch

    from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
    from lib.latent.judge import AttributeJudge
    from lib.latent.pipeline import LatentDenoiser, LDMConfig, TextToImage
    from lib.latent.study import ONE_KEYS, TWO_KEYS, run

    torch.manual_seed(0)
    den = LatentDenoiser(LDMConfig(base_channels=8, time_dim=16, context_dim=16))
    pipe = TextToImage(den, KLAutoencoder(AutoencoderConfig(channels=(16, 16))))
    res = run(pipe, [0.0, 1.0], [0, 1], {"one": 2, "two": 2}, steps=2, judge=AttributeJudge().eval())
    assert set(res["w"]) == {"0.0", "1.0"} and set(res["w"]["1.0"]["seeds"]) == {"0", "1"}
    assert set(res["w"]["0.0"]["mean"]["one"]) == set(ONE_KEYS) and set(res["w"]["0.0"]["std"]["two"]) == set(TWO_KEYS)
    assert all(0 <= v <= 1 for g in res["w"]["1.0"]["mean"].values() for v in g.values())


def test_bars_pick_the_best_w_and_the_hardneg_effect():
    from lib.latent.study import bars

    def res(one, two):
        m = {"one": {**{a: one for a in ("shape", "colour", "size", "row", "col")}, "joint": one},
             "two": {"binding": two, "swap": 1 - two}}  # fmt: skip
        return {"mean": m, "std": {"two": {"binding": 0.01, "swap": 0.02}}}

    per = {"grouped": {"w": {"0.0": res(0.9, 0.7), "2.0": res(0.98, 0.85)}},
           "clip": {"w": {"0.0": res(0.9, 0.3), "2.0": res(0.96, 0.4)}},
           "clip_hardneg": {"w": {"0.0": res(0.9, 0.35), "2.0": res(0.97, 0.5)}}}  # fmt: skip
    per["grouped_full_1500"] = {"w": {"0.0": res(0.95, 0.9), "2.0": res(0.9, 0.6)}}  # an ablation row
    per["clip_4500"] = {"w": {"0.0": res(0.9, 0.9), "2.0": res(0.99, 0.95)}}  # an ablation of clip, meeting every bar
    b = bars(per)
    assert b["grouped"]["chosen_w"] == 2.0 and b["grouped"]["two_binding_ge_0.80"] is True
    assert b["grouped_full_1500"]["chosen_w"] == 0.0 and b["grouped_full_1500"]["two_binding"] == pytest.approx(0.9)
    assert b["grouped_full_1500"]["ablation_of"] == "grouped_full"  # rates, but no bar verdicts
    assert not any(k.endswith(("_0.97", "_0.95", "_0.80")) for k in b["grouped_full_1500"])
    assert "ablation_of" not in b["grouped"]
    assert b["clip"]["one_joint_ge_0.95"] is True and b["clip"]["one_attributes_ge_0.97"] is False
    assert b["hardneg_effect"]["2.0"]["binding"]["difference"] == pytest.approx(0.1)  # clip_hardneg - clip only
    assert b["clip_4500"]["ablation_of"] == "clip" and b["clip_4500"]["chosen_w"] == 2.0
    assert not any(k.endswith(("_0.97", "_0.95", "_0.80")) for k in b["clip_4500"])  # no verdicts, though it meets them
    assert "two_binding_ge_0.80" not in b["clip"]  # the shipped clip row: verdicts, but no binding bar


def test_ablation_labels():
    from lib.latent.study import ablation_of

    assert ablation_of("grouped") is None and ablation_of("clip_hardneg") is None
    assert ablation_of("grouped_full_1500") == "grouped_full" and ablation_of("grouped_long") == "grouped"
    assert ablation_of("clip_hardneg_x") == "clip_hardneg"
    assert ablation_of("clip_4500") == "clip"  # not clip_hardneg: the longest conditioning that is a prefix + "_"
    with pytest.raises(ValueError, match="study label"):
        ablation_of("pixels")


def test_merge_keeps_ablation_rows_and_refuses_mixed_decoders(tmp_path, monkeypatch):
    from lib.latent import study
    from lib.utils import load_results, save_results

    def res(one, two):
        m = {"one": {**{a: one for a in ("shape", "colour", "size", "row", "col")}, "joint": one},
             "two": {"binding": two, "swap": 0.0}}  # fmt: skip
        return {"w": {"2.0": {"mean": m, "std": m}}, "checkpoint_sha256": "x"}

    common = {"convention": "c", "steps": 15, "sizes": {"one": 2}, "seeds": [0], "ws": [2.0]}
    decoder = {"file": "d.safetensors", "sha256": "abc"}
    for label, one, two in (("grouped_full", 0.99, 0.9), ("grouped_full_1500", 0.9, 0.7)):
        save_results(tmp_path / f"study_{label}.json", {**common, "decoder": decoder, label: res(one, two)}, "test")
    monkeypatch.setattr(study, "RESULTS", tmp_path)
    assert study.main(["merge", "--threads", "1"]) == 0
    merged = load_results(tmp_path / "study.json")["results"]
    assert merged["decoder"] == decoder and set(merged["conditionings"]) == {"grouped_full", "grouped_full_1500"}
    assert merged["bars"]["grouped_full"]["two_binding_ge_0.80"] is True
    assert merged["bars"]["grouped_full_1500"]["ablation_of"] == "grouped_full"
    other = {**common, "decoder": {"file": "d0.safetensors", "sha256": "def"}, "grouped": res(0.9, 0.3)}
    save_results(tmp_path / "study_grouped.json", other, "test")
    with pytest.raises(SystemExit, match="differ in decoder"):
        study.main(["merge", "--threads", "1"])
