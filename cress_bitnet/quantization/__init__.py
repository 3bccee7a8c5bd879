"""Fairseq-free quantized linear layers (torch only) and the module surgery that installs them."""

from __future__ import annotations

from .base import QuantLinear
from .bcq import BCQLinear, bcq_alternating, bcq_greedy
from .bitnet import BitLinear, TernaryLinear
from .common import fake_quant_per_token, seed_act_rescale, sign_pm1, straight_through
from .minmax import MinMaxQuantLinear, fake_quant_minmax
from .packing import pack_signs, pack_ternary, packed_bits, unpack_signs, unpack_ternary
from .registry import QUANTIZERS
from .report import linear_deploy_bytes, module_deploy_bits
from .surgery import OUTPUT_HEADS, quantize_model
from .svcd import SVCDLinear
from .tsvd import TSVDLinear, ternary_decomposition

__all__ = [
    "OUTPUT_HEADS",
    "QUANTIZERS",
    "BCQLinear",
    "BitLinear",
    "MinMaxQuantLinear",
    "QuantLinear",
    "SVCDLinear",
    "TSVDLinear",
    "TernaryLinear",
    "bcq_alternating",
    "bcq_greedy",
    "fake_quant_minmax",
    "fake_quant_per_token",
    "pack_signs",
    "pack_ternary",
    "packed_bits",
    "quantize_model",
    "seed_act_rescale",
    "sign_pm1",
    "straight_through",
    "ternary_decomposition",
    "linear_deploy_bytes",
    "module_deploy_bits",
    "unpack_signs",
    "unpack_ternary",
]
