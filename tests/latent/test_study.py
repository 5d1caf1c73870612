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
    b = bars(per)
    assert b["grouped"]["chosen_w"] == 2.0 and b["grouped"]["two_binding_ge_0.80"] is True
    assert b["clip"]["one_joint_ge_0.95"] is True and b["clip"]["one_attributes_ge_0.97"] is False
    assert b["hardneg_effect"]["2.0"]["binding"]["difference"] == pytest.approx(0.1)
