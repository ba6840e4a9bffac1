"""Import and export the paper's checkpoint layouts (github FengheTan9/Hi-End-MAE).

Pre-training layout: ``../shared/reference/official_checkpoint_layout.md`` (timm-style keys, the
patch embedding a Conv3d, ``encoder_pos_embed`` at the top level). Fine-tuned layout:
``official_finetune_layout.md`` (MONAI's UNETR/ViT keys, LayerNorm eps 1e-5). Files may be wrapped as
``{"state_dict": ...}`` and carry a ``module.`` prefix (DistributedDataParallel); bare dicts work too.
Everything is read with ``torch.load(weights_only=True)``: no code is unpickled.

Also here: :func:`convert_official` (what ``hiend-model convert`` runs: a ``.pth`` to a hiend
checkpoint). Loading a model from a file of either format (a hiend ``.safetensors`` or the paper's
``.pth``) is :mod:`hiend_model.pretrained`.

The paper's two layouts are named by training ``stage``: ``pretrain`` (a
:class:`~hiend_model.mae.HiEndMAE`, kind ``mae``) and ``finetune`` (a :class:`~hiend_model.unetr.UNETR`,
kind ``unetr``); see :mod:`hiend_model.kinds`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch

from hiend_data import Plan
from hiend_data.errors import InputError

from .checkpoint import save_checkpoint
from .config import PRESETS, MAEConfig, UNETRConfig, default_taps, validated
from .kinds import MAE_KIND, UNETR_KIND, get_kind, lookup_kind
from .mae import HiEndMAE
from .tensors import check_finite, check_state_dict
from .unetr import UNETR
from .vit import sincos_pos_embed_3d

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

#: The released pre-training model (hi_end_mae_10k.pth): ViT-L/12 at 96^3.
RELEASED_PRETRAIN: dict = PRESETS["vit-l12"].model_dump()
#: The paper's fine-tuning recipe on it (MONAI UNETR, feature size 32, LayerNorm eps 1e-5).
RELEASED_FINETUNE: dict = {**PRESETS["vit-l12"].encoder_fields(), "feature_size": 32, "layer_norm_eps": 1e-5}
_HEADS = ("num_heads", "decoder_num_heads")


# -- reading ---------------------------------------------------------------------------------------
def read_state_dict(path_or_state_dict: str | Path | dict) -> StateDict:
    """A checkpoint path or dict -> bare state dict (``state_dict`` unwrapped, ``module.`` stripped).
    Weights holding NaN or inf are refused naming the first such tensor (:func:`check_finite`)."""
    if isinstance(path_or_state_dict, dict):
        obj, name = path_or_state_dict, "state dict"
    else:
        path = Path(path_or_state_dict)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", name)
        try:
            try:  # memory-mapped: optimizer state in the released file is never read into memory
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, or holds code
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{name}: not a readable PyTorch checkpoint ({first[:200]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{name}: holds no state dict")
    sd = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
        sd[key.removeprefix("module.")] = value
    check_finite(name, sd)
    return sd


def _stage_of(sd: StateDict) -> str:
    """The paper's layout of a state dict by its keys: a ``stage`` name, or ``"unknown"``."""
    if "encoder.cls_token" in sd or "mask_token" in sd:
        return MAE_KIND.stage
    if any(k.startswith("vit.") for k in sd):
        return UNETR_KIND.stage
    return "unknown"


def _require_stage(sd: StateDict, stage: str) -> None:
    found = _stage_of(sd)
    if found != stage:
        hint = {
            MAE_KIND.stage: f"a pre-training checkpoint (load_official_pretrained, --from {MAE_KIND.source})",
            UNETR_KIND.stage: "a fine-tuned UNETR checkpoint (load_official_finetuned, --from "
            f"{UNETR_KIND.source})",
            "unknown": "not in either of the paper's layouts",
        }[found]
        raise InputError(f"expected the paper's {stage} layout but the checkpoint is {hint}")


