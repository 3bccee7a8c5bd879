"""Atomic outputs: the destination changes only when writing succeeded, and no temporary file is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cress_bitnet.fileio import atomic_output


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path: Path) -> None:
    dst = tmp_path / "sub" / "talk.wav"
    with atomic_output(dst) as tmp:
        assert tmp.parent == dst.parent and tmp.suffix == ".wav" and tmp != dst
        tmp.write_bytes(b"first")
    assert dst.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_output(dst) as tmp:
        tmp.write_bytes(b"half writ")
        raise RuntimeError("killed mid-write")
    assert dst.read_bytes() == b"first"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["talk.wav"]
