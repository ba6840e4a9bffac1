"""Reading a cache: :class:`Cache` (its plan, label names and checked case metadata) and
:class:`CachedCase` (one case's arrays, memory-mapped on first access)."""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..jsonfile import read_json
from ..plan import Plan
from ..preprocess import PreprocessRecord
from ..storage import decode
from .layout import READ_FORMATS, read_cache_label_names
from .meta import _checked_meta


@dataclass
class CachedCase:
    """One preprocessed case of a :class:`Cache`; arrays are memory-mapped on first access.

    stored: the image as stored, ``[C, X, Y, Z]`` of :attr:`image_dtype` (memory-mapped), whose values
    are ``stored * image_scale`` (``image_scale`` None: the stored numbers are the values); image:
    those values as float32 ``[C, X, Y, Z]`` (the memory map itself for a float32 cache, else decoded
    into memory: 4 bytes a voxel; the sampler reads ``stored`` instead); label: integer ``[X, Y, Z]``
    or None; foreground: int64 flat indices into ``X*Y*Z`` (labelled: label > 0, else image[0] > 0;
    a uniform subsample when there are more than the cache's cap); classes: foreground label values
    present (0 left out).
    """

    name: str
    folder: Path
    meta: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def _npy(self, suffix: str) -> np.ndarray:
        if suffix not in self._arrays:
            self._arrays[suffix] = np.load(self.folder / f"{self.name}{suffix}.npy", mmap_mode="r")
        return self._arrays[suffix]

    @property
    def stored(self) -> np.ndarray:
        return self._npy("")

    @property
    def image_dtype(self) -> str:
        """``"uint8"``, ``"int16"``, ``"float16"`` or ``"float32"`` (caches without the field: float32)."""
        return str(self.meta.get("image_dtype", "float32"))

    @property
    def image_scale(self) -> float | None:
        """Decode multiplier: value = stored code * image_scale (None: stored values are the values)."""
        scale = self.meta.get("image_scale")
        return None if scale is None else float(scale)

    @property
    def image(self) -> np.ndarray:
        return decode(self.stored, self.image_scale)

    @property
    def label(self) -> np.ndarray | None:
        return self._npy("_seg") if self.meta.get("labelled") else None

    @property
    def foreground(self) -> np.ndarray:
        return self._npy("_fg")

    @property
    def classes(self) -> list[int]:
        return list(self.meta.get("classes", []))

    def class_indices(self, value: int) -> np.ndarray:
        """Flat indices of voxels with ``label == value`` (stored list, possibly subsampled; 0 computed)."""
        if not self.meta.get("labelled"):
            raise InputError(f"case {self.name!r} has no label map")
        if value == 0:
            return np.flatnonzero(np.asarray(self.label).reshape(-1) == 0)
        if value not in self.classes:
            return np.zeros(0, dtype=np.int64)
        k = self.classes.index(value)
        offsets = self.meta["class_offsets"]
        return self._npy("_cls")[offsets[k] : offsets[k + 1]]

    @functools.cached_property
    def record(self) -> PreprocessRecord:
        return PreprocessRecord.model_validate(self.meta["record"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]


class Cache:
    """A preprocessed cache folder (see :mod:`hiend_data.cache`). Open with :meth:`Cache.open`."""

    #: opened cases kept (with their memory maps); bounded so pools of 10,000 scans stay under the
    #: kernel's limit on mappings per process
    keep_open = 256

    def __init__(
        self,
        root: Path,
        plan: Plan,
        metas: dict[str, dict[str, Any]],
        label_names: dict[int, str] | None = None,
    ) -> None:
        self.root = root
        self.plan = plan
        #: label value -> name (background left out) from ``root/labels.json``; None: not known
        self.label_names = label_names
        self._metas = metas
        self.cases: list[str] = sorted(metas)
        self._open: OrderedDict[str, CachedCase] = OrderedDict()

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Cache:
        """Read ``root/plan.json``, the label names (``root/labels.json``, if there) and the metadata of
        every complete case made under that plan, each checked (:mod:`hiend_data.cache`, "Reading trusts
        nothing"): InputError naming the first file that fails and its field. Case files of other
        plans or formats are skipped (the next preprocess rewrites them); hidden files are ignored."""
        root = Path(root)
        plan_path = root / "plan.json"
        if not plan_path.exists():
            raise InputError(
                f"{root}: not a hiend-data cache (no plan.json; make one with `hiend-data preprocess`)"
            )
        try:
            plan = Plan.from_json(plan_path.read_bytes())
        except ValueError as exc:
            raise InputError(f"{plan_path}: invalid plan ({exc})") from None
        digest = plan.digest()
        metas = {}
        for f in sorted((root / "cases").glob("*.json")):
            if f.name.startswith("."):
                continue
            meta = read_json(f, expect=dict)
            if meta.get("format") in READ_FORMATS and meta.get("plan_digest") == digest:
                metas[f.name.removesuffix(".json")] = _checked_meta(f, meta)
        return cls(root, plan, metas, read_cache_label_names(root))

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, name: str | int) -> CachedCase:
        """The case named ``name`` (or the ``name``-th in :attr:`cases`)."""
        if isinstance(name, int):
            name = self.cases[name]
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        if name not in self._metas:
            raise InputError(f"{self.root}: no case {name!r} in the cache")
        case = CachedCase(name, self.root / "cases", self._metas[name])
        self._open[name] = case
        if len(self._open) > self.keep_open:
            self._open.popitem(last=False)
        return case
