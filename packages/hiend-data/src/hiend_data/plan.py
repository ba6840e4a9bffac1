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
#: The values of :attr:`Plan.cache_dtype`.
CACHE_DTYPES = ("auto", "uint8", "int16", "float16", "float32")
#: ``cache_dtype="auto"`` stores CT as uint8 when one of its 255 steps is at most this many HU (the
#: rounding error is then at most half of it, 1 HU); wider windows are stored as int16.
CT_STEP_TOLERANCE_HU = 2.0


#: the largest magnitude a window end may have (CT values lie within about -1024..+30000 HU)
MAX_WINDOW_HU = 1e6


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
        cache_dtype: how a preprocessed cache stores the image (``hiend_data.cache``); the crops the
            sampler returns are float32 values whatever it is. ``"uint8"`` (CT): the window in 255
            steps, ``(high - low) / 255`` HU each (425/255 = 1.67 HU for the paper's window), read back
            as ``code / 255``; ``"int16"`` (CT): the window in 32,767 steps (0.013 HU for the paper's);
            ``"float16"`` / ``"float32"``: the values themselves (float16: 11 significant bits).
            ``"auto"`` (default): the smallest exact to :data:`CT_STEP_TOLERANCE_HU`: CT as uint8
            when a uint8 step is at most 2 HU (windows up to 510 HU wide: rounding error at most half
            a step, 1 HU, a tenth of CT noise), else int16; MRI z-scores as float32. Rounding is to
            the nearest step, except that values less than half a step above 0 (the window's low end)
            are stored as the first step (error under one step), so that ``image > 0``, the
            foreground the sampler centres crops on, is the same set of voxels in every dtype. See
            :attr:`resolved_cache_dtype`. Not part of :meth:`digest` (a storage choice: each cached
            case records its own dtype, and one stored otherwise is rewritten by the next preprocess).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    modality: Literal["ct", "mri"] = "ct"
    window: tuple[float, float] = (-175.0, 250.0)
    crop_to_foreground: bool = True
    crop_size: tuple[int, int, int] = (96, 96, 96)
    cache_dtype: Literal["auto", "uint8", "int16", "float16", "float32"] = "auto"

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

    @field_validator("cache_dtype", mode="before")
    @classmethod
    def _check_cache_dtype(cls, value: object) -> object:
        if value not in CACHE_DTYPES:
            raise ValueError(f"{value!r} is not a cache dtype (choose one of {', '.join(CACHE_DTYPES)})")
        return value

    @model_validator(mode="after")
    def _check_window(self) -> Plan:
        lo, hi = self.window
        if not lo < hi:
            raise ValueError(f"window {self.window}: low must be below high")
        if max(abs(lo), abs(hi)) > MAX_WINDOW_HU:  # 1e308 would overflow the window's arithmetic
            raise ValueError(f"window {self.window}: beyond +-{MAX_WINDOW_HU:g} HU")
        if self.modality == "mri" and self.cache_dtype in ("uint8", "int16"):
            raise ValueError(
                f"cache_dtype {self.cache_dtype!r} stores a CT window's [0, 1]; MRI z-scores need "
                "float16 or float32"
            )
        return self

    @property
    def resolved_cache_dtype(self) -> str:
        """The dtype a cache stores the image in: :attr:`cache_dtype`, with ``"auto"`` resolved (CT:
        ``"uint8"`` when ``(high - low) / 255 <= CT_STEP_TOLERANCE_HU``, else ``"int16"``; MRI:
        ``"float32"``)."""
        if self.cache_dtype != "auto":
            return self.cache_dtype
        if self.modality == "mri":
            return "float32"
        lo, hi = self.window
        return "uint8" if (hi - lo) / 255 <= CT_STEP_TOLERANCE_HU else "int16"

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) that :meth:`from_json` reads back."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Inverse of :meth:`to_json` (also accepts ``model_dump_json`` output)."""
        return cls.model_validate_json(text)

    def digest(self) -> str:
        """Short hash of what the plan computes: caches use it to tell whether a case is up to date.

        Every field but ``cache_dtype`` (how the values are stored, which each cached case records
        itself), so a plan's digest is the one it had before that field existed.
        """
        fields = self.model_dump(mode="json", exclude={"cache_dtype"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
