"""What ``hiend-model predict`` writes, and where it may write it.

Per scan ``{case}``: ``{out}/{case}.nii.gz`` (the label map on the input's own grid and affine) and/or
``{out}/{case}.dcm`` (a DICOM Segmentation referencing the input series), as ``--format`` asks
(:data:`FORMATS`). The rules, all checked before the first output is written:

* the output folder is never an input folder, nor the folder holding an input, nor inside a DICOM
  input folder (:func:`check_output_folder`: a later run on the same inputs would read the outputs as
  scans);
* no output replaces an input file, and no symbolic link leads an output out of ``--out``
  (:func:`check_case_outputs`);
* a DICOM-SEG needs highdicom and DICOM input, and segment names a SEG can hold
  (:func:`check_formats`, :func:`segment_names`).

Every file is written atomically (a temporary in the same folder, then renamed: ``save_volume`` and
``write_seg``), so a run stopped by SIGINT or SIGTERM (which the CLI raises as KeyboardInterrupt,
:func:`hiend_model.cli.stopped_by_signals`) leaves the outputs written so far whole and no temporary.
"""

from __future__ import annotations

import errno
import importlib.util
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiend_data import save_volume
from hiend_data.dicom import series_headers
from hiend_data.errors import InputError
from hiend_data.naming import is_dicom_source, is_image, path_inside

from .__about__ import __version__

__all__ = [
    "FORMATS",
    "SEG_SUFFIX",
    "OutputWriter",
    "check_case_outputs",
    "check_formats",
    "check_output_folder",
    "output_names",
    "resolved",
    "segment_names",
]

#: ``predict --format``: the label map as NIfTI, as a DICOM Segmentation of its source series, or both
FORMATS = ("nifti", "dicom-seg", "both")
SEG_SUFFIX = ".dcm"


def output_names(name: str, output_format: str) -> list[str]:
    """The file names one scan writes: ``{name}.nii.gz`` and/or ``{name}.dcm`` (the SEG)."""
    return [
        name + s for s, f in ((".nii.gz", "nifti"), (SEG_SUFFIX, "dicom-seg")) if output_format in (f, "both")
    ]


