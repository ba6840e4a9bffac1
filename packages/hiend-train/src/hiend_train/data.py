"""Training data: the cache, the seeded train / validation split (few-shot and k-fold for fine-tuning)
and the DataLoader over crops."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from hiend_data.cache import Cache
from hiend_data.errors import InputError
from hiend_data.torch import CropDataset, collate_crops
from hiend_data.torch_augment import NO_AUGMENT, augment_batch

from .dist import DistEnv

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from hiend_data.sampling import SamplerConfig

    from .config import TrainConfig


def open_cache(path: str | os.PathLike[str] | None) -> Cache:
    """The hiend-data cache at ``path`` (InputError when missing, not a cache, or empty)."""
    if path is None:
        raise InputError('no cache given (--cache DIR, or cache = "DIR" in the config file)')
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: cache folder not found (make one with `hiend-data preprocess SRC {path}`)")
    cache = Cache.open(path)
    if not cache.cases:
        raise InputError(f"{path}: the cache holds no complete case")
    return cache


def case_file(root: str | os.PathLike[str], name: str) -> Path:
    """The image file of case ``name`` in the cache at ``root`` (named in error messages)."""
    return Path(root) / "cases" / f"{name}.npy"


def nonfinite_message(root: str | os.PathLike[str] | None, names: Sequence[str], where: str) -> str:
    """The one line for cases ``names`` of the cache at ``root`` whose image holds NaN or infinite
    values, met in ``where`` (``"epoch 3"``, ``"validation"``)."""
    files = ", ".join(f"{n!r} ({case_file(root, n)})" if root is not None else repr(n) for n in names)
    what, verb = ("case", "holds") if len(names) == 1 else ("cases", "hold")
    return (
        f"{root if root is not None else 'training data'}: {what} {files} {verb} NaN or infinite values "
        f"(crops of {where}); preprocess the scan again (hiend-data preprocess) or remove it from the cache"
    )


def nonfinite_cases(images: torch.Tensor, names: Sequence[str]) -> list[str]:
    """The names of the crops of ``images`` ``[N, ...]`` that hold NaN or infinite values (each name
    once, in order; ``names[i]`` names crop i, as in a batch of :func:`hiend_data.torch.collate_crops`)."""
    if images.numel() == 0 or not images.is_floating_point():
        return []
    bad = (~torch.isfinite(images.detach().reshape(images.shape[0], -1)).all(dim=1)).nonzero().flatten()
    return list(dict.fromkeys(names[i] if i < len(names) else f"crop {i}" for i in bad.tolist()))


def check_finite(
    images: torch.Tensor, names: Sequence[str], root: str | os.PathLike[str] | None, where: str
) -> None:
    """InputError naming the cache at ``root``, the case(s) and their image file
    (:func:`nonfinite_message`) when crops ``images`` of the cases ``names`` hold NaN or infinite
    values. Images are checked here, on the CPU where they enter (DataLoader workers, validation),
    not in the model's forward, where the check would be a device-to-host sync every step."""
    bad = nonfinite_cases(images, names)
    if bad:
        raise InputError(nonfinite_message(root, bad, where))


def case_error(root: str | os.PathLike[str], name: str, error: Exception, where: str) -> str:
    """The one line for an InputError ``error`` raised while cropping case ``name`` of the cache at
    ``root`` (the sampler's messages name no case): the NaN message when the case's image is not
    finite (read only now, on the error path), else the error with the case and its file."""
    try:
        image = Cache.open(root).case(name).image
        finite = bool(np.isfinite(image).all())
    except (InputError, OSError, ValueError):
        finite = True
    if not finite:
        return nonfinite_message(root, [name], where)
    return f"{root}: case {name!r} ({case_file(root, name)}): {error}"


class NamedCases(Dataset):
    """A :class:`hiend_data.torch.CropDataset` whose InputErrors name the case and the cache.

    ``dataset[i]`` as the CropDataset gives it; an InputError while cropping case i (e.g. "cannot
    sample from an empty volume" for an image that is NaN throughout) becomes one line naming the
    cache, the case and its file (:func:`case_error`), and so do crops that hold NaN or infinite
    values (a float32 cache edited after preprocessing). In a DataLoader worker the line travels to the
    main process as an item ``{"error": line}`` (a worker's exception would arrive wrapped in its
    traceback), which :func:`collate_checked` passes on and the training loop raises.
    """

    def __init__(self, dataset: CropDataset, root: str | os.PathLike[str]) -> None:
        self.dataset = dataset
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.dataset.case_names[int(index)]
        where = f"epoch {self.dataset.epoch + 1}"
        try:
            item = self.dataset[index]
        except InputError as exc:
            message = case_error(self.root, name, exc, where)
        else:  # the crops are checked here, on the CPU where they enter (not on the device each step)
            bad = nonfinite_cases(item["image"], [name] * len(item["image"]))
            if not bad:
                return item
            message = nonfinite_message(self.root, bad, where)
        if torch.utils.data.get_worker_info() is not None:
            return {"error": message}
        raise InputError(message) from None


