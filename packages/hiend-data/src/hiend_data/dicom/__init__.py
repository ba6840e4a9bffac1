"""Reading DICOM series (the optional extra ``hiend-data[dicom]``: pydicom and dicom2nifti).

:func:`hiend_data.io.load_volume` hands a path here when the readers table
(:func:`hiend_data.readers.reader_for`) picks its DICOM entry: a folder holding one series, a ``.zip`` of such a folder, or one multi-frame file.
This package finds the files, picks the series and refuses what hiend must not guess about;
**dicom2nifti** (on pydicom) then sorts the slices, applies RescaleSlope / RescaleIntercept and builds
the affine (first slice's ImagePositionPatient, slice step = (last - first) / (n - 1)), returned as a
nibabel image in RAS+, so from here on a DICOM series is read exactly like a NIfTI file.

**Which files.** Every file under the folder, at any depth; symbolic links to files and folders are
followed (also out of the folder), each real folder is walked once (no loops) and a file reached by two
paths is read once, as is a byte-for-byte copy under another name (same SOPInstanceUID; two different
files under one SOPInstanceUID are refused); names starting with ``.`` are skipped; a broken link is
refused (it may be a lost slice). Files without the DICOM Part 10 marker are skipped; one that has it
but does not parse is refused. A ``.zip`` is unpacked into a temporary folder first (see
:func:`~.files._unzipped` for its limits).

**One series.** The image objects (not SR, RTSTRUCT, SEG, RTDOSE, ...) grouped by SeriesInstanceUID;
several are refused unless ``series=`` picks one. Every file of the chosen series must agree on
PatientID, StudyInstanceUID, FrameOfReferenceUID, Modality and SOPClassUID, and the slices the volume is
built from on Rows, Columns, PixelSpacing and how they are rescaled (:func:`~.pixels._check_rescale`): a
SeriesInstanceUID shared by another patient's files (a copy, a symlink, a badly anonymised export) is
refused, never merged.

Refused with one :class:`~hiend_data.errors.InputError` line naming the folder (zip, file) and, where
one file is at fault, that file (its path below the folder):

* no DICOM file at all; only non-image objects;
* several image series (their SeriesInstanceUIDs and SeriesDescriptions are listed; ``series=`` picks
  one); files of one series that disagree on patient, study, frame of reference, size or pixel spacing;
* an image file of the series without pixel data (a slice lost in transfer), wherever it sits; an
  image without SeriesInstanceUID (a file cut in its header); pixel data that is float, colour, or
  (uncompressed) not Rows x Columns x BitsAllocated / 8 bytes (:func:`~.pixels._check_pixel_data`); a
  TransferSyntaxUID that is no transfer syntax;
* RescaleSlope 0 or not finite, RescaleIntercept not finite, one without the other, slices (frames)
  rescaled different ways;
* missing or unusable geometry: no ImagePositionPatient / ImageOrientationPatient / PixelSpacing, a
  value that is not a finite number, PixelSpacing not > 0, ImageOrientationPatient not two unit vectors
  at right angles (to 1e-3); SliceThickness is not used (the step comes from the positions);
* duplicate slice positions; **missing slices or uneven spacing**: every slice's ImagePositionPatient
  must lie within ``max(0.1 mm, 10 % of the slice step)`` of where the affine puts it (first slice +
  k x step, the step fitted first to last as dicom2nifti does); measured in 3-D, so drift along the
  normal and off the stack line both count, and no slice's voxels are placed farther than that;
  fewer than 4 slices (dicom2nifti's localizer rule);
* gantry tilt (slices not perpendicular to the stack) and mixed slice orientations (dicom2nifti); a
  slice of another orientation, or flagged as a localizer, in the volume's own plane
  (:func:`~.geometry._volume_slices`); a volume assembled from other slices than those checked;
* compressed transfer syntaxes whose decoder is not installed (the message names the package);
* a ``.zip`` whose members declare more than the volume limit in total (``HIEND_MAX_VOLUME_BYTES``), a
  member inflating more than 200:1 (above 16 MiB), a member longer than it declares, two members of
  one name, a name leading outside the folder, a symbolic link entry, a zip inside the zip
  (:func:`~.files._unzipped`).

Images of the series flagged as localizers (ImageType LOCALIZER, CT projection images) and a minority
orientation of fewer than 4 slices are dropped (dicom2nifti's rule, as scanners store scouts in the
series) when their plane is more than ``SCOUT_MIN_ANGLE`` degrees from the volume's; the checks on size,
spacing, rescale and positions apply to the slices that remain. Not detectable: slices missing at
either end of the stack (the rest is a valid, shorter series).
**Where each rule lives.** :mod:`.files` (the walk, a zip, reading headers), :mod:`.identity` (image
objects, one series, one patient and study), :mod:`.pixels` (pixel data, decoders, rescale),
:mod:`.geometry` (positions, orientations, spacing, the stack rule), :mod:`.assemble` (dicom2nifti,
multi-frame, compact dtype) and :mod:`.reader` (:func:`read_dicom`, :func:`series_headers`: every
check in order).
"""

from .files import INSTALL, ZIP_MAX_RATIO, ZIP_RATIO_FROM
from .geometry import ORIENTATION_TOLERANCE, POSITION_TOLERANCE_MM, POSITION_TOLERANCE_STEP, SCOUT_MIN_ANGLE
from .reader import read_dicom, series_headers

__all__ = [
    "INSTALL",
    "ORIENTATION_TOLERANCE",
    "POSITION_TOLERANCE_MM",
    "POSITION_TOLERANCE_STEP",
    "SCOUT_MIN_ANGLE",
    "ZIP_MAX_RATIO",
    "ZIP_RATIO_FROM",
    "read_dicom",
    "series_headers",
]
