"""GPU check: attention backends (xformers vs SDPA) and bf16 pre-training throughput / MFU.

Run on a CUDA machine from the repository root::

    PYTHONPATH=packages/hiend-data/src:packages/hiend-model/src python tools/gpu_check.py --out gpu.json

What it measures (each number printed as it is made, all of them written to ``--out`` as JSON):

1. Environment: torch, CUDA, device, whether xformers imports and whether its memory-efficient
   kernel actually runs (a probe call, not the import).
2. Attention parity and speed: our ``Attention`` module with backend ``xformers`` vs ``sdpa`` vs
   ``math`` on the token counts the models see (ViT-B/16 at 96^3: 216 tokens, 55 visible with the
   class token; ViT-L/12: 512 tokens, 129 visible), bf16, forward + backward.
3. A bf16 (autocast) pre-training step (forward, backward, fused AdamW) of ``vit-b16`` and
   ``vit-l12`` at 96^3 for a few batch sizes and both attention backends: crops/s and model FLOP
   utilisation (FLOPs counted with ``torch.utils.flop_counter`` on one step; peak = the dense bf16
   rate given by ``--peak-tflops``, 989 for an H100/H200 SXM by the datasheet).
4. With ``--loop`` (issue 9): the end-to-end pre-training loop (phantom cache as uint8, ``--loop-workers``
   DataLoader workers, prefetch 4) against the model step alone, vit-b16 at 128 crops a step and
   vit-l12 at 64, with the recipe on the CPU workers, on the GPU (``augment_on="gpu"``) and with
   ``torch.compile``; peak GPU memory of the loop. Goal: loop >= 0.95 of model-only. Needs hiend-train
   and its dependencies (pydantic, nibabel, scipy, rich, typer) importable: carry their wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


def _log(results: dict, key: str, value) -> None:
    results[key] = value
    print(json.dumps({key: value}), flush=True)


def _time_cuda(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds of ``fn()`` measured with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    times.sort()
    return times[len(times) // 2]


def check_env(results: dict) -> None:
    import torch

    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
    }
    try:
        import xformers
        import xformers.ops as xops

        env["xformers"] = xformers.__version__
        q = torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.bfloat16)
        xops.memory_efficient_attention(q, q, q)
        torch.cuda.synchronize()
        env["xformers_runs"] = True
    except Exception as exc:  # noqa: BLE001 - the probe reports whatever failed
        env["xformers_runs"] = False
        env["xformers_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    _log(results, "env", env)


def check_attention(results: dict) -> None:
    import torch

    from hiend_model.attention import Attention

    rows = []
    for name, dim, heads, tokens, batch in [
        ("vit-b16 visible", 768, 12, 55, 64),
        ("vit-b16 all tokens", 768, 12, 217, 32),
        ("vit-l12 visible", 1536, 16, 129, 32),
        ("vit-l12 all tokens", 1536, 16, 513, 16),
    ]:
        torch.manual_seed(0)
        ref = Attention(dim, heads, backend="math").cuda()
        x = torch.randn(batch, tokens, dim, device="cuda")
        row = {"case": name, "batch": batch, "tokens": tokens, "dim": dim, "heads": heads}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want = ref(x).float()
        for backend in ("sdpa", "xformers"):
            try:
                mod = Attention(dim, heads, backend=backend).cuda()
                mod.load_state_dict(ref.state_dict())
                xb = x.clone().requires_grad_(True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    got = mod(xb).float()
                row[f"{backend}_max_abs_diff_vs_math"] = float((got - want).abs().max())
                row[f"{backend}_backend_used"] = getattr(
                    mod, "last_backend", getattr(mod, "backend", backend)
                )

                def step(mod=mod, xb=xb):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        out = mod(xb)
                    out.float().sum().backward()

                row[f"{backend}_fwd_bwd_ms"] = round(_time_cuda(step) * 1000, 3)
            except Exception as exc:  # noqa: BLE001
                row[f"{backend}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if "sdpa_fwd_bwd_ms" in row and "xformers_fwd_bwd_ms" in row:
            row["xformers_speedup_vs_sdpa"] = round(row["sdpa_fwd_bwd_ms"] / row["xformers_fwd_bwd_ms"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    results["attention"] = rows


def check_pretrain(
    results: dict, presets: list[str], batches: list[int], backends: list[str], peak: float, steps: int
) -> None:
    """bf16 autocast pre-training steps; ``backend`` may add ``+ckpt`` (gradient checkpointing) and
    ``+compile`` (torch.compile of the model). FLOPs are counted once per (preset, batch) on the first
    backend listed, so list an uncompiled sdpa one first."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hiend_model import build

    rows = []
    flops_of: dict[tuple[str, int], int] = {}  # counted on the sdpa path: xformers' ops are not counted
    for preset in presets:
        for backend in backends:
            name, *flags = backend.split("+")
            try:
                torch.manual_seed(0)
                with torch.device("cuda"):
                    model = build(preset, attn_backend=name, grad_checkpointing="ckpt" in flags)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
                if "compile" in flags:
                    model = torch.compile(model)
            except Exception as exc:  # noqa: BLE001
                rows.append(
                    {"preset": preset, "backend": backend, "error": f"{type(exc).__name__}: {exc}"[:400]}
                )
                print(json.dumps(rows[-1]), flush=True)
                continue
            cfg = model.config
            for batch in batches:
                row = {"preset": preset, "backend": backend, "batch": batch}
                try:
                    x = torch.rand(batch, cfg.in_chans, *cfg.img_size, device="cuda")

                    def step(model=model, opt=opt, x=x):
                        with torch.autocast("cuda", dtype=torch.bfloat16):
                            out = model(x)
                        out.loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        return out.loss

                    if (preset, batch) not in flops_of:
                        saved = {m: m.backend for m in model.modules() if hasattr(m, "backend")}
                        for m in saved:
                            m.backend = "sdpa"
                        with FlopCounterMode(display=False) as counter:
                            step()
                        flops_of[preset, batch] = counter.get_total_flops()
                        for m, b in saved.items():
                            m.backend = b
                    flops = flops_of[preset, batch]
                    torch.cuda.reset_peak_memory_stats()
                    sec = _time_cuda(step, warmup=3, iters=steps)
                    row.update(
                        step_s=round(sec, 5),
                        crops_per_s=round(batch / sec, 1),
                        tflop_per_step=round(flops / 1e12, 4),
                        achieved_tflops=round(flops / sec / 1e12, 1),
                        mfu=round(flops / sec / (peak * 1e12), 4),
                        peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                        loss_finite=bool(torch.isfinite(step()).item()),
                    )
                    del x
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                    traceback.print_exc()
                torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
            del model, opt
            torch.cuda.empty_cache()
    results["pretrain_bf16"] = rows


