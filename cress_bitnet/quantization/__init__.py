"""Fairseq-free quantized linear layers (torch only): configs, the method registry, and the model surgery.

Public API (torchao style): build a config (``SVCDConfig(init="signvalue")``), then ``quantize_(model, config,
filter_fn)`` to swap layers for training, and ``pack_(model)`` to convert them to the packed inference form.
"""

from __future__ import annotations

from . import methods as _methods  # noqa: F401  (registers every method)
from .base import AUX_DTYPE, PackedLinear, QuantLinear, buffer_nbytes
from .common import fake_quant_per_token, seed_act_rescale, sign_pm1, straight_through
from .config import QuantConfig, option
from .methods.bcq import BCQConfig, BCQLinear, PackedBCQLinear, bcq_alternating, bcq_greedy
from .methods.bitnet import (
    BitLinear,
    BitNet158Config,
    BitNetConfig,
    PackedBitLinear,
    PackedTernaryLinear,
    TernaryLinear,
)
from .methods.minmax import MinMaxConfig, MinMaxQuantLinear, PackedMinMaxLinear, fake_quant_minmax
from .methods.svcd import PackedSVCDLinear, SVCDConfig, SVCDLinear
from .methods.tsvd import PackedTSVDLinear, TSVDConfig, TSVDLinear, ternary_decomposition
from .packing import pack_codes, pack_signs, pack_ternary, packed_bits, unpack_codes, unpack_signs, unpack_ternary
from .record import QuantRecord, RecordError
from .registry import METHODS, QuantMethod, config_from_dict, get_method, make_config, register_method
from .report import linear_deploy_bytes, module_deploy_bits
from .surgery import (
    OUTPUT_HEADS,
    pack_,
    quantize_,
    quantize_model,
    quantize_packed_,
    replace_modules,
    select_modules,
)

__all__ = [
    "AUX_DTYPE", "METHODS", "OUTPUT_HEADS",
    "BCQConfig", "BCQLinear", "BitLinear", "BitNet158Config", "BitNetConfig", "MinMaxConfig", "MinMaxQuantLinear",
    "PackedBCQLinear", "PackedBitLinear", "PackedLinear", "PackedMinMaxLinear", "PackedSVCDLinear", "PackedTSVDLinear",
    "PackedTernaryLinear", "QuantConfig", "QuantLinear", "QuantMethod", "QuantRecord", "RecordError", "SVCDConfig",
    "SVCDLinear", "TSVDConfig", "TSVDLinear", "TernaryLinear",
    "bcq_alternating", "bcq_greedy", "buffer_nbytes", "config_from_dict", "fake_quant_minmax", "fake_quant_per_token",
    "get_method", "linear_deploy_bytes", "make_config", "module_deploy_bits", "option", "pack_", "pack_codes",
    "pack_signs", "pack_ternary", "packed_bits", "quantize_", "quantize_model", "quantize_packed_", "register_method",
    "replace_modules", "seed_act_rescale", "select_modules", "sign_pm1", "straight_through", "ternary_decomposition",
    "unpack_codes", "unpack_signs", "unpack_ternary",
]
