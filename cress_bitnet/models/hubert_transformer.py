"""Model ``hubert_transformer``: HuBERT speech encoder + conv subsampler + a text Transformer encoder shared by speech
and text + a Transformer decoder (CRESS's architecture, with key names compatible with CRESS checkpoints).

The HuBERT architecture is stored in the model args (``hubert_cfg``) the first time it is read from
``--hubert-model-path``, so a saved ST checkpoint rebuilds and decodes without the HuBERT or MT files.
"""

from __future__ import annotations

import json
import logging
import os
from argparse import ArgumentParser, Namespace
from typing import Any

import torch
from fairseq.data import Dictionary
from fairseq.data.data_utils import lengths_to_padding_mask
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.speech_to_text.modules.convolution import Conv1dSubsampler
from fairseq.models.transformer import TransformerDecoder
from fairseq.modules import FairseqDropout, LayerNorm, PositionalEmbedding, TransformerEncoderLayer
from torch import Tensor, nn

from cress_bitnet.checkpoints import HUBERT_FLAG_HINT, STANDARDIZED_AUDIO_ARG, CheckpointError
from cress_bitnet.models.deltalm_decoder import DeltaLMDecoder
from cress_bitnet.models.hubert_loader import build_hubert_from_cfg, hubert_output_dim, load_hubert
from cress_bitnet.models.pretrained_mt import load_pretrained_mt

logger = logging.getLogger(__name__)

SPEECH_MODE = "st"


class HubertTransformerEncoder(FairseqEncoder):
    """Speech (HuBERT → subsampler) or text (embeddings + positions) front-end, then shared Transformer layers."""

    def __init__(self, args: Namespace, dictionary: Dictionary, embed_tokens: nn.Embedding, hubert: nn.Module) -> None:
        super().__init__(dictionary)
        dim = args.encoder_embed_dim
        self.hubert_model = hubert
        self.freeze_hubert = args.freeze_hubert
        if self.freeze_hubert:
            self.hubert_model.requires_grad_(False)
        hubert_dim = hubert_output_dim(hubert)
        kernels = [int(k) for k in str(args.conv_kernel_sizes).split(",") if k.strip()]
        if kernels:
            self.subsampler = Conv1dSubsampler(hubert_dim, args.conv_channels, dim, kernels)
            self.dim_proj = None
        else:
            self.subsampler = None
            self.dim_proj = nn.Linear(hubert_dim, dim)
        self.embed_tokens = embed_tokens
        self.padding_idx = embed_tokens.padding_idx
        self.embed_scale = 1.0 if args.no_scale_embedding else dim**0.5
        self.embed_positions = PositionalEmbedding(
            args.max_source_positions, dim, self.padding_idx, learned=args.encoder_learned_pos
        )
        self.layernorm_embedding = LayerNorm(dim) if args.layernorm_embedding else None
        self.dropout_module = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.transformer_layers = nn.ModuleList(TransformerEncoderLayer(args) for _ in range(args.encoder_layers))
        self.layer_norm = LayerNorm(dim) if args.encoder_normalize_before else None

    def _speech(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        padding = lengths_to_padding_mask(lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_hubert):
            feats, feat_padding = self.hubert_model.extract_features(source=wave, padding_mask=padding, mask=False)
        feat_lengths = (~feat_padding).long().sum(1) if feat_padding is not None else feats.new_full(
            (feats.size(0),), feats.size(1), dtype=torch.long
        )
        if self.subsampler is not None:
            x, out_lengths = self.subsampler(feats, feat_lengths)  # T x B x C
        else:
            x, out_lengths = self.dim_proj(feats).transpose(0, 1), feat_lengths
        return x, lengths_to_padding_mask(out_lengths)

    def _text(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        padding = tokens.eq(self.padding_idx)
        x = self.embed_scale * self.embed_tokens(tokens) + self.embed_positions(tokens)
        return x.transpose(0, 1), padding

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, mode: str = SPEECH_MODE, **kwargs: Any) -> dict:
        x, padding = self._speech(src_tokens, src_lengths) if mode == SPEECH_MODE else self._text(src_tokens)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x)
        x = x * (1 - padding.transpose(0, 1).unsqueeze(-1).type_as(x))
        for layer in self.transformer_layers:
            x = layer(x, encoder_padding_mask=padding if padding.any() else None)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding],
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
        }

    def reorder_encoder_out(self, encoder_out: dict, new_order: Tensor) -> dict:
        def pick(key: str, dim: int) -> list[Tensor]:
            return [t.index_select(dim, new_order) for t in encoder_out[key]]

        return {
            "encoder_out": pick("encoder_out", 1),
            "encoder_padding_mask": pick("encoder_padding_mask", 0),
            "encoder_embedding": pick("encoder_embedding", 0),
            "encoder_states": pick("encoder_states", 1),
            "src_tokens": [],
            "src_lengths": [],
        }

    def max_positions(self) -> None:
        return None  # the task enforces (audio samples, source tokens, target tokens)


