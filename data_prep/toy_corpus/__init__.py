"""The synthetic MuST-C corpus behind ``python -m data_prep.make_toy_mustc``: ``lexicon`` (words and their forms),
``grammar`` (sentences and their translations), ``espeak`` (the eSpeak NG binding) and ``talks`` (audio and layout)."""
