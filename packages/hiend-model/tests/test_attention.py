"""Attention backends agree with the written-out math; backend choice is explicit and switchable."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_model.attention import BACKENDS, Attention, attend, resolve_backend


def _reference(x, ctx, m: Attention) -> torch.Tensor:
    """Attention computed by hand from the module's weights (no library kernel)."""
    B, N, C = x.shape
    H, d = m.num_heads, m.head_dim
    if m.cross:
        q = (x @ m.q.weight.T + m.q.bias).reshape(B, N, H, d)
        kv = (ctx @ m.kv.weight.T + m.kv.bias).reshape(B, ctx.shape[1], 2, H, d)
        k, v = kv[:, :, 0], kv[:, :, 1]
    else:
        qkv = (x @ m.qkv.weight.T + m.qkv.bias).reshape(B, N, 3, H, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = torch.empty(B, N, H, d, dtype=x.dtype)
    for h in range(H):
        s = torch.einsum("bnd,bmd->bnm", q[:, :, h], k[:, :, h]) / d**0.5
        out[:, :, h] = torch.einsum("bnm,bmd->bnd", s.softmax(-1), v[:, :, h])
    return out.reshape(B, N, C) @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize("backend", ["math", "sdpa", "auto"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize(("dim", "heads"), [(48, 4), (60, 5)])
def test_backends_match_reference(backend, cross, dim, heads, monkeypatch):
    monkeypatch.delenv("HIEND_ATTN", raising=False)
    torch.manual_seed(0)
    m = Attention(dim, heads, cross=cross, backend=backend)
    x = torch.randn(2, 7, dim)
    ctx = torch.randn(2, 5, dim) if cross else None
    got = m(x, ctx)
    want = _reference(x, ctx, m)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sdpa_equals_math_with_gradients():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 9, 3, 16, requires_grad=True) for _ in range(3))
    a = attend(q, k, v, "sdpa")
    ga = torch.autograd.grad(a.square().sum(), (q, k, v))
    b = attend(q, k, v, "math")
    gb = torch.autograd.grad(b.square().sum(), (q, k, v))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_env_overrides_config(monkeypatch):
    monkeypatch.setenv("HIEND_ATTN", "math")
    assert Attention(12, 2, backend="sdpa").backend == "math"
    monkeypatch.setenv("HIEND_ATTN", "flash9")
    with pytest.raises(InputError, match="flash9"):
        resolve_backend("auto")
    monkeypatch.delenv("HIEND_ATTN")
    assert resolve_backend("sdpa") == "sdpa"
    assert set(BACKENDS) == {"auto", "xformers", "sdpa", "math"}


def test_explicit_xformers_on_cpu_fails_clearly(monkeypatch):
    monkeypatch.delenv("HIEND_ATTN", raising=False)
    m = Attention(12, 2, backend="xformers")
    with pytest.raises(RuntimeError, match="xformers"):
        m(torch.randn(1, 3, 12))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 32, 96])
def test_xformers_matches_sdpa_on_gpu(dtype, head_dim):
    from hiend_model.attention import xformers_available

    pytest.importorskip("xformers.ops", reason="xformers (the optional [xformers] extra) is not installed")
    assert xformers_available(), (
        "xformers is installed but its kernels do not run here (built for another torch?)"
    )
    torch.manual_seed(0)
    q = torch.randn(2, 217, 8, head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, 55, 8, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    ref = attend(q.float(), k.float(), v.float(), "math")
    torch.testing.assert_close(attend(q, k, v, "xformers").float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(attend(q, k, v, "sdpa").float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(attend(q, k, v, "auto"), attend(q, k, v, "xformers"))


@pytest.mark.gpu
def test_auto_on_gpu_handles_any_head_dim_and_fp32():
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(2, 50, 16, 33, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )  # vit-l12 decoder
    ref = attend(q.float(), k.float(), v.float(), "math")
    torch.testing.assert_close(attend(q, k, v, "auto").float(), ref, rtol=2e-2, atol=2e-2)
    x = torch.randn(2, 50, 4, 16, device="cuda")
    torch.testing.assert_close(attend(x, x, x, "auto"), attend(x, x, x, "math"), rtol=1e-4, atol=1e-5)


def test_backend_recorded_on_every_module_and_logged_once(monkeypatch, caplog):
    import logging

    from hiend_model import MAEConfig, build
    from hiend_model import attention as attn_mod

    monkeypatch.delenv("HIEND_ATTN", raising=False)
    monkeypatch.setattr(attn_mod, "_LOGGED", set())
    cfg = dict(
        img_size=16,
        patch_size=8,
        embed_dim=24,
        depth=4,
        num_heads=2,
        decoder_embed_dim=12,
        decoder_num_heads=2,
        tap_blocks=(1, 2, 3),
    )
    with caplog.at_level(logging.INFO, logger="hiend_model.attention"):
        math_model = build(MAEConfig(**cfg, attn_backend="math"))
    assert {m.backend for m in math_model.modules() if isinstance(m, Attention)} == {"math"}
    assert [r.getMessage() for r in caplog.records].count("attention backend: math") == 1
    sdpa_model = build(MAEConfig(**cfg, attn_backend="sdpa"))
    sdpa_model.load_state_dict(math_model.state_dict())
    x, noise = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 8)
    a, b = math_model(x, noise), sdpa_model(x, noise)
    torch.testing.assert_close(a.pred, b.pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=1e-7)
