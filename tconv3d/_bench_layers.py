"""Benchmarks of the framework layers beside the suite of :mod:`tconv3d.bench`: grouped
layers of the PyTorch drop-in, bfloat16 tensors and arrays, a very large stride, and
``model.fit`` of a Keras decoder; and the timing rule every benchmark uses
(:func:`median_ms`); also the fused relu."""
import copy
import gc
import statistics
import sys
import time

import numpy as np

from ._ops import conv_transpose3d


def triple(v):
    """A suite case's size or kernel as three per-axis values."""
    return (v,) * 3 if isinstance(v, int) else tuple(v)


def median_ms(fn, repeat, warmup=2):
    """Median time of ``fn`` in ms (:func:`interleaved_medians` of one function)."""
    return interleaved_medians({"fn": fn}, repeat, warmup)["fn"]


def interleaved_medians(functions, repeat, warmup=2):
    """Median time in ms of each of ``functions`` (a dict name -> callable), timed in
    rounds that call each once in turn: a slow spell of the machine (other processes, a
    busy host) then falls on every contender alike instead of on whichever was being
    timed. As ``timeit`` does, the garbage collector is off while timing: a collection
    triggered by the few objects a call makes would otherwise walk every object of the
    process (tens of ms once PyTorch is imported) inside one call."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    times = {name: [] for name in functions}
    try:
        for _ in range(repeat):
            for name, fn in functions.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


LARGE_STRIDE = dict(x=(1, 32, 32, 1, 1), kernel=(1, 1, 4096, 1, 1), strides=(1, 1, 4096))


def run_large_stride(threads, repeat=5, out=sys.stdout):
    """The :data:`LARGE_STRIDE` forward against ``torch.nn.functional.conv_transpose3d``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(LARGE_STRIDE["x"]).astype(np.float32)
    w = rng.standard_normal(LARGE_STRIDE["kernel"]).astype(np.float32)
    kw = dict(strides=LARGE_STRIDE["strides"], num_threads=threads)
    row = {"tconv3d_ms": median_ms(lambda: conv_transpose3d(x, w, **kw), repeat, warmup=1)}
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(threads)
        xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 3, 0, 1, 2)))

        def theirs():
            with torch.inference_mode():
                return torch.nn.functional.conv_transpose3d(xt, wt,
                                                            stride=LARGE_STRIDE["strides"])
        np.testing.assert_allclose(theirs().permute(0, 2, 3, 4, 1).numpy(),
                                   conv_transpose3d(x, w, **kw), rtol=1e-5, atol=1e-5)
        row["torch_ms"] = median_ms(theirs, repeat, warmup=1)
    print(f"large stride: x {LARGE_STRIDE['x']}, kernel {LARGE_STRIDE['kernel']}, strides "
          f"{LARGE_STRIDE['strides']}, {threads} thread(s): tconv3d {row['tconv3d_ms']:.2f} "
          f"ms, torch {row.get('torch_ms', float('nan')):.2f} ms", file=out, flush=True)
    return row


# ConvTranspose3d(in, out, 4, stride=2, padding=1, groups=G): 32 -> 32 channels in 1 to 32
# groups (depthwise), then channel multipliers of 2 and 3 and their reverse, and 3
# channels per group
GROUPED_LAYERS = ((32, 32, 1), (32, 32, 2), (32, 32, 4), (32, 32, 8), (32, 32, 32),
                  (32, 64, 32), (64, 32, 32), (32, 64, 16), (32, 96, 32), (96, 32, 32),
                  (48, 48, 16))


