"""Memory: 64-bit index arithmetic, an output of more than 2**31 elements (opt-in ``bigmem``),
and no leaks, from successful calls or from refused ones.

The ``bigmem`` test needs about 11 GiB (peak RSS 10.3 GiB measured) and half a minute on two
cores; it skips itself when less memory is available. Run it with
``TCONV3D_BIGMEM=1 pytest tests/test_memory.py -m bigmem -s`` (``-s`` prints the timings).
"""
import gc
import itertools
import os
import threading
import time

import numpy as np
import pytest

import tconv3d
from tconv3d import _validation
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

INT32_MAX = 2**31 - 1


# ------------------------------------------------------------- 64-bit shape arithmetic


@pytest.mark.parametrize("input_shape,kernel_shape,kwargs,expected", [
    # 2**32 elements from one call, every axis below 2**31
    ((1, 2048, 2048, 1024, 1), (1, 1, 1, 1, 1), {}, (1, 2048, 2048, 1024, 1)),
    # one spatial axis past 2**31 and past 2**32
    ((1, 1, 1, 3, 1), (1, 1, 1, 2, 1), dict(strides=(1, 1, 2**31)), (1, 1, 1, 3 * 2**31, 2)),
    ((1, 1, 1, 2, 1), (1, 1, 2, 1, 1), dict(strides=(1, 1, 2**33 + 1)),
     (1, 1, 1, 2 * (2**33 + 1), 1)),
    # a kernel dilated to span 2**41 voxels
    ((2, 5, 5, 5, 3), (3, 3, 3, 4, 3), dict(dilation_rate=2**40), (2, *(2**41 + 5,) * 3, 4)),
    # channels past 2**31 and a product past 2**63
    ((1, 2, 2, 2, 2**31 + 5), (2, 2, 2, 2**31 + 7, 2**31 + 5), dict(strides=2),
     (1, 4, 4, 4, 2**31 + 7)),
    ((2**20, 2**20, 2**20, 2**20, 1), (1, 1, 1, 1, 2**20), dict(data_format="channels_first"),
     (2**20, 1, 2**20, 2**20, 1)),
])
def test_output_shape_beyond_int32(input_shape, kernel_shape, kwargs, expected):
    shape = tconv3d.conv_transpose3d_output_shape(input_shape, kernel_shape, **kwargs)
    assert shape == expected
    assert all(type(n) is int for n in shape)
    assert int(np.prod(shape, dtype=object)) > INT32_MAX


