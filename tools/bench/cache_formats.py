"""Cache image formats side by side: float32 vs uint8 vs int16 ``.npy`` memory maps vs blosc2, warm and cold.

One process, one thread (``OMP_NUM_THREADS=1``, blosc2 ``nthreads=1``). Two volumes, each through
``preprocess_dataset`` with the paper's plan and ``cache_dtype`` float32 / uint8 / int16:

* ``big``: a 256 x 256 x 240 CT-like phantom at 1.5 mm (hiend_data.phantom; about the size of an
  abdominal CT at 1.5 mm: 63 MB as float32, the issue's 600 GB per 10,000 scans);
* ``abdomen``: the real ``../shared/data/ct/abdomen_ct_1.5mm_lps.nii.gz`` (120 x 126 x 164 after
  preprocessing).

blosc2 (``--no-blosc2`` to skip): the uint8 cache's codes written with ``blosc2.asarray``, chunks the
size of a crop (1 x 96^3) and blocks of 1 x 32 x 32 x 16 (16 KB: nnU-Net's rule, a block within L1),
two codecs: ZSTD level 8 (nnU-Net v2's setting) and LZ4 level 5 (faster to decode); read with
``blosc2.open(..., mmap_mode="r")``.

Two measurements, each crop a contiguous float32 ``[1, 96, 96, 96]`` with the pre-training recipe's
augmentation (flips, rot90, scale, shift), decoded to [0, 1] in the same copy:

* ``read``: the same planned crops for every format (``CropSampler.plan`` on the float32 cache; the
  draw does not depend on the dtype), copied out by ``CropSampler.fill`` (memory maps) or by slicing
  the blosc2 array then the same fused copy (``copy_view``) from the decompressed block;
* ``sampler``: ``CropSampler.sample_batch`` (centres drawn by rejection from the stored image, then the
  copy), what ``hiend-data bench`` measures; memory maps only (rejection sampling reads single voxels).

Warm: files in the page cache, maps open. Cold: before every visit to a volume (one batch of 8 crops, as
training visits a scan of a pool far larger than the page cache), the maps are closed and the image
file is evicted with ``os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``; bytes read are
``read_bytes`` of ``/proc/self/io`` (what came from the disk, kernel read-ahead included). Also
computed from the layout: the 4 KiB pages a crop touches (``.npy``) or the compressed chunks it
overlaps (blosc2). Each (measurement, format) runs ``--rounds`` interleaved rounds of ``--seconds``
(the format order rotated each round); medians are reported, per wall-clock second and per CPU second
of this process, with ratios to float32.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/cache_formats.py [--seconds 1.5] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from hiend_data import Plan, Volume, save_volume  # noqa: E402
from hiend_data.augment import view_plan  # noqa: E402
from hiend_data.cache import Cache, preprocess_dataset  # noqa: E402
from hiend_data.discovery import Case  # noqa: E402
from hiend_data.phantom import make_phantom  # noqa: E402
from hiend_data.sampling import CropSampler, SamplerConfig  # noqa: E402
from hiend_data.sampling.buffers import BufferPool  # noqa: E402
from hiend_data.sampling.crops import copy_view  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "ct" / "abdomen_ct_1.5mm_lps.nii.gz"
PAGE = 4096
CHUNKS = (1, 96, 96, 96)
BLOCKS = (1, 32, 32, 16)
NPY_DTYPES = ("float32", "uint8", "int16")


def read_bytes() -> int:
    """Bytes this process has caused to be fetched from storage (``/proc/self/io``)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (they must not be mapped any more)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def raw_inputs(folder: Path) -> list[Case]:
    """The two benchmark volumes as NIfTI cases (``big`` written here, ``abdomen`` the real scan)."""
    ph = make_phantom(
        np.random.default_rng(0), shape=(256, 256, 240), spacing=(1.5, 1.5, 1.5), orientation=("R", "A", "S")
    )
    hu = ph.hu.copy()
    hu[0, 0, 0] = hu[-1, -1, -1] = 40  # the foreground crop keeps the whole grid
    big = save_volume(folder / "raw" / "big_0000.nii.gz", hu, like=Volume(array=hu, affine=ph.affine))
    return [Case("big", [big]), Case("abdomen", [REAL])]


