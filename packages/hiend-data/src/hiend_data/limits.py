"""Size limits checked before memory is allocated: a hostile or broken header cannot take the machine.

* :data:`MAX_LABEL`: the largest label value hiend accepts (65535: label maps are class indices, stored
  as uint8 / uint16). A label map holding 2^31 - 1 or 1e20 is refused, naming the file, instead of a
  ``bincount`` the size of the value or an integer cast that wraps.
* :func:`max_volume_bytes`: the largest array one volume may become in memory, 16 GiB unless the
  environment variable ``HIEND_MAX_VOLUME_BYTES`` says otherwise (bytes; a 512 x 512 x 2000 CT as
  float32 is 2 GiB). :func:`check_volume_bytes` raises :class:`InputError` naming the file or value
  when a header's claim, or the grid a spacing would make, goes beyond it; a gzip bomb (a small
  ``.nii.gz`` whose header claims a huge payload) is refused this way before anything is inflated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .errors import InputError

__all__ = ["MAX_LABEL", "DEFAULT_MAX_VOLUME_BYTES", "max_volume_bytes", "check_volume_bytes"]

MAX_LABEL = 65535
DEFAULT_MAX_VOLUME_BYTES = 16 * 2**30
ENV = "HIEND_MAX_VOLUME_BYTES"


def max_volume_bytes() -> int:
    """The limit in bytes: ``$HIEND_MAX_VOLUME_BYTES`` if set (a finite number >= 1, ``64e9`` allowed;
    ``inf``, ``nan`` and ``1e400`` are refused with one line), else 16 GiB."""
    text = os.environ.get(ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_VOLUME_BYTES
    try:
        number = float(text)
    except ValueError:
        raise InputError(f"{ENV}={text!r}: expected a number of bytes") from None
    if not math.isfinite(number):  # inf, nan, 1e400 (which float() reads as inf)
        raise InputError(f"{ENV}={text!r}: expected a finite number of bytes (e.g. 64e9)")
    if number < 1:
        raise InputError(f"{ENV}={text!r}: must be >= 1")
    return int(number)


def check_volume_bytes(
    shape: Sequence[int], bytes_per_voxel: int, where: object, what: str = "volume"
) -> int:
    """``prod(shape) * bytes_per_voxel`` if within :func:`max_volume_bytes`, else InputError naming ``where``."""
    n = 1
    for s in shape:
        n *= int(s)
    need = n * int(bytes_per_voxel)
    limit = max_volume_bytes()
    if need > limit:
        dims = "x".join(str(int(s)) for s in shape)
        raise InputError(
            f"{where}: {what} {dims} voxels ({need / 2**30:.1f} GiB in memory), more than the limit of "
            f"{limit / 2**30:.1f} GiB (set {ENV} to raise it)"
        )
    return need
