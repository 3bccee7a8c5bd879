"""Write real-size HuBERT Base and DeltaLM-base checkpoints (random weights) in the exact release formats.

Why: memory, step time, key maps at a 250k vocabulary, export sizes and decode speed only show at real dimensions,
and the released files cannot be downloaded here. The tensors are random (seeded); the layouts are those of
``hubert_base_ls960.pt`` (legacy ``args`` Namespace, 504-symbol label dictionary in ``task_state``, 214 tensors,
94.7 M parameters) and ``deltalm-base.pt`` (``{"weights": ...}``, 392 tensors, 250,104 embedding rows), with a
250,001-entry fairseq ``dict.txt`` and a 250,000-piece SentencePiece model whose pieces are exactly the dictionary's
(as XLM-R/InfoXLM's ``spm.model`` + DeltaLM's ``dict.txt``). The formats are those of the tiny fixtures: this module
only chooses the real dimensions and reuses ``make_tiny_checkpoints``' writers.

    python -m data_prep.make_base_checkpoints --out base_ckpts [--text corpus.txt ...] [--seed 1]

The SentencePiece model: training a 250k unigram model is impractical, so a small one is trained on ``--text`` (plus
the printable Latin-1 characters, so any Latin-script text segments without <unk>), and the ``ModelProto`` is padded
with never-matching pieces (private-use characters, lowest scores) to 250,000 pieces, as
``sentencepiece_model_pb2`` allows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from data_prep.make_tiny_checkpoints import make_deltalm, make_hubert_legacy

# hubert_base_ls960.pt: fairseq examples/hubert/config/pretrain/hubert_base_librispeech.yaml + the released values.
HUBERT_BASE: dict[str, Any] = {
    "dim": 768, "layers": 12, "ffn": 3072, "heads": 12, "conv_dim": 512, "conv_pos": 128, "conv_pos_groups": 16,
    "final_dim": 256, "num_units": 500, "frontend": "random", "frame_pool": 2,
}
# deltalm-base.pt (unilm deltalm_base arch): 768/3072, 12 encoder + 6 decoder layers, 12 heads, 512 positions.
DELTALM_BASE: dict[str, int] = {
    "dim": 768, "ffn": 3072, "heads": 12, "encoder_layers": 12, "decoder_layers": 6, "max_positions": 512,
}
DELTALM_DICT_SIZE = 250001  # len(Dictionary.load(dict.txt)): 4 fairseq specials + 249,997 lines
DELTALM_EMBED_ROWS = 250104  # rows in the file: + 103 span-corruption ids (unilm issue #881)
SPM_PIECES = 250000  # XLM-R/InfoXLM spm: <unk>, <s>, </s> + the 249,997 pieces of dict.txt

HUBERT_FILE = "hubert_base_ls960.pt"
DELTALM_FILE = "deltalm-base.pt"
DICT_FILE = "dict.txt"
SPM_FILE = "spm.model"


def _filler_pieces(n: int, taken: set[str]) -> list[str]:
    """``n`` distinct pieces made of private-use characters (U+E000..U+F8FF): they never match real text."""
    base, span = 0xE000, 0xF8FF - 0xE000 + 1
    out: list[str] = []
    i = 0
    while len(out) < n:
        piece = "\u2581" + chr(base + i // span) + chr(base + i % span)
        i += 1
        if piece not in taken:
            out.append(piece)
    return out


def make_spm_and_dict(out_dir: str | os.PathLike, texts: list[str | os.PathLike] | None = None, *,
                      seed_vocab: int = 4000, pieces: int = SPM_PIECES) -> tuple[Path, Path]:
    """Write ``spm.model`` (``pieces`` pieces) and the matching fairseq ``dict.txt`` (``pieces - 3`` lines).

    Piece ids 0..2 are <unk>, <s>, </s> (XLM-R's layout); every other piece is a ``dict.txt`` line in id order, so
    ``Dictionary.load`` gives ``pieces + 1`` entries and every SentencePiece piece maps to its own dictionary index.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latin1 = "".join(chr(c) for c in range(0x21, 0x7F)) + "".join(chr(c) for c in range(0xA1, 0x100))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "text.txt"
        with corpus.open("w", encoding="utf-8") as f:
            for t in texts or []:
                f.write(Path(t).read_text(encoding="utf-8"))
                f.write("\n")
            for _ in range(3):  # character coverage: every printable Latin-1 character is a piece
                f.write(" ".join(latin1) + "\n")
        prefix = Path(tmp) / "seed"
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=seed_vocab, hard_vocab_limit=False,
            model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            minloglevel=2,
        )
        proto = pb.ModelProto()
        proto.ParseFromString((Path(str(prefix) + ".model")).read_bytes())
    have = len(proto.pieces)
    if have > pieces:
        raise ValueError(f"the seed SentencePiece model already has {have} pieces > {pieces}")
    lowest = min(p.score for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL)
    taken = {p.piece for p in proto.pieces}
    for j, piece in enumerate(_filler_pieces(pieces - have, taken)):
        new = proto.pieces.add()
        new.piece = piece
        new.score = lowest - 10.0 - j * 1e-4
        new.type = pb.ModelProto.SentencePiece.NORMAL
    proto.trainer_spec.vocab_size = pieces
    spm_path = out / SPM_FILE
    spm_path.write_bytes(proto.SerializeToString())
    dict_path = out / DICT_FILE
    with dict_path.open("w", encoding="utf-8") as f:
        for i, p in enumerate(proto.pieces):
            if p.type == pb.ModelProto.SentencePiece.NORMAL:
                f.write(f"{p.piece} {max(1, pieces - i)}\n")
    return spm_path, dict_path


