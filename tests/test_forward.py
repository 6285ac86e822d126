"""Forward pass against the numpy reference and the real peers (PyTorch, Keras)."""
import itertools

import numpy as np
import pytest

import tconv3d
from helpers import each_simd_variant, random_problem, to_torch_args, tol
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

FORMATS = ["channels_last", "channels_first"]
DTYPES = [np.float32, np.float64]


def _output_paddings(stride):
    return [None, 0, stride - 1] if stride > 1 else [None, 0]


GRID = [
    (k, s, d, pad, op)
    for k, s, d, pad in itertools.product(range(1, 6), range(1, 4), (1, 2), ("valid", "same"))
    for op in _output_paddings(s)
]


def _shapes(k, s, d, dtype, fmt):
    """Odd, non-cubic sizes that change with the parameters (batch 1..3, channels 1..9)."""
    seed = k * 31 + s * 7 + d
    return dict(batch=1 + seed % 3, spatial=(2 + seed % 3, 3, 1 + (seed // 3) % 4),
                cin=1 + seed % 9, cout=1 + (seed * 5) % 9,
                kernel=(k, max(1, k - 1) if k % 2 else k, min(5, k + 1)),
                data_format=fmt, dtype=dtype)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,d,pad,op", GRID)
def test_forward_matches_reference(rng, k, s, d, pad, op, dtype, fmt):
    x, w, b = random_problem(rng, **_shapes(k, s, d, dtype, fmt))
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d, data_format=fmt)
    try:
        expected = conv_transpose3d_ref(x, w, b, **kwargs)
    except ValueError:
        expected = None
    if expected is None or 0 in expected.shape:
        with pytest.raises(ValueError, match="output of length"):
            tconv3d.conv_transpose3d(x, w, b, **kwargs)
        return
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    assert y.dtype == dtype
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_strides_and_dilations_per_axis(rng, dtype):
    x, w, b = random_problem(rng, batch=2, spatial=(5, 4, 3), cin=4, cout=3,
                             kernel=(3, 2, 4), data_format="channels_last", dtype=dtype)
    kwargs = dict(strides=(1, 2, 3), dilation_rate=(2, 1, 3), output_padding=(0, 1, 2),
                  padding="same")
    np.testing.assert_allclose(tconv3d.conv_transpose3d(x, w, b, **kwargs),
                               conv_transpose3d_ref(x, w, b, **kwargs), **tol(dtype))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_single_channel_rows_by_phase(rng, s, dtype, fmt):
    """One channel in and out: a row accumulates phase by phase (outputs s apart) and is
    put back in order. Widths over several runs (512 outputs each), odd lengths,
    dilation, output_padding and more taps than the stride."""
    for width, k, d, pad, op in [(301, 4, 1, "same", None), (700, 3, 1, "valid", s - 1),
                                 (5, 5, 2, "same", None), (129, 2, 1, "valid", None),
                                 (257, 7, 2, "valid", 0)]:
        x, w, b = random_problem(rng, batch=2, spatial=(2, 3, width), cin=1, cout=1,
                                 kernel=(2, 1, k), data_format=fmt, dtype=dtype)
        kwargs = dict(strides=(2, 1, s), padding=pad, dilation_rate=(1, 1, d),
                      output_padding=None if op is None else (0, 0, op), data_format=fmt)
        np.testing.assert_allclose(tconv3d.conv_transpose3d(x, w, b, **kwargs),
                                   conv_transpose3d_ref(x, w, b, **kwargs), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_channel_one_input_per_tap_rounds_as_longer_rows(rng, dtype):
    """A stride larger than the input row gives every width tap one input, added without
    the axpy call: its rounding (fused from AVX2 on) must be the axpy's, so an output
    has the same bits whether its row holds one input or more; the large-stride layer
    (4096 taps, stride 4096) matches the reference, on every variant."""
    x, w, b = random_problem(rng, batch=1, spatial=(2, 2, 3), cin=1, cout=1,
                             kernel=(1, 2, 5), data_format="channels_last", dtype=dtype)
    kwargs = dict(strides=(1, 2, 7))
    wide = rng.standard_normal((1, 16, 16, 1, 1)).astype(dtype)
    long_kernel = rng.standard_normal((1, 1, 4096, 1, 1)).astype(dtype)
    for variant in each_simd_variant():
        one = tconv3d.conv_transpose3d(x[:, :, :, :1], w, b, **kwargs)
        more = tconv3d.conv_transpose3d(x, w, b, **kwargs)
        np.testing.assert_array_equal(one[:, :, :, :7], more[:, :, :, :7], err_msg=variant)
        np.testing.assert_allclose(
            tconv3d.conv_transpose3d(wide, long_kernel, strides=(1, 1, 4096)),
            conv_transpose3d_ref(wide, long_kernel, strides=(1, 1, 4096)), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_larger_than_the_caches(rng, dtype):
    """Outputs over 2 MiB are accumulated a block of rows at a time and stored with
    non-temporal stores (whole 64-byte lines; the partial lines at the ends of a block,
    129 channels making rows of no whole lines, with ordinary stores): the same values
    as the reference, the same bits in both layouts, for 1 and 2 threads and into an
    `out=` buffer that starts off a cache line."""
    x, w, b = random_problem(rng, batch=1, spatial=(8, 8, 9), cin=5, cout=129,
                             kernel=(2, 2, 3), data_format="channels_last", dtype=dtype)
    kwargs = dict(strides=2, padding="same", activation="relu")
    expected = np.maximum(conv_transpose3d_ref(x, w, b, strides=2, padding="same"), 0)
    assert expected.nbytes > 2 * 2**20
    first = np.moveaxis(tconv3d.conv_transpose3d(
        np.moveaxis(x, -1, 1), w, b, data_format="channels_first", **kwargs), 1, -1)
    buffer = np.empty(expected.size + 1, dtype)
    off_line = buffer[1:].reshape(expected.shape)
    for threads in (1, 2):
        y = tconv3d.conv_transpose3d(x, w, b, num_threads=threads, **kwargs)
        np.testing.assert_allclose(y, expected, **tol(dtype))
        np.testing.assert_array_equal(y, first)
        tconv3d.conv_transpose3d(x, w, b, num_threads=threads, out=off_line, **kwargs)
        np.testing.assert_array_equal(off_line, y)


def test_without_bias_equals_zero_bias(rng):
    x, w, b = random_problem(rng, batch=1, spatial=(3, 3, 3), cin=2, cout=3,
                             kernel=(2, 2, 2), data_format="channels_last", dtype=np.float64)
    np.testing.assert_array_equal(tconv3d.conv_transpose3d(x, w, strides=2),
                                  tconv3d.conv_transpose3d(x, w, np.zeros(3), strides=2))


def test_padding_is_case_insensitive(rng):
    x, w, b = random_problem(rng, batch=1, spatial=(3, 4, 5), cin=2, cout=2,
                             kernel=(3, 3, 3), data_format="channels_last", dtype=np.float64)
    np.testing.assert_array_equal(tconv3d.conv_transpose3d(x, w, padding="SAME", strides=2),
                                  tconv3d.conv_transpose3d(x, w, padding="same", strides=2))


LAYOUTS = {
    "fortran": lambda a: np.asfortranarray(a),
    "sliced": lambda a: np.repeat(a, 2, axis=2)[:, :, ::2],
    "negative": lambda a: a[:, ::-1, :, ::-1].copy()[:, ::-1, :, ::-1],
    "transposed_channels": lambda a: np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 0)), 0, -1),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_any_memory_layout(rng, layout, fmt):
    x, w, b = random_problem(rng, batch=2, spatial=(3, 4, 5), cin=3, cout=4,
                             kernel=(3, 2, 3), data_format=fmt, dtype=np.float64)
    xv, wv = LAYOUTS[layout](x), LAYOUTS[layout](w)
    assert np.array_equal(xv, x) and np.array_equal(wv, w)
    kwargs = dict(strides=(2, 1, 3), padding="same", data_format=fmt)
    np.testing.assert_allclose(tconv3d.conv_transpose3d(xv, wv, b[::-1].copy()[::-1], **kwargs),
                               conv_transpose3d_ref(x, w, b, **kwargs), **tol(np.float64))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.float16, np.uint8])
