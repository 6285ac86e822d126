"""Backward pass: finite differences, the numpy reference, the adjoint identity, PyTorch."""
import numpy as np
import pytest

import tconv3d
from helpers import random_problem, to_torch_args, tol
from reference import conv_transpose3d_backward_ref
from test_forward import FORMATS, GRID, TORCH_GRID, _shapes


def _loss_and_grad_output(y, g):
    """A non-linear loss, L = <g, y> + |y|^2 / 2, and dL/dy."""
    return float(np.sum(g * y) + 0.5 * np.sum(y * y)), g + y


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,s,d,pad,op", GRID)
def test_gradients_match_finite_differences(rng, k, s, d, pad, op, fmt):
    shapes = _shapes(k, s, d, np.float64, fmt)
    x, w, b = random_problem(rng, **shapes)
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d, data_format=fmt)
    try:
        y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    except ValueError:
        pytest.skip("zero-length output")
    g = rng.standard_normal(y.shape)
    _, dy = _loss_and_grad_output(y, g)
    gx, gw, gb = tconv3d.conv_transpose3d_backward(dy, x, w, **kwargs)

    def loss(x_, w_, b_):
        return _loss_and_grad_output(tconv3d.conv_transpose3d(x_, w_, b_, **kwargs), g)[0]

    h = 1e-6
    for _ in range(2):  # central differences along random directions
        vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))
        for grad, args_plus, args_minus, v in [
            (gx, (x + h * vx, w, b), (x - h * vx, w, b), vx),
            (gw, (x, w + h * vw, b), (x, w - h * vw, b), vw),
            (gb, (x, w, b + h * vb), (x, w, b - h * vb), vb),
        ]:
            numeric = (loss(*args_plus) - loss(*args_minus)) / (2 * h)
            analytic = float(np.sum(grad * v))
            assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,s,d,pad,op", GRID)
def test_gradients_match_reference(rng, k, s, d, pad, op, dtype, fmt):
    x, w, b = random_problem(rng, **_shapes(k, s, d, dtype, fmt))
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d, data_format=fmt)
    try:
        shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)
    except ValueError:
        pytest.skip("zero-length output")
    g = rng.standard_normal(shape).astype(dtype)
    got = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    expected = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    for a, e, name in zip(got, expected, ("input", "kernel", "bias")):
        assert a.dtype == dtype and a.shape == e.shape, name
        # Sums of many terms: scale the absolute tolerance by the terms' magnitude.
        np.testing.assert_allclose(a, e, rtol=tol(dtype)["rtol"],
                                   atol=tol(dtype)["atol"] * max(1, np.abs(e).max()),
                                   err_msg=name)


def test_finite_differences_per_element(rng):
    x, w, b = random_problem(rng, batch=2, spatial=(3, 2, 3), cin=2, cout=3, kernel=(3, 2, 3),
                             data_format="channels_last", dtype=np.float64)
    kwargs = dict(strides=(2, 1, 3), padding="same", output_padding=(1, 0, 1),
                  dilation_rate=(1, 2, 2))
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    h = 1e-6
    for arr, grad, pos in ((x, gx, 0), (w, gw, 1), (b, gb, 2)):
        for idx in np.ndindex(arr.shape):
            args_p = [x.copy(), w.copy(), b.copy()]
            args_m = [x.copy(), w.copy(), b.copy()]
            args_p[pos][idx] += h
            args_m[pos][idx] -= h
            numeric = (np.sum(g * tconv3d.conv_transpose3d(*args_p, **kwargs))
                       - np.sum(g * tconv3d.conv_transpose3d(*args_m, **kwargs))) / (2 * h)
            assert numeric == pytest.approx(grad[idx], rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,s,d,pad,op", GRID[::3])
def test_adjoint_identity(rng, k, s, d, pad, op, fmt):
    x, w, b = random_problem(rng, **_shapes(k, s, d, np.float64, fmt))
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d, data_format=fmt)
    try:
        y = tconv3d.conv_transpose3d(x, w, **kwargs)
    except ValueError:
        pytest.skip("zero-length output")
    g = rng.standard_normal(y.shape)
    gx, _, _ = tconv3d.conv_transpose3d_backward(g, x, w, compute=("input",), **kwargs)
    assert np.vdot(y, g) == pytest.approx(np.vdot(x, gx), rel=1e-12)


