"""Issue 13 item 6: comma-separated training splits with fairseq S2T's temperature sampling (``sampling_alpha``) and
per-row ``tgt_lang``: ratios and resampled indices equal fairseq's own code, targets carry their row's language tag,
batches are rebuilt each epoch, and fairseq-train runs on two splits."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import ToyData, fairseq, output
from fairseq.data import ResamplingDataset
from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDatasetCreator
from task_helpers import build_task, copy_data

from cress_bitnet.data.manifest import read_manifest, write_manifest
from cress_bitnet.data.speech_text_dataset import SpeechSplitMixture, temperature_size_ratios


def test_size_ratios_match_fairseq() -> None:
    """Three splits, two language pairs (one pair split in two): our ratios equal fairseq's get_size_ratios."""
    splits = [("a", "en->de", [500, 400]), ("b", "en->de", [300]), ("c", "en->fr", [100, 100])]
    fake = [SimpleNamespace(split=name, src_langs=[pair[:2]] * len(fr), tgt_langs=[pair[4:]] * len(fr), n_frames=fr)
            for name, pair, fr in splits]
    for alpha in (0.2, 0.5, 1.0, 2.0):
        ours = temperature_size_ratios([p for _, p, _ in splits], [sum(f) for _, _, f in splits], alpha)
        assert ours == pytest.approx(SpeechToTextDatasetCreator.get_size_ratios(fake, alpha=alpha), rel=1e-12)
    # by hand, alpha 0.5: shares 0.8 / 0.2 -> sqrt, normalised -> 2/3 / 1/3 of 1000 frames -> x(666.7/800), x(333.3/200)
    ours = temperature_size_ratios(["en->de", "en->de", "en->fr"], [600, 200, 200], 0.5)
    assert ours == pytest.approx([5 / 6, 5 / 6, 5 / 3])


class _Part:
    """The little a SpeechSplitMixture reads from a split."""

    def __init__(self, n_frames: list[int], shuffle: bool = True) -> None:
        self.n_frames = np.array(n_frames, dtype=np.int64)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self.n_frames)

    def __getitem__(self, i: int) -> dict:
        return {"id": i, "frames": int(self.n_frames[i])}

    def size(self, i: int) -> tuple[int, int, int]:
        return int(self.n_frames[i]), 1, 1


def test_mixture_resamples_like_fairseq_every_epoch() -> None:
    big, small = _Part(list(range(1000, 1040))), _Part([5000, 5001, 5002, 5003])
    ratios = [0.6, 3.5]
    mix = SpeechSplitMixture([big, small], ratios, seed=7, epoch=1)
    assert len(mix) == math.ceil(40 * 0.6) + math.ceil(4 * 3.5) == 38
    assert not mix.can_reuse_epoch_itr_across_epochs
    for epoch in (1, 2, 3):
        mix.set_epoch(epoch)
        for k, (part, ratio) in enumerate(zip([big, small], ratios)):
            ref = ResamplingDataset(part, size_ratio=ratio, seed=7, epoch=epoch, replace=ratio >= 1.0)
            np.testing.assert_array_equal(mix.row_of[mix.part_of == k], ref._cur_indices.array)
        # items are addressed by mixture index; sizes follow the resampled rows
        i = int(np.flatnonzero(mix.part_of == 1)[0])
        assert mix[i] == {"id": i, "frames": int(small.n_frames[mix.row_of[i]])}
        assert mix.size(i)[0] == mix.num_tokens(i) == mix.sizes[i]
    mix.set_epoch(1)
    first = mix.row_of.copy()
    mix.set_epoch(2)
    assert not np.array_equal(first, mix.row_of), "a new epoch must draw a new sample"
    assert len(set(mix.row_of[mix.part_of == 0])) == 24, "down-sampling draws without replacement"
    # longest first
    order = mix.ordered_indices()
    assert list(mix.sizes[order]) == sorted(mix.sizes, reverse=True)


def test_mixture_without_sampling_is_a_plain_concatenation() -> None:
    mix = SpeechSplitMixture([_Part([1, 2, 3], shuffle=False), _Part([4, 5], shuffle=False)], seed=1, epoch=1)
    assert mix.can_reuse_epoch_itr_across_epochs
    assert list(mix.sizes) == [1, 2, 3, 4, 5] and list(mix.part_of) == [0, 0, 0, 1, 1]
    mix.set_epoch(5)
    assert list(mix.row_of) == [0, 1, 2, 0, 1]


