"""Crop centres: per opened case, voxels drawn uniformly among those of a kind (foreground or background).

A voxel of a kind is drawn by rejection: random voxels are read from the memory-mapped array until one
of the right kind turns up, so neither index list is materialised or even loaded. A kind with no hit in
``REJECT_ROUNDS x REJECT_BATCH`` tries is rare in that case: from then on it is drawn from an index
list (the cache's ``foreground`` for labelled voxels, otherwise ``flatnonzero`` of the mask, built once;
small, since the kind is rare). Both ways draw exactly uniformly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

#: Candidate voxels per rejection round.
REJECT_BATCH = 32
#: Rounds without a hit before a kind counts as rare in a case (256 tries).
REJECT_ROUNDS = 8


class OpenedCase:
    """Per-case sampling state: plain views of the arrays, the kinds found rare and their index lists.

    case: a cached case (or :class:`~hiend_data.sampling.arrays.ArrayCase`); centres: ``"image"``
    (foreground = image[0] > 0) or ``"label"`` (label > 0); image_threshold: with it, both kinds also
    need ``image[0] > image_threshold`` (MONAI's ``image_threshold``).

    A case with ``stored`` (a compact cache's codes) is read through it: ``image`` is then the stored
    array and ``decode`` its code -> value multiplier (else None). Codes are > 0 exactly where the
    values are (:mod:`hiend_data.storage`), so the kinds, and every draw, are those of the float32
    values; ``image_threshold`` is compared in code units (``threshold / decode``).
    """

    def __init__(self, case: Any, centres: str, image_threshold: float | None = None) -> None:
        self.case = case
        stored = getattr(case, "stored", None)
        image = case.image if stored is None else stored
        #: code -> value multiplier of ``image`` (None: it holds the values)
        self.decode: float | None = None if stored is None else getattr(case, "image_scale", None)
        if image.ndim == 3:
            image = image[None]
        # Plain ndarray views of the memmaps: indexing an np.memmap subclass costs microseconds each.
        self.image = image if type(image) is np.ndarray else np.asarray(image)
        label = case.label
        self.label = None if label is None else (label if type(label) is np.ndarray else np.asarray(label))
        self.shape: tuple[int, int, int] = tuple(self.image.shape[1:])  # type: ignore[assignment]
        if centres == "label":
            if self.label is None:
                raise InputError("centres='label' (fine-tuning) needs labelled cases; this case has no label")
            self.source = self.label
        else:
            self.source = self.image[0]
        self.flat = self.source.reshape(-1)  # a view: the cache's arrays are C-contiguous
        # MONAI's image_threshold: both kinds of centre also need image[0] > threshold.
        self.gate = None if image_threshold is None else self.image[0].reshape(-1)
        self.threshold = (
            image_threshold
            if image_threshold is None or self.decode is None
            else image_threshold / self.decode
        )
        self.centres = centres
        #: kinds (True: foreground) that rejection found rare here: drawn from their index list instead
        self.rare: set[bool] = set()
        self._indices: dict[bool, np.ndarray] = {}
        self._class_indices: dict[int, np.ndarray] = {}
        self._classes: list[int] | None = None

    def classes(self) -> list[int]:
        """Foreground label values present in the case (the cache's list, else from the label map)."""
        if self._classes is None:
            listed = getattr(self.case, "classes", None)
            if listed is None:
                listed = np.unique(self.flat[self.flat > 0])
            self._classes = [int(v) for v in listed]
        return self._classes

    def draw_class(self, rng: np.random.Generator) -> int | None:
        """One flat voxel index: a class uniform among :meth:`classes`, then a voxel of it uniformly."""
        classes = self.classes()
        if not classes:
            return None
        value = classes[int(rng.integers(len(classes)))]
        idx = self._class_indices.get(value)
        if idx is None:
            lookup = getattr(self.case, "class_indices", None)
            idx = np.asarray(lookup(value)) if lookup is not None else np.flatnonzero(self.flat == value)
            self._class_indices[value] = idx
        return int(idx[rng.integers(idx.size)]) if idx.size else None

    def indices(self, fg: bool) -> np.ndarray:
        """Flat indices of all foreground (fg=True) or background voxels; only used for rare kinds."""
        if fg not in self._indices:
            if self.gate is not None:
                kind = self.flat > 0 if fg else self.flat <= 0
                idx = np.flatnonzero(kind & (self.gate > self.threshold))
            elif fg and (self.centres == "label" or self.label is None):
                idx = np.asarray(self.case.foreground)
            else:
                idx = np.flatnonzero(self.flat > 0) if fg else np.flatnonzero(self.flat <= 0)
            self._indices[fg] = idx
        return self._indices[fg]

    def _of_kind(self, cand: np.ndarray, fg: bool | np.ndarray) -> np.ndarray:
        """Whether each candidate flat index is a voxel of the kind wanted (``fg`` broadcasts against it)."""
        vals = self.flat[cand]
        ok = np.where(fg, vals > 0, vals <= 0)
        if self.gate is not None:
            ok &= self.gate[cand] > self.threshold
        return ok

    def draw(self, fg: bool, rng: np.random.Generator) -> int | None:
        """One flat voxel index, uniform among voxels of the kind; None if there is none."""
        if fg not in self.rare:
            for _ in range(REJECT_ROUNDS):
                cand = rng.integers(0, self.flat.size, size=REJECT_BATCH)
                hit = np.flatnonzero(self._of_kind(cand, fg))
                if hit.size:
                    return int(cand[hit[0]])
            self.rare.add(fg)  # from now on straight to the index list
        idx = self.indices(fg)
        if idx.size == 0:
            return None
        return int(idx[rng.integers(idx.size)])

    def draw_many(self, fg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One flat voxel index per entry of ``fg`` (bool [N]: foreground wanted), each uniform among
        the voxels of its kind; the kind is swapped where the volume has none of it (MONAI's rule).
        Returns (flat indices int64 [N], kinds used bool [N]). One vectorised rejection round first
        (unless both kinds are rare), then :meth:`draw` for the entries it did not settle."""
        n = len(fg)
        fg = fg.copy()
        out = np.full(n, -1, dtype=np.int64)
        if len(self.rare) < 2:
            cand = rng.integers(0, self.flat.size, size=(n, REJECT_BATCH))
            ok = self._of_kind(cand, fg[:, None])
            for kind in self.rare:
                ok[fg == kind] = False  # a rare kind is left to its index list
            first = ok.argmax(axis=1)
            rows = np.flatnonzero(ok[np.arange(n), first])
            out[rows] = cand[rows, first[rows]]
        for i in np.flatnonzero(out < 0):
            idx = self.draw(bool(fg[i]), rng)
            if idx is None:
                fg[i] = not fg[i]
                idx = self.draw(bool(fg[i]), rng)
            if idx is None:
                raise InputError("cannot sample from an empty volume")
            out[i] = idx
        return out, fg
