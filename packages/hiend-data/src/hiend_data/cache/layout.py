"""The cache folder's layout: file names, metadata formats, and the label names file ``labels.json``
(see :mod:`hiend_data.cache` for the whole layout)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..atomic import write_bytes
from ..errors import InputError, shown
from ..jsonfile import read_json
from ..labels import LabelNameError, label_names_from_dataset, label_names_from_json, label_names_to_json

#: Metadata format written for compact images (format 1, a float32 image, is still written for float32)
FORMAT = 2
#: Metadata formats this version reads.
READ_FORMATS = (1, 2)
MAX_INDICES = 200_000  # per index list; larger lists are a uniform random subsample (sorted)
#: Temporary files a crash can leave in ``OUT/cases``: :mod:`hiend_data.atomic`'s
#: ``.{name}.{random}.tmp{suffix}``, and ``.{name}.tmp-{pid}`` from caches written before it.
TEMP_GLOBS = (".*.tmp", ".*.tmp.*", ".*.tmp-*")
#: the cache's label names (:mod:`hiend_data.labels`), beside plan.json
LABELS_NAME = "labels.json"


def _dataset_label_names(src: Path) -> dict[int, str] | None:
    """The label names of the dataset folder ``src`` from its dataset.json, or None: no dataset.json,
    or one without a ``labels`` map (nothing said), or one whose labels cannot be names (region-based,
    only background, ...: a warning on stderr, the cache gets no names; preprocessing needs none).
    A name that is empty, only blanks or holds control characters is refused (:class:`LabelNameError`
    naming the dataset.json and the label): the file is wrong, not merely unusual."""
    djson = src / "dataset.json"
    if not src.is_dir() or not djson.is_file():
        return None
    try:
        data = read_json(djson)
    except InputError:
        return None  # discovery reports it
    if not isinstance(data, dict) or not data.get("labels"):
        return None
    try:
        return label_names_from_dataset(data, djson)
    except LabelNameError:
        raise
    except InputError as exc:
        print(f"warning: {shown(exc)}; the cache gets no label names", file=sys.stderr)
        return None


def _checked_label_names(labels: dict[int, str]) -> dict[int, str]:
    """``labels`` (background 0 dropped) in the stored form's rules (InputError otherwise)."""
    if not isinstance(labels, dict):
        raise InputError(f"labels: expected a dict of label value -> name, got {type(labels).__name__}")
    bad = [v for v in labels if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise InputError(f"labels: label value {bad[0]!r} is not an integer >= 0")
    names = {v: n for v, n in labels.items() if v != 0}
    if not names:
        raise InputError("labels: only background (0) is named; no structure is")
    return label_names_from_json({str(v): n for v, n in names.items()}, "labels")


def write_label_names(out: str | os.PathLike[str], names: dict[int, str]) -> Path:
    """``out/labels.json`` (``{"labels": {"1": "liver", ...}}``), written atomically. Returns its path."""
    path = Path(out) / LABELS_NAME
    text = json.dumps({"labels": label_names_to_json(names)}, indent=1) + "\n"
    write_bytes(path, text.encode())
    return path


def read_cache_label_names(root: str | os.PathLike[str]) -> dict[int, str] | None:
    """The label names of the cache ``root`` (its labels.json), None when it has none; InputError
    naming the file when it is not ``{"labels": {"1": "name", ...}}``."""
    path = Path(root) / LABELS_NAME
    if not path.is_file():
        return None
    data = read_json(path, expect=dict)
    return label_names_from_json(data.get("labels"), str(path))
