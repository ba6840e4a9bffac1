"""Random crops for pre-training and fine-tuning: the paper's recipe, fast.

Per volume, ``num_samples`` crops of ``crop_size`` voxels. Each crop's centre is a foreground voxel with
probability ``pos / (pos + neg)`` and a background voxel otherwise, drawn uniformly among the voxels of
that kind (MONAI's ``RandCropByPosNegLabeld``; for unlabelled data the image itself is the "label").

* Foreground: ``centres="image"`` (pre-training): voxels whose first channel is > 0 after scaling;
  ``centres="label"`` (fine-tuning): voxels with a label > 0. Background is the rest (<= 0, label 0).
  With ``image_threshold`` (fine-tuning preset: 0, as MONAI's ``image_key``/``image_threshold`` in the
  paper's fine-tuning code) both kinds are further limited to voxels with ``image[0] > image_threshold``.
  When a volume has no voxel of the drawn kind, the other kind is used (as MONAI does).
* ``class_balanced`` (labels only): a foreground-centred crop first picks one of the foreground classes
  present in the case, each with the same probability, then a voxel of that class uniformly (the
  cache's per-class index lists, subsampled to its cap for huge classes): nnU-Net's class-aware
  foreground oversampling, MONAI's ``RandCropByLabelClasses`` with equal ratios. Without it a crop's
  centre is uniform over all labelled voxels, so a kidney is centred a hundred times less often than
  the lungs. Its draws come after all others: the default streams are unchanged.
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

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .augment import N_UNIFORMS, AugmentParams, apply_intensity, inverse_view, params_from_uniforms, view_plan
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
    image_threshold: float | None = Field(
        None, description="with centres='label': centres (labelled and background) also need image[0] > this")
    class_balanced: bool = Field(
        False, description="with centres='label': a foreground-centred crop picks one of the case's classes "
        "uniformly, then a voxel of that class (small organs as often as large ones)")
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
            raise ValueError("image_threshold only applies with centres='label' (the image is the label otherwise)")
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
        """The paper's fine-tuning recipe: 4 crops of 96^3, pos 1 : neg 1 on labelled vs background
        voxels inside the body (image > 0: MONAI's ``image_key``/``image_threshold=0`` of the paper's
        fine-tuning code), flips and rot90 p 0.2, intensity scale and shift p 0.1 (+-0.1)."""
        base: dict[str, Any] = dict(num_samples=4, pos=1.0, neg=1.0, centres="label", image_threshold=0.0,
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


class _Opened:
    """Per-case sampling state: flat views for rejection and lazily built fallback index lists."""

    def __init__(self, case: Any, centres: str, image_threshold: float | None = None) -> None:
        self.case = case
        image = case.image
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
        self.threshold = image_threshold
        self.centres = centres
        self.use_rejection = {True: True, False: True}
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

    def draw(self, fg: bool, rng: np.random.Generator) -> int | None:
        """One flat voxel index, uniform among voxels of the kind; None if there is none."""
        if self.use_rejection[fg]:
            n = self.flat.size
            for _ in range(_REJECT_ROUNDS):
                cand = rng.integers(0, n, size=_REJECT_BATCH)
                vals = self.flat[cand]
                ok = vals > 0 if fg else vals <= 0
                if self.gate is not None:
                    ok &= self.gate[cand] > self.threshold
                hit = np.flatnonzero(ok)
                if hit.size:
                    return int(cand[hit[0]])
            self.use_rejection[fg] = False  # rare kind in this case: go straight to the index list
        idx = self.indices(fg)
        if idx.size == 0:
            return None
        return int(idx[rng.integers(idx.size)])

    def draw_many(self, fg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One flat voxel index per entry of ``fg`` (bool [N]: foreground wanted), each uniform among
        the voxels of its kind; the kind is swapped where the volume has none of it (MONAI's rule).
        Returns (flat indices int64 [N], kinds used bool [N]). One vectorised rejection round first,
        then :meth:`draw` for the few entries it did not settle."""
        n = len(fg)
        fg = fg.copy()
        out = np.full(n, -1, dtype=np.int64)
        if self.use_rejection[True] or self.use_rejection[False]:
            cand = rng.integers(0, self.flat.size, size=(n, _REJECT_BATCH))
            vals = self.flat[cand]
            ok = np.where(fg[:, None], vals > 0, vals <= 0)
            if self.gate is not None:
                ok &= self.gate[cand] > self.threshold
            ok &= np.where(fg, self.use_rejection[True], self.use_rejection[False])[:, None]
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


