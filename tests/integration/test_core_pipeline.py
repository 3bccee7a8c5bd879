"""Issue 2 end to end: fairseq-train with HuBERT + MT checkpoints on both modalities, fairseq-generate with sacreBLEU
after the HuBERT and MT files are gone, --restore-file resume, and loaded tensors equal their sources."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import torch
from conftest import REPO, ToyData, fairseq, generate_args, output, run_tool

from data_prep.make_tiny_checkpoints import make_deltalm

HUBERT_PRETRAINING_ONLY = re.compile(r"^(label_embs_concat|final_proj\.|target_glu\.)")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_train_resume_and_generate_without_source_files(toy: ToyData, tmp_path: Path) -> None:
    hubert, mt = tmp_path / "hubert.pt", tmp_path / "mt.pt"
    shutil.copy(toy.hubert, hubert)
    shutil.copy(toy.mt_checkpoint, mt)
    save = tmp_path / "st"
    args = toy.st_train_args(save, "--st-training", "--ext-mt-training", "--mt-finetune", "--ctc-weight", "0.3",
                             "--load-pretrained-mt-encoder-decoder-from", str(mt),
                             "--eval-bleu", "--eval-bleu-args", '{"beam": 1}')
    args[args.index("--hubert-model-path") + 1] = str(hubert)
    log = output(fairseq("train", [*args, "--max-update", "3"]))
    assert re.search(r"loaded \d+ tensors from .*mt\.pt \(fairseq_transformer\)", log)
    for part in ("st_loss", "mt_loss", "ext_mt_loss", "ctc_loss"):
        assert re.search(rf"{part}=\d", log), f"{part} never logged"
    assert re.search(r"valid on 'dev' subset .*\| bleu \d", log)
    assert (save / "checkpoint_last.pt").is_file()

    resumed = output(fairseq("train", [*args, "--max-update", "5", "--restore-file", "checkpoint_last.pt"]))
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 3 updates\)", resumed)
    assert "num_updates: 5 >= max_update: 5" in resumed
    assert torch.load(save / "checkpoint_last.pt", weights_only=True)["optimizer_history"][-1]["num_updates"] == 5

    hubert.unlink()
    mt.unlink()
    gen = output(fairseq("generate", generate_args(toy, save / "checkpoint_last.pt")))
    assert re.search(r"Generate tst-COMMON with beam=2: BLEU = \d+\.\d+", gen)
    assert len(re.findall(r"^H-\d+\t", gen, flags=re.M)) == 6  # every test utterance decoded, none dropped


def _near_zero_lr_run(toy: ToyData, save: Path, *extra: str, arch: str = "hubert_transformer_postln") -> str:
    args = toy.st_train_args(save, "--st-training", "--max-update", "1", "--disable-validation", *extra, arch=arch)
    args[args.index("--lr") + 1] = "1e-30"
    return output(fairseq("train", args))


def test_near_zero_lr_keeps_hubert_and_fairseq_mt_tensors(toy: ToyData, tmp_path: Path) -> None:
    log = _near_zero_lr_run(toy, tmp_path, "--load-pretrained-mt-encoder-decoder-from", str(toy.mt_checkpoint))
    assert "unexpected in checkpoint" not in log
    trained = _state(tmp_path / "checkpoint_last.pt")
    hubert = torch.load(toy.hubert, weights_only=True)["model"]
    checked = 0
    for key, value in hubert.items():
        if HUBERT_PRETRAINING_ONLY.match(key):
            continue
        assert torch.equal(trained[f"encoder.hubert_model.{key}"], value), key
        checked += 1
    assert checked >= 50
    mt = _state(toy.mt_checkpoint)
    checked = 0
    for key, value in mt.items():
        if key.endswith(("version", "_float_tensor")):
            continue
        target = re.sub(r"^encoder\.layers\.", "encoder.transformer_layers.", key)
        assert torch.equal(trained[target], value), f"{key} -> {target}"
        checked += 1
    assert checked == sum(1 for k in mt if not k.endswith(("version", "_float_tensor")))


def _deltalm_target(key: str) -> str:
    """DeltaLM file names → model names, written out independently of the loader's key map."""
    key = re.sub(r"^src_embedding\.", "encoder.", key)
    key = re.sub(r"^tgt_embedding\.", "decoder.", key)
    key = key.replace("emb_layer_norm", "layernorm_embedding")
    key = re.sub(r"^encoder\.layers\.(\d+)\.ffn\.", r"encoder.transformer_layers.\1.", key)
    key = re.sub(r"^encoder\.layers\.", "encoder.transformer_layers.", key)
    key = re.sub(r"\.ffn_1\.fc1\.", ".fc3.", key)
    key = re.sub(r"\.ffn_1\.fc2\.", ".fc4.", key)
    return re.sub(r"\.ffn_2\.", ".", key)


