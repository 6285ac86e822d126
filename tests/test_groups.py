"""Grouped and depthwise transposed convolutions (``groups=``): the numpy reference (each
group's convolution, concatenated), finite differences, thread-count invariance, any
memory layout, and PyTorch's ``groups``."""
import sys

import numpy as np
import pytest

import tconv3d
from helpers import each_simd_variant, random_problem, tol
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref
from test_forward import FORMATS

# (in_channels, filters, groups): grouped, depthwise over 1 and over several vectors of
# channels, a depthwise channel multiplier, groups of one input to 3 filters, and groups
# of 4 and 2 channels that vectors take several at a time (_kernels._grouped).
CHANNELS = [(6, 4, 2), (9, 6, 3), (5, 5, 5), (40, 40, 40), (4, 8, 4), (3, 9, 3),
            (32, 32, 8), (32, 32, 16)]
# (kernel, strides, dilation, padding, output_padding, spatial)
GEOMETRY = [
    (4, 2, 1, "same", None, (3, 4, 5)),
    (3, 2, 1, "valid", 1, (2, 3, 4)),
    ((1, 3, 3), (1, 2, 2), 1, "same", None, (3, 4, 4)),
    (2, 1, 2, "valid", None, (2, 3, 3)),
    (3, 3, 1, "same", 0, (1, 2, 3)),
]
GEOMETRY_IDS = ["k4s2-same", "k3s2-valid-op1", "aniso", "k2d2", "k3s3-op0"]


def _problem(rng, cin, cout, groups, geometry, fmt, dtype, batch=2):
    k, s, d, pad, op, spatial = geometry
    kernel = (k,) * 3 if np.isscalar(k) else k
    x, w, b = random_problem(rng, batch=batch, spatial=spatial, cin=cin, cout=cout,
                             kernel=kernel, data_format=fmt, dtype=dtype)
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d,
                  data_format=fmt, groups=groups)
    return x, w[..., : cout // groups, :], b, kwargs


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRY, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("cin,cout,groups", CHANNELS)
def test_grouped_matches_reference(rng, cin, cout, groups, geometry, dtype, fmt):
    x, w, b, kwargs = _problem(rng, cin, cout, groups, geometry, fmt, dtype)
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    expected = conv_transpose3d_ref(x, w, b, **kwargs)
    assert y.dtype == dtype and y.shape == expected.shape
    assert y.shape == tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **{
        k: v for k, v in kwargs.items()})
    np.testing.assert_allclose(y, expected, **tol(dtype))
    g = rng.standard_normal(y.shape).astype(dtype)
    got = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    for a, e, name in zip(got, conv_transpose3d_backward_ref(g, x, w, **kwargs),
                          ("input", "kernel", "bias")):
        assert a.dtype == dtype and a.shape == e.shape, name
        np.testing.assert_allclose(a, e, **tol(dtype), err_msg=name)


def test_groups_are_independent_convolutions(rng):
    """The definition, stated directly: group g of the output only depends on group g
    of the input, through the kernel's in_channels slice g."""
    x, w, b, kwargs = _problem(rng, 6, 9, 3, GEOMETRY[0], "channels_last", np.float64)
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    kwargs.pop("groups")
    for g in range(3):
        part = tconv3d.conv_transpose3d(x[..., 2 * g: 2 * g + 2], w[..., 2 * g: 2 * g + 2],
                                        b[3 * g: 3 * g + 3], **kwargs)
        np.testing.assert_allclose(y[..., 3 * g: 3 * g + 3], part, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cin,cout,groups", [(6, 4, 2), (5, 5, 5)])
def test_gradients_match_finite_differences(rng, cin, cout, groups, fmt):
    x, w, b, kwargs = _problem(rng, cin, cout, groups, GEOMETRY[1], fmt, np.float64, batch=1)
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    g = rng.standard_normal(y.shape)

    def loss(x_, w_, b_):
        return float(np.sum(g * tconv3d.conv_transpose3d(x_, w_, b_, **kwargs)))

    gx, gw, gb = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    h = 1e-6
    for grad, i in ((gx, 0), (gw, 1), (gb, 2)):
        args = [x, w, b]
        v = rng.standard_normal(args[i].shape)
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + h * v, args[i] - h * v
        numeric = (loss(*plus) - loss(*minus)) / (2 * h)
        assert numeric == pytest.approx(float(np.sum(grad * v)), rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cin,cout,groups", [(32, 32, 32), (32, 32, 4), (32, 32, 16),
                                             (8, 16, 8)])
