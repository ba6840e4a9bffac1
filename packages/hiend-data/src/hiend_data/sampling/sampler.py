"""The crop sampler: :class:`CropSampler` draws a case's crops (:meth:`~CropSampler.plan`) and writes
them into reused output buffers (:meth:`~CropSampler.fill`); :meth:`~CropSampler.sample_batch` does both."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..augment import N_UNIFORMS, params_from_uniforms, view_plan
from ..errors import InputError
from .buffers import BufferPool
from .centres import OpenedCase
from .config import SamplerConfig
from .crops import PlannedCrop, copy_padded, copy_view, crop_box


class CropSampler:
    """Draws augmented crops from a cache (:class:`hiend_data.cache.Cache` or :class:`ArrayCache`).

    cache: has ``cases`` (list of names) and ``case(name)`` returning an object with ``image``
        ``[C, X, Y, Z]`` float (memmap), ``label`` ``[X, Y, Z]`` ints or None and ``foreground``; a
        compact case (:class:`~hiend_data.cache.CachedCase`) is read through ``stored`` (codes) and
        ``image_scale`` instead, decoded in the copy.
    cfg: :class:`SamplerConfig` (default: the pre-training recipe).
    seed: root of every stream from :meth:`rng`; also seeds the default stream used when
        :meth:`sample` is called without ``rng``.
    max_open: how many cases stay opened (memmaps and fallback index lists), least recently used out.
    reuse_buffers: reuse an output buffer once the caller holds no reference to it or to any crop
        of it (saves the page faults of a fresh 28 MB allocation per volume). Not thread-safe.
    """

    def __init__(
        self,
        cache: Any,
        cfg: SamplerConfig | None = None,
        seed: int = 0,
        max_open: int = 16,
        reuse_buffers: bool = True,
    ) -> None:
        self.cache = cache
        self.cfg = cfg if cfg is not None else SamplerConfig.pretrain()
        self.seed = int(seed)
        self.max_open = max(1, int(max_open))
        self.case_names: list[str] = list(cache.cases)
        if not self.case_names:
            raise InputError("the cache holds no cases to sample from")
        self._names = set(self.case_names)
        self._opened: OrderedDict[str, OpenedCase] = OrderedDict()
        self._pool = BufferPool(4 if reuse_buffers else 0)
        self._default_rng = self.rng()

    def __len__(self) -> int:
        return len(self.case_names)

    def __getstate__(self) -> dict[str, Any]:
        # Opened memmaps and buffers are rebuilt lazily in each process (safe to pickle into workers).
        state = self.__dict__.copy()
        state["_opened"] = OrderedDict()
        state["_pool"] = BufferPool(self._pool.keep)
        return state

    def rng(self, *key: int) -> np.random.Generator:
        """An independent generator for ``key`` (e.g. ``(epoch, worker)`` or ``(epoch, case_position)``):
        ``Generator(PCG64(SeedSequence(seed, spawn_key=key)))``."""
        seq = np.random.SeedSequence(self.seed, spawn_key=tuple(int(k) for k in key))
        return np.random.Generator(np.random.PCG64(seq))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of case positions for ``epoch`` (the same in every worker and rank)."""
        return self.rng(0xE90C, epoch).permutation(len(self.case_names))

    def _open(self, case: str | int) -> OpenedCase:
        name = self.case_names[case] if isinstance(case, (int, np.integer)) else case
        opened = self._opened.get(name)
        if opened is None:
            if name not in self._names:
                raise InputError(
                    f"no case {name!r} to sample from (the cache has {len(self.case_names)} cases)"
                )
            opened = OpenedCase(self.cache.case(name), self.cfg.centres, self.cfg.image_threshold)
            self._opened[name] = opened
            while len(self._opened) > self.max_open:
                self._opened.popitem(last=False)
        else:
            self._opened.move_to_end(name)
        return opened

    def plan(self, case: str | int, rng: np.random.Generator | None = None) -> list[PlannedCrop]:
        """The ``num_samples`` crops of one case as drawn (centre, kind, source slices, augmentation),
        nothing copied yet. Every random number of a batch is drawn here, in this order:
        ``N x (1 + N_UNIFORMS)`` uniforms (kind, augmentation), then the centre draws, then
        (``class_balanced``) a class and a voxel per foreground-centred crop."""
        rng = self._default_rng if rng is None else rng
        st = self._open(case)
        cfg = self.cfg
        u = rng.random((cfg.num_samples, 1 + N_UNIFORMS))
        flat, fg = st.draw_many(u[:, 0] < cfg.pos_ratio, rng)
        if cfg.class_balanced:
            for i in np.flatnonzero(fg):
                idx = st.draw_class(rng)
                if idx is not None:
                    flat[i] = idx
        centres = np.stack(np.unravel_index(flat, st.shape), axis=1)
        crops = []
        for i in range(cfg.num_samples):
            src, dst, padded = crop_box(centres[i], st.shape, cfg.crop_size)
            crops.append(
                PlannedCrop(
                    tuple(int(c) for c in centres[i]),
                    bool(fg[i]),
                    src,
                    dst,
                    padded,
                    params_from_uniforms(cfg, u[i, 1:]),
                )
            )
        return crops

    def fill(self, case: str | int, crops: list[PlannedCrop]) -> tuple[np.ndarray, np.ndarray | None]:
        """The crops of :meth:`plan` read from ``case`` and augmented, stacked: image
        ``float32 [N, C, *crop_size]``, label ``[N, *crop_size]`` (the cache's label dtype) or None.
        The arrays are pooled buffers, reused once the caller drops every reference to them."""
        st = self._open(case)
        cfg = self.cfg
        images = self._pool.get((len(crops), st.image.shape[0], *cfg.crop_size), np.dtype(np.float32))
        labels = None if st.label is None else self._pool.get((len(crops), *cfg.crop_size), st.label.dtype)
        for i, crop in enumerate(crops):
            aug = crop.aug
            if crop.padded:
                copy_padded(
                    st.image, images[i], crop.source, crop.dest, cfg.pad_value, aug, True, True, st.decode
                )
                if labels is not None:
                    copy_padded(st.label, labels[i], crop.source, crop.dest, 0, aug, False)
            else:
                rev, swap = view_plan(aug)
                copy_view(st.image, images[i], crop.source, rev, swap, aug, True, True, st.decode)
                if labels is not None:
                    copy_view(st.label, labels[i], crop.source, rev, swap, aug, False, False)
        return images, labels

    def sample_batch(
        self, case: str | int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """All crops of one case stacked: image ``float32 [N, C, *crop_size]``, label ``[N, *crop_size]``
        or None (:meth:`plan`, then :meth:`fill`)."""
        return self.fill(case, self.plan(case, rng))

    def sample(
        self, case: str | int, rng: np.random.Generator | None = None
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``num_samples`` crops of one case: a list of (image ``float32 [C, *crop_size]`` C-contiguous,
        label ``[*crop_size]`` or None), views of the stacked buffers of :meth:`sample_batch`."""
        images, labels = self.sample_batch(case, rng)
        return [(images[i], None if labels is None else labels[i]) for i in range(len(images))]
