"""fairseq-generate with timers on the encoder, the decoder and its output projection (shared by the benches).

Usage: python -m bench.timed_generate STATS.json -- <fairseq-generate arguments>

Runs fairseq-generate in this process with class-level wrappers around ``HubertTransformerEncoder.forward``,
``TransformerDecoderBase.forward`` and ``TransformerDecoderBase.output_layer``, so an FP, an SVCD and a packed model
are timed by the same code; writes the accumulated seconds, call counts and decoder rows (beam × sentences summed
over steps) to STATS.json. ``generate_stats`` turns that file plus fairseq's "Translated ..." line into one record.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s")
"""fairseq-generate's summary line: sentences, tokens, generation seconds (printed to 0.1 s)."""


def timed_generate(stats_path: str, gen_args: list[str]) -> None:
    import torch
    from fairseq.models.transformer import TransformerDecoderBase

    from cress_bitnet.models.hubert_transformer import HubertTransformerEncoder

    stats: dict[str, float] = {"encoder_s": 0.0, "encoder_calls": 0, "decoder_s": 0.0, "decoder_calls": 0,
                               "decoder_rows": 0, "output_layer_s": 0.0, "output_layer_calls": 0}

    def wrap(cls: type, name: str, key: str, rows: bool = False) -> None:
        original = getattr(cls, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = original(self, *args, **kwargs)
            stats[key + "_s"] += time.perf_counter() - t0
            stats[key + "_calls"] += 1
            if rows and args and torch.is_tensor(args[0]):
                stats["decoder_rows"] += int(args[0].shape[0])
            return out

        setattr(cls, name, timed)

    wrap(HubertTransformerEncoder, "forward", "encoder")
    wrap(TransformerDecoderBase, "forward", "decoder", rows=True)
    wrap(TransformerDecoderBase, "output_layer", "output_layer")
    from fairseq_cli.generate import cli_main

    sys.argv = ["fairseq-generate", *gen_args]
    t0 = time.perf_counter()
    cli_main()
    stats["process_generate_s"] = time.perf_counter() - t0
    Path(stats_path).write_text(json.dumps(stats) + "\n")


def generate_stats(log_text: str, stats_path: Path, where: str) -> dict[str, Any]:
    """Sentences, tokens, fairseq's generation seconds and tokens/s from the log, and the timers' totals: encoder and
    decoder seconds, decoder steps, ms per step of the decoder and of its output projection, rows per step."""
    m = TRANSLATED.search(log_text)
    if not m:
        raise RuntimeError(f"no 'Translated ...' line in {where}")
    st = json.loads(stats_path.read_text())
    gen_s, tokens, calls = float(m.group(3)), int(m.group(2).replace(",", "")), max(st["decoder_calls"], 1)
    return {
        "sentences": int(m.group(1).replace(",", "")), "tokens": tokens, "generate_s": gen_s,
        "tokens_per_s": tokens / gen_s if gen_s else float("inf"),
        "encoder_s": st["encoder_s"], "decoder_s": st["decoder_s"], "output_layer_s": st["output_layer_s"],
        "decoder_steps": st["decoder_calls"], "rows_per_step": st["decoder_rows"] / calls,
        "decoder_ms_per_step": 1e3 * st["decoder_s"] / calls,
        "output_projection_ms_per_step": 1e3 * st["output_layer_s"] / calls,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python -m bench.timed_generate STATS.json -- <fairseq-generate arguments>")
    timed_generate(argv[0], argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
