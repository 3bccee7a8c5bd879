"""Translate audio files with a trained or packed checkpoint, without a manifest.

Usage: ``cress-bitnet-translate CHECKPOINT AUDIO_OR_FOLDER... [--format text|jsonl] [--beam 5] ...``
(also ``python -m cress_bitnet.translate``).

Audio (wav/flac/ogg, any sample rate, mono or multi-channel) is read by :func:`cress_bitnet.data.audio.read_audio`,
as in training: channels averaged, resampled to 16 kHz. The data config, target dictionary and SentencePiece model come
from the checkpoint's ``task_state`` (:mod:`cress_bitnet.resources`) or from ``--data-config`` / ``--vocab`` /
``--spm-model``. The model is loaded by fairseq's ``load_model_ensemble_and_task`` (the plugin's safe loader; ``.pt``
and safetensors files) and decoded by the task's ``SequenceGenerator`` with fairseq-generate's defaults, batches
collated as the task's speech dataset collates them: the translations are fairseq-generate's ``D-`` lines for the same
utterances in the same batches. A file that cannot be read is reported at the end and makes the exit status 1; the
other files are still translated.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F

from cress_bitnet.data.audio import SAMPLE_RATE, AudioError, AudioRef, read_audio

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class TranslateError(ValueError):
    """Bad arguments or a checkpoint that cannot be used for translation (the message names the file or flag)."""


@dataclass
class Result:
    file: str
    translation: str
    audio_seconds: float
    compute_seconds: float
    score: float  # the hypothesis' score (length-normalised log-probability, base 2), as fairseq-generate prints it

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per second of audio (< 1 is faster than real time)."""
        return self.compute_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "translation": self.translation, "score": round(self.score, 4),
                           "audio_seconds": round(self.audio_seconds, 4),
                           "compute_seconds": round(self.compute_seconds, 4), "rtf": round(self.rtf, 4)},
                          ensure_ascii=False)


