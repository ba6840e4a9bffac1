"""hiend-eval: Dice, IoU, HD95, ASSD and NSD for label maps, folder scoring and reports."""

from .__about__ import __version__

__all__ = ["__version__"]
