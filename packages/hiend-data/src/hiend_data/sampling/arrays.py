"""In-memory stand-ins for the cache: :class:`ArrayCase` and :class:`ArrayCache` (tests, small data)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


@dataclass
class ArrayCase:
    """A case held in memory (or any arrays): the same attributes the sampler reads from a CachedCase.

    image: ``[C, X, Y, Z]`` (or ``[X, Y, Z]``, taken as one channel); label: ``[X, Y, Z]`` ints or None.
    foreground: flat indices of labelled voxels (label > 0) or, unlabelled, of image[0] > 0; computed
    when first read if not given.
    """

    image: np.ndarray
    label: np.ndarray | None = None
    _foreground: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.image.ndim == 3:
            self.image = self.image[None]
        # C order is what the sampler's flat voxel indices and single-pass copies assume.
        self.image = np.ascontiguousarray(self.image)
        if self.label is not None:
            self.label = np.ascontiguousarray(self.label)
        if self.image.ndim != 4:
            raise InputError(f"image must be [C, X, Y, Z], got shape {self.image.shape}")
        if self.label is not None and self.label.shape != self.image.shape[1:]:
            raise InputError(f"label shape {self.label.shape} != image shape {self.image.shape[1:]}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]

    @property
    def foreground(self) -> np.ndarray:
        if self._foreground is None:
            mask = self.label > 0 if self.label is not None else self.image[0] > 0
            self._foreground = np.flatnonzero(mask)
        return self._foreground


class ArrayCache:
    """A stand-in for :class:`hiend_data.cache.Cache` over in-memory cases: ``cases`` and ``case(name)``."""

    def __init__(self, cases: dict[str, ArrayCase]) -> None:
        self._cases = dict(cases)

    @property
    def cases(self) -> list[str]:
        return list(self._cases)

    def case(self, name: str) -> ArrayCase:
        return self._cases[name]
