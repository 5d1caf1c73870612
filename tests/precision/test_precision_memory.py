"""Bytes per parameter and measured activation memory (lib/precision/memory.py)."""

import pytest
import torch

from lib.precision.memory import RECIPES, bytes_per_parameter, saved_activation_bytes


def test_bytes_per_parameter():
    totals = {r: bytes_per_parameter(r).total for r in RECIPES}
    assert totals == {"fp32": 16, "fp16_master": 16, "bf16_autocast": 16, "bf16_pure": 8}
    assert bytes_per_parameter("fp16_master").master == 4
    with pytest.raises(ValueError, match="recipe"):
        bytes_per_parameter("fp8")


def loss(m, x):
    return m(x.to(next(m.parameters()).dtype)).float().sum()


def test_saved_bytes_of_linear_relu():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU())
    x = torch.randn(3, 5)
    # Linear saves its input (3 x 5), ReLU its output (3 x 7); the weight is a parameter: not counted
    assert saved_activation_bytes(model, loss, x) == 4 * (3 * 5 + 3 * 7)
    assert saved_activation_bytes(model, loss, x, torch.bfloat16) == 2 * (3 * 5 + 3 * 7)
    assert saved_activation_bytes(model.half(), loss, x) == 2 * (3 * 5 + 3 * 7)


def test_saved_bytes_grow_with_batch_and_count_autocast_weight_copies():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    b1 = saved_activation_bytes(model, loss, torch.randn(10, 8))
    b2 = saved_activation_bytes(model, loss, torch.randn(20, 8))
    assert b1 == 4 * 10 * (8 + 16) and b2 == 2 * b1  # input, ReLU output (the 2nd Linear's input is shared)
    # under autocast the second Linear needs its 16-bit weight copy for the input gradient
    assert saved_activation_bytes(model, loss, torch.randn(10, 8), torch.bfloat16) == 2 * 10 * (8 + 16) + 2 * 16 * 4


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        saved_activation_bytes("net", loss, torch.zeros(1))
    with pytest.raises(ValueError, match="autocast_dtype"):
        saved_activation_bytes(torch.nn.Linear(2, 2), loss, torch.zeros(1, 2), torch.float64)
