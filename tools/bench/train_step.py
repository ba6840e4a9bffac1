"""Pre-training step time of HiEndMAE on CPU: forward + backward + AdamW, median over steps.

    .venv/bin/python tools/bench/train_step.py [--preset vit-b16] [--batch 2] [--steps 10] [--warmup 3]
        [--threads N] [--profile] [--compare [--paper-attn sdpa|math]]

Prints one JSON line {"step_s": ..., ...}. ``--compare`` also times, interleaved on the same machine, a
"paper-style" step: the same weights run through the reference code's data flow (Conv3d patch embedding
of [B*keep, C, p, p, p] patch volumes, qkv permuted and indexed, SDPA as the reference calls on torch 2
or written-out math as on torch 1 with ``--paper-attn math``, decoder pos-embed added in place) and
torch.optim.AdamW's default single-tensor loop on CPU; it is first checked to give our loss on the same
noise. Its median is ``paper_style_step_s`` and the ratio ``speedup``. ``--profile`` prints
torch.profiler's top operators (self CPU time) to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packages" / "hiend-model" / "src"))

from hiend_model import build  # noqa: E402
from hiend_model.mae import HiEndMAE  # noqa: E402

PAPER_ATTN = "sdpa"  # the reference on torch 2 calls SDPA; on torch 1 / old timm it wrote the math out


def paper_attention(attn, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's attention: qkv permuted to [3, B, H, N, d] and indexed, then SDPA (or math)."""
    B, N, C = x.shape
    H = attn.num_heads
    if ctx is None:
        qkv = attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        q = attn.q(x).reshape(B, N, H, C // H).permute(0, 2, 1, 3)
        kv = attn.kv(ctx).reshape(B, ctx.shape[1], 2, H, C // H).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
    if PAPER_ATTN == "math":
        out = ((q @ k.transpose(-2, -1)) * (C // H) ** -0.5).softmax(dim=-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


def paper_style_loss(model: HiEndMAE, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The reference's data flow (hi_end_mae.py, networks/vit.py) on our weights: visible patches
    reshaped to [B*keep, C, p, p, p] volumes and embedded by a Conv3d, a zero position row concatenated
    for the class token, the decoder pos-embed added in place, nn.MSELoss on the masked tail against a
    non-affine LayerNorm of the patches."""
    cfg = model.config
    enc, dec = model.encoder, model.decoder
    B, p, C, D = images.shape[0], cfg.patch_size, cfg.in_chans, cfg.embed_dim
    patches = model.patchify(images)
    ids_shuffle, _, keep = model.random_masking(B, images.device, noise)
    P = patches.shape[-1]
    shuffled = patches.gather(1, ids_shuffle.unsqueeze(-1).expand(-1, -1, P))
    sel, msk = shuffled[:, :keep], shuffled[:, keep:]
    pos = enc.pos_embed.expand(B, -1, -1).gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
    w = enc.patch_embed.proj.weight.view(-1, p, p, p, C).permute(0, 4, 1, 2, 3)
    x = F.conv3d(
        sel.reshape(B * keep, p, p, p, C).permute(0, 4, 1, 2, 3), w, enc.patch_embed.proj.bias, stride=p
    )
    x = torch.cat([enc.cls_token.expand(B, -1, -1), x.reshape(B, keep, D)], dim=1)
    x = x + torch.cat([torch.zeros(B, 1, D), pos], dim=1)
    taps = []
    for blk in enc.blocks:
        x = x + paper_attention(blk.attn, blk.norm1(x))
        x = x + blk.mlp(blk.norm2(x))
        taps.append(x)
    x = enc.norm(x)
    proj = model.encoder_to_decoder
    ctx = {t: proj[i](taps[t]) for i, t in enumerate(cfg.tap_blocks)}
    Dd = cfg.decoder_embed_dim
    x = torch.cat([proj[3](x), model.mask_token.expand(B, cfg.num_patches - keep, -1)], dim=1)
    x[:, 1:, :] += model.decoder_pos_embed.expand(B, -1, -1).gather(
        1, ids_shuffle[:, :, None].expand(-1, -1, Dd)
    )
    for blk in dec.blocks:
        x = x + paper_attention(blk.attn, blk.norm1(x))
        x = x + blk.mlp(blk.norm2(x))
    for blk, t in zip(dec.cross_attention_blocks, reversed(cfg.tap_blocks), strict=True):
        x = x + paper_attention(blk.self_attn, blk.norm0(x))
        x = x + paper_attention(blk.cross_attn, blk.norm1(x), ctx[t])
        x = x + blk.mlp(blk.norm2(x))
    x = dec.head(dec.norm(x))
    return F.mse_loss(x[:, -msk.shape[1] :], F.layer_norm(msk.detach(), (P,), eps=1e-6))


def make_step(model: HiEndMAE, opt: torch.optim.Optimizer, images: torch.Tensor, paper: bool):
    def step() -> float:
        noise = torch.rand(images.shape[0], model.num_patches)
        loss = paper_style_loss(model, images, noise) if paper else model(images, noise).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def setup(preset: str, batch: int, paper: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = build(preset, attn_backend="sdpa").train()
    decay = [
        p for n, p in model.named_parameters() if p.ndim > 1 and "token" not in n and "pos_embed" not in n
    ]
    no_decay = [
        p
        for n, p in model.named_parameters()
        if not (p.ndim > 1 and "token" not in n and "pos_embed" not in n)
    ]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (
        torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), foreach=False)
        if paper
        else torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
    )
    images = torch.rand(batch, model.config.in_chans, *model.config.img_size)
    return model, make_step(model, opt, images, paper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vit-b16")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument(
        "--paper-attn",
        choices=["sdpa", "math"],
        default="sdpa",
        help="attention of the paper-style step: sdpa (reference on torch 2) or math (torch 1)",
    )
    args = ap.parse_args()
    global PAPER_ATTN
    PAPER_ATTN = args.paper_attn
    if args.threads:
        torch.set_num_threads(args.threads)
    ours_model, ours_step = setup(args.preset, args.batch, paper=False)
    runs = {"ours": ours_step}
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # forward + backward matmul/attention FLOPs of one step
        x = torch.rand(args.batch, ours_model.config.in_chans, *ours_model.config.img_size)
        ours_model(x).loss.backward()
    ours_model.zero_grad(set_to_none=True)
    gflop = fc.get_total_flops() / 1e9
    if args.compare:
        model, runs["paper_style"] = setup(args.preset, args.batch, paper=True)
        x = torch.rand(args.batch, model.config.in_chans, *model.config.img_size)
        noise = torch.rand(args.batch, model.num_patches)
        with torch.no_grad():
            ours, theirs = model(x, noise).loss.item(), paper_style_loss(model, x, noise).item()
        if abs(ours - theirs) > 1e-4 * abs(ours):
            raise SystemExit(f"paper-style step computes another loss: {theirs} vs ours {ours}")
    for step in runs.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.steps):  # interleaved so both see the same machine load
        for name, step in runs.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    result = {
        "bench": "train_step",
        "preset": args.preset,
        "batch": args.batch,
        "dtype": "float32",
        "step_s": round(statistics.median(times["ours"]), 4),
        "step_s_min": round(min(times["ours"]), 4),
        "steps": args.steps,
        "gflop_per_step": round(gflop, 2),
        "gflops_at_min": round(gflop / min(times["ours"]), 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    if args.compare:
        result["paper_style_step_s"] = round(statistics.median(times["paper_style"]), 4)
        result["paper_attn"] = args.paper_attn
        result["speedup"] = round(result["paper_style_step_s"] / result["step_s"], 3)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, step in runs.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step()
            print(f"== {name}: top ops by self CPU time (3 steps)", file=sys.stderr)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