def write_deltalm_data_config(data_dir: str | os.PathLike, base_dir: str | os.PathLike, *,
                              src_config: str = "config.yaml", name: str = "config_deltalm.yaml") -> Path:
    """Copy ``data_dir/src_config`` to ``data_dir/name`` with DeltaLM's ``dict.txt`` and ``spm.model`` (absolute paths)
    as ``vocab_filename`` / ``sentencepiece_model``: the toy ST manifests then encode targets with DeltaLM's vocabulary.
    """
    import yaml

    data, base = Path(data_dir), Path(base_dir).resolve()
    src = data / src_config
    if not src.is_file():
        raise FileNotFoundError(f"{src}: data config not found")
    cfg = yaml.safe_load(src.read_text(encoding="utf-8")) or {}
    for f in (DICT_FILE, SPM_FILE):
        if not (base / f).is_file():
            raise FileNotFoundError(f"{base / f}: not found (run python -m data_prep.make_base_checkpoints)")
    cfg["vocab_filename"] = str(base / DICT_FILE)
    cfg["bpe_tokenizer"] = {"bpe": "sentencepiece", "sentencepiece_model": str(base / SPM_FILE)}
    out = data / name
    out.write_text("# DeltaLM vocabulary (data_prep.make_base_checkpoints)\n"
                   + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def make_base_checkpoints(out_dir: str | os.PathLike, *, seed: int = 1,
                          texts: list[str | os.PathLike] | None = None, hubert: bool = True,
                          deltalm: bool = True) -> dict[str, Any]:
    """Write the four files under ``out_dir`` and return a summary (also written as ``base_checkpoints.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out": str(out), "seed": seed}
    if hubert:
        summary["hubert"] = make_hubert_legacy(out / HUBERT_FILE, seed=seed, **HUBERT_BASE)
    if deltalm:
        spm_path, dict_path = make_spm_and_dict(out, texts)
        n_lines = sum(1 for _ in dict_path.open(encoding="utf-8"))
        vocab = n_lines + 4
        if vocab != DELTALM_DICT_SIZE:
            raise AssertionError(f"{dict_path}: {n_lines} lines give {vocab} entries, not {DELTALM_DICT_SIZE}")
        info = make_deltalm(out / DELTALM_FILE, seed=seed, vocab_size=vocab,
                            extra_rows=DELTALM_EMBED_ROWS - vocab, **DELTALM_BASE)
        info["bytes"] = (out / DELTALM_FILE).stat().st_size
        summary["deltalm"] = info
        summary["spm"] = {"file": str(spm_path), "pieces": SPM_PIECES}
        summary["dict"] = {"file": str(dict_path), "lines": n_lines, "entries": vocab}
    (out / "base_checkpoints.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--text", action="append", default=[],
                   help="text file(s) the SentencePiece model's real pieces are learnt from (repeatable)")
    p.add_argument("--skip-hubert", action="store_true")
    p.add_argument("--skip-deltalm", action="store_true")
    a = p.parse_args(argv)
    for t in a.text:
        if not Path(t).is_file():
            p.error(f"--text {t}: file not found")
    s = make_base_checkpoints(a.out, seed=a.seed, texts=a.text, hubert=not a.skip_hubert,
                              deltalm=not a.skip_deltalm)
    if "hubert" in s:
        h = s["hubert"]
        print(f"{h['file']}: HuBERT Base ({h['layout']}), {h['tensors']} tensors, {h['parameters']:,} params, "
              f"dict {h['dictionary_symbols']} symbols, {h['bytes'] / 2**20:.0f} MiB")
    if "deltalm" in s:
        d = s["deltalm"]
        print(f"{d['file']}: DeltaLM base, {d['num_tensors']} tensors, embed rows {d['embed_tokens_rows']}, "
              f"{d['bytes'] / 2**20:.0f} MiB; {s['dict']['file']}: {s['dict']['entries']} entries; "
              f"{s['spm']['file']}: {s['spm']['pieces']} pieces")


if __name__ == "__main__":
    main()