def test_bitwise_identical_for_any_thread_count(rng, cin, cout, groups, fmt):
    x, w, b, kwargs = _problem(rng, cin, cout, groups, GEOMETRY[0], fmt, np.float32)
    x = np.concatenate([x] * 4)   # rows for 3 threads
    ref = tconv3d.conv_transpose3d(x, w, b, num_threads=1, **kwargs)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=1, **kwargs)
    for threads in (2, 3):
        assert tconv3d.conv_transpose3d(x, w, b, num_threads=threads,
                                        **kwargs).tobytes() == ref.tobytes()
        for a, r in zip(tconv3d.conv_transpose3d_backward(g, x, w, num_threads=threads,
                                                          **kwargs), grads):
            assert a.tobytes() == r.tobytes()


def _output_shape(x, w, kwargs):
    return tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)


def _each_variant_against_reference(x, w, b, g, kwargs, dtype):
    """On each SIMD variant in turn, the forward and the input and kernel gradients,
    checked against the reference; yields (variant, y, grad_input, grad_kernel)."""
    expected = conv_transpose3d_ref(x, w, b, **kwargs)
    expected_gx, expected_gw, _ = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    for variant in each_simd_variant():
        y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
        gx, gw, _ = tconv3d.conv_transpose3d_backward(g, x, w, compute=["input", "kernel"],
                                                      **kwargs)
        np.testing.assert_allclose(y, expected, **tol(dtype), err_msg=variant)
        np.testing.assert_allclose(gx, expected_gx, **tol(dtype), err_msg=variant)
        np.testing.assert_allclose(gw, expected_gw, **tol(dtype), err_msg=variant)
        yield variant, y, gx, gw


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels,per_group", [(32, 4), (32, 2), (16, 8), (32, 8), (24, 4),
                                                (12, 4)])
def test_few_channels_per_group_as_vectors_of_groups(rng, channels, per_group, dtype, fmt):
    """Groups of a few channels (the vectors then hold several groups, channels permuted
    into place) on every SIMD variant: the reference's numbers, and each group's own
    convolution's bits when that would run in vectors too (the same products in the
    same order); forward, input and kernel gradients, with a channels_first grad_output
    large enough to be read in channels-last slabs."""
    groups = channels // per_group
    x, w, b, kwargs = _problem(rng, channels, channels, groups, GEOMETRY[0], fmt, dtype)
    spatial = (3, 20, 12) if fmt == "channels_first" else (3, 4, 5)
    x = rng.standard_normal(x.shape[:-3] + spatial if fmt == "channels_first"
                            else x.shape[:1] + spatial + x.shape[-1:]).astype(dtype)
    x, w = x / 4, w / 4   # sums of 64 products of order 1, as the tolerances assume
    channel_axis = -1 if fmt == "channels_last" else 1
    per_group_kwargs = {k: v for k, v in kwargs.items() if k != "groups"}
    g = rng.standard_normal(_output_shape(x, w, kwargs)).astype(dtype) / 4
    same_bits = per_group * np.dtype(dtype).itemsize >= 16   # a vector of one group
    for variant, y, gx, gw in _each_variant_against_reference(x, w, b, g, kwargs, dtype):
        if not same_bits:
            continue
        for k in range(groups):
            part = slice(k * per_group, (k + 1) * per_group)
            at = (slice(None),) * (channel_axis % x.ndim) + (part,)
            x_k, g_k = np.ascontiguousarray(x[at]), np.ascontiguousarray(g[at])
            y_k = tconv3d.conv_transpose3d(x_k, w[..., part], b[part], **per_group_kwargs)
            gx_k, gw_k, _ = tconv3d.conv_transpose3d_backward(
                g_k, x_k, w[..., part], compute=["input", "kernel"], **per_group_kwargs)
            assert y[at].tobytes() == y_k.tobytes(), (variant, k)
            assert np.ascontiguousarray(gx[at]).tobytes() == gx_k.tobytes(), (variant, k)
            assert np.ascontiguousarray(gw[..., part]).tobytes() == gw_k.tobytes(), \
                (variant, k)


