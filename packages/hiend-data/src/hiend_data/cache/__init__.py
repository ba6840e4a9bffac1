"""The preprocessed cache: every case of a dataset run through a :class:`Plan`, ready to sample from.

Layout of a cache folder ``OUT``::

    OUT/plan.json                  the Plan (its digest marks which cases are current)
    OUT/labels.json                label value -> name, ``{"labels": {"1": "liver", ...}}`` (only when
                                   the names are known: from the dataset.json or given; not part of
                                   the plan, so it never invalidates cases)
    OUT/cases/{case}.npy           image [C, X, Y, Z] as the plan's cache dtype (uint8 / int16 codes,
                                   float16 or float32 values), C-contiguous (memory-mapped on read)
    OUT/cases/{case}_seg.npy       label [X, Y, Z] (uint8/uint16/int32), labelled cases only
    OUT/cases/{case}_fg.npy        int64 flat indices into X*Y*Z of foreground voxels (sorted)
    OUT/cases/{case}_cls.npy       int64 flat indices grouped by class (offsets in the metadata)
    OUT/cases/{case}.json          metadata: PreprocessRecord, plan digest, classes, sources

Each file is written with :mod:`hiend_data.atomic` (a temporary ``.{name}.{random}.tmp{suffix}`` in
the same folder, fsync-ed, renamed into place, the folder fsync-ed); the metadata file is written last,
so a case exists only once all of its arrays do. An interrupted run leaves complete cases and
(ignored, removed by the next run) temporary files. Re-running skips cases whose metadata carries the
current plan's digest, its cache dtype and the same source files (size and modification time); others
are recomputed.

The image's storage (:mod:`hiend_data.storage`): ``Plan.resolved_cache_dtype`` (CT: uint8 codes by
default, ``value = code * image_scale``), recorded per case as ``image_dtype`` and ``image_scale`` in
its metadata. Metadata ``format`` 1 is a float32 image (caches written before compact dtypes, which
have neither field); ``format`` 2 any dtype, so that readers that only know format 1 skip those cases
instead of reading codes as values. :attr:`CachedCase.image` is always float32 values;
:attr:`CachedCase.stored` and :attr:`CachedCase.image_scale` are what the sampler reads.

**Reading trusts nothing** (:meth:`Cache.open`): every case metadata file made under the cache's plan is
checked before any array is mapped: valid JSON, every field of the right type (:class:`CaseMeta`), a
``case_id`` that is a safe name (:func:`hiend_data.naming.safe_case_name`) equal to the file's own
name, ``image_dtype`` / ``image_scale`` the pair :mod:`hiend_data.storage` writes, and each ``.npy``
file's header (read alone) holding the dtype and shape the metadata claims, inside the cache. A file
that fails is one InputError line naming it and the field.

**One writer, and it takes its workers with it** (:func:`preprocess_dataset`): an exclusive ``flock``
on ``OUT/.lock`` that the worker processes close at their start (so the lock goes when the writer
goes, crash or ``kill -9`` included); the workers die with the writer (Linux: ``PR_SET_PDEATHSIG``);
SIGTERM stops the workers, removes the temporary files and raises :class:`Terminated` (exit code 143).

**Where each rule lives.** :mod:`.layout` (file names, formats, ``labels.json``), :mod:`.process` (one
case written, and whether a case is current), :mod:`.workers` (the writer lock, SIGTERM, worker
processes), :mod:`.writer` (:func:`preprocess_dataset`), :mod:`.meta` (the checks of a case's metadata
and arrays), :mod:`.reader` (:class:`Cache`, :class:`CachedCase`). Every public name is importable from
``hiend_data.cache``.
"""

from .layout import (
    FORMAT,
    LABELS_NAME,
    MAX_INDICES,
    READ_FORMATS,
    TEMP_GLOBS,
    read_cache_label_names,
    write_label_names,
)
from .meta import CaseMeta
from .process import process_case
from .reader import Cache, CachedCase
from .workers import LOCK_NAME, Terminated
from .writer import preprocess_dataset

__all__ = [
    "FORMAT",
    "LABELS_NAME",
    "LOCK_NAME",
    "MAX_INDICES",
    "READ_FORMATS",
    "TEMP_GLOBS",
    "Cache",
    "CachedCase",
    "CaseMeta",
    "Terminated",
    "preprocess_dataset",
    "process_case",
    "read_cache_label_names",
    "write_label_names",
]
