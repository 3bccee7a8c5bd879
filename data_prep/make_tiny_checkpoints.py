"""Write tiny checkpoints in the exact on-disk formats of the real HuBERT and DeltaLM releases.

Why: tests and smoke runs must exercise the same loading code as ``hubert_base_ls960.pt`` (legacy ``args`` layout,
label dictionary in ``task_state``) and ``deltalm-base.pt`` (``{"weights": ...}`` with DeltaLM key names), but the
real files are 360 MB+ and cannot be downloaded here. Everything is seeded, so two runs give identical tensors.

    python -m data_prep.make_tiny_checkpoints --out tiny_ckpts [--seed 1] [--dim 32 --layers 2 ...]

Files: ``hubert_tiny_ls960.pt`` (legacy layout), ``hubert_tiny_cfg.pt`` (current trainer layout, same weights),
``deltalm_tiny.pt`` and its ``deltalm_tiny.json`` sidecar (dims, for tests only). With ``--deltalm-spm-text FILE``
also DeltaLM's vocabulary files, ``spm.model`` and ``dict.txt``, trained on FILE (the tiny DeltaLM then has
``len(dict.txt)`` rows), so the recipes' DeltaLM mode can run end to end on the toy corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

HUBERT_DEFAULTS: dict[str, Any] = {
    "dim": 32,
    "layers": 2,
    "ffn": 64,
    "heads": 2,
    "conv_dim": 48,  # != dim, so post_extract_proj exists as in Base (512 -> 768)
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "final_dim": 16,
    "num_units": 500,  # Base: layer6.km500 -> 504-symbol dictionary
    "frontend": "random",
    "frame_pool": 2,  # filterbank: 10 ms frames per output frame (2 -> 50 Hz as Base, 4 -> 25 Hz)
}
FRONTENDS = ("random", "filterbank")


def _conv_layers(conv_dim: int, frontend: str, frame_pool: int) -> str:
    if frontend == "filterbank":
        # 25 ms windows every 10 ms (4 phases per band), then frame_pool frames each (2 -> 50 Hz, like Base's 320).
        return f"[({4 * conv_dim},400,160)] + [({conv_dim},{frame_pool},{frame_pool})]"
    # Same strides/kernels as Base (downsampling 320, receptive field 400), only narrower.
    return f"[({conv_dim},10,5)] + [({conv_dim},3,2)] * 4 + [({conv_dim},2,2)] * 2"


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def filterbank_frontend(
    bands: int, *, frame_pool: int = 2, sample_rate: int = 16000, kernel: int = 400, fmin: float = 80.0,
    fmax: float = 7600.0,
) -> dict[str, torch.Tensor]:
    """Weights that make HuBERT's two-layer conv extractor compute a mel-spaced band-magnitude spectrogram.

    Why: a tiny HuBERT cannot be pretrained on a laptop, and a random conv front end must learn acoustics from the
    translation loss alone, which a CPU demo cannot afford. This gives the stand-in what pretraining gives the real
    one, a front end whose output already separates sounds; every weight stays trainable and in the release format.
    The extractor runs in ``layer_norm`` mode (as HuBERT Large): layer 1 holds +cos, -cos, +sin, -sin Gabor filters per
    band (bandwidth = mel spacing, unit norm), its LayerNorm over channels removes the frame's loudness and its GELU
    rectifies; layer 2 averages the four rectified phases (|Re| + |Im| ~ magnitude) over ``frame_pool`` frames of 10 ms,
    and its LayerNorm bias of 1 keeps most bands on GELU's linear side.
    """
    edges = _mel_to_hz(torch.linspace(float(_mel(torch.tensor(fmin))), float(_mel(torch.tensor(fmax))), bands + 2,
                                      dtype=torch.float64))
    centers = edges[1:-1]
    bandwidth = (edges[2:] - edges[:-2]) / 2
    t = (torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2) / sample_rate
    sigma_t = 1.0 / (2 * math.pi * (bandwidth / 2))
    envelope = torch.exp(-0.5 * (t[None, :] / sigma_t[:, None]) ** 2) * torch.hann_window(kernel, periodic=False,
                                                                                            dtype=torch.float64)
    phase = 2 * math.pi * centers[:, None] * t[None, :]
    cos, sin = envelope * torch.cos(phase), envelope * torch.sin(phase)
    cos, sin = cos / cos.norm(dim=1, keepdim=True), sin / sin.norm(dim=1, keepdim=True)
    first = torch.stack([cos, -cos, sin, -sin], dim=1).reshape(4 * bands, 1, kernel)
    second = torch.zeros(bands, 4 * bands, frame_pool, dtype=torch.float64)
    for band in range(bands):
        second[band, 4 * band:4 * band + 4, :] = 2.0 / frame_pool
    return {
        "feature_extractor.conv_layers.0.0.weight": first.float(),
        "feature_extractor.conv_layers.0.2.1.weight": torch.ones(4 * bands),
        "feature_extractor.conv_layers.0.2.1.bias": torch.zeros(4 * bands),
        "feature_extractor.conv_layers.1.0.weight": second.float(),
        "feature_extractor.conv_layers.1.2.1.weight": torch.ones(bands),
        "feature_extractor.conv_layers.1.2.1.bias": torch.ones(bands),
    }


def _label_dictionary(num_units: int) -> Any:
    from fairseq.data.dictionary import Dictionary

    d = Dictionary()  # <s>, <pad>, </s>, <unk> then the k-means unit ids, like dict.layer6.km500.txt
    for i in range(num_units):
        d.add_symbol(str(i), n=1)
    return d


def _hubert_args(
    *, dim: int, layers: int, ffn: int, heads: int, conv_dim: int, conv_pos: int, conv_pos_groups: int, final_dim: int,
    seed: int, frontend: str, frame_pool: int,
) -> argparse.Namespace:
    """A flat old-CLI Namespace as in ``hubert_base_ls960.pt``: common/task fields from fairseq's own parser plus every
    HubertConfig field, then the edits of ``examples/hubert/update_ckpt.py`` (task name, labels as a string)."""
    from fairseq import options
    from fairseq.models.hubert.hubert import HubertConfig

    parser = options.get_training_parser(default_task="hubert_pretraining")
    args = options.parse_args_and_arch(
        parser,
        input_args=[
            "/nonexistent/data/librispeech/960h/iter/250K_50hz_km100_mp0_65_v2",
            "--task", "hubert_pretraining", "--arch", "hubert", "--criterion", "hubert",
            "--labels", "['layer6.km500']", "--label-rate", "50", "--sample-rate", "16000",
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-06", "--weight-decay", "0.01",
            "--lr", "0.0005", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "32000",
            "--total-num-update", "400000", "--max-update", "400000", "--fp16", "--seed", str(seed),
            "--distributed-world-size", "32", "--max-tokens", "1400000", "--max-sample-size", "250000",
            "--min-sample-size", "32000", "--random-crop", "--num-workers", "6",
            "--save-dir", "/nonexistent/checkpoints/hubert_base_ls960",
        ],
    )
    model = {
        f: v.default_factory() if v.default_factory is not dataclasses.MISSING else v.default
        for f, v in HubertConfig.__dataclass_fields__.items()
        if not f.startswith("_")
    }
    model.update(
        label_rate=100.0 / frame_pool, extractor_mode="layer_norm" if frontend == "filterbank" else "default",
        encoder_layers=layers, encoder_embed_dim=dim,
        encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads, activation_fn="gelu", layer_type="transformer",
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.1,
        dropout_features=0.1, final_dim=final_dim, untie_final_proj=False, layer_norm_first=False,
        conv_feature_layers=_conv_layers(conv_dim, frontend, frame_pool), conv_bias=False, logit_temp=0.1,
        target_glu=False,
        feature_grad_mult=0.1, mask_length=10, mask_prob=0.8, mask_selection="static", conv_pos=conv_pos,
        conv_pos_groups=conv_pos_groups, latent_temp=(2.0, 0.5, 0.999995), skip_masked=False, skip_nomask=False,
    )
    for key, val in model.items():
        setattr(args, key, val)
    args.labels = "['layer6.km500']"  # update_ckpt.py stores the list as a string
    args.normalize = False
    args.fp16 = True
    return args


def _hubert_state(seed: int, **dims: int) -> tuple[argparse.Namespace, OrderedDict, Any]:
    """Build a HubertModel with the label dictionary (so label_embs_concat exists) and perturb every tensor.

    The perturbation makes LayerNorm weights/biases differ from their 1/0 init, so a test comparing loaded tensors
    with the file catches a tensor that was not loaded at all.
    """
    from fairseq.dataclass.utils import merge_with_parent
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    hub = {**HUBERT_DEFAULTS, **{k: v for k, v in dims.items() if v is not None}}
    num_units = hub.pop("num_units")
    if hub["frontend"] not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {hub['frontend']!r}")
    if hub["frame_pool"] < 1 or (hub["frontend"] == "random" and hub["frame_pool"] != 2):
        raise ValueError(f"frame_pool {hub['frame_pool']}: must be >= 1, and 2 (Base's 50 Hz) for the random front end")
    args = _hubert_args(seed=seed, **hub)
    dictionary = _label_dictionary(num_units)
    model_fields = {k: getattr(args, k) for k in HubertConfig.__dataclass_fields__ if not k.startswith("_")}
    model_fields["latent_temp"] = list(model_fields["latent_temp"])
    task_fields = {k: getattr(args, k) for k in HubertPretrainingConfig.__dataclass_fields__ if hasattr(args, k)}
    task_fields["labels"] = ["layer6.km500"]
    mcfg = merge_with_parent(HubertConfig(), OmegaConf.create(model_fields), remove_missing=True)
    tcfg = merge_with_parent(HubertPretrainingConfig(), OmegaConf.create(task_fields), remove_missing=True)
    torch.manual_seed(seed)
    model = HubertModel(mcfg, tcfg, [dictionary])
    gen = torch.Generator().manual_seed(seed + 1000)
    state = OrderedDict()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().clone().float()
        t += 0.02 * torch.randn(t.shape, generator=gen)
        state[key] = t.contiguous()
    if hub["frontend"] == "filterbank":
        for key, tensor in filterbank_frontend(hub["conv_dim"], frame_pool=hub["frame_pool"]).items():
            if state[key].shape != tensor.shape:
                raise AssertionError(f"{key}: filterbank {tuple(tensor.shape)} vs model {tuple(state[key].shape)}")
            state[key] = tensor.contiguous()
    return args, state, dictionary


def _hubert_summary(path: Path, state: OrderedDict, dictionary: Any, layout: str) -> dict[str, Any]:
    return {
        "file": str(path),
        "layout": layout,
        "tensors": len(state),
        "parameters": int(sum(t.numel() for t in state.values())),
        "dictionary_symbols": len(dictionary),
        "bytes": path.stat().st_size,
    }


def make_hubert_legacy(path: str | os.PathLike, *, seed: int = 1, **dims: int) -> dict[str, Any]:
    """Write a tiny HuBERT in the released ``hubert_base_ls960.pt`` layout (``args`` Namespace + ``task_state``).

    ``dims`` may set dim, layers, ffn, heads, conv_dim, conv_pos, conv_pos_groups, final_dim, num_units, frontend
    (``random``: Base's 7-layer conv stack; ``filterbank``: two conv layers initialised as a band-magnitude
    spectrogram of ``conv_dim`` mel bands, see :func:`filterbank_frontend`) and frame_pool (filterbank only).
    """
    path = Path(path)
    args, state, dictionary = _hubert_state(seed, **dims)
    ckpt = {
        "args": args,
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 400000,
            }
        ],
        "extra_state": {
            "train_iterator": {"epoch": 254, "iterations_in_epoch": 0, "shuffle": True},
            "previous_training_time": 0.0,
        },
        "task_state": {"dictionaries": [dictionary]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return _hubert_summary(path, state, dictionary, "legacy args")


def make_hubert_cfg_format(path: str | os.PathLike, *, seed: int = 1, **dims: int) -> dict[str, Any]:
    """Write the same tiny HuBERT as the current trainer saves it: ``args`` None, ``cfg`` a plain dict."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    path = Path(path)
    args, state, dictionary = _hubert_state(seed, **dims)
    with warnings.catch_warnings():  # hydra 1.3 deprecation chatter from fairseq's compose call
        warnings.simplefilter("ignore", UserWarning)
        cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True)
    # A trainer-saved cfg has the dataclass value, not the Namespace's fp16 carried into the model section.
    cfg["common"]["fp16"] = False
    cfg["model"]["fp16"] = False
    ckpt = {
        "args": None,
        "cfg": cfg,
        "model": state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 2,
            }
        ],
        "task_state": {"dictionaries": [dictionary]},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 1.0,
            "train_iterator": {"epoch": 1, "iterations_in_epoch": 2, "shuffle": False},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return _hubert_summary(path, state, dictionary, "trainer cfg")


