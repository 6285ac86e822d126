"""Forward time of a small 3D U-Net decoder on CPU, PyTorch's ConvTranspose3d vs tconv3d's.

The decoder has three k2 s2 up-sampling layers, each followed by a 3x3x3 Conv3d:

    256 -> 128 @ 8^3 -> 16^3,   128 -> 64 @ 16^3 -> 32^3,   64 -> 32 @ 32^3 -> 64^3

It is timed as built (PyTorch's modules) and after ``tconv3d.torch.convert`` (the same
weights), in NCDHW and ``channels_last_3d`` memory formats, layer by layer and whole, under
``torch.inference_mode()`` with the same thread count for both (``torch.set_num_threads``,
which tconv3d.torch follows). Each time is the median of ``--repeats`` runs after
``--warmup`` runs; PyTorch's and tconv3d's runs are interleaved so that a change of machine
load affects both alike.

Run:  python benchmarks/bench_torch_unet.py [--threads N] [--repeats 7] [--batch 1]
"""
import argparse
import copy
import functools
import statistics
import time

import torch

import tconv3d
import tconv3d.torch as tt

LEVELS = [(256, 128, 8), (128, 64, 16), (64, 32, 32)]  # (in, out, input side)


class Decoder(torch.nn.Module):
    """Three (ConvTranspose3d k2 s2, Conv3d 3x3x3, ReLU) stages."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ModuleList(
            torch.nn.ConvTranspose3d(cin, cout, kernel_size=2, stride=2) for cin, cout, _ in LEVELS)
        self.conv = torch.nn.ModuleList(
            torch.nn.Conv3d(cout, cout, kernel_size=3, padding=1) for _, cout, _ in LEVELS)

    def forward(self, x):
        for up, conv in zip(self.up, self.conv):
            x = torch.relu(conv(up(x)))
        return x


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


def _layers(reference, converted, batch, memory_format):
    """(name, PyTorch's layer, converted layer, input) for every layer of the decoder."""
    rows = []
    for i, (cin, cout, side) in enumerate(LEVELS):
        x = torch.randn(batch, cin, side, side, side).to(memory_format=memory_format)
        rows.append((f"up   {cin:>3}->{cout:<3} k2 s2 @{side}^3", reference.up[i],
                     converted.up[i], x))
        y = torch.randn(batch, cout, 2 * side, 2 * side, 2 * side)
        rows.append((f"conv {cout:>3}->{cout:<3} k3    @{2 * side}^3", reference.conv[i],
                     converted.conv[i], y.to(memory_format=memory_format)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, tconv3d {tconv3d.__version__}, "
          f"{args.threads} threads, batch {args.batch}, "
          f"median of {args.repeats} runs after {args.warmup} warm-up runs")
    tconv3d.show_config()

    header = (f"{'layer / model':<30} {'format':<17} {'torch ms':>9} {'tconv3d ms':>11} "
              f"{'speed-up':>9}")
    print()
    print(header)
    print("-" * len(header))
    for name, memory_format in (("ncdhw", torch.contiguous_format),
                                ("channels_last_3d", torch.channels_last_3d)):
        reference = Decoder().to(memory_format=memory_format).eval()
        converted = tt.convert(copy.deepcopy(reference))
        with torch.inference_mode():
            for label, module, new, x in _layers(reference, converted, args.batch,
                                                 memory_format):
                # Conv3d rows time the same layer twice (convert leaves it alone): their
                # "speed-up" gauges the timing noise of the machine.
                diff = (new(x) - module(x)).abs().max().item()
                assert diff < 1e-3, f"{label}: outputs differ by {diff}"
                t_ref, t_new = _median_ms([functools.partial(module, x),
                                           functools.partial(new, x)],
                                          args.warmup, args.repeats)
                print(f"{label:<30} {name:<17} {t_ref:9.1f} {t_new:11.1f} "
                      f"{t_ref / t_new:8.2f}x")
            side = LEVELS[0][2]
            x = torch.randn(args.batch, LEVELS[0][0], side, side, side)
            x = x.to(memory_format=memory_format)
            diff = (converted(x) - reference(x)).abs().max().item()
            assert diff < 1e-3, f"model outputs differ by {diff}"
            t_ref, t_new = _median_ms([functools.partial(reference, x),
                                       functools.partial(converted, x)],
                                      args.warmup, args.repeats)
            print(f"{'whole decoder':<30} {name:<17} {t_ref:9.1f} {t_new:11.1f} "
                  f"{t_ref / t_new:8.2f}x")
        print()
    print("conv rows: PyTorch's Conv3d in both columns (convert leaves it alone); their "
          "ratio shows the timing noise.")


if __name__ == "__main__":
    main()
