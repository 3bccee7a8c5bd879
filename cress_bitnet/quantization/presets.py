"""``--quant-targets`` presets: named groups of fnmatch patterns over fairseq Transformer module names (data only).

They are expanded to patterns and then matched by :func:`cress_bitnet.quantization.surgery.select_modules`, the same
matcher as the swap, so a preset and the equivalent hand-written patterns select the same modules.
"""

from __future__ import annotations

ATTN = ("q", "k", "v", "out")
TARGET_PRESETS: dict[str, list[str]] = {
    "cross_attn": [f"decoder.layers.*.encoder_attn.{p}_proj" for p in ATTN],
    **{f"cross_attn.{p}": [f"decoder.layers.*.encoder_attn.{p}_proj"] for p in ATTN},
    "self_attn": [f"decoder.layers.*.self_attn.{p}_proj" for p in ATTN],
    "ffn": [f"decoder.layers.*.fc{i}" for i in range(1, 5)],
    "decoder": ["decoder.*"],
    # the (tied) vocabulary projection: a separate 1-bit copy, the embedding stays as it is; with a 250k vocabulary it
    # is most of a decoding step (README, "Real scale")
    "output": ["decoder.output_projection"],
    "encoder": ["encoder.transformer_layers.*"],
    "all": ["encoder.transformer_layers.*", "decoder.*"],
}


def expand_targets(spec: str) -> list[str]:
    """Comma-separated presets and/or fnmatch patterns (``decoder.layers.*.fc1``) -> patterns."""
    patterns: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in TARGET_PRESETS:
            patterns += TARGET_PRESETS[item]
        elif any(c in item for c in "*?[") or item.startswith(("encoder.", "decoder.")):
            patterns.append(item)
        else:
            raise ValueError(
                f"--quant-targets: unknown preset '{item}'; presets are {', '.join(TARGET_PRESETS)}, "
                "or give fnmatch patterns over module names (e.g. 'decoder.layers.*.fc1')"
            )
    if not patterns:
        raise ValueError("--quant-targets is empty")
    return patterns
