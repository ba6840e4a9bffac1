"""DICOM Segmentation objects (SEG) out of and back into hiend label maps (the ``hiend-data[dicom]`` extra).

**highdicom** (the ecosystem's SEG implementation, on pydicom) builds and parses the objects; this
package only maps between hiend's grid and the source series' frames:

* :func:`write_seg`: a label map on the grid :func:`hiend_data.load_volume` gave for a DICOM series ->
  one BINARY Segmentation referencing that series and, frame by frame, the source images it segments;
  one segment per foreground label (segment number = label value, labelled with its name); frames
  without any voxel of a segment are left out (highdicom's ``omit_empty_frames``).
* :func:`decode_on_source`: a SEG -> the label map on the source series' grid again, voxel for voxel,
  through the frames' referenced source images (what :func:`write_seg` wrote, read back).
* :func:`read_seg`: a SEG alone -> a label map on the SEG's own grid (the span of its frames along the
  slice normal; the frames it leaves out are background): what ``load_volume`` returns for a SEG file,
  so that ``hiend-eval score`` reads SEGs from any tool.

Geometry: each source frame's pixel ``(row r, column c)`` lies at ``IPP + c * dc * F_row + r * dr *
F_col`` (DICOM's ImagePositionPatient, ImageOrientationPatient ``F_row, F_col`` and PixelSpacing ``dr,
dc``, LPS); hiend's affines are RAS+ (nibabel), so a frame's voxels on the hiend grid are
``inv(affine) @ diag(-1, -1, 1) @ position``. The mapping must land on whole voxels (within
:data:`VOXEL_TOL`) along the grid's axes, or the label map was not made on this series' grid.

Integrity rules (refused with one :class:`InputError` line naming the file; nothing is dropped quietly):

* **Text** (:func:`check_long_string`): segment names and the other strings :func:`write_seg` puts in
  Long String (LO) attributes are written exactly as given or refused: at most 64 characters, no
  backslash (LO's value separator), no control or format character, no leading or trailing blank (LO
  padding, dropped by readers). A name that is not plain ASCII makes the SEG UTF-8 (SpecificCharacterSet
  ``ISO_IR 192``), so ``Leber–Läsion 肝`` reads back as written; otherwise the source's character set
  is kept (highdicom copies it).
* **Segments** (read): segment numbers start at 1 and appear once in SegmentSequence (a LABELMAP may
  also describe 0 as its background: PixelPaddingValue 0 or the DCM Background code); every BINARY
  frame's ReferencedSegmentNumber and every LABELMAP pixel value other than 0 is a described segment.
  A segment numbered 0 or one not described would decode as background: its voxels lost.
* **References** (:func:`check_references`): a SEG given as the label of a DICOM image must reference
  that image's series (ReferencedSeriesSequence) and share its FrameOfReferenceUID, where the SEG
  states them. A SEG paired with a NIfTI image has nothing to compare (NIfTI carries no UIDs): only
  the grid check applies.

**Where each rule lives.** :mod:`.rules` (SOP classes, SEG types, the Long String text rules),
:mod:`.frames` (where source frames lie on a hiend grid), :mod:`.writer` (:func:`write_seg`),
:mod:`.reader` (segment names, references, :func:`read_seg`, :func:`decode_on_source` and the segment
checks). Every public name is importable from ``hiend_data.dicom_seg``.
"""

from .frames import LPS_FROM_RAS, VOXEL_TOL, FrameMap, frame_planes, frame_voxels
from .reader import check_references, decode_on_source, is_segmentation, read_seg, segment_names
from .rules import (
    BACKGROUND_CODE,
    LABELMAP_SEG_SOP_CLASS,
    LO_MAX_CHARS,
    SEG_SERIES_NUMBER_OFFSET,
    SEG_SOP_CLASS,
    SEG_SOP_CLASSES,
    SEG_TYPES,
    UTF8_CHARSET,
    check_long_string,
    check_segment_names,
)
from .writer import _with_type2, write_seg

__all__ = [
    "BACKGROUND_CODE",
    "LABELMAP_SEG_SOP_CLASS",
    "LO_MAX_CHARS",
    "LPS_FROM_RAS",
    "SEG_SERIES_NUMBER_OFFSET",
    "SEG_SOP_CLASS",
    "SEG_SOP_CLASSES",
    "SEG_TYPES",
    "UTF8_CHARSET",
    "VOXEL_TOL",
    "FrameMap",
    "_with_type2",
    "check_long_string",
    "check_references",
    "check_segment_names",
    "decode_on_source",
    "frame_planes",
    "frame_voxels",
    "is_segmentation",
    "read_seg",
    "segment_names",
    "write_seg",
]
