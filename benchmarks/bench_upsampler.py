"""Trilinear x2 upsampling of 8 volumes of 64^3 float32: VolumeUpsampler vs PyTorch vs SciPy.

``VolumeUpsampler(factor=2).transform`` (one compiled transposed convolution) against
``torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`` on the same data
with the same thread count (``torch.set_num_threads``), and ``scipy.ndimage.zoom(order=1,
grid_mode=True, mode="nearest")`` (the same numbers, single-threaded: SciPy has no thread
option). The three results are checked to agree before timing. Each time is the median of
``--repeats`` runs after ``--warmup`` runs, the methods interleaved so that a change of
machine load affects them alike.

Run:  python benchmarks/bench_upsampler.py [--threads N] [--repeats 7] [--zoom-repeats 5]
"""
import argparse
import os
import statistics
import time

import numpy as np
from scipy import ndimage

import tconv3d
from tconv3d.upsampling import VolumeUpsampler

SHAPE = (8, 64, 64, 64)
FACTOR = 2


def _median_ms(functions, warmup, repeats):
    """Median wall time in ms of each function, runs interleaved across functions."""
    for _ in range(warmup):
        for f in functions:
            f()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for f, t in zip(functions, times):
            start = time.perf_counter()
            f()
            t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--zoom-repeats", type=int, default=5,
                        help="runs of scipy.ndimage.zoom, the slow one (default: 5)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if min(args.repeats, args.zoom_repeats) < 5:
        parser.error("--repeats and --zoom-repeats must be >= 5")

    X = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    up = VolumeUpsampler(factor=FACTOR, num_threads=args.threads).fit(X)
    functions = {"tconv3d VolumeUpsampler": lambda: up.transform(X)}
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed: its row is skipped.")
    else:
        torch.set_num_threads(args.threads)
        Xt = torch.from_numpy(X)[:, None]

        def interpolate():
            with torch.inference_mode():
                return torch.nn.functional.interpolate(
                    Xt, scale_factor=FACTOR, mode="trilinear", align_corners=False)[:, 0]
        functions["torch interpolate"] = interpolate

    def zoom():
        return np.stack([ndimage.zoom(v, FACTOR, order=1, grid_mode=True, mode="nearest")
                         for v in X])

    ours = up.transform(X)
    for name, function in list(functions.items())[1:] + [("zoom", zoom)]:
        theirs = np.asarray(function())
        diff = np.abs(theirs - ours).max()
        assert diff < 1e-5, f"{name} differs from VolumeUpsampler by {diff}"

    print(f"{SHAPE[0]} volumes {SHAPE[1:]} float32, x{FACTOR} trilinear; tconv3d "
          f"{tconv3d.__version__}" + (f", torch {torch.__version__}" if torch else "")
          + f"; {args.threads} threads; median of {args.repeats} runs "
          f"({args.zoom_repeats} for zoom) after {args.warmup} warm-up runs")
    tconv3d.show_config()
    times = dict(zip(functions, _median_ms(list(functions.values()), args.warmup,
                                           args.repeats)))
    (times["scipy.ndimage.zoom order 1 (1 thread)"],) = _median_ms([zoom], 1,
                                                                    args.zoom_repeats)
    header = f"{'method':<40} {'ms':>9} {'time / VolumeUpsampler time':>28}"
    print()
    print(header)
    print("-" * len(header))
    ours_ms = times["tconv3d VolumeUpsampler"]
    for name, ms in times.items():
        print(f"{name:<40} {ms:9.1f} {ms / ours_ms:27.2f}x")


if __name__ == "__main__":
    main()