def collect_audio(inputs: list[str]) -> list[Path]:
    """Files as given, and every wav/flac/ogg file under each folder (recursively, sorted)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise TranslateError(f"{item}: folder holds no {'/'.join(AUDIO_SUFFIXES)} files")
            files += found
        else:
            files.append(p)  # missing or unreadable files are reported per file, after the others are translated
    if not files:
        raise TranslateError("no audio files given")
    return files


class Translator:
    """A loaded model ensemble, its task and a SequenceGenerator; :meth:`translate` decodes one batch of waveforms."""

    def __init__(self, checkpoint: str | Path, *, data_config: str | None = None, vocab: str | None = None,
                 spm_model: str | None = None, beam: int = 5, lenpen: float = 1.0, max_len_a: float = 0.0,
                 max_len_b: int = 200, device: str = "cpu", tgt_lang: str | None = None) -> None:
        from fairseq import checkpoint_utils
        from fairseq.data import Dictionary
        from fairseq.dataclass.configs import GenerationConfig

        import cress_bitnet  # noqa: F401 - registers the task, the models and the safe loader
        from cress_bitnet.data.data_config import SpeechDataConfig
        from cress_bitnet.data.speech_text_dataset import SpeechTextTripletDataset
        from cress_bitnet.resources import write_resources
        from cress_bitnet.tasks.speech_and_text_translation import SpeechAndTextTranslationTask

        checkpoint = str(checkpoint)
        if not Path(checkpoint).is_file():
            raise TranslateError(f"checkpoint not found: {checkpoint}")
        state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
        cfg = state["cfg"]
        task_args = cfg.task if cfg.get("task") is not None else cfg.model
        if getattr(task_args, "task", None) not in ("speech_and_text_translation", "speech_to_text_modified"):
            raise TranslateError(f"{checkpoint}: trained with task {getattr(task_args, 'task', None)!r}, not "
                                 "speech_and_text_translation")
        self._tmp = tempfile.TemporaryDirectory(prefix="cress-translate-")
        config_path = write_resources(state.get("task_state"), self._tmp.name, checkpoint=checkpoint,
                                      data_config=data_config, vocab=vocab, spm_model=spm_model)
        data_cfg = SpeechDataConfig.load(config_path)
        dictionary = Dictionary.load(str(data_cfg.vocab_path))
        args = copy.copy(task_args)
        args.data, args.config_yaml, args.eval_bleu = self._tmp.name, config_path.name, False
        args.tgt_lang = tgt_lang or getattr(args, "tgt_lang", None)
        if data_cfg.prepend_tgt_lang_tag and not args.tgt_lang:
            raise TranslateError(f"{checkpoint}: the model starts every translation with a language tag and its "
                                 "training args name no --tgt-lang: pass --tgt-lang")
        try:
            task = SpeechAndTextTranslationTask(args, dictionary, data_cfg)
        except ValueError as err:
            raise TranslateError(str(err)) from None
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], task=task, state=state)
        self.device = torch.device(device)
        self.models = [m.eval().to(self.device) for m in models]
        self.task = task
        self.prefix = 1 if task.tgt_prefix_token is not None else 0
        gen_cfg = GenerationConfig(beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b,
                                   prefix_size=self.prefix)
        self.generator = task.build_generator(self.models, gen_cfg)
        self.bpe, self.tokenizer = task.build_bpe(None), task.build_tokenizer(None)
        # the task's speech dataset with no rows: only its collater is used, so batches match fairseq-generate's
        self._collater = SpeechTextTripletDataset("translate", [], manifest_path="", audio_root="",
                                                  dictionary=dictionary, encode_text=str).collater
        self.standardize = data_cfg.standardize_audio

    def _target(self) -> torch.Tensor:
        d = self.task.target_dictionary
        tokens = [self.task.tgt_prefix_token] if self.prefix else []
        return torch.tensor([*tokens, d.eos()], dtype=torch.long)

    def _detok(self, tokens: torch.Tensor) -> str:
        """As fairseq-generate's D- line: dictionary string without stripped symbols, then BPE and tokenizer decode."""
        from fairseq_cli.generate import get_symbols_to_strip_from_output

        text = self.task.target_dictionary.string(
            tokens.int().cpu(), None, extra_symbols_to_ignore=get_symbols_to_strip_from_output(self.generator))
        if self.bpe is not None:
            text = self.bpe.decode(text)
        if self.tokenizer is not None:
            text = self.tokenizer.decode(text)
        return text

    def translate(self, waves: list[torch.Tensor]) -> list[tuple[str, float]]:
        """(translation, score) of 16 kHz mono waveforms, decoded together as one batch."""
        from fairseq import utils

        samples = []
        for i, wave in enumerate(waves):
            if self.standardize:  # as the speech dataset does
                wave = F.layer_norm(wave, wave.shape)
            samples.append({"id": i, "audio": wave, "source": torch.zeros(0, dtype=torch.long),
                            "target": self._target()})
        sample = utils.apply_to_sample(lambda t: t.to(self.device), self._collater(samples))
        prefix = sample["target"][:, : self.prefix] if self.prefix else None
        with torch.no_grad():
            hypos = self.task.inference_step(self.generator, self.models, sample, prefix_tokens=prefix)
        out = [("", 0.0)] * len(waves)
        for sid, hypo in zip(sample["id"].tolist(), hypos):
            out[sid] = self._detok(hypo[0]["tokens"]), float(hypo[0]["score"]) / math.log(2)
        return out


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(files), size):
        yield files[i : i + size]


