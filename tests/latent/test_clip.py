"""CLIP-style model: InfoNCE against a naive loop, the text tower's token interface, the clamped temperature,
hard negatives, the probes' captions, errors, and a smoke run of the training command."""

import math

import numpy as np
import pytest
import torch

from lib.latent.clip import (
    CLIP,
    CLIPConfig,
    canonical_caption,
    hard_negative_labels,
    info_nce,
    load_clip,
    main,
    swap_attribute,
)
from lib.latent.tokenizer import Tokenizer

SMALL = CLIPConfig(d_model=16, n_layers=1, n_heads=2, embed_dim=8, image_channels=(8, 8), steps=2, batch_size=4)


def naive_info_nce(u, v, s, v_neg=None):
    B, total = len(u), 0.0
    cols = list(v) + (list(v_neg) if v_neg is not None else [])
    for i in range(B):  # image i against every caption (+ negatives)
        logits = [s * float(u[i] @ c) for c in cols]
        total += -(logits[i] - math.log(sum(math.exp(z) for z in logits))) / (2 * B)
    for i in range(B):  # caption i against every image
        logits = [s * float(v[i] @ x) for x in u]
        total += -(logits[i] - math.log(sum(math.exp(z) for z in logits))) / (2 * B)
    return total


def test_info_nce_matches_loop():
    g = torch.Generator().manual_seed(0)
    u, v, neg = (torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
                 for n in (5, 5, 3))  # fmt: skip
    assert float(info_nce(u, v, 7.0)) == pytest.approx(naive_info_nce(u, v, 7.0), rel=1e-10)
    assert float(info_nce(u, v, 7.0, neg)) == pytest.approx(naive_info_nce(u, v, 7.0, neg), rel=1e-10)
    assert float(info_nce(u, u, 100.0)) < 1e-3  # perfectly aligned, well separated pairs
    with pytest.raises(ValueError, match="u and v"):
        info_nce(u, v[:4], 1.0)
    with pytest.raises(ValueError, match="v_neg"):
        info_nce(u, v, 1.0, neg[:, :3])


def test_text_tower_interface_and_temperature():
    tok = Tokenizer()
    m = CLIP(len(tok), SMALL).eval()
    t = tok.encode(["a small red circle in the top left", "a big blue square below a tiny cyan cross"])
    h = m.text.tokens(t.ids, t.mask)
    assert h.shape == (2, t.ids.shape[1], 16)
    last = t.mask.sum(1) - 1
    torch.testing.assert_close(m.text.pooled(t.ids, t.mask), h[torch.arange(2), last])
    # padding does not change the real tokens' states
    longer = tok.encode(["a small red circle in the top left"], max_len=t.ids.shape[1] + 4)
    n = int(t.mask[0].sum())
    torch.testing.assert_close(m.text.tokens(longer.ids, longer.mask)[0, :n], h[0, :n])
    v, u = m.encode_text(t.ids, t.mask), m.encode_image(torch.zeros(3, 3, 32, 32))
    assert v.shape == (2, 8) and u.shape == (3, 8)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    assert float(m.logit_scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.log_s.fill_(10.0)
    assert float(m.logit_scale().detach()) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="mask"):
        m.text.tokens(t.ids, t.mask.long())
    with pytest.raises(ValueError, match="images"):
        m.encode_image(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="d_model"):
        CLIPConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="embed_init_std"):
        CLIPConfig(embed_init_std=0.0)
    torch.manual_seed(0)
    w1 = CLIP(len(tok), SMALL).text.embed.weight
    torch.manual_seed(0)
    w2 = CLIP(len(tok), CLIPConfig(**{**SMALL.__dict__, "embed_init_std": 0.02})).text.embed.weight
    torch.testing.assert_close(w2, 0.02 * w1)  # same draws, rescaled


def test_captions_and_hard_negatives():
    from lib.data.shapes import make_shapes

    one = np.array([[0, 0, 0, 0, 0], [-1] * 5, [-1] * 5])
    assert canonical_caption(one) == "a small red circle in the top left"
    two = np.array([[0, 0, 0, 1, 0], [1, 2, 1, 1, 2], [-1] * 5])
    assert canonical_caption(two) == "a small red circle left of a large blue square"
    assert canonical_caption(swap_attribute(two, (1,))) == "a small blue circle left of a large red square"
    assert canonical_caption(swap_attribute(two, (3, 4))) == "a small red circle right of a large blue square"
    Tokenizer().encode([canonical_caption(r) for r in make_shapes(30, seed=0).labels.numpy()])
    rng = np.random.default_rng(0)
    from lib.latent.clip import _has_held_out

    for row in make_shapes(200, seed=3, split="train").labels.numpy():
        neg = hard_negative_labels(row, rng)
        assert not np.array_equal(neg, row) and not _has_held_out(neg)
        assert sorted(map(tuple, neg[:, :3].tolist())) != sorted(map(tuple, row[:, :3].tolist())) or not np.array_equal(
            neg[:, 3:], row[:, 3:]
        )
    with pytest.raises(ValueError, match="labels_row"):
        canonical_caption(np.full((3, 5), -1))


@pytest.mark.parametrize("hard", [False, True])
def test_command_smoke(tmp_path, hard):
    out, res = tmp_path / "clip.safetensors", tmp_path / "results.json"
    argv = ["--steps", "2", "--batch-size", "4", "--n-train", "16", "--d-model", "16", "--n-layers", "1",
            "--embed-dim", "8", "--n-eval", "6", "--threads", "1", "--out", str(out),
            "--results", str(res)]  # fmt: skip
    assert main(argv + (["--hard-negatives"] if hard else [])) == 0
    trained = load_clip(out)
    assert trained.config.hard_negatives is hard and set(trained.metadata["results"]["zero_shot_test"]) == {
        "shape", "colour", "size", "row", "col"}  # fmt: skip
    assert main(argv + ["--evaluate-only"]) == 0
    from lib.utils import load_results

    assert set(load_results(res)["results"]["embedding_norms"]) == {"token", "position"}
    ctx, mask = trained.context(["a small red circle in the top left"])
    assert ctx.shape == (1, mask.shape[1], 16) and not ctx.requires_grad
