"""GPU checks and numbers for hiend-model (run on a CUDA machine; prints one JSON line per measurement).

    python tools/bench/gpu_model.py [--presets vit-b16 vit-l12] [--batches 16 64] [--steps 10] [--out DIR]

1. Attention: xformers vs SDPA forward+backward time and max difference on the models' shapes (bf16).
2. Pre-training step (bf16 autocast, fused AdamW) of each preset with attn_backend auto (xformers where it
   runs) and sdpa: crops/s and MFU (model FLOPs from torch.utils.flop_counter on the sdpa path, divided
   by the step time and the GPU's dense bf16 peak), peak memory; ViT-L also with gradient checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for pkg in ("hiend-data", "hiend-model"):
    sys.path.insert(0, str(ROOT / "packages" / pkg / "src"))

from hiend_model import build  # noqa: E402
from hiend_model.attention import attend, xformers_available  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
RESULTS: list[dict] = []


def emit(**row) -> None:
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def timed(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench_attention() -> None:
    shapes = {
        "vit-b16 enc": (32, 55, 12, 64),
        "vit-b16 dec": (32, 217, 12, 32),
        "vit-l12 enc": (32, 129, 16, 96),
        "vit-l12 dec": (32, 513, 16, 33),
    }
    for name, (B, N, H, d) in shapes.items():
        q, k, v = (
            torch.randn(B, N, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
        )
        ref = attend(q.float(), k.float(), v.float(), "math")
        row = {"bench": "attention", "shape": name, "B_N_H_d": [B, N, H, d]}
        for be in ("sdpa", "xformers") if xformers_available() else ("sdpa",):
            try:
                out = attend(q, k, v, be)
                row[f"{be}_maxdiff"] = float((out.float() - ref).abs().max().detach())
                row[f"{be}_ms"] = 1e3 * timed(
                    lambda be=be, q=q, k=k, v=v: attend(q, k, v, be).sum().backward(), 20
                )
            except Exception as exc:  # report, keep going
                row[f"{be}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        emit(**row)


def bench_train(
    preset: str, batch: int, steps: int, backend: str, ckpt: bool = False, check: bool = True
) -> None:
    torch.manual_seed(0)
    model = build(preset, attn_backend=backend, grad_checkpointing=ckpt).cuda().train()
    if not check:  # what the input check's host sync costs
        model.check_images = lambda images: None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    x = torch.rand(batch, 1, *model.config.img_size, device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = float("nan")
    if (preset, batch) not in bench_train.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).loss
            loss.backward()
        opt.zero_grad(set_to_none=True)
        flops = fc.get_total_flops()
        bench_train.flops[(preset, batch)] = flops
    flops = bench_train.flops.get((preset, batch), flops)
    torch.cuda.reset_peak_memory_stats()
    t = timed(step, steps)
    emit(
        bench="pretrain_step_bf16",
        preset=preset,
        batch=batch,
        backend=backend,
        grad_checkpointing=ckpt,
        input_check=check,
        step_ms=round(1e3 * t, 2),
        crops_per_s=round(batch / t, 1),
        model_tflop_per_step=round(flops / 1e12, 3),
        mfu=round(flops / t / peak_flops(), 4),
        peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        device=torch.cuda.get_device_name(),
    )
    torch.cuda.empty_cache()


bench_train.flops = {}


def check_parity(ref_dir: Path) -> None:
    """The reference fixtures on the GPU: fp32 (to the fixtures' tolerances) and bf16 autocast (reported)."""
    from hiend_model import load_official_finetuned, load_official_pretrained

    fx = torch.load(ref_dir / "hiend_mae_parity_tiny.pt", weights_only=True)
    c = fx["config"]
    mae = load_official_pretrained(
        fx["state_dict"], num_heads=c["enc_heads"], decoder_num_heads=c["dec_heads"]
    ).cuda()
    x, noise = fx["input"].cuda(), fx["noise"].cuda()
    ids = fx["noise"].argsort(1).argsort(1)
    ref = fx["decoder_output"][:, 1:].gather(1, ids.unsqueeze(-1).expand(-1, -1, 512))
    for amp in (False, True):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = mae(x, noise)
        emit(
            bench="parity_mae",
            dtype="bf16-autocast" if amp else "float32",
            loss_rel_err=abs(out.loss.item() / fx["loss"].item() - 1),
            pred_max_abs=float((out.pred.float().cpu() - ref).abs().max()),
        )
    fx = torch.load(ref_dir / "unetr_parity_tiny.pt", weights_only=True)
    c = fx["config"]
    unetr = load_official_finetuned(
        fx["state_dict"],
        img_size=c["img"],
        patch_size=c["patch"],
        embed_dim=c["hidden"],
        depth=c["depth"],
        num_heads=c["heads"],
        mlp_ratio=c["mlp_dim"] / c["hidden"],
        feature_size=c["feature"],
        num_classes=c["classes"],
    ).cuda()
    for amp in (False, True):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = unetr(fx["input"].cuda()).float().cpu()
        emit(
            bench="parity_unetr",
            dtype="bf16-autocast" if amp else "float32",
            logits_max_abs=float((logits[:, :, ::4, ::4, ::4] - fx["logits_every_4th_voxel"]).abs().max()),
            argmax_agree=float((logits.argmax(1) == fx["argmax"].long()).float().mean()),
        )


def bench_unetr_inference(batch: int = 4) -> None:
    """vit-l12 UNETR (feature 32, 14 classes) forward on 96^3 windows: ms per window, peak memory."""
    from hiend_model import UNETR, UNETRConfig

    model = (
        UNETR(
            UNETRConfig(**{**build("vit-l12").config.encoder_fields(), "num_classes": 14, "feature_size": 32})
        )
        .cuda()
        .eval()
    )
    x = torch.rand(batch, 1, 96, 96, 96, device="cuda")
    for amp in (False, True):
        torch.cuda.reset_peak_memory_stats()

        def fwd(amp=amp) -> None:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                model(x)

        t = timed(fwd, 5, warmup=2)
        emit(
            bench="unetr_inference",
            preset="vit-l12",
            batch=batch,
            dtype="bf16-autocast" if amp else "tf32",
            ms_per_window=round(1e3 * t / batch, 2),
            peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["vit-b16", "vit-l12"])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument("--reference", type=Path, default=None, help="folder with the parity fixtures")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    emit(
        bench="env",
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        xformers_runs=xformers_available(),
    )
    if args.reference:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        check_parity(args.reference)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bench_unetr_inference()
    if not args.skip_train:
        run_training(args)
    if args.out:
        Path(args.out, "gpu_model.json").write_text(json.dumps(RESULTS, indent=1))


def run_training(args: argparse.Namespace) -> None:
    bench_attention()
    backends = ("sdpa", "auto") if xformers_available() else ("auto",)  # auto == sdpa without xformers
    for preset in args.presets:
        for batch in args.batches:
            for backend in backends:
                bench_train(preset, batch, args.steps, backend)
            bench_train(preset, batch, args.steps, "auto", check=False)
            if preset.startswith("vit-l"):
                bench_train(preset, batch, args.steps, "auto", ckpt=True)


if __name__ == "__main__":
    main()
