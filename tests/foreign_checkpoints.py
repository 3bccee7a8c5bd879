"""Build checkpoints in CRESS's and onebit-st's exact on-disk formats from a native tiny checkpoint.

What those files hold (established by saving them with CRESS's own code, see the research notes): the same weight names
as ours plus ``encoder.hubert_model.label_embs_concat`` (HuBERT built with its label dictionaries: shape
(sum of label-dictionary sizes, final_dim), a direct parameter of HubertModel right after ``mask_emb``, so also one
more entry in the optimizer's parameter list) and fairseq 0.12.2's ``{encoder,decoder}.embed_positions._float_tensor``
buffers; a ``cfg`` whose ``model``/``task`` are argparse Namespaces with CRESS's fields only (no HuBERT configuration,
absolute ``hubert_model_path`` and MT paths of the training machine). onebit-st's SVCD model adds, to the four
cross-attention projections of every decoder layer, BitLinear's ``g`` (in), ``h`` (out) and its own LayerNorm
``norm.weight``/``norm.bias`` (in), under arch ``quant_transformer`` and nothing in its args naming them.
"""

from __future__ import annotations

import copy
from argparse import Namespace
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from cress_bitnet.checkpoints import load_checkpoint

# Where CRESS's scripts keep these files on the training machine; they do not exist here.
GONE_HUBERT = "/mnt/cress/checkpoints/hubert_base_ls960.pt"
GONE_MT = "/mnt/cress/checkpoints/en-de.postln.wmt_pretrain.mustc_mt_pretrain/avg_last_10_epoch.pt"

# Model-args fields this plugin adds and CRESS's hubert_transformer does not have.
OURS_ONLY = (
    "hubert_cfg", "hubert_dropout", "hubert_attention_dropout", "hubert_activation_dropout", "hubert_layerdrop",
    "hubert_feature_grad_mult", "hubert_dropout_input", "hubert_dropout_features", "decoder_layer_type",
    "encoder_learned_pos", "trained_on_standardized_audio", "ctc_weight", "min_audio_positions", "quant_record",
)
LABEL_EMBS = "encoder.hubert_model.label_embs_concat"
ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def _cress_args(native: Namespace, arch: str) -> Namespace:
    args = copy.copy(native)
    for name in OURS_ONLY:
        if hasattr(args, name):
            delattr(args, name)
    args.arch = args._name = arch
    args.hubert_model_path = GONE_HUBERT
    args.load_pretrained_mt_encoder_decoder_from = GONE_MT
    return args


def _param_index(weights: OrderedDict, key: str) -> int:
    """Position of ``key`` among the model's parameters (state-dict order, shared tensors once, no buffers)."""
    seen: set[int] = set()
    index = 0
    for name, tensor in weights.items():
        if name == key:
            return index
        if name.endswith((".version", "._float_tensor")) or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        index += 1
    raise KeyError(key)


def _insert_param_in_optimizer(state: dict[str, Any], index: int) -> None:
    """The optimizer holds one more parameter (never updated: no Adam state), shifting the later indices."""
    optim = state["last_optimizer_state"]
    optim["state"] = {(i + 1 if i >= index else i): v for i, v in optim["state"].items()}
    group = optim["param_groups"][0]
    group["params"] = list(range(len(group["params"]) + 1))


def make_cress_checkpoint(native: Path, out: Path, hubert: Path, *, arch: str = "hubert_transformer_postln") -> Path:
    """A CRESS (or, with ``arch='hubert_transformer_pruning_layer'``, onebit-st FP) checkpoint of the same weights."""
    state = load_checkpoint(native)
    hubert_state = load_checkpoint(hubert)
    dictionaries = hubert_state["task_state"]["dictionaries"]
    final_dim = int(hubert_state["args"].final_dim)
    weights: OrderedDict = OrderedDict()
    for key, tensor in state["model"].items():
        weights[key] = tensor
        if key == "encoder.hubert_model.mask_emb":
            weights[LABEL_EMBS] = torch.rand(sum(len(d) for d in dictionaries), final_dim)
    for side in ("encoder", "decoder"):  # fairseq 0.12.2 SinusoidalPositionalEmbedding's persistent buffer
        weights[f"{side}.embed_positions._float_tensor"] = torch.FloatTensor(1)
    _insert_param_in_optimizer(state, _param_index(weights, LABEL_EMBS))
    state["model"] = weights
    args = _cress_args(state["cfg"]["model"], arch)
    state["cfg"]["model"] = args
    state["cfg"]["task"] = args  # legacy (argparse) tasks store the same full Namespace
    state["args"] = None
    torch.save(state, out)
    return out


def make_onebit_svcd_checkpoint(native: Path, out: Path, hubert: Path, *, seed: int = 3) -> Path:
    """An onebit-st SVCD checkpoint: CRESS's format under arch ``quant_transformer``, BitLinear cross-attention."""
    make_cress_checkpoint(native, out, hubert, arch="quant_transformer")
    state = load_checkpoint(out)
    gen = torch.Generator().manual_seed(seed)
    weights: OrderedDict = OrderedDict()
    layers = int(state["cfg"]["model"].decoder_layers)
    for key, tensor in state["model"].items():
        weights[key] = tensor
        for i in range(layers):
            for proj in ATTN:
                name = f"decoder.layers.{i}.encoder_attn.{proj}"
                if key == f"{name}.bias":
                    out_f, in_f = state["model"][f"{name}.weight"].shape
                    bound = in_f ** -0.5  # onebit-st's "constraint": U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                    weights[f"{name}.g"] = (torch.rand(in_f, generator=gen) * 2 - 1) * bound
                    weights[f"{name}.h"] = (torch.rand(out_f, generator=gen) * 2 - 1) * bound
                    weights[f"{name}.norm.weight"] = 1 + 0.1 * torch.randn(in_f, generator=gen)
                    weights[f"{name}.norm.bias"] = 0.1 * torch.randn(in_f, generator=gen)
    state["model"] = weights
    state["last_optimizer_state"] = None  # the test never resumes its optimizer
    torch.save(state, out)
    return out
