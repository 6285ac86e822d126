"""x2 trilinear upsampling of 8 volumes 64^3 float32: VolumeUpsampler vs PyTorch vs SciPy.

The comparison lives in the package (``tconv3d.bench.run_upsampler``, also run by
``python -m tconv3d.bench``); this script runs it alone.

Run:  python benchmarks/bench_upsampler.py [--threads 2 1] [--repeat 7]
"""
import argparse

from tconv3d.bench import run_upsampler

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for threads in args.threads:
        run_upsampler(threads, args.repeat)