def test_near_zero_lr_keeps_deltalm_tensors(toy: ToyData, tmp_path: Path) -> None:
    from fairseq.data import Dictionary

    from cress_bitnet.data.data_config import SpeechDataConfig

    vocab = len(Dictionary.load(str(SpeechDataConfig.load(toy.st_dir / "config.yaml").vocab_path)))
    deltalm = tmp_path / "deltalm.pt"
    make_deltalm(deltalm, seed=3, dim=32, ffn=64, heads=2, encoder_layers=2, decoder_layers=2, max_positions=512,
                 vocab_size=vocab, extra_rows=13)
    log = _near_zero_lr_run(toy, tmp_path / "st", "--load-pretrained-mt-encoder-decoder-from", str(deltalm),
                            arch="hubert_deltalm_base")
    assert re.search(r"loaded \d+ tensors from .*deltalm\.pt \(deltalm\)", log)
    assert "missing in checkpoint" not in log and "unexpected in checkpoint" not in log
    trained = _state(tmp_path / "st" / "checkpoint_last.pt")
    weights = torch.load(deltalm, weights_only=True)["weights"]
    for key, value in weights.items():
        if key == "src_embedding.embed_tokens.weight":
            continue  # one shared embedding: the decoder's (tgt) copy is loaded last, as in unilm
        target = _deltalm_target(key)
        if key.endswith("embed_tokens.weight"):
            value = value[:vocab]
        assert torch.equal(trained[target], value), f"{key} -> {target}"
    assert torch.equal(trained["decoder.output_projection.weight"], trained["decoder.embed_tokens.weight"])


def test_user_dir_resolves_from_checkout_and_from_install(tmp_path: Path) -> None:
    probe = (
        "import argparse; from fairseq import utils; "
        "utils.import_user_module(argparse.Namespace(user_dir='cress_bitnet')); "
        "from fairseq.tasks import TASK_REGISTRY; from fairseq.models import ARCH_MODEL_REGISTRY; "
        "from fairseq.criterions import CRITERION_REGISTRY; import cress_bitnet; "
        "assert {'speech_and_text_translation', 'speech_to_text_modified'} <= set(TASK_REGISTRY); "
        "assert {'hubert_transformer', 'hubert_transformer_postln', 'hubert_transformer_pruning_layer', "
        "'hubert_deltalm_base'} <= set(ARCH_MODEL_REGISTRY); "
        "assert 'speech_and_text_translation' in CRITERION_REGISTRY; print(cress_bitnet.__file__)"
    )
    from_checkout = run_tool([sys.executable, "-c", probe], cwd=REPO).stdout.strip()
    assert Path(from_checkout).parent == REPO / "cress_bitnet"
    # Outside the checkout, fairseq resolves `--user-dir cress_bitnet` next to its own package: the installed copy.
    installed = run_tool([sys.executable, "-c", probe], cwd=tmp_path, check=False)
    assert installed.returncode == 0, (
        "`--user-dir cress_bitnet` must work when installed (pip install .):\n" + installed.stderr[-2000:]
    )
    assert "site-packages" in installed.stdout

