"""Benchmark suite: tconv3d against PyTorch (and TensorFlow) in the same process.

Run ``python -m tconv3d.bench`` (or ``tconv3d bench``). Every peer runs with the same
thread count, on the same data, and its output is checked against tconv3d's before it
is timed. Times are the median of ``--repeat`` runs after a warm-up.

Columns: ms per call; GFLOP/s counts ``2 * N * in_voxels * Cin * Cout * k^3`` (the
multiply-adds of the scatter definition); ``ratio`` is tconv3d's time over the fastest
peer's (below 1 means tconv3d is faster).
"""
import argparse
import json
import platform
import sys

import numpy as np

from . import _kernels
from ._geometry import keras_to_torch_kernel, keras_trim, torch_window
from ._bench_layers import (interleaved_medians, median_ms, pass_calls, run_bfloat16,
                            run_bfloat16_shapes, run_fused_activation, run_groups,
                            run_keras_fit, run_large_stride, triple)
from ._ops import conv_transpose3d, conv_transpose3d_backward

# name: (batch, in_channels, out_channels, input size, kernel, stride, padding); sizes,
# kernels and strides are an int for all three axes or a triple.
SUITE = {
    "unet_up": (1, 64, 32, 32, 2, 2, "valid"),
    "same_k3s2": (2, 32, 32, 16, 3, 2, "same"),
    "gan_k4s2": (4, 64, 32, 8, 4, 2, "same"),
    "upsample_c1": (8, 1, 1, 64, 2, 2, "valid"),
    "stride1_k3": (1, 32, 32, 32, 3, 1, "same"),
    # realistic decoder layers: a deep nnU-Net stage (many channels, small volume), an
    # early 3D-GAN layer, a wide stride-1 layer, an anisotropic (in-plane) upsampling
    "nnunet_deep": (2, 320, 256, 4, 2, 2, "valid"),
    "gan_deep": (4, 256, 128, 4, 4, 2, "same"),
    "stride1_c64": (1, 64, 64, 16, 3, 1, "same"),
    "aniso_k133": (1, 64, 32, (8, 32, 32), (1, 3, 3), (1, 2, 2), "same"),
}
COMPUTE_BOUND = ("same_k3s2", "gan_k4s2", "stride1_k3", "nnunet_deep", "gan_deep",
                 "stride1_c64", "aniso_k133")


def _flops(case):
    n, cin, cout, size, k, _, _ = case
    return 2.0 * n * np.prod(triple(size)) * cin * cout * np.prod(triple(k))


def _torch_padding(k, s, padding):
    """The torch ``padding``/``output_padding`` a user would pass for this Keras padding,
    and the shift ``delta`` between the two outputs.

    Torch's output has Keras' length; when Keras crops an odd number of elements (odd
    ``k - s`` for ``"same"``) torch's window starts one element later (``delta = 1``): the
    outputs have the same shape and timing, and agree up to that shift.
    """
    pad, output_padding, delta = torch_window(keras_trim(k, s, 1, padding, None))
    return pad + delta, output_padding + delta, delta


class _TorchPeer:
    name = "torch"

    def __init__(self, threads):
        import torch
        self.torch = torch
        torch.set_num_threads(threads)

    def setup(self, x, w, b, case, channels_last_3d):
        torch = self.torch
        _, _, _, size, k, s, padding = case
        s = triple(s)
        pad, out_pad, delta = zip(*(_torch_padding(ka, sa, padding)
                                    for ka, sa in zip(triple(k), s)))
        xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
        if channels_last_3d:
            xt = xt.contiguous(memory_format=torch.channels_last_3d)
        wt = torch.from_numpy(np.ascontiguousarray(keras_to_torch_kernel(w)))
        bt = torch.from_numpy(b)
        xg = xt.clone().requires_grad_()
        wg = wt.clone().requires_grad_()
        bg = bt.clone().requires_grad_()

        def forward():
            with torch.no_grad():
                return torch.nn.functional.conv_transpose3d(xt, wt, bt, stride=s, padding=pad,
                                                            output_padding=out_pad)

        def forward_backward():
            y = torch.nn.functional.conv_transpose3d(xg, wg, bg, stride=s, padding=pad,
                                                     output_padding=out_pad)
            return torch.autograd.grad(y, (xg, wg, bg), torch.ones_like(y))

        def output(y):
            """torch's output and tconv3d's ``y``, cut to the voxels both hold."""
            theirs = np.moveaxis(forward().numpy(), 1, -1)
            n = [length - d for length, d in zip(y.shape[1:4], delta)]
            return (theirs[:, :n[0], :n[1], :n[2]],
                    y[:, delta[0]:, delta[1]:, delta[2]:])

        return forward, forward_backward, output


