"""Hi-End-MAE: masked-autoencoder pre-training with a hierarchical, encoder-driven decoder.

DESIGN.md, "What Hi-End-MAE computes", steps 1-8. Shapes: images [B, C, H, W, D]; grid g = (H/p, W/p,
D/p); L = prod(g) tokens; P = p^3 C values per patch; keep = int(L (1 - mask_ratio)) visible tokens.

Steps 4-6 (projection, decoder) are the entry of :data:`hiend_model.decoders.DECODERS` that
``MAEConfig.decoder`` names: ``"hiend"``, or ``"plain"``, the paper's ablation baseline, plain MAE (He et
al. 2022): only the final normed encoder output is projected (``decoder_embed``), then
``decoder_depth`` plain self-attention blocks, norm and head
(:class:`~hiend_model.decoder_blocks.PlainMAEDecoder`). Masking, loss, outputs and reconstruction are
shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hiend_data.errors import InputError

from .config import MAEConfig, UNETRConfig, resolve_config, validated
from .decoders import DECODERS
from .unetr import UNETR
from .vit import ViTEncoder, check_images, init_weights, patchify, sincos_pos_embed_3d, unpatchify


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


class HiEndMAE(nn.Module):
    """The Hi-End-MAE pre-training model (or, with ``config.decoder="plain"``, the plain-MAE baseline).

    ``forward(images [B, C, H, W, D], noise [B, L] | None) -> MAEOutput``. State-dict keys follow the
    paper's layout except ``encoder.pos_embed`` (paper: ``encoder_pos_embed``) and the patch embedding,
    a Linear [D, P] (paper: Conv3d [D, C, p, p, p]); see :mod:`hiend_model.official`.

    Plain MAE: the encoder keys are the same; the one projection is ``decoder_embed`` (there is no
    ``encoder_to_decoder``), the decoder ``decoder.blocks.{i}``, ``decoder.norm``, ``decoder.head``
    (:class:`~hiend_model.decoder_blocks.PlainMAEDecoder`); ``mask_token`` and the ``decoder_pos_embed``
    buffer as for Hi-End-MAE.

    ``decoder_spec`` is the config's entry of :data:`~hiend_model.decoders.DECODERS`; ``taps`` the
    encoder blocks the decoder reads (shallow to deep; none for plain MAE); ``projection`` the encoder
    -> decoder projection (``encoder_to_decoder`` or ``decoder_embed``).
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
        self.decoder_spec = spec = DECODERS[cfg.decoder]
        self.taps = spec.taps(cfg.depth, cfg.tap_blocks)
        decoder_class = spec.module_class
        self.add_module(spec.projection_name, decoder_class.projection(cfg, len(self.taps)))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_3d(cfg.grid, cfg.decoder_embed_dim).unsqueeze(0)
        )
        self.decoder = decoder_class(cfg)
        self.reset_parameters()

    @property
    def projection(self) -> nn.Module:
        """The encoder -> decoder projection (``encoder_to_decoder`` or ``decoder_embed``)."""
        return getattr(self, self.decoder_spec.projection_name)

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
        """InputError unless images is [B, in_chans, *img_size] (shapes only: :func:`~hiend_model.vit.check_images`)."""
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
        """Visible patches -> (final normed [B, 1+keep, D], outputs of the blocks in :attr:`taps`, shallow
        to deep; plain MAE: none)."""
        P = patches.shape[-1]
        visible = patches.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, P))
        latent, outs = self.encoder(visible, ids_keep)
        return latent, [outs[t] for t in self.taps]

    def forward_decoder(
        self, latent: torch.Tensor, taps: list[torch.Tensor], ids_shuffle: torch.Tensor
    ) -> torch.Tensor:
        """-> normed decoder tokens [B, 1+L, Dd] in shuffled order (class token, visible, masked)."""
        B, L = ids_shuffle.shape
        x, contexts = self.decoder.project(self.projection, latent, taps)  # contexts deep to shallow
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


def build(preset_or_config: str | MAEConfig | UNETRConfig | dict = "vit-b16", **overrides: object) -> Any:
    """hiend's one model builder: a freshly initialised model of either kind from its config.

    ``preset_or_config``: a pre-training preset name (``vit-b16``, ``vit-l12``, ``vit-l16``, ``tiny``),
    a :class:`MAEConfig` or a dict of its fields -> :class:`HiEndMAE`; a :class:`UNETRConfig` ->
    :class:`~hiend_model.unetr.UNETR` (from a file's config: :func:`hiend_model.kinds.build_empty`).
    Keyword overrides replace fields (changing ``depth`` re-derives unset ``tap_blocks``, changing
    ``decoder`` its depths). InputError names an unknown preset or an invalid field.
    """
    if isinstance(preset_or_config, UNETRConfig):
        fields = {**preset_or_config.model_dump(), **overrides}
        if "depth" in overrides and "tap_blocks" not in overrides:
            fields["tap_blocks"] = None
        return UNETR(validated(UNETRConfig, fields))
    return HiEndMAE(resolve_config(preset_or_config, **overrides))