def run(translator: Translator, files: list[Path], batch_size: int, out: TextIO, fmt: str,
        progress: bool) -> list[str]:
    """Translate ``files`` batch by batch, writing each result in input order; returns the errors (one per file).

    A batch's compute time is shared among its files in proportion to their audio length.
    """
    from tqdm import tqdm

    errors: list[str] = []
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr)
    for batch in _batches(files, batch_size):
        waves: dict[int, torch.Tensor] = {}
        for i, path in enumerate(batch):
            try:
                waves[i] = read_audio(AudioRef(str(path), None, None, "file"))
            except AudioError as err:
                errors.append(str(err))
        translations: dict[int, tuple[str, float]] = {}
        seconds = 0.0
        if waves:
            start = time.perf_counter()
            keys = list(waves)
            translations = dict(zip(keys, translator.translate([waves[k] for k in keys])))
            seconds = time.perf_counter() - start
        total = sum(len(w) for w in waves.values()) or 1
        for i, path in enumerate(batch):
            if i not in waves:
                if fmt == "text":
                    out.write("\n")  # keeps line i = file i; the error is reported at the end
                continue
            audio_seconds = len(waves[i]) / SAMPLE_RATE
            text, score = translations[i]
            result = Result(str(path), text, audio_seconds, seconds * len(waves[i]) / total, score)
            out.write((result.to_json() if fmt == "jsonl" else result.translation) + "\n")
        out.flush()
        bar.update(len(batch))
    bar.close()
    return errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cress-bitnet-translate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="trained (.pt) or exported packed (.pt or .safetensors) checkpoint")
    p.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg, any rate, mono or stereo) or folders")
    p.add_argument("--output", "-o", help="write here instead of stdout")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: one translation per input file and line (empty for an unreadable file); jsonl: "
                        "file, translation, audio_seconds, compute_seconds, rtf")
    p.add_argument("--data-config", help="data config YAML (its vocabulary and SentencePiece model too); needed "
                                         "for checkpoints that do not store one")
    p.add_argument("--vocab", help="target dictionary (dict.txt), overrides the checkpoint's")
    p.add_argument("--spm-model", help="SentencePiece model, overrides the checkpoint's")
    p.add_argument("--tgt-lang", help="target language of a multilingual model (its <lang:xx> tag starts decoding); "
                   "default: the checkpoint's --tgt-lang")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-len-a", type=float, default=0.0)
    p.add_argument("--max-len-b", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8, help="files decoded together")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (the default unless --device is given)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows for more than one batch)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``cress-bitnet-translate`` / ``python -m cress_bitnet.translate``); 1 if any file failed."""
    opts = build_parser().parse_args(argv)
    if opts.cpu and opts.device not in (None, "cpu"):
        print(f"cress-bitnet-translate: error: --cpu contradicts --device {opts.device}", file=sys.stderr)
        return 2
    if opts.batch_size < 1 or opts.beam < 1:
        print("cress-bitnet-translate: error: --batch-size and --beam must be >= 1", file=sys.stderr)
        return 2
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from cress_bitnet.checkpoints import CheckpointError
    from cress_bitnet.checkpoints.safetensors_format import SafetensorsFormatError
    from cress_bitnet.data.data_config import DataConfigError
    from cress_bitnet.resources import ResourceError

    try:
        files = collect_audio(opts.audio)
        translator = Translator(opts.checkpoint, data_config=opts.data_config, vocab=opts.vocab,
                                spm_model=opts.spm_model, beam=opts.beam, lenpen=opts.lenpen,
                                max_len_a=opts.max_len_a, max_len_b=opts.max_len_b, device=opts.device or "cpu",
                                tgt_lang=opts.tgt_lang)
    except (TranslateError, ResourceError, DataConfigError, CheckpointError, SafetensorsFormatError) as err:
        print(f"cress-bitnet-translate: error: {err}", file=sys.stderr)
        return 2
    out = open(opts.output, "w", encoding="utf-8") if opts.output else sys.stdout  # noqa: SIM115
    try:
        errors = run(translator, files, opts.batch_size, out, opts.format,
                     progress=not opts.no_progress and len(files) > opts.batch_size)
    finally:
        if opts.output:
            out.close()
    if errors:
        print(f"cress-bitnet-translate: {len(errors)} of {len(files)} files could not be translated:", file=sys.stderr)
        for err in errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
