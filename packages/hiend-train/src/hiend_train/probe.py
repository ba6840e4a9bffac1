"""A segmentation probe of a ViT encoder: how much of each organ its tokens carry, measured cheaply.

A reconstruction loss that keeps falling says little about segmentation. The probe asks the encoder
alone: its token features, frozen, feed a light head fitted on a few labelled cases, and the head's
Dice on held-out cases is the score.

1. **Crops** (:func:`load_probe_data`): ``crops`` crops of the encoder's input size from each of
   ``cases`` fitting and ``val_cases`` held-out cases of a labelled cache, chosen by a seeded
   permutation of the case names; crop centres are class-balanced (each organ as often as the others;
   3 organ-centred crops for 1 background one) with no augmentation, drawn from a fixed key of the
   sampler's streams: the same crops at every probe of a run (and, inside pre-training, for every run
   on the same labelled cache: :func:`hiend_train.probing.probe_settings`).
2. **Features** (:func:`token_features`): the encoder runs on every crop in eval mode without
   gradients (no copy of its weights is made: nothing of it changes, and the training mode is put
   back). Each probed layer gives tokens ``[N, L, D]`` (class token left out): the outputs of the
   blocks the Hi-End decoder taps (``tap_blocks``, default blocks 3, 6, 9 of 12) and ``last``, the
   final normed output, each a separate probe.
3. **Head** (:func:`fit_head`): per token, one linear map ``D -> p^3 x K``: the voxel scores of the
   token's own patch (p: patch size, K: classes). No convolution, no image skip path, no neighbour
   token: what the head knows of a voxel comes from its patch's token only. It is fitted in closed
   form (class-weighted ridge regression onto the voxels' one-hot classes, in float64): no learning
   rate, no steps, no random number, so the probe is a function of the encoder's weights. (A head
   trained by Adam on soft Dice + cross-entropy for 150 full-batch steps scored 0.03 and 0.04 higher
   on the two encoders compared on the tiny phantoms, at a few hundred times the cost.)
4. **Score** (:func:`run_probe`): argmax per voxel on the held-out crops; Dice per organ pooled over
   all of them (:func:`hiend_train.losses.dice_counts`); an organ absent from both prediction and
   reference is not scored. A layer's ``mean`` is the mean over scored organs. The probe's headline
   (``mean``, ``dice``) is its best layer's: what the best single layer offers a decoder.

Cost: one forward pass over ``(cases + val_cases) x crops`` crops, then per layer K products
``Z'Y_k`` and a ``(D + 1)``-square solve, in float64 on the run's device. The largest array is the
weights, ``(D + 1) x p^3 x K`` (ViT-B at 96^3 with 14 classes: 44 M numbers, 0.35 GB).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hiend_data.errors import InputError

from .losses import dice_counts
from .precision import autocast

if TYPE_CHECKING:
    from hiend_model.vit import ViTEncoder

__all__ = [
    "LAST",
    "LayerScore",
    "ProbeData",
    "ProbeResult",
    "ProbeSettings",
    "fit_head",
    "load_probe_data",
    "probe_layers",
    "run_probe",
    "token_features",
]

#: the name of the final normed output among the probed layers
LAST = "last"
#: the head's ridge penalty, per fitting token, on standardised features
RIDGE = 1e-3
#: the sampler stream key of the probe's crops (never a training epoch; :meth:`CropSampler.rng`)
CROP_KEY = (1 << 30) + 7


@dataclass(frozen=True)
class ProbeSettings:
    """How big the probe is. ``cases``: fitting cases; ``val_cases``: held-out cases scored;
    ``crops``: crops per case; ``ridge``: the head's penalty (:func:`fit_head`); ``seed``: which cases
    and crops (the run's seed inside pre-training)."""

    cases: int = 4
    val_cases: int = 2
    crops: int = 4
    ridge: float = RIDGE
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cases", "val_cases", "crops"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"probe {name}={getattr(self, name)} must be >= 1")
        if not (math.isfinite(self.ridge) and self.ridge > 0):
            raise InputError(f"probe ridge={self.ridge} must be a positive number")


@dataclass
class ProbeData:
    """The probe's fixed crops: images ``float32 [N, C, *crop]``, labels ``int64 [N, *crop]`` of the
    fitting (``fit_*``) and held-out (``val_*``) cases; ``num_classes`` K (background included);
    ``names``: foreground label value -> organ name."""

    cache: Path
    fit_cases: list[str]
    val_cases: list[str]
    fit_images: torch.Tensor
    fit_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    names: dict[int, str]


def _organ_names(cache: Any, num_classes: int) -> dict[int, str]:
    names = dict(cache.label_names or {})
    return {v: names.get(v, f"class_{v}") for v in range(1, num_classes)}


def load_probe_data(
    cache_root: str | Path, crop_size: tuple[int, int, int], settings: ProbeSettings, in_chans: int = 1
) -> ProbeData:
    """The crops of :class:`ProbeData` from the labelled cache at ``cache_root`` (see the module).

    InputError (one line naming the cache) when it is not a labelled cache, holds fewer than
    ``cases + val_cases`` cases, or its images have other than ``in_chans`` channels."""
    from hiend_data.cache import Cache
    from hiend_data.sampling import CropSampler, SamplerConfig

    cache = Cache.open(cache_root)
    need = settings.cases + settings.val_cases
    if len(cache.cases) < need:
        raise InputError(
            f"{cache.root}: the probe needs {need} labelled cases ({settings.cases} to fit, "
            f"{settings.val_cases} held out), the cache holds {len(cache.cases)}"
        )
    top = 0
    for name in cache.cases:
        case = cache.case(name)
        if case.label is None:
            raise InputError(f"{cache.root}: case {name!r} has no label; the probe needs a labelled cache")
        if case.image.shape[0] != in_chans:
            raise InputError(
                f"{cache.root}: case {name!r} has {case.image.shape[0]} image channels, the encoder {in_chans}"
            )
        top = max(top, *(case.classes or [0]))
    if top < 1:
        raise InputError(f"{cache.root}: no case has a foreground label; the probe has nothing to score")
    order = np.random.default_rng(settings.seed).permutation(len(cache.cases))
    chosen = [cache.cases[i] for i in order[:need]]
    cfg = SamplerConfig.finetune(
        crop_size=tuple(crop_size),
        num_samples=settings.crops,
        pos=3.0,
        neg=1.0,
        class_balanced=True,
        flip_prob=0.0,
        rot90_prob=0.0,
        scale_prob=0.0,
        shift_prob=0.0,
    )
    sampler = CropSampler(cache, cfg, seed=settings.seed, reuse_buffers=False)
    images, labels = [], []
    for position, name in enumerate(chosen):
        img, lab = sampler.sample_batch(name, sampler.rng(CROP_KEY, position))
        assert lab is not None  # a labelled case
        images.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
        labels.append(torch.from_numpy(lab.astype(np.int64)))
    n = settings.cases * settings.crops
    all_images, all_labels = torch.cat(images), torch.cat(labels)
    return ProbeData(
        cache=cache.root,
        fit_cases=chosen[: settings.cases],
        val_cases=chosen[settings.cases :],
        fit_images=all_images[:n],
        fit_labels=all_labels[:n],
        val_images=all_images[n:],
        val_labels=all_labels[n:],
        num_classes=top + 1,
        names=_organ_names(cache, top + 1),
    )


def probe_layers(depth: int, taps: tuple[int, ...] | None = None) -> dict[str, int | None]:
    """The probed layers of an encoder of ``depth`` blocks: ``block_K`` (0-based) for each tapped
    block (default :func:`hiend_model.decoders.default_taps`, the Hi-End decoder's), then ``last``
    (None: the final normed output)."""
    from hiend_model.decoders import default_taps

    blocks = tuple(taps) if taps else default_taps(depth)
    return {**{f"block_{b}": b for b in blocks}, LAST: None}


@torch.no_grad()
def token_features(
    encoder: ViTEncoder,
    images: torch.Tensor,
    patch_size: int,
    layers: dict[str, int | None],
    device: torch.device,
    precision: str = "fp32",
    batch: int = 8,
) -> dict[str, torch.Tensor]:
    """Token features of ``images`` [N, C, *crop] for each of ``layers`` (:func:`probe_layers`):
    float32 [N, L, D] on ``device``, the class token left out. The encoder runs in eval mode without
    gradients; its training mode is put back."""
    from hiend_model.vit import patchify

    skip = 1 if encoder.cls_token is not None else 0
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    was_training = encoder.training
    encoder.eval()
    try:
        for i in range(0, images.shape[0], batch):
            x = images[i : i + batch].to(device)
            with autocast(precision, device):
                normed, blocks = encoder(patchify(x, patch_size))
            for name, block in layers.items():
                tokens = normed if block is None else blocks[block]
                out[name].append(tokens[:, skip:].float())
    finally:
        encoder.train(was_training)
    return {name: torch.cat(parts) for name, parts in out.items()}


def token_targets(labels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Labels [N, *crop] -> [N, L, p^3] int64: each token's voxels, in :func:`hiend_model.vit.patchify`'s
    order."""
    from hiend_model.vit import patchify

    return patchify(labels.unsqueeze(1).float(), patch_size).round().long()


@dataclass
class Head:
    """A fitted per-token head: standardisation (``mean``, ``std`` [D]) and weights [D + 1, V K] (the
    last row the bias)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    voxels: int
    num_classes: int

    def design(self, feats: torch.Tensor) -> torch.Tensor:
        """Features [T, D] -> standardised, with a column of ones: [T, D + 1] float64."""
        z = ((feats.double() - self.mean) / self.std).to(torch.float64)
        return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], 1)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Features [T, D] -> voxel scores [T, V, K] (their argmax is the prediction)."""
        return (self.design(feats) @ self.weight).view(feats.shape[0], self.voxels, self.num_classes)

    def predict(self, feats: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Features [T, D] -> the class of each voxel [T, V] (int64), ``chunk`` tokens at a time."""
        return torch.cat([self.logits(feats[i : i + chunk]).argmax(-1) for i in range(0, len(feats), chunk)])