class NpyFormat:
    """A cache folder of one ``cache_dtype``, read through memory maps by a ``CropSampler``."""

    def __init__(self, root: Path, cfg: SamplerConfig) -> None:
        self.root = root
        self.cache = Cache.open(root)
        self.sampler = CropSampler(self.cache, cfg, seed=0)

    def path(self, name: str) -> Path:
        return self.root / "cases" / f"{name}.npy"

    def drop(self) -> None:
        # close every memory map (the sampler's opened cases and the cache's) so the pages can go
        self.sampler._opened.clear()
        self.cache._open.clear()

    def fill(self, name: str, planned: list) -> None:
        self.sampler.fill(name, planned)

    def sample(self, name: str, rng: np.random.Generator) -> None:
        self.sampler.sample_batch(name, rng)

    def bytes_per_crop(self, name: str, planned: list) -> float:
        """Mean bytes of the 4 KiB pages each crop's rows cover in the ``.npy`` file."""
        arr = np.load(self.path(name), mmap_mode="r")
        offset, item = arr.offset, arr.itemsize
        _, nx, ny, nz = arr.shape
        del arr
        total = 0
        for crop in planned:
            sx, sy, sz = crop.source
            xs, ys = np.meshgrid(np.arange(sx.start, sx.stop), np.arange(sy.start, sy.stop), indexing="ij")
            start = offset + ((xs.ravel() * ny + ys.ravel()) * nz + sz.start) * item
            first, last = start // PAGE, (start + (sz.stop - sz.start) * item - 1) // PAGE
            span = int((last - first).max())
            pages = np.concatenate([(first + k)[first + k <= last] for k in range(span + 1)])
            total += np.unique(pages).size * PAGE
        return total / len(planned)


