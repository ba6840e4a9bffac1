"""The sampler's per-crop copy (``hiend_data.sampling.crops.copy_view``) vs its previous single-``copyto`` form.

Random float32 volumes saved as ``.npy`` and memory-mapped (as the cache serves them): ``big``
256 x 256 x 240 and ``abdomen``-sized 120 x 126 x 164. One fixed sequence of crops per volume (96^3 at
uniform random positions, augmentation drawn with ``SamplerConfig.pretrain()``: flips, rot90, scale,
shift), copied by both implementations in alternating rounds (each first in every other round) into 8 reused output buffers; every crop is
checked bit-identical between the two. Reports the median over rounds of ms per crop, overall and per
kind of crop (``zrev``: innermost axis reversed, ``swap``: odd rot90, ``int``: scale or shift fired).

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/crop_copy.py [--crops 400] [--rounds 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from hiend_data.augment import AugmentParams, params_from_uniforms, view_plan  # noqa: E402
from hiend_data.sampling import SamplerConfig, crop_box  # noqa: E402
from hiend_data.sampling.crops import copy_view as _copy_view  # noqa: E402

SHAPES = {"big": (256, 256, 240), "abdomen": (120, 126, 164)}


def baseline_copy(
    volume: np.ndarray,
    out: np.ndarray,
    src: tuple[slice, ...],
    rev: frozenset[int],
    swap: bool,
    aug: AugmentParams,
    channel_first: bool,
    intensity: bool,
) -> None:
    """The previous ``_copy_view``: one ``copyto`` (or fused multiply/add) through the augmented view."""
    sl = tuple(
        slice(s.stop - 1, s.start - 1 if s.start else None, -1) if i in rev else s for i, s in enumerate(src)
    )
    view = volume[(slice(None), *sl)] if channel_first else volume[sl]
    if swap:
        off = 1 if channel_first else 0
        perm = list(range(view.ndim))
        a, b = aug.rot_axes[0] + off, aug.rot_axes[1] + off
        perm[a], perm[b] = perm[b], perm[a]
        view = view.transpose(perm)
    if intensity and aug.scale is not None:
        np.multiply(view, np.float32(aug.scale), out=out, casting="same_kind")
        if aug.shift is not None:
            out += np.float32(aug.shift)
    elif intensity and aug.shift is not None:
        np.add(view, np.float32(aug.shift), out=out, casting="same_kind")
    else:
        np.copyto(out, view, casting="same_kind")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = SamplerConfig.pretrain()
    size = cfg.crop_size
    impls = {"baseline": baseline_copy, "new": _copy_view}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            rng = np.random.default_rng(0)
            path = Path(tmp) / f"{name}.npy"
            np.save(path, rng.random((1, *shape), dtype=np.float32))
            volume = np.asarray(np.load(path, mmap_mode="r"))
            crops = []
            for _ in range(args.crops):
                centre = [int(rng.integers(0, d)) for d in shape]
                aug = params_from_uniforms(cfg, rng.random(9))
                src, _, _ = crop_box(centre, shape, size)
                rev, swap = view_plan(aug)
                kind = (2 in rev, swap, aug.scale is not None or aug.shift is not None)
                crops.append((src, rev, swap, aug, kind))
            outs = {k: [np.empty((1, *size), np.float32) for _ in range(8)] for k in impls}
            for src, rev, swap, aug, _ in crops[:50]:
                a, b = outs["baseline"][0], outs["new"][0]
                baseline_copy(volume, a, src, rev, swap, aug, True, True)
                _copy_view(volume, b, src, rev, swap, aug, True, True)
                assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (src, aug)
            total: dict[str, list[float]] = defaultdict(list)
            per_kind: dict[str, dict[tuple, list[float]]] = {k: defaultdict(list) for k in impls}
            for r in range(args.rounds):
                for impl in sorted(impls, reverse=bool(r % 2)):  # alternate which runs first
                    fn = impls[impl]
                    times: dict[tuple, list[float]] = defaultdict(list)
                    t0 = time.perf_counter()
                    for j, (src, rev, swap, aug, kind) in enumerate(crops):
                        t = time.perf_counter()
                        fn(volume, outs[impl][j % 8], src, rev, swap, aug, True, True)
                        times[kind].append(time.perf_counter() - t)
                    total[impl].append((time.perf_counter() - t0) / len(crops) * 1e3)
                    for kind, v in times.items():
                        per_kind[impl][kind].append(statistics.median(v) * 1e3)
            res: dict = {f"{k}_ms_per_crop": round(statistics.median(v), 3) for k, v in total.items()}
            res["speedup"] = round(res["baseline_ms_per_crop"] / res["new_ms_per_crop"], 3)
            res["kinds"] = {
                f"zrev={int(k[0])},swap={int(k[1])},int={int(k[2])}": {
                    impl: round(statistics.median(per_kind[impl][k]), 3) for impl in impls
                }
                for k in sorted(per_kind["baseline"])
            }
            results[name] = res
            print(name, res, flush=True)
    print(
        json.dumps(
            {
                "bench": "crop_copy",
                "threads": 1,
                "crops": args.crops,
                "rounds": args.rounds,
                "volumes": results,
            }
        )
    )


if __name__ == "__main__":
    main()