@register_model("hubert_transformer")
class HubertTransformerModel(FairseqEncoderDecoderModel):
    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        a = parser.add_argument
        a("--activation-fn", default="relu", help="activation function")
        a("--dropout", type=float, metavar="D", help="dropout probability")
        a("--attention-dropout", type=float, metavar="D", help="attention dropout")
        a("--activation-dropout", "--relu-dropout", type=float, metavar="D", help="dropout after the activation")
        for side in ("encoder", "decoder"):
            a(f"--{side}-embed-dim", type=int, metavar="N", help=f"{side} embedding dimension")
            a(f"--{side}-ffn-embed-dim", type=int, metavar="N", help=f"{side} FFN dimension")
            a(f"--{side}-layers", type=int, metavar="N", help=f"number of {side} layers")
            a(f"--{side}-attention-heads", type=int, metavar="N", help=f"{side} attention heads")
            a(f"--{side}-normalize-before", action="store_true", help=f"pre-LN {side}")
            a(f"--{side}-learned-pos", action="store_true", help=f"learned {side} positions")
        a("--decoder-output-dim", type=int, metavar="N", help="decoder output dimension")
        a("--decoder-layerdrop", type=float, metavar="D", help="decoder LayerDrop probability")
        a("--share-decoder-input-output-embed", action="store_true", help="tie decoder input and output embeddings")
        a("--layernorm-embedding", action="store_true", help="LayerNorm after the embeddings (shared by modalities)")
        a("--no-scale-embedding", action="store_true", help="do not scale embeddings by sqrt(dim)")
        a("--decoder-layer-type", choices=["standard", "deltalm"], help="deltalm: interleaved FFN decoder layers")
        a("--load-pretrained-encoder-from", help="not supported (CRESS parses and ignores it): an error if given")
        a("--hubert-model-path", help="HuBERT checkpoint (legacy args or trainer cfg format)")
        a("--freeze-hubert", action="store_true", help="do not train HuBERT")
        a("--hubert-dropout", type=float, help="override HuBERT's dropout")
        a("--hubert-attention-dropout", type=float, help="override HuBERT's attention dropout")
        a("--hubert-activation-dropout", type=float, help="override HuBERT's activation dropout")
        a("--hubert-layerdrop", type=float, help="override HuBERT's encoder_layerdrop (pretraining: 0.05)")
        a("--hubert-feature-grad-mult", type=float, help="override HuBERT's feature_grad_mult (pretraining: 0.1)")
        a("--hubert-dropout-input", type=float, help="override HuBERT's dropout_input (pretraining: 0.1)")
        a("--hubert-dropout-features", type=float, help="override HuBERT's dropout_features (pretraining: 0.1)")
        a("--hubert-cfg", help="(internal) HuBERT architecture as JSON, stored so checkpoints decode without the file")
        a("--conv-kernel-sizes", help="subsampler kernel sizes, comma separated; empty: a linear projection")
        a("--conv-channels", type=int, help="subsampler channels")
        a("--load-pretrained-mt-encoder-decoder-from", help="MT checkpoint (fairseq, hubert_transformer or DeltaLM)")

    @classmethod
    def build_hubert(cls, args: Namespace) -> nn.Module:
        if getattr(args, "hubert_cfg", None):
            # Rebuilding a saved model (fairseq-generate, quant_transformer): weights come from its state dict.
            return build_hubert_from_cfg(json.loads(args.hubert_cfg))
        if not args.hubert_model_path:
            raise ValueError("--hubert-model-path is required to build a hubert_transformer model")
        if not os.path.isfile(args.hubert_model_path):  # CRESS-style args name a file from the training machine
            raise CheckpointError(
                f"HuBERT checkpoint not found: {args.hubert_model_path} (given by --hubert-model-path); the model args "
                f"hold no HuBERT architecture to build it from without that file: {HUBERT_FLAG_HINT}"
            )
        hubert, hubert_cfg = load_hubert(
            args.hubert_model_path,
            dropout=args.hubert_dropout,
            attention_dropout=args.hubert_attention_dropout,
            activation_dropout=args.hubert_activation_dropout,
            encoder_layerdrop=args.hubert_layerdrop,
            feature_grad_mult=args.hubert_feature_grad_mult,
            dropout_input=args.hubert_dropout_input,
            dropout_features=args.hubert_dropout_features,
        )
        args.hubert_cfg = json.dumps(hubert_cfg, sort_keys=True)
        logger.info(f"loaded HuBERT from {args.hubert_model_path}")
        return hubert

    @classmethod
    def build_model(cls, args: Namespace, task: Any) -> HubertTransformerModel:
        hubert_transformer_base(args)
        restoring = bool(getattr(args, "hubert_cfg", None))
        if getattr(args, "load_pretrained_encoder_from", None) and not restoring:
            raise ValueError(
                f"--load-pretrained-encoder-from {args.load_pretrained_encoder_from}: not supported (CRESS accepts it "
                "and ignores it). The speech encoder starts from --hubert-model-path, the text encoder and decoder "
                "from --load-pretrained-mt-encoder-decoder-from; continue a whole ST model with --restore-file"
            )
        dictionary = task.target_dictionary
        embed_tokens = nn.Embedding(len(dictionary), args.decoder_embed_dim, dictionary.pad())
        nn.init.normal_(embed_tokens.weight, mean=0, std=args.decoder_embed_dim**-0.5)
        nn.init.constant_(embed_tokens.weight[dictionary.pad()], 0)
        encoder = HubertTransformerEncoder(args, dictionary, embed_tokens, cls.build_hubert(args))
        decoder_cls = DeltaLMDecoder if args.decoder_layer_type == "deltalm" else TransformerDecoder
        decoder = decoder_cls(args, dictionary, embed_tokens)
        model = cls(encoder, decoder)
        mt_path = getattr(args, "load_pretrained_mt_encoder_decoder_from", None)
        if mt_path and not restoring:
            model.mt_load_report = load_pretrained_mt(model, mt_path)
        return model

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, mode: str, prev_output_tokens: Tensor) -> Any:
        encoder_out = self.encoder(src_tokens, src_lengths, mode)
        x, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out)
        extra["encoder_out"] = encoder_out  # for the criterion's CTC term (--ctc-weight)
        return x, extra

    def max_positions(self) -> None:
        return None  # the task enforces (audio samples, source tokens, target tokens)


