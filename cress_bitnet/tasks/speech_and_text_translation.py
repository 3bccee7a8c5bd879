"""Task ``speech_and_text_translation``: CRESS-compatible joint speech translation (ST) and machine translation (MT).

Speech batches come from raw-audio manifests ``{data}/{split}.tsv`` (comma-separated splits are read together,
training splits temperature-sampled by the data config's ``sampling_alpha`` as in fairseq S2T); MT batches from
fairseq-binarized text in ``--text-data``; both use the one SentencePiece dictionary named by the data config.
Training batches are single-modality, drawn from the two datasets by ``--st-sample-ratio`` / ``--mt-sample-ratio``.
``speech_to_text_modified`` (CRESS's decoding task) is registered as an alias so CRESS scripts run unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fairseq import metrics, utils
from fairseq.data import Dictionary, encoders, iterators
from fairseq.data.audio.multi_modality_dataset import MultiModalityDataset
from fairseq.tasks import LegacyFairseqTask, register_task

from cress_bitnet.checkpoints import STANDARDIZED_AUDIO_ARG, audio_standardization
from cress_bitnet.data.data_config import SpeechDataConfig
from cress_bitnet.data.speech_text_dataset import (
    MT_MODE,
    ST_MODE,
    SpeechDataset,
    SpeechSplitMixture,
    SpeechTextTripletDataset,
    build_multimodal,
    check_max_tokens,
    load_speech_dataset,
    load_text_pair_dataset,
    mix_speech_splits,
    speech_parts,
)
from cress_bitnet.resources import resources_from_data_config

logger = logging.getLogger(__name__)

EVAL_BLEU_ORDER = 4
SRC_LANG = "en"


def lang_tag(lang: str) -> str:
    return f"<lang:{lang}>"


@register_task("speech_and_text_translation")
class SpeechAndTextTranslationTask(LegacyFairseqTask):
    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        parser.add_argument("data", help="folder with the speech manifests {split}.tsv and the data config")
        parser.add_argument("--config-yaml", default="config.yaml", help="data config, relative to DATA")
        parser.add_argument("--text-data", default=None, help="folder of fairseq-binarized MT text")
        parser.add_argument("--tgt-lang", default=None,
                            help="target language code, e.g. de (the MT text's, and that of manifest rows without a "
                                 "tgt_lang column)")
        parser.add_argument("--text-train-subset", default=None,
                            help="split of the --text-data MT text trained on (default: the training split's name; "
                                 "'train' when --train-subset lists several speech splits)")
        parser.add_argument("--max-audio-positions", type=int, default=900000, help="max audio samples per utterance")
        parser.add_argument("--min-audio-positions", type=int, default=1000, help="min audio samples per utterance")
        parser.add_argument("--max-source-positions", type=int, default=512, help="max source text tokens")
        parser.add_argument("--max-target-positions", type=int, default=512, help="max target tokens")
        parser.add_argument("--max-tokens-text", type=int, default=None, help="max tokens per MT batch")
        parser.add_argument("--batch-size-text", type=int, default=None, help="max sentences per MT batch")
        parser.add_argument("--st-training", action="store_true", help="train on speech translation triplets")
        parser.add_argument("--ext-mt-training", action="store_true", help="train on --text-data MT pairs")
        parser.add_argument("--st-sample-ratio", type=float, default=1.0, help="batch up/down-sampling of ST")
        parser.add_argument("--mt-sample-ratio", type=float, default=1.0, help="batch up/down-sampling of MT")
        parser.add_argument("--update-mix-data", action="store_true",
                            help="let the batches of one update (--update-freq > 1) come from different modalities "
                                 "(as fairseq's speech_text_joint_to_text; default: one modality per update)")
        parser.add_argument("--eval-bleu", action="store_true", help="compute BLEU on the validation set")
        parser.add_argument("--eval-bleu-detok", default="space", help="detokenizer for validation BLEU")
        parser.add_argument("--eval-bleu-detok-args", default="{}", help="JSON args of the detokenizer")
        parser.add_argument("--eval-tokenized-bleu", action="store_true", help="BLEU on tokenized text")
        parser.add_argument("--eval-bleu-remove-bpe", nargs="?", const="@@ ", default=None, help="bpe to remove")
        parser.add_argument("--eval-bleu-args", default="{}", help="JSON generation args for validation BLEU")
        parser.add_argument("--eval-bleu-print-samples", action="store_true", help="log sample translations")
        parser.add_argument("--param-checksum-file", default=None,
                            help="append 'update rank sha1' of all parameters after every update (checks that "
                                 "data-parallel replicas stay identical)")
        parser.add_argument("--eval-bleu-bpe", default=None,
                            help="not supported (CRESS parses and ignores it): validation BLEU decodes with the data "
                                 "config's bpe_tokenizer; an error if given")
        parser.add_argument("--eval-bleu-bpe-path", default=None, help="not supported, as --eval-bleu-bpe")

    def __init__(self, args: Namespace, dictionary: Dictionary, data_cfg: SpeechDataConfig) -> None:
        super().__init__(args)
        self.dictionary = dictionary
        self.data_cfg = data_cfg
        self.bpe = encoders.build_bpe(data_cfg.bpe_args()) if data_cfg.bpe_args() else None
        pre = data_cfg.pre_tokenizer_args()
        self.pre_tokenizer = encoders.build_tokenizer(pre) if pre else None
        # saved as the checkpoint's task_state: cress-bitnet-translate decodes without the training data folder
        self.state.merge_state_dict(resources_from_data_config(data_cfg))
        # With prepend_tgt_lang_tag every target starts with its language's tag: the row's tgt_lang column, else
        # --tgt-lang (the tag decoding starts from when no reference is at hand, e.g. cress-bitnet-translate).
        self.tgt_prefix_token: int | None = None
        # every <lang:*> tag of the dictionary, stripped from output (fairseq S2T strips them all too); once, here:
        # decode_text runs per validation hypothesis and a DeltaLM dictionary has 250k entries
        self.lang_tag_ids: set[int] = (
            {i for i, sym in enumerate(dictionary.symbols) if sym.startswith("<lang:") and sym.endswith(">")}
            if data_cfg.prepend_tgt_lang_tag else set())
        if data_cfg.prepend_tgt_lang_tag and args.tgt_lang:
            self.tgt_prefix_token = self.lang_tag_index(args.tgt_lang)

    @classmethod
    def setup_task(cls, args: Namespace, **kwargs: Any) -> SpeechAndTextTranslationTask:
        data = Path(args.data)
        if not data.is_dir():
            raise FileNotFoundError(f"DATA folder not found: {data}")
        for flag in ("eval_bleu_bpe", "eval_bleu_bpe_path"):
            if getattr(args, flag, None):
                raise ValueError(
                    f"--{flag.replace('_', '-')} {getattr(args, flag)}: not supported (CRESS accepts and ignores it): "
                    "validation BLEU decodes with the data config's bpe_tokenizer; remove the flag"
                )
        cfg = SpeechDataConfig.load(data / args.config_yaml)
        dictionary = Dictionary.load(str(cfg.vocab_path))
        logger.info(f"dictionary {cfg.vocab_path}: {len(dictionary)} types")
        check_spm_matches_dictionary(cfg, dictionary)
        if args.text_data and not Path(args.text_data).is_dir():
            raise FileNotFoundError(f"--text-data folder not found: {args.text_data}")
        if args.ext_mt_training and not (args.text_data and args.tgt_lang):
            raise ValueError("--ext-mt-training needs --text-data and --tgt-lang")
        train_subset = getattr(args, "train_subset", "train") or "train"
        if not train_subset.startswith("train"):
            logger.warning(f"--train-subset {train_subset} does not start with 'train': it is not shuffled as one")
        return cls(args, dictionary, cfg)

    # ---- data ---------------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> str:
        if self.pre_tokenizer is not None:
            text = self.pre_tokenizer.encode(text)
        if self.bpe is not None:
            text = self.bpe.encode(text)
        return text

    def decode_text(self, tokens: torch.Tensor, escape_unk: bool = False) -> str:
        text = self.dictionary.string(
            tokens.int().cpu(),
            self.args.eval_bleu_remove_bpe,
            unk_string="UNKNOWNTOKENINREF" if escape_unk else "UNKNOWNTOKENINHYP",
            extra_symbols_to_ignore=self._symbols_to_strip(),
        )
        if self.bpe is not None:
            text = self.bpe.decode(text)
        if self.pre_tokenizer is not None:
            text = self.pre_tokenizer.decode(text)
        return text

    def lang_tag_index(self, lang: str) -> int:
        tag = lang_tag(lang)
        if self.dictionary.index(tag) == self.dictionary.unk():
            raise ValueError(f"{self.data_cfg.vocab_path}: has no language tag {tag} (prepend_tgt_lang_tag is on)")
        return self.dictionary.index(tag)

    def _symbols_to_strip(self) -> set[int]:
        return self.lang_tag_ids

    def _is_train(self, split: str) -> bool:
        return split.startswith("train")

    def speech_dataset(self, split: str, shuffle: bool, epoch: int = 1) -> SpeechDataset:
        """``split`` may list several manifests (``train_a,train_b``); training ones are temperature-sampled."""
        parts = [
            load_speech_dataset(
                Path(self.args.data) / f"{name}.tsv",
                name,
                audio_root=self.data_cfg.audio_root_path,
                dictionary=self.dictionary,
                encode_text=self.encode_text,
                standardize_audio=self.data_cfg.standardize_audio,
                shuffle=shuffle,
                min_audio_samples=self.args.min_audio_positions,
                src_text_needed_by=self._src_text_flags(split),
                tgt_lang=self.args.tgt_lang or "",
                lang_tag=self.lang_tag_index if self.data_cfg.prepend_tgt_lang_tag else None,
            )
            for name in split_names(split)
        ]
        alpha = self.data_cfg.sampling_alpha if self._is_train(split) else None
        return mix_speech_splits(parts, resample_alpha=alpha, seed=getattr(self.args, "seed", 1), epoch=epoch)

    def _src_text_flags(self, split: str) -> str:
        """The criterion flags that train on the transcript (training splits only): they need ``src_text``."""
        if not self._is_train(split):
            return ""
        flags = []
        if (getattr(self.args, "ctc_weight", 0) or 0) > 0:
            flags.append(f"--ctc-weight {self.args.ctc_weight}")
        if getattr(self.args, "mt_finetune", False):
            flags.append("--mt-finetune")
        return " and ".join(flags)

    def _text_dataset(self, split: str, shuffle: bool):  # noqa: ANN202 - fairseq dataset
        if self._is_train(split):
            # getattr: task args saved by an earlier release lack the flag
            split = getattr(self.args, "text_train_subset", None) or (split if "," not in split else "train")
        split = "valid" if split == "dev" else split  # CRESS binarizes dev as valid
        logger.info(f"MT text split {split} of {self.args.text_data}")
        return load_text_pair_dataset(
            Path(self.args.text_data), split, SRC_LANG, self.args.tgt_lang, self.dictionary, shuffle=shuffle
        )

    def speech_max_positions(self) -> tuple[int, int, int]:
        a = self.args
        return a.max_audio_positions, a.max_source_positions, a.max_target_positions

    def text_max_positions(self) -> tuple[int, int]:
        return self.args.max_source_positions, self.args.max_target_positions

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs: Any) -> None:
        a = self.args
        is_train = self._is_train(split)
        use_st = a.st_training or not a.ext_mt_training
        use_mt = a.ext_mt_training and (is_train or not a.st_training)
        if is_train and (a.st_training or a.ext_mt_training):
            items = []
            if use_st:
                items.append((ST_MODE, self.speech_dataset(split, True, epoch), self.speech_max_positions(),
                              a.max_tokens, a.batch_size))
            if use_mt:
                items.append((MT_MODE, self._text_dataset(split, True), self.text_max_positions(),
                              a.max_tokens_text, a.batch_size_text))
            self.datasets[split] = build_multimodal(items)
        elif use_mt:
            self.datasets[split] = self._text_dataset(split, False)
        else:
            self.datasets[split] = self.speech_dataset(split, False)
        logger.info(f"{split}: {len(self.datasets[split])} examples")

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,  # noqa: ANN001
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=0, data_buffer_size=0, disable_iterator_cache=False,
                           skip_remainder_batch=False, grouped_shuffling=False, update_epoch_batch_itr=False):
        if not isinstance(dataset, MultiModalityDataset):
            # Our own per-modality limits replace fairseq's (which cannot mix a 3-tuple task limit with the model's).
            # Validation and decoding must score the whole set: too-long examples are an error naming them unless
            # --skip-invalid-size-inputs-valid-test (fairseq's ignore_invalid_inputs) asks to skip them.
            speech = isinstance(dataset, (SpeechTextTripletDataset, SpeechSplitMixture))
            limit = self.speech_max_positions() if speech else self.text_max_positions()
            if not speech and self.args.max_tokens_text is not None:
                max_tokens = self.args.max_tokens_text
            kept, ignored = dataset.filter_indices_by_size(dataset.ordered_indices(), limit)
            if len(ignored):
                report_too_long(dataset, ignored, limit, skip=ignore_invalid_inputs)
            check_max_tokens(dataset, kept, max_tokens, "decoding/validation")
            # ignore_invalid_inputs=True below: the too-long examples were reported (or refused) just above
            return super().get_batch_iterator(
                dataset, max_tokens, max_sentences, limit, True, required_batch_size_multiple, seed, num_shards,
                shard_id, num_workers, epoch, data_buffer_size, disable_iterator_cache, skip_remainder_batch,
                grouped_shuffling, update_epoch_batch_itr,
            )
        ratios = [self.args.st_sample_ratio if m == ST_MODE else self.args.mt_sample_ratio for m in dataset.id_to_mode]
        # Batches are permuted in groups of update_freq x num_shards: each update's batches come from one modality,
        # and a run on N workers sees exactly the batches of one worker with --update-freq N. --update-mix-data
        # groups by num_shards only, so the update_freq batches of one update may mix modalities.
        update_freq = getattr(self.args, "update_freq", None) or [1]
        if self.args.update_mix_data:
            update_freq = [1]
        dataset.set_epoch(epoch)
        batch_samplers = dataset.get_batch_samplers(ratios, required_batch_size_multiple, seed)
        return iterators.GroupedEpochBatchIterator(
            dataset=dataset,
            collate_fn=dataset.collater,
            batch_samplers=batch_samplers,
            seed=seed,
            num_shards=num_shards,
            shard_id=shard_id,
            num_workers=num_workers,
            epoch=epoch,
            mult_rate=int(update_freq[min(max(epoch, 1), len(update_freq)) - 1]),
            buffer_size=data_buffer_size,
            skip_remainder_batch=skip_remainder_batch,
        )

    @property
    def source_dictionary(self) -> Dictionary | None:
        # Speech has no source dictionary: fairseq-generate then prints no source string for audio rows.
        return self.dictionary if self._decodes_text() else None

    def _decodes_text(self) -> bool:
        return bool(self.args.ext_mt_training and not self.args.st_training)

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary

    def max_positions(self) -> tuple[int, int, int]:
        return self.speech_max_positions()

    # ---- model, criterion, generation ---------------------------------------------------------------------------
    def build_tokenizer(self, args: Namespace):  # noqa: ANN201
        """fairseq-generate detokenizes with the data config's tokenizers, as fairseq's speech_to_text task does."""
        return self.pre_tokenizer

    def build_bpe(self, args: Namespace):  # noqa: ANN201
        return self.bpe

    def build_model(self, args: Namespace, from_checkpoint: bool = False):  # noqa: ANN201
        model = super().build_model(args, from_checkpoint)
        self.follow_checkpoint_audio(args, args)
        if self.args.eval_bleu:
            gen_args = Namespace(**json.loads(self.args.eval_bleu_args or "{}"))
            self.sequence_generator = self.build_generator([model], gen_args)
            detok_args = json.loads(self.args.eval_bleu_detok_args or "{}")
            self.eval_tokenizer = encoders.build_tokenizer(
                Namespace(tokenizer=self.args.eval_bleu_detok, **detok_args)
            )
        return model

    # ---- waveform standardization follows the checkpoint (cress_bitnet.checkpoints.audio_standardization) ----------
    def follow_checkpoint_audio(self, saved_args: Namespace | None, model_args: Namespace) -> None:
        """Feed the waveforms the weights were trained on, and record that choice in the model args being saved."""
        value = audio_standardization(saved_args, self.data_cfg.standardize_audio, self.data_cfg.path)
        self.data_cfg.standardize_audio = value
        for dataset in self.datasets.values():  # e.g. the valid sets fairseq-train loads before --restore-file
            for part in speech_parts(dataset):
                part.standardize_audio = value
        setattr(model_args, STANDARDIZED_AUDIO_ARG, value)
        self._model_args = model_args

    def checkpoint_restored(self, report: Any, model: Any) -> None:
        """Called by cress_bitnet.fairseq_patches after fairseq-train restored ``report.path`` (--restore-file)."""
        self.follow_checkpoint_audio(report.args, getattr(self, "_model_args", None) or Namespace())

    def build_criterion(self, args: Namespace):  # noqa: ANN201
        if self.data_cfg.prepend_tgt_lang_tag and getattr(args, "ignore_prefix_size", 0) != 1:
            raise ValueError("prepend_tgt_lang_tag is on in the data config: pass --ignore-prefix-size 1")
        self.criterion = super().build_criterion(args)
        return self.criterion

    def begin_epoch(self, epoch: int, model) -> None:  # noqa: ANN001
        """fairseq's trainer announces a new epoch only to the task: pass it on to the model and the criterion
        (``set_epoch``; CRESS's oracle schedule reads it), as CRESS's task does for its model."""
        super().begin_epoch(epoch, model)
        model.set_epoch(epoch)
        criterion = getattr(self, "criterion", None)
        if hasattr(criterion, "set_epoch"):
            criterion.set_epoch(epoch)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None):  # noqa: ANN001, ANN201
        if self.data_cfg.prepend_tgt_lang_tag and getattr(args, "prefix_size", 0) != 1:
            raise ValueError("prepend_tgt_lang_tag is on in the data config: pass --prefix-size 1")
        extra_gen_cls_kwargs = dict(extra_gen_cls_kwargs or {})
        extra_gen_cls_kwargs["symbols_to_strip_from_output"] = self._symbols_to_strip()
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs)

    def optimizer_step(self, optimizer, model, update_num):  # noqa: ANN001, ANN201
        super().optimizer_step(optimizer, model, update_num)
        if self.args.param_checksum_file:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with open(self.args.param_checksum_file, "a", encoding="utf-8") as f:
                f.write(f"{update_num + 1} {rank} {parameter_checksum(model)}\n")

    # ---- validation BLEU ----------------------------------------------------------------------------------------
    def valid_step(self, sample, model, criterion):  # noqa: ANN001, ANN201
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.args.eval_bleu:
            bleu = self._inference_with_bleu(self.sequence_generator, sample, model)
            logging_output["_bleu_sys_len"] = bleu.sys_len
            logging_output["_bleu_ref_len"] = bleu.ref_len
            for i in range(EVAL_BLEU_ORDER):
                logging_output[f"_bleu_counts_{i}"] = bleu.counts[i]
                logging_output[f"_bleu_totals_{i}"] = bleu.totals[i]
        return loss, sample_size, logging_output

    def _inference_with_bleu(self, generator, sample, model):  # noqa: ANN001, ANN202
        import sacrebleu

        def decode(tokens: torch.Tensor, escape_unk: bool = False) -> str:
            text = self.decode_text(tokens, escape_unk)
            return self.eval_tokenizer.decode(text) if self.eval_tokenizer else text

        hyps_out = self.inference_step(generator, [model], sample, prefix_tokens=None)
        hyps = [decode(h[0]["tokens"]) for h in hyps_out]
        refs = [decode(utils.strip_pad(t, self.dictionary.pad()), escape_unk=True) for t in sample["target"]]
        if self.args.eval_bleu_print_samples:
            logger.info(f"example hypothesis: {hyps[0]}")
            logger.info(f"example reference: {refs[0]}")
        tokenize = "none" if self.args.eval_tokenized_bleu else "13a"
        return sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize)

    def reduce_metrics(self, logging_outputs, criterion):  # noqa: ANN001
        super().reduce_metrics(logging_outputs, criterion)
        if not self.args.eval_bleu:
            return

        def total(key: str) -> int:
            return int(sum(log.get(key, 0) for log in logging_outputs))

        counts = [total(f"_bleu_counts_{i}") for i in range(EVAL_BLEU_ORDER)]
        totals = [total(f"_bleu_totals_{i}") for i in range(EVAL_BLEU_ORDER)]
        if max(totals) > 0:
            for i in range(EVAL_BLEU_ORDER):
                metrics.log_scalar(f"_bleu_counts_{i}", np.array(counts[i]))
                metrics.log_scalar(f"_bleu_totals_{i}", np.array(totals[i]))
            metrics.log_scalar("_bleu_sys_len", total("_bleu_sys_len"))
            metrics.log_scalar("_bleu_ref_len", total("_bleu_ref_len"))

            def compute_bleu(meters):  # noqa: ANN001, ANN202
                from sacrebleu.metrics import BLEU

                score = BLEU.compute_bleu(
                    correct=[meters[f"_bleu_counts_{i}"].sum for i in range(EVAL_BLEU_ORDER)],
                    total=[meters[f"_bleu_totals_{i}"].sum for i in range(EVAL_BLEU_ORDER)],
                    sys_len=int(meters["_bleu_sys_len"].sum),
                    ref_len=int(meters["_bleu_ref_len"].sum),
                    smooth_method="exp",
                )
                return round(score.score, 2)

            metrics.log_derived("bleu", compute_bleu)


SKIP_FLAG = "--skip-invalid-size-inputs-valid-test"


def check_spm_matches_dictionary(cfg: SpeechDataConfig, dictionary: Dictionary) -> None:
    """Every piece the SentencePiece model can emit must be in the dictionary, or it silently becomes ``<unk>``.

    Extra dictionary entries (language tags, pieces of another corpus) are harmless and allowed.
    """
    bpe = cfg.bpe_args()
    if bpe is None or getattr(bpe, "bpe", None) != "sentencepiece" or not getattr(bpe, "sentencepiece_model", None):
        return
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(bpe.sentencepiece_model)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{cfg.path}: cannot load bpe_tokenizer.sentencepiece_model {bpe.sentencepiece_model}: "
                         f"{err}") from None
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())
              if not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i))]
    missing = [p for p in pieces if dictionary.index(p) == dictionary.unk()]
    if missing:
        raise ValueError(
            f"{cfg.path}: the SentencePiece model {bpe.sentencepiece_model} does not match vocab_filename "
            f"{cfg.vocab_path}: {len(missing)} of its {len(pieces)} pieces are not in the dictionary "
            f"(e.g. {', '.join(repr(p) for p in missing[:5])}); they would all become <unk>"
        )


def report_too_long(dataset: Any, ignored: np.ndarray, limit: tuple[int, ...], *, skip: bool) -> None:
    """Name the examples longer than ``limit``: an error, or (``skip``, fairseq's flag) a warning with the count.

    Why: fairseq's length filter drops them with a warning only, so BLEU would silently cover a subset of the test set.
    """
    ignored = np.asarray(ignored)
    names = [_example_name(dataset, int(i)) for i in ignored[:5]]
    more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
    what = (f"{len(ignored)} of {len(dataset)} examples are longer than the limits {limit} "
            "(--max-audio-positions audio samples, --max-source-positions, --max-target-positions tokens)")
    if not skip:
        raise ValueError(f"{what}: {', '.join(names)}{more}. Raise the limits, or pass {SKIP_FLAG} to score only the "
                         "rest of the set")
    logger.warning(f"{what} and are skipped ({SKIP_FLAG}): {', '.join(names)}{more}")


def _example_name(dataset: Any, index: int) -> str:
    if hasattr(dataset, "example_name"):
        return dataset.example_name(index)
    return f"#{index} {dataset.size(index)}"


def split_names(split: str) -> list[str]:
    """``a,b`` → ``[a, b]``: fairseq S2T's spelling of several manifests read as one split."""
    names = [name.strip() for name in split.split(",")]
    if not all(names):
        raise ValueError(f"split {split!r}: an empty name between commas")
    return names


def parameter_checksum(model: torch.nn.Module) -> str:
    """sha1 over every parameter's bytes in name order: equal on all replicas iff they hold identical weights."""
    digest = hashlib.sha1()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@register_task("speech_to_text_modified")
class SpeechToTextModifiedTask(SpeechAndTextTranslationTask):
    """CRESS's decoding task name; decodes speech manifests exactly like ``speech_and_text_translation``."""
