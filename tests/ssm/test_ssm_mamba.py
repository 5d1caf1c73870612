"""The Mamba block and language model (lib/ssm/mamba.py): shapes, causality, scan implementations swap."""

import pytest
import torch

from lib.ssm.mamba import MambaBlock, MambaConfig, MambaLM, count_parameters


@pytest.mark.parametrize("mixer", ["s6", "s4d"])
def test_lm_shapes_and_causality(mixer):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(vocab_size=7, d_model=16, n_layers=2, d_state=4, mixer=mixer)).eval()
    x = torch.randint(0, 7, (2, 13))
    logits = model(x)
    assert logits.shape == (2, 13, 7)
    x2 = x.clone()
    x2[:, 9:] = (x2[:, 9:] + 1) % 7  # change the future only
    torch.testing.assert_close(model(x2)[:, :9], logits[:, :9])
    assert not torch.allclose(model(x2)[:, 9:], logits[:, 9:])


def test_scan_implementations_give_the_same_block():
    torch.manual_seed(0)
    c = MambaConfig(vocab_size=5, d_model=8, d_state=4)
    block = MambaBlock(c)
    x = torch.randn(2, 19, 8)
    ref = block(x)
    for impl in ("reference", "logdepth", "chunked"):
        other = MambaBlock(MambaConfig(vocab_size=5, d_model=8, d_state=4, scan_impl=impl))
        other.load_state_dict(block.state_dict())
        torch.testing.assert_close(other(x), ref, rtol=1e-5, atol=1e-5)


def test_parameter_counts_of_s6_and_s4d_are_close():
    n6 = count_parameters(MambaLM(MambaConfig(vocab_size=10, d_model=32, mixer="s6")))
    n4 = count_parameters(MambaLM(MambaConfig(vocab_size=10, d_model=32, mixer="s4d")))
    assert abs(n6 - n4) / n6 < 0.05


def test_errors():
    with pytest.raises(ValueError, match="mixer must be one of"):
        MambaConfig(vocab_size=4, mixer="lstm")
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        MambaConfig(vocab_size=4, d_model=0)
    model = MambaLM(MambaConfig(vocab_size=4, d_model=8))
    with pytest.raises(ValueError, match="tokens must be a"):
        model(torch.zeros(2, 3))


def test_delta_and_embedding_initialisation():
    torch.manual_seed(0)
    c = MambaConfig(vocab_size=5, d_model=64, d_state=4, dt_min=0.01, dt_max=0.5, embed_std=0.02)
    model = MambaLM(c)
    dt = torch.nn.functional.softplus(model.blocks[0].dt_proj.bias)  # the initial step sizes (inverse softplus)
    assert dt.min() >= 0.01 * (1 - 1e-4) and dt.max() <= 0.5 * (1 + 1e-4) and dt.max() > 0.2 and dt.min() < 0.03
    assert 0.01 < model.embed.weight.std() < 0.03
    assert MambaLM(MambaConfig(vocab_size=5, d_model=64)).embed.weight.std() > 0.5  # default: torch's N(0, 1)
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        MambaConfig(vocab_size=4, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="embed_std must be positive"):
        MambaConfig(vocab_size=4, embed_std=0.0)