def _multilingual(toy: ToyData, tmp: Path, alpha: float) -> Path:
    """The toy data with language tags in its dictionary, prepend_tgt_lang_tag on, and two training manifests:
    ``train_de`` (all rows, tgt_lang de) and ``train_fr`` (6 rows, tgt_lang fr; same audio: only the tag matters)."""
    data = copy_data(toy, tmp)
    cfg = yaml.safe_load((data / "config.yaml").read_text(encoding="utf-8"))
    with open(data / cfg["vocab_filename"], "a", encoding="utf-8") as f:
        f.write("<lang:de> 1\n<lang:fr> 1\n")
    cfg.update(prepend_tgt_lang_tag=True, sampling_alpha=alpha)
    (data / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rows = read_manifest(data / "train.tsv")
    for row in rows:
        row.tgt_lang = "de"
    write_manifest(data / "train_de.tsv", rows)
    fr = rows[:6]
    for row in fr:
        row.tgt_lang, row.id = "fr", row.id + "_fr"
    write_manifest(data / "train_fr.tsv", fr)
    return data


def test_task_reads_two_splits_with_row_language_tags(toy: ToyData, tmp_path: Path) -> None:
    data = _multilingual(toy, tmp_path, alpha=0.5)
    task, _ = build_task(data, "--hubert-model-path", str(toy.hubert), "--seed", "3", "--max-tokens", "150000")
    task.load_dataset("train_de,train_fr", epoch=1)
    mix = task.dataset("train_de,train_fr").datasets[0]  # the ST modality of the training multimodal dataset
    de, fr = task.lang_tag_index("de"), task.lang_tag_index("fr")
    frames = [int(p.n_frames.sum()) for p in mix.parts]
    ratios = temperature_size_ratios(["->de", "->fr"], frames, 0.5)
    assert mix.size_ratios == pytest.approx(ratios) and ratios[1] > 1 > ratios[0]
    assert len(mix) == math.ceil(24 * ratios[0]) + math.ceil(6 * ratios[1])
    for i in range(len(mix)):
        assert int(mix[i]["target"][0]) == (de if mix.part_of[i] == 0 else fr)
    assert {de, fr} <= task._symbols_to_strip()

    def batches(epoch: int) -> list[list[int]]:
        itr = task.get_batch_iterator(task.dataset("train_de,train_fr"), max_tokens=150000, seed=3, epoch=epoch)
        return [b["id"].tolist() for b in itr.next_epoch_itr(shuffle=False)]

    one = batches(1)
    assert sorted(i for b in one for i in b) == list(range(len(mix))), "every resampled example is batched once"
    sizes_1 = mix.sizes.copy()
    two = batches(2)
    assert not np.array_equal(sizes_1, mix.sizes)
    for b in two:  # rebatched for epoch 2's sample: no batch exceeds --max-tokens with the new sizes
        assert len(b) * int(mix.sizes[b].max()) <= 150000


def test_rows_without_tgt_lang_take_the_flag(toy: ToyData, tmp_path: Path) -> None:
    data = _multilingual(toy, tmp_path, alpha=1.0)
    task, _ = build_task(data, "--hubert-model-path", str(toy.hubert), "--tgt-lang", "fr")
    task.load_dataset("train")  # the plain manifest has no tgt_lang column: every target gets --tgt-lang's tag
    ds = task.dataset("train").datasets[0]
    assert {int(ds[i]["target"][0]) for i in range(len(ds))} == {task.lang_tag_index("fr")}
    assert task.tgt_prefix_token == task.lang_tag_index("fr")
    rows = read_manifest(data / "train_de.tsv")
    rows[3].tgt_lang = "it"
    write_manifest(data / "train_it.tsv", rows)
    with pytest.raises(ValueError, match=r"train_it\.tsv:5 \(id \S+\): .*\.txt: has no language tag <lang:it>"):
        task.load_dataset("train_it")


@pytest.mark.slow
def test_fairseq_train_on_two_sampled_splits(toy: ToyData, tmp_path: Path) -> None:
    """fairseq-train --train-subset a,b with sampling_alpha and MT batches: two epochs, each resampled."""
    data = copy_data(toy, tmp_path)
    cfg = yaml.safe_load((data / "config.yaml").read_text(encoding="utf-8"))
    cfg["sampling_alpha"] = 0.5
    (data / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rows = read_manifest(data / "train.tsv")
    write_manifest(data / "train_a.tsv", rows[:18])
    for row in rows[18:]:
        row.tgt_lang = "xx"  # a second language pair, as far as sampling is concerned
    write_manifest(data / "train_b.tsv", rows[18:])
    args = toy.st_train_args(tmp_path / "save", "--st-training", "--ext-mt-training", "--max-epoch", "2",
                             "--disable-validation", "--no-save")
    args[args.index("--train-subset") + 1] = "train_a,train_b"
    args[0] = str(data)
    log = output(fairseq("train", args))
    ratios = temperature_size_ratios(["->de", "->xx"], [sum(r.n_frames for r in rows[:18]),
                                                        sum(r.n_frames for r in rows[18:])], 0.5)
    st_len = math.ceil(18 * ratios[0]) + math.ceil(6 * ratios[1])
    assert re.search(rf"train_a,train_b: {st_len + 24} examples", log), log[-3000:]  # ST resampled + 24 MT pairs
    assert "sampling_alpha 0.5: size ratio per split" in log
    assert f"MT text split train of {toy.mt_bin}" in log
    assert re.search(r"end of epoch 2 ", log), log[-3000:]
