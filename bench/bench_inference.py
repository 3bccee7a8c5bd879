"""Inference speed of the packed 1-bit kernels vs dense F.linear on CPU at beam-search sizes (issue #16 bench).

Usage: python -m bench.bench_inference [--json PATH] [--reps 30] [--threads 1,2] [--shapes ...] [--rows ...]
       python -m bench.bench_inference --e2e DATA FP_CKPT PACKED_CKPT [--gen-args "..."]

Kernel table: y = x Wᵀ for W of shape out×in and M rows of x (beam × sentences in a decoder step), timed as the
median of ``--reps`` calls after a warmup, with all variants interleaved within every repetition so that load from
other processes on a shared machine hits them alike: the ratios are measured in one run. Variants: fp32
``F.linear`` (MKL/oneDNN), bf16 and fp16 ``F.linear`` where the CPU has them natively (avx512_bf16 / amx_bf16,
avx512_fp16 / amx_fp16; elsewhere torch emulates them and the number would mean nothing), the packed ±1 kernel
(``signed_matmul``) and the whole fused packed SVCD layer (LayerNorm, sign matmul, bias, per-token 8-bit
quantizer, ⊙ h). "fastest FP" is the fastest of the FP variants measured for that row.
Clocks: ``--clock cpu`` times each call by the process's CPU time, ``wall`` by perf_counter, ``auto`` (default)
uses cpu at one thread and wall above; the JSON holds both. On a machine shared with more runnable jobs than cores,
the wall time of a call longer than a scheduler slice includes the time it spent descheduled, roughly in proportion
to its length, which inflates the slow variant and biases every ratio; CPU time does not. With one thread CPU time
is the kernel's cost. With two it is the CPU spent by both threads, including OpenMP workers spin-waiting, so it
says nothing about the wall-clock gain, which only wall time on an idle machine shows: the table reports the load
average so the reader can tell.

``--e2e`` times fairseq-generate on DATA with an FP, an exported packed and (optionally) the unpacked quant_transformer
checkpoint it was exported from (beam 5, batch 1 and batched): wall time, fairseq's generation time, tokens/s, each the
median of ``--e2e-repeats`` runs taken in alternating order.
``--user-dir``, ``--task``, ``--config-yaml`` and ``--gen-subset`` come from the checkpoint and the data folder;
anything in ``--gen-args`` is appended last and so overrides them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.timed_generate import generate_stats
from cress_bitnet.kernels import kernel_isa, signed_matmul
from cress_bitnet.quantization import PackedSVCDLinear, SVCDLinear, buffer_nbytes, pack_signs

REPO = Path(__file__).resolve().parents[1]

SHAPES = [(768, 768), (768, 3072), (3072, 768), (1024, 4096)]  # out x in
ROWS = [1, 5, 8, 16, 40, 64]
THREADS = [1, 2]
# One DeltaLM-base-like decoder layer (out x in): self-attn q/k/v/out, cross-attn q/k/v/out, fc1, fc2.
DECODER_LAYER = [(768, 768)] * 8 + [(3072, 768), (768, 3072)]
DECODER_LAYERS = 6
# Issue 16 targets, single thread, on the FFN shapes: (max M, minimum speedup, baseline).
TARGETS = [(1, 3.0, "fp32"), (8, 2.0, "fp32"), (64, 1.5, "fp32"), (16, 1.0, "fastest")]
TARGET_SHAPES = ("768x3072", "3072x768")


def cpu_info() -> dict[str, object]:
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "model": name,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "native_fp16": bool({"avx512_fp16", "amx_fp16"} & flags),
        "kernel_isa": kernel_isa(),
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
    }


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, dict[str, float]]:
    """Median microseconds per call of each function on both clocks ({"wall": ..., "cpu": ...}), all functions
    alternating within every repetition."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            times[name]["wall"].append(t1 - t0)
            times[name]["cpu"].append(c1 - c0)
    return {k: {c: statistics.median(v) * 1e6 for c, v in clocks.items()} for k, clocks in times.items()}


@torch.no_grad()
def svcd_layer(out_f: int, in_f: int, gen: torch.Generator) -> tuple[torch.nn.Linear, PackedSVCDLinear]:
    """A dense layer and its packed SVCD counterpart with random (non-trivial) LayerNorm, g, h and bias."""
    dense = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(out_f, in_f, generator=gen))
        dense.bias.copy_(torch.randn(out_f, generator=gen))
    layer = SVCDLinear.from_linear(dense)
    with torch.no_grad():
        for p in (layer.norm.weight, layer.norm.bias, layer.g, layer.h):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return dense, PackedSVCDLinear.from_quantized(layer).eval()


