"""hiend-train: Hi-End-MAE pre-training and UNETR fine-tuning loops (DDP via torchrun)."""

from .__about__ import __version__

__all__ = ["__version__"]
