"""Finding the cases of a dataset (nnU-Net v2 raw folders, folders of scans, manifest files) and the
scans named on a command line (:func:`collect_cases`, ``hiend-model predict``).

:func:`discover` returns a list of :class:`Case` (id, channel files, optional label file):

* nnU-Net v2 raw dataset (a folder with ``dataset.json``): ``imagesTr/{case}_{XXXX}{file_ending}`` with
  labels ``labelsTr/{case}{file_ending}``; ``imagesTs`` (unlabelled) with ``include_test=True``. Every
  case must have exactly the channels ``channel_names`` lists: a missing one is an :class:`InputError`
  naming the first missing file. A ``"dataset"`` entry in ``dataset.json`` (case -> {"images": [...],
  "label": ...}) or nnU-Net v1's ``"training"`` list is honoured; every path must stay inside the
  dataset folder.
* any other folder (:func:`folder_scans`, the rule ``predict`` shares): every ``.nii`` / ``.nii.gz``
  below it (recursive, unlabelled, hidden files and folders skipped), grouped into cases by
  :func:`hiend_data.naming.group_channels`: ``{case}_0000``, ``{case}_0001``, ... in one folder are one
  multi-channel case named ``{case}`` (channel order); a gap in them is an :class:`InputError` naming
  the first missing file (never split into separate cases); a lone ``x_0001`` or any other file is a
  one-channel case named by its stem (``x_0000`` alone: ``x``); **and** every DICOM series below it
  (a folder directly holding DICOM files, named by the folder; a ``.zip`` of a series): a folder
  holding both gives both.
* a manifest file: one ``image[,label]`` per line (comma or tab; ``#`` comments and blank lines skipped),
  paths relative to the manifest's folder, each one that a reader of :mod:`hiend_data.readers` takes;
  the case is named by its file alone (:func:`hiend_data.naming.case_name`: ``x_0000.nii.gz`` -> ``x``).

Case ids are made unique by prefixing parent folders (``siteA__ct``) only where names collide; two
sources of one folder naming one case (``x.nii.gz`` beside ``x_0000.nii.gz``) are an InputError naming
both. All file naming is :mod:`hiend_data.naming`'s one rule.
"""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, shown
from .jsonfile import read_json
from .naming import (
    IMAGE_SUFFIXES,
    ChannelGroup,
    case_name,
    channel_file,
    check_unique,
    dicom_case_name,
    dicom_folders,
    group_channels,
    image_suffix,
    is_image,
    safe_case_name,
    split_channel,
    strip_suffix,
)
from .readers import READERS, case_name_of, find_reader, no_reader_message


@dataclass(frozen=True)
class Case:
    """One case: ``case_id`` (unique within a dataset), ``images`` (channel files in order, or one DICOM
    series folder / zip), ``label``; ``series``: SeriesInstanceUIDs to pick from a DICOM folder holding
    several (``preprocess --series``), empty for all other cases."""

    case_id: str
    images: list[Path]
    label: Path | None = None
    series: tuple[str, ...] = ()


def discover(src: str | os.PathLike[str], include_test: bool = False) -> list[Case]:
    """Cases of ``src`` (nnU-Net v2 folder, plain folder of NIfTI, or manifest file), sorted by id."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(2, "no such file or directory", str(src))
    if src.is_file():
        cases = _from_manifest(src)
    elif (src / "dataset.json").exists():
        cases = _from_nnunet(src, include_test)
    else:
        cases = _from_folder(src)
    if not cases:
        found = " and ".join(f"no {r.name} cases ({r.plural})" for r in READERS)
        raise InputError(f"{src}: {found} found")
    # case ids become file names in caches, predictions, reports: one gate (hiend_data.naming)
    source = src / "dataset.json" if (src.is_dir() and (src / "dataset.json").exists()) else src
    for c in cases:
        safe_case_name(c.case_id, source)
    check_unique([c.case_id for c in cases], source)
    seen: dict[str, Case] = {}
    for c in cases:  # two sources of one folder naming one case (x.nii.gz beside x_0000.nii.gz)
        if c.case_id in seen:
            raise InputError(
                f"{c.images[0]} and {seen[c.case_id].images[0]}: both give case id {c.case_id!r} (in {src})"
            )
        seen[c.case_id] = c
    return sorted(cases, key=lambda c: c.case_id)


# ------------------------------------------------------------------------------------------ nnU-Net


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` resolved; InputError when it leaves ``root``."""
    path = (root / rel).resolve()
    base = root.resolve()
    if path != base and base not in path.parents:
        raise InputError(f"{root / 'dataset.json'}: {what} {rel!r} points outside the dataset folder")
    return path