def test_compute_selects_gradients(rng):
    x, w, b = random_problem(rng, batch=1, spatial=(3, 3, 3), cin=2, cout=3, kernel=(2, 2, 2),
                             data_format="channels_last", dtype=np.float32)
    g = np.ones((1, 6, 6, 6, 3), np.float32)
    full = tconv3d.conv_transpose3d_backward(g, x, w, strides=2)
    assert [a is None for a in tconv3d.conv_transpose3d_backward(
        g, x, w, strides=2, compute=("kernel",))] == [True, False, True]
    assert [a is None for a in tconv3d.conv_transpose3d_backward(
        g, x, w, strides=2, compute="bias")] == [True, True, False]
    assert tconv3d.conv_transpose3d_backward(g, x, w, strides=2, use_bias=False)[2] is None
    np.testing.assert_array_equal(
        tconv3d.conv_transpose3d_backward(g, x, w, strides=2, compute=("input",))[0], full[0])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_bitwise_identical_for_any_thread_count(rng, fmt, dtype):
    x, w, b = random_problem(rng, batch=3, spatial=(7, 11, 13), cin=5, cout=7,
                             kernel=(3, 3, 3), data_format=fmt, dtype=dtype)
    kwargs = dict(strides=2, padding="same", data_format=fmt)
    g = rng.standard_normal(
        tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)).astype(dtype)
    runs = [tconv3d.conv_transpose3d_backward(g, x, w, num_threads=n, **kwargs)
            for n in (1, 2, 3, 8, 1)]
    for run in runs[1:]:
        for a, ref in zip(run, runs[0]):
            assert a.tobytes() == ref.tobytes()


# Where grad_output's voxels lie a KiB or more apart along a row (stride * Cout), the
# kernel gradient packs them, KC_VOXELS (128) at a time across rows, into panels of 48
# channels: 130 filters make panels of 48, 48 and 34; 37 channels leave a scalar column;
# 2 x 3 x 5 rows of 9 voxels cross several packs in mid-row; a grad_output with every
# other channel of a larger array is gathered channel by channel. Whether it packs
# depends on the problem, not on the layout: channels_first, or voxels in reverse
# order in memory, give the same bits.
@pytest.mark.parametrize("strided_g", [False, True], ids=["contiguous-g", "strided-g"])
@pytest.mark.parametrize("dtype,groups", [(np.float32, 1), (np.float64, 1), (np.float32, 2)])
def test_kernel_gradient_of_far_apart_voxels(rng, dtype, groups, strided_g):
    x, w, _ = random_problem(rng, batch=2, spatial=(3, 5, 9), cin=37 * groups,
                             cout=130 * groups, kernel=(3, 3, 3),
                             data_format="channels_last", dtype=dtype)
    w = w[..., :130, :]
    kwargs = dict(strides=(2, 1, 2), padding="same", groups=groups)
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)
    g = rng.standard_normal((*shape[:-1], 2 * shape[-1])).astype(dtype)
    g = g[..., ::2] if strided_g else np.ascontiguousarray(g[..., ::2])
    expected = conv_transpose3d_backward_ref(g, x, w, **kwargs)[1]
    runs = [tconv3d.conv_transpose3d_backward(g, x, w, compute=["kernel"], num_threads=n,
                                              **kwargs)[1] for n in (1, 2, 3)]
    runs.append(tconv3d.conv_transpose3d_backward(
        np.moveaxis(g, -1, 1), np.moveaxis(x, -1, 1), w, compute=["kernel"],
        data_format="channels_first", **kwargs)[1])
    reversed_g = np.flip(np.flip(g, 3).copy(), 3)   # the same values, a negative stride
    runs.append(tconv3d.conv_transpose3d_backward(reversed_g, x, w, compute=["kernel"],
                                                  **kwargs)[1])
    np.testing.assert_allclose(runs[0], expected, **tol(dtype))
    for run in runs[1:]:
        assert run.tobytes() == runs[0].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,d,pad,op", TORCH_GRID[::2])
def test_gradients_match_torch_autograd(rng, k, s, d, pad, op, dtype):
    torch = pytest.importorskip("torch")
    x, w, b = random_problem(rng, batch=2, spatial=(3, 4, 5), cin=3, cout=2,
                             kernel=(k, k, k), data_format="channels_first", dtype=dtype)
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d,
                  data_format="channels_first")
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)
    pads, ops = to_torch_args(kwargs, x.shape[2:], w.shape[:3], shape[2:])
    if any(o >= max(s, d) for o in ops):
        pytest.skip("torch has no output_padding this large")
    g = rng.standard_normal(shape).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w.transpose(4, 3, 0, 1, 2).copy()).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    ty = torch.nn.functional.conv_transpose3d(tx, tw, tb, stride=s, padding=pads,
                                              output_padding=ops, dilation=d)
    ty = ty[:, :, :shape[2], :shape[3], :shape[4]]
    ty.backward(torch.from_numpy(g))
    gx, gw, gb = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    scale = tol(dtype)["atol"] * max(1, float(np.abs(g).sum()) ** 0.5)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=tol(dtype)["rtol"], atol=scale)
    np.testing.assert_allclose(gw, tw.grad.numpy().transpose(2, 3, 4, 1, 0),
                               rtol=tol(dtype)["rtol"], atol=scale)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=tol(dtype)["rtol"], atol=scale)
