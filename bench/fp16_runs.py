"""fp16 training of every quantizer, measured: does SVCD's constraint init train in fp16 where BitNet does not?

The SVCD paper (and its README) claims the constraint initialisation of g/h keeps fp16 training stable where the
unconstrained initialisation and BitNet overflow. This runner fine-tunes one trained FP ``hubert_transformer``
checkpoint under ``fairseq-train --fp16`` (fairseq's FP16Optimizer: fp16 model, fp32 master copy, dynamic loss
scaling; on a CPU through the plugin's patch in ``cress_bitnet.fairseq_patches``) once per method × init, with the
same data, batch, learning rate and number of updates, and records per update the loss, the loss scale, gradient
overflows and NaN/inf losses from fairseq's JSON log.

    python -m bench.fp16_runs --data DATA --fp-checkpoint FP.pt --out OUT [--updates 200] [--runs fp,svcd:constraint]

Writes OUT/fp16_runs.json (table + per-update records) and OUT/fp16_runs.md (the table), and OUT/logs/<run>.log.
``python -m bench.fp16_runs --merge A/fp16_runs.json B/fp16_runs.json --out DIR`` joins runs made by several
processes (on a shared CPU, two runners in parallel get twice the CPU share).
The ``fp`` run continues the FP model itself (``hubert_transformer`` restored from the checkpoint's own arch fields).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent  # run as `python -m bench.<name>` from the checkout

# (name, method, init, extra fairseq args). "fp" is the FP model trained on under fp16 (no quantizer).
RUNS: list[tuple[str, str, str, list[str]]] = [
    ("fp", "none", "-", []),
    ("svcd:constraint", "svcd", "constraint", ["--quant-method", "svcd", "--quant-init", "constraint"]),
    ("svcd:unconstrained", "svcd", "unconstrained", ["--quant-method", "svcd", "--quant-init", "unconstrained"]),
    ("svcd:svd", "svcd", "svd", ["--quant-method", "svcd", "--quant-init", "svd"]),
    ("svcd:signvalue", "svcd", "signvalue", ["--quant-method", "svcd", "--quant-init", "signvalue"]),
    ("bitnet", "bitnet", "-", ["--quant-method", "bitnet"]),
    ("bitnet158", "bitnet158", "-", ["--quant-method", "bitnet158"]),
    ("bcq", "bcq", "-", ["--quant-method", "bcq"]),
    ("minmax", "minmax", "-", ["--quant-method", "minmax"]),
]
RUN_NAMES = [r[0] for r in RUNS]

_JSON_LINE = re.compile(r"\|\s*(train_inner|train)\s*\|\s*(\{.*\})\s*$")
_OVERFLOW = re.compile(r"gradient overflow detected, ignoring gradient, setting loss scale to: ([\d.e+-]+)")
_MIN_SCALE = re.compile(r"Minimum loss scale reached")


@dataclass
class RunResult:
    name: str
    method: str
    init: str
    asked_updates: int = 0
    returncode: int = 0
    seconds: float = 0.0
    updates: int = 0
    overflows: int = 0
    final_loss: float | None = None
    final_loss_scale: float | None = None
    min_loss_scale: float | None = None
    nan: bool = False
    min_scale_reached: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    overflow_scales: list[float] = field(default_factory=list)
    error: str = ""


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_log(text: str, result: RunResult) -> RunResult:
    """Fill ``result`` from a fairseq-train log written with ``--log-format json --log-interval 1``."""
    for line in text.splitlines():
        m = _JSON_LINE.search(line)
        if m and m.group(1) == "train_inner":
            rec = json.loads(m.group(2))
            loss = _num(rec.get("loss"))
            item = {"update": int(float(rec.get("num_updates", 0))), "loss": loss,
                    "loss_scale": _num(rec.get("loss_scale")), "gnorm": _num(rec.get("gnorm"))}
            result.records.append(item)
            if loss is None or not math.isfinite(loss):
                result.nan = True
            continue
        m = _OVERFLOW.search(line)
        if m:
            result.overflows += 1
            result.overflow_scales.append(float(m.group(1)))
        if _MIN_SCALE.search(line):
            result.min_scale_reached = True
        if re.search(r"\bloss\b[^|]*\bnan\b|FloatingPointError", line, re.IGNORECASE):
            result.nan = result.nan or "nan" in line.lower()
    if result.records:
        last = result.records[-1]
        result.updates = max(r["update"] for r in result.records)
        result.final_loss = last["loss"]
        result.final_loss_scale = last["loss_scale"]
        scales = [r["loss_scale"] for r in result.records if r["loss_scale"] is not None]
        scales += result.overflow_scales
        result.min_loss_scale = min(scales) if scales else None
    return result


def fp_model_args(checkpoint: str | os.PathLike) -> list[str]:
    """``--arch`` and the flags that rebuild the checkpoint's ``hubert_transformer`` exactly (its stored fields).

    The arch comes first: its defaults (e.g. post-LN for ``hubert_transformer_postln``) cannot be undone by flags."""
    import torch

    import cress_bitnet  # noqa: F401  (allowlist)
    from cress_bitnet.models.hubert_transformer import ARCH_FIELDS, HubertTransformerModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    margs = state["cfg"]["model"]
    margs = vars(margs) if isinstance(margs, argparse.Namespace) else dict(margs)
    parser = argparse.ArgumentParser()
    HubertTransformerModel.add_args(parser)
    actions = {a.dest: a for a in parser._actions}
    out: list[str] = ["--arch", str(margs.get("arch") or "hubert_transformer")]
    for name in ARCH_FIELDS:
        value = margs.get(name)
        action = actions.get(name)
        if action is None or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                out.append(flag)
        else:
            out += [flag, str(value)]
    return out


def train_args(a: argparse.Namespace, run: tuple[str, str, str, list[str]], save: Path) -> list[str]:
    name, method, _init, extra = run
    common = [
        str(a.data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", a.config_yaml, "--train-subset", "train", "--valid-subset", "dev", "--tgt-lang", a.tgt_lang,
        "--st-training", "--criterion", "speech_and_text_translation", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(a.lr), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(max(1, a.updates // 4)), "--weight-decay", "0.0001", "--clip-norm", str(a.clip_norm),
        "--max-tokens", "2000000", "--batch-size", str(a.batch_size), "--update-freq", "1",
        "--max-update", str(a.updates), "--disable-validation", "--no-save", "--save-dir", str(save),
        "--seed", str(a.seed), "--num-workers", "0", "--no-progress-bar", "--log-format", "json",
        "--log-interval", "1", a.fp16_flag, "--fp16-init-scale", str(a.init_scale), "--ddp-backend", "legacy_ddp",
    ]
    if a.cpu:
        common.append("--cpu")
    if name == "fp":
        return [*common, *fp_model_args(a.fp_checkpoint),
                "--restore-file", str(a.fp_checkpoint), "--reset-optimizer", "--reset-lr-scheduler",
                "--reset-meters", "--reset-dataloader"]
    del method
    return [*common, "--arch", "quant_transformer", "--pretrained-st-checkpoint", str(a.fp_checkpoint),
            "--quant-targets", a.quant_targets, *extra]


def run_one(a: argparse.Namespace, run: tuple[str, str, str, list[str]]) -> RunResult:
    name, method, init, _ = run
    logs = Path(a.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    save = Path(a.out) / "save" / name.replace(":", "_")
    cmd = [sys.executable, "-m", "fairseq_cli.train", *train_args(a, run, save)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=a.timeout)
    log = proc.stdout + proc.stderr
    (logs / f"{name.replace(':', '_')}.log").write_text("+ " + " ".join(cmd) + "\n" + log)
    res = parse_log(log, RunResult(name, method, init, asked_updates=a.updates, returncode=proc.returncode,
                                   seconds=time.time() - t0))
    if proc.returncode != 0:
        tail = [ln for ln in log.splitlines() if ln.strip()][-3:]
        res.error = " / ".join(tail)[-400:]
    return res


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(results: list[RunResult], a: argparse.Namespace) -> str:
    lines = [
        f"fp16 fine-tuning ({a.fp16_flag}, {'CPU' if a.cpu else 'GPU'}), {a.updates} updates asked, lr {a.lr}, "
        f"batch {a.batch_size}, init loss scale {a.init_scale}, quant targets `{a.quant_targets}`, "
        f"from `{Path(a.fp_checkpoint).name}`",
        "",
        "| method | init | updates reached / asked | overflows | min loss scale | final loss scale | final loss "
        "| NaN | exit |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        exit_note = "ok" if r.returncode == 0 else f"rc {r.returncode}"
        if r.min_scale_reached:
            exit_note += " (min loss scale)"
        lines.append(f"| {r.method} | {r.init} | {r.updates} / {r.asked_updates or '?'} | {r.overflows} | "
                     f"{_fmt(r.min_loss_scale, 'g')} | "
                     f"{_fmt(r.final_loss_scale, 'g')} | {_fmt(r.final_loss)} | {'yes' if r.nan else 'no'} | "
                     f"{exit_note} |")
    return "\n".join(lines) + "\n"


def merge(paths: list[str], out: Path) -> int:
    """Combine the runs of several ``fp16_runs.json`` files (e.g. runs split over processes) into one table."""
    results: list[RunResult] = []
    settings: dict[str, Any] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        settings = settings or data["settings"]
        for r in data["runs"]:
            run = RunResult(**r)
            run.asked_updates = run.asked_updates or int(data["settings"]["updates"])
            results.append(run)
    order = {name: i for i, name in enumerate(RUN_NAMES)}
    results.sort(key=lambda r: order.get(r.name, len(order)))
    a = argparse.Namespace(**settings)
    a.updates = "/".join(sorted({str(r.asked_updates) for r in results}))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fp16_runs.json").write_text(json.dumps({"settings": settings, "merged_from": paths,
                                                    "runs": [asdict(r) for r in results]}, indent=1) + "\n")
    (out / "fp16_runs.md").write_text(markdown(results, a))
    print(markdown(results, a))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--merge"]:
        if len(argv) < 4 or "--out" not in argv:
            raise SystemExit("usage: --merge A.json B.json ... --out DIR")
        i = argv.index("--out")
        return merge(argv[1:i], Path(argv[i + 1]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared ST data dir (manifests + config.yaml)")
    p.add_argument("--config-yaml", default="config.yaml")
    p.add_argument("--tgt-lang", default="de")
    p.add_argument("--fp-checkpoint", required=True, help="trained FP hubert_transformer checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--runs", default=",".join(RUN_NAMES), help=f"comma separated subset of {RUN_NAMES}")
    p.add_argument("--quant-targets", default="decoder")
    p.add_argument("--lr", type=float, default=5e-4, help="the demo's SVCD learning rate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--clip-norm", type=float, default=0.0)
    p.add_argument("--init-scale", type=int, default=128, help="fairseq's --fp16-init-scale (its default 128)")
    p.add_argument("--fp16-flag", choices=["--fp16", "--memory-efficient-fp16"], default="--fp16")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1),
                   help="OMP_NUM_THREADS per run (default $OMP_NUM_THREADS or 1, as the demo; 0: torch's default)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    a = p.parse_args(argv)
    a.cpu = a.device == "cpu"
    wanted = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in RUN_NAMES]
    if unknown:
        p.error(f"--runs: unknown {unknown}; choose from {RUN_NAMES}")
    for path, flag in ((a.data, "--data"), (a.fp_checkpoint, "--fp-checkpoint")):
        if not Path(path).exists():
            p.error(f"{flag} {path}: not found")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    for run in RUNS:
        if run[0] not in wanted:
            continue
        res = run_one(a, run)
        results.append(res)
        print(f"{res.name}: {res.updates} updates, {res.overflows} overflows, final loss {_fmt(res.final_loss)}, "
              f"scale {_fmt(res.final_loss_scale, 'g')}, nan {res.nan}, rc {res.returncode}, {res.seconds:.0f} s"
              + (f" [{res.error}]" if res.error else ""), flush=True)
        settings = {k: v for k, v in vars(a).items()}
        (out / "fp16_runs.json").write_text(json.dumps(
            {"settings": settings, "runs": [asdict(r) for r in results]}, indent=1) + "\n")
        (out / "fp16_runs.md").write_text(markdown(results, a))
    print(markdown(results, a))
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
