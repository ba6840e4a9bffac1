"""The demo: a synthetic CT dataset through the whole pipeline, on a CPU, in a few minutes.

    python3 tools/dev.py demo [--out demo_out] [--cases 6] [--steps 150]

1. ``hiend-data phantom``: an nnU-Net v2 dataset of CT-like torsos with six labelled organs.
2. ``hiend-data inspect``: what one scan is (shape, spacing, orientation, HU range).
3. ``hiend-data preprocess``: RAS, 3 mm (the demo's coarse plan, for speed), window, foreground crop.
4. ``hiend-data bench``: crops per second of the paper's sampler on that cache.
5. ``hiend-train pretrain``: a few epochs of Hi-End-MAE pre-training of the ``tiny`` preset (48^3 crops)
   with reconstruction previews.
6. ``hiend-train finetune``: a UNETR initialised from that pre-training, Dice + cross-entropy,
   sliding-window validation; ``best.safetensors`` carries the model, its config and the plan.
7. ``hiend-model predict``: label maps on each scan's own grid and affine.
8. ``hiend-eval score``: Dice / HD95 / NSD per organ, summary.json, per_case.csv and a PNG.

Sizes are the demo's (a tiny model, coarse 3 mm plan, few epochs) so it runs on a laptop CPU; the
numbers it prints are a smoke test of the pipeline, not of the method.
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


def sh(*args: str) -> str:
    """Run one of the packages' commands, echo it, return its stdout (fail loudly)."""
    print(f"\n$ {' '.join(args)}", flush=True)
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], text=True, capture_output=True)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
        raise SystemExit(f"demo: {args[0]} {args[1]} failed with exit code {proc.returncode}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    raw, cache, pred, score = out / "raw", out / "cache", out / "pred", out / "score"
    pre_run, ft_run = out / "pretrain", out / "finetune"

    sh("hiend-data", "phantom", str(raw), "--cases", str(args.cases), "--seed", str(args.seed))
    first = sorted((raw / "imagesTr").glob("*.nii.gz"))[0]
    print(sh("hiend-data", "inspect", str(first)))
    sh("hiend-data", "preprocess", str(raw), str(cache), "--spacing", "3", "--workers", "2")
    bench = sh("hiend-data", "bench", str(cache), "--seconds", "2", "--json")
    print(f"sampler: {json.loads(bench.strip().splitlines()[-1])['crops_per_s']:.0f} crops/s (96^3, one process)")

    common = ["--cache", str(cache), "--workers", "1", "--seed", str(args.seed), "-q"]
    sh("hiend-train", "pretrain", "--out", str(pre_run), "--preset", "tiny", "--epochs", str(args.pretrain_epochs),
       "--num-samples", "4", "--lr", "1e-3", "--warmup-epochs", "1", "--val-fraction", "0.2",
       "--preview-every", str(args.pretrain_epochs), *common)
    losses = [json.loads(line) for line in (pre_run / "log.jsonl").read_text().splitlines()]
    epochs = [rec for rec in losses if rec.get("event") == "epoch"]
    if epochs:
        print(f"pre-training loss by epoch: {[round(rec.get('loss', float('nan')), 4) for rec in epochs]}")
    sh("hiend-train", "finetune", "--out", str(ft_run), "--init", str(pre_run / "last.safetensors"),
       "--feature-size", "8", "--epochs", str(args.finetune_epochs), "--num-samples", "2", "--lr", "2e-3",
       "--warmup-epochs", "1", "--val-fraction", "0.2", "--val-every", str(max(1, args.finetune_epochs // 4)), *common)
    ckpt = ft_run / "best.safetensors"
    print(sh("hiend-model", "info", str(ckpt))[-1200:])
    sh("hiend-model", "predict", str(ckpt), str(raw / "imagesTr"), "--out", str(pred))
    print(sh("hiend-eval", "score", str(pred), str(raw / "labelsTr"), "--out", str(score),
             "--labels", str(raw / "dataset.json")))
    summary = json.loads((score / "summary.json").read_text())
    fg = summary["mean"]["foreground"]
    print(f"demo done in {time.time() - t0:.0f} s: foreground Dice {fg['dice']:.3f}, HD95 {fg['hd95']:.1f} mm "
          f"(a tiny model, {args.finetune_epochs} fine-tuning epochs on synthetic data); outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
