"""Hi-End-MAE: masked-autoencoder pre-training with a hierarchical, encoder-driven decoder.

DESIGN.md, "What Hi-End-MAE computes", steps 1-8. Shapes: images [B, C, H, W, D]; grid g = (H/p, W/p,
D/p); L = prod(g) tokens; P = p^3 C values per patch; keep = int(L (1 - mask_ratio)) visible tokens.

``MAEConfig.decoder="mae"`` swaps steps 4-6 for the paper's ablation baseline, plain MAE (He et al.
2022): only the final normed encoder output is projected (``decoder_embed``), then ``decoder_depth``
plain self-attention blocks, norm and head (:class:`MAEDecoder`). Masking, loss, outputs and
reconstruction are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hiend_data.errors import InputError

from .attention import Attention
from .config import MAEConfig, resolve_config
from .vit import Block, Mlp, ViTEncoder, check_images, init_weights, patchify, sincos_pos_embed_3d, unpatchify


@dataclass
class MAEOutput:
    """Result of :meth:`HiEndMAE.forward`.

    loss: scalar, MSE over masked tokens against per-patch layer-normed targets.
    pred: [B, L, P] head output in original token order (normalised-target space).
    mask: [B, L] bool, True = masked (hidden from the encoder).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


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


class Decoder(nn.Module):
    """2 self-attention blocks, then one cross-attention block per tapped encoder block, norm, head."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        dim, heads, eps, be = (
            cfg.decoder_embed_dim,
            cfg.decoder_num_heads,
            cfg.layer_norm_eps,
            cfg.attn_backend,
        )
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, eps, 0.0, be) for _ in range(cfg.decoder_depth)
        )
        self.cross_attention_blocks = nn.ModuleList(
            CrossBlock(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, eps, be) for _ in range(cfg.cross_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, cfg.patch_dim)

    def features(self, x: torch.Tensor, contexts: list[torch.Tensor]) -> torch.Tensor:
        """x [B, 1+L, Dd]; contexts deep to shallow, each [B, 1+keep, Dd] -> normed tokens [B, 1+L, Dd]."""
        for blk in self.blocks:
            x = blk(x)
        for blk, ctx in zip(self.cross_attention_blocks, contexts, strict=True):
            x = blk(x, ctx)
        return self.norm(x)

    def forward(self, x: torch.Tensor, contexts: list[torch.Tensor]) -> torch.Tensor:
        """-> head output [B, 1+L, P]."""
        return self.head(self.features(x, contexts))


class MAEDecoder(nn.Module):
    """Plain MAE decoder (the paper's ablation baseline): ``decoder_depth`` self-attention blocks, norm,
    head. No cross-attention; ``contexts`` is accepted (and must be empty) so both decoders share a call."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        dim, heads, eps, be = (
            cfg.decoder_embed_dim,
            cfg.decoder_num_heads,
            cfg.layer_norm_eps,
            cfg.attn_backend,
        )
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, eps, 0.0, be) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, cfg.patch_dim)

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


