"""The preprocessing plan: what every scan goes through before a model sees it.

A :class:`Plan` is stored next to a preprocessed cache (``plan.json``) and inside every model
checkpoint, so that a scan segmented later goes through exactly the preprocessing its model was
trained on. Defaults are the paper's CT plan (:meth:`Plan.paper`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

_AXES = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


class Plan(BaseModel):
    """How to preprocess a scan.

    Fields:
        orientation: three axis codes the array axes are turned to (``"RAS"``: axis 0 points to the
            patient's right, 1 anterior, 2 superior).
        spacing: target voxel size in mm per array axis (after reorientation).
        modality: ``"ct"`` (clip to ``window`` HU, scale to [0, 1]) or ``"mri"`` (z-score on foreground).
        window: CT intensity window ``(low, high)`` in HU mapped to [0, 1].
        crop_to_foreground: crop to the bounding box of the foreground (CT: voxels > 0 after scaling;
            MRI: non-zero voxels), labelled voxels always kept.
        crop_size: training crop size in voxels (used by the sampler and sliding-window inference).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    modality: Literal["ct", "mri"] = "ct"
    window: tuple[float, float] = (-175.0, 250.0)
    crop_to_foreground: bool = True
    crop_size: tuple[int, int, int] = (96, 96, 96)

    @classmethod
    def paper(cls) -> Plan:
        """The paper's CT plan: RAS, 1.5 mm isotropic, [-175, 250] HU -> [0, 1], foreground crop, 96^3."""
        return cls()

    @field_validator("orientation")
    @classmethod
    def _check_orientation(cls, value: str) -> str:
        code = value.upper()
        if (
            len(code) != 3
            or any(c not in _AXES for c in code)
            or len({frozenset((c, _AXES[c])) for c in code}) != 3
        ):
            raise ValueError(f"orientation {value!r} must name three different axes, e.g. 'RAS' or 'LPS'")
        return code

    @field_validator("spacing")
    @classmethod
    def _check_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(v > 0 and v < float("inf") for v in value):
            raise ValueError(f"spacing {value} must be finite and > 0 mm")
        return value

    @field_validator("crop_size")
    @classmethod
    def _check_crop(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(v >= 1 for v in value):
            raise ValueError(f"crop_size {value} must be >= 1 voxel per axis")
        return value

    @model_validator(mode="after")
    def _check_window(self) -> Plan:
        lo, hi = self.window
        if not lo < hi:
            raise ValueError(f"window {self.window}: low must be below high")
        return self

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) that :meth:`from_json` reads back."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Inverse of :meth:`to_json` (also accepts ``model_dump_json`` output)."""
        return cls.model_validate_json(text)

    def digest(self) -> str:
        """Short hash of the plan's content: caches use it to tell whether a case is up to date."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