def test_geometry_crop_and_lengths_are_exact_past_int32():
    geom = _validation.make_geometry((1, 7, 7, 7, 1), (3, 3, 3, 1, 1), 1, "same", 0, 2**40 + 3,
                                     "channels_last")
    full = 6 + 2 * (2**40 + 3) + 1
    assert geom.out_spatial == (7, 7, 7)
    assert geom.crop == ((full - 7) // 2,) * 3 == (2**40 + 3,) * 3


def test_allocation_check_counts_past_int32_exactly(monkeypatch):
    monkeypatch.setattr(_validation, "_available_memory", lambda: 2**62)
    _validation.check_allocation((2**16, 2**16, 2**3), np.float32, "output")  # 2**35 elements
    with pytest.raises(ValueError, match=r"has 9223372036854775808 elements"):
        _validation.check_allocation((2**21, 2**21, 2**21), np.uint8, "output")
    with pytest.raises(ValueError, match=r"\(9223372036854775808 bytes of float64\)"):
        _validation.check_allocation((2**20, 2**20, 2**20), np.float64, "output")
    monkeypatch.setattr(_validation, "_available_memory", lambda: 2**34)
    with pytest.raises(MemoryError, match=r"needs 32\.0 GiB, more than the 16\.0 GiB"):
        _validation.check_allocation((2**31 + 2**31,), np.float64, "output")


def _centre_tap_problem(rng, dtype):
    x = rng.standard_normal((2, 3, 4, 5, 3)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, 4, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dilation", [2**31 + 1, 2**40 + 3, 2**58 + 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_with_crops_and_taps_past_int32(rng, dilation, dtype):
    """A 3-tap kernel dilated past 2**31 with "same": tap positions and crops (> 2**31) are
    64-bit in the compiled loops, and only the centre tap lands in the output."""
    x, w, b = _centre_tap_problem(rng, dtype)
    kwargs = dict(padding="same", output_padding=0, dilation_rate=dilation)
    centre = w[1, 1, 1]  # (filters, in_channels)
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    np.testing.assert_allclose(y, x.astype(np.float64) @ centre.T + b,
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    t = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, g.astype(np.float64) @ centre, **t)
    expected_gw = np.zeros(w.shape)
    expected_gw[1, 1, 1] = np.einsum("ndhwo,ndhwi->oi", g.astype(np.float64), x)
    np.testing.assert_allclose(gw, expected_gw, **t)
    np.testing.assert_allclose(gb, g.astype(np.float64).sum(axis=(0, 1, 2, 3)), **t)


def _finishes_within(seconds, call):
    """Run ``call`` in a daemon thread; True if it returned in time (a hang does not block
    the test run: the thread is abandoned)."""
    result = {}

    def target():
        result["value"] = call()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), result.get("value")


@pytest.mark.parametrize("stride", [2**20 + 1, 2**40, 2**58])
def test_huge_stride_over_a_single_voxel_does_not_hang(rng, stride):
    """With one input voxel on an axis and output_padding, a huge stride gives a short
    output; the compiled loops must not iterate over the stride's phases."""
    x = rng.standard_normal((2, 1, 3, 1, 2))
    w = rng.standard_normal((2, 2, 3, 3, 2))
    b = rng.standard_normal(3)
    kwargs = dict(strides=(stride, 2, stride), output_padding=(5, 1, 7))
    done, y = _finishes_within(30, lambda: tconv3d.conv_transpose3d(x, w, b, **kwargs))
    assert done, "forward hung"
    assert y.shape == (2, 7, 7, 10, 3)
    np.testing.assert_allclose(y, conv_transpose3d_ref(x, w, b, **kwargs), rtol=1e-12,
                               atol=1e-12)
    g = rng.standard_normal(y.shape)
    done, grads = _finishes_within(
        30, lambda: tconv3d.conv_transpose3d_backward(g, x, w, **kwargs))
    assert done, "backward hung"
    for got, want in zip(grads, conv_transpose3d_backward_ref(g, x, w, **kwargs)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- bigmem


def _taps(o, n, k, s, d, crop):
    """(j, i) with i*s + j*d == o + crop and 0 <= i < n: written from the definition."""
    return [(j, (o + crop - j * d) // s) for j in range(k)
            if o + crop - j * d >= 0 and (o + crop - j * d) % s == 0
            and (o + crop - j * d) // s < n]


def _input_taps(i, n_out, k, s, d, crop):
    """(j, o) with o = i*s + j*d - crop and 0 <= o < n_out."""
    return [(j, i * s + j * d - crop) for j in range(k) if 0 <= i * s + j * d - crop < n_out]


@pytest.mark.bigmem
def test_output_of_more_than_2_to_the_31_elements():
    n, k, s, d = 651, 3, 2, 1          # output 1302**3 = 2 207 155 608 > 2**31 elements
    need = (2 * n) ** 3 * 4 + 2 * n**3 * 4 + (1 << 30)
    available = _validation._available_memory()
    if available is not None and available < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
    rng = np.random.default_rng(2031)
    # Small integers: every sum below is exact in float32, so samples compare exactly.
    x = rng.integers(-2, 3, (1, n, n, n, 1), dtype=np.int8).astype(np.float32)
    w = rng.integers(-2, 3, (k, k, k, 1, 1), dtype=np.int8).astype(np.float32)
    kwargs = dict(strides=s, padding="same", dilation_rate=d)
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)
    assert shape == (1, 2 * n, 2 * n, 2 * n, 1) and np.prod(shape) > 2**31
    geom = _validation.make_geometry(x.shape, w.shape, s, "same", None, d, "channels_last")
    crop, m = geom.crop[0], 2 * n

    t0 = time.perf_counter()
    y = tconv3d.conv_transpose3d(x, w, **kwargs)
    t_forward = time.perf_counter() - t0
    # samples: the corners, the voxels around flat index 2**31, and random ones
    flat = [0, y.size - 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 // 2 + 12345]
    flat += list(rng.integers(0, y.size, 2000))
    flat += list(rng.integers(2**31, y.size, 2000))
    for f in flat:
        od, oh, ow = np.unravel_index(int(f), (m, m, m))
        want = 0.0
        for (jd, i_d), (jh, i_h), (jw, i_w) in itertools.product(
                _taps(od, n, k, s, d, crop), _taps(oh, n, k, s, d, crop),
                _taps(ow, n, k, s, d, crop)):
            want += float(x[0, i_d, i_h, i_w, 0]) * float(w[jd, jh, jw, 0, 0])
        assert y[0, od, oh, ow, 0] == want, (od, oh, ow)

    # grad_input gathers from all over y (used as grad_output)
    t0 = time.perf_counter()
    (gx, _, _) = tconv3d.conv_transpose3d_backward(y, x, w, compute=("input",), **kwargs)
    t_input = time.perf_counter() - t0
    for i_d, i_h, i_w in itertools.chain([(n - 1, n - 1, n - 1), (0, 0, 0)],
                                         rng.integers(0, n, (2000, 3))):
        want = 0.0
        for (jd, od), (jh, oh), (jw, ow) in itertools.product(
                _input_taps(i_d, m, k, s, d, crop), _input_taps(i_h, m, k, s, d, crop),
                _input_taps(i_w, m, k, s, d, crop)):
            want += float(y[0, od, oh, ow, 0]) * float(w[jd, jh, jw, 0, 0])
        assert gx[0, i_d, i_h, i_w, 0] == want, (i_d, i_h, i_w)
    del gx

    # grad_kernel reduces over all of y; a sparse x keeps the exact answer computable
    x[...] = 0
    points = [(n - 1, n - 1, n - 1), (n - 2, n - 1, n - 3), *map(tuple, rng.integers(0, n, (60, 3)))]
    for p in points:
        x[(0, *p, 0)] = rng.integers(1, 3)
    t0 = time.perf_counter()
    (_, gw, _) = tconv3d.conv_transpose3d_backward(y, x, w, compute=("kernel",), **kwargs)
    t_kernel = time.perf_counter() - t0
    want = np.zeros(w.shape)
    for p in set(points):
        taps = [_input_taps(i, m, k, s, d, crop) for i in p]
        for (jd, od), (jh, oh), (jw, ow) in itertools.product(*taps):
            want[jd, jh, jw, 0, 0] += float(y[0, od, oh, ow, 0]) * float(x[(0, *p, 0)])
    np.testing.assert_array_equal(gw, want)
    print(f"\nbigmem: output {shape} ({np.prod(shape)} elements, {y.nbytes / 2**30:.1f} GiB): "
          f"forward {t_forward:.1f} s, grad_input {t_input:.1f} s, grad_kernel {t_kernel:.1f} s")


# -------------------------------------------------------------------------- leaks


def _rss():
    """Resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="reads /proc/self/statm (Linux)")
LEAK_LIMIT = 4 << 20  # "flat": a few MiB of allocator noise


def _rss_growth(call, n):
    for _ in range(min(n, 500)):  # warm up: caches, OpenMP pools, allocator arenas
        call()
    gc.collect()
    before = _rss()
    for _ in range(n):
        call()
    gc.collect()
    return _rss() - before


@needs_proc
def test_no_leak_over_ten_thousand_calls(rng):
    x = rng.standard_normal((1, 3, 4, 3, 2)).astype(np.float32)
    xf = np.asfortranarray(rng.standard_normal((1, 2, 3, 3, 2)))   # another dtype and layout
    w = rng.standard_normal((2, 3, 2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    kw = dict(strides=(2, 1, 2), padding="same")
    kwf = dict(strides=1, dilation_rate=2, data_format="channels_first")
    g = np.ones(tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kw), np.float32)
    gf = np.ones(tconv3d.conv_transpose3d_output_shape(xf.shape, w.shape, **kwf))
    counter = itertools.count()

    def call():
        i = next(counter)
        # one call in 50 with an OpenMP team (slow to wake on a loaded machine)
        threads = 2 if i % 50 == 0 else 1
        if i % 2:
            tconv3d.conv_transpose3d(x, w, b, num_threads=threads, **kw)
            tconv3d.conv_transpose3d_backward(g, x, w, num_threads=threads, **kw)
        else:
            tconv3d.conv_transpose3d(xf, w, num_threads=threads, **kwf)
            tconv3d.conv_transpose3d_backward(gf, xf, w, num_threads=threads, **kwf)

    growth = _rss_growth(call, 10**4)
    assert growth < LEAK_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB over 10**4 calls"


def _failing_calls():
    x, w = np.ones((1, 2, 2, 2, 2)), np.ones((2, 2, 2, 3, 2))
    g = np.ones((1, 4, 4, 4, 3))
    huge = np.broadcast_to(np.float16(0), (65537, 65537, 65537, 1, 2))
    return [
        lambda: tconv3d.conv_transpose3d(x.astype(complex), w),                 # TypeError
        lambda: tconv3d.conv_transpose3d(x, w, strides=0),                      # ValueError
        lambda: tconv3d.conv_transpose3d(x, np.ones((2, 2, 2, 3, 5))),          # channels
        lambda: tconv3d.conv_transpose3d(x, w, np.ones(4)),                     # bias
        lambda: tconv3d.conv_transpose3d(x, w, num_threads=0),                  # threads
        lambda: tconv3d.conv_transpose3d(x, w, strides=2**14),                  # MemoryError
        lambda: tconv3d.conv_transpose3d(x, w, strides=2**25),                  # index range
        lambda: tconv3d.conv_transpose3d(x, huge, padding="same", output_padding=0),  # copy
        lambda: tconv3d.conv_transpose3d_backward(g[:, :3], x, w),              # grad_output
        lambda: tconv3d.conv_transpose3d_backward(g, x, w, compute="all"),      # compute
        lambda: tconv3d.conv_transpose3d_output_shape((1, 2.5, 2, 2, 2), w.shape),
    ]


@needs_proc
def test_no_leak_from_refused_calls():
    calls = _failing_calls()
    counter = itertools.count()

    def call():
        try:
            calls[next(counter) % len(calls)]()
        except (ValueError, TypeError, MemoryError):
            return
        raise AssertionError("a bad call was accepted")

    growth = _rss_growth(call, 10**4)
    assert growth < LEAK_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB over 10**4 refusals"