def deltalm_keys(encoder_layers: int, decoder_layers: int) -> list[str]:
    """All tensor names of a DeltaLM pretrained file, in file order: 8 + 16 per encoder + 32 per decoder layer."""
    keys: list[str] = []
    ln = ("weight", "bias")

    def attn(prefix: str) -> list[str]:
        return [f"{prefix}.{p}_proj.{w}" for p in ("k", "v", "q", "out") for w in ln]

    def fc(prefix: str) -> list[str]:
        return [f"{prefix}.{f}.{w}" for f in ("fc1", "fc2") for w in ln]

    for side in ("src_embedding", "tgt_embedding"):
        keys += [f"{side}.embed_tokens.weight", f"{side}.embed_positions.weight"]
        keys += [f"{side}.emb_layer_norm.{w}" for w in ln]
    for i in range(encoder_layers):
        p = f"encoder.layers.{i}"
        keys += attn(f"{p}.self_attn") + [f"{p}.self_attn_layer_norm.{w}" for w in ln]
        keys += fc(f"{p}.ffn") + [f"{p}.final_layer_norm.{w}" for w in ln]
    for i in range(decoder_layers):
        p = f"decoder.layers.{i}"
        keys += attn(f"{p}.self_attn") + [f"{p}.self_attn_layer_norm.{w}" for w in ln]
        keys += fc(f"{p}.ffn_1") + [f"{p}.ffn_layer_norm.{w}" for w in ln]
        keys += attn(f"{p}.encoder_attn") + [f"{p}.encoder_attn_layer_norm.{w}" for w in ln]
        keys += fc(f"{p}.ffn_2") + [f"{p}.final_layer_norm.{w}" for w in ln]
    return keys


