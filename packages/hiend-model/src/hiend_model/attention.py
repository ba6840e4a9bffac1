"""Multi-head softmax attention with switchable kernels (self- and cross-attention share one module).

Backends (chosen at build time, recorded as ``module.backend``, switchable by assigning it):

- ``math``: ``softmax(q k^T / sqrt(head_dim)) v`` written out; the reference for tests.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on CPU and GPU).
- ``xformers``: ``xformers.ops.memory_efficient_attention``; only CUDA tensors in fp16/bf16.
- ``auto``: xformers where it actually runs (CUDA tensor, fp16/bf16, and a one-time probe that ran a
  kernel, not only imported the package), decided per call; otherwise sdpa.

The environment variable ``HIEND_ATTN`` (auto|xformers|sdpa|math) overrides the configured backend.
The choice is logged once per distinct resolution through :mod:`logging`, never at import.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from hiend_data.errors import InputError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "xformers", "sdpa", "math")
_LOGGED: set[str] = set()
_XFORMERS_OK: bool | None = None
_XFORMERS_NO_OP: set[tuple] = set()  # (head_dim, dtype) combinations xformers has no operator for


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.info(message)


def resolve_backend(configured: str = "auto") -> str:
    """The backend to build with: ``HIEND_ATTN`` if set, else ``configured``. InputError if unknown."""
    env = os.environ.get("HIEND_ATTN", "").strip().lower()
    choice = env or configured
    if choice not in BACKENDS:
        source = "HIEND_ATTN" if env else "attn_backend"
        raise InputError(
            f"{source}={choice!r} is not an attention backend; choose one of {', '.join(BACKENDS)}"
        )
    return choice


def xformers_available() -> bool:
    """True when xformers' memory-efficient attention ran once on this machine's GPU (probed lazily)."""
    global _XFORMERS_OK
    if _XFORMERS_OK is None:
        _XFORMERS_OK = False
        reason = "no CUDA device"
        if torch.cuda.is_available():
            try:
                import xformers.ops as xops

                q = torch.randn(1, 8, 2, 32, device="cuda", dtype=torch.bfloat16)
                xops.memory_efficient_attention(q, q, q)
                torch.cuda.synchronize()
                _XFORMERS_OK = True
                reason = "probe kernel ran"
            except Exception as exc:  # any failure means "not usable here"
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _log_once(
            f"xformers memory-efficient attention {'available' if _XFORMERS_OK else 'unavailable'} ({reason})"
        )
    return _XFORMERS_OK


def _xformers_runs_on(t: torch.Tensor) -> bool:
    return t.is_cuda and t.dtype in (torch.float16, torch.bfloat16) and xformers_available()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Softmax attention on [B, N, H, d] tensors (queries N, keys/values M) -> [B, N, H, d].

    ``backend`` is one of :data:`BACKENDS`; scale is d^-0.5.
    """
    if backend == "auto":
        key = (q.shape[-1], q.dtype)
        if key not in _XFORMERS_NO_OP and _xformers_runs_on(q):
            import xformers.ops as xops

            try:
                return xops.memory_efficient_attention(q, k, v)
            except (NotImplementedError, ValueError) as exc:  # no operator for these inputs
                _XFORMERS_NO_OP.add(key)
                _log_once(
                    f"xformers has no operator for head_dim={key[0]} {key[1]}; using sdpa "
                    f"({str(exc).splitlines()[0][:120]})"
                )
        backend = "sdpa"
    if backend == "xformers":
        if not _xformers_runs_on(q):
            raise RuntimeError(
                f"attention backend 'xformers' cannot run on a {q.dtype} tensor on {q.device} "
                "(needs CUDA, fp16/bf16 and a working xformers); use attn_backend='auto' or 'sdpa'"
            )
        import xformers.ops as xops

        return xops.memory_efficient_attention(q, k, v)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, N, d] views
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention; ``cross=False``: fused ``qkv`` linear, ``cross=True``: ``q`` and ``kv``.

    Self-attention: ``forward(x [B, N, C]) -> [B, N, C]``; qkv split as (3, heads, head_dim).
    Cross-attention: ``forward(x [B, N, C], context [B, M, C]) -> [B, N, C]``; q from x split as
    (heads, head_dim), kv from context split as (2, heads, head_dim). Then the output projection.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, cross: bool = False, backend: str = "auto"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise InputError(f"attention dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.cross = cross
        self.backend = resolve_backend(backend)
        _log_once(f"attention backend: {self.backend}")
        if cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context tensor [B, M, C]")
            q = self.q(x).view(B, N, H, d)
            k, v = self.kv(context).view(B, context.shape[1], 2, H, d).unbind(2)
        else:
            q, k, v = self.qkv(x).view(B, N, 3, H, d).unbind(2)
        out = attend(q, k, v, self.backend)
        return self.proj(out.reshape(B, N, C))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, cross={self.cross}, backend={self.backend}"
