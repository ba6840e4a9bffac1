"""Label names: which structure each label value is, from an nnU-Net ``dataset.json`` to the cache, the
fine-tuned checkpoint and the scores (torch-free).

* :func:`read_label_names` reads a ``dataset.json`` (nnU-Net v2 ``"labels": {"liver": 1}`` or v1/MSD
  ``"labels": {"1": "liver"}``) into ``{1: "liver", ...}``: background (0) left out, sorted by value;
* :func:`label_names_to_json` / :func:`label_names_from_json` are the one JSON form everything stores
  (a cache's ``labels.json``, a checkpoint's ``extra.labels``): ``{"1": "liver", ...}``, keys the
  label values as decimal strings.

A label name is non-empty text that is not only blanks and holds no control or format character
(ESC, BEL, newline, DEL, C1 controls, bidirectional overrides, ...): :func:`check_label_name`, applied
to dataset.json, labels.json and checkpoints alike, so a name that could not be stored or printed
safely is refused where it enters (:class:`LabelNameError`) instead of making a cache unreadable later.

One structure, one value (:func:`check_label_values`, for every source): a label value is at most
:data:`~hiend_data.limits.MAX_LABEL` (65535, what a label map holds), and two values never carry the
same name (an nnU-Net v2 dataset.json, name -> value, cannot even write that; scores and segments
named twice could not be told apart). In the stored JSON form a value is written one way only: decimal
digits without a leading zero (``"1"``, never ``"01"`` or ``"1.0"``), so that files compare as text.

Every problem is one :class:`~hiend_data.errors.InputError` line naming the file and what is wrong.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InputError
from .jsonfile import read_json
from .limits import MAX_LABEL

__all__ = [
    "read_label_names",
    "label_names_from_dataset",
    "label_names_to_json",
    "label_names_from_json",
    "check_label_name",
    "check_label_values",
    "LabelNameError",
]


class LabelNameError(InputError):
    """A label name that is not usable (:func:`check_label_name`): refused, never worked around."""


def check_label_name(name: object, value: object, where: object) -> str:
    """``name`` if it can name label ``value``: a string, not empty or only blanks, without control or
    format characters. :class:`LabelNameError` naming ``where`` and ``value`` otherwise."""
    why = None
    if not isinstance(name, str):
        why = f"has name {name!r}, which is not text"
    elif not name:
        why = "has name '', which is empty"
    elif not name.strip():
        why = f"has name {ascii(name)} ({len(name)} blank characters), which is only blanks"
    elif any(not ch.isprintable() and unicodedata.category(ch) != "Zs" for ch in name):
        why = f"has name {name!r}, which holds a control or format character"
    if why is not None:
        raise LabelNameError(f"{where}: label {value} {why}; a label name must be non-empty printable text")
    return name  # type: ignore[return-value]


def _decimal(key: object) -> int | None:
    """The value of a label key written in ASCII decimal digits (``"7"``, ``"007"``), else None; a key
    of more than 12 digits (far above :data:`~hiend_data.limits.MAX_LABEL`, and beyond what ``int()``
    converts at 4,300 digits) counts as MAX_LABEL + 1, refused as too large."""
    if not (isinstance(key, str) and key.isascii() and key.isdigit()):
        return None
    return int(key) if len(key) <= 12 else MAX_LABEL + 1


def _short(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(value: int, where: object, key: object = None) -> None:
    if value > MAX_LABEL:
        shown = str(value) if key is None else _short(key).strip("'")
        raise InputError(
            f"{where}: label value {shown} is above {MAX_LABEL} (label maps hold values 0..{MAX_LABEL})"
        )


def check_label_values(names: Mapping[int, str], where: object) -> dict[int, str]:
    """``names`` (value -> name) sorted by value, or InputError naming ``where``: a value above
    :data:`~hiend_data.limits.MAX_LABEL`, or two values with the same name."""
    seen: dict[str, int] = {}
    for value, name in sorted(names.items()):
        _check_value(value, where)
        if name in seen:
            raise InputError(
                f"{where}: labels {seen[name]} and {value} are both named {name!r}; each structure has one value"
            )
        seen[name] = value
    return dict(sorted(names.items()))


def read_label_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Label value -> name (background left out, sorted by value) from an nnU-Net ``dataset.json``.

    Understands nnU-Net v2 (``"labels": {"liver": 1}``) and v1/MSD (``"labels": {"1": "liver"}``).
    Refused, each with an InputError naming ``path``: no ``labels`` map, region-based labels (lists of
    values), values that are not non-negative integers or are above MAX_LABEL, a value given twice, a
    name given to two values, only background, and (a :class:`LabelNameError`) a name that
    :func:`check_label_name` refuses, background's included.
    """
    path = Path(path)
    return label_names_from_dataset(read_json(path), path)


def label_names_from_dataset(data: Any, path: str | os.PathLike[str]) -> dict[int, str]:
    """:func:`read_label_names` of a dataset.json already parsed (``data``); ``path`` names it in errors."""
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: no 'labels' map (name -> value) in this dataset.json")
    out: dict[int, str] = {}
    for key, val in labels.items():
        if isinstance(val, str) and _decimal(key) is not None:  # v1: value -> name
            value, name = _decimal(key), val
        elif isinstance(val, int) and not isinstance(val, bool):
            value, name = val, str(key)
        elif isinstance(val, list | tuple):
            raise InputError(
                f"{path}: label {key!r} is a region {val}; region-based labels are not supported"
            )
        else:
            raise InputError(f"{path}: label {key!r} has value {val!r}, expected a non-negative integer")
        if value < 0:
            raise InputError(f"{path}: label {key!r} has negative value {value}")
        _check_value(value, path, key if isinstance(val, str) else None)
        check_label_name(name, value, path)
        if value in out:
            raise InputError(f"{path}: label value {value} given twice ({out[value]!r} and {name!r})")
        out[value] = name
    out.pop(0, None)
    if not out:
        raise InputError(f"{path}: only background in 'labels'; no structure is named")
    return check_label_values(out, path)


def label_names_to_json(names: Mapping[int, str]) -> dict[str, str]:
    """``{1: "liver"}`` -> ``{"1": "liver"}`` (sorted by value): the form stored in files."""
    return {str(int(v)): str(n) for v, n in sorted(names.items())}


def label_names_from_json(obj: Any, where: str) -> dict[int, str]:
    """``{"1": "liver"}`` -> ``{1: "liver"}`` (sorted by value); InputError naming ``where`` unless
    ``obj`` is an object whose keys are label values 1..MAX_LABEL written as decimal digits without a
    leading zero and whose values are names :func:`check_label_name` accepts, no two the same
    (:func:`check_label_values`)."""
    if not isinstance(obj, dict):
        raise InputError(
            f'{where}: label names must be an object like {{"1": "liver"}}, got {type(obj).__name__}'
        )
    out: dict[int, str] = {}
    for key, name in obj.items():
        value = _decimal(key)
        if value in out:
            raise InputError(f"{where}: label value {value} given twice ({out[value]!r} and {name!r})")
        if value is not None:
            _check_value(value, where, key)
        if value is None or value < 1 or key != str(value):
            raise InputError(
                f"{where}: label key {_short(key)} is not a label value >= 1 (decimal digits, no leading zero)"
            )
        check_label_name(name, value, where)
        out[value] = name
    return check_label_values(out, where)
