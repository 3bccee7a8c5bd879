"""HuBERT Base + DeltaLM-base at real size, end to end: load, train (FP and SVCD), export, decode (issue 15 item 3).

Everything else in the repo runs on tiny fixtures; this measures what only shows at real dimensions (95 M + ~360 M
parameters, a 250,001-entry vocabulary): the key maps, seconds per update, peak memory and optimizer state, the
packed sizes, decode speed, and the cost of DeltaLM's unquantized 250k-row output projection per decoding step.
The checkpoints are random (``data_prep.make_base_checkpoints``), so quality numbers mean nothing; decoding runs with
``--min-len`` = ``--max-len-b``, so every hypothesis has exactly that many tokens whatever the model (a random decoder
trained for a few updates learns to stop after two tokens) and every model decodes the same number of steps.

    python -m bench.real_scale --out OUT [--quick] [--device cpu|cuda] [--base-dir DIR] [--updates N]

Data: a toy MuST-C corpus (``data_prep.make_toy_mustc`` + ``prep_mustc_data``) whose targets are encoded with
DeltaLM's SentencePiece model and dictionary (``config_deltalm.yaml``, see ``write_deltalm_data_config``).
Outputs: OUT/real_scale.json, OUT/real_scale.md, OUT/logs/*.log. ``--quick`` (2 updates, 3 utterances, 20-token
hypotheses) is sized for a 2-core CPU in under 20 minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.timed_generate import generate_stats

REPO = Path(__file__).resolve().parent.parent  # run as `python -m bench.<name>` from the checkout

TGT = "de"
SAMPLE_RATE = 16000
GIB = 2**30
MIB = 2**20
_JSON_LINE = re.compile(r"\|\s*train_inner\s*\|\s*(\{.*\})\s*$")


# ---------------------------------------------------------------------------------------------------------------
def run(cmd: list[str], log: Path, *, timeout: int = 7200) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; wall seconds and the child's own peak RSS (``wait4``, not a sum)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}), log {log}:\n{text[-3000:]}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "log": str(log), "text": text}


def prepare_data(work: Path, base: Path, *, train: int, test: int, seed: int) -> Path:
    """Toy corpus → raw-audio manifests → ``config_deltalm.yaml`` with DeltaLM's spm/dict; returns the data dir."""
    from data_prep.make_base_checkpoints import write_deltalm_data_config

    mustc, data = work / "mustc", work / "data" / f"en-{TGT}"
    if not (data / "config_deltalm.yaml").is_file():
        py = sys.executable
        run([py, "-m", "data_prep.make_toy_mustc", "--out", str(mustc), "--tgt-langs", TGT, "--seed", str(seed),
             "--train", str(train), "--dev", "4", "--test", str(test)], work / "logs" / "corpus.log")
        run([py, "-m", "data_prep.prep_mustc_data", "--data-root", str(mustc), "--tgt-lang", TGT,
             "--out-dir", str(data), "--vocab-size", "200"], work / "logs" / "prep.log")
        write_deltalm_data_config(data, base)
    return data


