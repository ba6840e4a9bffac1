"""One case into the cache: load, preprocess, encode, write its arrays and (last) its metadata; and
whether a case already in the cache is current (same plan, cache dtype and source files)."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open, write_bytes
from ..discovery import Case
from ..errors import InputError
from ..io import check_oriented, load_label, load_volume
from ..jsonfile import read_json
from ..naming import path_inside
from ..plan import Plan
from ..preprocess import preprocess_case
from ..storage import encode
from .layout import FORMAT, MAX_INDICES, READ_FORMATS, TEMP_GLOBS


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as a C-contiguous ``.npy`` file (memory-mappable), written atomically and durably."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def _sources(case: Case) -> list[dict[str, Any]]:
    out = []
    for f in [*case.images, *([case.label] if case.label else [])]:
        f = Path(f)
        if f.is_dir():  # a DICOM series folder: its files' total size and newest change
            stats = [p.stat() for p in f.rglob("*") if p.is_file()]
            size = sum(st.st_size for st in stats)
            mtime = max((st.st_mtime_ns for st in stats), default=f.stat().st_mtime_ns)
            out.append({"path": str(f.resolve()), "size": size, "mtime_ns": mtime, "files": len(stats)})
            continue
        st = f.stat()
        out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _subsample(indices: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if len(indices) <= cap:
        return indices.astype(np.int64, copy=False)
    keep = np.random.default_rng(seed).choice(len(indices), size=cap, replace=False)
    keep.sort()
    return indices[keep].astype(np.int64, copy=False)


def _class_lists(
    label: np.ndarray, cap: int, seed: int
) -> tuple[list[int], list[int], list[int], np.ndarray]:
    """(classes > 0, true voxel counts, offsets into the concatenated indices, concatenated indices)."""
    flat = label.reshape(-1)
    counts = np.bincount(flat.astype(np.int64, copy=False)) if flat.size else np.zeros(1, np.int64)
    classes = [int(v) for v in np.flatnonzero(counts) if v > 0]
    if not classes:
        return [], [], [0], np.zeros(0, np.int64)
    order = np.argsort(flat, kind="stable")  # indices grouped by value, ascending within a value
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = [_subsample(order[starts[v] : starts[v + 1]], cap, seed + v) for v in classes]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).tolist()
    return classes, [int(counts[v]) for v in classes], [int(o) for o in offsets], np.concatenate(parts)


def _case_seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def process_case(case: Case, out: str | os.PathLike[str], plan: Plan, max_indices: int = MAX_INDICES) -> str:
    """Preprocess one case into the cache folder ``out`` (arrays first, metadata last). Returns its id."""
    folder = Path(out) / "cases"
    # every file of the case: a checked name that stays inside the cache (hiend_data.naming)
    meta_path = path_inside(folder, case.case_id, ".json")
    if meta_path.exists():
        meta_path.unlink()  # from here on the case is incomplete until the new metadata lands
    image = load_volume(case.images, series=case.series or None)
    check_oriented(image)
    label = load_label(case.label, like=image) if case.label is not None else None
    pre = preprocess_case(image, plan, label)
    del image, label
    seed = _case_seed(case.case_id)
    dtype = plan.resolved_cache_dtype
    stored, scale = encode(pre.image, dtype, name=case.case_id)
    _atomic_npy(path_inside(folder, case.case_id, ".npy"), stored)
    del stored
    meta: dict[str, Any] = {
        "format": 1 if dtype == "float32" else FORMAT,
        "case_id": case.case_id,
        "plan_digest": plan.digest(),
        "image_dtype": dtype,
        "image_scale": scale,
        "shape": list(pre.record.shape),
        "channels": int(pre.image.shape[0]),
        "labelled": pre.label is not None,
        "sources": _sources(case),
    }
    if pre.label is not None:
        _atomic_npy(path_inside(folder, case.case_id, "_seg.npy"), pre.label)
        fg = np.flatnonzero(pre.label.reshape(-1) > 0)
        classes, counts, offsets, cls_idx = _class_lists(pre.label, max_indices, seed)
        _atomic_npy(path_inside(folder, case.case_id, "_cls.npy"), cls_idx)
        meta.update(
            classes=classes, class_counts=counts, class_offsets=offsets, label_dtype=str(pre.label.dtype)
        )
    else:
        fg = np.flatnonzero(pre.image[0].reshape(-1) > 0)  # the same voxels as stored codes > 0
        meta.update(classes=[], class_counts=[], class_offsets=[0], label_dtype=None)
    meta.update(n_foreground=int(fg.size))
    _atomic_npy(path_inside(folder, case.case_id, "_fg.npy"), _subsample(fg, max_indices, seed))
    meta["record"] = pre.record.model_dump(mode="json")
    write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return case.case_id


def _is_current(case: Case, folder: Path, digest: str, dtype: str) -> bool:
    meta_path = folder / f"{case.case_id}.json"
    if not meta_path.exists():
        return False
    try:
        meta = read_json(meta_path, expect=dict)
    except (InputError, OSError):
        return False  # unreadable: recomputed
    return (
        meta.get("format") in READ_FORMATS
        and meta.get("plan_digest") == digest
        and meta.get("image_dtype", "float32") == dtype
        and meta.get("sources") == _sources(case)
    )


def _clean_temporaries(folder: Path) -> None:
    """Remove what interrupted writes left in ``folder`` (:data:`TEMP_GLOBS`)."""
    for f in {f for pattern in TEMP_GLOBS for f in folder.glob(pattern)}:
        try:
            f.unlink()
        except OSError:
            pass