# (in_channels, filters, groups) with different channels in and out per group, or a
# number per group that does not divide the vector: 1 -> 2, 2 -> 1, 2 -> 4, 4 -> 2 (two
# vectors of inputs per vector of outputs), 1 -> 4 and 4 -> 1 (the forward or the
# gradients group by group, the other vectors of groups), 2 -> 8, 8 -> 2, 3 -> 6; 3, 5 and
# 12 channels per group and 1 -> 3, 3 -> 1 (vectors starting at 3 or 5 phases of their
# first group); 24, 40, 6 and 8 channels, whose groups end inside a vector (the last
# vector partial), and 2 -> 3 in 5 groups; 4 -> 1, 1 -> 4 and 8 -> 1 (vectors of half or
# a quarter of the lanes, where the inputs of a whole vector's groups would not fit in
# two vectors).
UNEQUAL = [(32, 64, 32), (64, 32, 32), (32, 64, 16), (64, 32, 16), (16, 64, 16),
           (64, 16, 16), (8, 32, 4), (32, 8, 4), (24, 48, 8), (48, 48, 16), (40, 40, 8),
           (96, 96, 8), (32, 96, 32), (96, 32, 32), (24, 24, 8), (6, 6, 2), (8, 8, 2),
           (10, 15, 5), (128, 32, 32), (32, 128, 32), (128, 16, 16)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cin,cout,groups", UNEQUAL)
def test_unequal_channels_per_group_as_vectors_of_groups(rng, cin, cout, groups, dtype, fmt):
    """Groups whose inputs and filters differ in number (a channel multiplier, or its
    reverse) on every SIMD variant: the reference's forward, input and kernel gradients;
    with odd widths so that runs end inside a vector's rows."""
    x, w, b, kwargs = _problem(rng, cin, cout, groups, GEOMETRY[0], fmt, dtype)
    x, w = x / 4, w / 4   # sums of 64 products of order 1, as the tolerances assume
    g = rng.standard_normal(_output_shape(x, w, kwargs)).astype(dtype) / 4
    for _ in _each_variant_against_reference(x, w, b, g, kwargs, dtype):
        pass   # the checks run as each variant is drawn


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cin,cout,groups", [(64, 32, 32), (32, 32, 8)])
def test_broadcast_grad_output_of_vectors_of_groups(rng, cin, cout, groups, fmt):
    """A grad_output whose channels are not contiguous (a broadcast one, as PyTorch's
    ``y.sum().backward()`` gives, or channels_first) is read channels-last by the
    gradients' vectors of groups: the reference's gradients."""
    x, w, b, kwargs = _problem(rng, cin, cout, groups, GEOMETRY[0], fmt, np.float64)
    shape = conv_transpose3d_ref(x, w, b, **kwargs).shape
    for g in (np.broadcast_to(rng.standard_normal(1), shape), rng.standard_normal(shape)):
        for a, e in zip(tconv3d.conv_transpose3d_backward(g, x, w, **kwargs),
                        conv_transpose3d_backward_ref(np.array(g), x, w, **kwargs)):
            np.testing.assert_allclose(a, e, **tol(np.float64))


def _before_a_guard_page(a):
    """A copy of `a` whose last byte is the last before a page that may not be read."""
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    pages = -(-a.nbytes // page) + 1
    region = mmap.mmap(-1, pages * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    assert libc.mprotect(base + (pages - 1) * page, page, 0) == 0   # PROT_NONE
    start = (pages - 1) * page - a.nbytes
    out = np.frombuffer(region, dtype=a.dtype, count=a.size, offset=start).reshape(a.shape)
    out[...] = a
    return out, region


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through libc")
@pytest.mark.parametrize("cin,cout,groups", [(32, 64, 32), (64, 32, 32), (16, 64, 16),
                                             (48, 48, 16), (96, 32, 32), (24, 24, 8),
                                             (10, 15, 5), (128, 16, 16)])
def test_vectors_of_groups_read_nothing_past_their_operands(rng, cin, cout, groups):
    """A vector of groups reads a span of fewer channels than its lanes (1 -> 2 and
    1 -> 4 forwards, 2 -> 1 and 3 -> 1 gradients, the second vector of 3 channels per
    group, the partial last vector of 24 or 15 channels) under a mask: with x and
    grad_output ending right before an unreadable page, nothing faults and the numbers
    are the reference's."""
    x, w, b, kwargs = _problem(rng, cin, cout, groups, GEOMETRY[0], "channels_last",
                               np.float32)
    expected = conv_transpose3d_ref(x, w, b, **kwargs)
    g = rng.standard_normal(expected.shape).astype(np.float32)
    expected_grads = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    x_end, x_region = _before_a_guard_page(x)
    g_end, g_region = _before_a_guard_page(g)
    for variant in each_simd_variant():
        np.testing.assert_allclose(tconv3d.conv_transpose3d(x_end, w, b, **kwargs),
                                   expected, **tol(np.float32), err_msg=variant)
        for a, e in zip(tconv3d.conv_transpose3d_backward(g_end, x_end, w, **kwargs),
                        expected_grads):
            np.testing.assert_allclose(a, e, **tol(np.float32), err_msg=variant)
    del x_end, g_end
    x_region.close()
    g_region.close()


@pytest.mark.parametrize("cin,cout,groups", [(6, 6, 6), (8, 4, 2)])
def test_any_memory_layout(rng, cin, cout, groups):
    """Channel-sliced, spatially strided and Fortran-ordered views give the contiguous
    array's numbers (the depthwise path copies such rows channel-contiguous)."""
    x, w, b, kwargs = _problem(rng, 2 * cin, cout, groups, GEOMETRY[0], "channels_last",
                               np.float64)
    x = x[..., ::2]
    w = w[..., ::2]
    views = [x, np.asfortranarray(x), np.repeat(x, 2, axis=3)[:, :, :, ::2]]
    expected = conv_transpose3d_ref(x, w, b, **kwargs)
    g = rng.standard_normal(expected.shape)
    expected_grads = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    for view in views:
        np.testing.assert_allclose(tconv3d.conv_transpose3d(view, w, b, **kwargs), expected,
                                   **tol(np.float64))
        for grad_output in (g, np.asfortranarray(g), np.repeat(g, 2, axis=-1)[..., ::2]):
            got = tconv3d.conv_transpose3d_backward(grad_output, view, w, **kwargs)
            for a, e in zip(got, expected_grads):
                np.testing.assert_allclose(a, e, **tol(np.float64))


def test_out_buffers_with_groups(rng):
    x, w, b, kwargs = _problem(rng, 6, 4, 2, GEOMETRY[0], "channels_first", np.float32)
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    out = np.empty_like(y)
    assert tconv3d.conv_transpose3d(x, w, b, out=out, **kwargs) is out
    np.testing.assert_array_equal(out, y)
    g = rng.standard_normal(y.shape).astype(np.float32)
    expected = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    buffers = tuple(np.empty_like(a) for a in expected)
    got = tconv3d.conv_transpose3d_backward(g, x, w, out=buffers, **kwargs)
    for a, buf, e in zip(got, buffers, expected):
        assert a is buf
        np.testing.assert_array_equal(a, e)


def test_kernel_and_bias_shapes_follow_the_groups(rng):
    x = np.ones((1, 2, 2, 2, 6))
    with pytest.raises(ValueError, match=r"`bias` must have shape \(9,\)"):
        tconv3d.conv_transpose3d(x, np.ones((2, 2, 2, 3, 6)), np.ones(3), groups=3)
    assert tconv3d.conv_transpose3d(x, np.ones((2, 2, 2, 3, 6)), groups=3).shape == \
        (1, 3, 3, 3, 9)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last_3d"])
@pytest.mark.parametrize("cin,cout,groups", [(8, 8, 8), (8, 16, 4), (6, 3, 3), (32, 32, 8)])
def test_matches_torch(rng, cin, cout, groups, memory_format):
    torch = pytest.importorskip("torch")
    import tconv3d.torch as tt
    x = torch.from_numpy(rng.standard_normal((2, cin, 5, 4, 6)))
    x = x.contiguous(memory_format=getattr(torch, memory_format + "_format", None)
                     or torch.channels_last_3d).requires_grad_()
    ref = torch.nn.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, groups=groups,
                                   dtype=torch.float64)
    ours = tt.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, groups=groups,
                              dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y_ref)
    expected = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
    got = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
