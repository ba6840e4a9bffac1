"""Which files are the label maps of which case: pairing predictions with references.

:func:`match_cases` pairs files by case name, hiend's one naming rule (:func:`hiend_data.naming.case_name`:
the file name without ``.nii``/``.nii.gz`` and without an nnU-Net ``_0000`` channel suffix; a DICOM-SEG
``{case}.dcm`` by its name without ``.dcm``). A reference without a prediction is listed under
``missing_predictions`` (and scored as an empty prediction); a prediction without a reference is listed
under ``unmatched_predictions`` and otherwise ignored. Hidden files are skipped; a file named as a
label map that cannot be read, or two files of one case, are an InputError naming them.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from hiend_data.errors import InputError
from hiend_data.naming import case_name, dicom_case_name


@dataclass(frozen=True)
class CasePair:
    """One case: its name, the reference file and the prediction file (None when missing)."""

    case: str
    ref: Path
    pred: Path | None


@dataclass
class Matching:
    pairs: list[CasePair]
    missing_predictions: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)


SEG_SUFFIX = ".dcm"


def is_seg_name(path: str | os.PathLike[str]) -> bool:
    """A ``.dcm`` file name: a DICOM Segmentation label map (``hiend-model predict --format dicom-seg``)."""
    name = Path(path).name
    return name.lower().endswith(SEG_SUFFIX) and len(name) > len(SEG_SUFFIX)


def label_case_name(path: str | os.PathLike[str]) -> str | None:
    """The case a label-map file names: NIfTI by hiend's rule (:func:`hiend_data.naming.case_name`), a
    DICOM-SEG ``{case}.dcm`` by its name without ``.dcm``; None for anything else."""
    return case_name(path) or (dicom_case_name(path) if is_seg_name(path) else None)


def _index(folder: Path, what: str) -> dict[str, Path]:
    """Case name -> file of the label maps in ``folder`` (hidden files, such as temporary ones, skipped).

    NIfTI files and DICOM-SEG ``.dcm`` files; where a case has both (``predict --format both``), the
    NIfTI map is the one scored."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        cid = label_case_name(path)
        if cid is None or path.name.startswith("."):
            continue
        if not path.is_file():  # named as a label map but unreadable: never scored as "missing"
            what_is = "a broken symbolic link or a symbolic-link loop" if path.is_symlink() else "not a file"
            raise InputError(f"{path}: a {what} label map's name, but {what_is}")
        if cid in found:
            if is_seg_name(path) != is_seg_name(found[cid]):  # the same map twice: keep the NIfTI one
                if is_seg_name(found[cid]):
                    found[cid] = path
                continue
            raise InputError(
                f"{folder}: two {what} files for case {cid!r}: {found[cid].name} and {path.name}"
            )
        found[cid] = path
    return found


def check_no_loop(path: str | os.PathLike[str]) -> None:
    """InputError naming ``path`` when it, or a folder above it, is a symbolic-link loop (it can be
    neither read nor written: said so, not "no such file" or "file exists")."""
    try:
        Path(path).resolve()
    except RuntimeError:  # Python 3.11's pathlib: "Symlink loop from ..."
        pass
    except OSError as exc:  # later Pythons: ELOOP
        if exc.errno != errno.ELOOP:
            raise
    else:
        return
    raise InputError(f"{path}: a symbolic-link loop (too many levels of symbolic links)")


def match_cases(pred: Path, ref: Path) -> Matching:
    """Pair predictions with references; both folders (matched by case name) or both single files."""
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        check_no_loop(path)
        if not path.exists():
            raise FileNotFoundError(2, "no such file or directory", str(path))
    if pred.is_file() != ref.is_file():
        raise InputError(f"{pred} and {ref}: give two folders or two files, not one of each")
    if ref.is_file():
        cid = label_case_name(ref) or ref.name
        return Matching([CasePair(cid, ref, pred)])
    refs, preds = _index(ref, "reference"), _index(pred, "prediction")
    if not refs:
        raise InputError(f"{ref}: no reference label maps (.nii, .nii.gz or DICOM-SEG .dcm) in this folder")
    pairs = [CasePair(c, refs[c], preds.get(c)) for c in sorted(refs)]
    return Matching(
        pairs,
        missing_predictions=[c for c in sorted(refs) if c not in preds],
        unmatched_predictions=[preds[c].name for c in sorted(preds) if c not in refs],
    )