def run_groups(threads, repeat=7, layers=GROUPED_LAYERS, out=sys.stdout):
    """Grouped layers, depthwise ones included: ``tconv3d.torch.ConvTranspose3d`` against
    ``torch.nn.ConvTranspose3d`` (same weights), input (2, in, 16, 16, 16), float32, in both
    memory formats, forward and forward+backward (gradients of input, weight and bias).
    Returns ``{"in->out G=G": {"torch_ncdhw_fwd_ms": ..., "tconv3d_cl3d_fwdbwd_ms": ...,
    ...}}`` (empty without PyTorch)."""
    try:
        import torch

        from .torch import ConvTranspose3d
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    formats = (("ncdhw", torch.contiguous_format), ("cl3d", torch.channels_last_3d))
    rows = {}
    for cin, cout, g in layers:
        x = torch.randn(2, cin, 16, 16, 16)
        ref = torch.nn.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, groups=g)
        ours = ConvTranspose3d(cin, cout, 4, stride=2, padding=1, groups=g)
        ours.load_state_dict(ref.state_dict())
        timed = {}
        for fmt, memory_format in formats:
            xf = x.contiguous(memory_format=memory_format)
            xg = xf.clone().requires_grad_()
            for name, module in (("torch", ref), ("tconv3d", ours)):
                module = copy.deepcopy(module).to(memory_format=memory_format)

                def forward(module=module, xf=xf):
                    with torch.no_grad():
                        return module(xf)

                def forward_backward(module=module, xg=xg):
                    module(xg).sum().backward()

                timed[f"{name}_{fmt}_fwd"] = forward
                timed[f"{name}_{fmt}_fwdbwd"] = forward_backward
            torch.testing.assert_close(ours(xf), ref(xf), rtol=1e-4, atol=1e-4)
        row = {f"{key}_ms": ms for key, ms in interleaved_medians(timed, repeat).items()}
        for phase in ("fwd", "fwdbwd"):   # tconv3d's slower layout / torch's faster one
            row[f"ratio_{phase}"] = (max(row[f"tconv3d_{f}_{phase}_ms"] for f, _ in formats)
                                     / min(row[f"torch_{f}_{phase}_ms"] for f, _ in formats))
        rows[f"{cin}->{cout} G={g}"] = row
        print(f"{cin}->{cout} groups={g:2d} (k4 s2 p1, 2x{cin}x16^3, {threads} thr) ms, NCDHW / "
              f"channels_last_3d: fwd torch {row['torch_ncdhw_fwd_ms']:.2f} / "
              f"{row['torch_cl3d_fwd_ms']:.2f}, tconv3d {row['tconv3d_ncdhw_fwd_ms']:.2f} / "
              f"{row['tconv3d_cl3d_fwd_ms']:.2f}; fwd+bwd torch "
              f"{row['torch_ncdhw_fwdbwd_ms']:.2f} / {row['torch_cl3d_fwdbwd_ms']:.2f}, "
              f"tconv3d {row['tconv3d_ncdhw_fwdbwd_ms']:.2f} / "
              f"{row['tconv3d_cl3d_fwdbwd_ms']:.2f}; ratio (tconv3d's slower layout / torch's"
              f" faster) fwd {row['ratio_fwd']:.2f}, fwd+bwd {row['ratio_fwdbwd']:.2f}",
              file=out, flush=True)
    return rows


BFLOAT16_CASE = (2, 32, 32, 16)   # batch, in, out channels, input size: k3 s2 p1 op1


