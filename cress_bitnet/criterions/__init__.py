from cress_bitnet.criterions import oracle_reg, speech_and_text_translation  # noqa: F401
