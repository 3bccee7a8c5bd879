"""fairseq speech_to_text manifest TSV reading and writing, with errors that point at the offending line.

The format is what fairseq's ``SpeechToTextDatasetCreator`` reads: a header row, tab-separated fields, no quoting
(``csv.QUOTE_NONE``). Because nothing is quoted or escaped, a field can never hold a tab or newline; the writer
refuses them instead of producing a file that fairseq would split differently. No fairseq import here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cress_bitnet.fileio import atomic_output

MANIFEST_COLUMNS = ("id", "audio", "n_frames", "src_text", "tgt_text", "speaker")
# fairseq S2T's optional language columns (multilingual manifests): written only when a row has a value.
LANG_COLUMNS = ("src_lang", "tgt_lang")
REQUIRED_COLUMNS = ("id", "audio", "n_frames", "tgt_text")


class ManifestError(ValueError):
    """A malformed manifest; the message starts with ``path`` or ``path:LINE``."""


@dataclass
class ManifestRow:
    """One utterance. ``line`` is its 1-based line in the file it was read from (0 when built in memory)."""

    id: str
    audio: str
    n_frames: int
    tgt_text: str
    src_text: str = ""
    speaker: str = ""
    src_lang: str = ""
    tgt_lang: str = ""
    line: int = 0


def read_manifest(path: str | Path, required_by: Mapping[str, str] | None = None) -> list[ManifestRow]:
    """Read and validate a manifest so that bad rows fail here, naming the line, not deep inside training.

    A UTF-8 byte-order mark and CRLF line ends (a manifest saved by a Windows editor) are accepted and removed.
    ``required_by`` maps optional columns (``src_text``) to the flag that needs them: the column must then exist and
    be non-empty on every row, because e.g. ``--ctc-weight`` would otherwise train towards empty transcripts.
    """
    path = str(path)
    required_by = dict(required_by or {})
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest file not found")
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()

    def decode(i: int) -> str:
        try:
            return raw_lines[i].decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}:{i + 1}: invalid UTF-8 ({e.reason} at byte {e.start} of the line)") from None

    header_idx = next((i for i in range(len(raw_lines)) if decode(i).strip()), None)
    if header_idx is None:
        raise ManifestError(f"{path}: empty manifest (no header, no rows)")
    header = decode(header_idx).split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(
            f"{path}:{header_idx + 1}: header lacks required column(s) {', '.join(missing)} "
            f"(found: {', '.join(header)})"
        )
    missing = [c for c in required_by if c not in header]
    if missing:
        raise ManifestError(
            f"{path}:{header_idx + 1}: header lacks column {missing[0]}, which {required_by[missing[0]]} needs "
            f"(found: {', '.join(header)})"
        )
    col = {name: k for k, name in enumerate(header)}
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for i in range(header_idx + 1, len(raw_lines)):
        text = decode(i)
        ln = i + 1
        if not text.strip():
            continue  # csv.DictReader skips blank lines too
        fields = text.split("\t")
        if len(fields) != len(header):
            raise ManifestError(
                f"{path}:{ln}: expected {len(header)} tab-separated fields as in the header, found {len(fields)}"
                + (" (a tab inside a text field?)" if len(fields) > len(header) else "")
            )
        rid = fields[col["id"]]
        if not rid:
            raise ManifestError(f"{path}:{ln}: empty id")
        nf = fields[col["n_frames"]]
        try:
            n_frames = int(nf)
        except ValueError:
            n_frames = 0
        if n_frames <= 0:
            raise ManifestError(f"{path}:{ln} (id {rid}): n_frames {nf!r} is not a positive integer")
        if rid in seen:
            raise ManifestError(f"{path}:{ln}: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = ln
        if not fields[col["audio"]]:
            raise ManifestError(f"{path}:{ln} (id {rid}): empty audio field")
        tgt = fields[col["tgt_text"]]
        if not tgt.strip():
            raise ManifestError(f"{path}:{ln} (id {rid}): empty tgt_text")
        for c, flag in required_by.items():
            if not fields[col[c]].strip():
                raise ManifestError(f"{path}:{ln} (id {rid}): empty {c}, which {flag} needs")
        rows.append(
            ManifestRow(
                id=rid,
                audio=fields[col["audio"]],
                n_frames=n_frames,
                tgt_text=tgt,
                src_text=fields[col["src_text"]] if "src_text" in col else "",
                speaker=fields[col["speaker"]] if "speaker" in col else "",
                src_lang=fields[col["src_lang"]] if "src_lang" in col else "",
                tgt_lang=fields[col["tgt_lang"]] if "tgt_lang" in col else "",
                line=ln,
            )
        )
    if not rows:
        raise ManifestError(f"{path}: empty manifest (header but no rows)")
    return rows


def _as_dict(row: ManifestRow | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(row, ManifestRow):
        return {c: getattr(row, c) for c in MANIFEST_COLUMNS + LANG_COLUMNS}
    return row


def write_manifest(path: str | Path, rows: Iterable[ManifestRow | Mapping[str, Any]]) -> None:
    """Write ``MANIFEST_COLUMNS`` in order (then ``src_lang``/``tgt_lang`` when any row has one), atomically
    (temp + rename) so an interrupted run leaves no half file."""
    path = Path(path)
    dicts = [_as_dict(row) for row in rows]
    columns = MANIFEST_COLUMNS + tuple(c for c in LANG_COLUMNS if any(d.get(c) for d in dicts))
    lines = ["\t".join(columns)]
    for k, d in enumerate(dicts):
        out = []
        for c in columns:
            v = d.get(c, "")
            v = "" if v is None else str(v)
            if any(ch in v for ch in "\t\n\r"):
                raise ManifestError(
                    f"{path}: row {k} (id {d.get('id', '?')}): column {c} contains a tab or newline, "
                    "which a QUOTE_NONE TSV cannot hold"
                )
            out.append(v)
        lines.append("\t".join(out))
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