class _TensorFlowPeer:
    name = "tensorflow"

    def __init__(self, threads):
        import tensorflow as tf
        self.tf = tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised: keep its settings
            pass

    def setup(self, x, w, b, case, channels_last_3d=False):
        tf = self.tf
        n, cin, cout, size, k, s, padding = case
        out_shape = (n, *(m * sa if padding == "same" else (m - 1) * sa + max(ka, sa)
                          for m, ka, sa in zip(triple(size), triple(k), triple(s))), cout)
        strides = (1, *triple(s), 1)
        xt, wt, bt = tf.constant(x), tf.constant(w), tf.constant(b)

        @tf.function
        def forward():
            return tf.nn.conv3d_transpose(xt, wt, out_shape, strides,
                                          padding=padding.upper()) + bt

        @tf.function
        def forward_backward():
            with tf.GradientTape() as tape:
                tape.watch([xt, wt, bt])
                y = tf.nn.conv3d_transpose(xt, wt, out_shape, strides,
                                           padding=padding.upper()) + bt
            return tape.gradient(y, [xt, wt, bt], output_gradients=tf.ones_like(y))

        return forward, forward_backward, lambda y: (forward().numpy(), y)


def _peers(threads, names):
    peers = []
    for cls in (_TorchPeer, _TensorFlowPeer):
        if cls.name not in names:
            continue
        try:
            peers.append(cls(threads))
        except ImportError:
            pass
    return peers


SGEMM_N = 2048


def sgemm_gflops(threads, repeat=5):
    """OpenBLAS (numpy) sgemm rate with `threads` threads: the machine's practical peak."""
    a = np.random.default_rng(0).standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(threads, user_api="blas")
    except ImportError:
        limits = None
    try:
        ms = median_ms(lambda: a @ a, repeat)
    finally:
        if limits is not None:
            limits.restore_original_limits()
    return 2.0 * SGEMM_N ** 3 / ms / 1e6


def run_compute_rates(cases, threads, sgemm, repeat=7, out=sys.stdout):
    """GFLOP/s of the float32 forward, input gradient and kernel gradient (each its own
    call, channels_last, interleaved rounds) of ``cases`` (name -> the suite's tuple), and
    their ratio to ``sgemm``, the run's OpenBLAS rate on ``threads``. (sgemm is not timed
    in the same rounds: OpenBLAS's threads keep spinning after a product, and would take
    a core from the next call.) Prints a line per case; returns ``{case: {key:
    GFLOP/s}}``."""
    rates = {}
    for name, case in cases.items():
        calls = pass_calls(case, threads)
        ms = interleaved_medians(calls, repeat)
        rates[name] = {key: _flops(case) / t / 1e6 for key, t in ms.items()}
        figures = " / ".join(f"{rates[name][key]:.0f}" for key in calls)
        ratios = " / ".join(f"{rates[name][key] / sgemm:.2f}" for key in calls)
        print(f"rates {name} ({threads} thr, float32) GFLOP/s fwd / grad_input / grad_kernel: "
              f"{figures}; x sgemm ({sgemm:.0f}) {ratios}", file=out, flush=True)
    return rates


