"""UNETR (Hatamizadeh et al. 2022) with the (pre-trained) 3D ViT as its encoder, as the paper fine-tunes it.

DESIGN.md, "What UNETR computes". F = feature_size, h = embed_dim, g = token grid. Skips come from the
tapped blocks (default 3, 6, 9) reshaped to [B, h, *g] and the final normed output. Patch 16: the last
stage is a transposed conv; any other patch (the paper's 12): trilinear resize to the input's size
(align_corners off) then a 3x3x3 conv with bias. Input: [B, C, H, W, D] with (H, W, D) = img_size.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hiend_data.errors import InputError

from .config import MAEConfig, UNETRConfig, validated
from .vit import ViTEncoder, check_images, init_weights, patchify

if TYPE_CHECKING:  # pragma: no cover
    from .mae import HiEndMAE  # (hiend_model.mae builds UNETRs too: it imports this module)


class InstanceNorm(nn.Module):
    """Instance norm without affine (eps 1e-5), computed as a group norm with one group per channel:
    the same statistics (per sample and channel, biased variance) with a faster CPU kernel."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, x.shape[1], eps=self.eps)


def _up(cin: int, cout: int) -> nn.ConvTranspose3d:
    """Transposed conv, kernel 2, stride 2, no bias: doubles each spatial size."""
    return nn.ConvTranspose3d(cin, cout, kernel_size=2, stride=2, bias=False)


class ResBlock(nn.Module):
    """Residual unit: conv3-IN-LReLU-conv3-IN, + (conv1-IN shortcut if channels change), LReLU.

    Convs have no bias; instance norm without affine, eps 1e-5; LeakyReLU slope 0.01.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = InstanceNorm(1e-5)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = InstanceNorm(1e-5)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        if cin != cout:
            self.conv3 = nn.Conv3d(cin, cout, 1, bias=False)
            self.norm3 = InstanceNorm(1e-5)
        else:
            self.conv3 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        res = x if self.conv3 is None else self.norm3(self.conv3(x))
        return self.act(y + res)


class PrUpStage(nn.Module):
    """Encoder skip path: up(h -> c), then ``n`` times [up(c -> c), res(c -> c)]."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.transp_conv_init = _up(cin, cout)
        self.blocks = nn.ModuleList(nn.Sequential(_up(cout, cout), ResBlock(cout, cout)) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv_init(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class UpBlock(nn.Module):
    """Decoder stage: up(cin -> cout), concat [upsampled, skip], res(2 cout -> cout)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv = _up(cin, cout)
        self.conv_block = ResBlock(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.transp_conv(x), skip], dim=1))


class ResizeUpBlock(nn.Module):
    """The paper's last stage for patch != 16: resize to the skip's size, conv3 with bias, concat, res."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(cin, cout, 3, padding=1, bias=True)
        self.conv_block = ResBlock(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.conv_block(torch.cat([self.conv3d(x), skip], dim=1))


class UNETR(nn.Module):
    """Segmentation network: ``forward(images [B, C, H, W, D]) -> logits [B, num_classes, H, W, D]``."""

    def __init__(self, config: UNETRConfig) -> None:
        super().__init__()
        self.config = cfg = config
        h, f = cfg.embed_dim, cfg.feature_size
        self.grid = cfg.grid
        self.encoder = ViTEncoder(
            grid=cfg.grid,
            patch_dim=cfg.patch_dim,
            embed_dim=h,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            eps=cfg.layer_norm_eps,
            drop_path=cfg.drop_path,
            pos_embed="learned",
            cls_token=False,
            grad_checkpointing=cfg.grad_checkpointing,
            backend=cfg.attn_backend,
        )
        init_weights(self.encoder)
        nn.init.normal_(self.encoder.pos_embed, std=0.02)
        self.encoder1 = ResBlock(cfg.in_chans, f)
        self.encoder2 = PrUpStage(h, 2 * f, 2)
        self.encoder3 = PrUpStage(h, 4 * f, 1)
        self.encoder4 = PrUpStage(h, 8 * f, 0)
        self.decoder5 = UpBlock(h, 8 * f)
        self.decoder4 = UpBlock(8 * f, 4 * f)
        self.decoder3 = UpBlock(4 * f, 2 * f)
        self.decoder2 = UpBlock(2 * f, f) if cfg.final_upsample == "transpose" else ResizeUpBlock(2 * f, f)
        self.out = nn.Conv3d(f, cfg.num_classes, 1)

    def _volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, h] -> [B, h, *grid]."""
        B, _, h = tokens.shape
        return tokens.transpose(1, 2).reshape(B, h, *self.grid)

    def check_images(self, images: torch.Tensor) -> None:
        """InputError unless images is [B, in_chans, *img_size] (shapes only: :func:`~hiend_model.vit.check_images`)."""
        cfg = self.config
        check_images(
            images,
            cfg.in_chans,
            cfg.patch_size,
            cfg.img_size,
            hint="; segment larger volumes with sliding-window inference",
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W, D] -> logits [B, num_classes, H, W, D]."""
        self.check_images(images)
        x, outs = self.encoder(patchify(images, self.config.patch_size))
        t1, t2, t3 = (self._volume(outs[i]) for i in self.config.tap_blocks)
        enc1 = self.encoder1(images)
        enc2 = self.encoder2(t1)
        enc3 = self.encoder3(t2)
        enc4 = self.encoder4(t3)
        dec = self.decoder5(self._volume(x), enc4)
        dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        return self.out(dec)

    @classmethod
    def from_mae(cls, mae: HiEndMAE, num_classes: int, feature_size: int = 16, **overrides: object) -> UNETR:
        """A UNETR whose encoder (blocks, patch embedding, norm, position embedding as a learned
        parameter initialised from the pre-trained one) comes from a pre-training model.

        ``mae``: a :class:`~hiend_model.mae.HiEndMAE` (its encoder's state is copied; the class token is
        dropped, the encoder's LayerNorm eps kept). ``overrides`` replace UNETRConfig fields (e.g.
        drop_path). To start from a file (a hiend "mae" checkpoint or the paper's pre-training .pth) use
        :func:`hiend_model.pretrained.load_unetr_init`.
        """
        if not (isinstance(mae, nn.Module) and isinstance(getattr(mae, "config", None), MAEConfig)):
            hint = (
                " (load a checkpoint with hiend_model.pretrained.load_unetr_init)"
                if isinstance(mae, (str, os.PathLike, dict))
                else ""
            )
            raise InputError(f"from_mae needs a HiEndMAE, got {type(mae).__name__}{hint}")
        fields = {
            **mae.config.encoder_fields(),
            "num_classes": num_classes,
            "feature_size": feature_size,
            **overrides,
        }
        model = cls(validated(UNETRConfig, fields))
        state = {k: v for k, v in mae.encoder.state_dict().items() if k != "cls_token"}
        model.encoder.load_state_dict(state, strict=True)
        return model
