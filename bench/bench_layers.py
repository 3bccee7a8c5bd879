"""Forward+backward time of every quantized linear relative to nn.Linear (issue #3 bench).

Usage: python -m bench.bench_layers [--tokens 4096] [--reps 5] [--json PATH]
Runs fp32 on CPU; on CUDA (when available) also fp16 and bf16. TSVD is timed with its cached
decomposition (the weight does not change between iterations); its re-decomposition cost after an
optimizer step is reported separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from cress_bitnet.quantization import METHODS

SHAPES = [(768, 768), (768, 3072)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fwd_bwd_ms(module: nn.Module, x: torch.Tensor) -> float:
    module.zero_grad(set_to_none=True)
    xi = x.detach().requires_grad_(True)
    _sync(x.device)
    t0 = time.perf_counter()
    module(xi).float().sum().backward()
    _sync(x.device)
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(modules: dict[str, nn.Module], x: torch.Tensor, warmup: int, reps: int) -> dict[str, float]:
    """Median ms of one forward+backward per module; modules alternate within every repetition so that
    load from other processes on a shared machine hits all of them alike."""
    for mod in modules.values():
        for _ in range(warmup):
            _fwd_bwd_ms(mod, x)
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(reps):
        for name, mod in modules.items():
            times[name].append(_fwd_bwd_ms(mod, x))
    return {name: statistics.median(t) for name, t in times.items()}


def time_redecompose(module: nn.Module) -> float:
    """Milliseconds of one TSVD re-decomposition (what every optimizer step costs in QAT)."""
    with torch.no_grad():
        module.weight.mul_(1.0 + 1e-6)
    t0 = time.perf_counter()
    module.decompose()
    return (time.perf_counter() - t0) * 1e3


def run(tokens: int, warmup: int, reps: int) -> list[dict]:
    configs = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        configs += [(torch.device("cuda"), torch.float16), (torch.device("cuda"), torch.bfloat16)]
    else:
        print("CUDA not available: fp16/bf16 GPU rows skipped")
    rows = []
    for device, dtype in configs:
        for fin, fout in SHAPES:
            torch.manual_seed(0)
            base = nn.Linear(fin, fout, device=device, dtype=dtype)
            x = torch.randn(tokens, fin, device=device, dtype=dtype)
            modules = {"nn.Linear": base} | {name: m.layer.from_linear(base) for name, m in METHODS.items()}
            ms = time_interleaved(modules, x, warmup, reps)
            for name, mod in modules.items():
                row = dict(device=device.type, dtype=str(dtype).split(".")[-1], shape=f"{fin}->{fout}",
                           method=name, ms=ms[name], ratio=ms[name] / ms["nn.Linear"])
                if name == "tsvd":
                    row["redecompose_ms"] = time_redecompose(mod)
                    row["rank"] = mod.rank
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.tokens, args.warmup, args.reps)
    print(f"{'device':6} {'dtype':8} {'shape':10} {'method':10} {'ms':>9} {'ratio':>6}  note")
    for r in rows:
        note = f"re-decompose {r['redecompose_ms']:.0f} ms, rank {r['rank']}" if "rank" in r else ""
        head = f"{r['device']:6} {r['dtype']:8} {r['shape']:10} {r['method']:10}"
        print(f"{head} {r['ms']:9.1f} {r['ratio']:6.2f}  {note}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
