"""Length-bucketed batching that never drops examples.

ve-fairseq 0.12.3's compiled ``batch_by_size_vec`` drops the trailing partial batch when
``required_batch_size_multiple > 1`` (fairseq-train's default is 8): 5 validation utterances give zero batches, and
``fairseq-generate`` silently scores only part of a test set. Our datasets batch with this implementation of fairseq's
documented rule instead: a full batch is cut to a multiple of the required size, and whatever is left at the end
still forms a batch.
"""

from __future__ import annotations

import numpy as np


def batch_by_size(
    indices: np.ndarray,
    num_tokens: np.ndarray,
    max_tokens: int | None = None,
    max_sentences: int | None = None,
    required_batch_size_multiple: int = 1,
) -> list[np.ndarray]:
    """Group ``indices`` (in order) so each batch's padded size ``len * max(num_tokens)`` stays within limits."""
    indices = np.asarray(indices, dtype=np.int64)
    num_tokens = np.asarray(num_tokens, dtype=np.int64)
    mult = max(int(required_batch_size_multiple), 1)
    max_tokens = max_tokens if max_tokens and max_tokens > 0 else None
    max_sentences = max_sentences if max_sentences and max_sentences > 0 else None
    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    n = len(indices)
    i = 0
    while i < n:
        size = int(num_tokens[i])
        if max_tokens is not None and size > max_tokens:
            raise ValueError(f"example {indices[i]} has {size} tokens, more than max_tokens={max_tokens}")
        count = i - start
        new_longest = max(longest, size)
        full = (max_sentences is not None and count >= max_sentences) or (
            max_tokens is not None and new_longest * (count + 1) > max_tokens
        )
        if full and count > 0:
            keep = max(mult * (count // mult), count % mult)
            batches.append(indices[start : start + keep])
            start += keep
            longest = int(num_tokens[start:i].max()) if start < i else 0
            continue
        longest = new_longest
        i += 1
    if start < n:
        batches.append(indices[start:])
    return batches


class BatchBySizeMixin:
    """Use :func:`batch_by_size` for a fairseq dataset that provides ``num_tokens_vec``."""

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):  # noqa: ANN001, ANN201
        return batch_by_size(
            indices, self.num_tokens_vec(np.asarray(indices)), max_tokens, max_sentences, required_batch_size_multiple
        )