def fit_head(feats: torch.Tensor, targets: torch.Tensor, num_classes: int, ridge: float = RIDGE) -> Head:
    """The head of the module, fitted in closed form on features [T, D] and their voxels' labels [T, V].

    Ridge regression onto each voxel's one-hot class, the one-hot of class k scaled by
    ``share_k ** -0.5`` (its share of the fitting voxels; the inverse-sqrt weighting of
    :func:`hiend_train.losses.inverse_sqrt_weights`, so that a kidney at 0.5 % of the voxels can win an
    argmax against the background): ``W = (Z'Z + ridge T I)^-1 Z'Y`` with Z the standardised features
    and a bias column, in float64. No learning rate, no steps, no random number; the solve is
    D + 1 square."""
    feats = feats.double()
    mean = feats.mean(0)
    std = feats.std(0, unbiased=False).clamp_min(1e-6)
    t, v, k = feats.shape[0], targets.shape[1], num_classes
    head = Head(mean, std, torch.empty(0), v, k)
    z = head.design(feats)
    share = torch.bincount(targets.reshape(-1), minlength=k)[:k].double() / targets.numel()
    rhs = torch.zeros(z.shape[1], v, k, dtype=z.dtype, device=z.device)
    for c in range(k):  # Z'Y one class at a time: [T, V] in memory, not the one-hot [T, V, K]
        if share[c] > 0:
            rhs[:, :, c] = (z.T @ (targets == c).to(z.dtype)) * float(share[c]) ** -0.5
    gram = z.T @ z + ridge * t * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    head.weight = torch.linalg.solve(gram, rhs.reshape(z.shape[1], v * k))
    return head


