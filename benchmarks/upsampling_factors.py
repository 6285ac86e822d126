"""Upsampling factor sweep: VolumeUpsampler (nearest, trilinear) vs torch interpolate.

The sweep lives in the package (``tconv3d.bench.run_factor_sweep``, also run by
``python -m tconv3d.bench``); this script runs it alone. Every factor (2 to 64) writes a
192^3 float32 volume from an input of 192/factor voxels per side.

Run:  python benchmarks/upsampling_factors.py [--threads 2 1] [--repeat 5]
"""
import argparse

from tconv3d.bench import run_factor_sweep

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for threads in args.threads:
        run_factor_sweep(threads, repeat=args.repeat)
