"""TotalSegmentator's classes folded onto the phantoms' six labels, to score a phantom-trained model on
a real scan labelled by TotalSegmentator (``total`` task, v1 or v2 class names).

=============================  ===================  =========================================
TotalSegmentator class          phantom label        why
=============================  ===================  =========================================
``liver``                       1 liver              same organ (TotalSegmentator leaves the
                                                     gallbladder, IVC and portal vein out; so
                                                     do the phantoms)
``spleen``                      2 spleen
``kidney_right``                3 kidney_right
``kidney_left``                 4 kidney_left
``vertebrae_*`` (C1..S1)        5 spine              the phantoms' spine is the vertebrae:
                                                     bodies and posterior elements; discs, the
                                                     sacrum, spinal cord and ribs are background
``lung_*`` (the five lobes;     6 lungs              both lungs as one structure; the trachea
v1: ``lung_upper_lobe_left``                         and airways stay background
etc.)
everything else                 0 background
=============================  ===================  =========================================

``vertebrae_S1`` is a vertebra in TotalSegmentator v2's naming; ``sacrum`` is not folded (the phantoms
draw the sacrum as pelvic bone, background).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .tissues import LABELS


def fold_label(name: str) -> int:
    """The phantom label of one TotalSegmentator class name (0 when it has none)."""
    if name in ("liver", "spleen", "kidney_right", "kidney_left"):
        return LABELS[name]
    if name.startswith("vertebrae_"):
        return LABELS["spine"]
    if name.startswith("lung_") and "trachea" not in name:
        return LABELS["lungs"]
    return 0


def fold_totalsegmentator(label: np.ndarray, names: Mapping[int | str, str]) -> np.ndarray:
    """Fold a TotalSegmentator label map (values -> ``names``) onto the phantom labels (uint8, same shape).

    A value present in ``label`` but missing from ``names`` raises ``ValueError`` (a map read with the
    wrong class table must not fold silently to background).
    """
    table = {int(k): fold_label(v) for k, v in names.items()}
    values = np.unique(label)
    missing = [int(v) for v in values if int(v) != 0 and int(v) not in table]
    if missing:
        raise ValueError(f"label values {missing[:8]} have no name in the class table")
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for value, folded in table.items():
        if 0 <= value < lut.size:
            lut[value] = folded
    return lut[label.astype(np.int64)]