def hubert_transformer_base(args: Namespace) -> None:
    """Defaults shared by every arch; each arch sets its own values first, CLI flags win over both."""

    def default(name: str, value: Any) -> None:
        if getattr(args, name, None) is None:
            setattr(args, name, value)

    default("encoder_embed_dim", 512)
    default("encoder_ffn_embed_dim", 2048)
    default("encoder_layers", 6)
    default("encoder_attention_heads", 8)
    default("encoder_normalize_before", True)
    default("encoder_learned_pos", False)
    default("decoder_embed_dim", args.encoder_embed_dim)
    default("decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    default("decoder_layers", 6)
    default("decoder_attention_heads", 8)
    default("decoder_normalize_before", True)
    default("decoder_learned_pos", False)
    default("decoder_output_dim", args.decoder_embed_dim)
    default("decoder_input_dim", args.decoder_embed_dim)
    default("decoder_layerdrop", 0.0)
    default("decoder_layer_type", "standard")
    default("dropout", 0.1)
    default("attention_dropout", args.dropout)
    default("activation_dropout", args.dropout)
    default("activation_fn", "relu")
    default("share_decoder_input_output_embed", False)
    default("share_all_embeddings", False)
    default("layernorm_embedding", False)
    default("no_scale_embedding", False)
    default("no_token_positional_embeddings", False)
    default("adaptive_input", False)
    default("adaptive_softmax_cutoff", None)
    default("conv_kernel_sizes", "5,5")
    default("conv_channels", 1024)
    default("freeze_hubert", False)
    for name in ("hubert_dropout", "hubert_attention_dropout", "hubert_activation_dropout", "hubert_layerdrop",
                 "hubert_feature_grad_mult", "hubert_dropout_input", "hubert_dropout_features", "hubert_cfg",
                 "hubert_model_path", "load_pretrained_mt_encoder_decoder_from", STANDARDIZED_AUDIO_ARG):
        default(name, None)
    default("max_source_positions", 512)
    default("max_target_positions", 512)


# Args that fix the model's structure; a model built from a saved checkpoint must take these from it.
ARCH_FIELDS = (
    "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
    "encoder_normalize_before", "encoder_learned_pos", "decoder_embed_dim", "decoder_ffn_embed_dim",
    "decoder_layers", "decoder_attention_heads", "decoder_normalize_before", "decoder_learned_pos",
    "decoder_output_dim", "decoder_input_dim", "decoder_layer_type", "activation_fn",
    "share_decoder_input_output_embed", "share_all_embeddings", "layernorm_embedding", "no_scale_embedding",
    "no_token_positional_embeddings", "adaptive_input", "adaptive_softmax_cutoff", "conv_kernel_sizes",
    "conv_channels", "max_source_positions", "max_target_positions", "hubert_cfg",
    STANDARDIZED_AUDIO_ARG,  # not structure, but what the weights expect as input
)
# Training-time settings inherited from the checkpoint unless given on the command line.
TRAINING_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "decoder_layerdrop", "freeze_hubert")