def bench_kernels(shapes: list[tuple[int, int]], rows: list[int], threads: list[int], warmup: int, reps: int,
                  info: dict[str, object], clock: str) -> list[dict[str, object]]:
    results = []
    gen = torch.Generator().manual_seed(0)
    for out_f, in_f in shapes:
        dense, packed_layer = svcd_layer(out_f, in_f, gen)
        w, b = dense.weight.detach().clone(), dense.bias.detach().clone()
        packed = pack_signs(w)
        low = {dt: (w.to(dt), b.to(dt)) for dt, ok in ((torch.bfloat16, info["native_bf16"]),
                                                       (torch.float16, info["native_fp16"])) if ok}
        for m in rows:
            x = torch.randn(m, in_f, generator=gen)
            for nt in threads:
                torch.set_num_threads(nt)
                fns: dict[str, Callable[[], object]] = {"fp32": partial(F.linear, x, w, b)}
                for dt, (wl, bl) in low.items():
                    fns[str(dt).removeprefix("torch.")] = partial(F.linear, x.to(dt), wl, bl)
                fns["packed"] = partial(signed_matmul, x, packed, in_f)
                fns["svcd_layer"] = partial(packed_layer, x)
                with torch.inference_mode():  # only the calls: weights made here would be inference tensors,
                    both = time_interleaved(fns, warmup, reps)  # which the LUT kernel's cache cannot track
                clk = ("cpu" if nt == 1 else "wall") if clock == "auto" else clock
                t = {k: v[clk] for k, v in both.items()}
                fp = {k: v for k, v in t.items() if k not in ("packed", "svcd_layer")}
                fastest = min(fp, key=fp.get)
                row: dict[str, object] = {"shape": f"{out_f}x{in_f}", "M": m, "threads": nt, "clock": clk,
                                          **{f"{k}_us": v for k, v in t.items()}, "fastest_fp": fastest,
                                          **{f"{k}_{c}_us": v for k, clocks in both.items() for c, v in clocks.items()}}
                for k in fp:
                    row[f"packed_vs_{k}"] = t[k] / t["packed"]
                row["packed_vs_fastest"] = t[fastest] / t["packed"]
                row["svcd_layer_vs_fp32"] = t["fp32"] / t["svcd_layer"]
                results.append(row)
                print(f"  {row['shape']:>9} M={m:<3} threads={nt} ({clk}): fp32 {t['fp32']:.1f} us, packed "
                      f"{t['packed']:.1f} us ({row['packed_vs_fp32']:.2f}x fp32, {row['packed_vs_fastest']:.2f}x "
                      f"{fastest})", flush=True)
    torch.set_num_threads(threads[0])
    return results


