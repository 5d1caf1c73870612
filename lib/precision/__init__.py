"""Mixed precision training: number formats, rounding, loss scaling, FP32 master weights, DDP.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``). Modules: ``formats``
(:func:`float_info`), ``rounding`` (:func:`round_to_bf16`, :func:`round_to_fp16`), ``scaler``
(:class:`DynamicLossScaler`), ``master`` (:class:`MasterWeightStep`), ``experiment`` (the chapter's
four training runs), ``ddp`` (data parallel), ``bench`` (``python -m lib.precision.bench``).
"""

from lib.precision.formats import FORMATS, FloatFormat, FloatInfo, float_info, representable
from lib.precision.master import MasterWeightStep
from lib.precision.rounding import round_to_bf16, round_to_fp16
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
    "round_to_fp16",
]