def check_formats(output_format: str, seg_type: str) -> bool:
    """InputError for a ``--format`` or ``--seg-type`` value out of its choices, or a DICOM-SEG asked for
    without highdicom installed; returns whether a SEG is written."""
    if output_format not in FORMATS:
        raise InputError(f"--format {output_format!r}: expected one of {', '.join(FORMATS)}")
    seg = output_format in ("dicom-seg", "both")
    if seg_type not in ("binary", "labelmap"):
        raise InputError(f"--seg-type {seg_type!r}: expected binary or labelmap")
    if seg and importlib.util.find_spec("highdicom") is None:
        raise InputError(
            "--format dicom-seg needs highdicom (not installed): pip install 'hiend-model[dicom]'"
        )
    return seg


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symbolic link resolved (it need not exist); InputError naming it when it, or a
    folder above it, is a symbolic-link loop (it can be neither read nor written)."""
    path = Path(path)
    try:
        return path.resolve()
    except RuntimeError:  # Python 3.11's pathlib: "Symlink loop from ..."
        pass
    except OSError as exc:  # later Pythons: ELOOP
        if exc.errno != errno.ELOOP:
            raise
    raise InputError(f"{path}: a symbolic-link loop (too many levels of symbolic links); choose another path")


def check_output_folder(
    out_dir: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], output_format: str = "nifti"
) -> Path:
    """The output folder, refused (InputError naming it and the input) where a later run on the same
    inputs would read the outputs as scans. The rule, for every input kind, links resolved:

    * ``--out`` is never an input folder itself (a folder of NIfTI scans or of DICOM series: the label
      maps and SEGs would join the scans), nor the folder holding an input file or series folder
      (``predict m scans/a_0000.nii.gz --out scans``: ``a.nii.gz`` would join the scans there; beside
      a DICOM series or zip, the NIfTI label map would turn the folder into a folder of scans);
    * ``--out`` never lies inside an input folder searched for DICOM series (a folder with no NIfTI
      files of its own: the search goes down every subfolder, so the outputs would be read as series);
    * with ``output_format`` writing DICOM-SEGs (``dicom-seg``, ``both``), ``--out`` never lies inside
      any input folder: every input folder is searched to the bottom for DICOM series
      (:func:`hiend_data.discovery.folder_scans`), so the SEGs would be found by the next run.

    A folder of NIfTI scans reads its NIfTI files one level deep: a NIfTI-only output folder inside it
    is fine. Input
    files (NIfTI, a .zip, a multi-frame DICOM) are also guarded file by file (an output never replaces
    one: :func:`check_case_outputs`).
    """
    out = resolved(out_dir)
    for item in inputs:
        folder = Path(item)
        if folder.exists() and out == resolved(folder).parent:
            raise InputError(
                f"--out {out_dir}: is the folder holding the input {folder}; the outputs would join the "
                "scans there: choose an output folder outside the inputs"
            )
        if not folder.is_dir():
            continue
        where = resolved(folder)
        if out == where:
            raise InputError(
                f"--out {out_dir}: is the input folder {folder}; the outputs would be read as scans by the "
                "next run on it: choose an output folder outside the inputs"
            )
        dicom = not any(f.is_file() and is_image(f) for f in folder.iterdir())
        if dicom and where in out.parents:
            raise InputError(
                f"--out {out_dir}: lies inside the DICOM input folder {folder}, which is searched to the "
                "bottom for series: choose an output folder outside the inputs"
            )
        if output_format != "nifti" and where in out.parents:
            raise InputError(
                f"--out {out_dir}: lies inside the input folder {folder}, which is searched to the bottom "
                f"for DICOM series, and --format {output_format} writes DICOM-SEGs there: choose an "
                "output folder outside the inputs"
            )
    return out


def check_case_outputs(
    out_dir: Path, name: str, files: Sequence[Path], output_format: str, inputs: Collection[Path]
) -> None:
    """InputError when an output of the scan ``name`` (read from ``files``) would replace one of the
    ``inputs`` (resolved paths) or be led out of ``out_dir`` by a symbolic link, or when a DICOM-SEG
    is asked of a scan that is not one DICOM source (a Segmentation references its source series)."""
    for file_name in output_names(name, output_format):
        target = resolved(out_dir / file_name)
        if target in inputs:
            raise InputError(f"{target}: the output would overwrite an input scan; choose another --out")
        path_inside(out_dir, name, file_name[len(name) :])  # no symlink leads out of --out
    if output_format in ("dicom-seg", "both") and (len(files) != 1 or not is_dicom_source(files[0])):
        raise InputError(
            f"{files[0]}: --format dicom-seg needs DICOM input (a Segmentation references its "
            "source series); this scan is NIfTI: use --format nifti"
        )


def segment_names(names: dict[int, str], num_classes: int, seg: bool, where: Any) -> dict[int, str]:
    """Every foreground class as a segment, named from ``names`` or ``"label N"`` (the same segment
    numbers in every scan's SEG); with ``seg``, a name a SEG cannot hold is refused now, before any
    output (``--format both``: not after the NIfTI), naming ``where`` the names came from."""
    out = {v: names.get(v) or f"label {v}" for v in range(1, num_classes)}
    if seg:
        from hiend_data.dicom_seg import check_segment_names

        check_segment_names(out, where)
    return out


@dataclass(frozen=True)
class OutputWriter:
    """Writes each scan's outputs into ``out_dir`` as ``output_format`` asks (see the module).

    ``seg_names``: :func:`segment_names`; ``seg_type``: ``"binary"`` or ``"labelmap"``
    (:func:`hiend_data.dicom_seg.write_seg`); ``series``: the SeriesInstanceUIDs read (``--series``);
    ``members``: how many models voted (named in the SEG's algorithm).
    """

    out_dir: Path
    output_format: str = "nifti"
    seg_names: dict[int, str] | None = None
    seg_type: str = "binary"
    series: Sequence[str] = ()
    members: int = 1

    def write(self, name: str, source: Path, labels: Any, volume: Any) -> list[Path]:
        """Write the label map ``labels`` of the scan ``name`` (``volume``, read from ``source``);
        returns the paths written (NIfTI first)."""
        written: list[Path] = []
        if self.output_format != "dicom-seg":
            written.append(Path(save_volume(self.out_dir / f"{name}.nii.gz", labels, like=volume)))
        if self.output_format in ("dicom-seg", "both"):
            from hiend_data.dicom_seg import write_seg

            written.append(
                write_seg(
                    labels,
                    volume.affine,
                    series_headers(source, self.series or None),
                    self.out_dir / f"{name}{SEG_SUFFIX}",
                    self.seg_names or {},
                    software_version=f"hiend-model {__version__}",
                    description="hiend-model predict",
                    algorithm="hiend-model UNETR"
                    + (f" ensemble of {self.members}" if self.members > 1 else ""),
                    seg_type=self.seg_type,
                )
            )
        return written
