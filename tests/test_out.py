"""``out=``: results written into caller buffers equal fresh results bit for bit, and bad
buffers are refused with a message naming them before any work."""
import numpy as np
import pytest

import tconv3d
from helpers import random_problem

GEOMETRY = dict(strides=(2, 1, 3), padding="same", dilation_rate=1)


def _problem(rng, data_format="channels_last", dtype=np.float64):
    return random_problem(rng, batch=2, spatial=(5, 4, 3), cin=3, cout=4, kernel=(3, 2, 4),
                          data_format=data_format, dtype=dtype)


def _garbage(shape, dtype, layout):
    """A buffer of ``shape`` full of NaN, in one of several memory layouts."""
    if layout == "C":
        return np.full(shape, np.nan, dtype)
    if layout == "F":
        return np.asfortranarray(np.full(shape, np.nan, dtype))
    big = np.full(tuple(2 * n for n in shape), np.nan, dtype)     # every other element
    return big[tuple(slice(None, None, 2) for _ in shape)]


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_into_any_layout_equals_a_fresh_result(rng, layout, data_format, dtype):
    x, w, b = _problem(rng, data_format, dtype)
    kw = dict(GEOMETRY, data_format=data_format)
    want = tconv3d.conv_transpose3d(x, w, b, **kw)
    out = _garbage(want.shape, dtype, layout)
    got = tconv3d.conv_transpose3d(x, w, b, out=out, **kw)
    assert got is out
    assert np.array_equal(got, want)          # every element written, bitwise equal


@pytest.mark.parametrize("compute", [("input", "kernel", "bias"), ("kernel",), ("input",)])
def test_backward_into_buffers(rng, compute):
    x, w, b = _problem(rng)
    y = tconv3d.conv_transpose3d(x, w, b, **GEOMETRY)
    g = rng.standard_normal(y.shape)
    want = tconv3d.conv_transpose3d_backward(g, x, w, compute=compute, **GEOMETRY)
    out = (_garbage(x.shape, np.float64, "F"), np.full(w.shape, np.nan),
           np.full(4, np.nan))
    got = tconv3d.conv_transpose3d_backward(g, x, w, compute=compute, out=out, **GEOMETRY)
    for name, buffer, result, fresh in zip(("input", "kernel", "bias"), out, got, want):
        if name in compute:
            assert result is buffer and np.array_equal(result, fresh)
        else:
            assert result is None and np.isnan(buffer).all()   # untouched
    partial = tconv3d.conv_transpose3d_backward(g, x, w, out=(None, out[1], None),
                                                **GEOMETRY)
    assert partial[1] is out[1] and partial[0] is not None and partial[2] is not None


BAD_OUT = [  # (what, make(shape), exception, message)
    ("shape", lambda s: np.zeros(s[:4] + (3,)), ValueError,
     r"`out` must have shape \(2, 10, 4, 9, 4\), got \(2, 10, 4, 9, 3\)"),
    ("dtype", lambda s: np.zeros(s, np.float32), TypeError,
     r"`out` must have dtype float64 \(the dtype the call computes in\), got float32"),
    ("list", lambda s: np.zeros(s).tolist(), TypeError, r"`out` must be a numpy.ndarray"),
    ("read-only", lambda s: _readonly(np.zeros(s)), ValueError, r"`out` is read-only"),
    ("broadcast", lambda s: np.lib.stride_tricks.as_strided(np.zeros(s), s,
                                                            (0,) + np.zeros(s).strides[1:]),
     ValueError, r"`out` must be aligned, with a distinct element per index"),
]


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("what, make, exc, match", BAD_OUT, ids=[c[0] for c in BAD_OUT])
def test_bad_forward_buffers_are_refused(rng, what, make, exc, match):
    x, w, b = _problem(rng)
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **GEOMETRY)
    with pytest.raises(exc, match=match):
        tconv3d.conv_transpose3d(x, w, b, out=make(shape), **GEOMETRY)


def test_out_sharing_memory_with_an_input_is_refused(rng):
    x, w, b = _problem(rng)
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **GEOMETRY)
    buffer = np.zeros(int(np.prod(shape)) + x.size)
    x_view = buffer[:x.size].reshape(x.shape)
    x_view[...] = x
    out = buffer[x.size - 1:-1].reshape(shape)          # overlaps x by one element
    with pytest.raises(ValueError, match="`out` shares memory with `x`"):
        tconv3d.conv_transpose3d(x_view, w, b, out=out, **GEOMETRY)
    separate = buffer[x.size:].reshape(shape)           # adjacent, not overlapping
    got = tconv3d.conv_transpose3d(x_view, w, b, out=separate, **GEOMETRY)
    assert np.array_equal(got, tconv3d.conv_transpose3d(x, w, b, **GEOMETRY))


def test_bad_backward_buffers_are_refused(rng):
    x, w, b = _problem(rng)
    g = np.ones(tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **GEOMETRY))
    with pytest.raises(ValueError, match=r"`out\[1\] \(grad_kernel\)` must be C-contiguous"):
        tconv3d.conv_transpose3d_backward(g, x, w, out=(None, np.zeros(w.shape, order="F"),
                                                        None), **GEOMETRY)
    with pytest.raises(TypeError, match=r"`out` must be a tuple \(grad_input, grad_kernel"):
        tconv3d.conv_transpose3d_backward(g, x, w, out=np.zeros(x.shape), **GEOMETRY)
    shared = np.zeros(x.size + 4)
    with pytest.raises(ValueError, match="must not share memory with each other"):
        tconv3d.conv_transpose3d_backward(
            g, x, w, out=(shared[:x.size].reshape(x.shape), None, shared[x.size - 4:x.size]),
            **GEOMETRY)
    with pytest.raises(ValueError, match=r"`out\[0\] \(grad_input\)` shares memory with "
                                         r"`grad_output`"):
        tconv3d.conv_transpose3d_backward(g, x, w, out=(g.reshape(-1)[:x.size].reshape(x.shape),
                                                        None, None), **GEOMETRY)
