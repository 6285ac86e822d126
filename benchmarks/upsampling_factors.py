"""VolumeUpsampler (nearest, trilinear) against torch.nn.functional.interpolate, float32.

    python benchmarks/upsampling_factors.py --threads 2

Median of ``--repeat`` runs after a warm-up, same data and thread count for both; cases
whose output exceeds ``--max-out`` voxels are skipped. Prints a Markdown table.
"""
import argparse
import time

import numpy as np
import torch

from tconv3d.upsampling import VolumeUpsampler


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-out", type=float, default=2**27, help="largest output, voxels")
    p.add_argument("--modes", default="trilinear,nearest")
    p.add_argument("--factors", default="2,4,8,16,32,64")
    p.add_argument("--sizes", default="2,16,32")
    p.add_argument("--batches", default="1,8")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| kernel | volume | batch | factor | output | tconv3d ms | torch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for mode in args.modes.split(","):
        extra = {"align_corners": False} if mode == "trilinear" else {}
        for n in map(int, args.sizes.split(",")):
            for b in map(int, args.batches.split(",")):
                for f in map(int, args.factors.split(",")):
                    if b * (n * f) ** 3 > args.max_out or (n < 16 and f < 64):
                        continue
                    x = rng.standard_normal((b, n, n, n)).astype(np.float32)
                    up = VolumeUpsampler(factor=f, kernel=mode,
                                         num_threads=args.threads).fit(x[:1])
                    t = torch.from_numpy(x)[:, None]
                    mine = median_ms(lambda: up.transform(x), args.repeat)
                    theirs = median_ms(lambda: torch.nn.functional.interpolate(
                        t, scale_factor=f, mode=mode, **extra), args.repeat)
                    print(f"| {mode} | {n}^3 | {b} | {f} | {n * f}^3 | {mine:.2f} | "
                          f"{theirs:.2f} | {mine / theirs:.2f} |", flush=True)


if __name__ == "__main__":
    main()
