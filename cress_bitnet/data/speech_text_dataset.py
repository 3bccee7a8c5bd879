"""fairseq datasets for speech-translation triplets (audio, transcript, translation) and binarized MT text.

Batches are single-modality: every collated batch carries ``net_input["mode"]`` (``"st"`` or ``"ext_mt"``), which the
model's encoder uses to pick the speech or text front-end, and which reaches the encoder at generation time through
``FairseqEncoder.forward_non_torchscript``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data import BaseWrapperDataset, Dictionary, FairseqDataset, LanguagePairDataset, data_utils
from fairseq.data.audio.multi_modality_dataset import ModalityDatasetItem, MultiModalityDataset

from cress_bitnet.data.audio import check_audio_refs, read_audio
from cress_bitnet.data.batching import BatchBySizeMixin
from cress_bitnet.data.manifest import ManifestError, ManifestRow, read_manifest

logger = logging.getLogger(__name__)

ST_MODE = "st"
MT_MODE = "ext_mt"


class SpeechTextTripletDataset(BatchBySizeMixin, FairseqDataset):
    """Raw-audio speech translation rows from a fairseq S2T manifest, with transcripts for MT fine-tuning."""

    def __init__(
        self,
        split: str,
        rows: list[ManifestRow],
        *,
        manifest_path: str,
        audio_root: str | Path,
        dictionary: Dictionary,
        encode_text: Callable[[str], str],
        standardize_audio: bool = False,
        tgt_prefix_tokens: Sequence[int] | None = None,
        shuffle: bool = False,
    ) -> None:
        """``tgt_prefix_tokens``: one token per row (its target-language tag) put before the translation."""
        super().__init__()
        self.split = split
        self.rows = rows
        self.manifest_path = manifest_path
        self.audio_root = str(audio_root)
        self.dictionary = dictionary
        self.standardize_audio = standardize_audio
        self.shuffle = shuffle
        self.source = [self._encode(encode_text, r.src_text, append_eos=False) for r in rows]
        targets = [self._encode(encode_text, r.tgt_text, append_eos=True) for r in rows]
        if tgt_prefix_tokens is not None:
            targets = [torch.cat([t.new_tensor([tag]), t]) for tag, t in zip(tgt_prefix_tokens, targets, strict=True)]
        self.target = targets
        self.n_frames = np.array([r.n_frames for r in rows], dtype=np.int64)
        self.src_sizes = np.array([len(t) for t in self.source], dtype=np.int64)
        self.tgt_sizes = np.array([len(t) for t in self.target], dtype=np.int64)

    def _encode(self, encode_text: Callable[[str], str], text: str, append_eos: bool) -> torch.Tensor:
        pieces = encode_text(text)
        return self.dictionary.encode_line(pieces, add_if_not_exist=False, append_eos=append_eos).long()

    @property
    def sizes(self) -> np.ndarray:
        return self.n_frames

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        wave = read_audio(row.audio, self.audio_root, where=f"{self.manifest_path}:{row.line} (id {row.id})")
        if self.standardize_audio:
            wave = F.layer_norm(wave, wave.shape)
        return {"id": index, "audio": wave, "source": self.source[index], "target": self.target[index]}

    def num_tokens(self, index: int) -> int:
        return int(self.n_frames[index])

    def example_name(self, index: int) -> str:
        """Where an example comes from, for error messages: ``manifest:line (id, sizes)``."""
        row = self.rows[index]
        return f"{self.manifest_path}:{row.line} (id {row.id}, {self.size(index)})"

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return self.n_frames[indices]

    def size(self, index: int) -> tuple[int, int, int]:
        return int(self.n_frames[index]), int(self.src_sizes[index]), int(self.tgt_sizes[index])

    def ordered_indices(self) -> np.ndarray:
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        # longest first, ties in (shuffled) order: batches of similar length waste the least padding
        return order[np.argsort(-self.n_frames[order], kind="mergesort")]

    def collater(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            return {}
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        samples = sorted(samples, key=lambda s: -len(s["audio"]))
        lengths = torch.tensor([len(s["audio"]) for s in samples], dtype=torch.long)
        audio = samples[0]["audio"].new_zeros(len(samples), int(lengths.max()))
        for i, s in enumerate(samples):
            audio[i, : len(s["audio"])] = s["audio"]
        target = data_utils.collate_tokens([s["target"] for s in samples], pad, eos)
        prev_output_tokens = data_utils.collate_tokens(
            [s["target"] for s in samples], pad, eos, move_eos_to_beginning=True
        )
        source = data_utils.collate_tokens([s["source"] for s in samples], pad, eos)
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "net_input": {
                "src_tokens": audio,
                "src_lengths": lengths,
                "mode": ST_MODE,
                "prev_output_tokens": prev_output_tokens,
            },
            # the transcript of the same utterances, for --mt-finetune
            "source": source,
            "source_lengths": torch.tensor([len(s["source"]) for s in samples], dtype=torch.long),
            "target": target,
            "target_lengths": torch.tensor([len(s["target"]) for s in samples], dtype=torch.long),
            "ntokens": sum(len(s["target"]) for s in samples),
            "nsentences": len(samples),
        }


class ModeDataset(BatchBySizeMixin, BaseWrapperDataset):
    """Tags a text dataset's batches with their modality, as the model's encoder expects."""

    def __init__(self, dataset: FairseqDataset, mode: str) -> None:
        super().__init__(dataset)
        self.mode = mode

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return self.dataset.num_tokens_vec(indices)

    def collater(self, samples: list[Any]) -> dict[str, Any]:
        batch = self.dataset.collater(samples)
        if batch:
            batch["net_input"]["mode"] = self.mode
        return batch


class LoggingMultiModalityDataset(MultiModalityDataset):
    """fairseq's MultiModalityDataset, but it says how many examples each length filter dropped, and it batches again
    each epoch when a sub-dataset is resampled per epoch (fairseq's keeps the first epoch's batches: their indices
    would then point at other, differently sized examples)."""

    _batched_epoch: int | None = None

    def get_raw_batch_samplers(self, required_batch_size_multiple: int, seed: int) -> None:
        resampled = not all(getattr(ds, "can_reuse_epoch_itr_across_epochs", True) for ds in self.datasets)
        if self.raw_sub_batch_samplers and not (resampled and self._batched_epoch != self._cur_epoch):
            return
        self.raw_sub_batch_samplers = []
        self._batched_epoch = self._cur_epoch
        with data_utils.numpy_seed(seed):
            indices = self.ordered_indices()
        for i, ds in enumerate(self.datasets):
            kept, ignored = ds.filter_indices_by_size(indices[i], self.max_positions[i])
            if len(ignored):
                logger.warning(
                    f"{self.id_to_mode[i]}: {len(ignored)} of {len(indices[i])} examples are longer than "
                    f"{self.max_positions[i]} (audio samples, source tokens, target tokens) and are skipped; "
                    f"first ids: {list(ignored[:5])}"
                )
            check_max_tokens(ds, kept, self.max_tokens[i], self.id_to_mode[i])
            self.raw_sub_batch_samplers.append(
                ds.batch_by_size(
                    kept,
                    max_tokens=self.max_tokens[i],
                    max_sentences=self.max_sentences[i],
                    required_batch_size_multiple=required_batch_size_multiple,
                )
            )


def check_max_tokens(dataset: FairseqDataset, indices: np.ndarray, max_tokens: int | None, what: str) -> None:
    """fairseq asserts deep in batch_by_size when one example exceeds max_tokens; say which flag to raise instead."""
    if max_tokens is None or len(indices) == 0:
        return
    sizes = dataset.num_tokens_vec(np.asarray(indices))
    longest = int(sizes.max())
    if longest > max_tokens:
        speech = isinstance(dataset, (SpeechTextTripletDataset, SpeechSplitMixture))
        unit = "audio samples" if speech else "tokens"
        flag = "--max-tokens" if speech else "--max-tokens-text"
        raise ValueError(
            f"{what}: {flag} {max_tokens} is smaller than the longest example ({longest} {unit}); "
            f"raise {flag} (speech batches count audio samples, e.g. --max-tokens 2000000) or lower the "
            "length limits (--max-audio-positions / --max-source-positions)"
        )


TagLookup = Callable[[str], int]


def load_speech_dataset(
    manifest_path: Path,
    split: str,
    *,
    audio_root: Path,
    dictionary: Dictionary,
    encode_text: Callable[[str], str],
    standardize_audio: bool,
    shuffle: bool,
    min_audio_samples: int,
    src_text_needed_by: str = "",
    tgt_lang: str = "",
    lang_tag: TagLookup | None = None,
) -> SpeechTextTripletDataset:
    """Read, check and wrap one manifest; ``src_text_needed_by`` names the flag(s) that make transcripts required.

    Rows without a ``tgt_lang`` value get ``tgt_lang`` (the task's ``--tgt-lang``), as in fairseq S2T; with
    ``lang_tag`` (the data config's ``prepend_tgt_lang_tag``) each target starts with its row's language tag.
    """
    rows = read_manifest(manifest_path, {"src_text": src_text_needed_by} if src_text_needed_by else None)
    check_audio_refs(rows, audio_root, manifest_path=str(manifest_path))
    for row in rows:
        row.tgt_lang = row.tgt_lang or tgt_lang
    short = [r for r in rows if r.n_frames < min_audio_samples]
    if short:
        logger.warning(
            f"{manifest_path}: {len(short)} rows shorter than --min-audio-positions {min_audio_samples} samples are "
            f"skipped (first: line {short[0].line}, id {short[0].id})"
        )
        rows = [r for r in rows if r.n_frames >= min_audio_samples]
    if not rows:
        raise ManifestError(f"{manifest_path}: no usable rows left after the length filter")
    return SpeechTextTripletDataset(
        split,
        rows,
        manifest_path=str(manifest_path),
        audio_root=audio_root,
        dictionary=dictionary,
        encode_text=encode_text,
        standardize_audio=standardize_audio,
        tgt_prefix_tokens=_row_tags(rows, manifest_path, lang_tag) if lang_tag else None,
        shuffle=shuffle,
    )


def _row_tags(rows: list[ManifestRow], manifest_path: Path, lang_tag: TagLookup) -> list[int]:
    tags = []
    for row in rows:
        where = f"{manifest_path}:{row.line} (id {row.id})"
        if not row.tgt_lang:
            raise ManifestError(f"{where}: no target language for the tag that prepend_tgt_lang_tag puts first: "
                                "add a tgt_lang column or pass --tgt-lang")
        try:
            tags.append(lang_tag(row.tgt_lang))
        except ValueError as err:
            raise ManifestError(f"{where}: {err}") from None
    return tags


def temperature_size_ratios(lang_pairs: Sequence[str], n_frames: Sequence[int], alpha: float) -> list[float]:
    """Per split, the factor its size is resampled by so that language pair p is drawn with probability
    ∝ (its share of the audio)^alpha: fairseq S2T's ``get_size_ratios`` (temperature sampling, arXiv:1907.05019).

    Splits of one language pair share one factor; alpha = 1 keeps every split as it is, alpha → 0 balances the pairs.
    """
    totals: dict[str, float] = {}
    for pair, frames in zip(lang_pairs, n_frames, strict=True):
        totals[pair] = totals.get(pair, 0.0) + float(frames)
    grand = sum(totals.values())
    tempered = {p: (v / grand) ** alpha for p, v in totals.items()}
    norm = sum(tempered.values())
    return [tempered[p] / norm * grand / totals[p] for p in lang_pairs]


class SpeechSplitMixture(BatchBySizeMixin, FairseqDataset):
    """Comma-separated speech splits read as one dataset, as fairseq S2T's ``ConcatDataset`` does; with
    ``size_ratios`` (training, ``sampling_alpha`` != 1) every split is resampled each epoch exactly as fairseq's
    ``ResamplingDataset`` does (with replacement when the ratio is >= 1), but batched like our own datasets (nothing
    dropped) and with errors that name the split's manifest line.
    """

    def __init__(self, parts: Sequence[SpeechTextTripletDataset], size_ratios: Sequence[float] | None = None,
                 *, seed: int = 1, epoch: int = 1) -> None:
        super().__init__()
        self.parts = list(parts)
        self.size_ratios = list(size_ratios) if size_ratios is not None else None
        self.seed = seed
        self.shuffle = any(p.shuffle for p in self.parts)
        self._epoch: int | None = None
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self._epoch or (self._epoch is not None and self.size_ratios is None):
            return
        self._epoch = epoch
        picks = []
        for k, part in enumerate(self.parts):
            if self.size_ratios is None:
                rows = np.arange(len(part))
            else:  # fairseq's ResamplingDataset.set_epoch, one generator per split seeded alike
                ratio = self.size_ratios[k]
                rng = np.random.RandomState([42, self.seed % (2**32), epoch])
                rows = rng.choice(len(part), int(np.ceil(len(part) * ratio)), replace=ratio >= 1.0)
            picks.append((np.full(len(rows), k, dtype=np.int64), rows.astype(np.int64)))
        self.part_of = np.concatenate([p for p, _ in picks])
        self.row_of = np.concatenate([r for _, r in picks])
        self.n_frames = np.concatenate([part.n_frames[r] for part, (_, r) in zip(self.parts, picks)])

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return self.size_ratios is None

    @property
    def standardize_audio(self) -> bool:
        return self.parts[0].standardize_audio

    @property
    def sizes(self) -> np.ndarray:
        return self.n_frames

    def __len__(self) -> int:
        return len(self.row_of)

    def _locate(self, index: int) -> tuple[SpeechTextTripletDataset, int]:
        return self.parts[int(self.part_of[index])], int(self.row_of[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, row = self._locate(index)
        return {**part[row], "id": index}

    def num_tokens(self, index: int) -> int:
        return int(self.n_frames[index])

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return self.n_frames[indices]

    def size(self, index: int) -> tuple[int, int, int]:
        part, row = self._locate(index)
        return part.size(row)

    def example_name(self, index: int) -> str:
        part, row = self._locate(index)
        return part.example_name(row)

    def ordered_indices(self) -> np.ndarray:
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return order[np.argsort(-self.n_frames[order], kind="mergesort")]

    def collater(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.parts[0].collater(samples)


SpeechDataset = SpeechTextTripletDataset | SpeechSplitMixture


def mix_speech_splits(parts: Sequence[SpeechTextTripletDataset], *, resample_alpha: float | None, seed: int,
                      epoch: int) -> SpeechDataset:
    """One split as it is; several as a :class:`SpeechSplitMixture`, temperature-resampled when ``resample_alpha``
    (training splits with ``sampling_alpha`` != 1, as in fairseq). A split must hold one language pair."""
    if len(parts) == 1:
        return parts[0]
    if resample_alpha is None or resample_alpha == 1.0:
        return SpeechSplitMixture(parts, seed=seed, epoch=epoch)
    pairs = []
    for part in parts:
        found = sorted({f"{r.src_lang}->{r.tgt_lang}" for r in part.rows})
        if len(found) != 1:
            raise ValueError(f"{part.manifest_path}: holds the language pairs {', '.join(found)}; temperature "
                             "sampling (sampling_alpha != 1) needs one language pair per split: split the manifest")
        pairs.append(found[0])
    ratios = temperature_size_ratios(pairs, [int(p.n_frames.sum()) for p in parts], resample_alpha)
    logger.info("sampling_alpha %s: size ratio per split %s", resample_alpha,
                {p.split: f"{pair} x{r:.3f}" for p, pair, r in zip(parts, pairs, ratios)})
    return SpeechSplitMixture(parts, ratios, seed=seed, epoch=epoch)


def speech_parts(dataset: Any) -> Iterator[SpeechTextTripletDataset]:
    """Every manifest-backed dataset inside ``dataset`` (a multimodal or mixed-split wrapper, or itself)."""
    if isinstance(dataset, SpeechTextTripletDataset):
        yield dataset
    for inner in getattr(dataset, "parts", None) or getattr(dataset, "datasets", None) or []:
        yield from speech_parts(inner)


def load_text_pair_dataset(
    text_data: Path, split: str, src_lang: str, tgt_lang: str, dictionary: Dictionary, *, shuffle: bool
) -> ModeDataset:
    """fairseq-binarized ``{split}.{src}-{tgt}.{lang}`` read with the task's dictionary (the speech side's)."""
    datasets = []
    for lang in (src_lang, tgt_lang):
        prefix = text_data / f"{split}.{src_lang}-{tgt_lang}.{lang}"
        dict_file = text_data / f"dict.{lang}.txt"
        if dict_file.is_file():
            n = len(Dictionary.load(str(dict_file)))
            if n != len(dictionary):
                raise ValueError(
                    f"{dict_file}: {n} entries, but the speech data's vocabulary has {len(dictionary)}; "
                    "binarize the MT text with the same SentencePiece dictionary (data_prep/prep_mt_data.py)"
                )
        ds = data_utils.load_indexed_dataset(str(prefix), dictionary)
        if ds is None:
            raise FileNotFoundError(f"binarized MT data not found: {prefix}.bin/.idx (from --text-data {text_data})")
        datasets.append(ds)
    src, tgt = datasets
    if len(src) != len(tgt):
        raise ValueError(f"{text_data}/{split}.{src_lang}-{tgt_lang}: {len(src)} source vs {len(tgt)} target lines")
    pair = LanguagePairDataset(
        src, src.sizes, dictionary, tgt, tgt.sizes, dictionary,
        left_pad_source=False, left_pad_target=False, remove_eos_from_source=True, shuffle=shuffle,
    )
    return ModeDataset(pair, MT_MODE)


ModalityItem = tuple[str, FairseqDataset, tuple[int, ...], int | None, int | None]


def build_multimodal(items: list[ModalityItem]) -> MultiModalityDataset:
    """(mode, dataset, max_positions, max_tokens, max_sentences) per modality → single-modality batches."""
    return LoggingMultiModalityDataset([ModalityDatasetItem(*item) for item in items])
