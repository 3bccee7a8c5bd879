"""Session fixtures: a tiny toy MuST-C corpus prepared by the real data pipeline, tiny real-format checkpoints, and a
tiny MT checkpoint trained by fairseq-train itself. Built once per test session in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TGT = "de"

# One set of tiny dimensions for every model in the tests: HuBERT fixture dim 32, text model dim 32, 2+2 layers.
TINY_MODEL_ARGS = [
    "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-layers", "2",
    "--encoder-attention-heads", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
    "--decoder-layers", "2", "--decoder-attention-heads", "2",
]
# HuBERT's own dropouts, off: runs that must be comparable (e.g. 2 workers vs --update-freq 2) stay deterministic.
NO_HUBERT_DROPOUT = ["--hubert-dropout", "0", "--hubert-attention-dropout", "0", "--hubert-activation-dropout", "0",
                     "--hubert-layerdrop", "0", "--hubert-dropout-input", "0", "--hubert-dropout-features", "0"]
CPU_ARGS = ["--cpu", "--num-workers", "0", "--no-progress-bar", "--log-interval", "1", "--seed", "1"]


def run_tool(args: list[str], *, cwd: Path = REPO, timeout: int = 600, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command (a python module or script) and fail with its output when it fails."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(args)}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def fairseq(tool: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_tool([sys.executable, "-m", f"fairseq_cli.{tool}", *args], **kwargs)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@dataclass
class ToyData:
    mustc_root: Path  # raw MuST-C layout
    st_dir: Path  # prepared: manifests, spm, config.yaml
    mt_bin: Path  # binarized MT text
    ckpt_dir: Path  # tiny HuBERT / DeltaLM files
    mt_checkpoint: Path  # trained by fairseq-train --task translation

    @property
    def hubert(self) -> Path:
        return self.ckpt_dir / "hubert_tiny_ls960.pt"

    @property
    def hubert_cfg_format(self) -> Path:
        return self.ckpt_dir / "hubert_tiny_cfg.pt"

    @property
    def deltalm(self) -> Path:
        return self.ckpt_dir / "deltalm_tiny.pt"

    def st_train_args(self, save_dir: Path, *extra: str, arch: str = "hubert_transformer_postln") -> list[str]:
        """fairseq-train arguments for a tiny ST run on this data (speech + MT batches)."""
        return [
            str(self.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
            "--config-yaml", "config.yaml", "--train-subset", "train", "--valid-subset", "dev",
            "--text-data", str(self.mt_bin), "--tgt-lang", TGT, "--arch", arch,
            "--hubert-model-path", str(self.hubert), *TINY_MODEL_ARGS, "--conv-channels", "32", "--layernorm-embedding",
            "--criterion", "speech_and_text_translation", "--label-smoothing", "0.1", "--report-accuracy",
            "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "2",
            "--max-tokens", "400000", "--max-tokens-text", "400", "--save-dir", str(save_dir), *CPU_ARGS, *extra,
        ]


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ToyData:
    root = tmp_path_factory.mktemp("toy")
    mustc = root / "mustc"
    st_dir = root / "data" / f"en-{TGT}"
    mt_bin = st_dir / "binary"
    ckpt = root / "ckpt"
    py = sys.executable
    run_tool([py, "-m", "data_prep.make_toy_mustc", "--out", str(mustc), "--tgt-langs", TGT, "--seed", "1",
              "--train", "24", "--dev", "6", "--test", "6"])
    run_tool([py, "-m", "data_prep.prep_mustc_data", "--data-root", str(mustc), "--tgt-lang", TGT,
              "--out-dir", str(st_dir), "--vocab-size", "200"])
    run_tool([py, "-m", "data_prep.prep_mt_data", "--data-dir", str(st_dir), "--tgt-lang", TGT, "--out", str(mt_bin)])
    run_tool([py, "-m", "data_prep.make_tiny_checkpoints", "--out", str(ckpt)])
    mt_save = root / "mt"
    # A real trainer-format MT checkpoint, with numpy BLEU metrics in extra_state (--eval-bleu).
    fairseq("train", [
        str(mt_bin), "--task", "translation", "--source-lang", "en", "--target-lang", TGT, "--arch", "transformer",
        "--share-all-embeddings", "--layernorm-embedding", *TINY_MODEL_ARGS, "--optimizer", "adam", "--lr", "1e-3",
        "--max-tokens", "400", "--max-update", "2", "--save-dir", str(mt_save), "--eval-bleu",
        "--eval-bleu-args", '{"beam": 1}', "--no-epoch-checkpoints", *CPU_ARGS,
        # ve-fairseq drops the last partial batch when batch sizes must be multiples of 8 (see data/batching.py)
        "--required-batch-size-multiple", "1",
    ])
    return ToyData(mustc, st_dir, mt_bin, ckpt, mt_save / "checkpoint_last.pt")


@pytest.fixture(scope="session")
def fp_checkpoint(toy: ToyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained FP hubert_transformer ST checkpoint (a few updates, MT-initialised): quant_transformer's start."""
    save = tmp_path_factory.mktemp("fp_st")
    fairseq("train", toy.st_train_args(save, "--st-training", "--mt-finetune", "--max-update", "4",
                                       "--load-pretrained-mt-encoder-decoder-from", str(toy.mt_checkpoint),
                                       "--disable-validation", *NO_HUBERT_DROPOUT))
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def foreign_checkpoints(toy: ToyData, fp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``fp_checkpoint``'s weights in CRESS's, onebit-st's FP baseline and onebit-st's SVCD on-disk formats."""
    from foreign_checkpoints import make_cress_checkpoint, make_onebit_svcd_checkpoint

    out = tmp_path_factory.mktemp("foreign")
    return {
        "cress": make_cress_checkpoint(fp_checkpoint, out / "cress_checkpoint20.pt", toy.hubert),
        "onebit_fp": make_cress_checkpoint(fp_checkpoint, out / "onebit_fp.pt", toy.hubert,
                                           arch="hubert_transformer_pruning_layer"),
        "onebit_svcd": make_onebit_svcd_checkpoint(fp_checkpoint, out / "onebit_svcd.pt", toy.hubert),
    }


def quant_train_args(toy: ToyData, fp: Path, save_dir: Path, *extra: str) -> list[str]:
    """fairseq-train arguments for quant_transformer on the toy data (architecture comes from ``fp``)."""
    return [
        str(toy.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config.yaml", "--train-subset", "train", "--valid-subset", "dev", "--st-training",
        "--arch", "quant_transformer", "--pretrained-st-checkpoint", str(fp),
        "--criterion", "speech_and_text_translation", "--label-smoothing", "0.1", "--optimizer", "adam",
        "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "2", "--max-tokens", "400000",
        "--save-dir", str(save_dir), *CPU_ARGS, *extra,
    ]


@pytest.fixture(scope="session")
def svcd_decoder_checkpoint(toy: ToyData, fp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quant_transformer checkpoint with an SVCD decoder (3 updates from ``fp_checkpoint``): what gets exported."""
    save = tmp_path_factory.mktemp("svcd")
    fairseq("train", quant_train_args(toy, fp_checkpoint, save, "--quant-targets", "decoder", "--max-update", "3",
                                      "--disable-validation"))
    return save / "checkpoint_last.pt"


# The demo (scripts/demo.sh) at test size; scripts/reproduce_paper.sh --tiny uses the same DEMO_* values, so it
# reuses a tiny demo's output as it is.
TINY_DEMO = {
    "DEMO_TRAIN": "24", "DEMO_DEV": "6", "DEMO_TEST": "6", "DEMO_VOCAB": "200",
    "DEMO_DIM": "32", "DEMO_FFN": "64", "DEMO_LAYERS": "2", "DEMO_HEADS": "2",
    "DEMO_HUBERT_DIM": "32", "DEMO_HUBERT_FFN": "64", "DEMO_HUBERT_LAYERS": "2", "DEMO_HUBERT_HEADS": "2",
    "DEMO_HUBERT_CONV": "48", "DEMO_MT_UPDATES": "3", "DEMO_ST_UPDATES": "3", "DEMO_SVCD_UPDATES": "2",
    "DEMO_SVCD_DECODER_UPDATES": "2",
    "DEMO_BATCH": "8", "DEMO_BEAM": "2",
}


def run_demo(out: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), **TINY_DEMO, **(extra_env or {})}
    return subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny demo run per session (test_demo checks it; test_reproduce_paper starts from a copy of it)."""
    out = tmp_path_factory.mktemp("demo")
    proc = run_demo(out)
    assert proc.returncode == 0, f"demo failed\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return out, proc


def generate_args(toy: ToyData, checkpoint: Path, *extra: str) -> list[str]:
    return [
        str(toy.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config.yaml", "--gen-subset", "tst-COMMON", "--path", str(checkpoint),
        "--max-tokens", "400000", "--beam", "2", "--scoring", "sacrebleu", "--cpu", *extra,
    ]


@pytest.fixture(params=["kernel", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a packed-inference test once with the C++ kernel and once with the forced unpack + F.linear fallback."""
    from cress_bitnet import kernels

    if request.param == "fallback":
        monkeypatch.setenv(kernels.FORCE_FALLBACK_ENV, "1")
    else:
        monkeypatch.delenv(kernels.FORCE_FALLBACK_ENV, raising=False)
    return request.param