def collate_checked(items: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`hiend_data.torch.collate_crops`, or ``{"error": line}`` when an item is an error of
    :class:`NamedCases` (raised as an InputError by the training loop)."""
    for item in items:
        if "error" in item:
            return {"error": item["error"]}
    return collate_crops(items)


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (this process's share of the cases, shuffled by (seed, epoch)) whose
    epoch can begin part-way, for a run resumed from a checkpoint inside an epoch.

    ``set_start(k)`` after ``set_epoch(epoch)``: the next pass yields the epoch's order without its
    first ``k`` indices (micro-batches done x batch size), so the skipped cases are never loaded; the
    order itself depends only on (seed, epoch), and the crops of a case only on (seed, epoch, case), so
    the batches that follow are those an uninterrupted run draws. ``set_epoch`` starts at 0 again.
    ``len()`` stays the whole epoch's count: the schedule counts whole epochs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # DistributedSampler's
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Begin the next pass at index ``start`` of this epoch's order (0 <= start <= len)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start={start}: this epoch has {self.num_samples} indices on this process")
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)


def split_cases(names: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of the cache's case names -> (train indices, validation indices) into ``names``.

    :func:`hiend_data.discovery.split` on the names: it depends only on the names and the seed.
    """
    from hiend_data.discovery import Case, split

    if val_fraction <= 0 or len(names) < 2:
        return list(range(len(names))), []
    train, val = split([Case(n, []) for n in names], val_fraction=val_fraction, seed=seed)
    index = {n: i for i, n in enumerate(names)}
    return [index[c.case_id] for c in train], [index[c.case_id] for c in val]


def few_shot_split(
    names: list[str],
    val_fraction: float,
    seed: int,
    train_cases: int | None = None,
    fold: int | None = None,
    folds: int | None = None,
) -> tuple[list[int], list[int]]:
    """The fine-tuning split: (train indices, validation indices) into ``names``.

    Validation: fold ``fold`` (0-based) of :func:`hiend_data.discovery.kfold` with ``folds`` folds when
    ``fold`` is given (``val_fraction`` is then not used), else :func:`split_cases`. Either depends only
    on the names and ``seed`` (not on their order, nor on ``train_cases``).

    ``train_cases`` N keeps N of those training cases: the first N of a seeded permutation of the
    training split's names, so the subsets are nested (N = 1 is in N = 2, which is in N = 4, ...) for
    one (names, val_fraction or fold, seed). ``None`` keeps them all (exactly :func:`split_cases`).
    Both lists are in the order of the sorted names. InputError for N above the training cases or a
    fold outside ``0 <= fold < folds <= len(names)``.
    """
    import numpy as np

    if (fold is None) != (folds is None):
        raise InputError(f"fold={fold}, folds={folds}: k-fold needs both (fold k of folds K, 0 <= k < K)")
    if fold is not None and folds is not None:
        from hiend_data.discovery import Case, kfold

        if not 2 <= folds <= len(names):
            raise InputError(f"folds={folds}: needs 2 <= folds <= the number of cases ({len(names)})")
        if not 0 <= fold < folds:
            raise InputError(f"fold={fold}: folds are numbered 0 to {folds - 1}")
        index = {n: i for i, n in enumerate(names)}
        train_c, val_c = kfold([Case(n, []) for n in names], k=folds, seed=seed)[fold]
        train, val = [index[c.case_id] for c in train_c], [index[c.case_id] for c in val_c]
    else:
        train, val = split_cases(names, val_fraction, seed)
    if train_cases is None:
        return train, val
    if not 1 <= train_cases <= len(train):
        where = f"fold {fold} of {folds}" if fold is not None else f"val_fraction {val_fraction}"
        raise InputError(
            f"train_cases={train_cases}: the training split has {len(train)} cases "
            f"({len(names)} in the cache, {len(val)} held out for validation by {where})"
        )
    ordered = sorted(train, key=lambda i: names[i])
    # a stream of its own (not the split's): the same seed permutes the training names independently
    perm = np.random.default_rng([seed, 1]).permutation(len(ordered))
    chosen = {ordered[j] for j in perm[:train_cases]}
    return [i for i in train if i in chosen], val


def sampler_config(recipe: str, **fields: Any) -> SamplerConfig:
    """``SamplerConfig.<recipe>(**fields)`` (``pretrain`` | ``finetune``: the paper's recipe with the run's
    ``sampler`` table over it), or a one-line InputError naming the field: ``sampler: flip_axis: unknown
    field (known: ...)``, ``sampler: rot90_prob: Input should be less than or equal to 1``."""
    from pydantic import ValidationError

    from hiend_data.errors import from_validation_error
    from hiend_data.sampling import SamplerConfig

    try:
        return getattr(SamplerConfig, recipe)(**fields)
    except ValidationError as exc:
        raise from_validation_error(exc, "sampler", SamplerConfig.model_fields) from None


def split_augmentation(
    sampler_cfg: SamplerConfig, augment_on: str
) -> tuple[SamplerConfig, SamplerConfig | None]:
    """``(the DataLoader's SamplerConfig, the SamplerConfig to apply on the device or None)``.

    ``augment_on="cpu"``: the workers do everything (``(sampler_cfg, None)``). ``"gpu"``: the workers only
    crop (flips, rot90, scale and shift switched off) and :func:`hiend_data.torch_augment.augment_batch`
    applies ``sampler_cfg``'s recipe to each batch on the device (:func:`device_augment`).
    """
    if augment_on == "cpu":
        return sampler_cfg, None
    if augment_on != "gpu":
        raise InputError(f"augment_on={augment_on!r}: expected 'cpu' or 'gpu'")
    return sampler_cfg.model_copy(update=NO_AUGMENT), sampler_cfg


def device_augment(
    aug_cfg: SamplerConfig | None, images: torch.Tensor, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The crops of one batch, already on the device, augmented as ``aug_cfg`` says (None: unchanged).

    Draws from the device's default generator, which the loop seeds before every optimizer step from
    (seed, step, rank): a run is reproducible and resumes exactly with device augmentation too.
    """
    if aug_cfg is None:
        return images, labels
    return augment_batch(images, labels, aug_cfg)


def make_train_loader(
    cfg: TrainConfig, cache: Cache, indices: list[int], env: DistEnv, sampler_cfg: SamplerConfig
) -> tuple[CropDataset, EpochSampler, DataLoader[dict[str, Any]], SamplerConfig | None]:
    """:func:`make_loader` with a run config's loader fields and its ``augment_on``:
    ``(dataset, sampler, loader, device augmentation config or None)`` (:func:`split_augmentation`)."""
    loader_cfg, aug_cfg = split_augmentation(sampler_cfg, cfg.augment_on)
    dataset, sampler, loader = make_loader(
        cache, loader_cfg, indices, cfg.batch_size, cfg.workers, cfg.seed, env, prefetch=cfg.prefetch
    )
    return dataset, sampler, loader, aug_cfg


def close_loader(loader: object) -> None:
    """End the persistent worker processes of a DataLoader now (a run's workers end with the run,
    however it ends). Left to the interpreter's exit they would wait there: they ignore SIGTERM
    (:func:`hiend_train.signals.worker_ignores_signals`), which is how multiprocessing ends daemonic
    children before joining them."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
        loader._iterator = None  # type: ignore[attr-defined]


def make_loader(
    cache: Cache,
    sampler_cfg: SamplerConfig,
    indices: list[int],
    batch_size: int,
    workers: int,
    seed: int,
    env: DistEnv,
    prefetch: int = 2,
) -> tuple[CropDataset, EpochSampler, DataLoader[dict[str, Any]]]:
    """-> (CropDataset over the whole cache, :class:`EpochSampler` over ``indices``, DataLoader).

    A batch is ``batch_size`` volumes of this process's share of the cases (shuffled per epoch by
    ``sampler.set_epoch``), each giving ``sampler_cfg.num_samples`` crops: ``batch["image"]``
    ``[batch_size * num_samples, C, *crop]``. Crops depend only on (seed, epoch, case index). An
    InputError while cropping a case names it (:class:`NamedCases`; in a worker the batch is
    ``{"error": line}``, which the training loop raises).
    On CUDA the batches are pinned (for non-blocking copies); ``workers`` processes stay alive across
    epochs and each prepares ``prefetch`` batches ahead. Workers ignore SIGTERM, SIGUSR1 and SIGINT
    (:func:`hiend_train.signals.worker_ignores_signals`): the main process decides how the run stops.
    """
    from torch.utils.data import DataLoader, Subset

    from .signals import worker_ignores_signals

    dataset = CropDataset(cache.root, sampler_cfg, seed=seed)
    subset = Subset(NamedCases(dataset, cache.root), indices)
    sampler = EpochSampler(
        subset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed, drop_last=False
    )
    cuda = env.device is not None and env.device.type == "cuda"
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_checked,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=worker_ignores_signals if workers > 0 else None,
    )
    return dataset, sampler, loader
