"""Random crops for pre-training and fine-tuning: the paper's recipe, fast.

Per volume, ``num_samples`` crops of ``crop_size`` voxels. Each crop's centre is a foreground voxel with
probability ``pos / (pos + neg)`` and a background voxel otherwise, drawn uniformly among the voxels of
that kind (MONAI's ``RandCropByPosNegLabeld``; for unlabelled data the image itself is the "label").

* Foreground: ``centres="image"`` (pre-training): voxels whose first channel is > 0 after scaling;
  ``centres="label"`` (fine-tuning): voxels with a label > 0. Background is the rest (<= 0, label 0).
  With ``image_threshold`` (fine-tuning preset: 0, as MONAI's ``image_key``/``image_threshold`` in the
  paper's fine-tuning code) both kinds are further limited to voxels with ``image[0] > image_threshold``.
  When a volume has no voxel of the drawn kind, the other kind is used (as MONAI does).
* ``class_balanced`` (labels only): a foreground-centred crop first picks one of the foreground classes
  present in the case, each with the same probability, then a voxel of that class uniformly (the
  cache's per-class index lists, subsampled to its cap for huge classes): nnU-Net's class-aware
  foreground oversampling, MONAI's ``RandCropByLabelClasses`` with equal ratios. Without it a crop's
  centre is uniform over all labelled voxels, so a kidney is centred a hundred times less often than
  the lungs. Its draws come after all others: the default streams are unchanged.
* Uniform voxels of one kind are drawn by rejection: random voxels are read from the memory-mapped array
  until one of the right kind turns up, so neither the foreground nor the background index list is
  materialised or even loaded. Only when a kind is rare (no hit in 256 tries) does the sampler fall back
  to an index list: the cache's ``foreground`` for labelled voxels, otherwise ``flatnonzero`` of the mask,
  computed once per opened case (it is small, since the kind is rare). Both ways draw exactly uniformly.
* The centre is moved the least needed for the crop to fit (``start = clip(c - size // 2, 0, dim - size)``,
  MONAI's ``correct_crop_centers`` for even sizes). Only along an axis where the volume is smaller than
  the crop is the crop padded, symmetrically (MONAI's ``SpatialPad``: ``(size - dim) // 2`` before), with
  ``pad_value`` (default 0: the minimum of a CT image scaled to [0, 1]; for z-scored MRI 0 is the
  foreground mean) in the image and 0 (background) in the label.
* Augmentation (:mod:`hiend_data.augment`) is applied identically to image and label. The crop is read
  from the memmap as a view and copied exactly once into the output buffer, through a flipped/rotated
  view of that buffer; the decode of a compact cache (uint8 / int16 codes, :mod:`hiend_data.storage`)
  and the intensity scale and shift are fused into that copy. Centres are drawn on the stored codes,
  which are > 0 exactly where the values are: a compact cache draws the float32 cache's crops.

Output: image ``float32 [C, *crop_size]`` C-contiguous, label ``[*crop_size]`` of the cache's integer
dtype (or None). Randomness only comes from the ``rng`` passed in; :meth:`CropSampler.rng` gives
independent streams keyed by integers (epoch, worker, case position) through ``numpy.random.SeedSequence``.

Where it lives: :mod:`.config` (:class:`SamplerConfig`), :mod:`.arrays` (:class:`ArrayCase`,
:class:`ArrayCache`: in-memory cases), :mod:`.centres` (per-case centre drawing: rejection, rare kinds'
index lists, class-balanced draws), :mod:`.crops` (:class:`PlannedCrop`, :func:`crop_box`, the copy
kernels), :mod:`.buffers` (the output buffer pool), :mod:`.sampler` (:class:`CropSampler`).
"""

from __future__ import annotations

from .arrays import ArrayCache, ArrayCase
from .config import SamplerConfig
from .crops import PlannedCrop, crop_box
from .sampler import CropSampler

__all__ = ["ArrayCache", "ArrayCase", "CropSampler", "PlannedCrop", "SamplerConfig", "crop_box"]