@register_model_architecture("hubert_transformer", "hubert_transformer")
def hubert_transformer(args: Namespace) -> None:
    hubert_transformer_base(args)


@register_model_architecture("hubert_transformer", "hubert_transformer_postln")
def hubert_transformer_postln(args: Namespace) -> None:
    args.encoder_normalize_before = getattr(args, "encoder_normalize_before", False) or False
    args.decoder_normalize_before = getattr(args, "decoder_normalize_before", False) or False
    hubert_transformer_base(args)


@register_model_architecture("hubert_transformer", "hubert_transformer_pruning_layer")
def hubert_transformer_pruning_layer(args: Namespace) -> None:
    """The original SVCD baseline recipe's name for the (pre-LN) CRESS model."""
    hubert_transformer_base(args)


@register_model_architecture("hubert_transformer", "hubert_transformer_pruning_layer_postln")
def hubert_transformer_pruning_layer_postln(args: Namespace) -> None:
    """onebit-st's post-LN baseline name (= hubert_transformer_postln)."""
    hubert_transformer_postln(args)


@register_model_architecture("hubert_transformer", "hubert_deltalm_base")
def hubert_deltalm_base(args: Namespace) -> None:
    """DeltaLM-base text encoder/decoder: 768-d, 12/6 layers, interleaved decoder, learned positions, post-LN, GELU."""

    def default(name: str, value: Any) -> None:
        if getattr(args, name, None) is None:
            setattr(args, name, value)

    default("encoder_embed_dim", 768)
    default("encoder_ffn_embed_dim", 3072)
    default("encoder_layers", 12)
    default("encoder_attention_heads", 12)
    default("decoder_layers", 6)
    default("decoder_attention_heads", 12)
    default("decoder_layer_type", "deltalm")
    default("activation_fn", "gelu")
    args.encoder_normalize_before = getattr(args, "encoder_normalize_before", False) or False
    args.decoder_normalize_before = getattr(args, "decoder_normalize_before", False) or False
    args.encoder_learned_pos = True
    args.decoder_learned_pos = True
    args.no_scale_embedding = True
    args.layernorm_embedding = True
    args.share_decoder_input_output_embed = True
    hubert_transformer_base(args)
