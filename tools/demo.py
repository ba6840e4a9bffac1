"""The demo: a synthetic CT dataset through the whole pipeline, on a CPU, in a few minutes.

    python3 tools/dev.py demo [--out demo_out] [--cases 8] [--test-cases 4] [--finetune-steps N]

1. ``hiend-data phantom``: an nnU-Net v2 dataset of CT-like torsos with six labelled organs, plus
   held-out test cases (``imagesTs`` with their labels in ``labelsTs``) that no step trains on.
2. ``hiend-data inspect``: what one scan is (shape, spacing, orientation, HU range).
3. ``hiend-data preprocess``: RAS, 6 mm (the demo's coarse plan: context and speed), window, foreground crop.
4. ``hiend-data bench``: crops per second of the paper's sampler on that cache.
5. ``hiend-train pretrain``: Hi-End-MAE pre-training of the ``tiny`` preset on 32^3 crops (192 mm) of
   the training images, with reconstruction previews.
6. ``hiend-train finetune``: a UNETR initialised from that pre-training, Dice + cross-entropy, with the
   demo's recipe (``tools/recipes/demo_finetune.toml``; see BENCHMARKS.md for how it was found); ``last.safetensors``
   carries the model, its config and the plan.
7. ``hiend-model predict``: label maps of the held-out ``imagesTs`` on each scan's own grid and affine.
8. ``hiend-eval score``: Dice / HD95 / NSD per organ against ``labelsTs``, summary.json, per_case.csv
   and a PNG: the mean of the per-organ Dice on those unseen cases and the worst organ (not the union
   of all labels, which the lungs would dominate).
9. The same model on a real CT it never saw: the labelled slab in ``../shared/data/ct``
   (``body_ct_3mm_ras_30slices``, a non-contrast upper abdomen), scored against TotalSegmentator's map
   folded onto the phantom labels (``hiend_data.phantom.totalseg``), and ``real_slab.png`` with the
   predicted (solid) and reference (dashed) outlines, axial and coronal. The model never saw a real
   label, nor a real scan. Skipped with a note when ``../shared`` is not beside the checkout.

Sizes are the demo's (a tiny model, coarse 6 mm plan, minutes of training) so it runs on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
REAL_SLAB = ROOT.parent / "shared" / "data" / "ct" / "body_ct_3mm_ras_30slices"


def sh(*args: str) -> str:
    """Run one of the packages' commands, echo it, return its stdout (fail loudly)."""
    print(f"\n$ {' '.join(args)}", flush=True)
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], text=True, capture_output=True)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
        raise SystemExit(f"demo: {args[0]} {args[1]} failed with exit code {proc.returncode}")
    return proc.stdout


#: the demo's fine-tuning recipe, one TOML file shared by tools/demo.py and
#: tools/bench/label_efficiency.py (its comments say why each setting): hiend-train's CONFIG argument
RECIPE = Path(__file__).resolve().parent / "recipes" / "demo_finetune.toml"
FINETUNE = [str(RECIPE)]
#: predict's connected-component clean-up: liver, spleen and each kidney are one piece; vertebrae and
#: lungs drop islands under 10 % of their largest piece (BENCHMARKS.md: +0.05 held-out mean Dice)
CLEAN = ["--keep-largest", "1,2,3,4", "--min-component", "0.1"]
#: crops of the tiny preset (patch 8): 32^3 voxels, 192 mm at the demo's 6 mm
CROP = 32
#: the demo's plan (mm): coarse enough that a 32^3 crop sees an organ with its neighbours (BENCHMARKS.md,
#: "The demo on CT-like phantoms": 6 mm learns the organs in half the steps of 5 mm and a third of 4 mm)
SPACING = 6.0
#: the CT window (HU): the abdominal window; a wide one (-1000..400, lungs apart from outside air)
#: learnt the organs at half the speed
WINDOW = (-175.0, 250.0)