def test_other_real_dtypes(rng, dtype):
    """Integers and bool alone compute in float64, float16 in float32 (tests/test_dtypes.py
    has every pair)."""
    x = (rng.standard_normal((1, 3, 3, 3, 2)) * 3).astype(dtype)
    w = (rng.standard_normal((2, 2, 2, 2, 2)) * 3).astype(dtype)
    y = tconv3d.conv_transpose3d(x, w, strides=2)
    assert y.dtype == (np.float32 if dtype == np.float16 else np.float64)
    np.testing.assert_allclose(y, conv_transpose3d_ref(x, w, strides=2), **tol(y.dtype))


def test_mixed_float_dtypes_promote(rng):
    x = rng.standard_normal((1, 3, 3, 3, 2)).astype(np.float32)
    w = rng.standard_normal((2, 2, 2, 2, 2))
    assert tconv3d.conv_transpose3d(x, w).dtype == np.float64
    assert tconv3d.conv_transpose3d(x, w.astype(np.float16)).dtype == np.float32
    # a list has no dtype: it does not widen the call (as NumPy 2's Python scalars)
    assert tconv3d.conv_transpose3d(x.tolist(), w.astype(np.float32)).dtype == np.float32
    assert tconv3d.conv_transpose3d(x.tolist(), w.tolist()).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.complex128, object, "U3"])
