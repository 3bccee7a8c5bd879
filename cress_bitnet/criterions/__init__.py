from cress_bitnet.criterions import speech_and_text_translation  # noqa: F401