def make_base(base: Path, mustc_txt: Path, log_dir: Path) -> dict[str, Any]:
    from data_prep.make_base_checkpoints import DELTALM_FILE, DICT_FILE, HUBERT_FILE, SPM_FILE

    if all((base / f).is_file() for f in (HUBERT_FILE, DELTALM_FILE, DICT_FILE, SPM_FILE)):
        return {"reused": str(base)}
    texts = ["--text", str(mustc_txt / "train.en"), "--text", str(mustc_txt / f"train.{TGT}")]
    r = run([sys.executable, "-m", "data_prep.make_base_checkpoints", "--out", str(base), *texts],
            log_dir / "base_checkpoints.log")
    return {"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]}


# ---------------------------------------------------------------------------------------------------------------
def load_report(data: Path, base: Path) -> dict[str, Any]:
    """Build ``hubert_deltalm_base`` from both files in-process; check every tensor against its source."""
    import torch
    from fairseq import options, tasks

    import cress_bitnet  # noqa: F401
    from cress_bitnet.models.hubert_loader import PRETRAINING_ONLY_PREFIXES
    from data_prep.make_base_checkpoints import DELTALM_FILE, HUBERT_FILE

    t0 = time.perf_counter()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config_deltalm.yaml", "--tgt-lang", TGT, "--st-training", "--arch", "hubert_deltalm_base",
        "--hubert-model-path", str(base / HUBERT_FILE),
        "--load-pretrained-mt-encoder-decoder-from", str(base / DELTALM_FILE),
        "--criterion", "speech_and_text_translation", "--max-tokens", "400000",
    ])
    task = tasks.setup_task(args)
    model = task.build_model(args)
    build_s = time.perf_counter() - t0
    mine = model.state_dict()
    # HuBERT: every tensor of the file but the pretraining heads, equal.
    hub_file = torch.load(base / HUBERT_FILE, map_location="cpu", weights_only=True, mmap=True)["model"]
    hub_keys = [k for k in hub_file if not k.startswith(PRETRAINING_ONLY_PREFIXES)]
    hub_prefix = "encoder.hubert_model."
    hub_missing = [k for k in hub_keys if hub_prefix + k not in mine]
    hub_unequal = [k for k in hub_keys if hub_prefix + k in mine and not torch.equal(mine[hub_prefix + k], hub_file[k])]
    hub_extra = sorted(k[len(hub_prefix):] for k in mine if k.startswith(hub_prefix)
                       and k[len(hub_prefix):] not in hub_file)
    # DeltaLM: the loader's own report, then every loaded tensor compared with its source (embeddings sliced).
    rep = model.mt_load_report
    weights = torch.load(base / DELTALM_FILE, map_location="cpu", weights_only=True, mmap=True)["weights"]
    mt_unequal = []
    for key, source in rep.loaded.items():
        src = weights[source]
        if src.shape != mine[key].shape:
            src = src[: mine[key].shape[0]]
        if not torch.equal(mine[key], src):
            mt_unequal.append(key)
    params = sum(p.numel() for p in model.parameters())
    emb = model.decoder.embed_tokens.weight  # shared by the text encoder, the decoder and the output projection
    named = [(n, p) for n, p in model.named_parameters() if p is not emb]
    groups = {
        "hubert": sum(p.numel() for n, p in named if n.startswith(hub_prefix)),
        "speech_adaptor_and_text_encoder": sum(p.numel() for n, p in named
                                               if n.startswith("encoder.") and not n.startswith(hub_prefix)),
        "decoder_layers": sum(p.numel() for n, p in named if n.startswith("decoder.")),
        "shared_embedding": emb.numel(),
    }
    out = {
        "build_s": build_s,
        "dictionary": len(task.target_dictionary),
        "parameters": params,
        "parameters_by_part": groups,
        "hubert": {"file_tensors": len(hub_file), "loaded": len(hub_keys) - len(hub_missing),
                   "skipped_pretraining_only": sorted(set(hub_file) - set(hub_keys)), "missing": hub_missing,
                   "unexpected": hub_extra, "unequal": hub_unequal},
        "deltalm": {"file_tensors": len(weights), "loaded": len(rep.loaded), "superseded": rep.superseded,
                    "missing": rep.missing, "unexpected": rep.unexpected, "unequal": mt_unequal,
                    "tied_output_projection": model.decoder.output_projection.weight
                    is model.decoder.embed_tokens.weight},
    }
    del model, mine, hub_file, weights, task
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------------------------
def train_common(a: argparse.Namespace, data: Path, save: Path) -> list[str]:
    dev = ["--cpu"] if a.device == "cpu" else ["--fp16"]
    return [
        str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config_deltalm.yaml", "--train-subset", "train", "--valid-subset", "dev", "--tgt-lang", TGT,
        "--st-training", "--criterion", "speech_and_text_translation", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "1e-4", "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", "10", "--batch-size", str(a.batch_size), "--max-tokens", "4000000",
        "--max-update", str(a.updates), "--disable-validation", "--no-epoch-checkpoints", "--save-dir", str(save),
        "--seed", "1", "--num-workers", "0", "--no-progress-bar", "--log-format", "json", "--log-interval", "1",
        "--ddp-backend", "legacy_ddp", *dev,
    ]


