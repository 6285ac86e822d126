"""``activation=``: the compiled forward's fused activation and the backward that takes
its derivative from the output, against the unfused computation (tconv3d.activations'
formulas applied to the plain result), finite differences, and the layer."""
import numpy as np
import pytest

import tconv3d
from helpers import random_problem, tol
from tconv3d import activations
from tconv3d.layers import Conv3DTranspose
from test_forward import FORMATS

FUSED = ["linear", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "swish",
         activations.get("leaky_relu").bind(negative_slope=0.01),
         activations.get("gelu").bind(approximate=True)]
FROM_OUTPUT = ["relu", "leaky_relu", "sigmoid", "tanh",
               activations.get("leaky_relu").bind(negative_slope=0.3)]
# (cin, cout, groups): the GEMM path, the single-channel path, grouped and depthwise
CHANNELS = [(5, 7, 1), (1, 1, 1), (6, 4, 2), (8, 8, 8)]
KWARGS = dict(strides=2, padding="same")


def _problem(rng, cin, cout, groups, fmt, dtype):
    x, w, b = random_problem(rng, batch=2, spatial=(3, 4, 5), cin=cin, cout=cout,
                             kernel=(3, 2, 3), data_format=fmt, dtype=dtype)
    return x, w[..., : cout // groups, :], b, dict(KWARGS, data_format=fmt, groups=groups)


def _unfused(activation):
    return activations.get(activation) if isinstance(activation, str) else activation


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cin,cout,groups", CHANNELS)
@pytest.mark.parametrize("activation", FUSED, ids=str)
def test_forward_applies_the_activation(rng, activation, cin, cout, groups, dtype, fmt):
    x, w, b, kwargs = _problem(rng, cin, cout, groups, fmt, dtype)
    z = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    y = tconv3d.conv_transpose3d(x, w, b, activation=activation, **kwargs)
    expected = _unfused(activation)(z)
    assert y.dtype == dtype and y.shape == z.shape
    np.testing.assert_allclose(y, expected, rtol=2 * tol(dtype)["rtol"],
                               atol=tol(dtype)["atol"])
    if activation not in ("linear",):   # the activation did something
        assert not np.array_equal(y, z)


def test_relu_keeps_nan_and_threads_do_not_change_bits(rng):
    x, w, b, kwargs = _problem(rng, 5, 7, 1, "channels_last", np.float32)
    x = np.concatenate([x] * 3)
    x[0, 1, 2, 3, 0] = np.nan
    y1 = tconv3d.conv_transpose3d(x, w, b, activation="relu", num_threads=1, **kwargs)
    assert np.isnan(y1).any()
    np.testing.assert_array_equal(np.isnan(y1), np.isnan(tconv3d.conv_transpose3d(x, w, b,
                                                                                   **kwargs)))
    for threads in (2, 3):
        y = tconv3d.conv_transpose3d(x, w, b, activation="relu", num_threads=threads,
                                     **kwargs)
        assert y.tobytes() == y1.tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cin,cout,groups", CHANNELS)
@pytest.mark.parametrize("activation", FROM_OUTPUT, ids=str)
def test_backward_takes_the_derivative_from_the_output(rng, activation, cin, cout, groups,
                                                       fmt):
    x, w, b, kwargs = _problem(rng, cin, cout, groups, fmt, np.float64)
    z = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    y = tconv3d.conv_transpose3d(x, w, b, activation=activation, **kwargs)
    g = rng.standard_normal(y.shape)
    got = tconv3d.conv_transpose3d_backward(g, x, w, activation=activation, output=y,
                                            **kwargs)
    expected = tconv3d.conv_transpose3d_backward(g * _unfused(activation).derivative(z), x,
                                                 w, **kwargs)
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_fused_gradients_match_finite_differences(rng, activation):
    x, w, b, kwargs = _problem(rng, 3, 2, 1, "channels_first", np.float64)
    y = tconv3d.conv_transpose3d(x, w, b, activation=activation, **kwargs)
    g = rng.standard_normal(y.shape)

    def loss(x_, w_, b_):
        return float(np.sum(g * tconv3d.conv_transpose3d(x_, w_, b_, activation=activation,
                                                         **kwargs)))

    grads = tconv3d.conv_transpose3d_backward(g, x, w, activation=activation, output=y,
                                              **kwargs)
    h = 1e-6
    for i, grad in enumerate(grads):
        args = [x, w, b]
        v = rng.standard_normal(args[i].shape)
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + h * v, args[i] - h * v
        numeric = (loss(*plus) - loss(*minus)) / (2 * h)
        assert numeric == pytest.approx(float(np.sum(grad * v)), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("activation,exc,match", [
    ("softplus", ValueError, r"`activation` 'softplus' is not one the compiled forward"),
    (activations.get("relu").bind(max_value=6.0), ValueError, r"'relu' with max_value"),
    (activations.get("leaky_relu").bind(negative_slope=np.inf), ValueError,
     r"`negative_slope` must be a finite number"),
    (3, TypeError, r"`activation` must be None, a name or"),
])
def test_forward_refuses(activation, exc, match):
    with pytest.raises(exc, match=match):
        tconv3d.conv_transpose3d(np.ones((1, 2, 2, 2, 1)), np.ones((2, 2, 2, 1, 1)),
                                 activation=activation)


def test_backward_refuses(rng):
    x, w, b, kwargs = _problem(rng, 2, 2, 1, "channels_last", np.float64)
    y = tconv3d.conv_transpose3d(x, w, b, activation="gelu", **kwargs)
    with pytest.raises(ValueError, match=r"'gelu': its derivative needs the pre-activation"):
        tconv3d.conv_transpose3d_backward(y, x, w, activation="gelu", output=y, **kwargs)
    with pytest.raises(ValueError, match=r"`output` \(the forward's activated output\) is "
                                         r"required with activation='relu'"):
        tconv3d.conv_transpose3d_backward(y, x, w, activation="relu", **kwargs)
    with pytest.raises(ValueError, match=r"`output` must have the forward output's shape"):
        tconv3d.conv_transpose3d_backward(y, x, w, activation="relu", output=y[:1], **kwargs)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu"])
def test_layer_fuses_when_it_can_with_the_same_numbers(rng, activation):
    """The layer with tconv3d's activation (fused where the derivative comes from the
    output) against the same formulas as a user's activation (never fused)."""
    builtin = activations.get(activation)
    own = activations.Activation(lambda v: builtin(v), builtin.derivative, name="mine")
    x = rng.standard_normal((2, 3, 4, 3, 5))
    layers = [Conv3DTranspose(4, 3, strides=2, padding="same", activation=a,
                              dtype="float64", kernel_initializer="glorot_normal",
                              bias_initializer="random_normal") for a in (activation, own)]
    layers[0](x)
    layers[1](x)
    layers[1].set_weights(layers[0].get_weights())
    ys = [layer(x) for layer in layers]
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-12, atol=1e-13)
    assert (layers[0]._cache[1] is None) == (activation != "gelu")   # no pre-activation
    g = rng.standard_normal(ys[0].shape)
    grads = [layer.backward(g) for layer in layers]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(layers[0].kernel_grad, layers[1].kernel_grad, rtol=1e-11,
                               atol=1e-12)
    np.testing.assert_allclose(layers[0].bias_grad, layers[1].bias_grad, rtol=1e-11,
                               atol=1e-12)
