from cress_bitnet.models import hubert_transformer, quant_transformer  # noqa: F401
