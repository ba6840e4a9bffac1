"""How many fine-tuning steps the demo's recipe needs before every organ is found on unseen phantoms.

Issue 7 asks the demo for a held-out mean organ Dice >= 0.75 with no organ below 0.5 in ~10 minutes on
2 cores; within ~600 steps the spleen and kidneys are never predicted (BENCHMARKS.md, "The demo's
recipe"). This measures the budget they need: the demo's data and recipe (``tools/demo.py``'s
``FINETUNE``: tiny UNETR, feature size 8, 32^3 crops at 3 mm, lr 5e-3, class-balanced crops,
class-weighted cross-entropy, no side-swapping augmentation), from scratch, for ``--steps`` optimizer
steps on 8 phantoms, validating (sliding window, Dice per organ) on 4 more every ``--val-steps`` steps.
Each validation is a held-out score: those 4 phantoms are never trained on.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/demo_budget.py --out runs/demo_budget [--steps 3200]

Writes ``RUN/budget.json`` (per validation: step, seconds of training so far, Dice per organ) and
prints a Markdown table; ``hiend-train``'s own ``log.jsonl`` is in ``RUN/finetune``. Runs in one
process with one thread (leaves the other core free); ``--resume`` continues a stopped run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from demo import CROP, FINETUNE, SPACING, WINDOW  # noqa: E402

BIN = Path(sys.executable).parent
TRAIN_CASES, VAL_CASES = 8, 4


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([str(BIN / args[0]), *args[1:]], check=True)


def table(records: list[dict], names: dict[str, str]) -> str:
    organs = [names[str(k)] for k in sorted(int(k) for k in names if k != "0")]
    lines = ["| step | minutes | " + " | ".join(organs) + " | mean |", "|" + " --- |" * (len(organs) + 3)]
    for r in records:
        dice = r["dice"]
        lines.append(
            f"| {r['step']} | {r['seconds'] / 60:.1f} | "
            + " | ".join(f"{d:.2f}" for d in dice)
            + f" | {sum(dice) / len(dice):.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_budget")
    ap.add_argument("--steps", type=int, default=3200)
    ap.add_argument("--val-steps", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spacing", type=float, default=SPACING, help="the plan's voxel size (mm)")
    ap.add_argument("--crop", type=int, default=CROP, help="crop edge (voxels)")
    ap.add_argument(
        "--window", type=float, nargs=2, default=WINDOW, metavar=("LO", "HI"), help="CT window (HU)"
    )
    ap.add_argument(
        "--extra", action="append", default=[], help="more finetune arguments, e.g. --extra=--lr=3e-3"
    )
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    raw, cache, run = args.out / "raw", args.out / "cache", args.out / "finetune"
    if not args.resume:
        sh(
            "hiend-data",
            "phantom",
            str(raw),
            "--cases",
            str(TRAIN_CASES + VAL_CASES),
            "--test-cases",
            "0",
            "--seed",
            str(args.seed),
        )
        sh(
            "hiend-data",
            "preprocess",
            str(raw),
            str(cache),
            "--spacing",
            f"{args.spacing:g}",
            "--window",
            *(f"{w:g}" for w in args.window),
            "--workers",
            "1",
        )
    epochs = args.steps // TRAIN_CASES  # one volume (4 crops) per step
    sh(
        "hiend-train",
        "finetune",
        "--cache",
        str(cache),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--set",
        f"model.img_size={args.crop}",
        *FINETUNE,
        *args.extra,
        "--epochs",
        str(epochs),
        "--warmup-epochs",
        f"{max(1.0, epochs * 0.05):g}",
        "--val-fraction",
        f"{VAL_CASES / (TRAIN_CASES + VAL_CASES)}",
        "--val-every",
        str(max(1, args.val_steps // TRAIN_CASES)),
        "--workers",
        "0",
        "--seed",
        str(args.seed),
        "-q",
        *(["--resume"] if args.resume else []),
    )
    names = json.loads((raw / "dataset.json").read_text())["labels"]
    names = {str(v): k for k, v in names.items()}
    records, seconds = [], 0.0
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "epoch":
            seconds += rec.get("seconds", 0.0)
            if rec.get("val_dice_per_class") is not None:
                records.append(
                    {
                        "step": rec.get("step"),
                        "epoch": rec.get("epoch"),
                        "seconds": seconds,
                        "dice": rec["val_dice_per_class"],
                    }
                )
    (args.out / "budget.json").write_text(json.dumps({"names": names, "validations": records}, indent=1))
    print(table(records, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
