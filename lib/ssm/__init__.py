"""State space models: HiPPO, discretisation, S4D, linear RNNs (LRU, retention, SSD), the selective scan of
Mamba (reference, fused loop with a hand-written backward, parallel scans, Triton kernel) and the Mamba block.

Chapter: "State space models: from HiPPO to S4 to Mamba" (``chapters/ssm.ipynb``).

``import lib.ssm`` does not import Triton: ``selective_scan_triton`` (module ``lib.ssm.triton_scan``) loads on
first use, and on a machine without CUDA sets ``TRITON_INTERPRET=1`` so the kernel runs on CPU tensors.
"""

from __future__ import annotations

from typing import Any

from lib.ssm.discretize import bilinear, convolve, kernel, recurrence, zoh
from lib.ssm.hippo import legs, legt
from lib.ssm.linear_rnn import (
    LRU,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    semiseparable_matrix,
)
from lib.ssm.mamba import MambaBlock, MambaConfig, MambaLM
from lib.ssm.s4d import S4DKernel, s4d_lambda, vandermonde_kernel
from lib.ssm.scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_logdepth,
    selective_scan_loop,
    selective_scan_ref,
)

__all__ = [
    "LRU",
    "MambaBlock",
    "MambaConfig",
    "MambaLM",
    "S4DKernel",
    "bilinear",
    "convolve",
    "kernel",
    "legs",
    "legt",
    "recurrence",
    "retention_chunkwise",
    "retention_parallel",
    "retention_recurrent",
    "s4d_lambda",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_logdepth",
    "selective_scan_loop",
    "selective_scan_ref",
    "selective_scan_triton",
    "semiseparable_matrix",
    "vandermonde_kernel",
    "zoh",
]


def __getattr__(name: str) -> Any:
    """Lazy attribute: ``selective_scan_triton`` imports Triton only when first asked for."""
    if name == "selective_scan_triton":
        from lib.ssm.triton_scan import selective_scan_triton

        return selective_scan_triton
    raise AttributeError(f"module 'lib.ssm' has no attribute {name!r}")