def run_bfloat16(threads, repeat=7, out=sys.stdout):
    """bfloat16 tensors: ``tconv3d.torch.ConvTranspose3d`` against
    ``torch.nn.ConvTranspose3d`` in bfloat16, both in both memory formats, and tconv3d's
    own float32 time (NCDHW), forward and forward+backward, on ``same_k3s2``'s shape.
    Returns a dict of ms (empty without PyTorch)."""
    try:
        import torch

        from .torch import ConvTranspose3d
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n, cin, cout, size = BFLOAT16_CASE
    ref = torch.nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    ours = ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(n, cin, size, size, size)
    ncdhw, cl3d = torch.contiguous_format, torch.channels_last_3d
    contenders = (("torch_ncdhw", ref, torch.bfloat16, ncdhw),
                  ("torch_cl3d", ref, torch.bfloat16, cl3d),
                  ("tconv3d_ncdhw", ours, torch.bfloat16, ncdhw),
                  ("tconv3d_cl3d", ours, torch.bfloat16, cl3d),
                  ("tconv3d_float32", ours, torch.float32, ncdhw))
    timed = {}
    for name, module, dtype, memory_format in contenders:
        module = copy.deepcopy(module).to(dtype=dtype, memory_format=memory_format)
        xf = x.to(dtype).contiguous(memory_format=memory_format)
        xg = xf.clone().requires_grad_()

        def forward(module=module, xf=xf):
            with torch.no_grad():
                return module(xf)

        def forward_backward(module=module, xg=xg):
            module(xg).float().sum().backward()

        timed[f"{name}_fwd"] = forward
        timed[f"{name}_fwdbwd"] = forward_backward
    row = {f"{key}_ms": ms for key, ms in interleaved_medians(timed, repeat).items()}
    for phase in ("fwd", "fwdbwd"):   # each library's faster memory format
        row[f"ratio_{phase}"] = (min(row[f"tconv3d_{f}_{phase}_ms"] for f in ("ncdhw", "cl3d"))
                                 / min(row[f"torch_{f}_{phase}_ms"] for f in ("ncdhw", "cl3d")))
    print(f"bfloat16 ({n}, {cin}->{cout}, {size}^3, k3 s2 p1 op1, {threads} thr) ms, fwd / "
          f"fwd+bwd: torch NCDHW {row['torch_ncdhw_fwd_ms']:.2f} / "
          f"{row['torch_ncdhw_fwdbwd_ms']:.2f}, torch channels_last_3d "
          f"{row['torch_cl3d_fwd_ms']:.2f} / {row['torch_cl3d_fwdbwd_ms']:.2f}, tconv3d NCDHW "
          f"{row['tconv3d_ncdhw_fwd_ms']:.2f} / {row['tconv3d_ncdhw_fwdbwd_ms']:.2f}, "
          f"channels_last_3d {row['tconv3d_cl3d_fwd_ms']:.2f} / "
          f"{row['tconv3d_cl3d_fwdbwd_ms']:.2f} (its float32 NCDHW "
          f"{row['tconv3d_float32_fwd_ms']:.2f} / {row['tconv3d_float32_fwdbwd_ms']:.2f}); "
          f"ratio of the faster formats fwd {row['ratio_fwd']:.2f}, fwd+bwd "
          f"{row['ratio_fwdbwd']:.2f}", file=out, flush=True)
    return row


def pass_calls(case, threads, dtype=np.float32):
    """The forward, input gradient and kernel gradient of a suite ``case`` ((batch, in,
    out channels, size, kernel, stride, padding)), each its own call on ``threads``, on
    seeded channels_last operands in ``dtype``: ``{"fwd", "input", "kernel"}`` ->
    callable."""
    from ._ops import conv_transpose3d_backward
    n, cin, cout, size, k, s, padding = case
    rng = np.random.default_rng(0)
    kw = dict(strides=s, padding=padding, num_threads=threads)
    x = rng.standard_normal((n, *triple(size), cin)).astype(np.float32)
    w = rng.standard_normal((*triple(k), cout, cin)).astype(np.float32)
    g = rng.standard_normal(conv_transpose3d(x, w, **kw).shape).astype(np.float32)
    x, w, g = (a.astype(dtype) for a in (x, w, g))
    calls = {"fwd": lambda: conv_transpose3d(x, w, **kw)}
    for grad in ("input", "kernel"):
        calls[grad] = lambda grad=grad: conv_transpose3d_backward(g, x, w, compute=[grad], **kw)
    return calls


def run_bfloat16_shapes(cases, threads, repeat=7, out=sys.stdout):
    """bfloat16 numpy arrays (``ml_dtypes``) against float32 on ``cases`` (name ->
    (batch, in, out channels, size, kernel, stride, padding), the suite's form),
    channels_last: forward, input gradient and kernel gradient, each in its own call;
    prints a line per case with the float32 / bfloat16 time ratios (above 1: bfloat16
    faster) and which bfloat16 path runs. Returns ``{case: {key: ms}}`` (empty without
    ml_dtypes)."""
    try:
        import ml_dtypes
    except ImportError:
        return {}
    from ._kernels import bf16_variant
    rows = {}
    for name, case in cases.items():
        timed = {f"{dtype}_{key}": call
                 for dtype, cast in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16))
                 for key, call in pass_calls(case, threads, cast).items()}
        row = interleaved_medians(timed, repeat)
        rows[name] = row
        phases = ("fwd", "input", "kernel")
        ms = {dtype: " / ".join(f"{row[f'{dtype}_{p}']:.2f}" for p in phases)
              for dtype in ("float32", "bfloat16")}
        ratios = " / ".join(f"{row[f'float32_{p}'] / row[f'bfloat16_{p}']:.2f}" for p in phases)
        print(f"bfloat16 {name} ({threads} thr, {bf16_variant()}) ms, fwd / grad_input / "
              f"grad_kernel: float32 {ms['float32']}, bfloat16 {ms['bfloat16']}; "
              f"float32 / bfloat16 {ratios}", file=out, flush=True)
    return rows


