"""Phantoms against a real CT: HU per structure, organ volumes and extents, body size, tissue fractions.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/phantom_realism.py [--cases 12] [--seed 0]
        [--json tools/bench/results/phantom_realism.json]

Measures (``hiend_data.phantom.realism.measure``) the real labelled slab
``../shared/data/ct/body_ct_3mm_ras_30slices`` (TotalSegmentator's map folded onto the phantom labels,
plus its aorta and autochthon muscles) and ``--cases`` phantoms drawn at the slab's 3 mm (native phase,
coverage drawn per case), and prints a Markdown table: the real value, the phantoms' mean and range,
and the accepted range with its source (``realism.RANGES``). Also times phantom generation at the
demo's size (``hiend-data phantom``'s default, coarse resolution), seconds per case in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SLAB = ROOT.parent / "shared" / "data" / "ct" / "body_ct_3mm_ras_30slices"


def real_stats() -> dict:
    import nibabel as nib

    from hiend_data.phantom.realism import measure, totalseg_structures

    img = nib.as_closest_canonical(nib.load(f"{SLAB}.nii.gz"))
    seg = nib.as_closest_canonical(nib.load(f"{SLAB}_seg.nii.gz"))
    names = json.loads(Path(f"{SLAB}_seg_labels.json").read_text())["labels_present_in_example_seg"]
    hu = img.get_fdata(dtype=np.float32)
    structures = totalseg_structures(np.asarray(seg.dataobj), names)
    return measure(hu, tuple(float(s) for s in img.header.get_zooms()[:3]), structures)


def phantom_stats(cases: int, seed: int) -> list[dict]:
    from hiend_data.phantom import make_phantom
    from hiend_data.phantom.realism import measure, phantom_structures

    out = []
    for i in range(cases):
        rng = np.random.default_rng([seed, i])
        ph = make_phantom(rng, spacing=(3.0, 3.0, 3.0), orientation=("R", "A", "S"))
        st = measure(ph.hu, (3.0, 3.0, 3.0), phantom_structures(ph.label, ph.tissue))
        st["coverage"] = ph.scan.coverage
        out.append(st)
    return out


def seconds_per_case(cases: int) -> float:
    import tempfile

    from hiend_data.phantom import make_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_phantom_dataset(Path(tmp) / "ds", cases=cases, seed=0)
        return (time.perf_counter() - t0) / cases


def table(real: dict, phantoms: list[dict]) -> str:
    from hiend_data.phantom.realism import RANGES, flat

    r = flat(real)
    ps = [flat(p) for p in phantoms]
    keys = list(RANGES)
    lines = [
        "| quantity | real slab | phantoms: mean [min, max] (n) | accepted range | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in keys:
        vals = [p[k] for p in ps if k in p]
        fmt = "{:.3f}" if k.startswith("fractions") else "{:.0f}"
        real_v = fmt.format(r[k]) if k in r else "(cut)"
        ph = (
            f"{fmt.format(np.mean(vals))} [{fmt.format(min(vals))}, {fmt.format(max(vals))}] ({len(vals)})"
            if vals
            else "-"
        )
        lo, hi, src = RANGES[k]
        lines.append(f"| {k} | {real_v} | {ph} | {lo} .. {hi} | {src} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from hiend_data.phantom.realism import out_of_range

    real = real_stats()
    phantoms = phantom_stats(args.cases, args.seed)
    spc = seconds_per_case(4)
    print(table(real, phantoms))
    print(f"\ngeneration at the demo's size (coarse, written as .nii.gz): {spc:.2f} s per case")
    bad = {i: out_of_range(p, p["coverage"]) for i, p in enumerate(phantoms)}
    for i, lines in bad.items():
        for line in lines:
            print(f"phantom {i} ({phantoms[i]['coverage']}): {line}")
    print(f"real slab out of range: {out_of_range(real) or 'none'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"real": real, "phantoms": phantoms, "seconds_per_case": spc}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
