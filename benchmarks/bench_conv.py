"""The transposed-convolution suite (``python -m tconv3d.bench``), with its results kept here.

Run:  python benchmarks/bench_conv.py   (writes benchmarks/results.json and ratios.png)
Any option of ``python -m tconv3d.bench`` may be added, e.g. ``--threads 2 --dtypes float32``.
"""
import os
import sys

from tconv3d.bench import main

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    main(sys.argv[1:] + ["--json", os.path.join(HERE, "results.json"),
                         "--plot", os.path.join(HERE, "ratios.png")])
