#!/usr/bin/env python3
"""Binarize the MT side of the ST data (and optional extra parallel text) for the joint task's ``--text-data``.

Why: CRESS trains on speech and text at once; its text stream is fairseq's binarized ``{split}.en-xx.{en,xx}``
encoded with the SAME SentencePiece model and dictionary as the ST targets, so both streams share one vocabulary.

Steps: read ``{split}.tsv`` manifests (src_text/tgt_text), append ``--extra-train PREFIX.en/PREFIX.xx`` to train,
encode with SentencePiece into ``BIN/spm_text/{name}.{en,xx}`` (space-separated pieces), then run
``python -m fairseq_cli.preprocess`` with ``--srcdict D --tgtdict D`` so that
``BIN/{train,valid,test}.en-xx.*.bin/.idx`` and ``BIN/dict.{en,xx}.txt`` exist.
CRESS calls the dev set ``valid``; see ``--splits``.

``--deltalm --spm MODEL --dict DICT`` encodes with DeltaLM's SentencePiece model and ``dict.txt`` instead.
Reruns skip a finished binarization unless ``--overwrite``.

Example:
``python -m data_prep.prep_mt_data --data-dir data/toy_mustc/en-de --tgt-lang de --out data/toy_mustc/en-de/binary``
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from cress_bitnet.data.manifest import ManifestError, read_manifest

logger = logging.getLogger("prep_mt_data")


class PrepError(ValueError):
    """Bad input for MT preparation; the message names the file (and line)."""


def find_spm_files(data_dir: Path) -> tuple[Path, Path]:
    """The single ``spm_*.model`` of a prep_mustc_data output dir and its fairseq dictionary ``spm_*.txt``."""
    models = sorted(data_dir.glob("spm_*.model"))
    if len(models) != 1:
        raise PrepError(f"{data_dir}: expected exactly one spm_*.model, found {[m.name for m in models]}; use --spm")
    return models[0], models[0].with_suffix(".txt")


def read_parallel(prefix: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    src_path, tgt_path = Path(f"{prefix}.en"), Path(f"{prefix}.{tgt_lang}")
    out = []
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise PrepError(f"{p}: file not found (--extra-train {prefix})")
        lines = p.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        out.append([ln.strip() for ln in lines])
    if len(out[0]) != len(out[1]):
        raise PrepError(f"line count mismatch: {src_path} has {len(out[0])} lines but {tgt_path} has {len(out[1])}")
    keep = [(s, t) for s, t in zip(*out) if s and t]
    if len(keep) < len(out[0]):
        logger.info("%s: dropped %d pairs with an empty side", prefix, len(out[0]) - len(keep))
    return [s for s, _ in keep], [t for _, t in keep]


def encode(sp, lines: list[str], desc: str) -> list[str]:  # noqa: ANN001
    return [" ".join(sp.encode(line, out_type=str)) for line in tqdm(lines, desc=desc, unit="line", mininterval=1.0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="prep_mustc_data.py output (manifests + spm)")
    ap.add_argument("--tgt-lang", required=True)
    ap.add_argument("--out", required=True, help="binarized output dir (the task's --text-data)")
    ap.add_argument("--splits", default="train:train,dev:valid,tst-COMMON:test", help="manifest:fairseq-name pairs")
    ap.add_argument("--extra-train", action="append", default=[], help="PREFIX of extra PREFIX.en/PREFIX.<tgt> text")
    ap.add_argument("--deltalm", action="store_true", help="encode with DeltaLM's spm model and dict (--spm, --dict)")
    ap.add_argument("--spm", default="", help="SentencePiece model (default: the data dir's spm_*.model)")
    ap.add_argument("--dict", default="", help="fairseq dictionary (default: the data dir's spm_*.txt)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prep_mt_data] %(message)s", force=True)

    import sentencepiece as spm

    data_dir, out, tgt = Path(args.data_dir), Path(args.out), args.tgt_lang
    if args.deltalm and not (args.spm and args.dict):
        raise PrepError("--deltalm needs --spm DeltaLM/spm.model and --dict DeltaLM/dict.txt")
    spm_model, dict_path = (Path(args.spm), Path(args.dict)) if args.spm else find_spm_files(data_dir)
    if args.dict:
        dict_path = Path(args.dict)
    for p in (spm_model, dict_path):
        if not p.is_file():
            raise PrepError(f"{p}: file not found")
    pairs = []
    for item in args.splits.split(","):
        name, _, fs_name = item.strip().partition(":")
        pairs.append((name, fs_name or name))
    fs_names = [f for _, f in pairs]
    if "train" not in fs_names:
        raise PrepError(f"--splits {args.splits}: one split must map to 'train'")
    done = all((out / f"{f}.en-{tgt}.{lang}.idx").exists() for f in fs_names for lang in ("en", tgt))
    if done and not args.overwrite:
        logger.info("%s already binarized, skipping (use --overwrite to redo)", out)
        return 0

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    text_dir = out / "spm_text"
    text_dir.mkdir(parents=True, exist_ok=True)
    for name, fs_name in pairs:
        rows = read_manifest(data_dir / f"{name}.tsv")
        src = [r.src_text for r in rows]
        empty = [r for r in rows if not r.src_text.strip()]
        if empty:
            raise PrepError(f"{data_dir / f'{name}.tsv'}:{empty[0].line} (id {empty[0].id}): empty src_text")
        tgt_lines = [r.tgt_text for r in rows]
        if fs_name == "train":
            for prefix in args.extra_train:
                es, et = read_parallel(prefix, tgt)
                logger.info("adding %d extra pairs from %s", len(es), prefix)
                src, tgt_lines = src + es, tgt_lines + et
        for lang, lines in (("en", src), (tgt, tgt_lines)):
            pieces = encode(sp, lines, f"spm {fs_name}.{lang}")
            (text_dir / f"{fs_name}.{lang}").write_text("\n".join(pieces) + "\n", encoding="utf-8")
        logger.info("%s -> %s: %d sentences", name, fs_name, len(src))

    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "en", "--target-lang", tgt,
           "--srcdict", str(dict_path), "--tgtdict", str(dict_path), "--destdir", str(out),
           "--workers", str(args.workers), "--dataset-impl", "mmap"]  # fmt: skip
    for flag, fs_name in (("--trainpref", "train"), ("--validpref", "valid"), ("--testpref", "test")):
        if fs_name in fs_names:
            cmd += [flag, str(text_dir / fs_name)]
    extra = [f for f in fs_names if f not in ("train", "valid", "test")]
    if extra:
        raise PrepError(f"--splits: fairseq names must be train/valid/test, got {extra}")
    logger.info("running %s", " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise PrepError(f"fairseq_cli.preprocess failed ({res.returncode}):\n{res.stderr[-3000:]}")
    for f in fs_names:
        for lang in ("en", tgt):
            if not (out / f"{f}.en-{tgt}.{lang}.idx").exists():
                raise PrepError(f"{out}: fairseq_cli.preprocess did not write {f}.en-{tgt}.{lang}.idx")
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (PrepError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