@dataclass
class LayerScore:
    """One probed layer: ``mean`` Dice over the scored organs (None: none scored) and ``dice`` per organ
    name (None: the organ is in neither prediction nor reference of the held-out crops)."""

    mean: float | None
    dice: dict[str, float | None]


@dataclass
class ProbeResult:
    """A probe: every layer's :class:`LayerScore`, the best layer (``layer``) and its ``mean`` and
    ``dice`` (the headline), the cases used and the seconds it took."""

    layers: dict[str, LayerScore]
    layer: str
    mean: float | None
    dice: dict[str, float | None]
    fit_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (the ``probe`` event's fields and ``hiend-train probe --out``)."""
        return {
            "mean": self.mean,
            "layer": self.layer,
            "dice": self.dice,
            "layers": {name: asdict(score) for name, score in self.layers.items()},
            "fit_cases": self.fit_cases,
            "val_cases": self.val_cases,
            "seconds": round(self.seconds, 3),
        }


def _score(pred: torch.Tensor, ref: torch.Tensor, names: dict[int, str]) -> LayerScore:
    k = len(names) + 1
    dice, scored = dice_counts(pred, ref, k)
    per = {names[v]: (float(dice[v - 1]) if scored[v - 1] > 0 else None) for v in range(1, k)}
    values = [d for d in per.values() if d is not None]
    return LayerScore(float(np.mean(values)) if values else None, per)


def run_probe(
    encoder: ViTEncoder,
    patch_size: int,
    data: ProbeData,
    settings: ProbeSettings,
    layers: dict[str, int | None],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> ProbeResult:
    """Probe ``encoder`` (patch size ``patch_size``) on ``data``: see the module. Uses no random
    number and leaves the encoder's weights and mode as they were."""
    device = torch.device(device)
    t0 = time.perf_counter()
    feats_fit = token_features(encoder, data.fit_images, patch_size, layers, device, precision)
    feats_val = token_features(encoder, data.val_images, patch_size, layers, device, precision)
    fit_t = token_targets(data.fit_labels, patch_size).to(device)
    val_t = token_targets(data.val_labels, patch_size).to(device)
    fit_t, val_t = fit_t.reshape(-1, fit_t.shape[-1]), val_t.reshape(-1, val_t.shape[-1])
    scores: dict[str, LayerScore] = {}
    for name in layers:
        f_fit = feats_fit[name].reshape(-1, feats_fit[name].shape[-1])
        f_val = feats_val[name].reshape(-1, feats_val[name].shape[-1])
        head = fit_head(f_fit, fit_t, data.num_classes, settings.ridge)
        with torch.no_grad():
            pred = head.predict(f_val)
        scores[name] = _score(pred, val_t, data.names)
    best = max(scores, key=lambda n: -1.0 if scores[n].mean is None else scores[n].mean)
    return ProbeResult(
        layers=scores,
        layer=best,
        mean=scores[best].mean,
        dice=scores[best].dice,
        fit_cases=list(data.fit_cases),
        val_cases=list(data.val_cases),
        seconds=time.perf_counter() - t0,
    )