def _read_dataset_json(root: Path) -> dict:
    return read_json(root / "dataset.json", expect=dict)


def _from_nnunet(root: Path, include_test: bool) -> list[Case]:
    meta = _read_dataset_json(root)
    djson = root / "dataset.json"
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or ending not in IMAGE_SUFFIXES:
        raise InputError(
            f"{djson}: file_ending {ending!r} is not supported (use {' or '.join(IMAGE_SUFFIXES)})"
        )
    names = meta.get("channel_names", meta.get("modality", {"0": "CT"}))
    if not isinstance(names, dict) or not names:
        raise InputError(f'{djson}: channel_names must be an object like {{"0": "CT"}}')
    n_chan = len(names)

    if isinstance(meta.get("dataset"), dict):  # explicit case -> files mapping (nnU-Net v2)
        cases = []
        for cid, entry in meta["dataset"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("images"), list):
                raise InputError(f"{djson}: dataset entry {cid!r} needs an 'images' list")
            images = [_inside(root, str(p), "image") for p in entry["images"]]
            label = _inside(root, str(entry["label"]), "label") if entry.get("label") else None
            cases.append(Case(str(cid), images, label))
        return _check_exist(cases)
    if isinstance(meta.get("training"), list):  # nnU-Net v1 style
        cases = []
        for entry in meta["training"]:
            image = _inside(root, str(entry.get("image", "")), "image")
            label = _inside(root, str(entry["label"]), "label") if entry.get("label") else None
            cid = case_name(image.name)
            if cid is None:
                raise InputError(
                    f"{djson}: training image {str(entry.get('image'))!r} is not a NIfTI file name "
                    "(.nii / .nii.gz)"
                )
            files = [channel_file(image.parent, cid, c, ending) for c in range(n_chan)]
            if not files[0].exists() and image.exists():
                files = [image]
            cases.append(Case(cid, files, label))
        return _check_exist(cases)

    cases = _scan_channels(root / "imagesTr", ending, n_chan, djson)
    if not (root / "labelsTr").is_dir():  # an unlabelled pool in nnU-Net layout
        cases = list(cases)
        if include_test and (root / "imagesTs").is_dir():
            cases += _scan_channels(root / "imagesTs", ending, n_chan, djson)
        return cases
    labelled = []
    for case in cases:
        label = root / "labelsTr" / f"{case.case_id}{ending}"
        if not label.exists():
            raise InputError(f"{label}: label file missing for training case {case.case_id!r}")
        _inside(root, str(label.relative_to(root)), "label")
        labelled.append(Case(case.case_id, case.images, label))
    if include_test and (root / "imagesTs").is_dir():
        labelled += _scan_channels(root / "imagesTs", ending, n_chan, djson)
    return labelled


