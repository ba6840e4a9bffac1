"""Does pre-training pay when labels are scarce? The paper's claim, in miniature, on one command.

    .venv/bin/python tools/bench/label_efficiency.py [--size full|smoke] [--jobs 2] [--work DIR] [--out DIR]
        [--arms hiend,mae,scratch] [--modes full,ld,frozen] [--shots 1,2,4,8] [--seeds 0,1,2] [--report]

1. An unlabelled pre-training pool: 48 CT-like phantoms (size, spacing and orientation drawn per
   case) plus the real CT scans in ``../shared/data/ct/`` (the label map there is left out), and a
   labelled set of 12 phantoms + 8 test phantoms, preprocessed once with the demo's plan (6 mm, the
   paper's CT window).
2. Pre-training of the ``tiny`` preset with the Hi-End-MAE decoder and with the plain-MAE decoder
   (``model.decoder = "plain"``; the arm keeps its old name "mae", a value still accepted): same
   steps, seed, data and recipe; only the decoder differs.
3. Fine-tuning of a UNETR from each and from scratch, in three modes (``full``: every weight, the
   paper's downstream recipe; ``ld``: ``--layer-decay 0.75``, the MAE recipe for ViT-L, which the paper
   does not use; ``frozen``: ``--freeze-encoder``, the features alone), on N = 1, 2, 4, 8 labelled
   cases (a nested seeded subset, ``--train-cases N``; 4 other cases validate), 3 seeds, the same
   optimizer steps for every arm, mode and N (960: the demo recipe's plateau at 6 mm; epochs =
   steps / N with one volume per step), the same recipe otherwise (the demo's, no arm tuned apart).
4. Every fine-tuned model (``last.safetensors``) segments the held-out test phantoms (``imagesTs``) and
   the real slab of ``../shared`` (never trained on; scored against TotalSegmentator's map folded onto
   the phantom labels) with ``hiend-model predict`` (the demo's component clean-up) and is scored with
   ``hiend-eval score``.
5. ``OUT/results.json`` (every run: arm, mode, N, seed, steps, training cases, per-organ Dice and
   HD95 on the test cases, the real slab's Dice, mean organ Dice, seconds; the pre-training curves),
   ``OUT/table.md`` and ``OUT/label_efficiency.png`` (mean organ Dice against N, a panel per mode, a
   line per arm, the seeds' spread shown).

The full grid is 108 fine-tunings, about 18 hours on the 2-core box: it runs in chunks. Every stage
is a hiend command (echoed to ``WORK/commands.log``); a run whose scores exist is skipped, so an
interrupted or partial study continues where it stopped when run again, and ``--arms``, ``--modes``,
``--shots`` and ``--seeds`` choose a chunk. ``--report`` writes the outputs from every run finished
so far (``complete`` false in results.json). ``--jobs 2`` runs two fine-tunings at once with one
torch thread each. ``--size smoke`` is the same pipeline at a few minutes' size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the demo's real slab, its reference folded onto the phantom labels, and predict's clean-up: one home
from demo import CLEAN, REAL_SLAB, fold_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED_CT = ROOT.parent / "shared" / "data" / "ct"
BIN = Path(sys.executable).parent
ARMS = ("hiend", "mae", "scratch")
#: fine-tuning modes: every weight (the paper's downstream recipe), MAE's layer-wise lr decay 0.75 (the
#: ViT-L fine-tuning recipe of He et al.; the paper uses none), and a frozen encoder (the features alone)
MODES = {"full": [], "ld": ["--layer-decay", "0.75"], "frozen": ["--freeze-encoder"]}

ORGANS = {"1": "liver", "2": "spleen", "3": "kidney_right", "4": "kidney_left", "5": "spine", "6": "lungs"}


@dataclass(frozen=True)
class Size:
    """How big the experiment is. Steps are optimizer steps."""

    pool: int  # unlabelled phantoms in the pre-training pool (+ the real scans)
    labelled: int  # labelled phantoms: N training candidates + validation cases
    test: int  # held-out labelled test phantoms
    pretrain_epochs: int  # over the pool, batch_size volumes x num_samples crops per step
    pretrain_batch: int
    finetune_steps: int  # per run, whatever N
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    modes: tuple[str, ...] = ("full",)  # fine-tuning modes (MODES)


SIZES = {
    # issue 20's grid: 3 arms x 3 modes x N = 1, 2, 4, 8 x 3 seeds = 108 fine-tunings of 960 steps (the
    # budget at which the demo's recipe plateaus at 6 mm: BENCHMARKS.md), ~20 min each on one core:
    # about 18 hours with --jobs 2, run in chunks (--arms/--modes/--shots/--seeds; finished runs are
    # skipped). 12 labelled phantoms: 4 validate, N of the other 8 train (nested).
    "full": Size(
        pool=48,
        labelled=12,
        test=8,
        pretrain_epochs=100,
        pretrain_batch=4,
        finetune_steps=960,
        shots=(1, 2, 4, 8),
        seeds=(0, 1, 2),
        modes=("full", "ld", "frozen"),
    ),
    # the whole pipeline in about 4 minutes: checks the script, measures nothing
    "smoke": Size(
        pool=4,
        labelled=3,
        test=2,
        pretrain_epochs=2,
        pretrain_batch=2,
        finetune_steps=4,
        shots=(1, 2),
        seeds=(0,),
        modes=("full", "ld", "frozen"),
    ),
}

#: the plan (hiend-data preprocess): RAS, 6 mm, the paper's CT window: the demo's plan since the
#: CT-like phantoms (BENCHMARKS.md: at 3 mm a 96 mm crop rarely shows an organ with its neighbours
#: and the UNETR learnt almost nothing in 600 steps; at 6 mm every organ is found by 320-480 steps)
SPACING_MM = 6.0
#: crops of the tiny preset (patch 8): 32^3 voxels = 192 mm at 6 mm, 4^3 tokens
CROP = 32
#: the demo's fine-tuning recipe, one TOML file shared by tools/demo.py and
#: tools/bench/label_efficiency.py (its comments say why each setting): hiend-train's CONFIG argument
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo_finetune.toml"

FINETUNE = [str(RECIPE)]
#: the one pre-training recipe both decoders get
PRETRAIN = ["--num-samples", "4", "--lr", "1.5e-3", "--val-fraction", "0.1", "--preview-every", "0"]


class Runner:
    """Runs hiend commands with a torch thread budget and echoes them to ``commands.log``."""

    def __init__(self, work: Path, threads: int) -> None:
        self.log = work / "commands.log"
        self.threads = threads

    def __call__(self, *args: str, threads: int | None = None) -> str:
        env = dict(os.environ)
        n = str(threads or self.threads)
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
        with self.log.open("a") as f:
            f.write(" ".join(args) + "\n")
        proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, text=True, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)}\nfailed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout


def build_data(work: Path, size: Size, sh: Runner) -> tuple[Path, Path, Path]:
    """-> (pool cache, labelled cache, raw labelled dataset with imagesTs/labelsTs)."""
    pool_raw, lab_raw = work / "pool_raw", work / "labelled_raw"
    pool_cache, lab_cache = work / "pool_cache", work / "labelled_cache"
    if not (pool_cache / "plan.json").exists():
        shutil.rmtree(pool_raw, ignore_errors=True)
        sh("hiend-data", "phantom", str(pool_raw), "--cases", str(size.pool), "--seed", "1000")
        scans = sorted(p for p in SHARED_CT.glob("*.nii.gz") if "_seg" not in p.name)
        if not scans:
            raise SystemExit(f"{SHARED_CT}: no real CT scans (../shared must be beside the repository)")
        lines = [str(p.resolve()) for p in sorted((pool_raw / "imagesTr").glob("*.nii.gz"))]
        lines += [str(p.resolve()) for p in scans]
        (work / "pool.txt").write_text("\n".join(lines) + "\n")  # images only: the pool is unlabelled
        sh(
            "hiend-data",
            "preprocess",
            str(work / "pool.txt"),
            str(pool_cache),
            "--spacing",
            str(SPACING_MM),
            "--workers",
            "2",
        )
    if not (lab_cache / "plan.json").exists():
        shutil.rmtree(lab_raw, ignore_errors=True)
        sh(
            "hiend-data",
            "phantom",
            str(lab_raw),
            "--cases",
            str(size.labelled),
            "--test-cases",
            str(size.test),
            "--seed",
            "2000",
        )
        sh(
            "hiend-data",
            "preprocess",
            str(lab_raw),
            str(lab_cache),
            "--spacing",
            str(SPACING_MM),
            "--workers",
            "2",
        )
    return pool_cache, lab_cache, lab_raw


def pretrain(work: Path, size: Size, pool_cache: Path, arm: str, sh: Runner, threads: int) -> dict:
    """Pre-train one decoder; returns its loss curve (skips a finished run)."""
    run = work / f"pretrain_{arm}"
    done = run / "last.safetensors"
    t0 = time.time()
    if not (run / "done.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        sh(
            "hiend-train",
            "pretrain",
            "--out",
            str(run),
            "--cache",
            str(pool_cache),
            "--preset",
            "tiny",
            "--set",
            f"model.img_size={CROP}",
            "--set",
            f"model.decoder={arm}",
            "--epochs",
            str(size.pretrain_epochs),
            "--batch-size",
            str(size.pretrain_batch),
            "--warmup-epochs",
            str(max(1, size.pretrain_epochs // 10)),
            "--val-every",
            str(max(1, size.pretrain_epochs // 10)),
            "--workers",
            "1",
            "--seed",
            "0",
            "-q",
            *PRETRAIN,
            threads=threads,
        )
        (run / "done.json").write_text(json.dumps({"seconds": time.time() - t0}))
    assert done.exists()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    setup = next(r for r in records if r.get("event") == "setup")
    epochs = [r for r in records if r.get("event") == "epoch"]
    return {
        "arm": arm,
        "steps": epochs[-1]["step"],
        "parameters": setup["parameters"],
        "seconds": json.loads((run / "done.json").read_text())["seconds"],
        "loss": [round(r["loss"], 5) for r in epochs],
        "val_loss": {r["epoch"]: round(r["val_loss"], 5) for r in epochs if "val_loss" in r},
    }


def finetune_and_score(
    work: Path, size: Size, lab_cache: Path, lab_raw: Path, arm: str, mode: str, n: int, seed: int, sh: Runner
) -> dict:
    """One fine-tuning run, its predictions on the test cases and the real slab, and their scores
    (skips finished runs)."""
    name = f"ft_{arm}_{mode}_n{n}_s{seed}"
    run = work / name
    result_file = run / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    shutil.rmtree(run, ignore_errors=True)
    epochs = max(1, size.finetune_steps // n)
    init = [] if arm == "scratch" else ["--init", str(work / f"pretrain_{arm}" / "last.safetensors")]
    model = ["--preset", "tiny", "--set", f"model.img_size={CROP}"] if arm == "scratch" else []
    t0 = time.time()
    sh(
        "hiend-train",
        "finetune",
        "--out",
        str(run),
        "--cache",
        str(lab_cache),
        *init,
        *model,
        *FINETUNE,
        *MODES[mode],
        "--train-cases",
        str(n),
        "--val-fraction",
        f"{1 / 3:.6f}",
        "--epochs",
        str(epochs),
        "--warmup-epochs",
        f"{epochs * 0.05:g}",
        "--val-every",
        str(epochs),
        "--seed",
        str(seed),
        "--workers",
        "0",
        "-q",
    )
    seconds = time.time() - t0
    sh(
        "hiend-model",
        "predict",
        str(run / "last.safetensors"),
        str(lab_raw / "imagesTs"),
        "--out",
        str(run / "pred"),
        *CLEAN,
    )
    sh(
        "hiend-eval",
        "score",
        str(run / "pred"),
        str(lab_raw / "labelsTs"),
        "--out",
        str(run / "score"),
        "--labels",
        str(lab_raw / "dataset.json"),
        "--json",
    )
    summary = json.loads((run / "score" / "summary.json").read_text())
    split = json.loads((run / "split.json").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs_rec = [r for r in records if r.get("event") == "epoch"]
    organs = {
        ORGANS[k]: {"dice": summary["mean"][k]["dice"], "hd95": summary["mean"][k]["hd95"]} for k in ORGANS
    }
    drift = (
        None
        if arm == "scratch"
        else encoder_drift(work / f"pretrain_{arm}" / "last.safetensors", run / "last.safetensors")
    )
    result = {
        "arm": arm,
        "mode": mode,
        "real_slab": real_slab(run, lab_raw, sh),
        "n": n,
        "seed": seed,
        "encoder_drift": drift,
        "steps": epochs_rec[-1]["step"],
        "epochs": epochs,
        "train_cases": split["train"],
        "val_cases": split["val"],
        "test_cases": [c["case"] for c in summary["per_case"]],
        "organs": organs,
        "mean_organ_dice": statistics.fmean(o["dice"] for o in organs.values()),
        "worst_organ": min(organs, key=lambda k: organs[k]["dice"]),
        "final_train_loss": epochs_rec[-1]["loss"],
        "seconds": round(seconds, 1),
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def real_slab(run: Path, lab_raw: Path, sh: Runner) -> dict | None:
    """The run's model on the real slab (never trained on), scored against TotalSegmentator's map folded
    onto the phantom labels: per-organ Dice and the mean (None without ../shared)."""
    image = Path(f"{REAL_SLAB}.nii.gz")
    if not image.exists():
        return None
    ref = run.parent / "real_ref"
    if not (ref / image.name).exists():
        fold_reference(
            Path(f"{REAL_SLAB}_seg.nii.gz"), Path(f"{REAL_SLAB}_seg_labels.json"), ref / image.name
        )
    sh(
        "hiend-model",
        "predict",
        str(run / "last.safetensors"),
        str(image),
        "--out",
        str(run / "real"),
        *CLEAN,
    )
    score = run / "real_score"
    sh(
        "hiend-eval",
        "score",
        str(run / "real"),
        str(ref),
        "--out",
        str(score),
        "--labels",
        str(lab_raw / "dataset.json"),
    )
    summary = json.loads((score / "summary.json").read_text())
    dice = {ORGANS[k]: summary["mean"][k]["dice"] for k in ORGANS if k in summary["mean"]}
    return {"dice": dice, "mean_organ_dice": statistics.fmean(dice.values())}


def encoder_drift(pretrained: Path, finetuned: Path) -> float:
    """How far fine-tuning moved the pre-trained encoder: ||w_ft - w_pre|| / ||w_pre|| over every
    encoder tensor both checkpoints hold (the class token is only in the pre-training model)."""
    import numpy as np
    from safetensors.numpy import load_file

    a, b = load_file(str(pretrained)), load_file(str(finetuned))
    keys = [k for k in a if k.startswith("encoder.") and k in b]
    num = sum(float(np.sum((b[k].astype(np.float64) - a[k]) ** 2)) for k in keys)
    den = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in keys)
    return round((num / den) ** 0.5, 5)


def _cell(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.3f} +- {sd:.3f} [{min(xs):.3f}, {max(xs):.3f}] ({len(xs)})"


def table(runs: list[dict], shots: tuple[int, ...], modes: tuple[str, ...]) -> str:
    """Markdown: mean organ Dice (mean +- sd over seeds [min, max] (seeds)) per arm, mode and N on the
    held-out phantoms and on the real slab; paired differences within a mode; then per organ."""
    head = "| arm | mode | " + " | ".join(f"N = {n}" for n in shots) + " |"
    rule = "| --- | --- | " + " | ".join("---" for _ in shots) + " |"
    lines: list[str] = []
    for what, key in (("held-out phantoms", "mean_organ_dice"), ("the real slab", "real")):
        lines += [f"Mean organ Dice on {what} (mean +- sd over seeds [min, max] (seeds)):", "", head, rule]
        for mode in modes:
            for arm in ARMS:
                cells = []
                for n in shots:
                    rs = [r for r in runs if (r["arm"], r.get("mode", "full"), r["n"]) == (arm, mode, n)]
                    xs = [_value(r, key) for r in rs if _value(r, key) is not None]
                    cells.append(_cell(xs))
                lines.append(f"| {arm} | {mode} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Paired differences of held-out mean organ Dice (same mode, N, seed, training cases), "
        "mean over seeds [min, max]:",
        "",
        "| pair | mode | " + " | ".join(f"N = {n}" for n in shots) + " |",
        rule,
    ]
    for mode in modes:
        for a, b in (("hiend", "scratch"), ("mae", "scratch"), ("hiend", "mae")):
            cells = []
            for n in shots:
                by = {
                    (r["arm"], r["seed"]): r["mean_organ_dice"]
                    for r in runs
                    if (r.get("mode", "full"), r["n"]) == (mode, n)
                }
                d = [by[(a, s)] - by[(b, s)] for (arm, s) in by if arm == a and (b, s) in by]
                cells.append(f"{statistics.fmean(d):+.3f} [{min(d):+.3f}, {max(d):+.3f}]" if d else "-")
            lines.append(f"| {a} - {b} | {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per organ, held-out Dice (HD95 mm), mean over seeds:",
        "",
        "| arm | mode | N | " + " | ".join(ORGANS.values()) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in ORGANS) + " |",
    ]
    for mode in modes:
        for arm in ARMS:
            for n in shots:
                rs = [r for r in runs if (r["arm"], r.get("mode", "full"), r["n"]) == (arm, mode, n)]
                if not rs:
                    continue
                cells = [
                    f"{statistics.fmean(r['organs'][o]['dice'] for r in rs):.3f} "
                    f"({statistics.fmean(r['organs'][o]['hd95'] for r in rs):.1f})"
                    for o in ORGANS.values()
                ]
                lines.append(f"| {arm} | {mode} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _value(r: dict, key: str) -> float | None:
    if key == "real":
        return (r.get("real_slab") or {}).get("mean_organ_dice")
    return r[key]


def plot(runs: list[dict], shots: tuple[int, ...], modes: tuple[str, ...], path: Path) -> None:
    """Held-out mean organ Dice against N, one panel per mode, one line per arm (mean over seeds), the
    seeds as points, min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 4.2), dpi=120, squeeze=False)
    names = {"hiend": "Hi-End-MAE pre-trained", "mae": "plain MAE pre-trained", "scratch": "from scratch"}
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, arm in enumerate(ARMS):
            xs, means, lo, hi = [], [], [], []
            for n in shots:
                ys = [
                    r["mean_organ_dice"]
                    for r in runs
                    if (r["arm"], r.get("mode", "full"), r["n"]) == (arm, mode, n)
                ]
                if not ys:
                    continue
                x = n * (1 + 0.04 * (i - 1))  # a small offset so the arms' bars do not overlap
                xs.append(x)
                means.append(statistics.fmean(ys))
                lo.append(means[-1] - min(ys))
                hi.append(max(ys) - means[-1])
                ax.scatter([x] * len(ys), ys, s=12, alpha=0.5, color=f"C{i}")
            if xs:
                ax.errorbar(xs, means, yerr=[lo, hi], marker="o", capsize=3, color=f"C{i}", label=names[arm])
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(shots), [str(n) for n in shots])
        ax.set_xlabel("labelled training cases N")
        ax.set_ylabel("mean organ Dice, held-out phantoms")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"fine-tuning: {mode}")
    fig.suptitle("tiny UNETR on CT-like phantoms (6 mm): mean over seeds, bars = min..max")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "label_efficiency_6mm",
        help="caches, runs and checkpoints (large; not committed)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results.json, table.md, PNG (default: tools/bench/results/label_efficiency_6mm "
        "for --size full, WORK/results otherwise)",
    )
    for flag, what in (("--arms", "arms"), ("--modes", "modes"), ("--shots", "N"), ("--seeds", "seeds")):
        parser.add_argument(flag, default=None, help=f"a chunk: only these {what} (comma-separated)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="fine-tuning runs at once (one torch thread each)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only write results.json, table.md and the PNG from the runs finished in WORK",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    work: Path = args.work.resolve()
    out: Path = (
        args.out
        or (
            ROOT / "tools" / "bench" / "results" / "label_efficiency_6mm"
            if args.size == "full"
            else work / "results"
        )
    ).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 2))
    sh = Runner(work, threads=1)
    t0 = time.time()

    if args.report:
        runs = [json.loads(f.read_text()) for f in sorted(work.glob("ft_*/result.json"))]
        pre = {
            arm: pretrain(work, size, work / "pool_cache", arm, sh, threads)
            for arm in ("hiend", "mae")
            if (work / f"pretrain_{arm}" / "done.json").exists()
        }
        write_results(out, args.size, size, pre, runs, None)
        return 0
    pool_cache, lab_cache, lab_raw = build_data(work, size, sh)
    print(f"[{time.time() - t0:6.0f} s] data ready: {pool_cache}, {lab_cache}", flush=True)
    pre = {}
    for arm in ("hiend", "mae"):
        pre[arm] = pretrain(work, size, pool_cache, arm, sh, threads)
        print(
            f"[{time.time() - t0:6.0f} s] pre-trained {arm}: {pre[arm]['steps']} steps, loss "
            f"{pre[arm]['loss'][0]:.4f} -> {pre[arm]['loss'][-1]:.4f}",
            flush=True,
        )

    def chosen(flag: str | None, every: tuple) -> tuple:
        return every if flag is None else tuple(type(every[0])(x) for x in flag.split(","))

    arms, modes = chosen(args.arms, ARMS), chosen(args.modes, size.modes)
    shots, seeds = chosen(args.shots, size.shots), chosen(args.seeds, size.seeds)
    # seed by seed, so that a chunk cut short still holds whole paired comparisons
    jobs = [(a, m, n, s) for s in seeds for m in modes for n in shots for a in arms]

    def one(job: tuple[str, str, int, int]) -> dict:
        r = finetune_and_score(work, size, lab_cache, lab_raw, *job, sh=sh)
        print(
            f"[{time.time() - t0:6.0f} s] {r['arm']:7s} {r['mode']:6s} N={r['n']} seed={r['seed']}: mean organ Dice "
            f"{r['mean_organ_dice']:.3f} (worst {r['worst_organ']} "
            f"{r['organs'][r['worst_organ']]['dice']:.3f}), {r['seconds']:.0f} s",
            flush=True,
        )
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, jobs))
    runs = [json.loads(f.read_text()) for f in sorted(work.glob("ft_*/result.json"))]
    write_results(out, args.size, size, pre, runs, time.time() - t0)
    print(f"done in {time.time() - t0:.0f} s: {out}/results.json, table.md, label_efficiency.png")
    return 0


def write_results(
    out: Path, name: str, size: Size, pre: dict, runs: list[dict], seconds: float | None
) -> None:
    """results.json (every run), table.md and the PNG; ``seconds`` None: a report of the runs so far."""
    expected = len(size.seeds) * len(size.shots) * len(ARMS) * len(size.modes)
    results = {
        "size": name,
        "config": size.__dict__
        | {"shots": list(size.shots), "seeds": list(size.seeds), "modes": list(size.modes)},
        "modes": MODES,
        "plan": {"spacing_mm": SPACING_MM, "crop": CROP},
        "finetune_recipe": tomllib.loads(RECIPE.read_text()),
        "pretrain_recipe": PRETRAIN,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "seconds": None if seconds is None else round(seconds, 1),
        "complete": len(runs) == expected,
        "runs_done": len(runs),
        "runs_expected": expected,
        "pretrain": pre,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(table(runs, size.shots, size.modes))
    plot(runs, size.shots, size.modes, out / "label_efficiency.png")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
