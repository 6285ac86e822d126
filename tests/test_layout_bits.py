"""The bits of every result depend only on the problem, never on the memory layout.

The summation order of each output element (forward) and each gradient element is a
function of the shapes, the geometry and the SIMD variant only: C, Fortran, sliced,
negatively strided, permuted and channels_first inputs give byte-identical results, on
every variant this CPU runs (a plain run only exercises the widest one). The same holds
for ``tconv3d.dask`` over random chunkings, which computes each chunk from a different
view of the input.

Channel counts cover, for every vector length (2 to 16 elements), the two-vector and
one-vector GEMM tiles and the scalar column remainder, whose multiply-adds GCC once
compiled fused or not depending on the strides (issue 16, item 4).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tconv3d
from tconv3d import _kernels
from helpers import each_simd_variant

VARIANTS = _kernels.simd_variants_supported()
EXAMPLES = int(os.environ.get("TCONV3D_HYPOTHESIS_EXAMPLES", "40"))
PROFILE = settings(deadline=None, max_examples=EXAMPLES, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CHANNELS = (1, 2, 3, 5, 7, 9, 17, 35)


# ----------------------------------------------------------------------------- layouts

def _sliced(a):
    """Every other element on every axis of a larger buffer (no unit stride anywhere)."""
    big = np.full(tuple(2 * n for n in a.shape), np.nan, a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _negative(a):
    axes = tuple(range(1, a.ndim))
    return np.flip(np.ascontiguousarray(np.flip(a, axes)), axes)


def _permuted(a):
    perm = (4, 2, 0, 3, 1)
    return np.ascontiguousarray(a.transpose(perm)).transpose(np.argsort(perm))


LAYOUTS = {"C": np.ascontiguousarray, "F": np.asfortranarray, "sliced": _sliced,
           "negative": _negative, "permuted": _permuted}


def _to_format(a, fmt):
    """A channels_last array in `fmt`, as a view (the layout of the memory stays)."""
    return a if fmt == "channels_last" else np.moveaxis(a, -1, 1)


def _from_format(a, fmt):
    return a if fmt == "channels_last" else np.moveaxis(a, 1, -1)


def _results(x, w, b, g, kwargs):
    """Forward and the three gradients, channels_last, C-ordered."""
    fmt = kwargs["data_format"]
    y = tconv3d.conv_transpose3d(_to_format(x, fmt), w, b, **kwargs)
    gi, gk, gb = tconv3d.conv_transpose3d_backward(_to_format(g, fmt), _to_format(x, fmt), w,
                                                    **kwargs)
    return [np.ascontiguousarray(_from_format(y, fmt)),
            np.ascontiguousarray(_from_format(gi, fmt)), gk, gb]


def _assert_same_bits(results, expected, what):
    for got, want, name in zip(results, expected, ("forward", "grad_input", "grad_kernel",
                                                   "grad_bias")):
        assert got.dtype == want.dtype and got.shape == want.shape, (what, name)
        assert got.tobytes() == want.tobytes(), f"{name} differs in the last bits: {what}"


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.integers(1, 2))
    cin, cout = draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(CHANNELS))
    spatial = tuple(draw(st.integers(1, 5)) for _ in range(3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    kwargs = dict(strides=tuple(draw(st.integers(1, 3)) for _ in range(3)),
                  dilation_rate=tuple(draw(st.integers(1, 2)) for _ in range(3)),
                  padding=draw(st.sampled_from(["valid", "same"])))
    try:
        out = tconv3d.conv_transpose3d_output_shape((batch, *spatial, cin),
                                                    (*kernel, cout, cin), **kwargs)
    except ValueError:
        out = None
    assume(out is not None)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((batch, *spatial, cin)).astype(dtype)
    w = rng.standard_normal((*kernel, cout, cin)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    g = rng.standard_normal(out).astype(dtype)
    return x, w, b, g, kwargs


@PROFILE
@given(problems())
def test_every_layout_and_format_gives_the_same_bits(problem):
    x, w, b, g, kwargs = problem
    for variant in each_simd_variant():
        expected = _results(x, w, b, g, dict(kwargs, data_format="channels_last"))
        for fmt in ("channels_last", "channels_first"):
            for name, layout in LAYOUTS.items():
                got = _results(layout(x), np.asfortranarray(w), b, layout(g),
                               dict(kwargs, data_format=fmt))
                _assert_same_bits(got, expected, f"{variant}, {fmt}, {name} x and grad_output")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_issue_reproduction(rng, dtype):
    """Float64, one output channel, two input channels: C and Fortran x differed."""
    for variant in each_simd_variant():
        for _ in range(50):
            x = rng.standard_normal((1, 1, 1, 2, 2)).astype(dtype)
            w = rng.standard_normal((1, 1, 1, 1, 2)).astype(dtype)
            assert (tconv3d.conv_transpose3d(x, w).tobytes()
                    == tconv3d.conv_transpose3d(np.asfortranarray(x), w).tobytes()), variant


def test_thread_count_does_not_change_the_bits(rng):
    x = rng.standard_normal((2, 6, 5, 9, 7))
    w = rng.standard_normal((3, 2, 3, 9, 7))
    g = rng.standard_normal(tconv3d.conv_transpose3d_output_shape(x.shape, w.shape,
                                                                  strides=2))
    for variant in each_simd_variant():
        expected = None
        for threads in (1, 2, 3):
            y = tconv3d.conv_transpose3d(np.asfortranarray(x), w, strides=2,
                                         num_threads=threads)
            grads = tconv3d.conv_transpose3d_backward(g, x, w, strides=2,
                                                      num_threads=threads)
            got = [y.tobytes(), *(a.tobytes() for a in grads)]
            assert expected is None or got == expected, (variant, threads)
            expected = got


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, strides", [((2, 9, 10, 11, 4), (3, 2, 3), (2, 1, 2)),
                                                    ((1, 8, 32, 64, 4), (3, 3, 3), (2, 2, 2)),
                                                    ((2, 1, 12, 40, 4), (1, 3, 3), (1, 2, 2))])
def test_channels_first_grad_output_in_slabs_gives_the_same_bits(rng, dtype, shape, kernel,
                                                                  strides):
    """A channels_first grad_output with channel planes of 512 elements or more: the
    input gradient copies it channels-last slab by slab of depth planes (2 MiB of them:
    the second shape's 16 planes of 256 or 512 KiB take 3 or 8 slabs), each slab a
    problem of its own; every layout must give the channels_last bits, for thread counts
    and SIMD variants alike."""
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((*kernel, 8, shape[-1])).astype(dtype)
    kwargs = dict(strides=strides, padding="same")
    g = rng.standard_normal(tconv3d.conv_transpose3d_output_shape(x.shape, w.shape,
                                                                  **kwargs)).astype(dtype)
    assert np.prod(g.shape[1:4]) >= 512
    first = dict(kwargs, data_format="channels_first")
    for variant in each_simd_variant():
        expected = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)[0].tobytes()
        for threads in (1, 2):
            gx = tconv3d.conv_transpose3d_backward(
                np.ascontiguousarray(np.moveaxis(g, -1, 1)),
                np.ascontiguousarray(np.moveaxis(x, -1, 1)), w, num_threads=threads,
                **first)[0]
            assert np.moveaxis(gx, 1, -1).tobytes() == expected, (variant, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups, filters", [(1, 5), (3, 5), (1, 13), (2, 9)])
def test_large_channels_first_outputs_give_the_same_bits(rng, dtype, groups, filters):
    """Outputs above the kernels' streaming threshold (2 MiB): channels_first tiles are
    kept for blocks of rows and transposed into the channel planes, their whole 64-byte
    lines with non-temporal stores, two 8x8 (4x4) blocks at a time; the width (42) and
    the filters per group leave edges (5: fewer than a float block; 13, 9: a last block
    overlapping the one before), and ``out=`` one element off alignment moves the line
    boundaries. The input is copied channels-last first."""
    x = rng.standard_normal((2, 20, 20, 21, 2 * groups)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, filters, 2 * groups)).astype(dtype)
    kwargs = dict(strides=2, padding="same", groups=groups)
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)
    assert np.prod(shape) * x.itemsize > 2 * 2**20
    x_first = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    before = x_first.copy()
    first_shape = (shape[0], shape[-1], *shape[1:-1])
    for variant in each_simd_variant():
        expected = tconv3d.conv_transpose3d(x, w, **kwargs).tobytes()
        for threads in (1, 2):
            fresh = tconv3d.conv_transpose3d(x_first, w, data_format="channels_first",
                                             num_threads=threads, **kwargs)
            off = np.empty(np.prod(shape) + 1, dtype)[1:].reshape(first_shape)
            tconv3d.conv_transpose3d(x_first, w, data_format="channels_first", out=off,
                                     num_threads=threads, **kwargs)
            for y in (fresh, off):
                assert np.moveaxis(y, 1, -1).tobytes() == expected, (variant, threads)
    np.testing.assert_array_equal(x_first, before)


# --------------------------------------------------------------------------- dask


def _random_chunks(rng, n):
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(0, n), replace=False)) \
        if n > 1 else []
    return tuple(np.diff([0, *cuts, n]).tolist())


@pytest.mark.parametrize("variant", VARIANTS)
def test_dask_random_chunkings_are_bitwise_channels_first_float64(rng, variant):
    """The issue's failure: float64, channels_first, random chunkings. Blocks are fresh
    C-ordered arrays, as a computed or stored dask array has: a one-voxel block then has
    unit channel stride, which the whole volume has not."""
    da = pytest.importorskip("dask.array")
    import tconv3d.dask as tdask

    before = _kernels.simd_variant()
    _kernels.set_simd_variant(variant)
    try:
        for trial in range(60):
            spatial = tuple(rng.integers(1, 5, size=3).tolist())
            kernel = tuple(rng.integers(1, 4, size=3).tolist())
            cin, cout = int(rng.integers(1, 4)), int(rng.choice([1, 2, 5]))
            kwargs = dict(strides=tuple(rng.integers(1, 4, size=3).tolist()),
                          dilation_rate=tuple(rng.integers(1, 3, size=3).tolist()),
                          padding=["valid", "same"][trial % 2],
                          data_format="channels_first")
            x = rng.standard_normal((2, cin, *spatial))
            w = rng.standard_normal((*kernel, cout, cin))
            b = rng.standard_normal(cout)
            expected = tconv3d.conv_transpose3d(x, w, b, **kwargs)
            chunks = ((1, 1), cin, *(_random_chunks(rng, n) for n in spatial))
            xd = da.from_array(x, chunks=chunks)
            if trial % 3:
                xd = xd.map_blocks(np.ascontiguousarray)   # blocks not views of x
            got = tdask.conv_transpose3d(xd, w, b, **kwargs).compute(scheduler="sync")
            assert got.tobytes() == expected.tobytes(), (variant, chunks, kwargs)
    finally:
        _kernels.set_simd_variant(before)
