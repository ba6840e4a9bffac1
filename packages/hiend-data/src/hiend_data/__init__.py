"""hiend-data: CT/MRI volume I/O, geometry, preprocessing, cache and patch sampling for Hi-End-MAE (torch-free core)."""

from .__about__ import __version__

__all__ = ["__version__"]
