"""Property-based tests: forward and backward against the numpy reference, over random
shapes, strides, dilations, paddings, output paddings, data formats, dtypes and memory
layouts; and inputs are never modified, byte for byte, by any kind of call.

Examples are small (every spatial size <= 4, kernel <= 3, channels <= 3) so the file runs in
a few tens of seconds. ``TCONV3D_HYPOTHESIS_EXAMPLES=1000`` runs more examples per test.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tconv3d
from helpers import tol
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

settings.register_profile(
    "tconv3d-properties",
    deadline=None,  # the first call of a shape pays for OpenMP thread start-up
    max_examples=int(os.environ.get("TCONV3D_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
PROFILE = settings.get_profile("tconv3d-properties")
# The two oracle comparisons are the point of the file: give them more examples.
ORACLE = settings(PROFILE, max_examples=4 * PROFILE.max_examples)

FORMATS = ("channels_last", "channels_first")


# ------------------------------------------------------------------------ layouts


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _unaligned(a):
    """A copy whose data starts one byte past an aligned address (numpy: not aligned)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    view = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    view[...] = a
    return view


def _strided(a, axis):
    """A view that skips every other element along ``axis``."""
    shape = list(a.shape)
    shape[axis] *= 2
    big = np.full(shape, np.nan if a.dtype.kind == "f" else 0, dtype=a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    big[tuple(index)] = a
    return big[tuple(index)]


def _negative(a, axes):
    """Same values, negative strides on ``axes``."""
    flipped = np.ascontiguousarray(np.flip(a, axes))
    return np.flip(flipped, axes)


def _permuted(a, perm):
    """Same values, memory order given by ``perm`` (an axis permutation)."""
    inverse = np.argsort(perm)
    return np.ascontiguousarray(a.transpose(perm)).transpose(inverse)


LAYOUTS = ("c", "fortran", "strided", "negative", "permuted", "unaligned", "readonly")


@st.composite
def layouts(draw, ndim):
    """A function giving an array the same values in a random memory layout."""
    kind = draw(st.sampled_from(LAYOUTS))
    if kind == "c":
        return kind, np.ascontiguousarray
    if kind == "fortran":
        return kind, np.asfortranarray
    if kind == "strided":
        axis = draw(st.integers(0, ndim - 1))
        return kind, lambda a: _strided(a, axis)
    if kind == "negative":
        axes = tuple(draw(st.sets(st.integers(0, ndim - 1), min_size=1)))
        return kind, lambda a: _negative(a, axes)
    if kind == "permuted":
        perm = tuple(draw(st.permutations(range(ndim))))
        return kind, lambda a: _permuted(a, perm)
    if kind == "unaligned":
        return kind, _unaligned

    def readonly(a):
        a = a.copy()
        a.flags.writeable = False
        return a
    return kind, readonly


def _laid_out(a, layout):
    kind, f = layout
    v = f(a)
    assert v.shape == a.shape and np.array_equal(v, a, equal_nan=True), kind
    return v


# ----------------------------------------------------------------------- problems


@st.composite
def problems(draw, *, max_size=4):
    """A random valid problem: arrays (in random layouts and dtypes) and keyword arguments."""
    fmt = draw(st.sampled_from(FORMATS))
    batch = draw(st.integers(1, 2))
    cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, max_size)) for _ in range(3))
    ksp = tuple(draw(st.integers(1, 3)) for _ in range(3))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    padding = draw(st.sampled_from(["valid", "same", "SAME"]))
    if draw(st.booleans()):
        output_padding = None
    else:
        output_padding = tuple(draw(st.integers(0, s - 1)) for s in strides)
    # The API takes an int for a triple of equal values: exercise that spelling too.
    if len(set(strides)) == 1 and draw(st.booleans()):
        strides = strides[0]
    if len(set(dilation)) == 1 and draw(st.booleans()):
        dilation = dilation[0]
    kwargs = dict(strides=strides, padding=padding, output_padding=output_padding,
                  dilation_rate=dilation, data_format=fmt)
    try:
        out_shape = tconv3d.conv_transpose3d_output_shape(
            (batch, *spatial, cin) if fmt == "channels_last" else (batch, cin, *spatial),
            (*ksp, cout, cin), **kwargs)
    except ValueError:
        out_shape = None
    assume(out_shape is not None)  # a zero-length output: test_errors covers the refusal

    dtypes = draw(st.sampled_from([
        (np.float32,) * 4, (np.float64,) * 4,
        (np.float32, np.float64, np.float32, np.float32),   # mixed: computes in float64
        (np.float16, np.float32, np.float32, np.float32),   # float16 promotes to float32
        (np.int32, np.float64, np.float64, np.float64),     # integers compute in float64
    ]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    xshape = (batch, *spatial, cin) if fmt == "channels_last" else (batch, cin, *spatial)

    def values(shape, dtype):
        if np.dtype(dtype).kind == "i":
            return rng.integers(-3, 4, shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    x = _laid_out(values(xshape, dtypes[0]), draw(layouts(5)))
    w = _laid_out(values((*ksp, cout, cin), dtypes[1]), draw(layouts(5)))
    b = _laid_out(values((cout,), dtypes[2]), draw(layouts(1)))
    g = _laid_out(values(out_shape, dtypes[3]), draw(layouts(5)))
    return dict(x=x, w=w, b=b, g=g, kwargs=kwargs, out_shape=out_shape)


def _working_dtype(*arrays):
    return np.float32 if all(a.dtype in (np.float32, np.float16) for a in arrays) \
        and any(a.dtype == np.float32 for a in arrays) else np.float64


def _assert_close(got, expected, dtype, name):
    assert got.dtype == dtype, name
    assert got.shape == expected.shape, name
    # Sums of many terms: scale the absolute tolerance by the largest magnitude.
    t = tol(dtype)
    np.testing.assert_allclose(got, expected, rtol=t["rtol"],
                               atol=t["atol"] * max(1.0, float(np.abs(expected).max())),
                               err_msg=name)


class Untouched:
    """Snapshots of arrays (their values and their whole memory) to check after a call."""

    def __init__(self, **arrays):
        self.arrays = arrays
        self.before = {name: (a.tobytes(), _root(a).tobytes(), a.strides, a.flags.writeable)
                       for name, a in arrays.items()}

    def check(self, what):
        for name, a in self.arrays.items():
            values, memory, strides, writeable = self.before[name]
            assert a.tobytes() == values, f"{what} modified the values of `{name}`"
            assert _root(a).tobytes() == memory, f"{what} modified the memory under `{name}`"
            assert a.strides == strides and a.flags.writeable == writeable, name


def test_untouched_detects_a_modification():
    """The checker used below does catch a write, through a view, into hidden memory."""
    a = _strided(np.arange(8.0).reshape(2, 4), 1)
    untouched = Untouched(a=a)
    untouched.check("nothing")
    _root(a)[0, 1] = -1.0  # between the view's elements: invisible in its values
    with pytest.raises(AssertionError, match="modified the memory under `a`"):
        untouched.check("a write")
    a[0, 0] = -2.0
    with pytest.raises(AssertionError, match="modified the values of `a`"):
        untouched.check("a write")


# -------------------------------------------------------------------------- tests


@ORACLE
@given(p=problems(), use_bias=st.booleans(), num_threads=st.sampled_from([None, 1, 2, 3]))
def test_forward_matches_reference(p, use_bias, num_threads):
    x, w, b, kwargs = p["x"], p["w"], p["b"], p["kwargs"]
    bias = b if use_bias else None
    untouched = Untouched(x=x, w=w, b=b)
    y = tconv3d.conv_transpose3d(x, w, bias, num_threads=num_threads, **kwargs)
    untouched.check("conv_transpose3d")
    expected = conv_transpose3d_ref(x, w, bias, **kwargs)
    _assert_close(y, expected, _working_dtype(x, w, *((b,) if use_bias else ())), "forward")
    assert y.shape == p["out_shape"]
    assert y.flags.c_contiguous and y.flags.writeable


@ORACLE
@given(p=problems(), num_threads=st.sampled_from([None, 1, 2, 3]))
def test_backward_matches_reference(p, num_threads):
    x, w, g, kwargs = p["x"], p["w"], p["g"], p["kwargs"]
    untouched = Untouched(x=x, w=w, g=g)
    got = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=num_threads, **kwargs)
    untouched.check("conv_transpose3d_backward")
    expected = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    dtype = _working_dtype(x, w, g)
    for a, e, name in zip(got, expected, ("grad_input", "grad_kernel", "grad_bias")):
        _assert_close(a, e, dtype, name)
    assert got[0].shape == x.shape and got[1].shape == w.shape


@PROFILE
@given(p=problems(max_size=3),
       compute=st.sets(st.sampled_from(["input", "kernel", "bias"])),
       use_bias=st.booleans())
def test_backward_subsets_equal_the_full_call(p, compute, use_bias):
    """Each gradient is the same bits whether computed alone or with the others."""
    x, w, g, kwargs = p["x"], p["w"], p["g"], p["kwargs"]
    untouched = Untouched(x=x, w=w, g=g)
    full = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    some = tconv3d.conv_transpose3d_backward(g, x, w, compute=compute, use_bias=use_bias,
                                             **kwargs)
    untouched.check("conv_transpose3d_backward(compute=...)")
    for name, a, f in zip(("input", "kernel", "bias"), some, full):
        if name in compute and (name != "bias" or use_bias):
            assert a.tobytes() == f.tobytes(), name
        else:
            assert a is None, name


@PROFILE
@given(p=problems(max_size=3))
def test_adjoint_identity(p):
    """<forward(x), g> = <x, grad_input(g)> and = <w, grad_kernel(g)> (both linear maps)."""
    x, w, g, kwargs = p["x"], p["w"], p["g"], p["kwargs"]
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    y = tconv3d.conv_transpose3d(x, w, **kwargs)
    gx, gw, _ = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    lhs = float(np.vdot(y, g))
    scale = float(np.abs(y).sum() * np.abs(g).max()) + 1.0
    assert abs(lhs - float(np.vdot(x, gx))) <= 1e-12 * scale
    assert abs(lhs - float(np.vdot(w, gw))) <= 1e-12 * scale


@PROFILE
@given(p=problems(max_size=3))
def test_same_result_for_every_layout(p):
    """The layout is only a set of strides: results equal those of C-contiguous copies.

    Not bit for bit: a channel axis that is not contiguous takes another path through the
    GEMM micro-kernel, which may round the last bit differently (seen: 1 ulp, float64).
    """
    x, w, b, g, kwargs = p["x"], p["w"], p["b"], p["g"], p["kwargs"]
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    yc = tconv3d.conv_transpose3d(*(np.ascontiguousarray(a) for a in (x, w, b)), **kwargs)
    np.testing.assert_allclose(y, yc, **tol(y.dtype), err_msg="forward")
    got = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    ref = tconv3d.conv_transpose3d_backward(*(np.ascontiguousarray(a) for a in (g, x, w)),
                                            **kwargs)
    for a, c, name in zip(got, ref, ("input", "kernel", "bias")):
        np.testing.assert_allclose(a, c, **tol(a.dtype), err_msg=name)


@PROFILE
@given(p=problems(max_size=3))
def test_output_shape_function_agrees(p):
    kwargs = p["kwargs"]
    y = tconv3d.conv_transpose3d(p["x"], p["w"], **kwargs)
    assert tconv3d.conv_transpose3d_output_shape(p["x"].shape, p["w"].shape, **kwargs) \
        == y.shape == p["out_shape"]


# ------------------------------------------------------- layer and upsampler inputs


@PROFILE
@given(p=problems(max_size=3))
def test_layer_does_not_modify_its_inputs(p):
    layers = pytest.importorskip("tconv3d.layers")
    x, w, b, kwargs = p["x"], p["w"], p["b"], dict(p["kwargs"])
    dtype = "float32" if _working_dtype(x, w, b) == np.float32 else "float64"
    layer = layers.Conv3DTranspose(w.shape[3], w.shape[:3], strides=kwargs["strides"],
                                   padding=kwargs["padding"],
                                   output_padding=kwargs["output_padding"],
                                   dilation_rate=kwargs["dilation_rate"],
                                   data_format=kwargs["data_format"], dtype=dtype)
    untouched = Untouched(x=x, w=w, b=b)
    layer.build(x.shape)
    layer.set_weights([w, b])
    untouched.check("Conv3DTranspose.set_weights")
    y = layer(x)
    untouched.check("Conv3DTranspose.__call__")
    g = np.ones_like(y)
    g_untouched = Untouched(g=g)
    layer.backward(g)
    untouched.check("Conv3DTranspose.backward")
    g_untouched.check("Conv3DTranspose.backward")
    expected = conv_transpose3d_ref(x, w, b, **kwargs)
    _assert_close(y, expected, np.dtype(dtype).type, "layer")


@PROFILE
@given(data=st.data())
def test_upsampler_does_not_modify_its_inputs(data):
    upsampling = pytest.importorskip("tconv3d.upsampling")
    kernel = data.draw(st.sampled_from(["nearest", "trilinear"]))
    factor = data.draw(st.integers(1, 3))
    shape = (data.draw(st.integers(1, 2)), *(data.draw(st.integers(1, 4)) for _ in range(3)),
             data.draw(st.integers(1, 2)))
    layout = data.draw(layouts(5))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    volumes = _laid_out(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
                        .standard_normal(shape).astype(dtype), layout)
    untouched = Untouched(volumes=volumes)
    up = upsampling.VolumeUpsampler(factor=factor, kernel=kernel)
    out = up.fit(volumes).transform(volumes)
    untouched.check("VolumeUpsampler.fit/transform")
    assert out.shape[1:4] == tuple(n * factor for n in shape[1:4])


# ------------------------------------------------------------------ what the kernels get

# the compiled loops that read the operands or copies of them (the layout copies included)
COMPILED_LOOPS = ("forward", "grad_input", "grad_kernel", "grad_bias", "pack_panels",
                  "channels_last", "transpose")


class _RecordingKernels:
    """Stands in for ``tconv3d._kernels``: records the arrays each kernel receives."""

    def __init__(self, real):
        self.real, self.seen = real, []

    def __getattr__(self, name):
        target = getattr(self.real, name)
        if name not in COMPILED_LOOPS:
            return target

        def record(*args, **kwargs):
            self.seen += [(name, a) for a in (*args, *kwargs.values())
                          if isinstance(a, np.ndarray)]
            return target(*args, **kwargs)
        return record


@PROFILE
@given(p=problems(max_size=3))
def test_kernels_receive_aligned_native_arrays(p):
    """Whatever the caller's layout (unaligned, byte-swapped, ...), the compiled loops only
    see aligned, native-endian arrays with whole-element strides: misaligned loads are
    undefined behaviour in C (UBSan flagged an unaligned bias reaching the forward loop)."""
    from tconv3d import _layouts, _ops
    recorder = _RecordingKernels(_ops._kernels)
    x, w, b, g, kwargs = p["x"], p["w"], p["b"], p["g"], p["kwargs"]
    original, _ops._kernels, _layouts._kernels = _ops._kernels, recorder, recorder
    try:
        tconv3d.conv_transpose3d(x, w, b, **kwargs)
        tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    finally:
        _ops._kernels = _layouts._kernels = original
    assert {name for name, _ in recorder.seen} >= {"forward", "grad_input", "grad_kernel",
                                                   "grad_bias", "pack_panels"}
    for name, a in recorder.seen:
        assert a.flags.aligned and a.dtype.isnative, (name, a.dtype, a.strides)
        assert all(s % a.itemsize == 0 for s in a.strides), (name, a.strides)


@pytest.mark.parametrize("which", ["x", "kernel", "bias", "grad_output"])
def test_unaligned_operands_are_realigned(which, monkeypatch):
    from tconv3d import _ops
    rng = np.random.default_rng(5)
    args = dict(x=rng.standard_normal((1, 3, 2, 3, 2)), kernel=rng.standard_normal((2, 2, 2, 3, 2)),
                bias=rng.standard_normal(3), grad_output=rng.standard_normal((1, 4, 3, 4, 3)))
    expected_y = tconv3d.conv_transpose3d(args["x"], args["kernel"], args["bias"])
    expected_g = tconv3d.conv_transpose3d_backward(args["grad_output"], args["x"],
                                                   args["kernel"])
    args[which] = _unaligned(args[which])
    assert not args[which].flags.aligned
    recorder = _RecordingKernels(_ops._kernels)
    monkeypatch.setattr(_ops, "_kernels", recorder)
    y = tconv3d.conv_transpose3d(args["x"], args["kernel"], args["bias"])
    grads = tconv3d.conv_transpose3d_backward(args["grad_output"], args["x"], args["kernel"])
    assert all(a.flags.aligned for _, a in recorder.seen)
    assert y.tobytes() == expected_y.tobytes()
    assert all(a.tobytes() == e.tobytes() for a, e in zip(grads, expected_g))