def run_keras_fit(threads, steps=10, rounds=7, out=sys.stdout):
    """Training steps per second of a small Keras 3D decoder (``model.fit`` on the torch
    backend, float32, batch 4, 8^3x32 -> 32^3x1 through three stride-2 layers) with
    ``keras.layers.Conv3DTranspose`` and with :class:`tconv3d.keras.Conv3DTranspose`,
    same weights and data: one ``model.fit`` epoch of ``steps`` batches per model in each
    of ``rounds`` interleaved rounds (:func:`interleaved_medians`), ``steps`` over the
    median. Returns ``{layer: steps/s}`` (empty without Keras)."""
    import os
    if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
        return {}
    try:
        import keras
        import torch

        from .keras import Conv3DTranspose
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * 4, 8, 8, 8, 32)).astype(np.float32)
    fits = {}
    for name, layer in (("keras", keras.layers.Conv3DTranspose),
                        ("tconv3d.keras", Conv3DTranspose)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(x.shape[1:]),
                                  layer(32, 3, strides=2, padding="same", activation="relu"),
                                  layer(16, 3, strides=2, padding="same", activation="relu"),
                                  layer(1, 2, strides=1, padding="same")])
        model.compile(optimizer="adam", loss="mse")
        y = rng.standard_normal((len(x), *model.output_shape[1:])).astype(np.float32)
        fits[name] = (lambda model=model, y=y: model.fit(x, y, batch_size=4, epochs=1,
                                                         verbose=0, shuffle=False))
    rates = {name: steps / (ms / 1e3)
             for name, ms in interleaved_medians(fits, rounds, warmup=1).items()}
    print(f"keras model.fit, 3D decoder (batch 4, 8^3x32 -> 32^3x1), {threads} thread(s): "
          + ", ".join(f"{k} {v:.2f} steps/s" for k, v in rates.items())
          + f" ({rates['tconv3d.keras'] / rates['keras']:.2f}x)", file=out, flush=True)
    return rates


def run_fused_activation(threads, repeat=7, out=sys.stdout):
    """The forward with relu applied by the compiled kernel (``activation="relu"``)
    against the same forward followed by ``np.maximum(y, 0)``, on ``stride1_k3``'s shape
    (float32, output 32 MiB); and the layer with tconv3d's relu (fused) against the same
    formula as a user's activation (applied to the result). Returns ms per call."""
    from .activations import Activation, get
    from .layers import Conv3DTranspose

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 32, 32, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 32, 32)).astype(np.float32)
    kw = dict(padding="same", num_threads=threads)
    relu = get("relu")
    layers = {name: Conv3DTranspose(32, 3, padding="same", activation=activation, seed=0,
                                    num_threads=threads)
              for name, activation in (("layer_fused", "relu"),
                                       ("layer_unfused", Activation(relu.fn, relu.derivative,
                                                                    name="my_relu")))}
    np.testing.assert_array_equal(conv_transpose3d(x, w, activation="relu", **kw),
                                  np.maximum(conv_transpose3d(x, w, **kw), 0))
    row = interleaved_medians({
        "fused": lambda: conv_transpose3d(x, w, activation="relu", **kw),
        "conv_then_relu": lambda: np.maximum(conv_transpose3d(x, w, **kw), 0),
        **{name: (lambda layer=layer: layer(x)) for name, layer in layers.items()}}, repeat)
    print(f"relu on stride1_k3's forward (1, 32->32, 32^3, k3, s1), {threads} thread(s), "
          f"ms: fused {row['fused']:.2f}, conv then np.maximum {row['conv_then_relu']:.2f}; "
          f"layer with relu {row['layer_fused']:.2f} (fused), with the same relu as a "
          f"user's activation {row['layer_unfused']:.2f}", file=out, flush=True)
    return row
