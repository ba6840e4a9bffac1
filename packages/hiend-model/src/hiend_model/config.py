"""Validated model configurations and the paper's presets.

``MAEConfig`` describes the Hi-End-MAE pre-training model (DESIGN.md, "What Hi-End-MAE computes"),
``UNETRConfig`` the fine-tuning UNETR ("What UNETR computes"). Both are pydantic models with
``extra="forbid"``: an unknown or misspelt field is an error, and every error names the bad value.
NaN and infinity are refused in every float field (``allow_inf_nan=False``; :func:`finite_error`
names the field and the value given).
Sizes are in voxels; ``img_size`` is stored as an (H, W, D) triple (an int means a cube).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from hiend_data.errors import InputError, from_validation_error

from .decoders import DECODERS, decoder_name, default_taps

AttnBackend = Literal["auto", "xformers", "sdpa", "math"]
Triple = tuple[int, int, int]


def _triple(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value)
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return (value[0],) * 3
    return value


class EncoderConfig(BaseModel):
    """Fields shared by the pre-training model and the UNETR: the 3D ViT encoder."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    img_size: Triple = (96, 96, 96)
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    tap_blocks: tuple[int, ...] | None = None
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    attn_backend: AttnBackend = "auto"

    @field_validator("img_size", mode="before")
    @classmethod
    def _img_triple(cls, value: object) -> object:
        return _triple(value)

    @model_validator(mode="after")
    def _check_encoder(self):  # noqa: ANN202 - pydantic hook
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if any(s < 1 for s in self.img_size):
            raise ValueError(f"img_size={self.img_size} must be positive")
        bad = [s for s in self.img_size if s % self.patch_size]
        if bad:
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} must be > 0")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path={self.drop_path} must be in [0, 1)")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be > 0")
        if self.tap_blocks is None:
            object.__setattr__(self, "tap_blocks", default_taps(self.depth))
        taps = self.tap_blocks
        if any(not 0 <= t < self.depth for t in taps) or list(taps) != sorted(set(taps)):
            raise ValueError(f"tap_blocks={taps} must be increasing block indices in [0, {self.depth})")
        return self

    @property
    def grid(self) -> Triple:
        """Token grid (H/p, W/p, D/p)."""
        return tuple(s // self.patch_size for s in self.img_size)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        """L = number of tokens (without the class token)."""
        g = self.grid
        return g[0] * g[1] * g[2]

    @property
    def patch_dim(self) -> int:
        """P = p^3 C values per patch."""
        return self.patch_size**3 * self.in_chans


def nonfinite(value: Any, name: str) -> str | None:
    """``"name: inf is not a finite number"`` for the first NaN or infinite float in ``value``
    (dicts, lists and tuples are walked: ``"model.mlp_ratio: nan ..."``), else None. The rule of every
    hiend config: a number that is not finite is refused where it is given, before anything runs."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number"
    if isinstance(value, dict):
        items: Any = ((f"{name}.{k}" if name else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{name}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for key, v in items if (found := nonfinite(v, key)) is not None), None)


def finite_error(exc: ValidationError, prefix: str) -> InputError | None:
    """pydantic's "Input should be a finite number" (``allow_inf_nan=False``) as one InputError line
    naming the field and the value given (``prefix: lr: inf is not a finite number``); None when
    ``exc`` holds no such error."""
    for err in exc.errors():
        if err["type"] == "finite_number":
            where = ": ".join([prefix, ".".join(str(x) for x in err["loc"])] if err["loc"] else [prefix])
            return InputError(f"{where}: {err['input']} is not a finite number")
    return None


#: The decoders' names (:data:`hiend_model.decoders.DECODERS`; ``"mae"`` is accepted for ``"plain"``).
DecoderKind = Literal["hiend", "plain"]
#: Fields whose unset value depends on ``decoder`` (resolve_config re-derives them when it changes).
DECODER_DEPENDENT = ("decoder_depth", "cross_depth")


class MAEConfig(EncoderConfig):
    """Masked-autoencoder pre-training model: the encoder and one of two decoders.

    ``decoder`` names an entry of :data:`hiend_model.decoders.DECODERS`, which gives the unset depths:
    ``"hiend"`` (default): Hi-End-MAE's hierarchical encoder-driven decoder, ``decoder_depth``
    self-attention blocks (default 2) then ``cross_depth`` cross-attention blocks (default and required:
    one per tapped block). ``"plain"`` (``"mae"`` is accepted for it, and read so from saved
    checkpoints): the paper's ablation baseline, plain MAE (He et al. 2022), ``decoder_depth`` plain
    self-attention blocks (default 5) on the projected final encoder output only; ``cross_depth`` is 0
    (no cross-attention). The unset depths (None) are resolved on validation, so a dumped config always
    holds numbers.
    """

    pos_embed: Literal["sincos", "learned"] = "sincos"
    decoder: DecoderKind = "hiend"
    decoder_embed_dim: int = 384
    decoder_num_heads: int = 12
    decoder_depth: int | None = None
    cross_depth: int | None = None
    mask_ratio: float = 0.75

    @field_validator("decoder", mode="before")
    @classmethod
    def _decoder_name(cls, value: object) -> object:
        return decoder_name(value)

    @model_validator(mode="after")
    def _check_mae(self):  # noqa: ANN202
        if self.decoder_embed_dim < 1 or self.decoder_num_heads < 1:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} / decoder_num_heads="
                f"{self.decoder_num_heads} must be >= 1"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads={self.decoder_num_heads}"
            )
        spec = DECODERS[self.decoder]
        if self.decoder_depth is None:
            object.__setattr__(self, "decoder_depth", spec.default_depth)
        if self.decoder_depth < 0:
            raise ValueError(f"decoder_depth={self.decoder_depth} must be >= 0")
        taps = spec.taps(self.depth, self.tap_blocks)
        if self.cross_depth is None:
            object.__setattr__(self, "cross_depth", spec.cross_depth(taps))
        if self.cross_depth != spec.cross_depth(taps) and not spec.cross_attention:
            raise ValueError(
                f"cross_depth={self.cross_depth} with decoder={self.decoder!r}: the plain MAE decoder has no "
                "cross-attention blocks (leave cross_depth unset or 0; decoder_depth counts its blocks)"
            )
        if self.cross_depth != spec.cross_depth(taps):
            raise ValueError(
                f"cross_depth={self.cross_depth} must equal the number of tap_blocks "
                f"{self.tap_blocks} (one cross-attention block per tapped block)"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1)")
        keep = int(self.num_patches * (1 - self.mask_ratio))
        if not 1 <= keep < self.num_patches:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} leaves {keep} of {self.num_patches} tokens visible; "
                "at least one must be visible and one masked"
            )
        if self.pos_embed == "sincos" and self.embed_dim % 6:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by 6, which the 3D sin-cos "
                "position embedding needs; use a multiple of 6 or pos_embed='learned'"
            )
        if self.decoder_embed_dim % 6:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} is not divisible by 6, which "
                "the decoder's 3D sin-cos position embedding needs"
            )
        return self

    def encoder_fields(self) -> dict:
        """The fields a UNETR built on this encoder inherits."""
        return {k: getattr(self, k) for k in EncoderConfig.model_fields}


class UNETRConfig(EncoderConfig):
    """UNETR with the (pre-trained) ViT as its encoder; learned position embeddings, no class token."""

    num_classes: int = 14
    feature_size: int = 16

    @model_validator(mode="after")
    def _check_unetr(self):  # noqa: ANN202
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1")
        if self.feature_size < 1:
            raise ValueError(f"feature_size={self.feature_size} must be >= 1")
        if len(self.tap_blocks or ()) != 3:
            raise ValueError(f"tap_blocks={self.tap_blocks}: the UNETR needs exactly three skip blocks")
        return self

    @property
    def final_upsample(self) -> Literal["transpose", "resize"]:
        """Last decoder stage: transposed conv for patch 16, else resize to the input + 3x3x3 conv."""
        return "transpose" if self.patch_size == 16 else "resize"


PRESETS: dict[str, MAEConfig] = {
    "vit-b16": MAEConfig(
        img_size=96,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_embed_dim=384,
        decoder_num_heads=12,
    ),
    "vit-l12": MAEConfig(
        img_size=96,
        patch_size=12,
        embed_dim=1536,
        depth=12,
        num_heads=16,
        decoder_embed_dim=528,
        decoder_num_heads=16,
    ),
    "vit-l16": MAEConfig(
        img_size=96,
        patch_size=16,
        embed_dim=1536,
        depth=12,
        num_heads=16,
        decoder_embed_dim=528,
        decoder_num_heads=16,
    ),
    # Trains on a laptop CPU in minutes: 48^3 crops, 216 tokens of 8^3, 96-d (the parity fixture's sizes).
    "tiny": MAEConfig(
        img_size=48,
        patch_size=8,
        embed_dim=96,
        depth=12,
        num_heads=4,
        decoder_embed_dim=48,
        decoder_num_heads=4,
    ),
}


def resolve_config(preset_or_config: str | MAEConfig | dict, **overrides: object) -> MAEConfig:
    """A preset name, a config or a dict of fields -> a validated :class:`MAEConfig`.

    Overriding ``decoder`` with another value also re-derives ``decoder_depth`` and ``cross_depth``
    (unless they are overridden too): ``resolve_config("vit-b16", decoder="plain")`` has 5 plain blocks.

    Raises InputError for an unknown preset (listing the known ones) or invalid fields.
    """
    if isinstance(preset_or_config, MAEConfig):
        base = preset_or_config.model_dump()
    elif isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise InputError(f"unknown preset {preset_or_config!r}; known presets: {', '.join(PRESETS)}")
        base = PRESETS[preset_or_config].model_dump()
    elif isinstance(preset_or_config, dict):
        base = dict(preset_or_config)
    else:
        raise InputError(f"expected a preset name, MAEConfig or dict, got {type(preset_or_config).__name__}")
    if "decoder" in overrides and decoder_name(overrides["decoder"]) != decoder_name(
        base.get("decoder", "hiend")
    ):
        # Another decoder: its own default depths unless they are given too.
        for name in DECODER_DEPENDENT:
            if name not in overrides:
                base[name] = None
    base.update(overrides)
    if "depth" in overrides and "tap_blocks" not in overrides:
        base["tap_blocks"] = None
    return validated(MAEConfig, base)


def validated(cls: type[BaseModel], fields: dict) -> BaseModel:
    """Build ``cls(**fields)``, turning pydantic's multi-line error into a one-line InputError."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        prefix = f"invalid {cls.__name__}"
        raise finite_error(exc, prefix) or from_validation_error(exc, prefix, cls.model_fields) from None
