"""Reading trusts nothing: the checks of a case's metadata file and of the ``.npy`` arrays it
describes, before any array is mapped (see :mod:`hiend_data.cache`, "Reading trusts nothing")."""

from __future__ import annotations

import itertools
import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ..errors import InputError, from_validation_error
from ..naming import path_inside, safe_case_name
from ..preprocess import PreprocessRecord
from ..storage import NUMPY_DTYPES, step

_NonNegInt = Annotated[StrictInt, Field(ge=0)]


class CaseMeta(BaseModel):
    """The fields of a case's metadata file that reading relies on, each of its type (other fields,
    such as ``sources``, are kept and not checked). ``image_dtype`` / ``image_scale`` may be absent only
    in format 1 (a float32 image)."""

    model_config = ConfigDict(extra="allow")

    format: StrictInt
    case_id: StrictStr
    plan_digest: StrictStr
    image_dtype: StrictStr | None = None
    image_scale: StrictFloat | None = None
    shape: tuple[_NonNegInt, _NonNegInt, _NonNegInt]
    channels: Annotated[StrictInt, Field(ge=1)]
    labelled: StrictBool
    classes: list[Annotated[StrictInt, Field(ge=1)]]
    class_counts: list[_NonNegInt]
    class_offsets: list[_NonNegInt]
    label_dtype: StrictStr | None
    n_foreground: _NonNegInt
    record: PreprocessRecord


def _npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran_order) of the ``.npy`` file ``path``, from its header alone; InputError
    naming it when the file does not hold the bytes its header claims (cut short, or a header claiming a
    huge shape: memory-mapping it would fail, or read beyond the data, only when a crop is taken)."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f".npy format version {version} is not one numpy.save writes here")
            shape, fortran, dtype = read[version](fh)
        except ValueError as exc:
            raise InputError(f"{path}: not a valid .npy file ({exc})") from None
        offset = fh.tell()
    dtype = np.dtype(dtype)
    claimed = math.prod(shape) * dtype.itemsize
    size = os.stat(path).st_size - offset
    if size != claimed:
        raise InputError(
            f"{path}: its header claims {dtype} {list(shape)} ({claimed} bytes) but the file holds "
            f"{size} bytes of data ({'cut short' if size < claimed else 'more than claimed'})"
        )
    return dtype, tuple(shape), bool(fortran)


def _check_array(
    meta_path: Path, name: str, suffix: str, field: str, ok: Any, want: str, shape: tuple | None
) -> tuple[int, ...]:
    """Check the array ``{name}{suffix}.npy`` beside ``meta_path`` against what it claims: inside the
    cache, C order, ``ok(dtype)`` true (``want`` says which dtype), ``shape`` (None: one axis). Returns
    its shape; InputError naming the metadata file, ``field`` and the array otherwise."""
    path = meta_path.parent / f"{name}{suffix}.npy"  # name: one checked file name (safe_case_name)
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            path_inside(meta_path.parent, name, f"{suffix}.npy")  # a link must stay in the cache
    except FileNotFoundError:
        pass
    if not path.is_file():
        raise InputError(f"{meta_path}: {field}: its array {path.name} is missing")
    dtype, got, fortran = _npy_header(path)
    if fortran or not ok(dtype) or (len(got) != 1 if shape is None else got != shape):
        raise InputError(
            f"{meta_path}: {field} does not match {path.name}, which holds {dtype} {list(got)}"
            f"{' in Fortran order' if fortran else ''} (expected {want} "
            f"{'of one axis' if shape is None else list(shape)})"
        )
    return got