class _Pool:
    """Output buffers reused once nothing outside the pool refers to them (or to a view of them).

    Any returned crop, view or ``torch.from_numpy`` tensor holds a strong reference to its buffer, so
    a buffer whose reference count is the pool's own baseline is free. The baseline is measured on a
    probe through the same code path (interpreters differ in how many references they borrow).
    Reusing buffers avoids the page faults of fresh allocations (a third of the cost of a crop).
    Not thread-safe: use one sampler per thread or worker process.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.buffers: list[np.ndarray] = []
        self._free = self._refcounts([np.empty(0)])[0]

    @staticmethod
    def _refcounts(buffers: list[np.ndarray]) -> list[int]:
        return [sys.getrefcount(buf) for buf in buffers]

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        for buf, count in zip(self.buffers, self._refcounts(self.buffers), strict=False):
            if count == self._free and buf.shape == shape and buf.dtype == dtype:
                return buf
        buf = np.empty(shape, dtype=dtype)
        if self.keep:
            self.buffers.append(buf)
            if len(self.buffers) > self.keep:
                self.buffers.pop(0)
        return buf


def crop_box(centre: tuple[int, ...], shape: tuple[int, ...], size: tuple[int, ...]
             ) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
    """Source and destination slices of a crop of ``size`` around ``centre`` in a volume of ``shape``.

    Returns (source slices into the volume, destination slices into the crop, whether padding is
    needed). Per axis: the crop is shifted inside the volume when it would cross the border; where
    the volume is smaller than the crop the whole axis is taken and placed at ``(size - dim) // 2``.
    """
    src, dst, padded = [], [], False
    for c, dim, sz in zip(centre, shape, size, strict=False):
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
    reuse_buffers: reuse an output buffer once the caller holds no reference to it or to any crop
        of it (saves the page faults of a fresh 28 MB allocation per volume). Not thread-safe.
    """

    def __init__(self, cache: Any, cfg: SamplerConfig | None = None, seed: int = 0, max_open: int = 16,
                 reuse_buffers: bool = True) -> None:
        self.cache = cache
        self.cfg = cfg if cfg is not None else SamplerConfig.pretrain()
        self.seed = int(seed)
        self.max_open = max(1, int(max_open))
        self.case_names: list[str] = list(cache.cases)
        if not self.case_names:
            raise InputError("the cache holds no cases to sample from")
        self._names = set(self.case_names)
        self._opened: OrderedDict[str, _Opened] = OrderedDict()
        self._pool = _Pool(4 if reuse_buffers else 0)
        self._default_rng = self.rng()

    def __len__(self) -> int:
        return len(self.case_names)

    def __getstate__(self) -> dict[str, Any]:
        # Opened memmaps and buffers are rebuilt lazily in each process (safe to pickle into workers).
        state = self.__dict__.copy()
        state["_opened"] = OrderedDict()
        state["_pool"] = _Pool(self._pool.keep)
        return state

    def rng(self, *key: int) -> np.random.Generator:
        """An independent generator for ``key`` (e.g. ``(epoch, worker)`` or ``(epoch, case_position)``):
        ``Generator(PCG64(SeedSequence(seed, spawn_key=key)))``."""
        seq = np.random.SeedSequence(self.seed, spawn_key=tuple(int(k) for k in key))
        return np.random.Generator(np.random.PCG64(seq))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of case positions for ``epoch`` (the same in every worker and rank)."""
        return self.rng(0xE90C, epoch).permutation(len(self.case_names))

    def _open(self, case: str | int) -> _Opened:
        name = self.case_names[case] if isinstance(case, (int, np.integer)) else case
        opened = self._opened.get(name)
        if opened is None:
            if name not in self._names:
                raise InputError(f"no case {name!r} to sample from (the cache has {len(self.case_names)} cases)")
            opened = _Opened(self.cache.case(name), self.cfg.centres, self.cfg.image_threshold)
            self._opened[name] = opened
            while len(self._opened) > self.max_open:
                self._opened.popitem(last=False)
        else:
            self._opened.move_to_end(name)
        return opened

    def sample_batch(self, case: str | int, rng: np.random.Generator | None = None, with_params: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None] | tuple[np.ndarray, np.ndarray | None, list[dict]]:
        """All crops of one case stacked: image ``float32 [N, C, *crop_size]``, label ``[N, *crop_size]``
        (the cache's label dtype) or None. With ``with_params`` also one dict per crop: ``centre``
        (voxel drawn, before the fit-in-volume shift), ``foreground`` (its kind), ``source`` (slices of
        the volume read) and ``aug`` (:class:`~hiend_data.augment.AugmentParams`).

        Random numbers, in order: ``N x (1 + N_UNIFORMS)`` uniforms (kind, augmentation), then the
        centre draws, then (``class_balanced``) a class and a voxel per foreground-centred crop.
        """
        rng = self._default_rng if rng is None else rng
        st = self._open(case)
        cfg = self.cfg
        n, size = cfg.num_samples, cfg.crop_size
        u = rng.random((n, 1 + N_UNIFORMS))
        flat, fg = st.draw_many(u[:, 0] < cfg.pos_ratio, rng)
        if cfg.class_balanced:
            for i in np.flatnonzero(fg):
                idx = st.draw_class(rng)
                if idx is not None:
                    flat[i] = idx
        centres = np.stack(np.unravel_index(flat, st.shape), axis=1)
        images = self._pool.get((n, st.image.shape[0], *size), np.dtype(np.float32))
        labels = None if st.label is None else self._pool.get((n, *size), st.label.dtype)
        records = []
        for i in range(n):
            aug = params_from_uniforms(cfg, u[i, 1:])
            src, dst, padded = crop_box(centres[i], st.shape, size)
            if padded:
                _copy_padded(st.image, images[i], src, dst, cfg.pad_value, aug, True)
                apply_intensity(images[i], aug)
                if labels is not None:
                    _copy_padded(st.label, labels[i], src, dst, 0, aug, False)
            else:
                rev, swap = view_plan(aug)
                _copy_view(st.image, images[i], src, rev, swap, aug, True, True)
                if labels is not None:
                    _copy_view(st.label, labels[i], src, rev, swap, aug, False, False)
            if with_params:
                records.append(dict(centre=tuple(int(c) for c in centres[i]), foreground=bool(fg[i]),
                                    source=src, aug=aug))
        if with_params:
            return images, labels, records
        return images, labels

    def sample(self, case: str | int, rng: np.random.Generator | None = None
               ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``num_samples`` crops of one case: a list of (image ``float32 [C, *crop_size]`` C-contiguous,
        label ``[*crop_size]`` or None), views of the stacked buffers of :meth:`sample_batch`."""
        images, labels = self.sample_batch(case, rng)  # type: ignore[misc]
        return [(images[i], None if labels is None else labels[i]) for i in range(len(images))]


def _copy_view(volume: np.ndarray, out: np.ndarray, src: tuple[slice, ...], rev: frozenset[int], swap: bool,
               aug: AugmentParams, channel_first: bool, intensity: bool) -> None:
    """``out = augment(volume[src])`` in one pass: flips and rot90 folded into the source slicing
    (reversed slices + one transpose, see :func:`~hiend_data.augment.view_plan`), scale/shift fused
    into the copy when ``intensity`` and they fire. ``out`` is written in order (a reversed innermost
    axis on the writing side is several times slower than on the reading side).

    With a reversed innermost axis NumPy copies element by element in ``out``'s order; when rot90 has
    moved the source's outermost axis away from ``out``'s first spatial axis, that order reads one row
    per source plane, so the copy then runs in chunks of ``_CHUNK`` source planes instead (the same
    operations per element, hence the same bits; ``tools/bench/crop_copy.py``).
    """
    sl = tuple(slice(s.stop - 1, s.start - 1 if s.start else None, -1) if i in rev else s
               for i, s in enumerate(src))
    view = volume[(slice(None), *sl)] if channel_first else volume[sl]
    scale = np.float32(aug.scale) if intensity and aug.scale is not None else None
    shift = np.float32(aug.shift) if intensity and aug.shift is not None else None
    if swap:
        off = 1 if channel_first else 0
        perm = list(range(view.ndim))
        a, b = aug.rot_axes[0] + off, aug.rot_axes[1] + off
        perm[a], perm[b] = perm[b], perm[a]
        view = view.transpose(perm)
        if view.strides[-1] == -view.itemsize:  # the source's own innermost axis, reversed
            first = 1 if channel_first else 0
            axis = max(range(first, view.ndim - 1), key=lambda k: abs(view.strides[k]))
            if axis != first:
                lead = (slice(None),) * axis
                for i in range(0, view.shape[axis], _CHUNK):
                    idx = (*lead, slice(i, i + _CHUNK))
                    _fused(view[idx], out[idx], scale, shift)
                return
    _fused(view, out, scale, shift)


#: Source planes per chunk in :func:`_copy_view` (16 x 96 x 96 float32: 590 KB, stays in L2).
_CHUNK = 16


def _fused(view: np.ndarray, out: np.ndarray, scale: np.float32 | None, shift: np.float32 | None) -> None:
    """``out[...] = view * scale + shift`` in float32 (each factor only when not None), at most two passes."""
    if scale is not None:
        np.multiply(view, scale, out=out, casting="same_kind")
        if shift is not None:
            out += shift
    elif shift is not None:
        np.add(view, shift, out=out, casting="same_kind")
    else:
        np.copyto(out, view, casting="same_kind")


def _copy_padded(volume: np.ndarray, out: np.ndarray, src: tuple[slice, ...], dst: tuple[slice, ...],
                 pad_value: float, aug: AugmentParams, channel_first: bool) -> None:
    """Padded crop (volume smaller than the crop along some axis): fill, then write the region through
    the inverse augmentation view of ``out`` so that ``out`` ends up augmented."""
    lead = (slice(None),) if channel_first else ()
    out.fill(pad_value)
    np.copyto(inverse_view(out, aug, channel_first)[lead + dst], volume[lead + src], casting="same_kind")