def optimizer_state_bytes(ckpt: Path) -> tuple[int, int]:
    """Bytes of the optimizer state in a trainer checkpoint, and of the fp32 trainable parameters it covers."""
    import torch

    import cress_bitnet  # noqa: F401  (allowlist)

    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    opt = state.get("last_optimizer_state") or {}
    total = 0
    covered = 0
    for s in opt.get("state", {}).values():
        for v in s.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
        if "exp_avg" in s:
            covered += s["exp_avg"].numel() * 4
    return total, covered


def strip_optimizer(src: Path, dst: Path) -> None:
    """The checkpoint without its optimizer state (fairseq-generate and quant_transformer need only the model)."""
    import torch

    import cress_bitnet  # noqa: F401

    state = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    state.pop("last_optimizer_state", None)
    torch.save(state, dst)
    del state
    gc.collect()


def train_run(a: argparse.Namespace, name: str, data: Path, extra: list[str]) -> dict[str, Any]:
    save = a.out / "runs" / name
    shutil.rmtree(save, ignore_errors=True)
    cmd = [sys.executable, "-m", "fairseq_cli.train", *train_common(a, data, save), *extra]
    r = run(cmd, a.out / "logs" / f"train_{name}.log")
    recs = [json.loads(m.group(1)) for m in map(_JSON_LINE.search, r["text"].splitlines()) if m]
    walls = [float(x["train_wall"]) for x in recs if "train_wall" in x]
    ckpt = save / "checkpoint_last.pt"
    opt_bytes, covered = optimizer_state_bytes(ckpt)
    stripped = a.out / "runs" / f"{name}.pt"
    strip_optimizer(ckpt, stripped)
    ckpt_bytes = ckpt.stat().st_size
    ckpt.unlink()
    swapped = re.search(r"(\d+) modules swapped for (\w+)", r["text"])
    return {
        "updates": len(recs),
        "s_per_update_first": walls[0] if walls else None,
        "s_per_update_median_after_first": statistics.median(walls[1:]) if len(walls) > 1 else None,
        "s_per_update_all": walls,
        "losses": [float(x["loss"]) for x in recs if "loss" in x],
        "process_wall_s": r["wall_s"],
        "peak_rss_bytes": r["peak_rss_bytes"],
        "optimizer_state_bytes": opt_bytes,
        "optimizer_covers_fp32_param_bytes": covered,
        "checkpoint_with_optimizer_bytes": ckpt_bytes,
        "checkpoint": str(stripped),
        "checkpoint_bytes": stripped.stat().st_size,
        "swapped_modules": int(swapped.group(1)) if swapped else 0,
    }


# ---------------------------------------------------------------------------------------------------------------
DECODE_MODELS = ("fp", "svcd", "packed")


def tensor_groups(ckpt: Path, quant_modules: list[str]) -> dict[str, int]:
    """Bytes of the model tensors by part, each storage counted once. The 250k-row embedding is one tensor shared by
    the text encoder's input, the decoder's input and the (tied) output projection; it counts as the decoder's."""
    import torch

    import cress_bitnet  # noqa: F401

    model = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["model"]
    seen: set[tuple[int, int]] = set()
    parts = {"decoder_quantized_linears": 0, "decoder_other": 0, "shared_embedding": 0, "encoder_text": 0,
             "hubert": 0, "whole_model": 0}
    shared = ("encoder.embed_tokens.", "decoder.embed_tokens.", "decoder.output_projection.")
    for key, t in model.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        nbytes = t.numel() * t.element_size()
        parts["whole_model"] += nbytes
        if any(key.startswith(m + ".") for m in quant_modules):
            parts["decoder_quantized_linears"] += nbytes
        elif key.startswith(shared):
            parts["shared_embedding"] += nbytes
        elif key.startswith("decoder."):
            parts["decoder_other"] += nbytes
        elif key.startswith("encoder.hubert_model."):
            parts["hubert"] += nbytes
        else:
            parts["encoder_text"] += nbytes
    parts["decoder_layers"] = parts["decoder_quantized_linears"] + parts["decoder_other"]
    parts["whole_decoder"] = parts["decoder_layers"] + parts["shared_embedding"]
    return parts


