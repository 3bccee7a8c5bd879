"""Manifest TSV round trip and the error messages (file and line) for every malformed input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cress_bitnet.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    ManifestRow,
    read_manifest,
    write_manifest,
)

HEADER = "\t".join(MANIFEST_COLUMNS)


def _rows() -> list[ManifestRow]:
    return [
        ManifestRow("ted_1_0", "/a/ted_1.wav:0:16000", 16000, "Der Hund.", "The dog.", "spk.1"),
        ManifestRow("ted_1_1", "/a/ted_1.wav:16000:8000", 8000, "Die Katze « ß » é.", "The cat.", "spk.1"),
    ]


def _write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "m.tsv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


def test_round_trip_and_fairseq_reader(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "train.tsv"
    write_manifest(p, _rows())
    back = read_manifest(p)
    for a, b in zip(_rows(), back):
        assert (a.id, a.audio, a.n_frames, a.src_text, a.tgt_text, a.speaker) == (
            b.id, b.audio, b.n_frames, b.src_text, b.tgt_text, b.speaker,
        )  # fmt: skip
    assert [r.line for r in back] == [2, 3]
    # fairseq reads manifests with these csv settings: the same fields must come out
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quotechar=None, doublequote=False, lineterminator="\n",
                                quoting=csv.QUOTE_NONE)  # fmt: skip
        recs = list(reader)
    assert list(recs[0].keys()) == list(MANIFEST_COLUMNS)
    assert recs[1]["tgt_text"] == "Die Katze « ß » é." and recs[1]["n_frames"] == "8000"


def test_write_accepts_dicts_and_refuses_tabs(tmp_path: Path) -> None:
    p = tmp_path / "d.tsv"
    write_manifest(p, [{"id": "a", "audio": "x.wav", "n_frames": 5, "tgt_text": "t"}])
    row = read_manifest(p)[0]
    assert (row.id, row.n_frames, row.src_text, row.speaker) == ("a", 5, "", "")
    with pytest.raises(ManifestError, match=r"row 0 \(id b\): column tgt_text contains a tab"):
        write_manifest(p, [{"id": "b", "audio": "x.wav", "n_frames": 5, "tgt_text": "t\tu"}])
    with pytest.raises(ManifestError, match="column src_text contains a tab or newline"):
        write_manifest(p, [ManifestRow("c", "x.wav", 5, "t", src_text="a\nb")])


def test_minimal_columns_any_order(tmp_path: Path) -> None:
    p = _write(tmp_path, "tgt_text\tn_frames\taudio\tid\nHallo\t10\tx.wav\tu1\n")
    (row,) = read_manifest(p)
    assert (row.id, row.audio, row.n_frames, row.tgt_text, row.src_text) == ("u1", "x.wav", 10, "Hallo", "")


@pytest.mark.parametrize(
    "body, pattern",
    [
        (None, r"m\.tsv: manifest file not found"),
        ("", r"m\.tsv: empty manifest"),
        (HEADER + "\n", r"m\.tsv: empty manifest \(header but no rows\)"),
        ("id\taudio\tn_frames\n", r"m\.tsv:1: header lacks required column\(s\) tgt_text"),
        (HEADER + "\nu1\tx.wav\t10\tsrc\ttgt\n", r"m\.tsv:2: expected 6 tab-separated fields .* found 5"),
        (HEADER + "\nu1\tx.wav\t10\ts\tt\tspk\nu2\tx.wav\t-3\ts\tt\tspk\n", r"m\.tsv:3 \(id u2\): n_frames '-3'"),
        (HEADER + "\nu1\tx.wav\tabc\ts\tt\tspk\n", r"m\.tsv:2 \(id u1\): n_frames 'abc' is not a positive integer"),
        (HEADER + "\nu1\tx.wav\t10\ts\tt\tspk\nu1\ty.wav\t10\ts\tt\tspk\n", r"m\.tsv:3: duplicate id 'u1' .*line 2"),
        (HEADER + "\nu1\tx.wav\t10\ts\t \tspk\n", r"m\.tsv:2 \(id u1\): empty tgt_text"),
        (
            HEADER.encode() + b"\nu1\tx.wav\t10\ts\tt\tspk\nu2\tx.wav\t10\ts\t\xff\xfe\tspk\n",
            r"m\.tsv:3: invalid UTF-8",
        ),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, body: str | bytes | None, pattern: str) -> None:
    p = tmp_path / "m.tsv" if body is None else _write(tmp_path, body)
    with pytest.raises(ManifestError, match=pattern) as exc:
        read_manifest(p)
    assert str(exc.value).startswith(str(p))
