"""lib/seq/rnn.py: our cells equal torch's cells after load_state_dict (float64), wrappers, BPTT norms."""

import pytest
import torch

from lib.seq.rnn import GRUCell, LSTMCell, Recurrent, RNNCell, make_cell, scaled_orthogonal_, state_gradient_norms

PAIRS = [(RNNCell, torch.nn.RNNCell), (LSTMCell, torch.nn.LSTMCell), (GRUCell, torch.nn.GRUCell)]


@pytest.mark.parametrize("ours_cls, torch_cls", PAIRS)
@pytest.mark.parametrize("bias", [True, False])
def test_cells_match_torch_float64(ours_cls, torch_cls, bias):
    g = torch.Generator().manual_seed(0)
    I, H, B = 7, 5, 4
    ref = torch_cls(I, H, bias=bias).double()
    ours = ours_cls(I, H, bias=bias).double()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, H, generator=g, dtype=torch.float64)
    state = (h, torch.randn(B, H, generator=g, dtype=torch.float64)) if ours_cls is LSTMCell else h
    out_ref, out = ref(x, state), ours(x, state)
    out_ref = out_ref if isinstance(out_ref, tuple) else (out_ref,)
    out = out if isinstance(out, tuple) else (out,)
    for a, b in zip(out, out_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # gradients w.r.t. input and every parameter agree too
    ga = torch.autograd.grad(sum(o.sum() for o in out), [x, *ours.parameters()])
    gb = torch.autograd.grad(sum(o.sum() for o in out_ref), [x, *ref.parameters()])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("ours_cls, torch_cls", PAIRS)
def test_default_state_is_zero(ours_cls, torch_cls):
    ref = torch_cls(3, 4).double()
    ours = ours_cls(3, 4).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    a, b = ours(x), ref(x)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind, torch_cls", [("rnn", torch.nn.RNN), ("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)])
def test_recurrent_matches_torch_sequence_module(kind, torch_cls):
    ref = torch_cls(3, 6, batch_first=True).double()
    ours = Recurrent(make_cell(kind, 3, 6)).double()
    ours.cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})  # weight_ih_l0 -> weight_ih
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    out, state = ours(x)
    out_ref, state_ref = ref(x)
    torch.testing.assert_close(out, out_ref, atol=1e-10, rtol=0)
    if kind == "lstm":
        torch.testing.assert_close(state[1], state_ref[1][0], atol=1e-10, rtol=0)


def test_gradient_norms_bptt_bound_and_lstm_forget_gate():
    torch.manual_seed(0)
    T = 30
    x = torch.randn(8, T, 4, dtype=torch.float64)
    rnn = RNNCell(4, 16).double()
    norms = state_gradient_norms(rnn, x)
    assert norms.shape == (T,)
    # ||dL/dh_{T-k}|| <= ||dL/dh_T|| * ||W_hh||_2^k  (tanh' <= 1)
    s = torch.linalg.matrix_norm(rnn.weight_hh.detach(), ord=2)
    bound = norms[0] * s ** torch.arange(T, dtype=torch.float64)
    assert bool((norms <= bound * (1 + 1e-9)).all())
    # small recurrent weights: the gradient vanishes geometrically
    with torch.no_grad():
        rnn.weight_hh.mul_(0.5 / s)
    assert state_gradient_norms(rnn, x)[-1] < 1e-6 * norms[0]
    # LSTM with a forget gate biased open keeps the gradient far better than one biased shut
    lstm = LSTMCell(4, 16).double()
    H = 16
    with torch.no_grad():
        lstm.bias_ih[H : 2 * H] = 5.0
    open_ = state_gradient_norms(lstm, x)
    with torch.no_grad():
        lstm.bias_ih[H : 2 * H] = -5.0
    shut = state_gradient_norms(lstm, x)
    assert open_[-1] > 1e3 * shut[-1]


def test_gradient_norm_first_entry_matches_analytic_readout():
    # k = 0: dL/dh_T is the readout itself for the vanilla RNN and the GRU
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    for cls in (RNNCell, GRUCell):
        norms = state_gradient_norms(cls(2, 9).double(), x)
        assert abs(float(norms[0]) - 1.0) < 1e-12  # readout = ones / sqrt(9) has norm 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMCell(3, 0)
    with pytest.raises(ValueError, match="input_size=3"):
        GRUCell(3, 4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="kind"):
        make_cell("transformer", 3, 4)
    with pytest.raises(TypeError, match="cell"):
        Recurrent(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        Recurrent(RNNCell(2, 2))(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        state_gradient_norms(RNNCell(2, 2), torch.zeros(1, 3, 5))


@pytest.mark.parametrize("rho", [0.8, 1.0, 1.25])
def test_spectral_bound_is_tight_for_a_scaled_orthogonal_matrix(rho):
    # zero input and biases: h stays 0, J = rho Q, ||dL/dh_{T-k}|| = rho^k exactly (vanishing, flat, exploding)
    g = torch.Generator().manual_seed(0)
    cell = scaled_orthogonal_(RNNCell(3, 10).double(), rho, generator=g)
    W = cell.weight_hh.detach()
    torch.testing.assert_close(W @ W.T, rho**2 * torch.eye(10, dtype=torch.float64))
    norms = state_gradient_norms(cell, torch.zeros(4, 40, 3, dtype=torch.float64))
    torch.testing.assert_close(norms, rho ** torch.arange(40, dtype=torch.float64), atol=0, rtol=1e-12)
    with pytest.raises(TypeError, match="RNNCell"):
        scaled_orthogonal_(LSTMCell(3, 10), rho)
    with pytest.raises(ValueError, match="rho"):
        scaled_orthogonal_(cell, -1.0)
