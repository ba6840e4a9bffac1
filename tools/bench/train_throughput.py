"""Pre-training loop throughput vs the model step alone: does the data loader keep up?

    .venv/bin/python tools/bench/train_throughput.py [--preset tiny] [--workers 1] [--epochs 3] [--device cpu]

1. A phantom dataset (``--cases``) preprocessed at ``--spacing`` mm into a temporary cache.
2. ``hiend_train.pretrain.run`` for ``--epochs`` epochs (the first one, with worker start-up, is not
   counted): crops per second of the whole loop, DataLoader + sampler + augmentation included.
3. The same model and step (forward, backward, AdamW) on one pre-made batch of the same size:
   crops per second of the model alone.

Both run in this process, one after the other, with the same torch thread count (``--threads``,
default 1 on the CPU). A ratio near 1 means the loader keeps up. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def model_only(
    preset: str, crops: int, steps: int, device: str, precision: str, compiled: bool = False
) -> float:
    """Crops per second of forward + backward + AdamW on a fixed batch of ``crops`` crops."""
    import torch

    from hiend_model import build
    from hiend_train.optim import build_optimizer
    from hiend_train.precision import autocast

    dev = torch.device(device)
    torch.manual_seed(0)
    model = build(preset).to(dev).train()
    opt = build_optimizer(model, 1e-4, 0.05, (0.9, 0.95))
    if compiled:
        model = torch.compile(model)
    x = torch.rand(crops, model.config.in_chans, *model.config.img_size, device=dev)
    times = []
    for i in range(steps + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast(precision, dev):
            loss = model(x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t)
    return crops / (sum(times) / len(times))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=2, help="volumes per step")
    parser.add_argument("--num-samples", type=int, default=4, help="crops per volume")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--cache", type=Path, default=None, help="use this cache instead of phantoms")
    parser.add_argument(
        "--cache-dtype", default="auto", help="phantom cache dtype: auto (uint8 for CT), float32, ..."
    )
    parser.add_argument("--augment-on", default="cpu", choices=["cpu", "gpu"], help="where the recipe runs")
    parser.add_argument("--prefetch", type=int, default=2, help="batches per DataLoader worker ahead")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (loop and model-only)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on the CPU, where two threads on a shared "
        "2-core box stall each other; torch's default on CUDA)",
    )
    args = parser.parse_args()

    import torch

    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    from hiend_data import Plan
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset
    from hiend_train import pretrain
    from hiend_train.config import PretrainConfig
    from hiend_train.precision import resolve_precision

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = args.cache
        if cache is None:
            make_phantom_dataset(tmp / "raw", cases=args.cases, seed=0)
            cache = tmp / "cache"
            preprocess_dataset(
                tmp / "raw",
                cache,
                Plan(spacing=(args.spacing,) * 3, cache_dtype=args.cache_dtype),
                workers=min(2, os.cpu_count() or 1),
                progress=False,
            )
        cfg = PretrainConfig(
            cache=cache,
            out=tmp / "run",
            preset=args.preset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            num_samples=args.num_samples,
            workers=args.workers,
            device=args.device,
            precision=args.precision,
            preview_every=0,
            progress=False,
            warmup_epochs=1,
            log_every=1000,
            augment_on=args.augment_on,
            prefetch=args.prefetch,
            compile=args.compile,
        )
        result = pretrain.run(cfg)
        epochs = result.fit.history[1:] or result.fit.history
        crops = sum(r["crops_per_s"] * r["seconds"] for r in epochs)
        loop = crops / sum(r["seconds"] for r in epochs)
        steps = result.fit.history[0]["step"]  # optimizer steps per epoch
    precision = resolve_precision(args.precision, torch.device(args.device))
    peak_loop = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    alone = model_only(
        args.preset, args.batch_size * args.num_samples, max(steps, 5), args.device, precision, args.compile
    )
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "preset": args.preset,
                "device": args.device,
                "precision": precision,
                "crops_per_step": args.batch_size * args.num_samples,
                "workers": args.workers,
                "cache_dtype": args.cache_dtype,
                "augment_on": args.augment_on,
                "prefetch": args.prefetch,
                "compile": args.compile,
                "peak_gib_loop": None if peak_loop is None else round(peak_loop, 2),
                "torch_threads": torch.get_num_threads(),
                "loop_crops_per_s": round(loop, 2),
                "model_only_crops_per_s": round(alone, 2),
                "loop_vs_model": round(loop / alone, 3),
                "epochs_timed": len(epochs),
                "steps_per_epoch": steps,
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