@pytest.fixture(scope="session")
def base_ckpts(toy: ToyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real-size HuBERT Base + DeltaLM-base files (random weights, ~2.6 GB), their dict.txt and spm.model; the spm's
    real pieces are learnt from the toy corpus text, and the toy data dir gets a config_deltalm.yaml using them."""
    out = tmp_path_factory.mktemp("base_ckpts")
    txt = toy.mustc_root / f"en-{TGT}" / "data" / "train" / "txt"
    run_tool([sys.executable, "-m", "data_prep.make_base_checkpoints", "--out", str(out),
              "--text", str(txt / "train.en"), "--text", str(txt / f"train.{TGT}")], timeout=1200)
    from data_prep.make_base_checkpoints import write_deltalm_data_config

    write_deltalm_data_config(toy.st_dir, out)
    return out


KERNEL_PATHS = ["lut", "rowmajor", "avx2-lut", "avx2-rowmajor", "fallback"]


@pytest.fixture(params=KERNEL_PATHS)
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every way the packed matmuls can run: the native build's lookup-table kernel on prepacked weights ("lut") and
    its row-major mask kernel ("rowmajor"), the same two in a build for ``-march=haswell`` (AVX2, no AVX-512), and the
    torch fallback. A path this CPU cannot run is skipped (it is not a failure of the code)."""
    from cress_bitnet import kernels

    monkeypatch.delenv(kernels.FORCE_FALLBACK_ENV, raising=False)
    monkeypatch.delenv(kernels.ARCH_ENV, raising=False)
    if request.param == "fallback":
        monkeypatch.setenv(kernels.FORCE_FALLBACK_ENV, "1")
        return request.param
    if request.param.startswith("avx2"):
        if "avx2" not in Path("/proc/cpuinfo").read_text():
            pytest.skip("this CPU has no AVX2")
        monkeypatch.setenv(kernels.ARCH_ENV, "haswell")
        assert kernels.kernel_isa() == "avx2"
    if request.param.endswith("rowmajor"):
        monkeypatch.setattr(kernels, "prepacked", lambda ext, packed: None)
        monkeypatch.setattr(kernels.PrepackedLayout, "get", lambda self, ext, packed: None)
    elif not kernels.load_kernel().lut_supported():
        pytest.skip("this build has no lookup-table kernel (it needs AVX2 or AVX-512)")
    return request.param