class Blosc2Format:
    """The uint8 codes in blosc2 files (chunks of a crop's size), sliced then copied like the sampler."""

    def __init__(
        self, folder: Path, codes: dict[str, np.ndarray], scale: float, codec: str, level: int
    ) -> None:
        import blosc2

        blosc2.set_nthreads(1)
        self.blosc2 = blosc2
        self.folder = folder
        self.scale = scale
        self.open_arrays: dict[str, Any] = {}
        self.pool = BufferPool(4)
        folder.mkdir(parents=True, exist_ok=True)
        cparams = {"codec": getattr(blosc2.Codec, codec), "clevel": level, "nthreads": 1}
        for name, arr in codes.items():
            blosc2.asarray(
                np.ascontiguousarray(arr),
                urlpath=str(self.path(name)),
                mode="w",
                chunks=CHUNKS,
                blocks=BLOCKS,
                cparams=cparams,
            )
            fd = os.open(self.path(name), os.O_RDONLY)
            os.fsync(fd)  # clean pages: eviction works
            os.close(fd)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.b2nd"

    def array(self, name: str) -> Any:
        arr = self.open_arrays.get(name)
        if arr is None:
            arr = self.blosc2.open(str(self.path(name)), mode="r", mmap_mode="r", dparams={"nthreads": 1})
            self.open_arrays[name] = arr
        return arr

    def drop(self) -> None:
        self.open_arrays.clear()

    def fill(self, name: str, planned: list) -> None:
        arr = self.array(name)
        out = self.pool.get((len(planned), 1, 96, 96, 96), np.dtype(np.float32))
        for i, crop in enumerate(planned):
            assert not crop.padded
            block = arr[(slice(None), *crop.source)]  # decompressed uint8 [1, 96, 96, 96]
            full = tuple(slice(0, n) for n in block.shape[1:])
            rev, swap = view_plan(crop.aug)
            copy_view(block, out[i], full, rev, swap, crop.aug, True, True, self.scale)

    def bytes_per_crop(self, name: str, planned: list) -> float:
        """Mean compressed bytes of the chunks each crop overlaps."""
        arr = self.array(name)
        grid = [-(-s // c) for s, c in zip(arr.shape, CHUNKS, strict=True)]
        sizes = np.array([len(arr.schunk.get_chunk(i)) for i in range(arr.schunk.nchunks)])
        self.drop()
        total = 0
        for crop in planned:
            ranges = [
                range(sl.start // c, (sl.stop - 1) // c + 1)
                for sl, c in zip(crop.source, CHUNKS[1:], strict=True)
            ]
            idx = [
                np.ravel_multi_index((0, a, b, c), grid)
                for a in ranges[0]
                for b in ranges[1]
                for c in ranges[2]
            ]
            total += int(sizes[idx].sum())
        return total / len(planned)


def run(fmt: Any, kind: str, name: str, batches: list, cold: bool, seconds: float) -> dict[str, float]:
    """Visit ``name`` batch after batch for about ``seconds``: crops/s (wall, CPU) and bytes read."""
    if not cold and kind == "read":  # warm-up: pages in the page cache, maps open
        fmt.fill(name, batches[0][1])
    elif not cold:
        fmt.sample(name, fmt.sampler.rng(*batches[0][0]))
    crops = visits = 0
    r0, t0, c0 = read_bytes(), time.perf_counter(), time.process_time()
    while True:
        rng_key, planned = batches[visits % len(batches)]
        if cold:
            fmt.drop()
            evict(fmt.path(name))
        if kind == "read":
            fmt.fill(name, planned)
        else:
            fmt.sample(name, fmt.sampler.rng(*rng_key))
        crops += len(planned)
        visits += 1
        if (wall := time.perf_counter() - t0) >= seconds:
            break
    cpu = time.process_time() - c0
    return {"wall": crops / wall, "cpu": crops / cpu, "read_per_crop": (read_bytes() - r0) / crops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-blosc2", action="store_true")
    args = ap.parse_args()

    cfg = SamplerConfig.pretrain()
    out: dict[str, Any] = {
        "bench": "cache_formats",
        "threads": 1,
        "seconds": args.seconds,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = raw_inputs(folder)
        formats: dict[str, Any] = {}
        for dtype in NPY_DTYPES:
            preprocess_dataset(
                cases,
                folder / dtype,
                Plan(cache_dtype=dtype),
                workers=0,
                progress=False,
            )
            formats[dtype] = NpyFormat(folder / dtype, cfg)
        names = [c.case_id for c in cases]
        if not args.no_blosc2:
            u8 = formats["uint8"].cache
            codes = {n: np.asarray(u8.case(n).stored) for n in names}
            scale = u8.case(names[0]).image_scale
            formats["blosc2-zstd8"] = Blosc2Format(folder / "b2zstd", codes, scale, "ZSTD", 8)
            formats["blosc2-lz4-5"] = Blosc2Format(folder / "b2lz4", codes, scale, "LZ4", 5)
            del codes
        # the same 32 batches of planned crops for every format, drawn on the float32 cache
        ref = formats["float32"].sampler
        plans = {n: [((v,), ref.plan(n, ref.rng(v))) for v in range(32)] for n in names}
        for dtype in NPY_DTYPES[1:]:  # the draw does not depend on the dtype
            s = formats[dtype].sampler
            assert all(
                [c.source for c in s.plan(n, s.rng(*k))] == [c.source for c in p]
                for n in names
                for k, p in plans[n][:4]
            )
        volumes: dict[str, Any] = {}
        for name in names:
            shape = list(formats["float32"].cache.case(name).shape)
            voxels = int(np.prod(shape))
            info: dict[str, Any] = {"shape": shape, "formats": {}}
            for key, fmt in formats.items():
                size = fmt.path(name).stat().st_size
                info["formats"][key] = {
                    "file_mb": round(size / 1e6, 2),
                    "bytes_per_voxel": round(size / voxels, 3),
                    "layout_bytes_per_crop_mb": round(
                        fmt.bytes_per_crop(name, [c for _, p in plans[name] for c in p]) / 1e6, 3
                    ),
                }
            runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
            keys = list(formats)
            for r in range(args.rounds):
                order = keys[r % len(keys) :] + keys[: r % len(keys)]
                for temp in ("warm", "cold"):
                    for kind in ("read", "sampler"):
                        for key in order:
                            if kind == "sampler" and key not in NPY_DTYPES:
                                continue
                            res = run(formats[key], kind, name, plans[name], temp == "cold", args.seconds)
                            runs.setdefault((kind, temp, key), []).append(res)
                            formats[key].drop()
            table = {}
            for (kind, temp, key), rs in runs.items():
                med = {m: statistics.median(x[m] for x in rs) for m in ("wall", "cpu", "read_per_crop")}
                base = runs[(kind, temp, "float32")]
                b_wall = statistics.median(x["wall"] for x in base)
                b_cpu = statistics.median(x["cpu"] for x in base)
                table[f"{kind}/{temp}/{key}"] = {
                    "crops_per_s": round(med["wall"], 1),
                    "cpu_crops_per_s": round(med["cpu"], 1),
                    "ratio": round(med["wall"] / b_wall, 2),
                    "cpu_ratio": round(med["cpu"] / b_cpu, 2),
                    "read_mb_per_crop": round(med["read_per_crop"] / 1e6, 3),
                }
                print(name, f"{kind}/{temp}/{key}", table[f"{kind}/{temp}/{key}"], flush=True)
            info["runs"] = table
            volumes[name] = info
            print(name, json.dumps(info["formats"]), flush=True)
        out["volumes"] = volumes
        for fmt in formats.values():
            fmt.drop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
