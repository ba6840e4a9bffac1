"""The sampler's settings: :class:`SamplerConfig` and the paper's two recipes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SamplerConfig(BaseModel):
    """How crops are drawn and augmented. Sizes in voxels, probabilities in [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    num_samples: int = Field(8, ge=1, description="crops per volume")
    crop_size: tuple[int, int, int] = (96, 96, 96)
    pos: float = Field(6.0, ge=0, description="weight of foreground-centred crops")
    neg: float = Field(2.0, ge=0, description="weight of background-centred crops")
    centres: Literal["image", "label"] = Field(
        "image", description="foreground = image[0] > 0 ('image', pre-training) or label > 0 ('label')"
    )
    flip_prob: float = Field(0.5, ge=0, le=1, description="per axis")
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90_prob: float = Field(0.3, ge=0, le=1)
    rot90_axes: tuple[int, int] = (0, 1)
    rot90_max_k: int = Field(3, ge=1, le=3)
    scale_prob: float = Field(0.1, ge=0, le=1)
    scale_range: float = Field(0.1, ge=0, description="image * (1 + u), u ~ U(-r, r)")
    shift_prob: float = Field(0.1, ge=0, le=1)
    shift_range: float = Field(0.1, ge=0, description="image + u, u ~ U(-r, r)")
    image_threshold: float | None = Field(
        None, description="with centres='label': centres (labelled and background) also need image[0] > this"
    )
    class_balanced: bool = Field(
        False,
        description="with centres='label': a foreground-centred crop picks one of the case's classes "
        "uniformly, then a voxel of that class (small organs as often as large ones)",
    )
    pad_value: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> SamplerConfig:
        if self.class_balanced and self.centres != "label":
            raise ValueError("class_balanced needs centres='label' (a labelled cache)")
        if self.pos + self.neg <= 0:
            raise ValueError(f"pos + neg must be > 0, got pos={self.pos} neg={self.neg}")
        if any(s < 1 for s in self.crop_size):
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if any(a not in (0, 1, 2) for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise ValueError(f"flip_axes must be distinct spatial axes 0..2, got {self.flip_axes}")
        a, b = self.rot90_axes
        if a == b or a not in (0, 1, 2) or b not in (0, 1, 2):
            raise ValueError(f"rot90_axes must be two distinct spatial axes 0..2, got {self.rot90_axes}")
        if self.image_threshold is not None and self.centres != "label":
            raise ValueError(
                "image_threshold only applies with centres='label' (the image is the label otherwise)"
            )
        if self.rot90_prob > 0 and self.crop_size[a] != self.crop_size[b]:
            raise ValueError(
                f"rot90 needs equal crop sizes along rot90_axes {self.rot90_axes} so that "
                f"every crop has the same shape, got crop_size {self.crop_size}"
            )
        return self

    @property
    def pos_ratio(self) -> float:
        """Probability that a crop is centred on foreground: pos / (pos + neg)."""
        return self.pos / (self.pos + self.neg)

    @classmethod
    def pretrain(cls, **overrides: Any) -> SamplerConfig:
        """The paper's pre-training recipe: 8 crops of 96^3, pos 6 : neg 2 on image > 0, flips p 0.5
        per axis, rot90 p 0.3 (k in 1..3, plane of axes 0 and 1), scale and shift p 0.1 (+-0.1)."""
        return cls(**overrides)

    @classmethod
    def finetune(cls, **overrides: Any) -> SamplerConfig:
        """The paper's fine-tuning recipe: 4 crops of 96^3, pos 1 : neg 1 on labelled vs background
        voxels inside the body (image > 0: MONAI's ``image_key``/``image_threshold=0`` of the paper's
        fine-tuning code), flips and rot90 p 0.2, intensity scale and shift p 0.1 (+-0.1)."""
        base: dict[str, Any] = dict(
            num_samples=4,
            pos=1.0,
            neg=1.0,
            centres="label",
            image_threshold=0.0,
            flip_prob=0.2,
            rot90_prob=0.2,
        )
        base.update(overrides)
        return cls(**base)
