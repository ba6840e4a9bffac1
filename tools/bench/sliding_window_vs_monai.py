"""hiend's sliding_window_logits vs MONAI's sliding_window_inference, side by side in one process.

Same UNETR (random weights), same input, window, overlap, Gaussian blending and window batch; the
two run alternately ``--repeats`` times and the best time of each is kept, so machine load affects
both alike. Both wall-clock and process CPU time are recorded: on a shared machine (the 2-core dev
box runs other jobs) CPU time with one intra-op thread is the steadier measure. Asserts the outputs agree (max abs difference <= ``--tol``, 1e-5) and prints one JSON line:

    .venv/bin/python tools/bench/sliding_window_vs_monai.py            # ~1-2 min on 2 cores
    .venv/bin/python tools/bench/sliding_window_vs_monai.py --size 160 160 160 --roi 96 --feature-size 16
    .venv/bin/python tools/bench/sliding_window_vs_monai.py --model none --size 160 160 160 --roi 96 --repeats 5

``ratio_cpu`` / ``ratio_wall`` = hiend time / MONAI time (below 1: hiend is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[112, 100, 120], help="input X Y Z")
    parser.add_argument("--roi", type=int, default=64, help="window edge (voxels)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch", type=int, default=2)
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--feature-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--model",
        choices=["unetr", "none"],
        default="unetr",
        help="'none': a model that only copies its input into K channels, so the "
        "times are the sliding-window machinery alone (tiling, blending, division)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-5,
        help="largest allowed max abs difference (GPU convs may use TF32: pass 1e-3)",
    )
    args = parser.parse_args()

    import torch
    from monai.inferers import sliding_window_inference

    from hiend_model.config import UNETRConfig
    from hiend_model.inference import sliding_window_logits, window_starts
    from hiend_model.unetr import UNETR

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = UNETRConfig(
        img_size=args.roi,
        patch_size=args.patch,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.heads,
        num_classes=args.classes,
        feature_size=args.feature_size,
    )
    if args.model == "unetr":
        model = UNETR(cfg).eval().to(args.device)
    else:

        def model(x: torch.Tensor) -> torch.Tensor:
            return x.expand(-1, args.classes, -1, -1, -1) * 1.0

    image = torch.rand(1, 1, *args.size, device=args.device)
    roi = (args.roi,) * 3
    windows = 1
    for s in args.size:
        windows *= len(window_starts(max(s, args.roi), args.roi, args.overlap))

    def ours() -> torch.Tensor:
        return sliding_window_logits(
            model, image, roi, args.overlap, sw_batch_size=args.sw_batch, blend="gaussian", sigma_scale=0.125
        )

    def monai() -> torch.Tensor:
        with torch.no_grad():
            return sliding_window_inference(
                image, roi, args.sw_batch, model, overlap=args.overlap, mode="gaussian", sigma_scale=0.125
            )

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0, time.process_time() - c0), out

    times: dict[str, list[float]] = {"hiend": [], "monai": []}
    cpu: dict[str, list[float]] = {"hiend": [], "monai": []}
    diff = 0.0
    for i in range(args.repeats):
        order = [("hiend", ours), ("monai", monai)] if i % 2 == 0 else [("monai", monai), ("hiend", ours)]
        outs = {}
        for name, fn in order:
            (t, c), outs[name] = timed(fn)
            times[name].append(t)
            cpu[name].append(c)
        diff = max(diff, (outs["hiend"] - outs["monai"]).abs().max().item())
        del outs
    assert diff <= args.tol, f"outputs differ by {diff}"
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    print(
        json.dumps(
            {
                "bench": "sliding_window_vs_monai",
                "input": [1, 1, *args.size],
                "roi": args.roi,
                "overlap": args.overlap,
                "sw_batch": args.sw_batch,
                "windows": windows,
                "model": {
                    "kind": args.model,
                    "embed_dim": args.embed_dim,
                    "depth": args.depth,
                    "patch": args.patch,
                    "feature_size": args.feature_size,
                    "classes": args.classes,
                },
                "hiend_wall_s": round(best["hiend"], 3),
                "monai_wall_s": round(best["monai"], 3),
                "ratio_wall": round(best["hiend"] / best["monai"], 4),
                "hiend_cpu_s": round(best_cpu["hiend"], 3),
                "monai_cpu_s": round(best_cpu["monai"], 3),
                "ratio_cpu": round(best_cpu["hiend"] / best_cpu["monai"], 4),
                "max_abs_diff": diff,
                "wall_times": {k: [round(t, 3) for t in v] for k, v in times.items()},
                "cpu_times": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
                "device": args.device,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