def export_sizes(a: argparse.Namespace, svcd_ckpt: Path, fp_ckpt: Path) -> dict[str, Any]:
    """Export twice (rest fp32, and ``--fp16-rest``) and tabulate the parts against the FP model in fp32/fp16."""
    out: dict[str, Any] = {"files": {"fp": fp_ckpt.stat().st_size, "svcd": svcd_ckpt.stat().st_size}}
    modules: list[str] = []
    for name, extra in (("packed", []), ("packed_fp16_rest", ["--fp16-rest"])):
        path = a.out / "runs" / f"svcd_{name}.pt"
        sizes_json = a.out / "runs" / f"svcd_{name}.sizes.json"
        r = run([sys.executable, "-m", "cress_bitnet.export", str(svcd_ckpt), str(path), "--json", str(sizes_json),
                 *extra], a.out / "logs" / f"export_{name}.log")
        report = json.loads(sizes_json.read_text())
        modules = [m["name"] for m in report.get("modules", [])]
        out[name] = tensor_groups(path, modules)
        out["files"][name] = path.stat().st_size
        out[f"{name}_export"] = {"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                                 "report": {k: v for k, v in report.items() if k != "modules"}}
    out["quantized_modules"] = len(modules)
    out["fp32"] = tensor_groups(fp_ckpt, modules)
    out["fp16"] = {k: v // 2 for k, v in out["fp32"].items()}
    return out


def subset_manifest(data: Path, n: int) -> tuple[str, float]:
    """The first ``n`` tst-COMMON utterances as split ``bench{n}``; returns the split and its audio seconds."""
    lines = (data / "tst-COMMON.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1 : n + 1]
    col = header.split("\t").index("n_frames")
    split = f"bench{n}"
    (data / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return split, sum(int(r.split("\t")[col]) for r in rows) / SAMPLE_RATE


def decode(a: argparse.Namespace, data: Path, name: str, ckpt: Path, split: str, audio_s: float,
           batch: int) -> dict[str, Any]:
    stats_path = a.out / "logs" / f"gen_{name}_b{batch}.json"
    gen = [str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
           "--config-yaml", "config_deltalm.yaml", "--gen-subset", split, "--path", str(ckpt),
           "--beam", str(a.beam), "--max-len-a", "0", "--max-len-b", str(a.max_len), "--min-len", str(a.max_len),
           "--batch-size", str(batch), "--max-tokens", "40000000", "--scoring", "sacrebleu",
           *(["--cpu"] if a.device == "cpu" else ["--fp16"])]
    r = run([sys.executable, "-m", "bench.timed_generate", str(stats_path), "--", *gen],
            a.out / "logs" / f"gen_{name}_b{batch}.log")
    g = generate_stats(r["text"], stats_path, r["log"])
    gen_s = g["generate_s"]
    return {
        "model": name, "batch": batch, **{k: g[k] for k in ("sentences", "tokens", "generate_s", "tokens_per_s")},
        "process_wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"], "rtf": gen_s / audio_s,
        "encoder_share": g["encoder_s"] / gen_s if gen_s else None,
        "decoder_share": g["decoder_s"] / gen_s if gen_s else None,
        "output_projection_share_of_decoder": g["output_layer_s"] / g["decoder_s"] if g["decoder_s"] else None,
        **{k: g[k] for k in ("decoder_ms_per_step", "output_projection_ms_per_step", "rows_per_step",
                             "decoder_steps")},
    }


def projection_microbench(dim: int, vocab: int, rows: int, shortlist: int, reps: int) -> dict[str, Any]:
    """One decoding step's output projection (``rows`` = beam × sentences) three ways, interleaved medians: fp32
    ``F.linear`` over the whole vocabulary, over a ``shortlist`` of rows, and the packed 1-bit sign matmul."""
    import torch
    import torch.nn.functional as F

    from cress_bitnet.kernels import signed_matmul
    from cress_bitnet.quantization import pack_signs

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(vocab, dim, generator=gen)
    x = torch.randn(rows, dim, generator=gen)
    packed = pack_signs(w)
    w_short = w[:shortlist].contiguous()
    fns = {"fp32_full": lambda: F.linear(x, w), "fp32_shortlist": lambda: F.linear(x, w_short),
           "packed_1bit_full": lambda: signed_matmul(x, packed, dim)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(reps):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {
        "dim": dim, "vocab": vocab, "rows": rows, "shortlist": shortlist, "reps": reps, "ms": ms,
        "weight_bytes": {"fp32": vocab * dim * 4, "fp16": vocab * dim * 2,
                         "packed_1bit": int(packed.numel() * packed.element_size()),
                         "fp32_shortlist": shortlist * dim * 4},
    }


# ---------------------------------------------------------------------------------------------------------------
def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MIB:,.1f}"


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    out = [f"# Real-scale run: HuBERT Base + DeltaLM-base ({s['device']}, {'quick' if s['quick'] else 'full'})", "",
           f"{s['updates']} training updates per run (batch {s['batch_size']}), {s['utterances']} tst-COMMON "
           f"utterances decoded (beam {s['beam']}, hypotheses forced to {s['max_len']} tokens: random weights), "
           f"torch threads {s['threads']}; total {res.get('total_s', 0):.0f} s.", ""]
    if "load" in res:
        ld = res["load"]
        h, d = ld["hubert"], ld["deltalm"]
        by_part = ", ".join(f"{k} {v:,}" for k, v in ld["parameters_by_part"].items())
        out += ["## Load (`--arch hubert_deltalm_base` from both files)", "",
                "| file | tensors in file | loaded | missing | unexpected | unequal to source | note |",
                "|---|---:|---:|---:|---:|---:|---|",
                f"| hubert_base_ls960.pt | {h['file_tensors']} | {h['loaded']} | {len(h['missing'])} | "
                f"{len(h['unexpected'])} | {len(h['unequal'])} | skipped pretraining-only: "
                f"{', '.join(h['skipped_pretraining_only'])} |",
                f"| deltalm-base.pt | {d['file_tensors']} | {d['loaded']} (+{len(d['superseded'])} superseded) | "
                f"{len(d['missing'])} | {len(d['unexpected'])} | {len(d['unequal'])} | missing: "
                f"{', '.join(d['missing']) or '-'}; output projection tied: {d['tied_output_projection']} |", "",
                f"Model: {ld['parameters']:,} parameters ({by_part}); "
                f"dictionary {ld['dictionary']:,}; built in {ld['build_s']:.0f} s.", ""]
    if "train" in res:
        out += ["## Training", "", "| run | updates | s/update (first) | s/update (median after first) | "
                "peak RSS GiB | optimizer state GiB | checkpoint (with optimizer) GiB |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for name, t in res["train"].items():
            out.append(f"| {name} | {t['updates']} | {_f(t['s_per_update_first'])} | "
                       f"{_f(t['s_per_update_median_after_first'])} | {_gb(t['peak_rss_bytes'])} | "
                       f"{_gb(t['optimizer_state_bytes'])} | {_gb(t['checkpoint_with_optimizer_bytes'])} |")
        out.append("")
    if "sizes" in res:
        z = res["sizes"]
        out += [f"## Sizes (MiB of tensor data; packed = `cress_bitnet.export` of SVCD on "
                f"{res.get('quant_targets', 'decoder')})", "",
                "| part | fp32 | fp16 | packed (rest fp32) | packed (rest fp16) |", "|---|---:|---:|---:|---:|"]
        for part in ("decoder_quantized_linears", "decoder_other", "decoder_layers", "shared_embedding",
                     "whole_decoder", "encoder_text", "hubert", "whole_model"):
            out.append(f"| {part} | {_mb(z['fp32'][part])} | {_mb(z['fp16'][part])} | {_mb(z['packed'][part])} | "
                       f"{_mb(z['packed_fp16_rest'][part])} |")
        output_quantized = "output" in res.get("quant_targets", "").split(",")
        out += ["", "shared_embedding: the 250,001 × 768 table used by the text encoder, the decoder input and the "
                + ("FP model's tied output projection; the packed model's 1-bit output projection is a separate "
                   "copy, counted with the quantized linears." if output_quantized else
                   "tied output projection (not quantized)."),
                "Files (MiB): " + ", ".join(f"{k} {_mb(v)}" for k, v in z["files"].items()) + ".", ""]
    if "decode" in res:
        out += ["## Decoding (fairseq-generate)", "",
                "| model | batch | sentences | tokens | generate s | process wall s | tokens/s | RTF | decoder share | "
                "output proj. share of decoder | decoder ms/step | output proj. ms/step |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for g in res["decode"]:
            out.append(f"| {g['model']} | {g['batch']} | {g['sentences']} | {g['tokens']} | {g['generate_s']:.1f} | "
                       f"{g['process_wall_s']:.1f} | {_f(g['tokens_per_s'])} | {_f(g['rtf'])} | "
                       f"{_f(g['decoder_share'])} | {_f(g['output_projection_share_of_decoder'])} | "
                       f"{g['decoder_ms_per_step']:.1f} | {g['output_projection_ms_per_step']:.1f} |")
        out.append("")
    if "projection" in res:
        p = res["projection"]
        wb = p["weight_bytes"]
        out += ["## Output projection, one decoding step (250,001 × 768, rows = beam)", "",
                "| variant | ms/step | weight MiB |", "|---|---:|---:|",
                f"| fp32 full vocabulary | {p['ms']['fp32_full']:.2f} | {_mb(wb['fp32'])} |",
                f"| fp32 shortlist of {p['shortlist']:,} | {p['ms']['fp32_shortlist']:.2f} | "
                f"{_mb(wb['fp32_shortlist'])} |",
                f"| packed 1-bit full vocabulary | {p['ms']['packed_1bit_full']:.2f} | {_mb(wb['packed_1bit'])} |", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="CI-sized: 2 updates, 3 utterances, 20-token hypotheses")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--base-dir", type=Path, help="reuse real-size files from here (default OUT/base)")
    p.add_argument("--updates", type=int, help="training updates per run (quick 2, full 10)")
    p.add_argument("--utterances", type=int, help="tst-COMMON utterances decoded (quick 3, full 8)")
    p.add_argument("--max-len", type=int, help="hypothesis length in tokens (quick 20, full 50)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2, help="training batch in utterances")
    p.add_argument("--decode-models", default=",".join(DECODE_MODELS),
                   help="checkpoints decoded (comma list of fp,svcd,packed); the others' decodes are kept from the "
                        "previous run in OUT")
    p.add_argument("--quant-targets", default="decoder",
                   help="--quant-targets of the SVCD run (e.g. decoder,output: the 250k output projection too)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1),
                   help="OMP_NUM_THREADS for the subprocesses (default: $OMP_NUM_THREADS or 1, as the demo: on a "
                   "shared CPU two OpenMP threads wait on each other; 0: torch's default)")
    p.add_argument("--skip", default="", help="comma separated stages to skip: load,train,export,decode,projection")
    a = p.parse_args(argv)
    a.updates = a.updates or (2 if a.quick else 10)
    a.utterances = a.utterances or (3 if a.quick else 8)
    a.max_len = a.max_len or (20 if a.quick else 50)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    stages = {"load", "train", "export", "decode", "projection"}
    if skip - stages:
        p.error(f"--skip: unknown stage(s) {sorted(skip - stages)}; choose from {sorted(stages)}")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device")
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    a.out = a.out.resolve()
    base = (a.base_dir or a.out / "base").resolve()
    res: dict[str, Any] = {"settings": {"quick": a.quick, "device": a.device, "updates": a.updates,
                                        "utterances": a.utterances, "max_len": a.max_len, "beam": a.beam,
                                        "batch_size": a.batch_size, "threads": a.threads or "default",
                                        "base_dir": str(base)}}
    previous = a.out / "real_scale.json"
    old_decodes = json.loads(previous.read_text()).get("decode", []) if previous.is_file() else []
    if skip and previous.is_file():  # a partial rerun keeps the earlier results of the stages it skips
        old = json.loads(previous.read_text())
        keys = {"load": ["load"], "train": ["train", "quant_targets"], "export": ["sizes"],
                "decode": ["decode", "decode_audio_s"], "projection": ["projection"]}
        for stage_name in skip:
            for key in keys.get(stage_name, []):
                if key in old:
                    res[key] = old[key]
    t_start = time.perf_counter()

    def save() -> None:
        res["total_s"] = time.perf_counter() - t_start
        (a.out / "real_scale.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        (a.out / "real_scale.md").write_text(markdown(res))

    def stage(name: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {name}", flush=True)

    stage("data + real-size checkpoints")
    work = a.out / "work"
    # The spm's real pieces come from the corpus text, so the corpus comes first and the config after the files.
    mustc_txt = work / "mustc" / f"en-{TGT}" / "data" / "train" / "txt"
    if not mustc_txt.is_dir():
        run([sys.executable, "-m", "data_prep.make_toy_mustc", "--out", str(work / "mustc"), "--tgt-langs", TGT,
             "--seed", "1", "--train", "16", "--dev", "4", "--test", str(max(a.utterances, 4))],
            a.out / "logs" / "corpus.log")
    res["base_files"] = make_base(base, mustc_txt, a.out / "logs")
    data = prepare_data(work, base, train=16, test=max(a.utterances, 4), seed=1)
    save()
    if "load" not in skip:
        stage("load report")
        res["load"] = load_report(data, base)
        save()
    from data_prep.make_base_checkpoints import DELTALM_FILE, HUBERT_FILE

    fp_ckpt = a.out / "runs" / "fp.pt"
    svcd_ckpt = a.out / "runs" / "svcd.pt"
    if "train" not in skip:
        res["train"] = {}
        stage(f"FP training, {a.updates} updates")
        res["train"]["fp"] = train_run(a, "fp", data, [
            "--arch", "hubert_deltalm_base", "--hubert-model-path", str(base / HUBERT_FILE),
            "--load-pretrained-mt-encoder-decoder-from", str(base / DELTALM_FILE)])
        save()
        stage(f"SVCD (quant_transformer, --quant-targets {a.quant_targets}) training, {a.updates} updates")
        res["train"]["svcd_" + a.quant_targets.replace(",", "_")] = train_run(a, "svcd", data, [
            "--arch", "quant_transformer", "--pretrained-st-checkpoint", str(fp_ckpt), "--quant-method", "svcd",
            "--quant-targets", a.quant_targets])
        res["quant_targets"] = a.quant_targets
        save()
    packed = a.out / "runs" / "svcd_packed.pt"
    if "export" not in skip:
        stage("export")
        res["sizes"] = export_sizes(a, svcd_ckpt, fp_ckpt)
        save()
    if "decode" not in skip:
        # Build (or load) the packed C++ kernel here, so its one-time compile is not timed inside a decode.
        from cress_bitnet.kernels import kernel_available

        res["packed_kernel"] = kernel_available()
        split, audio_s = subset_manifest(data, a.utterances)
        res["decode_audio_s"] = audio_s
        models = a.decode_models.split(",")
        # decodes of the models not listed are kept from the previous run in OUT (a partial rerun)
        kept = old_decodes if set(models) != set(DECODE_MODELS) else []
        res["decode"] = [d for d in kept if d.get("model") not in models]
        for name, ckpt in (("fp", fp_ckpt), ("svcd", svcd_ckpt), ("packed", packed)):
            if name not in models:
                continue
            for batch in (1, a.utterances):
                stage(f"decode {name}, batch {batch}")
                res["decode"].append(decode(a, data, name, ckpt, split, audio_s, batch))
                save()
    if "projection" not in skip:
        stage("output projection micro-benchmark")
        res["projection"] = projection_microbench(768, 250001, a.beam, 8192, 5 if a.quick else 20)
    save()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
