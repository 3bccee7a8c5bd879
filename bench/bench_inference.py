"""Inference speed of packed 1-bit matmuls vs dense F.linear on CPU, plus deployable sizes (issue #7 bench).

Usage: python bench/bench_inference.py [--json PATH] [--reps 200] [--threads N]
       python bench/bench_inference.py --e2e DATA FP_CKPT PACKED_CKPT [--gen-args "..."]

GEMM rows: y = x Wᵀ for W of shape out×in at batch 1, 8 and 64, timed as the median of ``--reps`` calls after a
warmup, with all variants interleaved within every repetition so that load from other processes on a shared
machine hits them alike. Ratios are therefore measured in one run. bf16 is timed only where the CPU has native
bf16 (avx512_bf16 / amx_bf16); elsewhere torch emulates it and the number would mean nothing.
On a machine shared with other jobs use ``--threads 1``: with more threads than free cores, one descheduled
OpenMP thread stalls a whole call for milliseconds and the medians measure the scheduler, not the kernels.
``--e2e`` times fairseq-generate on the same data with an FP checkpoint and an exported packed one.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cress_bitnet.quantization.packed import PackedSVCDLinear, buffer_nbytes, build_packed_like  # noqa: E402

from cress_bitnet.kernels import kernel_isa, signed_matmul  # noqa: E402
from cress_bitnet.quantization import SVCDLinear, pack_signs  # noqa: E402

SHAPES = [(512, 512), (768, 768), (768, 3072), (3072, 768)]  # out x in
BATCHES = [1, 8, 64]
# One DeltaLM-base-like decoder layer (out x in): self-attn q/k/v/out, cross-attn q/k/v/out, fc1, fc2.
DECODER_LAYER = [(768, 768)] * 8 + [(3072, 768), (768, 3072)]
DECODER_LAYERS = 6


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
        "threads": torch.get_num_threads(),
        "avx512": "avx512f" in flags,
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "kernel_isa": kernel_isa(),
    }


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, float]:
    """Median microseconds per call of each function, all functions alternating within every repetition."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


@torch.inference_mode()
def bench_gemm(warmup: int, reps: int, bf16: bool) -> list[dict[str, object]]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for out_f, in_f in SHAPES:
        w = torch.randn(out_f, in_f, generator=gen)
        packed = pack_signs(w)
        wb = w.bfloat16()
        for batch in BATCHES:
            x = torch.randn(batch, in_f, generator=gen)
            xb = x.bfloat16()
            fns: dict[str, Callable[[], object]] = {
                "fp32": partial(F.linear, x, w),
                "packed": partial(signed_matmul, x, packed, in_f),
            }
            if bf16:
                fns["bf16"] = partial(F.linear, xb, wb)
            t = time_interleaved(fns, warmup, reps)
            row = {"shape": f"{out_f}x{in_f}", "batch": batch, "fp32_us": t["fp32"], "packed_us": t["packed"],
                   "speedup": t["fp32"] / t["packed"]}
            if bf16:
                row["bf16_us"] = t["bf16"]
                row["speedup_vs_bf16"] = t["bf16"] / t["packed"]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


@torch.inference_mode()
def bench_svcd_layer(warmup: int, reps: int) -> list[dict[str, object]]:
    """Whole packed SVCD layer (LayerNorm, sign matmul, per-token 8-bit rescale, h) vs a plain fp32 nn.Linear."""
    rows = []
    for out_f, in_f in SHAPES:
        torch.manual_seed(0)
        dense = torch.nn.Linear(in_f, out_f)
        packed = PackedSVCDLinear.from_quantized(SVCDLinear.from_linear(dense))
        x = torch.randn(1, in_f)
        t = time_interleaved({"fp32": partial(dense, x), "packed": partial(packed, x)}, warmup, reps)
        rows.append({"shape": f"{out_f}x{in_f}", "batch": 1, "linear_fp32_us": t["fp32"],
                     "packed_svcd_layer_us": t["packed"], "speedup": t["fp32"] / t["packed"]})
    return rows


