"""The compact cache's decode-and-augment copy: one casting ufunc vs cast-copy + in-place scale per block.

Random volumes (``big`` 256 x 256 x 240 and ``abdomen``-sized 120 x 126 x 164) stored as float32 and as
uint8 codes (``hiend_data.storage.encode``); one fixed sequence of 96^3 crops per volume at uniform random
positions with flips and rot90 drawn as ``SamplerConfig.pretrain()`` does (no intensity change: the
decode multiplier alone, nine crops in ten). Each crop goes through ``copy_view`` with:

* ``float32``: the float32 volume, a plain copy (the reference);
* ``ufunc``: the uint8 volume, one ``np.multiply(view, 1/255, out=out, dtype=float32)``;
* ``blocked``: the uint8 volume, ``hiend_data.sampling.crops.fused_copy`` (cast-copy of a block of
  ``BLOCK`` elements, then multiply in place while it is in the CPU cache): what the sampler runs.

Reports the best of ``--rounds`` rounds (CPU time of this process) in ms per crop; every ``blocked`` crop
is checked bit-identical to the ``ufunc`` one.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/decode_copy.py [--crops 100] [--rounds 7]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from hiend_data.augment import params_from_uniforms, view_plan  # noqa: E402
from hiend_data.sampling import SamplerConfig, crop_box  # noqa: E402
from hiend_data.sampling import crops as kernels  # noqa: E402
from hiend_data.storage import encode  # noqa: E402

SHAPES = {"big": (256, 256, 240), "abdomen": (120, 126, 164)}


def ufunc_copy(view: np.ndarray, out: np.ndarray, scale: np.float32 | None, shift: np.float32 | None) -> None:
    """The one-ufunc form: ``out = view * scale`` with the cast inside the ufunc (NumPy buffers it)."""
    np.multiply(view, scale, out=out, dtype=np.float32, casting="same_kind")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cfg = SamplerConfig.pretrain(scale_prob=0.0, shift_prob=0.0)
    rng = np.random.default_rng(0)
    blocked = kernels.fused_copy
    results = {}
    for name, shape in SHAPES.items():
        values = rng.random((1, *shape), dtype=np.float32)
        codes, scale = encode(values, "uint8")
        crops = []
        for _ in range(args.crops):
            src, _, _ = crop_box([int(rng.integers(0, s)) for s in shape], shape, (96, 96, 96))
            aug = params_from_uniforms(cfg, rng.random(9))
            crops.append((src, aug, *view_plan(aug)))
        outs = [np.empty((1, 96, 96, 96), np.float32) for _ in range(8)]
        check = np.empty_like(outs[0])
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for method, vol, fn, dec in (
                ("float32", values, blocked, None),
                ("ufunc", codes, ufunc_copy, scale),
                ("blocked", codes, blocked, scale),
            ):
                kernels.fused_copy = fn
                try:
                    c0 = time.process_time()
                    for k, (src, aug, rev, swap) in enumerate(crops):
                        kernels.copy_view(vol, outs[k % 8], src, rev, swap, aug, True, True, dec)
                    ms = (time.process_time() - c0) / len(crops) * 1e3
                finally:
                    kernels.fused_copy = blocked
                best[method] = min(best.get(method, float("inf")), ms)
        for src, aug, rev, swap in crops[:20]:
            kernels.copy_view(codes, outs[0], src, rev, swap, aug, True, True, scale)
            kernels.fused_copy = ufunc_copy
            kernels.copy_view(codes, check, src, rev, swap, aug, True, True, scale)
            kernels.fused_copy = blocked
            assert np.array_equal(outs[0], check)
        results[name] = {k: round(v, 3) for k, v in best.items()}
        print(name, results[name], flush=True)
    print(json.dumps({"bench": "decode_copy", "ms_per_crop_best": results, "crops": args.crops}))


if __name__ == "__main__":
    main()
