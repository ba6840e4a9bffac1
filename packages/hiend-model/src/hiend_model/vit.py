"""3D Vision Transformer pieces: patchify, sin-cos position embedding, pre-norm blocks, the encoder.

Token order is row-major over the grid of the array axes (first axis slowest); inside a patch the
values are ordered (p1, p2, p3, c), so the linear patch embedding equals a Conv3d with kernel = stride
= p whose weight [D, C, p, p, p] is permuted to [D, p, p, p, C] and flattened.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hiend_data.errors import InputError

from .attention import Attention


def check_images(
    images: torch.Tensor, in_chans: int, patch_size: int, img_size: tuple[int, ...], hint: str = ""
) -> None:
    """InputError unless ``images`` is a [B, in_chans, *img_size] tensor (sizes divisible by the patch).
    ``hint`` is appended to the size-mismatch message.

    Shapes only, never values: every model forward runs this, and reading a value of a GPU tensor
    (``torch.isfinite(images).all()``) would be a device-to-host sync each training step. Values are
    checked where the images enter: a scan holding NaN or inf is refused when it is read
    (:func:`hiend_data.io.load_volume`) and again after preprocessing (predict), the cache writer
    refuses one, and training checks its crops on the host.
    """
    if images.ndim != 5:
        raise InputError(f"images must be [B, C, H, W, D], got shape {tuple(images.shape)}")
    if images.shape[1] != in_chans:
        raise InputError(f"images have {images.shape[1]} channels, the model expects in_chans={in_chans}")
    size = tuple(images.shape[2:])
    if any(s % patch_size for s in size):
        raise InputError(f"images spatial size {size} is not divisible by patch_size={patch_size}")
    if size != tuple(img_size):
        raise InputError(
            f"images spatial size {size} differs from the model's img_size {tuple(img_size)}{hint}"
        )


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W, D] -> [B, L, p^3 C] patches (tokens row-major over the grid; values (p1, p2, p3, c))."""
    B, C, H, W, D = images.shape
    h, w, d = H // p, W // p, D // p
    x = images.reshape(B, C, h, p, w, p, d, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(B, h * w * d, p**3 * C)


def unpatchify(patches: torch.Tensor, p: int, grid: tuple[int, int, int], in_chans: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, L, p^3 C] -> [B, C, h p, w p, d p]."""
    B = patches.shape[0]
    h, w, d = grid
    x = patches.reshape(B, h, w, d, p, p, p, in_chans)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, in_chans, h * p, w * p, d * p)


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos position embedding [L, dim] (float32), one row per grid position in token order.

    The dim is split in six parts of k = dim / 6: sin(h), cos(h), sin(w), cos(w), sin(d), cos(d) with
    frequencies 1 / 10000^(i / k), i = 0..k-1, and h, w, d the integer grid coordinates.
    """
    if dim % 6:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 6, got {dim}")
    k = dim // 6
    omega = 1.0 / (10000.0 ** (torch.arange(k, dtype=torch.float32) / k))
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in grid], indexing="ij")
    parts = []
    for coord in axes:
        angles = coord.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1)


class PatchEmbed(nn.Module):
    """Linear embedding of (p1, p2, p3, c)-ordered patches: [B, N, p^3 C] -> [B, N, D]."""

    def __init__(self, patch_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, embed_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches)


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). [B, N, C] -> [B, N, C]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        drop_path: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    """3D ViT encoder: patch embedding, optional class token, position embedding, blocks, final norm.

    ``pos_embed`` [1, L, D] has one row per grid position (none for the class token); it is a buffer
    for ``"sincos"`` and a parameter (init N(0, 0.02)) for ``"learned"``.
    """

    def __init__(
        self,
        *,
        grid: tuple[int, int, int],
        patch_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        drop_path: float = 0.0,
        pos_embed: str = "sincos",
        cls_token: bool = True,
        grad_checkpointing: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.embed_dim = embed_dim
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed(patch_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        L = math.prod(self.grid)
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_pos_embed_3d(self.grid, embed_dim).unsqueeze(0))
        elif pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, L, embed_dim))
        else:
            raise ValueError(f"pos_embed={pos_embed!r} must be 'sincos' or 'learned'")
        # stochastic depth rising linearly to drop_path (plain Python: works under torch.device("meta"))
        rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, eps, rates[i], backend) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def embed(self, patches: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Patches [B, N, P] at grid positions ``ids`` [B, N] (None: all L in order) -> tokens [B, (1+)N, D]."""
        x = self.patch_embed(patches)
        pos = self.pos_embed
        if ids is None:
            x = x + pos
        else:
            x = x + pos.expand(x.shape[0], -1, -1).gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x

    def run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens [B, N, D] -> (final normed output [B, N, D], every block's output before the norm)."""
        outs = []
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
            outs.append(x)
        return self.norm(x), outs

    def forward(
        self, patches: torch.Tensor, ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Patches [B, N, P] (grid positions ``ids`` or all) -> (normed output, block outputs)."""
        return self.run_blocks(self.embed(patches, ids))


def init_weights(module: nn.Module) -> None:
    """MAE-style init: xavier-uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