def test_non_real_dtypes_raise_type_error(dtype):
    x = np.ones((1, 2, 2, 2, 1)).astype(dtype)
    with pytest.raises(TypeError, match="`x` must hold real numbers"):
        tconv3d.conv_transpose3d(x, np.ones((1, 1, 1, 1, 1)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_threads_give_bitwise_identical_results(rng, fmt):
    x, w, b = random_problem(rng, batch=3, spatial=(7, 11, 13), cin=5, cout=7,
                             kernel=(3, 3, 3), data_format=fmt, dtype=np.float32)
    runs = [tconv3d.conv_transpose3d(x, w, b, strides=2, padding="same", data_format=fmt,
                                     num_threads=n) for n in (1, 2, 3, 8)]
    for y in runs[1:]:
        assert y.tobytes() == runs[0].tobytes()


def test_num_threads_none_honours_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from tconv3d import _kernels
    if not _kernels.openmp_enabled():
        pytest.skip("built without OpenMP")
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert _kernels.default_num_threads() == 1


def test_show_config_reports_build(capsys):
    tconv3d.show_config()
    out = capsys.readouterr().out
    assert tconv3d.__version__ in out and "OpenMP" in out and "SIMD" in out
    from tconv3d import _kernels
    assert f"bfloat16:            {_kernels.bf16_variant()} " in out


# --------------------------------------------------------------------------- peers


TORCH_GRID = [
    (k, s, d, pad, op)
    for k, s, d, pad in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2), ("valid", "same"))
    for op in _output_paddings(s)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,d,pad,op", TORCH_GRID)
def test_forward_matches_torch(rng, k, s, d, pad, op, dtype):
    torch = pytest.importorskip("torch")
    x, w, b = random_problem(rng, batch=2, spatial=(3, 4, 5), cin=3, cout=2,
                             kernel=(k, k, k), data_format="channels_first", dtype=dtype)
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d)
    y = tconv3d.conv_transpose3d(x, w, b, data_format="channels_first", **kwargs)
    pads, ops = to_torch_args(kwargs, x.shape[2:], w.shape[:3], y.shape[2:])
    if any(o >= max(s, d) for o in ops):
        pytest.skip("torch has no output_padding this large")
    expected = torch.nn.functional.conv_transpose3d(
        torch.from_numpy(x), torch.from_numpy(w.transpose(4, 3, 0, 1, 2).copy()),
        torch.from_numpy(b), stride=s, padding=pads, output_padding=ops, dilation=d)
    expected = expected[:, :, :y.shape[2], :y.shape[3], :y.shape[4]].numpy()
    np.testing.assert_allclose(y, expected, **tol(dtype))


KERAS_GRID = [case for case in GRID if case[1] == 1 or case[2] == 1]  # Keras: no s>1 with d>1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,d,pad,op", KERAS_GRID)
def test_forward_matches_keras(rng, k, s, d, pad, op, dtype, fmt):
    keras = pytest.importorskip("keras")
    shapes = _shapes(k, s, d, dtype, fmt)
    x, w, b = random_problem(rng, **shapes)
    layer = keras.layers.Conv3DTranspose(
        w.shape[3], w.shape[:3], strides=s, padding=pad, output_padding=op, dilation_rate=d,
        data_format=fmt, dtype="float64" if dtype == np.float64 else "float32")
    try:
        layer.build(x.shape)
        out_shape = layer.compute_output_shape(x.shape)
    except ValueError:
        pytest.skip("Keras refuses these arguments")
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d, data_format=fmt)
    if any(n is not None and n < 1 for n in out_shape):
        with pytest.raises(ValueError, match="output of length"):
            tconv3d.conv_transpose3d(x, w, b, **kwargs)
        return
    layer.set_weights([w, b])
    expected = keras.ops.convert_to_numpy(layer(x))
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    assert y.shape == expected.shape == tuple(out_shape)
    np.testing.assert_allclose(y, expected, **tol(dtype))