def _scan_channels(folder: Path, ending: str, n_chan: int, djson: Path) -> list[Case]:
    """Cases of an nnU-Net images folder: every ``{case}_{XXXX}{ending}`` file, ``n_chan`` channels per case.

    A file without the channel suffix, or a case whose channels are not exactly ``0 .. n_chan - 1``, is an
    :class:`InputError` (a missing channel names the first missing file).
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: missing (an nnU-Net v2 dataset needs imagesTr/ beside dataset.json)")
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in sorted(folder.iterdir()):
        if image_suffix(f) != ending or f.name.startswith("."):
            continue
        _inside(djson.parent, str(f.relative_to(djson.parent)), "image")  # a symlink out is refused
        split = split_channel(strip_suffix(f) or "")
        if split is None:
            raise InputError(f"{f}: not named {{case}}_XXXX{ending} (nnU-Net channel suffix missing)")
        groups[split[0]][split[1]] = f
    cases = []
    for cid, chans in groups.items():
        if sorted(chans) != list(range(n_chan)):
            missing = [c for c in range(n_chan) if c not in chans]
            where = (
                f"{channel_file(folder, cid, missing[0], ending)}: channel file missing; "
                if missing
                else f"{folder}: "
            )
            raise InputError(
                f"{where}case {cid!r} has channels {sorted(chans)}, dataset.json names {n_chan} ({djson})"
            )
        cases.append(Case(cid, [chans[c] for c in range(n_chan)]))
    return cases


def _check_exist(cases: list[Case]) -> list[Case]:
    for case in cases:
        for f in [*case.images, *([case.label] if case.label else [])]:
            if not f.exists():
                raise FileNotFoundError(2, "no such file", str(f))
    return cases


# ---------------------------------------------------------------------------------- folder, manifest


def unique_ids(keys: list[tuple[Path, str]], root: Path) -> list[str]:
    """Case ids from ``(folder relative to root, case name)``: the name, prefixed by parent folders
    (``a__b__name``) only where names collide. Names that still collide with every parent folder
    prefixed (two sources in one folder naming one case: ``x.nii.gz`` beside ``x_0000.nii.gz``) are
    returned as they are, for the caller to refuse naming both files."""
    paths = [parent for parent, _name in keys]
    stems = [name for _parent, name in keys]
    ids = list(stems)
    for depth in range(1, max((len(p.parts) for p in paths), default=0) + 1):
        seen: dict[str, int] = defaultdict(int)
        for i in ids:
            seen[i] += 1
        clash = [k for k, i in enumerate(ids) if seen[i] > 1]
        if not clash:
            break
        for k in clash:
            ids[k] = "__".join([*paths[k].parts[-depth:], stems[k]]).replace(os.sep, "__")
    return ids


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def folder_scans(root: str | os.PathLike[str], recursive: bool = True) -> list[ChannelGroup]:
    """The scans of a folder: **one rule for ``hiend-data preprocess`` (discovery) and ``hiend-model
    predict``** (:func:`collect_cases`), whatever mix of formats the folder holds:

    * its image files (``.nii`` / ``.nii.gz``) grouped into cases by
      :func:`hiend_data.naming.group_channels` (``{case}_0000``, ``{case}_0001``, ... in one folder are
      one case); at any depth with ``recursive`` (discovery), else the folder's own files only
      (``predict``: a folder of scans, its subfolders being e.g. earlier outputs);
    * **and** every DICOM series below it, at any depth (:func:`hiend_data.naming.dicom_folders`: each
      folder directly holding DICOM files one scan named by the folder, each ``.zip`` of a series one
      named by the file without ``.zip``).

    A folder holding NIfTI files and a DICOM series gives both. Hidden files and folders (``.*``) are
    skipped. Names are made unique by :func:`unique_ids` (parent folders prefixed where names collide,
    ``patient1__CT``); two sources of one folder naming one case keep their name, for the caller to
    refuse. Order: the image cases (order of their files), then the series (sorted)."""
    root = Path(root)
    if recursive:
        candidates = (p for p in root.rglob("*") if _visible(p, root))
    else:
        candidates = (p for p in root.iterdir() if not p.name.startswith("."))
    files = sorted(p for p in candidates if p.is_file() and is_image(p))
    maps = [p for p in files if looks_like_label_map(p)]
    if maps:
        files = [p for p in files if p not in maps]
        shown_names = ", ".join(p.name for p in maps[:3]) + (", ..." if len(maps) > 3 else "")
        print(
            f"warning: {shown(str(root))}: left out {len(maps)} label map(s) by name ({shown(shown_names)}); "
            "a labelled dataset goes in nnU-Net layout (imagesTr/ + labelsTr/) or a manifest with its labels",
            file=sys.stderr,
        )
    groups = group_channels(files)  # gaps in a channel set raise InputError naming the missing file
    keys = [(g.files[0].parent.relative_to(root), g.name) for g in groups]
    sources = [g.files for g in groups]
    for folder in dicom_folders(root, skip=files):
        keys.append((folder.relative_to(root).parent, dicom_case_name(folder)))
        sources.append((folder,))
    ids = unique_ids(keys, root)
    return [ChannelGroup(i, f) for i, f in zip(ids, sources, strict=True)]


#: name endings of label maps kept beside their scans (``ct_seg.nii.gz``, TotalSegmentator's and
#: many exports' convention): never taken as scans by :func:`folder_scans`
LABEL_MAP_ENDINGS = ("_seg", "_segmentation", "_label", "_labels", "_mask")


def looks_like_label_map(path: Path) -> bool:
    """Is ``path`` named like a label map (``x_seg.nii.gz``, ``x_label.nii``, ... :data:`LABEL_MAP_ENDINGS`)?"""
    stem = strip_suffix(path.name)
    return stem is not None and stem.lower().endswith(LABEL_MAP_ENDINGS)


def _from_folder(root: Path) -> list[Case]:
    """Cases of a plain folder (recursive): :func:`folder_scans`."""
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        raise InputError(
            f"{root}: looks like an nnU-Net dataset (imagesTr/, labelsTr/) but has no dataset.json"
        )
    return [Case(g.name, list(g.files)) for g in folder_scans(root, recursive=True)]


def collect_cases(inputs: Sequence[str | os.PathLike[str]]) -> list[ChannelGroup]:
    """The scans named by files and folders on a command line (``hiend-model predict``), each a
    :class:`~hiend_data.naming.ChannelGroup` (its name: the output's, ``{name}.nii.gz``; its files in
    channel order).

    * a folder: :func:`folder_scans` without recursion for image files: its own ``.nii`` / ``.nii.gz``
      files and every DICOM series below it (the one rule discovery uses);
    * a file: read by its reader (:func:`hiend_data.readers.find_reader`): an image file (channel files
      given one by one are grouped, :func:`hiend_data.naming.group_channels`), or a ``.zip`` of a DICOM
      series or a multi-frame DICOM file, one scan named by its file name without the suffix.

    The same file named twice (alone and through its folder) counts once. Raises InputError for a
    missing path, a file no reader takes, a folder holding no scan, channels with gaps, names that are
    not one plain file name, and two scans that would be written to the same output name.
    """
    if not inputs:
        raise InputError("no input scans given")
    scans: list[ChannelGroup] = []
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = folder_scans(path, recursive=False)
            if not found:
                raise InputError(f"{path}: folder holds no {' and no '.join(r.plural for r in READERS)}")
            scans += found
        elif path.is_file():
            reader = find_reader(path)
            if reader is None:
                raise InputError(no_reader_message(path))
            if reader.channel_files:
                files.append(path)
            else:
                scans.append(ChannelGroup(case_name_of(path, reader), (path,)))
        else:
            raise InputError(f"{path}: no such file or folder")
    known = {f for scan in scans for f in scan.files}
    scans += [g for g in group_channels(files) if not set(g.files) <= known]
    for scan in scans:  # output names come from input file names: one plain file name each
        safe_case_name(scan.name, scan.files[0])
    check_unique([scan.name for scan in scans], "the inputs' output names")
    seen: dict[str, ChannelGroup] = {}
    for scan in scans:
        if scan.name in seen:
            raise InputError(
                f"{scan.files[0]} and {seen[scan.name].files[0]} would both be written as "
                f"{scan.name}.nii.gz: segment them into different output folders"
            )
        seen[scan.name] = scan
    return scans


def _from_manifest(path: Path) -> list[Case]:
    if is_image(path):
        raise InputError(f"{path}: a single NIfTI file is not a dataset (give its folder or a manifest)")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: manifest is not a text file") from None
    base = path.parent
    images, labels = [], []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = [f.strip() for f in re.split(r"[,\t]", text)]
        if len(fields) > 2 or not fields[0]:
            raise InputError(f"{path}:{n}: expected 'image[,label]', got {text!r}")
        image = base / fields[0]
        label = base / fields[1] if len(fields) == 2 and fields[1] else None
        for f in [image, *([label] if label else [])]:
            if find_reader(f) is None:  # the table of hiend_data.readers: no guess
                raise InputError(
                    f"{path}:{n}: {f.name!r} is not {' nor '.join(r.what for r in READERS)}: no reader for it"
                )
            if f is label and f.is_dir():
                raise InputError(f"{path}:{n}: label {f.name!r} is a folder; a label map is one file")
            if not f.exists():
                raise InputError(f"{path}:{n}: {f} does not exist")
        images.append(image)
        labels.append(label)
    rel = [Path(os.path.relpath(p, base)) for p in images]
    ids = unique_ids(
        [(r.parent, case_name(r.name) or dicom_case_name(im)) for r, im in zip(rel, images, strict=True)],
        path,
    )
    return [Case(i, [im], lab) for i, im, lab in zip(ids, images, labels, strict=True)]


# ------------------------------------------------------------------------------------------ splits


def split(cases: list[Case], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """Seeded train/validation split: ``round(n * val_fraction)`` cases (at least 1 when n > 1) to val.

    Depends only on the case ids and the seed, not on the order of ``cases``.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction {val_fraction} must be in [0, 1)")
    order = _shuffled(cases, seed)
    n_val = int(round(len(order) * val_fraction))
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    return sorted(order[n_val:], key=_key), sorted(order[:n_val], key=_key)


def kfold(cases: list[Case], k: int = 5, seed: int = 0) -> list[tuple[list[Case], list[Case]]]:
    """``k`` seeded folds ``(train, val)``; every case is in exactly one val set (sizes differ by <= 1)."""
    if k < 2 or k > len(cases):
        raise InputError(f"k={k} folds need 2 <= k <= number of cases ({len(cases)})")
    order = _shuffled(cases, seed)
    folds = [order[i::k] for i in range(k)]
    return [
        (sorted([c for j, f in enumerate(folds) if j != i for c in f], key=_key), sorted(folds[i], key=_key))
        for i in range(k)
    ]


def _key(case: Case) -> str:
    return case.case_id


def _shuffled(cases: list[Case], seed: int) -> list[Case]:
    ordered = sorted(cases, key=_key)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]