def peak_memory_forward(case_name="unet_up", dtype="float32"):
    """Peak RSS growth of one forward call, measured in a fresh process (MiB)."""
    import subprocess
    code = f"""
import resource, numpy as np
from tconv3d.bench import SUITE
from tconv3d import conv_transpose3d

def peak_rss():
    # VmHWM belongs to this process' memory map; ru_maxrss would include the peak of
    # the parent at fork time (Linux), which hides the growth when the parent is large.
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

n, cin, cout, size, k, s, padding = SUITE[{case_name!r}]
rng = np.random.default_rng(0)
triple = lambda v: (v,) * 3 if isinstance(v, int) else tuple(v)
x = rng.standard_normal((n, *triple(size), cin), dtype={dtype!r})  # no temporaries
w = rng.standard_normal((*triple(k), cout, cin), dtype={dtype!r})
conv_transpose3d(x[:1, :2, :2, :2], w, strides=s, padding=padding)  # load the module
before = peak_rss()
y = conv_transpose3d(x, w, strides=s, padding=padding)
after = peak_rss()
print(x.nbytes, y.nbytes, (after - before) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    x_bytes, y_bytes, growth = map(int, out)
    return {"input_MiB": x_bytes / 2**20, "output_MiB": y_bytes / 2**20,
            "peak_growth_MiB": growth / 2**20,
            "extra_MiB": (growth - y_bytes) / 2**20}


UPSAMPLER_SHAPE, UPSAMPLER_FACTOR = (8, 64, 64, 64), 2


def run_upsampler(threads, repeat=7, out=sys.stdout):
    """x2 trilinear upsampling of 8 volumes 64^3 float32: VolumeUpsampler against
    ``torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`` (same
    threads) and ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`` (the same
    numbers; single-threaded). Results are checked equal before timing; returns ms."""
    from scipy import ndimage

    from .upsampling import VolumeUpsampler
    x = np.random.default_rng(0).standard_normal(UPSAMPLER_SHAPE).astype(np.float32)
    up = VolumeUpsampler(factor=UPSAMPLER_FACTOR, num_threads=threads).fit(x)
    ours = up.transform(x)
    methods = {"tconv3d VolumeUpsampler": lambda: up.transform(x)}
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(threads)
        xt = torch.from_numpy(x)[:, None]

        def interpolate():
            with torch.inference_mode():
                return torch.nn.functional.interpolate(
                    xt, scale_factor=UPSAMPLER_FACTOR, mode="trilinear",
                    align_corners=False)[:, 0]
        methods["torch interpolate"] = interpolate
    methods["scipy zoom order 1 (1 thread)"] = lambda: np.stack(
        [ndimage.zoom(v, UPSAMPLER_FACTOR, order=1, grid_mode=True, mode="nearest")
         for v in x])
    times = {}
    for name, fn in methods.items():
        np.testing.assert_allclose(np.asarray(fn()), ours, atol=1e-5)
        times[name] = median_ms(fn, repeat if "zoom" not in name else 5, warmup=1)
    print(f"upsampling {UPSAMPLER_SHAPE[0]} volumes {UPSAMPLER_SHAPE[1:]} float32 "
          f"x{UPSAMPLER_FACTOR} trilinear, {threads} thread(s):", file=out)
    mine = times["tconv3d VolumeUpsampler"]
    for name, ms in times.items():
        print(f"  {name:32s} {ms:9.2f} ms  {ms / mine:6.2f}x tconv3d's time", file=out)
    return times


# Upsampling factor sweep: every factor writes a 192^3 float32 volume (27 MiB), from an
# input of 192 / factor voxels per side.
SWEEP_FACTORS, SWEEP_OUTPUT_SIDE = (2, 4, 8, 16, 32, 64), 192


def run_factor_sweep(threads, factors=SWEEP_FACTORS, repeat=5, out=sys.stdout):
    """Trilinear and nearest upsampling at each factor: VolumeUpsampler against
    ``torch.nn.functional.interpolate`` (``align_corners=False``; ``"nearest"`` is
    ``np.repeat`` for integer factors), same data and threads, results checked first.
    Returns ``{(kernel, factor): {"tconv3d_ms", "torch_ms"}}``."""
    from .upsampling import VolumeUpsampler
    try:
        import torch
    except ImportError:
        torch = None
    else:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    times = {}
    print(f"upsampling factor sweep, float32, output {SWEEP_OUTPUT_SIDE}^3, {threads} "
          f"thread(s) (ms; ratio = tconv3d / torch interpolate):", file=out)
    for kernel in ("trilinear", "nearest"):
        for factor in factors:
            side = max(1, SWEEP_OUTPUT_SIDE // factor)
            x = rng.standard_normal((1, side, side, side)).astype(np.float32)
            up = VolumeUpsampler(factor=factor, kernel=kernel, num_threads=threads).fit(x)
            row = {"tconv3d_ms": median_ms(lambda: up.transform(x), repeat, warmup=1)}
            if torch is not None:
                xt = torch.from_numpy(x)[:, None]

                def interpolate():
                    with torch.inference_mode():
                        return torch.nn.functional.interpolate(
                            xt, scale_factor=factor, mode=kernel,
                            **({"align_corners": False} if kernel == "trilinear" else {}))
                np.testing.assert_allclose(interpolate()[:, 0].numpy(), up.transform(x),
                                           atol=1e-5)
                row["torch_ms"] = median_ms(interpolate, repeat, warmup=1)
            times[(kernel, factor)] = row
            ratio = row["tconv3d_ms"] / row["torch_ms"] if "torch_ms" in row else float("nan")
            print(f"  {kernel:9s} x{factor:<3d} input {side:3d}^3  tconv3d "
                  f"{row['tconv3d_ms']:8.2f}  torch {row.get('torch_ms', float('nan')):8.2f}"
                  f"  ratio {ratio:5.2f}", file=out, flush=True)
    return times


# A stride as long as the kernel on one axis: each output is reached by one tap, so the
# work is the output's size (tconv3d once scanned every tap per output: 30 s here).
def run(cases=None, threads=(2,), dtypes=("float32",), repeat=7, peers=("torch",),
        backward=True, out=sys.stdout):
    """Run the suite; returns a list of result dicts (one per case, dtype and threads)."""
    cases = list(SUITE) if cases is None else list(cases)
    results, headers_printed = [], set()
    for nthreads in threads:
        peer_objs = _peers(nthreads, peers)
        for dtype in dtypes:
            for name in cases:
                case = SUITE[name]
                n, cin, cout, size, k, s, padding = case
                rng = np.random.default_rng(0)
                x = rng.standard_normal((n, *triple(size), cin)).astype(dtype)
                w = rng.standard_normal((*triple(k), cout, cin)).astype(dtype)
                b = rng.standard_normal(cout).astype(dtype)
                kw = dict(strides=s, padding=padding, num_threads=nthreads)
                y = conv_transpose3d(x, w, b, **kw)
                g = np.ones_like(y)
                row = {"case": name, "dtype": dtype, "threads": nthreads,
                       "shape": f"{n}, {cin}->{cout}, "
                                f"{size if isinstance(size, int) else 'x'.join(map(str, size))}"
                                f"{'^3' if isinstance(size, int) else ''}, k{k}, s{s}, {padding}",
                       "gflop": _flops(case) / 1e9}
                # the forward into a reused buffer too (out=): no allocation, no first-touch
                # faults; every contender timed in the same rounds
                y_out = np.empty_like(y)
                timed = {"tconv3d_fwd": lambda: conv_transpose3d(x, w, b, **kw),
                         "tconv3d_fwd_out": lambda: conv_transpose3d(x, w, b, out=y_out, **kw)}
                if backward:
                    timed["tconv3d_fwdbwd"] = lambda: (conv_transpose3d(x, w, b, **kw),
                                                       conv_transpose3d_backward(g, x, w, **kw))
                tol = 1e-3 if dtype == "float32" else 1e-9
                for peer in peer_objs:
                    layouts = ((False, "ncdhw"), (True, "cl3d")) if peer.name == "torch" \
                        else ((False, "ndhwc"),)
                    for cl, layout in layouts:
                        fwd, fwdbwd, output = peer.setup(x, w, b, case, cl)
                        theirs, mine = output(y)
                        np.testing.assert_allclose(theirs, mine, rtol=tol,
                                                   atol=tol * np.abs(y).max())
                        timed[f"{peer.name}_{layout}_fwd"] = fwd
                        if backward:
                            timed[f"{peer.name}_{layout}_fwdbwd"] = fwdbwd
                row.update({f"{key}_ms": ms for key, ms in
                            interleaved_medians(timed, repeat).items()})
                _add_ratios(row)
                results.append(row)
                _print_row(row, out, headers_printed)
    return results


def _add_ratios(row):
    for phase in ("fwd", "fwdbwd"):
        peers = [v for k, v in row.items()
                 if k.endswith(f"_{phase}_ms") and not k.startswith("tconv3d")]
        mine = row.get(f"tconv3d_{phase}_ms")
        if peers and mine is not None:
            row[f"ratio_{phase}"] = mine / min(peers)
        ncdhw = row.get(f"torch_ncdhw_{phase}_ms")
        if ncdhw and mine is not None:
            row[f"ratio_{phase}_vs_torch_ncdhw"] = mine / ncdhw
    row["tconv3d_fwd_gflops"] = row["gflop"] / row["tconv3d_fwd_ms"] * 1e3


def _print_row(row, out, headers_printed):
    cols = ["tconv3d_fwd_ms", "tconv3d_fwd_out_ms", "tconv3d_fwdbwd_ms", "torch_ncdhw_fwd_ms",
            "torch_ncdhw_fwdbwd_ms",
            "torch_cl3d_fwd_ms", "torch_cl3d_fwdbwd_ms", "tensorflow_ndhwc_fwd_ms",
            "tensorflow_ndhwc_fwdbwd_ms"]
    cols = [c for c in cols if c in row]
    key = tuple(cols)
    if key not in headers_printed:
        headers_printed.add(key)
        names = [c.replace("_ms", "").replace("tconv3d_", "tc_") for c in cols]
        print(f"{'case':12s} {'dtype':7s} {'thr':>3s} " + " ".join(f"{n:>14s}" for n in names)
              + f" {'GFLOP/s':>8s} {'ratio fwd':>9s} {'ratio f+b':>9s}", file=out)
    vals = " ".join(f"{row[c]:14.2f}" for c in cols)
    print(f"{row['case']:12s} {row['dtype']:7s} {row['threads']:3d} {vals} "
          f"{row['tconv3d_fwd_gflops']:8.1f} {row.get('ratio_fwd', float('nan')):9.2f} "
          f"{row.get('ratio_fwdbwd', float('nan')):9.2f}", file=out, flush=True)


def plot(results, path):
    """Bar chart of tconv3d / peer time ratios (below 1 = tconv3d faster)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results if r["dtype"] == "float32"]
    labels = [f"{r['case']}\n{r['threads']} thr" for r in rows]
    series = [("ratio_fwd_vs_torch_ncdhw", "fwd vs torch NCDHW"),
              ("ratio_fwd", "fwd vs fastest peer"),
              ("ratio_fwdbwd", "fwd+bwd vs fastest peer")]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.3), 4))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ax.bar(np.arange(len(rows)) + i * width, [r.get(key, np.nan) for r in rows], width,
               label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(rows)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("time ratio tconv3d / peer (lower is better)")
    ax.set_title(f"tconv3d vs PyTorch, float32 ({platform.processor() or platform.machine()})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None, prog="python -m tconv3d.bench"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(SUITE), default=list(SUITE))
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"],
                        default=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per figure (>= 5)")
    parser.add_argument("--peers", nargs="*", default=["torch", "tensorflow"])
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--no-upsampler", action="store_true",
                        help="skip the VolumeUpsampler comparisons (vs interpolate/zoom, "
                             "and the factor sweep)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--plot", help="write a PNG of the ratios")
    args = parser.parse_args(argv)
    if args.repeat < 5:
        parser.error("--repeat must be >= 5")
    print(f"tconv3d SIMD kernels: {_kernels.simd_variant()}; OpenMP: {_kernels.openmp_enabled()}")
    sgemm = {t: sgemm_gflops(t) for t in sorted(set(args.threads))}
    for t, gflops in sgemm.items():
        print(f"sgemm (numpy/BLAS, {SGEMM_N}^2, {t} thr): {gflops:.1f} GFLOP/s")
    results = run(args.cases, args.threads, args.dtypes, args.repeat, args.peers,
                  not args.no_backward)
    upsampler, sweep, large_stride = {}, {}, {}
    if not args.no_upsampler:
        for t in args.threads:
            upsampler[t] = run_upsampler(t, args.repeat)
            sweep[t] = {f"{k} x{f}": v for (k, f), v in run_factor_sweep(t).items()}
    keras_fit, grouped, fused, bfloat16, bfloat16_shapes, rates = {}, {}, {}, {}, {}, {}
    compute_bound = {name: SUITE[name] for name in COMPUTE_BOUND if name in args.cases}
    for t in args.threads:
        rates[t] = run_compute_rates(compute_bound, t, sgemm[t], args.repeat)
        fused[t] = run_fused_activation(t, args.repeat)
        grouped[t] = run_groups(t, args.repeat)
        bfloat16[t] = run_bfloat16(t, args.repeat)
        bfloat16_shapes[t] = run_bfloat16_shapes(compute_bound, t, args.repeat)
        large_stride[t] = run_large_stride(t)
        keras_fit[t] = run_keras_fit(t)
    mem = peak_memory_forward()
    print("forward peak memory on unet_up (MiB): input {input_MiB:.1f}, output {output_MiB:.1f}, "
          "peak RSS growth {peak_growth_MiB:.1f} (extra beyond output {extra_MiB:.1f})"
          .format(**mem))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "memory": mem, "upsampler_ms": upsampler,
                       "factor_sweep_ms": sweep, "large_stride_ms": large_stride,
                       "groups_ms": grouped, "fused_activation_ms": fused,
                       "bfloat16_ms": bfloat16, "bfloat16_shapes_ms": bfloat16_shapes,
                       "keras_fit_steps_per_s": keras_fit, "compute_rates_gflops": rates,
                       "sgemm_gflops": sgemm,
                       "simd": _kernels.simd_variant(), "machine": platform.machine(),
                       "repeat": args.repeat},
                      f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
