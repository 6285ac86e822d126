"""The cost of a call is the multiply-adds it performs plus the size of its arrays.

The kernels once scanned every tap of an axis for every output (issue 16, item 3): a
stride of 4096 with as many taps took 33 s where PyTorch takes 0.05 s, 2**16 taps on one
voxel 4.2 s. Taps are now enumerated arithmetically (per stride phase into an output, one
range from an input), so these cases run in milliseconds; the bounds below are CPU
seconds on one thread, generous for a loaded machine (each case is about 100x under).

The exactness checks run the same arithmetic on shapes small enough for the reference:
large strides and dilations with gcd > 1, kernels longer than the input, crops that
leave a tap reaching one output only, outputs shorter than the stride, and channel
counts that make the width runs shorter than the stride.
"""
import time

import numpy as np
import pytest

import tconv3d
from helpers import tol
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

SECONDS = 2.0


def _cpu_seconds(f):
    t0 = time.process_time()
    out = f()
    return time.process_time() - t0, out


def _assert_close(got, expected, dtype, what):
    t = tol(dtype)
    atol = t["atol"] * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    assert got.shape == expected.shape, what
    np.testing.assert_allclose(got, expected, rtol=t["rtol"], atol=atol, err_msg=what)


# (x shape, kernel shape, keyword arguments): the cases, and a crop that leaves
# each of 4096 rows one tap out of 2**16 (valid for the padding, not the scan).
CASES = {
    "stride-4096": ((1, 32, 32, 1, 1), (1, 1, 4096, 1, 1), dict(strides=(1, 1, 4096))),
    "depth-2**16-taps": ((1, 1, 1, 1, 1), (2**16, 1, 1, 1, 1), {}),
    "same-crop-2**16-taps": ((1, 64, 64, 1, 1), (1, 1, 2**16 + 1, 1, 1),
                             dict(padding="same")),
    "stride-dilation-2**12": ((1, 8, 8, 3, 2), (1, 1, 2**10, 2, 2),
                              dict(strides=(1, 1, 2**12), dilation_rate=(1, 1, 3))),
}


@pytest.mark.parametrize("case", CASES)
def test_long_kernels_and_large_strides_cost_the_work_done(rng, case):
    xshape, kshape, kwargs = CASES[case]
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(kshape).astype(np.float32)
    seconds, y = _cpu_seconds(lambda: tconv3d.conv_transpose3d(x, w, num_threads=1,
                                                               **kwargs))
    assert seconds < SECONDS, f"forward took {seconds:.2f} s of CPU"
    g = rng.standard_normal(y.shape).astype(np.float32)
    seconds, _ = _cpu_seconds(lambda: tconv3d.conv_transpose3d_backward(
        g, x, w, num_threads=1, **kwargs))
    assert seconds < SECONDS, f"backward took {seconds:.2f} s of CPU"


@pytest.mark.parametrize("case", ["stride-4096", "depth-2**16-taps"])
def test_long_kernels_and_large_strides_match_the_reference(rng, case):
    xshape, kshape, kwargs = CASES[case]
    x = rng.standard_normal(xshape)
    w = rng.standard_normal(kshape)
    b = rng.standard_normal(kshape[3])
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    _assert_close(y, conv_transpose3d_ref(x, w, b, **kwargs), np.float64, "forward")
    g = rng.standard_normal(y.shape)
    for got, want, name in zip(tconv3d.conv_transpose3d_backward(g, x, w, **kwargs),
                               conv_transpose3d_backward_ref(g, x, w, **kwargs),
                               ("input", "kernel", "bias")):
        _assert_close(got, want, np.float64, f"grad {name}")


def _random_geometry(rng):
    """Strides and dilations up to 9 (shared factors included), kernels up to 12 taps on
    one axis (4 on the others), sizes from 1, paddings with and without output_padding."""
    s = tuple(int(v) for v in rng.choice([1, 2, 3, 4, 6, 9], size=3))
    kwargs = dict(strides=s,
                  dilation_rate=tuple(int(v) for v in rng.choice([1, 2, 3, 6, 7], size=3)),
                  padding=["valid", "same"][rng.integers(2)],
                  output_padding=None if rng.random() < 0.5 else
                  tuple(int(rng.integers(0, v)) for v in s))
    spatial = tuple(int(v) for v in rng.integers(1, 5, size=3))
    kernel = [int(v) for v in rng.integers(1, 5, size=3)]
    kernel[rng.integers(3)] = int(rng.integers(1, 13))
    kernel = tuple(kernel)
    return spatial, kernel, kwargs


@pytest.mark.parametrize("cin,cout", [(1, 1), (2, 3), (3, 300), (300, 2)])
def test_random_large_strides_and_dilations_match_the_reference(rng, cin, cout):
    """300 channels make width runs of 6 voxels, shorter than most strides here."""
    checked = 0
    while checked < 12:
        spatial, kernel, kwargs = _random_geometry(rng)
        try:
            tconv3d.conv_transpose3d_output_shape((1, *spatial, cin), (*kernel, cout, cin),
                                                  **kwargs)
        except ValueError:  # an empty output
            continue
        x = rng.standard_normal((2, *spatial, cin))
        w = rng.standard_normal((*kernel, cout, cin))
        b = rng.standard_normal(cout)
        y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
        _assert_close(y, conv_transpose3d_ref(x, w, b, **kwargs), np.float64,
                      f"forward {spatial} {kernel} {kwargs}")
        g = rng.standard_normal(y.shape)
        for got, want, name in zip(tconv3d.conv_transpose3d_backward(g, x, w, **kwargs),
                                   conv_transpose3d_backward_ref(g, x, w, **kwargs),
                                   ("input", "kernel", "bias")):
            _assert_close(got, want, np.float64, f"grad {name} {spatial} {kernel} {kwargs}")
        checked += 1


def test_outputs_fewer_than_the_stride(rng):
    """One input voxel, output_padding 0 and 'same': outputs (1 or 2) fewer than the
    stride, so every tap but one or two falls outside them."""
    for k, s, d in [(7, 5, 1), (9, 4, 3), (12, 9, 6), (3, 8, 8)]:
        kwargs = dict(strides=s, dilation_rate=d, padding="same", output_padding=0)
        x = rng.standard_normal((1, 1, 1, 1, 2))
        w = rng.standard_normal((k, k, k, 3, 2))
        y = tconv3d.conv_transpose3d(x, w, **kwargs)
        assert y.shape[1] < s
        _assert_close(y, conv_transpose3d_ref(x, w, **kwargs), np.float64, "forward")
        g = rng.standard_normal(y.shape)
        for got, want in zip(tconv3d.conv_transpose3d_backward(g, x, w, **kwargs),
                             conv_transpose3d_backward_ref(g, x, w, **kwargs)):
            _assert_close(got, want, np.float64, f"backward k={k} s={s} d={d}")
