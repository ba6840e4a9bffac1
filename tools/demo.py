"""The demo: a synthetic CT dataset through the whole pipeline, on a CPU, in a few minutes.

    python3 tools/dev.py demo [--out demo_out] [--cases 6] [--steps 150]

1. ``hiend-data phantom``: an nnU-Net v2 dataset of CT-like torsos with six labelled organs.
2. ``hiend-data inspect``: what one scan is (shape, spacing, orientation, HU range).
3. ``hiend-data preprocess``: RAS, 3 mm (the demo's coarse plan, for speed), window, foreground crop.
4. ``hiend-data bench``: crops per second of the paper's sampler on that cache.
5. A short fine-tune of a ``tiny`` UNETR on 48^3 crops (the paper's fine-tuning recipe, shrunk), saved
   as a hiend checkpoint with its preprocessing plan (hiend-train grows this into the real loops).
6. ``hiend-model predict``: label maps on each scan's own grid and affine.
7. ``hiend-eval score``: Dice / HD95 / NSD per organ, summary.json, per_case.csv and a PNG.
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


def finetune(cache_dir: Path, ckpt: Path, steps: int, seed: int) -> None:
    """Fine-tune a tiny UNETR on the cache with Dice + cross-entropy; save a hiend checkpoint."""
    import torch
    import torch.nn.functional as F
    from hiend_data.cache import Cache
    from hiend_data.sampling import SamplerConfig
    from hiend_data.torch import CropDataset, collate_crops
    from hiend_model import UNETR, build
    from hiend_model.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    cache = Cache.open(cache_dir)
    num_classes = 1 + max(max(cache.case(c).classes, default=0) for c in cache.cases)
    crop = (48, 48, 48)
    cfg = SamplerConfig.finetune(crop_size=crop, num_samples=2)
    data = CropDataset(cache, cfg, seed=seed)
    model = UNETR.from_mae(build("tiny"), num_classes=num_classes, feature_size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    print(f"\nfine-tuning a tiny UNETR ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{num_classes} classes) for {steps} steps on {crop} crops", flush=True)
    t0, first, losses = time.time(), None, []
    for step in range(steps):
        data.set_epoch(step)
        batch = collate_crops([data[(step * 2 + i) % len(data)] for i in range(2)])
        x, y = batch["image"], batch["label"].long()
        logits = model(x)
        prob = logits.softmax(1)
        onehot = F.one_hot(y, num_classes).permute(0, 4, 1, 2, 3).float()
        inter = (prob * onehot).sum((0, 2, 3, 4))
        dice = (2 * inter + 1e-5) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1e-5)
        loss = F.cross_entropy(logits, y) + (1 - dice[1:]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        first = losses[0] if first is None else first
        if step % 25 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {sum(losses[-10:]) / len(losses[-10:]):.3f}  ({time.time() - t0:.0f} s)",
                  flush=True)
    plan = cache.plan.model_copy(update={"crop_size": crop})
    save_checkpoint(ckpt, model, plan=plan, extra={"demo_steps": steps, "loss_first": first, "loss_last": losses[-1]})
    print(f"saved {ckpt}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    raw, cache, ckpt, pred, score = out / "raw", out / "cache", out / "tiny_unetr.safetensors", out / "pred", out / "score"

    sh("hiend-data", "phantom", str(raw), "--cases", str(args.cases), "--seed", str(args.seed))
    first = sorted((raw / "imagesTr").glob("*.nii.gz"))[0]
    print(sh("hiend-data", "inspect", str(first)))
    sh("hiend-data", "preprocess", str(raw), str(cache), "--spacing", "3", "--workers", "2")
    bench = sh("hiend-data", "bench", str(cache), "--seconds", "2", "--json")
    print(f"sampler: {json.loads(bench.strip().splitlines()[-1])['crops_per_s']:.0f} crops/s (96^3, one process)")

    finetune(cache, ckpt, args.steps, args.seed)
    print(sh("hiend-model", "info", str(ckpt))[-1500:])
    sh("hiend-model", "predict", str(ckpt), str(raw / "imagesTr"), "--out", str(pred))
    print(sh("hiend-eval", "score", str(pred), str(raw / "labelsTr"), "--out", str(score),
             "--labels", str(raw / "dataset.json")))
    summary = json.loads((score / "summary.json").read_text())
    fg = summary["mean"]["foreground"]
    print(f"demo done in {time.time() - t0:.0f} s: foreground Dice {fg['dice']:.3f}, HD95 {fg['hd95']:.1f} mm "
          f"(a {args.steps}-step tiny model on synthetic data); outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
