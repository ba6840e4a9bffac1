"""Is pre-training learning anything for segmentation? The probe curve of each decoder, with seeds.

    .venv/bin/python tools/bench/probe_curves.py [--size full|smoke] [--jobs 2] [--work DIR] [--out DIR]

Part 1 of the study of issue 20 (the fine-tuning grid is ``label_efficiency.py``). The data are
``label_efficiency.py``'s (built once, shared through ``--work``): an unlabelled pool of realistic
phantoms plus the real CT scans of ``../shared/data/ct/``, and a labelled phantom cache, both at 6 mm
(the demo's plan).

For each decoder (Hi-End-MAE ``hiend``, plain MAE ``plain``) and each seed, one pre-training of the
``tiny`` preset with ``label_efficiency.py``'s recipe, the same data and steps, only the decoder and
seed differing, with the segmentation probe on the labelled cache (``--probe``) at step 0 (the random
initialisation of that seed) and every ``probe_every`` steps. Every stage is a hiend command, echoed to
``WORK/commands.log``. A finished run (``done.json``) is skipped; ``--report`` writes the outputs from
the finished runs.

Outputs: ``OUT/results.json`` (every run's probe records: step, mean and per-layer mean, per-organ
Dice of the best layer, seconds; its validation loss; the probe's share of the run's time),
``OUT/table.md`` (probe mean at step 0, mid-run and at the end, per decoder, mean [min, max] over seeds;
paired differences hiend - plain by seed) and ``OUT/probe_curves.png`` (probe mean against step, one
line per decoder, the seeds' range shaded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import CROP, PRETRAIN, ROOT, SIZES, Runner, build_data  # noqa: E402

DECODERS = ("hiend", "plain")


@dataclass(frozen=True)
class Curves:
    """How big part 1 is: pre-training epochs over the pool, volumes per step, probe interval, seeds."""

    data: str  # the label_efficiency size whose data are used
    epochs: int
    batch: int
    probe_every: int
    seeds: tuple[int, ...]
    probe_cases: int = 4  # the probe's fitting cases; the labelled cache's others (2) are held out
    probe_crops: int = 4  # crops per probed case
    name: str = ""  # the runs' folder prefix (WORK/probe{name}_DECODER_sSEED)


CURVES = {
    # 1,200 steps (100 epochs of 48 + 2 real volumes at 4 a step: 12 steps an epoch) x 16 crops, 3 seeds
    "full": Curves("full", epochs=100, batch=4, probe_every=100, seeds=(0, 1, 2), name="_6mm"),
    # 4x longer: 4,800 steps; 8 crops a probed case (a steadier probe, twice its cost)
    "long": Curves(
        "full", epochs=400, batch=4, probe_every=400, seeds=(0, 1, 2), probe_crops=8, name="_long"
    ),
    "smoke": Curves("smoke", epochs=2, batch=2, probe_every=1, seeds=(0,), probe_cases=2),
}


def pretrain(work: Path, c: Curves, pool: Path, lab: Path, decoder: str, seed: int, sh: Runner) -> dict:
    """One probed pre-training (skipped when done); returns its records."""
    run = work / f"probe{c.name}_{decoder}_s{seed}"
    if not (run / "done.json").exists():
        t0 = time.time()
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        sh(
            "hiend-train",
            "pretrain",
            "--out",
            str(run),
            "--cache",
            str(pool),
            "--preset",
            "tiny",
            "--set",
            f"model.img_size={CROP}",
            "--set",
            f"model.decoder={decoder}",
            "--seed",
            str(seed),
            "--epochs",
            str(c.epochs),
            "--batch-size",
            str(c.batch),
            "--warmup-epochs",
            str(max(1, c.epochs // 10)),
            "--val-every",
            str(max(1, c.epochs // 10)),
            "--workers",
            "0",
            "--probe",
            str(lab),
            "--probe-every",
            str(c.probe_every),
            "--probe-cases",
            str(c.probe_cases),
            "--set",
            f"probe_crops={c.probe_crops}",
            "--set",
            f"probe_val_cases={SIZES[c.data].labelled - c.probe_cases}",
            "-q",
            *PRETRAIN,
        )
        (run / "done.json").write_text(json.dumps({"seconds": time.time() - t0}))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    probes = [r for r in records if r["event"] == "probe"]
    epochs = [r for r in records if r["event"] == "epoch"]
    seconds = json.loads((run / "done.json").read_text())["seconds"]
    return {
        "decoder": decoder,
        "seed": seed,
        "seconds": round(seconds, 1),
        "probe_seconds": round(sum(p["seconds"] for p in probes), 1),
        "probe_share": round(sum(p["seconds"] for p in probes) / seconds, 4),
        "best_step": probes[-1]["best_step"],
        "val_loss": {r["step"]: round(r["val_loss"], 5) for r in epochs if "val_loss" in r},
        "probes": [
            {
                "step": p["step"],
                "mean": p["mean"],
                "layer": p["layer"],
                "layers": {k: v["mean"] for k, v in p["layers"].items()},
                "dice": p["dice"],
            }
            for p in probes
        ],
    }


def _cell(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}]" if xs else "-"


def table(runs: list[dict]) -> str:
    """Markdown: probe mean per decoder at step 0, mid-run and at the end, then paired differences."""
    steps = sorted({p["step"] for r in runs for p in r["probes"]})
    marks = sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []

    def at(r: dict, step: int) -> float | None:
        return next((p["mean"] for p in r["probes"] if p["step"] == step), None)

    lines = [
        "Probe mean Dice (best layer; mean [min, max] over seeds):",
        "",
        "| decoder | " + " | ".join(f"step {s}" for s in marks) + " | best | seconds, probe share |",
        "| --- | " + " | ".join("---" for _ in marks) + " | --- | --- |",
    ]
    for d in DECODERS:
        rs = [r for r in runs if r["decoder"] == d]
        if not rs:
            continue
        cells = [_cell([v for r in rs if (v := at(r, s)) is not None]) for s in marks]
        best = _cell([max(p["mean"] for p in r["probes"]) for r in rs])
        cost = f"{statistics.fmean(r['seconds'] for r in rs):.0f} s, {statistics.fmean(r['probe_share'] for r in rs):.1%}"
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {best} | {cost} |")
    lines += ["", "Paired difference hiend - plain (same seed), mean [min, max]:", ""]
    lines += ["| " + " | ".join(f"step {s}" for s in marks) + " |", "|" + " --- |" * len(marks)]
    cells = []
    for s in marks:
        by = {(r["decoder"], r["seed"]): at(r, s) for r in runs}
        d = [
            by[("hiend", k)] - by[("plain", k)]
            for (dec, k) in by
            if dec == "hiend" and by.get(("plain", k)) is not None
        ]
        cells.append(f"{statistics.fmean(d):+.3f} [{min(d):+.3f}, {max(d):+.3f}]" if d else "-")
    lines.append("| " + " | ".join(cells) + " |")
    last = [r["probes"][-1] for r in runs]
    if last:
        organs = list(last[0]["dice"])
        lines += ["", "At the last step, per organ (best layer), mean over seeds:", ""]
        lines += ["| decoder | " + " | ".join(organs) + " |", "| --- |" + " --- |" * len(organs)]
        for d in DECODERS:
            ps = [r["probes"][-1] for r in runs if r["decoder"] == d]
            if ps:
                vals = [statistics.fmean(p["dice"][o] or 0.0 for p in ps) for o in organs]
                lines.append(f"| {d} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    """Probe mean against step: one line per decoder (mean over seeds), the seeds' range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, d in enumerate(DECODERS):
        rs = [r for r in runs if r["decoder"] == d]
        if not rs:
            continue
        steps = sorted(set.intersection(*({p["step"] for p in r["probes"]} for r in rs)))
        ys = [[next(p["mean"] for p in r["probes"] if p["step"] == s) for r in rs] for s in steps]
        label = {"hiend": "Hi-End-MAE", "plain": "plain MAE"}[d] + f" ({len(rs)} seeds)"
        ax.plot(steps, [statistics.fmean(y) for y in ys], marker="o", ms=3, color=f"C{i}", label=label)
        ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=f"C{i}", alpha=0.2)
    ax.set_xlabel("pre-training optimizer step (0: random initialisation)")
    ax.set_ylabel("probe mean organ Dice (held-out crops)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title("segmentation probe during pre-training, tiny ViT on phantoms")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(CURVES), default="full")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "label_efficiency_6mm")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: tools/bench/results/probe_curves_6mm[_long]"
    )
    parser.add_argument("--jobs", type=int, default=2, help="pre-trainings at once, one torch thread each")
    parser.add_argument("--report", action="store_true", help="only write the outputs from finished runs")
    args = parser.parse_args(argv)
    c = CURVES[args.size]
    work: Path = args.work.resolve()
    out: Path = args.out or (
        ROOT / "tools" / "bench" / "results" / f"probe_curves{c.name}"
        if args.size != "smoke"
        else work / "probe_results"
    )
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(d, s) for s in c.seeds for d in DECODERS]
    if args.report:
        runs = [
            pretrain(work, c, Path(), Path(), d, s, None)
            for d, s in jobs
            if (work / f"probe{c.name}_{d}_s{s}" / "done.json").exists()
        ]  # type: ignore[arg-type]
    else:
        sh = Runner(work, threads=1)
        pool, lab, _ = build_data(work, SIZES[c.data], sh)
        t0 = time.time()

        def one(job: tuple[str, int]) -> dict:
            r = pretrain(work, c, pool, lab, *job, sh=sh)
            end = r["probes"][-1]
            print(
                f"[{time.time() - t0:6.0f} s] {job[0]} seed {job[1]}: probe {r['probes'][0]['mean']:.3f} -> {end['mean']:.3f}",
                flush=True,
            )
            return r

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
            runs = list(ex.map(one, jobs))
    results = {
        "size": args.size,
        "config": {**c.__dict__, "seeds": list(c.seeds)},
        "pretrain_recipe": PRETRAIN,
        "runs": runs,
    }
    results["complete"] = len(runs) == len(jobs)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(table(runs))
    plot(runs, out / "probe_curves.png")
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