def _deltalm_shape(key: str, *, dim: int, ffn: int, rows: int, positions: int) -> tuple[int, ...]:
    if key.endswith("embed_tokens.weight"):
        return (rows, dim)
    if key.endswith("embed_positions.weight"):
        return (positions, dim)
    if ".fc1.weight" in key:
        return (ffn, dim)
    if ".fc1.bias" in key:
        return (ffn,)
    if ".fc2.weight" in key:
        return (dim, ffn)
    if key.endswith("_proj.weight"):
        return (dim, dim)
    return (dim,)  # biases and LayerNorm parameters


def make_deltalm(
    path: str | os.PathLike,
    *,
    seed: int = 1,
    dim: int = 32,
    ffn: int = 64,
    heads: int = 2,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    max_positions: int = 512,
    vocab_size: int = 120,
    extra_rows: int = 0,
) -> dict[str, Any]:
    """Write a tiny ``deltalm-base.pt`` look-alike and its JSON sidecar; returns the sidecar's content.

    Embedding rows are ``vocab_size + extra_rows`` (the real file has 103 more rows than its dictionary) so loaders
    must slice. Positions have ``max_positions + 2`` rows (padding_idx 1 + 1). As in the real file (unilm issue #637)
    the tgt positions and embedding LayerNorm equal the src ones; the token embeddings differ here on purpose, so a
    test can tell which side a loader read.
    """
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    path = Path(path)
    rows = vocab_size + extra_rows
    positions = max_positions + 2
    gen = torch.Generator().manual_seed(seed)
    weights: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in deltalm_keys(encoder_layers, decoder_layers):
        shape = _deltalm_shape(key, dim=dim, ffn=ffn, rows=rows, positions=positions)
        if key.startswith("tgt_embedding.") and "embed_tokens" not in key:
            weights[key] = weights["src" + key[3:]].clone()
            continue
        if "layer_norm" in key:
            base = 1.0 if key.endswith(".weight") else 0.0
            t = base + 0.05 * torch.randn(shape, generator=gen)
        elif key.endswith("embed_tokens.weight") or key.endswith("embed_positions.weight"):
            t = torch.randn(shape, generator=gen) * dim**-0.5
            t[1].zero_()  # padding_idx 1 stays zero, as in fairseq embeddings
        elif key.endswith(".weight"):
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        weights[key] = t.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": weights}, path)
    info = {
        "file": str(path),
        "format": "deltalm {'weights': OrderedDict}",
        "seed": seed,
        "embed_dim": dim,
        "ffn_embed_dim": ffn,
        "attention_heads": heads,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "max_positions": max_positions,
        "embed_positions_rows": positions,
        "vocab_size": vocab_size,
        "extra_rows": extra_rows,
        "embed_tokens_rows": rows,
        "num_tensors": len(weights),
        "normalize_before": False,
        "layernorm_embedding": True,
        "learned_pos": True,
        "activation_fn": "gelu",
        "tgt_positions_and_layernorm_equal_src": True,
        "tgt_embed_tokens_equal_src": False,
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def make_deltalm_vocab(out_dir: str | os.PathLike, text: str | os.PathLike, *, vocab_size: int = 160) -> int:
    """Write ``spm.model`` + ``dict.txt`` laid out as DeltaLM's (XLM-R's) release; returns the dictionary's length.

    As in the real files (checkpoints research notes, DeltaLM issue #881): the SentencePiece model has XLM-R's special
    ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, no pad), and ``dict.txt`` lists ``piece count`` lines by descending count
    without the specials, so its ids differ from the model's: only the piece strings connect the two. Pieces the
    training text never uses still get a line (count 0), as a real 250k dictionary covers far more than one corpus.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out / "spm"), vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    )  # fmt: skip
    (out / "spm.vocab").unlink()  # DeltaLM ships only the model
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    counts = dict.fromkeys((sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i)
                            and not sp.is_unknown(i)), 0)  # fmt: skip
    for line in Path(text).read_text(encoding="utf-8").splitlines():
        for piece in sp.encode(line, out_type=str):
            if piece in counts:
                counts[piece] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    (out / "dict.txt").write_text("".join(f"{piece} {n}\n" for piece, n in ranked), encoding="utf-8")
    return len(ranked) + 4  # fairseq's Dictionary adds <s> <pad> </s> <unk>


def verify_with_fairseq(path: str | os.PathLike) -> int:
    """Load ``path`` with fairseq's own ``load_model_ensemble_and_task`` (weights_only default + the plugin allowlist),
    with the data dir absent, and return the number of label classes; proves the file is in fairseq's real format."""
    from fairseq import checkpoint_utils

    from cress_bitnet.checkpoints import register_safe_globals

    register_safe_globals()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return int(sum(models[0].num_classes))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=1)
    h = p.add_argument_group("HuBERT")
    h.add_argument("--dim", type=int, default=HUBERT_DEFAULTS["dim"], help="encoder_embed_dim")
    h.add_argument("--layers", type=int, default=HUBERT_DEFAULTS["layers"])
    h.add_argument("--ffn", type=int, default=HUBERT_DEFAULTS["ffn"])
    h.add_argument("--heads", type=int, default=HUBERT_DEFAULTS["heads"])
    h.add_argument("--conv-dim", type=int, default=HUBERT_DEFAULTS["conv_dim"],
                   help="conv channels (filterbank: mel bands)")
    h.add_argument("--frontend", choices=FRONTENDS, default=HUBERT_DEFAULTS["frontend"],
                   help="conv feature extractor: random (Base's layout) or a mel filterbank initialisation")
    h.add_argument("--frame-pool", type=int, default=HUBERT_DEFAULTS["frame_pool"],
                   help="filterbank: 10 ms frames per HuBERT frame (2: 50 Hz as Base; 4: 25 Hz, half the compute)")
    h.add_argument("--conv-pos", type=int, default=HUBERT_DEFAULTS["conv_pos"])
    h.add_argument("--conv-pos-groups", type=int, default=HUBERT_DEFAULTS["conv_pos_groups"])
    h.add_argument("--final-dim", type=int, default=HUBERT_DEFAULTS["final_dim"])
    h.add_argument("--num-units", type=int, default=HUBERT_DEFAULTS["num_units"], help="k-means units in the dict")
    h.add_argument("--no-verify", action="store_true", help="skip loading the legacy file with fairseq")
    d = p.add_argument_group("DeltaLM")
    d.add_argument("--deltalm-dim", type=int, default=32)
    d.add_argument("--deltalm-ffn", type=int, default=64)
    d.add_argument("--deltalm-heads", type=int, default=2)
    d.add_argument("--deltalm-encoder-layers", type=int, default=2)
    d.add_argument("--deltalm-decoder-layers", type=int, default=2)
    d.add_argument("--deltalm-max-positions", type=int, default=512)
    d.add_argument("--deltalm-vocab-size", type=int, default=None,
                   help="dictionary size the rows cover (default: len(--deltalm-vocab-from) or 120)")
    d.add_argument("--deltalm-vocab-from", default=None, help="fairseq dict.txt whose length sets the vocab size")
    d.add_argument("--deltalm-extra-rows", type=int, default=13, help="embedding rows beyond the vocab (sliced off)")
    d.add_argument("--deltalm-spm-text", default=None,
                   help="also write DeltaLM's spm.model + dict.txt, trained on this text, and size the vocab by them")
    d.add_argument("--deltalm-spm-vocab", type=int, default=160, help="pieces of that SentencePiece model")
    a = p.parse_args(argv)

    out = Path(a.out)
    if a.deltalm_spm_text:
        if a.deltalm_vocab_from:
            p.error("--deltalm-spm-text writes the dictionary; it cannot be combined with --deltalm-vocab-from")
        make_deltalm_vocab(out, a.deltalm_spm_text, vocab_size=a.deltalm_spm_vocab)
        a.deltalm_vocab_from = str(out / "dict.txt")
        print(f"{out / 'spm.model'}, {out / 'dict.txt'}: DeltaLM-layout vocabulary trained on {a.deltalm_spm_text}")
    vocab = a.deltalm_vocab_size
    if a.deltalm_vocab_from:
        from fairseq.data.dictionary import Dictionary

        n = len(Dictionary.load(a.deltalm_vocab_from))
        if vocab is not None and vocab != n:
            p.error(f"--deltalm-vocab-size {vocab} disagrees with len({a.deltalm_vocab_from}) = {n}")
        vocab = n
    if vocab is None:
        vocab = 120

    dims = dict(dim=a.dim, layers=a.layers, ffn=a.ffn, heads=a.heads, conv_dim=a.conv_dim, conv_pos=a.conv_pos,
                conv_pos_groups=a.conv_pos_groups, final_dim=a.final_dim, num_units=a.num_units,
                frontend=a.frontend, frame_pool=a.frame_pool)
    s = make_hubert_legacy(out / "hubert_tiny_ls960.pt", seed=a.seed, **dims)
    check = ""
    if not a.no_verify:
        check = f", fairseq load_model_ensemble_and_task ok ({verify_with_fairseq(s['file'])} label classes)"
    print(f"{s['file']}: HuBERT {s['layout']}, {s['tensors']} tensors, {s['parameters']} params, "
          f"dict {s['dictionary_symbols']} symbols{check}")
    s = make_hubert_cfg_format(out / "hubert_tiny_cfg.pt", seed=a.seed, **dims)
    print(f"{s['file']}: HuBERT {s['layout']}, {s['tensors']} tensors, {s['parameters']} params, "
          f"dict {s['dictionary_symbols']} symbols")
    info = make_deltalm(out / "deltalm_tiny.pt", seed=a.seed, dim=a.deltalm_dim, ffn=a.deltalm_ffn,
                        heads=a.deltalm_heads, encoder_layers=a.deltalm_encoder_layers,
                        decoder_layers=a.deltalm_decoder_layers, max_positions=a.deltalm_max_positions,
                        vocab_size=vocab, extra_rows=a.deltalm_extra_rows)
    print(f"{info['file']}: DeltaLM {info['num_tensors']} tensors, dim {info['embed_dim']}, "
          f"{info['encoder_layers']}+{info['decoder_layers']} layers, embed rows {info['embed_tokens_rows']} "
          f"(vocab {vocab} + {a.deltalm_extra_rows}), positions {info['embed_positions_rows']}")


if __name__ == "__main__":
    main()
