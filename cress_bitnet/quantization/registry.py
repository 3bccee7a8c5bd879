"""Name -> quantizer class map used by ``quantize_model`` and the fairseq glue."""

from __future__ import annotations

from .base import QuantLinear
from .bcq import BCQLinear
from .bitnet import BitLinear, TernaryLinear
from .minmax import MinMaxQuantLinear
from .svcd import SVCDLinear
from .tsvd import TSVDLinear

QUANTIZERS: dict[str, type[QuantLinear]] = {
    "svcd": SVCDLinear,
    "bitnet": BitLinear,
    "bitnet158": TernaryLinear,
    "bcq": BCQLinear,
    "tsvd": TSVDLinear,
    "minmax": MinMaxQuantLinear,
}