def _nonfinite_field(value: Any, name: str = "") -> str | None:
    """The first field of ``value`` (JSON, walked) holding NaN or an infinity (JSON's ``NaN`` /
    ``Infinity`` tokens, or ``1e400``) and its value, as ``record.original_affine.0.0 nan``; None when
    every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{name or 'value'} {value}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if (found := _nonfinite_field(item, f"{name}.{key}" if name else str(key))) is not None:
            return found
    return None


def _check_counts(path: Path, meta: Any) -> None:
    """The voxel counts agree with the index lists they describe: each class counts at least the
    indices listed for it (lists are capped, counts are not) and at least one; a labelled case's
    foreground is the sum of its class counts; no count exceeds the volume's voxels. The training
    loss weights classes by these counts: a lie would weight them silently wrong."""
    voxels = math.prod(meta.shape)
    listed = [b - a for a, b in itertools.pairwise(meta.class_offsets)]
    for value, count, n in zip(meta.classes, meta.class_counts, listed, strict=True):
        if not 1 <= n <= count:
            raise InputError(
                f"{path}: class_counts: class {value} counts {count} voxels but lists {n} (expected 1..{count})"
            )
    if meta.labelled and sum(meta.class_counts) != meta.n_foreground:
        raise InputError(
            f"{path}: n_foreground {meta.n_foreground} is not the sum of class_counts ({sum(meta.class_counts)})"
        )
    if meta.n_foreground > voxels:
        raise InputError(
            f"{path}: n_foreground {meta.n_foreground} is more than the {voxels} voxels of shape"
        )


def _checked_meta(path: Path, data: Any) -> dict[str, Any]:
    """The metadata ``data`` of the case file ``path`` if reading can trust it (:mod:`hiend_data.cache`,
    "Reading trusts nothing"); InputError naming ``path`` and the field otherwise."""
    try:
        meta = CaseMeta.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, str(path)) from None
    if (field_ := _nonfinite_field(data)) is not None:
        raise InputError(f"{path}: {field_} is not a finite number")
    name = path.name.removesuffix(".json")
    safe_case_name(meta.case_id, f"{path}: case_id")
    if meta.case_id != name:
        raise InputError(f"{path}: case_id {meta.case_id!r} is not the file's own name {name!r}")
    dtype = meta.image_dtype
    if dtype is None and meta.format != 1:
        raise InputError(f"{path}: image_dtype: missing (format {meta.format} records it)")
    dtype = dtype or "float32"
    if dtype not in NUMPY_DTYPES or (meta.format == 1 and dtype != "float32"):
        choices = "float32 (format 1)" if meta.format == 1 else ", ".join(NUMPY_DTYPES)
        raise InputError(f"{path}: image_dtype {dtype!r}: expected {choices}")
    scale, want = meta.image_scale, step(dtype)
    if scale is not None and not math.isfinite(scale):
        raise InputError(f"{path}: image_scale {scale} is not a finite number")
    if scale != want:
        raise InputError(f"{path}: image_scale {scale} does not decode {dtype} (expected {want})")
    shape = tuple(meta.shape)
    if meta.record.shape != shape or meta.record.channels != meta.channels:
        raise InputError(
            f"{path}: shape {list(shape)} x {meta.channels} channels disagrees with record "
            f"({list(meta.record.shape)} x {meta.record.channels})"
        )
    want_dtype = np.dtype(NUMPY_DTYPES[dtype])
    _check_array(path, name, "", "image_dtype", lambda d: d == want_dtype, dtype, (meta.channels, *shape))
    n_classes = len(meta.classes)
    if (
        meta.classes != sorted(set(meta.classes))
        or len(meta.class_counts) != n_classes
        or len(meta.class_offsets) != n_classes + 1
        or meta.class_offsets[0] != 0
        or meta.class_offsets != sorted(meta.class_offsets)
    ):
        raise InputError(
            f"{path}: classes / class_counts / class_offsets disagree (classes ascending, one count "
            "each, offsets from 0 one more, ascending)"
        )
    _check_counts(path, meta)
    if meta.labelled:
        if meta.label_dtype is None:
            raise InputError(f"{path}: label_dtype: missing for a labelled case")
        if meta.label_dtype not in ("uint8", "uint16", "int32", "int64"):
            raise InputError(
                f"{path}: label_dtype {meta.label_dtype!r}: expected uint8, uint16, int32 or int64"
            )
        top = np.iinfo(np.dtype(meta.label_dtype)).max
        if meta.classes and meta.classes[-1] > top:
            raise InputError(
                f"{path}: classes: {meta.classes[-1]} cannot be a value of {meta.label_dtype} labels"
            )
        _check_array(
            path, name, "_seg", "label_dtype",
            lambda d: d.kind in "iu" and str(d) == meta.label_dtype, meta.label_dtype, shape,
        )  # fmt: skip
        (n,) = _check_array(path, name, "_cls", "class_offsets", lambda d: d == np.int64, "int64", None)
        if n != meta.class_offsets[-1]:
            raise InputError(
                f"{path}: class_offsets end at {meta.class_offsets[-1]}, {name}_cls.npy holds {n}"
            )
    elif n_classes:
        raise InputError(f"{path}: classes {meta.classes} in a case that is not labelled")
    (n,) = _check_array(path, name, "_fg", "n_foreground", lambda d: d == np.int64, "int64", None)
    if n > meta.n_foreground or (meta.n_foreground and not n):
        raise InputError(f"{path}: n_foreground {meta.n_foreground}, {name}_fg.npy lists {n} voxels")
    return data
