"""Recurrent cells written from their equations: vanilla (tanh) RNN, LSTM and GRU.

Each cell is state_dict-compatible with its ``torch.nn`` namesake (same parameter names ``weight_ih``,
``weight_hh``, ``bias_ih``, ``bias_hh``, same shapes, same gate order), so
``ours.load_state_dict(torch_cell.state_dict())`` gives the same outputs.

References: Elman (1990); Hochreiter & Schmidhuber (1997) with the forget gate of Gers et al. (2000);
Cho et al. (2014) for the GRU; Pascanu et al. (2013) for the Jacobian-product view of vanishing and
exploding gradients. Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).

Glossary
--------
x_t          input at step t, ``(batch, input_size)``
h_t          hidden state, ``(batch, hidden_size)``
c_t          LSTM cell state (the additive memory path), ``(batch, hidden_size)``
i, f, g, o   LSTM input, forget, candidate and output gates (torch's order in ``weight_ih`` rows)
r, z, n      GRU reset, update and candidate (torch's order)
W_hh         ``weight_hh``; its spectral norm bounds the RNN's per-step Jacobian
"""

from __future__ import annotations

import math

import torch
from torch import nn

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class _Cell(nn.Module):
    """Shared parameters: ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh`` ``(G*H,)``."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        for name, val in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        G, H = self.gates, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * H, H))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * H))
            self.bias_hh = nn.Parameter(torch.empty(G * H))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        a = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -a, a)

    def _affine(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_ih x + b_ih, W_hh h + b_hh)``, each ``(batch, G*H)``."""
        gi, gh = x @ self.weight_ih.T, h @ self.weight_hh.T
        if self.bias_ih is not None:
            gi, gh = gi + self.bias_ih, gh + self.bias_hh
        return gi, gh

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.input_size:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (batch, input_size={self.input_size}), got {shape}")

    def zero_state(self, batch: int, like: torch.Tensor) -> State:
        return like.new_zeros(batch, self.hidden_size)


class RNNCell(_Cell):
    """Elman cell: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``. Same API as ``torch.nn.RNNCell``."""

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x)
        h = self.zero_state(x.shape[0], x) if h is None else h
        gi, gh = self._affine(x, h)
        return torch.tanh(gi + gh)


class LSTMCell(_Cell):
    """LSTM cell; ``forward(x, (h, c)) -> (h', c')`` like ``torch.nn.LSTMCell``.

    ``i, f, g, o`` = rows ``[0:H], [H:2H], [2H:3H], [3H:4H]`` of ``W_ih x + b_ih + W_hh h + b_hh``;
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`` (the additive path), ``h' = sigmoid(o) * tanh(c')``.
    """

    gates = 4

    def zero_state(self, batch: int, like: torch.Tensor) -> State:
        z = like.new_zeros(batch, self.hidden_size)
        return z, z

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        h, c = self.zero_state(x.shape[0], x) if state is None else state
        gi, gh = self._affine(x, h)
        i, f, g, o = (gi + gh).chunk(4, dim=1)  # each (batch, H)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return h_new, c_new


class GRUCell(_Cell):
    """GRU cell; ``forward(x, h) -> h'`` like ``torch.nn.GRUCell``.

    ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """

    gates = 3

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x)
        h = self.zero_state(x.shape[0], x) if h is None else h
        gi, gh = self._affine(x, h)
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


def make_cell(kind: str, input_size: int, hidden_size: int) -> _Cell:
    """``"rnn"``, ``"lstm"`` or ``"gru"`` cell."""
    if kind not in CELLS:
        raise ValueError(f"kind must be one of {sorted(CELLS)}, got {kind!r}")
    return CELLS[kind](input_size, hidden_size)


