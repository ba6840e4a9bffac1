"""Random crops for pre-training and fine-tuning: the paper's recipe, fast.

Per volume, ``num_samples`` crops of ``crop_size`` voxels. Each crop's centre is a foreground voxel with
probability ``pos / (pos + neg)`` and a background voxel otherwise, drawn uniformly among the voxels of
that kind (MONAI's ``RandCropByPosNegLabeld``; for unlabelled data the image itself is the "label").

* Foreground: ``centres="image"`` (pre-training): voxels whose first channel is > 0 after scaling;
  ``centres="label"`` (fine-tuning): voxels with a label > 0. Background is the rest (<= 0, label 0).
  When a volume has no voxel of the drawn kind, the other kind is used (as MONAI does).
* Uniform voxels of one kind are drawn by rejection: random voxels are read from the memory-mapped array
  until one of the right kind turns up, so neither the foreground nor the background index list is
  materialised or even loaded. Only when a kind is rare (no hit in 256 tries) does the sampler fall back
  to an index list: the cache's ``foreground`` for labelled voxels, otherwise ``flatnonzero`` of the mask,
  computed once per opened case (it is small, since the kind is rare). Both ways draw exactly uniformly.
* The centre is moved the least needed for the crop to fit (``start = clip(c - size // 2, 0, dim - size)``,
  MONAI's ``correct_crop_centers`` for even sizes). Only along an axis where the volume is smaller than
  the crop is the crop padded, symmetrically (MONAI's ``SpatialPad``: ``(size - dim) // 2`` before), with
  ``pad_value`` (default 0: the minimum of a CT image scaled to [0, 1]; for z-scored MRI 0 is the
  foreground mean) in the image and 0 (background) in the label.
* Augmentation (:mod:`hiend_data.augment`) is applied identically to image and label. The crop is read
  from the memmap as a view and copied exactly once into the output buffer, through a flipped/rotated
  view of that buffer; intensity scale and shift run in place.

Output: image ``float32 [C, *crop_size]`` C-contiguous, label ``[*crop_size]`` of the cache's integer
dtype (or None). Randomness only comes from the ``rng`` passed in; :meth:`CropSampler.rng` gives
independent streams keyed by integers (epoch, worker, case position) through ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .augment import AugmentParams, apply_intensity, draw_augment, inverse_view
from .errors import InputError

_REJECT_BATCH = 32
_REJECT_ROUNDS = 8


class SamplerConfig(BaseModel):
    """How crops are drawn and augmented. Sizes in voxels, probabilities in [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(8, ge=1, description="crops per volume")
    crop_size: tuple[int, int, int] = (96, 96, 96)
    pos: float = Field(6.0, ge=0, description="weight of foreground-centred crops")
    neg: float = Field(2.0, ge=0, description="weight of background-centred crops")
    centres: Literal["image", "label"] = Field(
        "image", description="foreground = image[0] > 0 ('image', pre-training) or label > 0 ('label')")
    flip_prob: float = Field(0.5, ge=0, le=1, description="per axis")
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90_prob: float = Field(0.3, ge=0, le=1)
    rot90_axes: tuple[int, int] = (0, 1)
    rot90_max_k: int = Field(3, ge=1, le=3)
    scale_prob: float = Field(0.1, ge=0, le=1)
    scale_range: float = Field(0.1, ge=0, description="image * (1 + u), u ~ U(-r, r)")
    shift_prob: float = Field(0.1, ge=0, le=1)
    shift_range: float = Field(0.1, ge=0, description="image + u, u ~ U(-r, r)")
    pad_value: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> SamplerConfig:
        if self.pos + self.neg <= 0:
            raise ValueError(f"pos + neg must be > 0, got pos={self.pos} neg={self.neg}")
        if any(s < 1 for s in self.crop_size):
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if any(a not in (0, 1, 2) for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise ValueError(f"flip_axes must be distinct spatial axes 0..2, got {self.flip_axes}")
        a, b = self.rot90_axes
        if a == b or a not in (0, 1, 2) or b not in (0, 1, 2):
            raise ValueError(f"rot90_axes must be two distinct spatial axes 0..2, got {self.rot90_axes}")
        if self.rot90_prob > 0 and self.crop_size[a] != self.crop_size[b]:
            raise ValueError(f"rot90 needs equal crop sizes along rot90_axes {self.rot90_axes} so that "
                             f"every crop has the same shape, got crop_size {self.crop_size}")
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
        """The paper's fine-tuning recipe: 4 crops of 96^3, pos 1 : neg 1 on labelled voxels, flips
        and rot90 p 0.2; intensity scale and shift p 0.1 (+-0.1) as in the UNETR BTCV recipe."""
        base: dict[str, Any] = dict(num_samples=4, pos=1.0, neg=1.0, centres="label",
                                    flip_prob=0.2, rot90_prob=0.2)
        base.update(overrides)
        return cls(**base)


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


class _Opened:
    """Per-case sampling state: flat views for rejection and lazily built fallback index lists."""

    def __init__(self, case: Any, centres: str) -> None:
        self.case = case
        image = case.image
        if image.ndim == 3:
            image = image[None]
        self.image = image
        self.label = case.label
        self.shape: tuple[int, int, int] = tuple(image.shape[1:])  # type: ignore[assignment]
        if centres == "label":
            if self.label is None:
                raise InputError("centres='label' (fine-tuning) needs labelled cases; this case has no label")
            self.source = self.label
        else:
            self.source = image[0]
        self.flat = self.source.reshape(-1)  # a view: the cache's arrays are C-contiguous
        self.centres = centres
        self.use_rejection = {True: True, False: True}
        self._indices: dict[bool, np.ndarray] = {}

    def indices(self, fg: bool) -> np.ndarray:
        """Flat indices of all foreground (fg=True) or background voxels; only used for rare kinds."""
        if fg not in self._indices:
            if fg and (self.centres == "label" or self.label is None):
                idx = np.asarray(self.case.foreground)
            else:
                src = np.asarray(self.flat)
                idx = np.flatnonzero(src > 0) if fg else np.flatnonzero(src <= 0)
            self._indices[fg] = idx
        return self._indices[fg]

    def draw(self, fg: bool, rng: np.random.Generator) -> int | None:
        """One flat voxel index, uniform among voxels of the kind; None if there is none."""
        if self.use_rejection[fg]:
            n = self.flat.size
            for _ in range(_REJECT_ROUNDS):
                cand = rng.integers(0, n, size=_REJECT_BATCH)
                vals = self.flat[cand]
                hit = np.flatnonzero(vals > 0 if fg else vals <= 0)
                if hit.size:
                    return int(cand[hit[0]])
            self.use_rejection[fg] = False  # rare kind in this case: go straight to the index list
        idx = self.indices(fg)
        if idx.size == 0:
            return None
        return int(idx[rng.integers(idx.size)])


def crop_box(centre: tuple[int, ...], shape: tuple[int, ...], size: tuple[int, ...]
             ) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
    """Source and destination slices of a crop of ``size`` around ``centre`` in a volume of ``shape``.

    Returns (source slices into the volume, destination slices into the crop, whether padding is
    needed). Per axis: the crop is shifted inside the volume when it would cross the border; where
    the volume is smaller than the crop the whole axis is taken and placed at ``(size - dim) // 2``.
    """
    src, dst, padded = [], [], False
    for c, dim, sz in zip(centre, shape, size):
        if dim >= sz:
            start = min(max(int(c) - sz // 2, 0), dim - sz)
            src.append(slice(start, start + sz))
            dst.append(slice(0, sz))
        else:
            before = (sz - dim) // 2
            src.append(slice(0, dim))
            dst.append(slice(before, before + dim))
            padded = True
    return tuple(src), tuple(dst), padded


class CropSampler:
    """Draws augmented crops from a cache (:class:`hiend_data.cache.Cache` or :class:`ArrayCache`).

    cache: has ``cases`` (list of names) and ``case(name)`` returning an object with ``image``
        ``[C, X, Y, Z]`` float (memmap), ``label`` ``[X, Y, Z]`` ints or None and ``foreground``.
    cfg: :class:`SamplerConfig` (default: the pre-training recipe).
    seed: root of every stream from :meth:`rng`; also seeds the default stream used when
        :meth:`sample` is called without ``rng``.
    max_open: how many cases stay opened (memmaps and fallback index lists), least recently used out.
    """

    def __init__(self, cache: Any, cfg: SamplerConfig | None = None, seed: int = 0, max_open: int = 16) -> None:
        self.cache = cache
        self.cfg = cfg if cfg is not None else SamplerConfig.pretrain()
        self.seed = int(seed)
        self.max_open = max(1, int(max_open))
        self.case_names: list[str] = list(cache.cases)
        if not self.case_names:
            raise InputError("the cache holds no cases to sample from")
        self._opened: OrderedDict[str, _Opened] = OrderedDict()
        self._default_rng = self.rng()

    def __len__(self) -> int:
        return len(self.case_names)

    def __getstate__(self) -> dict[str, Any]:
        # Opened memmaps are reopened lazily in each process (safe to pickle into spawned workers).
        state = self.__dict__.copy()
        state["_opened"] = OrderedDict()
        return state

    def rng(self, *key: int) -> np.random.Generator:
        """An independent generator for ``key`` (e.g. ``(epoch, worker)`` or ``(epoch, case_position)``):
        ``Generator(PCG64(SeedSequence(seed, spawn_key=key)))``."""
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=tuple(int(k) for k in key))))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of case positions for ``epoch`` (the same in every worker and rank)."""
        return self.rng(0xE90C, epoch).permutation(len(self.case_names))

    def _open(self, case: str | int) -> _Opened:
        name = self.case_names[case] if isinstance(case, (int, np.integer)) else case
        opened = self._opened.get(name)
        if opened is None:
            opened = _Opened(self.cache.case(name), self.cfg.centres)
            self._opened[name] = opened
            while len(self._opened) > self.max_open:
                self._opened.popitem(last=False)
        else:
            self._opened.move_to_end(name)
        return opened

    def centres(self, case: str | int, rng: np.random.Generator) -> list[tuple[tuple[int, int, int], bool]]:
        """``num_samples`` (centre voxel, is_foreground) pairs before the fit-in-volume correction."""
        st = self._open(case)
        out = []
        for _ in range(self.cfg.num_samples):
            fg = bool(rng.random() < self.cfg.pos_ratio)
            idx = st.draw(fg, rng)
            if idx is None:
                fg = not fg
                idx = st.draw(fg, rng)
            if idx is None:
                raise InputError(f"case {case!r} has an empty volume")
            out.append((tuple(int(v) for v in np.unravel_index(idx, st.shape)), fg))
        return out

    def sample_batch(self, case: str | int, rng: np.random.Generator | None = None,
                     with_params: bool = False) -> tuple[np.ndarray, np.ndarray | None] | tuple[
                         np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
        """All crops of one case stacked: image ``float32 [N, C, *crop_size]``, label ``[N, *crop_size]``
        or None. With ``with_params`` also one dict per crop: ``centre``, ``foreground``, ``start``
        (source slices), ``aug`` (:class:`~hiend_data.augment.AugmentParams`)."""
        rng = self._default_rng if rng is None else rng
        st = self._open(case)
        cfg = self.cfg
        size = cfg.crop_size
        chans = st.image.shape[0]
        images = np.empty((cfg.num_samples, chans, *size), dtype=np.float32)
        labels = None if st.label is None else np.empty((cfg.num_samples, *size), dtype=st.label.dtype)
        records = []
        for i, (centre, fg) in enumerate(self.centres(case, rng)):
            aug = draw_augment(cfg, rng)
            src, dst, padded = crop_box(centre, st.shape, size)
            _copy_crop(st.image, images[i], src, dst, padded, cfg.pad_value, aug, channel_first=True)
            apply_intensity(images[i], aug)
            if labels is not None:
                _copy_crop(st.label, labels[i], src, dst, padded, 0, aug, channel_first=False)
            if with_params:
                records.append(dict(centre=centre, foreground=fg, source=src, aug=aug))
        if with_params:
            return images, labels, records
        return images, labels

    def sample(self, case: str | int, rng: np.random.Generator | None = None
               ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``num_samples`` crops of one case: a list of (image ``float32 [C, *crop_size]`` contiguous,
        label ``[*crop_size]`` or None). The crops are views of one stacked buffer (see
        :meth:`sample_batch`), each itself C-contiguous."""
        images, labels = self.sample_batch(case, rng)  # type: ignore[misc]
        return [(images[i], None if labels is None else labels[i]) for i in range(len(images))]


def _copy_crop(volume: np.ndarray, out: np.ndarray, src: tuple[slice, ...], dst: tuple[slice, ...],
               padded: bool, pad_value: float, aug: AugmentParams, channel_first: bool) -> None:
    """Copy ``volume[src]`` into ``out`` so that ``out`` holds the padded crop augmented by ``aug``."""
    lead = (slice(None),) if channel_first else ()
    if padded:
        out.fill(pad_value)
    target = inverse_view(out, aug, channel_first)
    np.copyto(target[lead + dst], volume[lead + src], casting="same_kind")