def decoder_sizes() -> dict[str, object]:
    """Bytes of a 6-layer 768-d decoder's linear layers: fp16 nn.Linear vs packed SVCD (g folded)."""
    fp16 = packed = 0
    for out_f, in_f in DECODER_LAYER:
        fp16 += 2 * (out_f * in_f + out_f)
        packed += buffer_nbytes(build_packed_like(SVCDLinear(in_f, out_f)))
    fp16 *= DECODER_LAYERS
    packed *= DECODER_LAYERS
    return {"layers": DECODER_LAYERS, "fp16_bytes": fp16, "packed_svcd_bytes": packed, "compression": fp16 / packed}


_TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s")


def run_generate(data: str, ckpt: str, extra: list[str]) -> dict[str, float]:
    """One fairseq-generate run on CPU; wall time of the process and fairseq's own generation time."""
    cmd = [sys.executable, "-m", "fairseq_cli.generate", data, "--path", ckpt, "--cpu",
           "--user-dir", str(Path(__file__).resolve().parents[1] / "cress_bitnet"), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed ({proc.returncode}) for {ckpt}:\n{proc.stderr[-3000:]}")
    match = _TRANSLATED.search(proc.stdout + proc.stderr)
    result = {"wall_s": wall}
    if match:
        result.update(sentences=int(match.group(1).replace(",", "")), generate_s=float(match.group(3)))
    return result


def bench_e2e(data: str, fp_ckpt: str, packed_ckpt: str, gen_args: str) -> dict[str, object]:
    extra = shlex.split(gen_args)
    fp = run_generate(data, fp_ckpt, extra)
    packed = run_generate(data, packed_ckpt, extra)
    key = "generate_s" if "generate_s" in fp and "generate_s" in packed else "wall_s"
    return {"fp": fp, "packed": packed, "speedup": fp[key] / packed[key], "compared": key}


def format_row(row: dict[str, object]) -> str:
    bf16 = f" {row['bf16_us']:>9.1f}" if "bf16_us" in row else f" {'-':>9}"
    return (f"{row['shape']:>10} {row['batch']:>5} {row['fp32_us']:>9.1f}{bf16} {row['packed_us']:>9.1f} "
            f"{row['speedup']:>7.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--e2e", nargs=3, metavar=("DATA", "FP_CKPT", "PACKED_CKPT"),
                        help="also time fairseq-generate with an FP and a packed checkpoint")
    parser.add_argument("--gen-args", default="", help="extra fairseq-generate arguments for --e2e (one string)")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    info = cpu_info()
    print(f"CPU: {info['model']} | threads {info['threads']} | kernel {info['kernel_isa']} | "
          f"native bf16: {info['native_bf16']}")
    print(f"{'out x in':>10} {'batch':>5} {'fp32 us':>9} {'bf16 us':>9} {'packed us':>9} {'vs fp32':>8}")
    results: dict[str, object] = {"cpu": info, "gemm": bench_gemm(opts.warmup, opts.reps, bool(info["native_bf16"]))}
    results["svcd_layer"] = bench_svcd_layer(opts.warmup, opts.reps)
    for row in results["svcd_layer"]:
        print(f"SVCD layer {row['shape']} batch 1: nn.Linear fp32 {row['linear_fp32_us']:.1f} us, packed "
              f"{row['packed_svcd_layer_us']:.1f} us ({row['speedup']:.2f}x)")
    sizes = decoder_sizes()
    results["decoder_sizes"] = sizes
    print(f"decoder linears ({sizes['layers']} layers, 768/3072): fp16 {sizes['fp16_bytes']:,} B, packed SVCD "
          f"{sizes['packed_svcd_bytes']:,} B -> {sizes['compression']:.2f}x smaller")
    if opts.e2e:
        results["e2e"] = bench_e2e(*opts.e2e, opts.gen_args)
        print(f"fairseq-generate: FP {results['e2e']['fp']}, packed {results['e2e']['packed']}, "
              f"speedup {results['e2e']['speedup']:.2f}x ({results['e2e']['compared']})")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