# Layers whose tap matrices hold 64 KiB or more (Cin * Cout * itemsize) run the forward in
# blocks of output rows, each tap matrix taken for a whole block (the compiled core's
# weight-heavy path): checked here on small volumes with many channels. The forward's tap
# matrices wider than 128 bytes are stored in column panels, the last one partial unless
# 128 bytes divide a row: the lighter layers (row-by-row path) and odd widths check that.
MANY_CHANNELS = [
    # (dtype, cin, cout, groups)
    (np.float32, 5, 70, 1),      # panels of 32, 32 and 6 columns
    (np.float32, 24, 80, 2),     # 40 per group: 32 + 8
    (np.float64, 7, 37, 1),      # panels of 16, 16 and 5 columns
    (np.float32, 128, 128, 1),
    (np.float64, 96, 96, 1),
    (np.float32, 256, 256, 2),
    (np.float64, 64, 128, 1),
    (np.float64, 97, 85, 1),     # odd channels: the narrower vector tiles and scalar columns
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,s,d,pad,op", [(3, 2, 1, "same", None), (2, 2, 1, "valid", None),
                                          (4, 2, 1, "same", 1), (3, 2, 2, "valid", 1),
                                          ((1, 3, 2), (1, 2, 3), 1, "valid", 0)])
@pytest.mark.parametrize("dtype,cin,cout,groups", MANY_CHANNELS)
def test_many_channel_layers_match_reference(rng, dtype, cin, cout, groups, k, s, d, pad, op,
                                             fmt):
    kernel = (k,) * 3 if np.isscalar(k) else k
    x, w, b = random_problem(rng, batch=2, spatial=(2, 3, 4), cin=cin, cout=cout,
                             kernel=kernel, data_format=fmt, dtype=dtype)
    w = w[..., : cout // groups, :]
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d,
                  data_format=fmt, groups=groups)
    y = tconv3d.conv_transpose3d(x, w, b, num_threads=1, **kwargs)
    np.testing.assert_allclose(y, conv_transpose3d_ref(x, w, b, **kwargs),
                               rtol=tol(dtype)["rtol"] * 10, atol=tol(dtype)["atol"] * 10)
    relu = tconv3d.conv_transpose3d(x, w, b, activation="relu", num_threads=1, **kwargs)
    np.testing.assert_array_equal(relu, np.maximum(y, 0))
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=1, **kwargs)
    for a, e in zip(grads, conv_transpose3d_backward_ref(g, x, w, **kwargs)):
        np.testing.assert_allclose(a, e, rtol=tol(dtype)["rtol"] * 10,
                                   atol=tol(dtype)["atol"] * 100)
    for threads in (2, 3):
        assert tconv3d.conv_transpose3d(x, w, b, num_threads=threads,
                                        **kwargs).tobytes() == y.tobytes()
        for a, ref in zip(tconv3d.conv_transpose3d_backward(g, x, w, num_threads=threads,
                                                            **kwargs), grads):
            assert a.tobytes() == ref.tobytes()


# PyTorch's integer padding: each axis cropped by p on both sides, output_padding < max(s, d)
TORCH_PADDING_GRID = [
    (k, s, d, p, op)
    for k, s, d in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2))
    for p in range(3) for op in range(max(s, d))
    if all((n - 1) * s + (k - 1) * d + 1 - 2 * p + op >= 1 for n in (2, 3, 4))
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,s,d,p,op", TORCH_PADDING_GRID)
def test_torch_integer_padding_matches_reference_and_torch(rng, k, s, d, p, op, fmt):
    x, w, b = random_problem(rng, batch=2, spatial=(2, 3, 4), cin=3, cout=2,
                             kernel=(k, k, k), data_format=fmt, dtype=np.float64)
    kw = dict(strides=s, padding=(p, p, p), output_padding=op, dilation_rate=d,
              data_format=fmt)
    y = tconv3d.conv_transpose3d(x, w, b, **kw)
    np.testing.assert_allclose(y, conv_transpose3d_ref(x, w, b, **kw), rtol=1e-12,
                               atol=1e-12)
    assert tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kw) == y.shape
    g = rng.standard_normal(y.shape)
    for mine, ref in zip(tconv3d.conv_transpose3d_backward(g, x, w, **kw),
                         conv_transpose3d_backward_ref(g, x, w, **kw)):
        np.testing.assert_allclose(mine, ref, rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x if fmt == "channels_first" else np.moveaxis(x, -1, 1))
    theirs = torch.nn.functional.conv_transpose3d(
        xt, torch.from_numpy(w.transpose(4, 3, 0, 1, 2).copy()), torch.from_numpy(b),
        stride=s, padding=p, output_padding=op, dilation=d).numpy()
    if fmt == "channels_last":
        theirs = np.moveaxis(theirs, 1, -1)
    np.testing.assert_allclose(y, theirs, rtol=1e-12, atol=1e-12)
