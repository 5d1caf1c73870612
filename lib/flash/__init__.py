"""FlashAttention: online softmax, a blockwise PyTorch reference, Triton kernels and their benchmark.

Chapter: "FlashAttention in three layers" (``chapters/flash_attention.ipynb``). Modules: ``online_softmax``,
``blockwise`` (the PyTorch reference), ``triton_kernels`` (forward, one-launch and atomic-dQ backwards, launch
configurations), ``io`` (HBM traffic, causal tile schedule), ``memory`` (peak memory), ``decoding`` (split-KV),
``fp8`` (FlashAttention-3's block quantisation and incoherent processing), ``bench`` (``python -m lib.flash.bench``).

``import lib.flash`` does not import Triton: ``triton_flash_attention`` (and the module
``lib.flash.triton_kernels``) is loaded on first use. On a machine without CUDA that first use sets
``TRITON_INTERPRET=1`` so the kernels run on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

from typing import Any

from lib.flash.blockwise import (
    FlashAttentionFunction,
    FlashForward,
    attention_delta,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
)
from lib.flash.memory import PeakMemory, measure_peak_memory, saved_tensor_bytes
from lib.flash.online_softmax import (
    OnlineSoftmaxState,
    online_softmax,
    online_softmax_state,
    online_softmax_weighted_sum,
    safe_softmax,
)

__all__ = [
    "FlashAttentionFunction",
    "FlashForward",
    "OnlineSoftmaxState",
    "PeakMemory",
    "attention_delta",
    "flash_attention",
    "flash_attention_backward",
    "flash_attention_forward",
    "measure_peak_memory",
    "online_softmax",
    "online_softmax_state",
    "online_softmax_weighted_sum",
    "safe_softmax",
    "saved_tensor_bytes",
    "triton_flash_attention",
]


def __getattr__(name: str) -> Any:
    """Lazy attribute: ``triton_flash_attention`` imports Triton only when first asked for."""
    if name == "triton_flash_attention":
        from lib.flash.triton_kernels import triton_flash_attention

        return triton_flash_attention
    raise AttributeError(f"module 'lib.flash' has no attribute {name!r}")