def _count(sd: StateDict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _get(sd: StateDict, key: str) -> torch.Tensor:
    if key not in sd:
        raise InputError(f"checkpoint lacks the key {key!r} of the paper's layout")
    return sd[key]


def _img_from_rows(L: int, patch: int, key: str, img_size=None) -> tuple[int, int, int]:
    if img_size is not None:
        img = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
        if (
            len(img) != 3
            or any(s % patch for s in img)
            or (img[0] // patch) * (img[1] // patch) * (img[2] // patch) != L
        ):
            raise InputError(
                f"img_size={img_size} does not give the {L} grid positions of {key} with patch {patch}"
            )
        return img
    g = round(L ** (1 / 3))
    if g**3 != L:
        raise InputError(f"{key} has {L} rows, not a cube grid: pass img_size=(H, W, D)")
    return (g * patch,) * 3


# -- architecture inference ------------------------------------------------------------------------
def infer_arch_from_state_dict(
    sd: StateDict | str | Path,
    stage: str,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    img_size=None,
) -> dict:
    """Every architecture field the tensors reveal, for the paper's layout of ``stage`` "pretrain" or
    "finetune" (the other names of its kind are accepted too: ``mae``, ``official-pretrain``, ...).

    Head counts cannot be read off the tensors: they default to the released model's (16). Also
    assumed unless given: cubic inputs (img_size from the cube root of the token count), taps (3, 6, 9)-style
    defaults for the depth, mask_ratio 0.75, LayerNorm eps 1e-6 (pretrain) / 1e-5 (finetune).
    """
    found = lookup_kind(stage)  # any name of hiend_model.kinds: "mae" / "official-pretrain" too
    if found is None:
        raise InputError(f"stage={stage!r} must be 'pretrain' or 'finetune'")
    stage = found.stage
    if not isinstance(sd, dict):
        sd = read_state_dict(sd)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    _require_stage(sd, stage)
    arch: dict = {}
    if stage == MAE_KIND.stage:
        w = _get(sd, "encoder.patch_embed.proj.weight")
        if w.ndim != 5:
            raise InputError(
                f"encoder.patch_embed.proj.weight has shape {list(w.shape)}, expected [D, C, p, p, p]"
            )
        D, C, p = w.shape[0], w.shape[1], w.shape[2]
        pe = _get(sd, "encoder_pos_embed")
        img = _img_from_rows(pe.shape[1], p, "encoder_pos_embed", img_size)
        depth = _count(sd, "encoder.blocks.")
        grid = tuple(s // p for s in img)
        sincos = D % 6 == 0 and torch.allclose(pe[0].float(), sincos_pos_embed_3d(grid, D), atol=1e-5)
        arch.update(
            img_size=img,
            patch_size=p,
            in_chans=C,
            embed_dim=D,
            depth=depth,
            mlp_ratio=_get(sd, "encoder.blocks.0.mlp.fc1.weight").shape[0] / D,
            qkv_bias="encoder.blocks.0.attn.qkv.bias" in sd,
            pos_embed="sincos" if sincos else "learned",
            decoder_embed_dim=_get(sd, "mask_token").shape[-1],
            decoder_depth=_count(sd, "decoder.blocks."),
            cross_depth=_count(sd, "decoder.cross_attention_blocks."),
            num_heads=num_heads or RELEASED_PRETRAIN["num_heads"],
            decoder_num_heads=decoder_num_heads or RELEASED_PRETRAIN["decoder_num_heads"],
            layer_norm_eps=1e-6,
        )
        n_proj = _count(sd, "encoder_to_decoder.")
        if n_proj != arch["cross_depth"] + 1:
            raise InputError(
                f"checkpoint has {n_proj} encoder_to_decoder projections for "
                f"{arch['cross_depth']} cross-attention blocks (expected one more)"
            )
    else:
        pe = _get(sd, "vit.patch_embedding.position_embeddings")
        D = pe.shape[-1]
        c1 = _get(sd, "encoder1.layer.conv1.conv.weight")
        F_, C = c1.shape[0], c1.shape[1]
        if "vit.patch_embedding.patch_embeddings.1.weight" in sd:
            P = sd["vit.patch_embedding.patch_embeddings.1.weight"].shape[1]
            p = round((P / C) ** (1 / 3))
        else:
            p = _get(sd, "vit.patch_embedding.patch_embeddings.weight").shape[-1]
        img = _img_from_rows(pe.shape[1], p, "vit.patch_embedding.position_embeddings", img_size)
        arch.update(
            img_size=img,
            patch_size=p,
            in_chans=C,
            embed_dim=D,
            depth=_count(sd, "vit.blocks."),
            mlp_ratio=_get(sd, "vit.blocks.0.mlp.linear1.weight").shape[0] / D,
            qkv_bias="vit.blocks.0.attn.qkv.bias" in sd,
            num_heads=num_heads or RELEASED_FINETUNE["num_heads"],
            num_classes=_get(sd, "out.conv.conv.weight").shape[0],
            feature_size=F_,
            layer_norm_eps=1e-5,
        )
    arch["tap_blocks"] = default_taps(arch["depth"])  # not revealed by the tensors
    return arch


def _mismatch_with_released(inferred: dict, released: dict, what: str) -> None:
    diffs = []
    for key, value in inferred.items():
        if key in _HEADS or key in ("num_classes", "pos_embed", "tap_blocks") or key not in released:
            continue
        ref = released[key]
        if (tuple(ref) if isinstance(ref, (list, tuple)) else ref) != (
            tuple(value) if isinstance(value, (list, tuple)) else value
        ):
            diffs.append(f"{key} {value} (released {ref})")
    if diffs:
        raise InputError(
            f"checkpoint is not the released {what}: "
            + ", ".join(diffs)
            + "; pass its architecture (e.g. num_heads=...) to infer the rest from the tensors"
        )


def _resolve_arch(sd: StateDict, stage: str, arch: dict) -> dict:
    inferred = infer_arch_from_state_dict(
        sd, stage, arch.get("num_heads"), arch.get("decoder_num_heads"), arch.get("img_size")
    )
    if not arch:
        pre = stage == MAE_KIND.stage
        released = RELEASED_PRETRAIN if pre else RELEASED_FINETUNE
        _mismatch_with_released(inferred, released, "ViT-L/12" if pre else "ViT-L/12 UNETR")
        base = {**released, **{k: inferred[k] for k in ("num_classes", "pos_embed") if k in inferred}}
        return base
    out = {**inferred, **arch}
    if "depth" in arch and "tap_blocks" not in arch:
        out["tap_blocks"] = None
    return out


# -- loading into our models -----------------------------------------------------------------------
def load_into(model: torch.nn.Module, sd: StateDict, source: str = "checkpoint") -> None:
    """Strict load; InputError naming the first mismatching keys (both shapes), missing or unexpected keys."""
    own = model.state_dict()
    check_state_dict(source, own, sd)
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


def pretrained_to_ours(sd: StateDict) -> StateDict:
    """The paper's pre-training keys -> HiEndMAE's (pos-embed renamed, Conv3d weight -> Linear)."""
    out = {}
    for key, value in sd.items():
        if key == "encoder_pos_embed":
            key = "encoder.pos_embed"
        elif key == "encoder.patch_embed.proj.weight" and value.ndim == 5:
            value = value.permute(0, 2, 3, 4, 1).reshape(value.shape[0], -1)
        out[key] = value
    return out


def load_official_pretrained(path_or_state_dict: str | Path | dict, **arch: object):
    """The paper's pre-training checkpoint -> :class:`~hiend_model.mae.HiEndMAE` (float32, eval mode).

    ``arch`` takes MAEConfig field names. Without it the released ViT-L/12 is assumed and every size
    the tensors reveal is checked against it; with it, unspecified sizes come from the tensors.
    """
    if arch.get("decoder", "hiend") != "hiend":
        raise InputError(
            f"decoder={arch['decoder']!r}: the paper's pre-training layout holds the Hi-End-MAE "
            "decoder only (decoder='hiend')"
        )
    sd = read_state_dict(path_or_state_dict)
    _require_stage(sd, MAE_KIND.stage)
    unetr_only = set(UNETRConfig.model_fields) - set(MAEConfig.model_fields)
    fields = {k: v for k, v in _resolve_arch(sd, MAE_KIND.stage, dict(arch)).items() if k not in unetr_only}
    cfg = validated(MAEConfig, fields)
    model = HiEndMAE(cfg)
    load_into(model, {k: v.float() for k, v in pretrained_to_ours(sd).items()})
    return model.eval()


def export_official_pretrained(mae, wrap: bool = False) -> dict:
    """HiEndMAE -> state dict in the paper's pre-training layout (``wrap``: ``{"state_dict": module.*}``).

    A plain-MAE baseline (``decoder="plain"``) is refused: the paper's layout has no such decoder.
    """
    cfg = mae.config
    if cfg.decoder != "hiend":
        raise InputError(
            f"cannot export a decoder={cfg.decoder!r} model to the paper's pre-training layout, "
            "which holds the Hi-End-MAE decoder only; save it with hiend_model.save_checkpoint"
        )
    out = {}
    for key, value in mae.state_dict().items():
        value = value.detach().clone()
        if key == "encoder.pos_embed":
            key = "encoder_pos_embed"
        elif key == "encoder.patch_embed.proj.weight":
            p, C = cfg.patch_size, cfg.in_chans
            value = value.reshape(value.shape[0], p, p, p, C).permute(0, 4, 1, 2, 3).contiguous()
        out[key] = value
    return {"state_dict": {f"module.{k}": v for k, v in out.items()}} if wrap else out


# -- fine-tuned (MONAI) layout ----------------------------------------------------------------------
_VIT_TO_OURS = [
    (r"^vit\.patch_embedding\.position_embeddings$", "encoder.pos_embed"),
    (r"^vit\.patch_embedding\.patch_embeddings\.1\.", "encoder.patch_embed.proj."),
    (r"^vit\.blocks\.(\d+)\.mlp\.linear1\.", r"encoder.blocks.\1.mlp.fc1."),
    (r"^vit\.blocks\.(\d+)\.mlp\.linear2\.", r"encoder.blocks.\1.mlp.fc2."),
    (r"^vit\.blocks\.(\d+)\.attn\.out_proj\.", r"encoder.blocks.\1.attn.proj."),
    (r"^vit\.", "encoder."),
]
_OURS_TO_VIT = [
    (r"^encoder\.pos_embed$", "vit.patch_embedding.position_embeddings"),
    (r"^encoder\.patch_embed\.proj\.", "vit.patch_embedding.patch_embeddings.1."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.fc1\.", r"vit.blocks.\1.mlp.linear1."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.fc2\.", r"vit.blocks.\1.mlp.linear2."),
    (r"^encoder\.blocks\.(\d+)\.attn\.proj\.", r"vit.blocks.\1.attn.out_proj."),
    (r"^encoder\.", "vit."),
]


def _sub_first(key: str, rules: list[tuple[str, str]]) -> str:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key


def finetuned_to_ours(sd: StateDict) -> StateDict:
    """MONAI UNETR keys -> our UNETR's (``norm_cross_attn`` keys dropped: MONAI >= 1.3 leaves them unused)."""
    out = {}
    for key, value in sd.items():
        if ".norm_cross_attn." in key:
            continue
        if key.startswith("vit."):
            if key == "vit.patch_embedding.patch_embeddings.weight" and value.ndim == 5:  # 'conv' projection
                out["encoder.patch_embed.proj.weight"] = value.permute(0, 2, 3, 4, 1).reshape(
                    value.shape[0], -1
                )
                continue
            if key == "vit.patch_embedding.patch_embeddings.bias":
                out["encoder.patch_embed.proj.bias"] = value
                continue
            out[_sub_first(key, _VIT_TO_OURS)] = value
            continue
        key = key.replace("encoder1.layer.", "encoder1.", 1)
        key = re.sub(r"^out\.conv\.conv\.", "out.", key)
        key = re.sub(r"\.conv\.(weight|bias)$", r".\1", key)
        out[key] = value
    return out


def export_official_finetuned(unetr, wrap: bool = False, norm_cross_attn: bool = False) -> dict:
    """UNETR -> state dict in the paper's fine-tuned (MONAI) layout.

    ``norm_cross_attn`` adds MONAI >= 1.3's unused per-block norm keys (ones/zeros) so the dict also
    loads strictly into a current MONAI UNETR; the paper's MONAI 1.2 has none.
    """
    out = {}
    for key, value in unetr.state_dict().items():
        value = value.detach().clone()
        if key.startswith("encoder."):
            out[_sub_first(key, _OURS_TO_VIT)] = value
            continue
        if key.startswith("out."):
            out["out.conv.conv." + key[4:]] = value
            continue
        if not key.startswith("decoder2.conv3d."):
            key = re.sub(r"\.(weight|bias)$", r".conv.\1", key)
        if key.startswith("encoder1."):
            key = "encoder1.layer." + key[len("encoder1.") :]
        out[key] = value
    if norm_cross_attn:
        D = unetr.config.embed_dim
        for i in range(unetr.config.depth):
            out[f"vit.blocks.{i}.norm_cross_attn.weight"] = torch.ones(D)
            out[f"vit.blocks.{i}.norm_cross_attn.bias"] = torch.zeros(D)
    return {"state_dict": {f"module.{k}": v for k, v in out.items()}} if wrap else out


def load_official_finetuned(path_or_state_dict: str | Path | dict, **arch: object):
    """A UNETR fine-tuned with the paper's code (MONAI layout) -> :class:`~hiend_model.unetr.UNETR` (eval).

    ``arch`` takes UNETRConfig field names; MONAI's LayerNorm eps 1e-5 is kept unless given. Without
    ``arch`` the released ViT-L/12 UNETR (feature size 32) is assumed and checked; num_classes is read
    from the tensors.
    """
    sd = read_state_dict(path_or_state_dict)
    _require_stage(sd, UNETR_KIND.stage)
    fields = _resolve_arch(sd, UNETR_KIND.stage, dict(arch))
    mae_only = set(MAEConfig.model_fields) - set(UNETRConfig.model_fields)
    cfg = validated(UNETRConfig, {k: v for k, v in fields.items() if k not in mae_only})
    model = UNETR(cfg)
    has_t = "decoder2.transp_conv.conv.weight" in sd
    if has_t != (cfg.final_upsample == "transpose"):
        raise InputError(
            f"checkpoint's last up-stage is {'a transposed conv' if has_t else 'resize + conv'} "
            f"but patch_size={cfg.patch_size} implies {cfg.final_upsample}"
        )
    load_into(model, {k: v.float() for k, v in finetuned_to_ours(sd).items()})
    return model.eval()


# -- files of either format ------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_official(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    source: str,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """The paper's ``.pth`` -> a hiend checkpoint with the paper's plan; sizes inferred from the tensors.

    ``source``: the layout of ``src``, ``"official-pretrain"`` or ``"official-finetune"`` (any name of
    :mod:`hiend_model.kinds`). Head counts are not in the tensors (default: the released 16). The
    output's ``extra`` is ``{"converted_from", "source_format", "source_sha256"}``. Returns ``dst``.
    ``dst`` must not be ``src`` (the same file by any path) or a folder, and an existing ``dst`` is
    replaced only with ``overwrite`` (InputError otherwise, before anything is read or written).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(src))
    if dst.exists() and dst.is_dir():
        raise InputError(f"{dst}: is a folder; give the output checkpoint's file name (.safetensors)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"{dst}: is the source checkpoint itself; choose another output file")
    if dst.exists() and not overwrite:
        raise InputError(f"{dst}: exists; choose another output file or pass --overwrite")
    kind = get_kind(source)
    sd = read_state_dict(src)
    arch = infer_arch_from_state_dict(
        sd, kind.stage, num_heads=num_heads, decoder_num_heads=decoder_num_heads
    )
    if kind is MAE_KIND:
        model = load_official_pretrained(sd, **arch)
    else:
        model = load_official_finetuned(sd, **arch)
    del sd
    extra = {"converted_from": str(src), "source_format": source, "source_sha256": _sha256(src)}
    return save_checkpoint(dst, model, plan=Plan.paper(), extra=extra)


__all__ = [
    "load_official_pretrained",
    "load_official_finetuned",
    "export_official_pretrained",
    "export_official_finetuned",
    "infer_arch_from_state_dict",
    "read_state_dict",
    "convert_official",
    "RELEASED_PRETRAIN",
    "RELEASED_FINETUNE",
]