class Recurrent(nn.Module):
    """Run a cell over a batch-first sequence: ``x (batch, T, input_size) -> (outputs (batch, T, H), state)``.

    The explicit Python loop is the point: step t cannot start before step t-1 has finished.
    """

    def __init__(self, cell: _Cell) -> None:
        super().__init__()
        if not isinstance(cell, _Cell):
            raise TypeError(f"cell must be an RNNCell, LSTMCell or GRUCell, got {type(cell).__name__}")
        self.cell = cell

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if not torch.is_tensor(x) or x.dim() != 3:
            raise ValueError(f"x must have shape (batch, T, input_size), got {getattr(x, 'shape', x)}")
        outputs = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs, dim=1), state


def scaled_orthogonal_(cell: RNNCell, rho: float, generator: torch.Generator | None = None) -> RNNCell:
    """Set ``W_hh = rho Q`` with ``Q`` a random orthogonal matrix and both biases to zero (in place).

    With zero inputs and ``h_0 = 0`` every state stays 0, every ``tanh'`` factor is 1 and each step
    Jacobian is ``J = rho Q``: the gradient ``k`` steps back is ``dL/dh_T (rho Q)^k``, of norm exactly
    ``rho^k ||dL/dh_T||``, so the bound of the chapter's theorem holds with equality.
    """
    if not isinstance(cell, RNNCell):
        raise TypeError(f"cell must be an RNNCell, got {type(cell).__name__}")
    if not (isinstance(rho, int | float) and rho > 0):
        raise ValueError(f"rho must be a positive number, got {rho!r}")
    H = cell.hidden_size
    w = cell.weight_hh
    Q, R = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64, generator=generator))
    Q = Q * torch.sign(torch.diagonal(R))  # Haar-distributed orthogonal matrix
    with torch.no_grad():
        w.copy_((rho * Q).to(w.dtype))
        if cell.bias_ih is not None:
            cell.bias_ih.zero_()
            cell.bias_hh.zero_()
    return cell


def state_gradient_norms(cell: _Cell, x: torch.Tensor, readout: torch.Tensor | None = None) -> torch.Tensor:
    """``||dL/ds_{T-k}||`` for ``k = 0..T-1``, where ``L = <readout, h_T>`` summed over the batch.

    ``s_t`` is the state that carries memory: ``h_t`` for the RNN and the GRU, the cell state ``c_t``
    for the LSTM. The gradient is the total derivative (every path from ``s_t`` to the loss), computed
    by autograd, i.e. backpropagation through time: a product of ``k`` step Jacobians applied to
    ``dL/ds_T``. Norms are averaged over the batch.

    Args:
        cell: an ``RNNCell``, ``LSTMCell`` or ``GRUCell``.
        x: inputs ``(batch, T, input_size)``.
        readout: ``(hidden_size,)`` direction of the loss; default all ones / sqrt(H).

    Returns:
        ``(T,)`` tensor, entry ``k`` is the mean gradient norm ``k`` steps back from the last state.
    """
    if not isinstance(cell, _Cell):
        raise TypeError(f"cell must be an RNNCell, LSTMCell or GRUCell, got {type(cell).__name__}")
    if not torch.is_tensor(x) or x.dim() != 3 or x.shape[2] != cell.input_size:
        raise ValueError(f"x must have shape (batch, T, {cell.input_size}), got {getattr(x, 'shape', x)}")
    B, T, _ = x.shape
    H = cell.hidden_size
    readout = x.new_full((H,), 1.0 / math.sqrt(H)) if readout is None else readout
    state = cell.zero_state(B, x)
    memory = []  # s_1 .. s_T
    with torch.enable_grad():
        for t in range(T):
            state = cell(x[:, t], state)
            memory.append(state[1] if isinstance(state, tuple) else state)
        h_T = state[0] if isinstance(state, tuple) else state
        loss = (h_T @ readout).sum()
        grads = torch.autograd.grad(loss, memory)
    norms = torch.stack([g.norm(dim=1).mean() for g in grads])  # (T,), index t -> s_{t+1}
    return norms.flip(0).detach()  # index k -> s_{T-k}