#: issue 9: (preset, volumes per step, crops per volume) of the end-to-end loop check
LOOP_CASES = [("vit-b16", 16, 8), ("vit-l12", 8, 8)]


def check_loop(results: dict, workers: int, cases: int) -> None:
    """The whole pre-training loop (uint8 cache, ``workers`` DataLoader workers) vs the model step alone,
    per preset (vit-b16 at 128 crops a step, vit-l12 at 64), with the recipe on the CPU workers and on
    the GPU, and with torch.compile (``tools/bench/train_throughput.py`` in a subprocess each)."""
    import subprocess

    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench", "train_throughput.py")
    rows = []
    for preset, volumes, crops in LOOP_CASES:
        for extra in ([], ["--augment-on", "gpu"], ["--compile"]):
            cmd = [sys.executable, bench, "--device", "cuda", "--preset", preset, "--cases", str(cases),
                   "--spacing", "1.5", "--batch-size", str(volumes), "--num-samples", str(crops),
                   "--workers", str(workers), "--prefetch", "4", "--epochs", "3", *extra]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            row = {"preset": preset, "options": " ".join(extra) or "cpu augmentation"}
            try:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                row["error"] = (proc.stderr or proc.stdout)[-400:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    results["loop_vs_model"] = rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--presets", default="vit-b16,vit-l12")
    parser.add_argument("--batches", default="8,32,64")
    parser.add_argument("--backends", default="sdpa,xformers,auto+ckpt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument(
        "--loop", action="store_true", help="also the end-to-end loop vs model-only (issue 9)"
    )
    parser.add_argument("--loop-workers", type=int, default=12, help="DataLoader workers of the loop check")
    parser.add_argument(
        "--loop-cases", type=int, default=32, help="phantom volumes in the loop check's cache"
    )
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results: dict = {"peak_tflops_assumed": args.peak_tflops}
    t0 = time.time()
    check_env(results)
    checks = [] if args.skip_attention else [("attention", lambda: check_attention(results))]
    for name, fn in [
        *checks,
        (
            "pretrain",
            lambda: check_pretrain(
                results,
                args.presets.split(","),
                [int(b) for b in args.batches.split(",")],
                args.backends.split(","),
                args.peak_tflops,
                args.steps,
            ),
        ),
        *([("loop", lambda: check_loop(results, args.loop_workers, args.loop_cases))] if args.loop else []),
    ]:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - keep going: report what we have
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:400]
            traceback.print_exc()
    results["wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