def organ_summary(summary: dict) -> tuple[float, str, float, dict[str, float]]:
    """(mean of the per-organ mean Dice, worst organ, its Dice, {organ: Dice}) from summary.json."""
    names = {k: v for k, v in summary["names"].items() if k != "foreground"}
    dice = {names[k]: summary["mean"][k]["dice"] for k in names if summary["mean"][k]["dice"] is not None}
    worst = min(dice, key=dice.get)
    return sum(dice.values()) / len(dice), worst, dice[worst], dice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--cases", type=int, default=8, help="labelled training phantoms")
    parser.add_argument("--test-cases", type=int, default=4, help="held-out phantoms, scored at the end")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--finetune-steps", type=int, default=960)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    raw, cache, pred, score = out / "raw", out / "cache", out / "pred", out / "score"
    pre_run, ft_run = out / "pretrain", out / "finetune"

    sh(
        "hiend-data",
        "phantom",
        str(raw),
        "--cases",
        str(args.cases),
        "--test-cases",
        str(args.test_cases),
        "--seed",
        str(args.seed),
    )
    first = sorted((raw / "imagesTr").glob("*.nii.gz"))[0]
    print(sh("hiend-data", "inspect", str(first)))
    sh(
        "hiend-data",
        "preprocess",
        str(raw),
        str(cache),
        "--spacing",
        f"{SPACING:g}",
        "--window",
        *(f"{w:g}" for w in WINDOW),
        "--workers",
        "2",
    )
    bench = sh("hiend-data", "bench", str(cache), "--seconds", "2", "--json")
    print(
        f"sampler: {json.loads(bench.strip().splitlines()[-1])['crops_per_s']:.0f} crops/s (96^3, one process)"
    )

    common = ["--cache", str(cache), "--workers", "1", "--seed", str(args.seed), "-q"]
    sh(
        "hiend-train",
        "pretrain",
        "--out",
        str(pre_run),
        "--preset",
        "tiny",
        "--set",
        f"model.img_size={CROP}",
        "--epochs",
        str(args.pretrain_epochs),
        "--batch-size",
        "2",
        "--num-samples",
        "4",
        "--lr",
        "1.5e-3",
        "--warmup-epochs",
        str(max(1, args.pretrain_epochs // 10)),
        "--val-fraction",
        "0",
        "--preview-every",
        str(args.pretrain_epochs),
        *common,
    )
    losses = [json.loads(line) for line in (pre_run / "log.jsonl").read_text().splitlines()]
    epochs = [rec["loss"] for rec in losses if rec.get("event") == "epoch"]
    if epochs:
        print(f"pre-training loss: {epochs[0]:.4f} (epoch 1) -> {epochs[-1]:.4f} (epoch {len(epochs)})")
    # one volume per step: epochs x training cases = optimizer steps
    ft_epochs = max(1, round(args.finetune_steps / args.cases))
    sh(
        "hiend-train",
        "finetune",
        "--out",
        str(ft_run),
        "--init",
        str(pre_run / "last.safetensors"),
        *FINETUNE,
        "--epochs",
        str(ft_epochs),
        "--warmup-epochs",
        f"{max(1.0, ft_epochs * 0.05):g}",
        "--val-fraction",
        "0",
        *common,
    )
    ckpt = ft_run / "last.safetensors"
    print(sh("hiend-model", "info", str(ckpt))[-1200:])
    sh("hiend-model", "predict", str(ckpt), str(raw / "imagesTs"), "--out", str(pred), *CLEAN)
    print(
        sh(
            "hiend-eval",
            "score",
            str(pred),
            str(raw / "labelsTs"),
            "--out",
            str(score),
            "--labels",
            str(raw / "dataset.json"),
        )
    )
    summary = json.loads((score / "summary.json").read_text())
    mean, worst, worst_dice, _ = organ_summary(summary)
    held_out = (
        f"held-out mean organ Dice {mean:.3f} over {len(summary['per_case'])} unseen cases, "
        f"worst organ {worst} {worst_dice:.3f}"
    )
    print(held_out)
    real = real_slab(ckpt, out / "real", raw / "dataset.json")
    print(
        f"demo done in {time.time() - t0:.0f} s: {held_out}; {real} "
        f"(tiny model, {ft_epochs * args.cases} fine-tuning steps); outputs in {out}/"
    )
    return 0


def fold_reference(seg_path: Path, names_path: Path, out: Path) -> Path:
    """TotalSegmentator's map of the slab folded onto the phantom labels, written as ``out``."""
    from hiend_data import load_volume, save_volume
    from hiend_data.phantom.totalseg import fold_totalsegmentator

    seg = load_volume(seg_path)
    names = json.loads(names_path.read_text())["labels_present_in_example_seg"]
    return save_volume(out, fold_totalsegmentator(seg.array, names), like=seg)


def real_slab(ckpt: Path, out: Path, dataset_json: Path) -> str:
    """Segment the real slab with ``ckpt``, score it against the folded TotalSegmentator map, draw the
    PNG; return the line to print."""
    image = Path(f"{REAL_SLAB}.nii.gz")
    if not image.exists():
        return f"real CT slab skipped ({image} not found: put ../shared beside the checkout)"
    ref = fold_reference(
        Path(f"{REAL_SLAB}_seg.nii.gz"), Path(f"{REAL_SLAB}_seg_labels.json"), out / "ref" / image.name
    )
    sh("hiend-model", "predict", str(ckpt), str(image), "--out", str(out / "pred"), *CLEAN)
    print(
        sh(
            "hiend-eval",
            "score",
            str(out / "pred"),
            str(out / "ref"),
            "--out",
            str(out / "score"),
            "--labels",
            str(dataset_json),
        )
    )
    summary = json.loads((out / "score" / "summary.json").read_text())
    mean, _, _, dice = organ_summary(summary)
    png = draw_real_slab(image, out / "pred" / image.name, ref, dataset_json, out / "real_slab.png", dice)
    organs = ", ".join(f"{k} {v:.2f}" for k, v in dice.items())
    return (
        f"real CT slab (never seen, TotalSegmentator's labels): mean organ Dice {mean:.3f} ({organs}); {png}"
    )


def draw_real_slab(
    image: Path, pred: Path, ref: Path, dataset_json: Path, png: Path, dice: dict[str, float]
) -> Path:
    """The slab with predicted and reference outlines (hiend_eval.overlay), in RAS."""
    import nibabel as nib
    import numpy as np

    from hiend_eval.overlay import draw_overlay

    arrays = [nib.as_closest_canonical(nib.load(p)) for p in (image, pred, ref)]
    hu, p, r = (np.asarray(a.dataobj) for a in arrays)
    labels = json.loads(dataset_json.read_text())["labels"]
    names = {int(v): f"{k} ({dice[k]:.2f})" if k in dice else k for k, v in labels.items() if int(v) > 0}
    spacing = tuple(float(s) for s in arrays[0].header.get_zooms()[:3])
    title = "a real CT the model never saw: model (solid) vs TotalSegmentator (dashed), Dice in the legend"
    return draw_overlay(hu, p, r, names, spacing, png, title=title)


if __name__ == "__main__":
    sys.exit(main())
