"""Mixed precision training: number formats, rounding, loss scaling, FP32 master weights, AMP, FP8, DDP.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``). Modules: ``formats``
(:func:`float_info`), ``rounding`` (:func:`round_to_bf16`, :func:`round_to_fp16`, ``round_to_format``
for any format, FP8 included), ``accumulate`` (running sums, Kahan), ``scaler``
(:class:`DynamicLossScaler`), ``master`` (:class:`MasterWeightStep`), ``amp`` (what autocast does;
``AmpStep``, the canonical GradScaler step with accumulation), ``memory`` (bytes per parameter,
activation memory), ``fp8`` (per-tensor and delayed scaling, an emulated FP8 linear layer),
``experiment`` (the digits runs: five precision modes and two FP8 modes), ``study``
(``python -m lib.precision.study``: every comparison over three seeds), ``ddp`` (data parallel),
``bench`` (``python -m lib.precision.bench``).
"""

from lib.precision.formats import FORMATS, FloatFormat, FloatInfo, float_info, representable
from lib.precision.master import MasterWeightStep
from lib.precision.rounding import round_to_bf16, round_to_format, round_to_fp16
from lib.precision.scaler import DynamicLossScaler

__all__ = [
    "FORMATS",
    "DynamicLossScaler",
    "FloatFormat",
    "FloatInfo",
    "MasterWeightStep",
    "float_info",
    "representable",
    "round_to_bf16",
    "round_to_format",
    "round_to_fp16",
]
