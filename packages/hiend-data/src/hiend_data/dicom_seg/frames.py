"""Where a source series' frames lie on a hiend grid: each frame's plane (:func:`frame_planes`) and its
voxels (:func:`frame_voxels`, a :class:`FrameMap` per frame), whole voxels along the grid's axes or
refused (see :mod:`hiend_data.dicom_seg`, "Geometry")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: How far (in voxels) a source frame's pixel may lie from the hiend grid's voxel centres
VOXEL_TOL = 0.25
#: RAS <-> LPS (its own inverse)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _floats(values: Any) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def _first(ds: Any, sequence: str) -> Any:
    item = ds.get(sequence)
    return item[0] if item else None


def frame_planes(datasets: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(position, orientation, spacing)`` of every source frame (LPS mm; orientation 6 values: the
    row then the column direction; spacing ``[between rows, between columns]``), in ``datasets`` order
    (single-frame slices), or frame order of one multi-frame file."""
    if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
        ds = datasets[0]
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        planes = []
        for frame in ds.PerFrameFunctionalGroupsSequence:

            def pick(seq: str, frame: Any = frame) -> Any:
                got = _first(frame, seq)
                return got if got is not None else (_first(shared, seq) if shared is not None else None)

            pos, ori, mea = (
                pick("PlanePositionSequence"),
                pick("PlaneOrientationSequence"),
                pick("PixelMeasuresSequence"),
            )
            if pos is None or ori is None or mea is None:
                raise InputError(
                    f"{ds.filename}: a frame without plane position, orientation or pixel spacing"
                )
            planes.append(
                (
                    _floats(pos.ImagePositionPatient),
                    _floats(ori.ImageOrientationPatient),
                    _floats(mea.PixelSpacing),
                )
            )
        return planes
    return [
        (_floats(ds.ImagePositionPatient), _floats(ds.ImageOrientationPatient), _floats(ds.PixelSpacing))
        for ds in datasets
    ]


@dataclass(frozen=True)
class FrameMap:
    """Where one source frame lies on the hiend grid: ``index`` (a tuple of two slices and an int, basic
    indexing, so a view) selects its voxels; ``transposed``: the view's axes are (column, row)."""

    index: tuple[Any, Any, Any]
    transposed: bool

    def take(self, labels: np.ndarray) -> np.ndarray:
        """The frame ``[rows, columns]`` of ``labels`` (a view)."""
        view = labels[self.index]
        return view.T if self.transposed else view

    def put(self, out: np.ndarray, frame: np.ndarray) -> None:
        """Write the frame ``[rows, columns]`` into ``out``."""
        out[self.index] = frame.T if self.transposed else frame


def _axis_slice(start: int, step: int, n: int) -> slice:
    stop = start + step * n
    return slice(start, None if stop < 0 else stop, step)


def frame_voxels(
    planes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    affine: np.ndarray,
    shape: Sequence[int],
    rows: int,
    columns: int,
    where: object = "the source series",
) -> list[FrameMap]:
    """For each frame, its :class:`FrameMap` on the hiend grid (``frame = map.take(labels)``).
    InputError naming ``where`` when a frame does not lie on the grid (off the voxel centres, not
    along its axes, or outside it)."""
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ LPS_FROM_RAS
    out = []
    for n, (pos, ori, spacing) in enumerate(planes):
        corner = (to_voxel @ np.append(pos, 1.0))[:3]
        step_c = to_voxel[:3, :3] @ (ori[:3] * spacing[1])  # one column to the right
        step_r = to_voxel[:3, :3] @ (ori[3:] * spacing[0])  # one row down
        ints = [np.round(v) for v in (corner, step_c, step_r)]
        off = max(float(np.abs(v - i).max()) for v, i in zip((corner, step_c, step_r), ints, strict=True))
        unit = all(int(np.abs(i).sum()) == 1 and float(np.abs(i).max()) == 1 for i in ints[1:])
        o = ints[0].astype(np.int64)
        a_c, a_r = int(np.argmax(np.abs(ints[1]))), int(np.argmax(np.abs(ints[2])))
        if off > VOXEL_TOL or not unit or a_c == a_r:
            raise InputError(
                f"{where}: frame {n + 1} does not lie on the label map's grid (off by {off:.3g} voxels); "
                "the label map was not made on this series"
            )
        a_s = 3 - a_c - a_r
        s_c, s_r = int(ints[1][a_c]), int(ints[2][a_r])
        for axis, step, count in ((a_c, s_c, columns), (a_r, s_r, rows), (a_s, 1, 1)):
            lo, hi = sorted((int(o[axis]), int(o[axis]) + step * (count - 1)))
            if lo < 0 or hi >= shape[axis]:
                raise InputError(
                    f"{where}: frame {n + 1} reaches voxel {lo}..{hi} on axis {axis} of a grid of {tuple(shape)}"
                )
        index: list[Any] = [None, None, None]
        index[a_c] = _axis_slice(int(o[a_c]), s_c, columns)
        index[a_r] = _axis_slice(int(o[a_r]), s_r, rows)
        index[a_s] = int(o[a_s])
        out.append(FrameMap(tuple(index), transposed=a_c < a_r))  # type: ignore[arg-type]
    return out
