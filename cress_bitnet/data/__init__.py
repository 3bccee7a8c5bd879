"""Data loading: audio and manifest I/O (fairseq-free) and the fairseq datasets built on them."""
