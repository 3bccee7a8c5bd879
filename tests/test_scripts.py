"""Issue 5 part 5: the shell recipes in scripts/ (syntax, --help, TGT validation, and the whole chain
prep -> MT pretraining -> FP ST -> SVCD -> generate on the tiny toy corpus, a few updates each, on CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TGT, TINY_MODEL_ARGS, ToyData

import cress_bitnet  # noqa: F401  (weights_only allowlist for fairseq checkpoints)

SCRIPTS = REPO / "scripts"
RECIPES = ["prep_mustc.sh", "train_mt.sh", "train_st_baseline.sh", "train_svcd.sh", "generate.sh"]


def sh(script: str, *args: str, env: dict[str, str] | None = None, check: bool = True,
       timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode})\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_bash_syntax(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [*RECIPES, "demo.sh"])
def test_help_lists_the_environment(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TGT"}
    proc = subprocess.run(["bash", str(SCRIPTS / script), "--help"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage:")
    assert "Environment (default):" in proc.stdout
    for var in (["OUT", "DEMO_TRAIN", "DEMO_ST_UPDATES"] if script == "demo.sh" else ["TGT", "PYTHON"]):
        assert re.search(rf"^\s+{var}\b", proc.stdout, flags=re.M), f"{script} --help does not list {var}"


@pytest.mark.parametrize("script", RECIPES)
@pytest.mark.parametrize("tgt", ["xx", "", "DE"])
def test_bad_or_missing_tgt_fails_clearly(script: str, tgt: str, tmp_path: Path) -> None:
    proc = sh(script, env={"TGT": tgt, "DATA_ROOT": str(tmp_path), "CKPT_ROOT": str(tmp_path)}, check=False)
    assert proc.returncode == 2
    assert "de es fr it nl pt ro ru" in proc.stderr
    assert ("TGT is not set" if tgt == "" else f"TGT='{tgt}' is not a MuST-C target language") in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before TGT is validated"


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    proc = sh("train_mt.sh", env={"TGT": "fr", "DATA_ROOT": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and f"prepared data (DATA; run scripts/prep_mustc.sh) not found: {tmp_path}/en-fr" \
        in proc.stderr
    proc = sh("prep_mustc.sh", env={"TGT": "de", "MUSTC_ROOT": str(tmp_path / "nowhere")}, check=False)
    assert proc.returncode == 2 and "MuST-C pair not found" in proc.stderr


def _bleu(path: Path) -> float:
    text = path.read_text().strip()
    assert re.fullmatch(r"\d+(\.\d+)?", text), f"{path}: {text!r} is not a BLEU number"
    return float(text)


def test_recipes_chain_end_to_end(toy: ToyData, tmp_path: Path) -> None:
    data_root, ckpt_root = tmp_path / "data", tmp_path / "ckpt"
    env = {"TGT": TGT, "DATA_ROOT": str(data_root), "CKPT_ROOT": str(ckpt_root), "HUBERT": str(toy.hubert),
           "LOG_INTERVAL": "1", "WARMUP": "2", "LR": "1e-3"}
    tiny = [*TINY_MODEL_ARGS, "--conv-channels", "32"]

    prep = sh("prep_mustc.sh", env={**env, "MUSTC_ROOT": str(toy.mustc_root), "VOCAB_SIZE": "200"})
    st_dir = data_root / f"en-{TGT}"
    for name in ("train.tsv", "dev.tsv", "tst-COMMON.tsv", "config.yaml", "spm_unigram200.model"):
        assert (st_dir / name).is_file(), name
    assert (st_dir / "binary" / f"train.en-{TGT}.{TGT}.bin").is_file()
    assert "no GPU" not in prep.stderr  # prep does not train

    mt = sh("train_mt.sh", *tiny, env={**env, "MAX_UPDATE": "2", "MAX_TOKENS_TEXT": "400", "AVG_LAST": "2"})
    mt_dir = ckpt_root / f"en-{TGT}.mt"
    assert (mt_dir / "checkpoint_avg.pt").is_file()
    assert "--fp16 dropped" in mt.stderr and "--ext-mt-training" in mt.stderr
    assert re.search(r"ext_mt_loss=\d", mt.stdout + mt.stderr)
    assert list((mt_dir / "tensorboard").rglob("events.out.tfevents.*")), "no tensorboard events"

    st = sh("train_st_baseline.sh", *tiny, env={**env, "MAX_UPDATE": "3", "MAX_TOKENS": "400000",
                                                "EVAL_BEAM": "1", "SAVE_INTERVAL_UPDATES": "1"})
    log = st.stdout + st.stderr
    st_dir_ckpt = ckpt_root / f"en-{TGT}.st_baseline"
    assert re.search(r"loaded \d+ tensors from .*checkpoint_avg\.pt \(hubert_transformer\)", log)
    assert re.search(r"mt_loss=\d", log) and re.search(r"st_loss=\d", log)
    assert re.search(r"valid on 'dev' subset .*\| bleu \d", log)
    assert (st_dir_ckpt / "checkpoint_best.pt").is_file()
    assert list((st_dir_ckpt / "tensorboard").rglob("events.out.tfevents.*"))

    svcd = sh("train_svcd.sh", env={**env, "MAX_UPDATE": "2", "MAX_TOKENS": "400000", "EVAL_BLEU": "0",
                                     "QUANT_TARGETS": "decoder"})
    svcd_dir = ckpt_root / f"en-{TGT}.svcd_decoder"
    assert "--arch quant_transformer" in svcd.stderr and "--quant-targets decoder" in svcd.stderr
    assert (svcd_dir / "checkpoint_last.pt").is_file()

    for save_dir, avg in ((st_dir_ckpt, "3"), (svcd_dir, "1")):
        gen = sh("generate.sh", env={**env, "SAVE_DIR": str(save_dir), "AVG_LAST": avg, "BEAM": "2"})
        assert re.search(r"Generate tst-COMMON with beam=2: BLEU = \d+\.\d+", gen.stdout)
        score = _bleu(save_dir / "bleu.tst-COMMON.txt")
        assert 0.0 <= score <= 100.0
        gen_log = (save_dir / "generate.tst-COMMON.log").read_text()
        assert len(re.findall(r"^H-\d+\t", gen_log, flags=re.M)) == 6
        assert "(beam 2, lenpen 1.2)" in gen.stderr and "--lenpen 1.2" in gen_log  # de row of lang_table.tsv
        assert (save_dir / f"checkpoint_avg_last{avg}.pt").is_file()

    averaged = torch.load(st_dir_ckpt / "checkpoint_avg_last3.pt", map_location="cpu", weights_only=True)
    assert averaged["model"].keys() == torch.load(st_dir_ckpt / "checkpoint_last.pt", weights_only=True)[
        "model"].keys()


def test_generate_beam_and_lenpen_come_from_the_language_table(tmp_path: Path) -> None:
    table = tmp_path / "table.tsv"
    table.write_text("lang\tbeam\tlenpen\nru\t5\t0.8\n")
    proc = sh("generate.sh", env={"TGT": "ru", "LANG_TABLE": str(table), "DATA_ROOT": str(tmp_path)}, check=False)
    # the table is read before the data is checked: the failure names the missing data, not the table
    assert proc.returncode == 2 and "prepared data" in proc.stderr
    proc = sh("generate.sh", env={"TGT": "es", "LANG_TABLE": str(table), "DATA_ROOT": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and f"{table} has no row for TGT=es" in proc.stderr
