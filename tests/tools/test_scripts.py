"""Issue 5 part 5: the shell recipes in scripts/ (syntax, --help, TGT validation, and the whole chain
prep -> MT pretraining -> FP ST -> SVCD -> generate on the tiny toy corpus, a few updates each, on CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import REPO, TGT, TINY_MODEL_ARGS, ToyData, run_tool

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


@pytest.mark.parametrize("script", [*RECIPES, "demo.sh", "reproduce_paper.sh"])
def test_help_lists_the_environment(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TGT"}
    proc = subprocess.run(["bash", str(SCRIPTS / script), "--help"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage:")
    assert "Environment (default):" in proc.stdout
    expected = {"demo.sh": ["OUT", "DEMO_TRAIN", "DEMO_ST_UPDATES", "PYTHON"],
                "reproduce_paper.sh": ["OUT", "PAPER_INITS", "PAPER_RET_UPDATES", "PYTHON"]}
    for var in expected.get(script, ["TGT", "PYTHON"]):
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


@pytest.mark.slow
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

    # CRESS's two stages for real (one epoch each), then CRESS's MT-only decoding of the text test set
    cress = sh("train_cress.sh", *tiny, env={**env, "CRESS_EPOCHS": "1", "MAX_EPOCH": "2", "MAX_UPDATE": "100",
                                             "MAX_TOKENS": "400000", "EVAL_BLEU": "0"})
    log = cress.stdout + cress.stderr
    adaptive = ckpt_root / f"en-{TGT}.cress_adaptive"
    assert re.search(r"reg_loss=\d", log) and (ckpt_root / f"en-{TGT}.cress" / "checkpoint1.pt").is_file()
    assert re.search(r"epoch 002 .*\| st_loss \d", log), log[-3000:]  # stage 2 continued from stage 1's epoch
    assert (adaptive / "checkpoint2.pt").is_file()
    mt_gen = sh("generate.sh", env={**env, "SAVE_DIR": str(adaptive), "MODE": "mt", "BEAM": "1"})
    mt_log = (adaptive / "generate.test.log").read_text()
    assert len(re.findall(r"^H-\d+\t", mt_log, flags=re.M)) == 6 and re.search(r"^S-\d+\t", mt_log, flags=re.M)
    assert re.search(r"BLEU = \d+\.\d+", mt_gen.stdout)


@pytest.mark.slow
def test_deltalm_mode_end_to_end(toy: ToyData, tmp_path: Path) -> None:
    """DELTALM_DIR (spm.model, dict.txt, deltalm-base.pt in DeltaLM's layouts, tiny) through prep -> FP baseline
    (hubert_deltalm_base initialised from DeltaLM) -> SVCD -> generate, on the toy corpus, a few updates each."""
    deltalm_dir = tmp_path / "deltalm"
    txt = toy.mustc_root / f"en-{TGT}" / "data" / "train" / "txt"
    text = tmp_path / "text.txt"
    text.write_text((txt / "train.en").read_text() + (txt / f"train.{TGT}").read_text())
    run_tool([sys.executable, "-m", "data_prep.make_tiny_checkpoints", "--out", str(deltalm_dir), "--no-verify",
              "--deltalm-spm-text", str(text), "--deltalm-spm-vocab", "120"])
    (deltalm_dir / "deltalm_tiny.pt").rename(deltalm_dir / "deltalm-base.pt")
    data_root, ckpt_root = tmp_path / "data", tmp_path / "ckpt"
    env = {"TGT": TGT, "DATA_ROOT": str(data_root), "CKPT_ROOT": str(ckpt_root), "HUBERT": str(toy.hubert),
           "DELTALM_DIR": str(deltalm_dir), "LOG_INTERVAL": "1", "WARMUP": "2", "LR": "1e-3", "EVAL_BLEU": "0",
           "MAX_TOKENS": "400000", "MAX_TOKENS_TEXT": "400"}

    sh("prep_mustc.sh", env={**env, "MUSTC_ROOT": str(toy.mustc_root)})
    data = data_root / f"en-{TGT}"
    cfg = (data / "config.yaml").read_text()
    assert f"vocab_filename: {deltalm_dir.resolve()}/dict.txt" in cfg
    assert f"sentencepiece_model: {deltalm_dir.resolve()}/spm.model" in cfg
    assert not list(data.glob("spm_*"))
    assert (data / "binary" / f"train.en-{TGT}.{TGT}.bin").is_file()
    assert (data / "binary" / "dict.en.txt").read_text() == (deltalm_dir / "dict.txt").read_text()

    st = sh("train_st_baseline.sh", *TINY_MODEL_ARGS, "--conv-channels", "32", env={**env, "MAX_UPDATE": "2"})
    log = st.stdout + st.stderr
    assert "--arch hubert_deltalm_base" in log
    assert re.search(rf"loaded \d+ tensors from {re.escape(str(deltalm_dir))}/deltalm-base\.pt \(deltalm\)", log)
    st_dir = ckpt_root / f"en-{TGT}.st_baseline"
    state = torch.load(st_dir / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    n_dict = len((deltalm_dir / "dict.txt").read_text().splitlines()) + 4
    assert state["model"]["decoder.embed_tokens.weight"].shape[0] == n_dict

    svcd = sh("train_svcd.sh", env={**env, "MAX_UPDATE": "1", "QUANT_TARGETS": "decoder"})
    assert "--arch quant_transformer" in svcd.stderr
    svcd_dir = ckpt_root / f"en-{TGT}.svcd_decoder"
    gen = sh("generate.sh", env={**env, "SAVE_DIR": str(svcd_dir), "AVG_LAST": "1", "BEAM": "2"})
    assert re.search(r"Generate tst-COMMON with beam=2: BLEU = \d+\.\d+", gen.stdout)
    hyps = re.findall(r"^H-\d+\t", (svcd_dir / "generate.tst-COMMON.log").read_text(), flags=re.M)
    assert len(hyps) == 6


# CRESS's README: beam 8 for every language and these length penalties (test.en-x.st.sh <ckpt> <lang> <lenpen>).
CRESS_LENPEN = {"de": 1.2, "fr": 1.8, "es": 0.6, "ro": 1.4, "ru": 0.8, "it": 1.0, "pt": 1.4, "nl": 1.0}

# A stand-in interpreter: records every command line and answers fairseq-generate with a BLEU line, so the test sees
# exactly the flags generate.sh passes to fairseq-generate without decoding anything.
STUB_PYTHON = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$STUB_LOG"
if [[ "$1" == -c ]]; then echo False; exit 0; fi
beam=""; subset=""; prev=""
for a in "$@"; do [[ "$prev" == --beam ]] && beam="$a"; [[ "$prev" == --gen-subset ]] && subset="$a"; prev="$a"; done
echo "Generate $subset with beam=$beam: BLEU = 12.34 50.0/20.0/10.0/5.0 (BP = 1.000 ratio = 1.000)"
"""


def _stub_python(tmp_path: Path, script: str = STUB_PYTHON) -> tuple[Path, Path]:
    """The stand-in interpreter in ``tmp_path`` and the file it records command lines in."""
    stub = tmp_path / "python"
    stub.write_text(script)
    stub.chmod(0o755)
    return stub, tmp_path / "argv.log"


def _generate_with_stub(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    stub, log = _stub_python(tmp_path)
    log.unlink(missing_ok=True)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "tst-COMMON.tsv").write_text("id\taudio\tn_frames\ttgt_text\n")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    proc = sh("generate.sh", env={"DATA": str(data), "CKPT": str(ckpt), "RESULTS_DIR": str(tmp_path / "res"),
                                  **env, "PYTHON": str(stub), "STUB_LOG": str(log)}, check=False)
    gen = [line for line in log.read_text().splitlines() if line.startswith("-m fairseq_cli.generate")]
    return proc, gen


def _flag(argv: str, name: str) -> str:
    words = argv.split()
    return words[words.index(name) + 1]


@pytest.mark.parametrize("tgt", sorted(CRESS_LENPEN))
def test_generate_passes_the_language_tables_beam_and_lenpen(tgt: str, tmp_path: Path) -> None:
    proc, gen = _generate_with_stub(tmp_path, {"TGT": tgt})
    assert proc.returncode == 0, proc.stderr
    assert len(gen) == 1
    assert int(_flag(gen[0], "--beam")) == 8
    assert float(_flag(gen[0], "--lenpen")) == CRESS_LENPEN[tgt]
    assert (tmp_path / "res" / "bleu.tst-COMMON.txt").read_text() == "12.34\n"


def test_generate_reads_a_custom_table_and_env_overrides_it(tmp_path: Path) -> None:
    table = tmp_path / "table.tsv"
    table.write_text("lang\tbeam\tlenpen\nru\t5\t0.7\nde\t3\t1.9\n")
    for tgt, beam, lenpen in (("ru", "5", "0.7"), ("de", "3", "1.9")):
        proc, gen = _generate_with_stub(tmp_path, {"TGT": tgt, "LANG_TABLE": str(table)})
        assert proc.returncode == 0, proc.stderr
        assert (_flag(gen[0], "--beam"), _flag(gen[0], "--lenpen")) == (beam, lenpen)
        assert f"(beam {beam}, lenpen {lenpen})" in proc.stderr
    proc, gen = _generate_with_stub(tmp_path, {"TGT": "ru", "LANG_TABLE": str(table), "BEAM": "2", "LENPEN": "1.1"})
    assert (_flag(gen[0], "--beam"), _flag(gen[0], "--lenpen")) == ("2", "1.1")


def test_generate_language_table_errors(tmp_path: Path) -> None:
    table = tmp_path / "table.tsv"
    table.write_text("lang\tbeam\tlenpen\nru\t5\t0.8\n")
    proc = sh("generate.sh", env={"TGT": "ru", "LANG_TABLE": str(table), "DATA_ROOT": str(tmp_path)}, check=False)
    # the table is read before the data is checked: the failure names the missing data, not the table
    assert proc.returncode == 2 and "prepared data" in proc.stderr
    proc = sh("generate.sh", env={"TGT": "es", "LANG_TABLE": str(table), "DATA_ROOT": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and f"{table} has no row for TGT=es" in proc.stderr


def _help_defaults(script: str) -> dict[str, str]:
    """NAME -> default as --help prints it ("  NAME  text (DEFAULT)"; a default is one word, so a help text that
    ends in a parenthesised remark, e.g. "(empty: no limit)", has no default)."""
    env = {k: v for k, v in os.environ.items() if k != "TGT"}
    out = subprocess.run(["bash", str(SCRIPTS / script), "--help"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    out = re.sub(r"\n {4,}", " ", out)  # a multi-line help continues under its first line
    found = {}
    for m in re.finditer(r"^  ([A-Z][A-Z0-9_]*) +.*?(?:\(([^()]*)\))?(?: \[DeltaLM mode: [^]]*\])?$", out, flags=re.M):
        if m.group(2) is not None and not re.search(r"\s", m.group(2)):
            found[m.group(1)] = m.group(2)
    return found


TRAIN_FLAGS = {"LR": "--lr", "WARMUP": "--warmup-updates", "CLIP_NORM": "--clip-norm", "MAX_TOKENS": "--max-tokens",
               "MAX_TOKENS_TEXT": "--max-tokens-text", "UPDATE_FREQ": "--update-freq",
               "WEIGHT_DECAY": "--weight-decay", "LABEL_SMOOTHING": "--label-smoothing", "MAX_UPDATE": "--max-update",
               "MAX_EPOCH": "--max-epoch", "PATIENCE": "--patience", "SEED": "--seed",
               "LOG_INTERVAL": "--log-interval", "BATCH_SIZE": "--batch-size", "ARCH": "--arch",
               "QUANT_TARGETS": "--quant-targets", "QUANT_METHOD": "--quant-method", "QUANT_INIT": "--quant-init",
               "CRITERION": "--criterion"}


@pytest.mark.parametrize("script", ["train_mt.sh", "train_st_baseline.sh", "train_svcd.sh"])
def test_training_recipes_pass_the_defaults_their_help_prints(script: str, tmp_path: Path) -> None:
    stub, log = _stub_python(tmp_path)
    data = tmp_path / "data"
    (data / "binary").mkdir(parents=True)
    for name in ("hubert.pt", "mt.pt", "fp.pt"):
        (tmp_path / name).write_bytes(b"")
    env = {"TGT": "fr", "DATA": str(data), "HUBERT": str(tmp_path / "hubert.pt"), "MT_CKPT": str(tmp_path / "mt.pt"),
           "FP_CKPT": str(tmp_path / "fp.pt"), "SAVE_DIR": str(tmp_path / "save"), "PYTHON": str(stub),
           "STUB_LOG": str(log)}
    proc = sh(script, env=env)
    train = [line.split() for line in log.read_text().splitlines() if line.startswith("-m fairseq_cli.train")]
    assert len(train) == 1, log.read_text()
    argv = train[0]
    defaults = _help_defaults(script)
    checked = 0
    for var, flag in TRAIN_FLAGS.items():
        if var not in defaults:
            assert flag not in argv or var == "ARCH" and script == "train_svcd.sh", (var, flag)
            continue
        assert argv[argv.index(flag) + 1] == defaults[var], (script, var, flag)
        checked += 1
    assert checked >= 15
    assert argv[argv.index("--tensorboard-logdir") + 1] == f"{tmp_path}/save/tensorboard"  # $SAVE_DIR/tensorboard
    assert argv[argv.index("--tgt-lang") + 1] == "fr" and argv[argv.index("--cpu") - 1] == "legacy_ddp"
    if script == "train_svcd.sh":
        assert defaults["MAX_EPOCH"] == "45" and "--st-training" in argv
    if script == "train_mt.sh":
        assert "--batch-size" not in argv and "--ext-mt-training" in argv
        assert "-m scripts.average_checkpoints" in log.read_text()
    assert "no GPU found" in proc.stderr


TWO_STAGE_RECIPE = """#!/usr/bin/env bash
# A recipe written against the template: two fairseq-train stages, the second restoring the first's checkpoint.
set -euo pipefail
source "{scripts}/train_template.sh"
RECIPE_USAGE="TGT=de scripts/two_stage.sh"
RECIPE_ABOUT="Test recipe."
RECIPE_TITLE="two stages"
var SAVE_DIR '$CKPT_ROOT/en-$TGT.first' "first stage output"
var SECOND_DIR '$CKPT_ROOT/en-$TGT.second' "second stage output"
var CRITERION label_smoothed_cross_entropy "first stage criterion"
var MAX_EPOCH 7 "max epochs"
vars_st
recipe_args() {{ RECIPE_ARGS+=(--arch test_arch --stage-dir "$SAVE_DIR"); st_args; }}
train_prepare "$@"
fairseq_train "$@"
FIRST="$SAVE_DIR/checkpoint_last.pt"
SAVE_DIR="$SECOND_DIR" TB_DIR="$SECOND_DIR/tensorboard" CRITERION=cross_entropy \\
    fairseq_train "$@" --restore-file "$FIRST"
"""


def test_a_recipe_is_a_short_file_on_the_template(tmp_path: Path) -> None:
    recipe = tmp_path / "two_stage.sh"
    recipe.write_text(TWO_STAGE_RECIPE.format(scripts=SCRIPTS))
    stub, log = _stub_python(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "TGT": "it", "DATA": str(data), "CKPT_ROOT": str(tmp_path / "ck"), "PYTHON": str(stub),
           "STUB_LOG": str(log)}
    help_text = subprocess.run(["bash", str(recipe), "--help"], env=env, capture_output=True, text=True).stdout
    assert re.search(r"^  SECOND_DIR +second stage output \(\$CKPT_ROOT/en-\$TGT\.second\)$", help_text, flags=re.M)
    assert re.search(r"^  LR +.*\(1e-4\)$", help_text, flags=re.M)  # the template's shared settings are listed too
    proc = subprocess.run(["bash", str(recipe), "--seed", "5"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    runs = [line.split() for line in log.read_text().splitlines() if line.startswith("-m fairseq_cli.train")]
    assert len(runs) == 2
    first, second = runs
    ck = tmp_path / "ck"
    assert _flag(" ".join(first), "--criterion") == "label_smoothed_cross_entropy"
    assert _flag(" ".join(second), "--criterion") == "cross_entropy"
    assert _flag(" ".join(first), "--stage-dir") == _flag(" ".join(first), "--save-dir") == f"{ck}/en-it.first"
    assert _flag(" ".join(second), "--stage-dir") == _flag(" ".join(second), "--save-dir") == f"{ck}/en-it.second"
    assert _flag(" ".join(second), "--tensorboard-logdir") == f"{ck}/en-it.second/tensorboard"
    assert second[-2:] == ["--restore-file", f"{ck}/en-it.first/checkpoint_last.pt"]
    assert first[-2:] == ["--seed", "5"] and _flag(" ".join(first), "--max-epoch") == "7"
    assert "--st-training" in first and "--st-training" in second


def test_deltalm_mode_defaults(tmp_path: Path) -> None:
    """DELTALM_DIR switches the baseline's ARCH and MT_CKPT defaults (explicit values still win) and prep's vocab."""
    stub, log = _stub_python(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    dl = tmp_path / "deltalm"
    dl.mkdir()
    for name in ("deltalm-base.pt", "spm.model", "dict.txt"):
        (dl / name).write_bytes(b"")
    (tmp_path / "hubert.pt").write_bytes(b"")
    base = {"TGT": "de", "DATA": str(data), "HUBERT": str(tmp_path / "hubert.pt"), "SAVE_DIR": str(tmp_path / "s"),
            "PYTHON": str(stub), "STUB_LOG": str(log), "DELTALM_DIR": str(dl)}
    sh("train_st_baseline.sh", env=base)
    argv = log.read_text().split()
    assert argv[argv.index("--arch") + 1] == "hubert_deltalm_base"
    assert argv[argv.index("--load-pretrained-mt-encoder-decoder-from") + 1] == f"{dl}/deltalm-base.pt"
    log.unlink()
    sh("train_st_baseline.sh", env={**base, "ARCH": "hubert_transformer"})
    argv = log.read_text().split()
    assert argv[argv.index("--arch") + 1] == "hubert_transformer"
    log.unlink()
    mustc = tmp_path / "mustc" / "en-de"
    mustc.mkdir(parents=True)
    sh("prep_mustc.sh", env={**base, "MUSTC_ROOT": str(mustc.parent)})
    st, mt = (line.split() for line in log.read_text().splitlines() if line.startswith("-m data_prep."))
    assert st[st.index("--spm-model") + 1] == f"{dl}/spm.model" and st[st.index("--vocab") + 1] == f"{dl}/dict.txt"
    assert "--vocab-size" not in st
    assert mt[mt.index("--spm") + 1] == f"{dl}/spm.model" and "--deltalm" in mt
    proc = sh("prep_mustc.sh", env={**base, "DELTALM_DIR": "", "SPM_MODEL": f"{dl}/spm.model",
                                    "MUSTC_ROOT": str(mustc.parent)}, check=False)
    assert proc.returncode == 2 and "set both SPM_MODEL and VOCAB (or DELTALM_DIR), or neither" in proc.stderr


def test_demo_fingerprint_is_every_demo_setting(tmp_path: Path) -> None:
    """settings.txt holds every DEMO_* setting --help lists, with its value; changing one redoes every stage."""
    # the first stage fails at once: only the fingerprint matters
    stub, _ = _stub_python(tmp_path, "#!/usr/bin/env bash\nexit 1\n")
    out = tmp_path / "out"
    env_help = subprocess.run(["bash", str(SCRIPTS / "demo.sh"), "--help"], capture_output=True, text=True).stdout
    names = re.findall(r"^  (DEMO_[A-Z0-9_]+) ", env_help, flags=re.M)
    env = {**os.environ, "PYTHON": str(stub), "OUT": str(out), "DEMO_ST_LR": "7e-4"}
    env = {k: v for k, v in env.items() if not k.startswith("DEMO_") or k == "DEMO_ST_LR"}

    def run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPTS / "demo.sh")], cwd=REPO, env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    run()
    settings = dict(item.split("=", 1) for item in (out / "settings.txt").read_text().split())
    assert sorted(settings) == sorted(names) and len(names) >= 30
    assert settings["DEMO_ST_LR"] == "7e-4" and settings["DEMO_BEAM"] == "8" and settings["DEMO_TRAIN"] == "3000"
    assert "settings differ" not in run().stdout
    assert "settings differ from the previous run" in run(DEMO_HUBERT_POOL="2").stdout


@pytest.mark.parametrize("script", ["demo.sh", "reproduce_paper.sh"])
def test_cpu_recipes_run_without_python_in_the_environment(script: str, tmp_path: Path) -> None:
    """PYTHON defaults to the checkout's .venv interpreter (the README's commands set none); a bad switch is named."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PAPER_STAGES")}
    out = tmp_path / "out"
    (out / "stamps").mkdir(parents=True)
    (out / "runs" / "fp").mkdir(parents=True)
    (out / "stamps" / "fp.done").write_text("1\n")  # reproduce_paper: the demo's FP model is "there"
    (out / "runs" / "fp" / "checkpoint_avg.pt").write_bytes(b"")
    run = partial(subprocess.run, cwd=REPO, capture_output=True, text=True, timeout=120)
    switch = "--tiny" if script == "demo.sh" else "--frseh"
    bad = run(["bash", str(SCRIPTS / script), switch], env={**env, "OUT": str(out)})
    assert bad.returncode == 2 and "unknown argument" in bad.stderr and "(see --help)" in bad.stderr
    if script == "reproduce_paper.sh":  # gets past the interpreter check to the stage list, with no PYTHON set
        proc = run(["bash", str(SCRIPTS / script)], env={**env, "OUT": str(out), "PAPER_STAGES": "bogus"})
        assert proc.returncode == 2 and "PAPER_STAGES: unknown stage 'bogus'" in proc.stderr, proc.stderr
        assert "unbound variable" not in proc.stderr


def test_train_cress_runs_both_stages_with_cress_flags(tmp_path: Path) -> None:
    """CRESS's two stages: oracle_reg for CRESS_EPOCHS epochs, then _adaptive restoring checkpoint{N}.pt."""
    stub, log = _stub_python(tmp_path)
    data = tmp_path / "data"
    (data / "binary").mkdir(parents=True)
    for name in ("hubert.pt", "mt.pt"):
        (tmp_path / name).write_bytes(b"")
    ck = tmp_path / "ck"
    (ck / "en-de.cress").mkdir(parents=True)
    (ck / "en-de.cress" / "checkpoint3.pt").write_bytes(b"")  # what stage 1 would have written
    env = {"TGT": "de", "DATA": str(data), "HUBERT": str(tmp_path / "hubert.pt"), "MT_CKPT": str(tmp_path / "mt.pt"),
           "CKPT_ROOT": str(ck), "CRESS_EPOCHS": "3", "PYTHON": str(stub), "STUB_LOG": str(log)}
    sh("train_cress.sh", env=env)
    runs = [line for line in log.read_text().splitlines() if line.startswith("-m fairseq_cli.train")]
    assert len(runs) == 2
    first, second = runs
    assert _flag(first, "--criterion") == "speech_and_text_translation_with_oracle_reg"
    assert _flag(second, "--criterion") == "speech_and_text_translation_with_oracle_reg_adaptive"
    assert _flag(first, "--max-epoch") == "3" and _flag(first, "--save-dir") == f"{ck}/en-de.cress"
    for argv in runs:
        assert "--use-word-level-oracle" in argv and _flag(argv, "--decay-k") == "15"
        assert _flag(argv, "--reg-loss-type") == "jsd" and "--mt-finetune" not in argv.split()
    assert "--adaptive-base" not in first and _flag(second, "--adaptive-base") == "0.7"
    assert second.split()[-3:] == ["--restore-file", f"{ck}/en-de.cress/checkpoint3.pt", "--reset-optimizer"]
    assert _flag(second, "--save-dir") == f"{ck}/en-de.cress_adaptive"


def test_generate_mt_mode_decodes_the_text_split(tmp_path: Path) -> None:
    (tmp_path / "data" / "binary").mkdir(parents=True)
    (tmp_path / "data" / "binary" / "test.en-de.en.bin").write_bytes(b"")
    proc, gen = _generate_with_stub(tmp_path, {"TGT": "de", "MODE": "mt"})
    assert proc.returncode == 0, proc.stderr
    argv = gen[0]
    assert _flag(argv, "--gen-subset") == "test" and "--ext-mt-training" in argv.split()
    assert _flag(argv, "--text-data") == f"{tmp_path}/data/binary"
    bad = sh("generate.sh", env={"TGT": "de", "MODE": "speech", "DATA": str(tmp_path / "data"),
                                 "CKPT": str(tmp_path / "model.pt")}, check=False)
    assert bad.returncode != 0 and "MODE must be st or mt" in bad.stderr