def markdown_table(rows: list[dict[str, object]]) -> str:
    fps = [k.removesuffix("_us") for k in rows[0]
           if k.endswith("_us") and not k.endswith(("_wall_us", "_cpu_us")) and k not in ("packed_us", "svcd_layer_us")]
    head = (["out×in", "M", "thr", "clock"] + [f"{k} µs" for k in fps] + ["packed µs", "SVCD layer µs"]
            + [f"packed ×{k}" for k in fps] + ["packed ×fastest FP", "SVCD layer ×fp32"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shape"], str(r["M"]), str(r["threads"]), str(r["clock"])] + [f"{r[f'{k}_us']:.1f}" for k in fps]
        cells += [f"{r['packed_us']:.1f}", f"{r['svcd_layer_us']:.1f}"]
        cells += [f"{r[f'packed_vs_{k}']:.2f}" for k in fps]
        cells += [f"{r['packed_vs_fastest']:.2f} ({r['fastest_fp']})", f"{r['svcd_layer_vs_fp32']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Issue 16's single-thread targets on the FFN shapes: the worst ratio over the M range of each target."""
    out = []
    for max_m, need, base in TARGETS:
        sel = [r for r in rows if r["threads"] == 1 and r["shape"] in TARGET_SHAPES and r["M"] <= max_m]
        if not sel:
            continue
        worst = min(sel, key=lambda r: r[f"packed_vs_{base}"])
        out.append({"target": f"packed >= {need}x {base} at M <= {max_m}", "worst": worst[f"packed_vs_{base}"],
                    "at": f"{worst['shape']} M={worst['M']}", "met": worst[f"packed_vs_{base}"] >= need})
    return out


def decoder_sizes() -> dict[str, object]:
    """Bytes of a 6-layer 768-d decoder's linear layers: fp16 nn.Linear vs packed SVCD (g folded)."""
    fp16 = packed = 0
    for out_f, in_f in DECODER_LAYER:
        fp16 += 2 * (out_f * in_f + out_f)
        packed += buffer_nbytes(PackedSVCDLinear.like(SVCDLinear(in_f, out_f)))
    fp16 *= DECODER_LAYERS
    packed *= DECODER_LAYERS
    return {"layers": DECODER_LAYERS, "fp16_bytes": fp16, "packed_svcd_bytes": packed, "compression": fp16 / packed}


# --- end to end -----------------------------------------------------------------------------------------------

E2E_RUNS = {"batch 1": ["--batch-size", "1"], "batched": ["--batch-size", "64"]}


def _cfg_get(cfg: object, key: str) -> object:
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def gen_subset(data: Path) -> str:
    """The test split of a prepared data folder: tst-COMMON (MuST-C), else the first tst*/test* manifest."""
    stems = sorted(p.stem for p in data.glob("*.tsv"))
    for stem in ["tst-COMMON"] + [s for s in stems if s.startswith(("tst", "test"))]:
        if stem in stems:
            return stem
    raise FileNotFoundError(f"{data}: no test manifest (tst-COMMON.tsv, tst*.tsv or test*.tsv); pass --gen-subset "
                            f"in --gen-args")


def derived_generate_args(data: Path, ckpt: Path) -> list[str]:
    """fairseq-generate arguments the checkpoint and the data folder already determine (task, data config, split)."""
    from cress_bitnet.checkpoints import load_checkpoint

    task = _cfg_get(load_checkpoint(ckpt).get("cfg") or {}, "task") or {}
    name = _cfg_get(task, "_name")
    if not name:
        raise ValueError(f"{ckpt}: no task recorded in the checkpoint's cfg; pass --task in --gen-args")
    args = ["--user-dir", str(REPO / "cress_bitnet"), "--task", str(name), "--gen-subset", gen_subset(data)]
    config = Path(str(_cfg_get(task, "config_yaml") or "config.yaml")).name
    if (data / config).is_file():
        args += ["--config-yaml", config]
    return args


def run_generate(data: Path, ckpt: Path, extra: list[str], stats_path: Path) -> dict[str, float]:
    """One fairseq-generate run on CPU under ``bench.timed_generate``: the process's wall time, fairseq's generation
    time and the encoder / decoder / output-projection timers (real_scale's numbers, from the same code)."""
    cmd = [sys.executable, "-m", "bench.timed_generate", str(stats_path), "--", str(data), "--path", str(ckpt),
           "--cpu", "--beam", "5", *derived_generate_args(data, ckpt), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed ({proc.returncode}) for {ckpt}:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, **generate_stats(proc.stdout + proc.stderr, stats_path, f"the log of {ckpt}")}


def bench_e2e(data: str, fp_ckpt: str, packed_ckpt: str, gen_args: str,
              unpacked_ckpt: str | None = None, repeats: int = 3) -> dict[str, object]:
    """Per batch setting: each checkpoint's runs and its speedup over FP (on fairseq's generation time if every run
    reported one, else on process wall time).

    Each checkpoint runs ``repeats`` times, the order reversed on every other round so that a drift in machine load
    hits all alike; a run's numbers are the medians (every run's times are kept in ``*_all``). Decoding is
    deterministic, so the sentence and token counts are the same in every round (checked).
    """
    extra = shlex.split(gen_args)
    models = {"fp": fp_ckpt, "packed": packed_ckpt, **({"unpacked": unpacked_ckpt} if unpacked_ckpt else {})}
    out: dict[str, object] = {}
    for name, batch in E2E_RUNS.items():
        rounds: dict[str, list[dict[str, float]]] = {which: [] for which in models}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(repeats):
                for which in (list(models) if r % 2 == 0 else list(models)[::-1]):
                    rounds[which].append(run_generate(Path(data), Path(models[which]), batch + extra,
                                                      Path(tmp) / f"{which}{r}.json"))
        runs = {which: _median_run(rs, f"{name}, {which}") for which, rs in rounds.items()}
        key = "generate_s" if all("generate_s" in r for r in runs.values()) else "wall_s"
        out[name] = {**runs, "compared": key, "repeats": repeats,
                     "speedup": runs["fp"][key] / runs["packed"][key],
                     **({"unpacked_speedup": runs["fp"][key] / runs["unpacked"][key]} if unpacked_ckpt else {})}
    return out


def _median_run(runs: list[dict[str, float]], what: str) -> dict[str, object]:
    counts = {(r.get("sentences"), r.get("tokens")) for r in runs}
    if len(counts) != 1:
        raise RuntimeError(f"e2e {what}: the repeated runs decoded different outputs (sentences, tokens): {counts}")
    med: dict[str, object] = {k: v for k, v in runs[0].items() if k in ("sentences", "tokens", "decoder_steps")}
    for key in ("wall_s", "generate_s", "encoder_s", "decoder_s", "decoder_ms_per_step",
                "output_projection_ms_per_step"):
        if all(key in r for r in runs):
            med[f"{key}_all"] = [r[key] for r in runs]
            med[key] = statistics.median(med[f"{key}_all"])
    if "generate_s" in med and "tokens" in med:
        med["tokens_per_s"] = med["tokens"] / med["generate_s"] if med["generate_s"] > 0 else float("inf")
    return med


def e2e_table(e2e: dict[str, dict]) -> str:
    """Markdown: one row per (batch setting, checkpoint)."""
    nan = float("nan")
    lines = ["| batch | checkpoint | sentences | tokens | generate s | wall s | tokens/s | speed vs FP | encoder s | "
             "decoder s | decoder ms/step | of which output proj. | decoder speed vs FP |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in e2e.items():
        for which in ("fp", "unpacked", "packed"):
            if which not in r:
                continue
            run, key = r[which], r["compared"]
            dec = r["fp"].get("decoder_ms_per_step", nan) / run.get("decoder_ms_per_step", nan)
            lines.append(f"| {name} | {which} | {run.get('sentences', '?')} | {run.get('tokens', '?')} | "
                         f"{run.get('generate_s', nan):.2f} | {run['wall_s']:.2f} | "
                         f"{run.get('tokens_per_s', nan):.1f} | {r['fp'][key] / run[key]:.2f}x | "
                         f"{run.get('encoder_s', nan):.2f} | {run.get('decoder_s', nan):.2f} | "
                         f"{run.get('decoder_ms_per_step', nan):.3f} | "
                         f"{run.get('output_projection_ms_per_step', nan):.3f} | {dec:.2f}x |")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _shape_list(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(d) for d in s.lower().split("x")) for s in text.split(",") if s.strip()]  # type: ignore[misc]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shapes wants OUTxIN[,OUTxIN...], got {text!r}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=_int_list, default=THREADS, help="comma list of thread counts (1,2)")
    parser.add_argument("--shapes", type=_shape_list, default=SHAPES, help="comma list of OUTxIN")
    parser.add_argument("--rows", type=_int_list, default=ROWS, help="comma list of M (activation rows)")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                        help="clock of the table and the ratios (both are in the JSON); see the module docstring")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel table (e.g. with --e2e)")
    parser.add_argument("--e2e", nargs="+", metavar="DATA FP_CKPT PACKED_CKPT [UNPACKED_CKPT]",
                        help="also time fairseq-generate with an FP, a packed and optionally the unpacked "
                             "quant_transformer checkpoint")
    parser.add_argument("--gen-args", default="", help="extra fairseq-generate arguments for --e2e (one string)")
    parser.add_argument("--e2e-repeats", type=int, default=3, metavar="N",
                        help="runs of each checkpoint per batch setting, alternating order; medians reported")
    opts = parser.parse_args(argv)
    if opts.e2e and len(opts.e2e) not in (3, 4):
        parser.error(f"--e2e takes DATA FP_CKPT PACKED_CKPT [UNPACKED_CKPT], got {len(opts.e2e)} paths")
    info = cpu_info()
    print(f"CPU: {info['model']} ({info['cores']} cores) | kernel {info['kernel_isa']} | native bf16 "
          f"{info['native_bf16']}, fp16 {info['native_fp16']} | load average {info['loadavg']}")
    results: dict[str, object] = {"cpu": info}
    if not opts.no_kernels:
        rows = bench_kernels(opts.shapes, opts.rows, opts.threads, opts.warmup, opts.reps, info, opts.clock)
        results["kernels"] = rows
        results["targets"] = check_targets(rows)
        results["loadavg_after"] = os.getloadavg()
        print()
        print("Times: median microseconds per call on the row's clock; ratios = FP time / packed time.")
        print(markdown_table(rows))
        print()
        for t in results["targets"]:
            print(f"{'MET' if t['met'] else 'NOT MET'}: {t['target']} (worst {t['worst']:.2f}x at {t['at']})")
        sizes = decoder_sizes()
        results["decoder_sizes"] = sizes
        print(f"decoder linears ({sizes['layers']} layers, 768/3072): fp16 {sizes['fp16_bytes']:,} B, packed SVCD "
              f"{sizes['packed_svcd_bytes']:,} B -> {sizes['compression']:.2f}x smaller")
    if opts.e2e:
        data, fp, packed, *unpacked = opts.e2e
        if opts.e2e_repeats < 1:
            parser.error(f"--e2e-repeats must be >= 1, got {opts.e2e_repeats}")
        results["e2e"] = bench_e2e(data, fp, packed, opts.gen_args, unpacked[0] if unpacked else None,
                                   opts.e2e_repeats)
        print()
        print(f"fairseq-generate, beam 5, CPU ({torch.get_num_threads()} threads; speed vs FP on "
              f"{next(iter(results['e2e'].values()))['compared']}, median of {opts.e2e_repeats} runs each):")
        print(e2e_table(results["e2e"]))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
