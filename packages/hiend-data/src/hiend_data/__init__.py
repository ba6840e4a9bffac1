"""hiend-data: CT/MRI volume I/O, geometry, preprocessing, cache and patch sampling for Hi-End-MAE (torch-free core).

Public names are imported lazily so that ``import hiend_data`` (and ``hiend-data --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .__about__ import __version__
from .errors import InputError

if TYPE_CHECKING:
    from .io import Volume, load_volume, save_volume
    from .plan import Plan
    from .preprocess import PreprocessRecord, preprocess_case, restore_label

_LAZY = {
    "Volume": "io",
    "load_volume": "io",
    "save_volume": "io",
    "Plan": "plan",
    "PreprocessRecord": "preprocess",
    "preprocess_case": "preprocess",
    "restore_label": "preprocess",
}

__all__ = [
    "__version__",
    "InputError",
    "Volume",
    "load_volume",
    "save_volume",
    "Plan",
    "PreprocessRecord",
    "preprocess_case",
    "restore_label",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hiend_data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
