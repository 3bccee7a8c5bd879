"""DeltaLM's interleaved decoder layer: self-attn → FFN (fc3/fc4) → cross-attn → FFN (fc1/fc2), post-LN.

Parameter names follow unilm's model-side names (``fc3``, ``fc4``, ``ffn_layer_norm``), so fine-tuned DeltaLM
checkpoints and our key map of ``deltalm-base.pt`` land on them unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from fairseq.models.transformer import TransformerConfig, TransformerDecoder
from fairseq.modules import LayerNorm
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor


class DeltaLMDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg: TransformerConfig, no_encoder_attn: bool = False) -> None:
        super().__init__(cfg, no_encoder_attn)
        dim, ffn = self.embed_dim, cfg.decoder.ffn_embed_dim
        self.fc3 = self.build_fc1(dim, ffn, self.quant_noise, self.quant_noise_block_size)
        self.fc4 = self.build_fc2(ffn, dim, self.quant_noise, self.quant_noise_block_size)
        self.ffn_layer_norm = LayerNorm(dim, export=cfg.export)

    def _ffn(self, x: Tensor, fc_in: torch.nn.Module, fc_out: torch.nn.Module, norm: torch.nn.Module) -> Tensor:
        residual = x
        if self.normalize_before:
            x = norm(x)
        x = self.activation_dropout_module(self.activation_fn(fc_in(x)))
        x = self.dropout_module(fc_out(x))
        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = norm(x)
        return x

    def forward(  # noqa: PLR0913 - fairseq's decoder-layer signature
        self,
        x: Tensor,
        encoder_out: Tensor | None = None,
        encoder_padding_mask: Tensor | None = None,
        incremental_state: dict[str, dict[str, Tensor | None]] | None = None,
        prev_self_attn_state: Any = None,
        prev_attn_state: Any = None,
        self_attn_mask: Tensor | None = None,
        self_attn_padding_mask: Tensor | None = None,
        need_attn: bool = False,
        need_head_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, None]:
        if prev_self_attn_state is not None or prev_attn_state is not None or self.cross_self_attention:
            raise ValueError("DeltaLM decoder layers support neither cross_self_attention nor prev states")
        need_attn = need_attn or need_head_weights
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(
            query=x, key=x, value=x, key_padding_mask=self_attn_padding_mask,
            incremental_state=incremental_state, need_weights=False, attn_mask=self_attn_mask,
        )
        x = self.residual_connection(self.dropout_module(x), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        x = self._ffn(x, self.fc3, self.fc4, self.ffn_layer_norm)

        attn = None
        if self.encoder_attn is not None and encoder_out is not None:
            residual = x
            if self.normalize_before:
                x = self.encoder_attn_layer_norm(x)
            x, attn = self.encoder_attn(
                query=x, key=encoder_out, value=encoder_out, key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state, static_kv=True,
                need_weights=need_attn or (not self.training and self.need_attn), need_head_weights=need_head_weights,
            )
            x = self.residual_connection(self.dropout_module(x), residual)
            if not self.normalize_before:
                x = self.encoder_attn_layer_norm(x)

        x = self._ffn(x, self.fc1, self.fc2, self.final_layer_norm)
        return x, attn, None


class DeltaLMDecoder(TransformerDecoder):
    def build_decoder_layer(self, args: Any, no_encoder_attn: bool = False) -> DeltaLMDecoderLayer:
        return DeltaLMDecoderLayer(TransformerConfig.from_namespace(args), no_encoder_attn)
