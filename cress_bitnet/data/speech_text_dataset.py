"""fairseq datasets for speech-translation triplets (audio, transcript, translation) and binarized MT text.

Batches are single-modality: every collated batch carries ``net_input["mode"]`` (``"st"`` or ``"ext_mt"``), which the
model's encoder uses to pick the speech or text front-end, and which reaches the encoder at generation time through
``FairseqEncoder.forward_non_torchscript``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
        tgt_prefix_token: int | None = None,
        shuffle: bool = False,
    ) -> None:
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
        if tgt_prefix_token is not None:
            targets = [torch.cat([targets[0].new_tensor([tgt_prefix_token]), t]) for t in targets]
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
    """fairseq's MultiModalityDataset, but it says how many examples each length filter dropped."""

    def get_raw_batch_samplers(self, required_batch_size_multiple: int, seed: int) -> None:
        if self.raw_sub_batch_samplers:
            return
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
        unit = "audio samples" if isinstance(dataset, SpeechTextTripletDataset) else "tokens"
        flag = "--max-tokens" if isinstance(dataset, SpeechTextTripletDataset) else "--max-tokens-text"
        raise ValueError(
            f"{what}: {flag} {max_tokens} is smaller than the longest example ({longest} {unit}); "
            f"raise {flag} (speech batches count audio samples, e.g. --max-tokens 2000000) or lower the "
            "length limits (--max-audio-positions / --max-source-positions)"
        )


def load_speech_dataset(
    manifest_path: Path,
    split: str,
    *,
    audio_root: Path,
    dictionary: Dictionary,
    encode_text: Callable[[str], str],
    standardize_audio: bool,
    tgt_prefix_token: int | None,
    shuffle: bool,
    min_audio_samples: int,
    src_text_needed_by: str = "",
) -> SpeechTextTripletDataset:
    """Read, check and wrap one manifest; ``src_text_needed_by`` names the flag(s) that make transcripts required."""
    rows = read_manifest(manifest_path, {"src_text": src_text_needed_by} if src_text_needed_by else None)
    check_audio_refs(rows, audio_root, manifest_path=str(manifest_path))
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
        tgt_prefix_token=tgt_prefix_token,
        shuffle=shuffle,
    )


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
