"""Upsample a volume larger than a worker's memory, chunk by chunk, with Dask
==========================================================================

The input is a ``.npy`` file (or a Zarr array) read chunk by chunk; the output is written
into another one chunk by chunk as tasks finish, so no process ever holds more than a few
chunks. The result is bitwise what ``VolumeUpsampler.transform`` gives in memory.

Run (needs ``pip install "tconv3d[dask]"``; Zarr and ``distributed`` are optional)::

    python examples/dask_large_volume.py              # 48^3 -> 96^3 in a few seconds
    python examples/dask_large_volume.py --size 512 512 1024 --chunks 16 128 1024 \\
        --workers 2 --memory-limit 512MiB --dir /tmp/big --check  # 1 GiB in, 8 GiB out

With ``--workers N`` the work runs on a ``distributed.LocalCluster`` of N processes (one
thread each by default, each with ``--memory-limit``), and the peak resident memory of
every worker is reported; without it, on the threaded scheduler of this process. Chunks
spanning whole rows (the last axis) make each read and write a few long runs.

The second command on 2 cores: 58 s (37 Mvoxel/s out, 141 MiB/s written), peak resident
memory 396 and 382 MiB per worker (138 MiB idle), under the 512 MiB limit.
"""
import argparse
import os
import shutil
import tempfile
import time
from itertools import product

import numpy as np

import dask
import dask.array as da
from dask.diagnostics import ProgressBar

import tconv3d.dask
from tconv3d.upsampling import VolumeUpsampler


