"""Crops per second of the sampler on a preprocessed cache (what ``hiend-data bench`` measures).

One process, one thread: the sampler draws ``num_samples`` crops per volume, cycling over the cache's
cases in a seeded order, each crop a C-contiguous float32 ``[C, *crop_size]`` array (plus its label crop
when the cache is labelled) with the whole augmentation recipe applied, exactly as training gets them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .errors import InputError
from .sampling import CropSampler, SamplerConfig

CONFIGS = ("pretrain", "finetune")


#: the longest a benchmark may be asked to run (one day)
MAX_SECONDS = 86400.0


def config_named(name: str) -> SamplerConfig:
    """``SamplerConfig.pretrain()`` or ``SamplerConfig.finetune()`` by name."""
    if name not in CONFIGS:
        raise InputError(f"--config {name!r}: choose one of {', '.join(CONFIGS)}")
    return SamplerConfig.pretrain() if name == "pretrain" else SamplerConfig.finetune()


def bench_sampler(
    cache: Any,
    seconds: float = 5.0,
    cfg: SamplerConfig | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the sampler for about ``seconds`` (after one warm-up volume) and report its speed.

    Returns ``crops_per_s``, ``crops``, ``volumes``, ``seconds`` (measured), ``crop_shape`` ``[C, X, Y, Z]``,
    ``labelled``, ``cases`` (in the cache), ``num_samples`` and ``cache_dtype`` (how the cases store
    the image: ``"uint8"``, ``"int16"``, ``"float16"``, ``"float32"``, several joined by ``+``; crops are
    float32 whatever it is).
    """
    if not 0 < seconds <= MAX_SECONDS:  # NaN and inf included: a benchmark must end
        raise InputError(f"--seconds {seconds}: expected a number of seconds in (0, {MAX_SECONDS:g}]")
    sampler = CropSampler(cache, cfg, seed=seed)
    order = sampler.epoch_order(0)
    rng = sampler.rng(0)
    images, labels = sampler.sample_batch(int(order[0]), rng)  # type: ignore[misc]  # warm-up
    first = images[0]
    if not (first.flags.c_contiguous and first.dtype == np.float32):
        raise AssertionError("sampler returned a crop that is not contiguous float32")  # a bug, not input
    crop_shape = list(first.shape)
    labelled = labels is not None
    del images, labels, first
    crops = volumes = 0
    t0 = time.perf_counter()
    while True:
        case = int(order[volumes % len(order)])
        images, labels = sampler.sample_batch(case, rng)  # type: ignore[misc]
        crops += len(images)
        volumes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    cases = [cache.case(n) for n in sampler.case_names]
    stored = sorted({str(getattr(c, "image_dtype", None) or c.image.dtype) for c in cases})
    return {
        "cache_dtype": "+".join(stored),
        "crops_per_s": round(crops / elapsed, 2),
        "crops": crops,
        "volumes": volumes,
        "seconds": round(elapsed, 3),
        "crop_shape": crop_shape,
        "labelled": labelled,
        "cases": len(sampler),
        "num_samples": sampler.cfg.num_samples,
    }
