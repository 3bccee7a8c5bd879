from cress_bitnet.tasks import speech_and_text_translation  # noqa: F401