class NpyFile:
    """A ``.npy`` file read and written in place, chunk by chunk, with positioned reads and
    writes of each chunk's contiguous runs: no memory map, so a task holds only its chunk.

    An array-like for ``da.from_array`` (``__getitem__``) and a target of ``da.store``
    (``__setitem__``); it pickles as its path, so each worker opens the file itself.
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran_order, self.dtype = read_header(f)
            self.offset = f.tell()
        if fortran_order:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        self.ndim = len(self.shape)

    def _runs(self, index):
        """The region ``index`` (slices of step 1) as contiguous runs of the file:
        ``(position of the run in the region, byte offset, element count)``."""
        bounds = [sl.indices(n)[:2] for sl, n in zip(index, self.shape)]
        strides = np.cumprod((1, *self.shape[:0:-1]))[::-1].tolist()  # elements, C order
        k = self.ndim - 1  # axes after k are whole: each run spans them and axis k's range
        while k > 0 and bounds[k] == (0, self.shape[k]):
            k -= 1
        count = (bounds[k][1] - bounds[k][0]) * strides[k]
        for outer in product(*(range(lo, hi) for lo, hi in bounds[:k])):
            first = sum(i * st for i, st in zip(outer, strides)) + bounds[k][0] * strides[k]
            yield (tuple(i - lo for i, (lo, _) in zip(outer, bounds)),
                   self.offset + first * self.dtype.itemsize, count)

    def _index(self, index):
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        if not all(isinstance(i, slice) and i.step in (None, 1) for i in index):
            raise IndexError(f"NpyFile supports slices of step 1, got {index}")
        return index

    def __getitem__(self, index):
        index = self._index(index)
        shape = [len(range(*sl.indices(n))) for sl, n in zip(index, self.shape)]
        out = np.empty(shape, self.dtype)
        if out.size:
            with open(self.path, "rb") as f:
                for position, offset, count in self._runs(index):
                    view = memoryview(out[position].reshape(-1)).cast("B")
                    done = 0
                    while done < len(view):
                        done += os.preadv(f.fileno(), [view[done:]], offset + done)
        return out

    def __setitem__(self, index, value):
        index = self._index(index)
        value = np.ascontiguousarray(value, dtype=self.dtype)
        with open(self.path, "r+b") as f:
            for position, offset, count in self._runs(index):
                view = memoryview(value[position].reshape(-1)).cast("B")
                done = 0
                while done < len(view):
                    done += os.pwrite(f.fileno(), view[done:], offset + done)


def make_input(path, shape, chunks, store, seed=0):
    """A smooth pattern plus noise, float32, written slab by slab (never whole in memory)."""
    if store == "zarr":
        import zarr
        array = zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype="float32")
    else:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        array = NpyFile(path)
    rng = np.random.default_rng(seed)
    slab = max(chunks[0], (64 << 20) // (4 * shape[1] * shape[2]) // chunks[0] * chunks[0])
    h, w = np.ogrid[:shape[1], :shape[2]]
    for z0 in range(0, shape[0], slab):
        z = np.arange(z0, min(shape[0], z0 + slab))[:, None, None]
        values = np.sin(0.05 * z + 0.02 * w) * np.cos(0.03 * h)
        values += 0.1 * rng.standard_normal(values.shape)
        array[z0:z0 + len(z)] = values


def open_input(path, chunks, store):
    if store == "zarr":
        return da.from_zarr(path, chunks=chunks)
    return da.from_array(NpyFile(path), chunks=chunks, asarray=False)


def _gib(nbytes):
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _memory(field):
    """``VmHWM`` (peak) or ``VmRSS`` (current) resident size of this process, bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_memory():
    """Reset this process' peak resident size (Linux >= 4.0); return the current size."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then counts from the process' start
    return _memory("VmRSS")


def _peak_memory():
    return _memory("VmHWM")


def check(in_path, out_path, upsampler, store, boxes=4, seed=1):
    """Compare the result with ``upsampler.transform`` in memory: the whole volume when it
    is small, else random interior boxes (each transformed with a margin wide enough that
    its outputs are interior ones, summed as in the whole volume)."""
    if store == "zarr":
        import zarr
        x, y = (zarr.open_array(p, mode="r") for p in (in_path, out_path))
    else:
        x, y = (np.load(p, mmap_mode="r") for p in (in_path, out_path))
    factor = upsampler.factor_
    if x.nbytes <= 64 << 20:
        expected = upsampler.transform(np.asarray(x)[None])[0]
        return bool(np.array_equal(np.asarray(y), expected))
    rng = np.random.default_rng(seed)
    margin = max(upsampler.kernel_.shape) // min(factor) + 2
    for _ in range(boxes):
        lo = [int(rng.integers(margin, n - 32 - margin)) for n in x.shape]
        sub = x[tuple(slice(a - margin, a + 32 + margin) for a in lo)]
        part = upsampler.transform(np.asarray(sub)[None])[0]
        inner = part[tuple(slice(margin * s, (margin + 32) * s) for s in factor)]
        got = y[tuple(slice(a * s, (a + 32) * s) for a, s in zip(lo, factor))]
        if not np.array_equal(np.asarray(got), inner):
            return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[48],
                        help="input volume: one edge or depth height width (default 48)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16],
                        help="input chunk: one edge or three (default 16)")
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--kernel", default="trilinear", choices=["trilinear", "nearest"])
    parser.add_argument("--store", default="npy", choices=["npy", "zarr"])
    parser.add_argument("--dir", default=None, help="where the stores go (default: a "
                        "temporary directory, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--workers", type=int, default=0,
                        help="LocalCluster worker processes (0: threaded scheduler)")
    parser.add_argument("--threads", type=int, default=1,
                        help="Dask threads per worker (threaded scheduler: in total)")
    parser.add_argument("--omp-threads", type=int, default=1,
                        help="OpenMP threads of the compiled kernel in each task")
    parser.add_argument("--memory-limit", default="1GiB", help="per worker (--workers)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the in-memory transform (spot boxes if large)")
    args = parser.parse_args(argv)
    shape = tuple(args.size * 3 if len(args.size) == 1 else args.size)
    chunks = tuple(args.chunks * 3 if len(args.chunks) == 1 else args.chunks)
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape))

    workdir = args.dir or tempfile.mkdtemp(prefix="tconv3d-dask-")
    os.makedirs(workdir, exist_ok=True)
    suffix = ".zarr" if args.store == "zarr" else ".npy"
    in_path = os.path.join(workdir, "input" + suffix)
    out_path = os.path.join(workdir, "output" + suffix)
    try:
        start = time.perf_counter()
        make_input(in_path, shape, chunks, args.store)
        print(f"input  {shape} float32, {_gib(4 * np.prod(shape, dtype=float))}, written "
              f"to {in_path} in {time.perf_counter() - start:.1f} s")

        X = open_input(in_path, chunks, args.store)[None]   # one sample: (1, d, h, w)
        upsampler = VolumeUpsampler(factor=args.factor, kernel=args.kernel)
        upsampler.fit(np.zeros((1, 2, 2, 2), np.float32))   # a fixed kernel: nothing to learn
        Y = tconv3d.dask.upsample(upsampler, X, num_threads=args.omp_threads)[0]
        if args.store == "zarr":
            job = da.to_zarr(Y, out_path, compute=False, overwrite=True)
        else:
            np.lib.format.open_memmap(out_path, mode="w+", dtype=Y.dtype, shape=Y.shape)
            job = da.store(Y, NpyFile(out_path), lock=False, compute=False)
        print(f"output {Y.shape} float32, {_gib(Y.nbytes)}, to {out_path}; input chunks "
              f"{chunks}, output chunks {Y.chunksize}, {Y.npartitions} tasks")

        peaks = {}
        if args.workers:
            from distributed import Client, LocalCluster, progress
            with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                              processes=True, host="127.0.0.1", dashboard_address=None,
                              memory_limit=args.memory_limit) as cluster, \
                    Client(cluster) as client:
                print(f"{args.workers} workers x {args.threads} threads, memory limit "
                      f"{args.memory_limit} each")
                idle = client.run(_reset_peak_memory)
                start = time.perf_counter()
                future = client.compute(job)
                progress(future)
                future.result()
                elapsed = time.perf_counter() - start
                peaks = client.run(_peak_memory)
        else:
            print(f"threaded scheduler, {args.threads} threads")
            idle = {"this process": _reset_peak_memory()}
            start = time.perf_counter()
            with ProgressBar():
                dask.compute(job, scheduler="threads", num_workers=args.threads)
            elapsed = time.perf_counter() - start
            peaks = {"this process": _peak_memory()}

        voxels = np.prod(Y.shape, dtype=float)
        print(f"\nupsampled in {elapsed:.1f} s: {voxels / elapsed / 1e6:.1f} Mvoxel/s out, "
              f"{Y.nbytes / elapsed / 2**20:.0f} MiB/s written, "
              f"{X.nbytes / elapsed / 2**20:.0f} MiB/s read")
        for name, peak in peaks.items():
            if peak is not None:
                print(f"peak resident memory of {name}: {_gib(peak)} "
                      f"({_gib(idle[name])} before the run)")
        result = dict(shape=Y.shape, seconds=elapsed, peaks=peaks, idle=idle)
        if args.check:
            result["equal"] = check(in_path, out_path, upsampler, args.store)
            print(f"equal to the in-memory transform: {result['equal']}")
        return result
    finally:
        if not args.keep:
            if args.dir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for path in (in_path, out_path):
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    elif os.path.exists(path):
                        os.remove(path)


if __name__ == "__main__":
    main()