class HiEndMAE(nn.Module):
    """The Hi-End-MAE pre-training model (or, with ``config.decoder="mae"``, the plain-MAE baseline).

    ``forward(images [B, C, H, W, D], noise [B, L] | None) -> MAEOutput``. State-dict keys follow the
    paper's layout except ``encoder.pos_embed`` (paper: ``encoder_pos_embed``) and the patch embedding,
    a Linear [D, P] (paper: Conv3d [D, C, p, p, p]); see :mod:`hiend_model.official`.

    Plain MAE: the encoder keys are the same; the one projection is ``decoder_embed`` (there is no
    ``encoder_to_decoder``), the decoder ``decoder.blocks.{i}``, ``decoder.norm``, ``decoder.head``
    (:class:`MAEDecoder`); ``mask_token`` and the ``decoder_pos_embed`` buffer as for Hi-End-MAE.
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.patch_size = cfg.patch_size
        self.grid = cfg.grid
        self.num_patches = cfg.num_patches
        self.encoder = ViTEncoder(
            grid=cfg.grid,
            patch_dim=cfg.patch_dim,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            eps=cfg.layer_norm_eps,
            drop_path=cfg.drop_path,
            pos_embed=cfg.pos_embed,
            cls_token=True,
            grad_checkpointing=cfg.grad_checkpointing,
            backend=cfg.attn_backend,
        )
        if cfg.decoder == "mae":
            # Plain MAE: the final normed output alone is projected to the decoder width.
            self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        else:
            # 0..n-1 project the tapped block outputs (shallow to deep), n the final normed output.
            self.encoder_to_decoder = nn.ModuleList(
                nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim) for _ in range(len(cfg.tap_blocks) + 1)
            )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_3d(cfg.grid, cfg.decoder_embed_dim).unsqueeze(0)
        )
        self.decoder = MAEDecoder(cfg) if cfg.decoder == "mae" else Decoder(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if isinstance(self.encoder.pos_embed, nn.Parameter):
            nn.init.normal_(self.encoder.pos_embed, std=0.02)

    # -- pieces named after the algorithm ---------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W, D] -> [B, L, P]."""
        return patchify(images, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, P] -> [B, C, H, W, D]."""
        return unpatchify(patches, self.patch_size, self.grid, self.config.in_chans)

    def check_images(self, images: torch.Tensor) -> None:
        """InputError unless images is [B, in_chans, *img_size] and finite."""
        cfg = self.config
        check_images(images, cfg.in_chans, cfg.patch_size, cfg.img_size)

    def random_masking(
        self, B: int, device: torch.device, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """noise [B, L] (U(0,1) if None) -> (ids_shuffle [B, L], ids_restore [B, L], keep)."""
        L = self.num_patches
        if noise is None:
            noise = torch.rand(B, L, device=device)
        elif tuple(noise.shape) != (B, L):
            raise InputError(f"noise has shape {tuple(noise.shape)}, expected ({B}, {L})")
        ids_shuffle = torch.argsort(noise.to(device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        keep = int(L * (1 - self.config.mask_ratio))
        return ids_shuffle, ids_restore, keep

    def forward_encoder(
        self, patches: torch.Tensor, ids_keep: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Visible patches -> (final normed [B, 1+keep, D], tapped block outputs shallow to deep;
        plain MAE: no taps, an empty list)."""
        P = patches.shape[-1]
        visible = patches.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, P))
        latent, outs = self.encoder(visible, ids_keep)
        if self.config.decoder == "mae":
            return latent, []
        return latent, [outs[t] for t in self.config.tap_blocks]

    def forward_decoder(
        self, latent: torch.Tensor, taps: list[torch.Tensor], ids_shuffle: torch.Tensor
    ) -> torch.Tensor:
        """-> normed decoder tokens [B, 1+L, Dd] in shuffled order (class token, visible, masked)."""
        B, L = ids_shuffle.shape
        if self.config.decoder == "mae":
            contexts: list[torch.Tensor] = []
            x = self.decoder_embed(latent)
        else:
            proj = self.encoder_to_decoder
            contexts = [proj[i](t) for i, t in enumerate(taps)][::-1]  # deep to shallow
            x = proj[len(taps)](latent)
        Dd = x.shape[-1]
        mask_tokens = self.mask_token.expand(B, L - (x.shape[1] - 1), -1)
        pos = self.decoder_pos_embed.expand(B, -1, -1).gather(1, ids_shuffle.unsqueeze(-1).expand(-1, -1, Dd))
        x = torch.cat([x[:, :1], torch.cat([x[:, 1:], mask_tokens], dim=1) + pos], dim=1)
        return self.decoder.features(x, contexts)

    @staticmethod
    def normalized_target(patches: torch.Tensor) -> torch.Tensor:
        """Per-patch normalisation of the loss target (mean, biased variance, eps 1e-6, no affine)."""
        return F.layer_norm(patches, (patches.shape[-1],), eps=1e-6)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        """images [B, C, H, W, D] (and optional noise [B, L]) -> MAEOutput(loss, pred [B, L, P], mask [B, L])."""
        self.check_images(images)
        B = images.shape[0]
        patches = self.patchify(images)
        ids_shuffle, ids_restore, keep = self.random_masking(B, images.device, noise)
        latent, taps = self.forward_encoder(patches, ids_shuffle[:, :keep])
        feats = self.forward_decoder(latent, taps, ids_shuffle)  # [B, 1+L, Dd] shuffled
        # The head runs on the visible and the masked tokens separately: the loss only reaches the
        # masked ones, so backward skips the visible rows (same values as one head over all tokens).
        out_masked = self.decoder.head(feats[:, 1 + keep :])  # [B, L-keep, P]
        out_visible = self.decoder.head(feats[:, 1 : 1 + keep])  # [B, keep, P]
        P = out_masked.shape[-1]
        # Loss on the masked tokens only (the shuffled tail), against their normalised patches.
        ids_masked = ids_shuffle[:, keep:]
        target = self.normalized_target(patches.gather(1, ids_masked.unsqueeze(-1).expand(-1, -1, P)))
        loss = F.mse_loss(out_masked, target)
        out = torch.cat([out_visible, out_masked], dim=1)  # [B, L, P] shuffled
        pred = out.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, P))
        mask = ids_restore >= keep
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    @torch.no_grad()
    def unnormalize(self, images: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """pred [B, L, P] -> patch values: pred * (unbiased std + 1e-6) + mean of each input patch."""
        patches = self.patchify(images)
        mean = patches.mean(dim=-1, keepdim=True)
        std = patches.std(dim=-1, keepdim=True)
        return pred * (std + 1e-6) + mean

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, output: MAEOutput, paste_visible: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction), both shaped like images [B, C, H, W, D].

        The masked input has masked patches set to 0. The reconstruction is the un-normalised head
        output; with ``paste_visible`` the visible patches are the input's own.
        """
        patches = self.patchify(images)
        mask = output.mask.unsqueeze(-1)
        rec = self.unnormalize(images, output.pred.to(patches.dtype))
        if paste_visible:
            rec = torch.where(mask, rec, patches)
        masked = patches.masked_fill(mask, 0.0)
        return self.unpatchify(masked), self.unpatchify(rec)


def build(preset_or_config: str | MAEConfig | dict = "vit-b16", **overrides: object) -> HiEndMAE:
    """A pre-training model from a preset name (``vit-b16``, ``vit-l12``, ``vit-l16``, ``tiny``), a
    :class:`MAEConfig` or a dict of its fields; keyword overrides replace fields."""
    return HiEndMAE(resolve_config(preset_or_config, **overrides))
