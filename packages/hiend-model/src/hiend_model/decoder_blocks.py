"""The decoders' modules (the entries of :data:`hiend_model.decoders.DECODERS`): blocks, projections.

Each decoder class builds its encoder -> decoder projection (:meth:`projection`, stored by the model
under its entry's ``projection_name``) and applies it (:meth:`project`): ``latent`` [B, 1+keep, D]
(the final normed encoder output) and the tapped block outputs (shallow to deep, each [B, 1+keep, D])
-> (decoder input [B, 1+keep, Dd], cross-attention contexts, deep to shallow). ``features`` runs the
blocks and the norm, ``head`` maps to the P values of a patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .attention import Attention
from .vit import Block, Mlp

if TYPE_CHECKING:  # pragma: no cover
    from .config import MAEConfig

__all__ = ["CrossBlock", "HiEndDecoder", "PlainMAEDecoder"]


class CrossBlock(nn.Module):
    """Decoder block: x + self_attn(norm0(x)); x + cross_attn(norm1(x), context); x + mlp(norm2(x)).

    ``context`` [B, M, C] (projected encoder block output, not normed) gives keys and values.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float, backend: str
    ) -> None:
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, cross=True, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm0(x))
        x = x + self.cross_attn(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


def _self_blocks(cfg: MAEConfig) -> nn.ModuleList:
    """``decoder_depth`` pre-norm self-attention blocks at the decoder width."""
    dim, heads = cfg.decoder_embed_dim, cfg.decoder_num_heads
    return nn.ModuleList(
        Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps, 0.0, cfg.attn_backend)
        for _ in range(cfg.decoder_depth)
    )


class HiEndDecoder(nn.Module):
    """Hi-End-MAE's decoder: ``decoder_depth`` self-attention blocks, then one cross-attention block
    per tapped encoder block (deep to shallow), norm, head."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        dim, eps = cfg.decoder_embed_dim, cfg.layer_norm_eps
        self.blocks = _self_blocks(cfg)
        self.cross_attention_blocks = nn.ModuleList(
            CrossBlock(dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.qkv_bias, eps, cfg.attn_backend)
            for _ in range(cfg.cross_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, cfg.patch_dim)

    @staticmethod
    def projection(cfg: MAEConfig, n_taps: int) -> nn.ModuleList:
        """``encoder_to_decoder``: 0..n-1 project the tapped block outputs (shallow to deep), n the
        final normed output."""
        return nn.ModuleList(nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim) for _ in range(n_taps + 1))

    @staticmethod
    def project(
        proj: nn.Module, latent: torch.Tensor, taps: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (projected final output, projected taps deep to shallow)."""
        contexts = [proj[i](t) for i, t in enumerate(taps)][::-1]
        return proj[len(taps)](latent), contexts

    def features(self, x: torch.Tensor, contexts: Sequence[torch.Tensor]) -> torch.Tensor:
        """x [B, 1+L, Dd]; contexts deep to shallow, each [B, 1+keep, Dd] -> normed tokens [B, 1+L, Dd]."""
        for blk in self.blocks:
            x = blk(x)
        for blk, ctx in zip(self.cross_attention_blocks, contexts, strict=True):
            x = blk(x, ctx)
        return self.norm(x)

    def forward(self, x: torch.Tensor, contexts: Sequence[torch.Tensor]) -> torch.Tensor:
        """-> head output [B, 1+L, P]."""
        return self.head(self.features(x, contexts))


class PlainMAEDecoder(nn.Module):
    """Plain MAE decoder (the paper's ablation baseline): ``decoder_depth`` self-attention blocks, norm,
    head. No cross-attention; ``contexts`` is accepted (and must be empty) so both decoders share a call."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.blocks = _self_blocks(cfg)
        self.norm = nn.LayerNorm(cfg.decoder_embed_dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.decoder_embed_dim, cfg.patch_dim)

    @staticmethod
    def projection(cfg: MAEConfig, n_taps: int = 0) -> nn.Linear:
        """``decoder_embed``: the final normed output alone is projected to the decoder width."""
        if n_taps:
            raise ValueError("the plain MAE decoder reads no tapped encoder blocks")
        return nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)

    @staticmethod
    def project(
        proj: nn.Module, latent: torch.Tensor, taps: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (projected final output, no contexts)."""
        if taps:
            raise ValueError("the plain MAE decoder takes no encoder contexts")
        return proj(latent), []

    def features(self, x: torch.Tensor, contexts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """x [B, 1+L, Dd] -> normed tokens [B, 1+L, Dd]."""
        if contexts:
            raise ValueError("the plain MAE decoder takes no encoder contexts")
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor, contexts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """-> head output [B, 1+L, P]."""
        return self.head(self.features(x, contexts))
