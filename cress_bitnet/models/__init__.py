from cress_bitnet.models import hubert_transformer  # noqa: F401
