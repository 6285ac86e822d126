"""The Conv3DTranspose layer: against Keras 3, PyTorch, the numpy reference and finite
differences, and every constructor argument's behaviour."""
import itertools
import json
import os
import re
import warnings

import numpy as np
import pytest

from helpers import tol
from reference import conv_transpose3d_ref
from tconv3d import activations, constraints, initializers, optimizers, regularizers
from tconv3d.layers import (Conv3DTranspose, image_data_format, kernel_from_torch,
                            kernel_to_torch, layer_conv_3d_transpose)

# Keras 3's torch backend calls np.array(tensor, copy=False) internally (its noise, not ours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

DTYPES = [np.float32, np.float64]
FORMATS = ["channels_last", "channels_first"]
SPATIAL = (3, 4, 2)


@pytest.fixture(autouse=True)
def _channels_last_keras_home(tmp_path, monkeypatch):
    """A Keras config saying channels_last, so data_format=None is the same everywhere."""
    (tmp_path / "keras.json").write_text(json.dumps({"image_data_format": "channels_last"}))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))


def _input(rng, fmt, dtype, batch=2, spatial=SPATIAL, channels=3):
    shape = (batch, *spatial, channels) if fmt == "channels_last" else (batch, channels, *spatial)
    return rng.standard_normal(shape).astype(dtype)


def _np(keras, t):
    return keras.ops.convert_to_numpy(t)


def _reference_output(layer, x):
    y = conv_transpose3d_ref(x, layer.kernel, layer.bias, strides=layer.strides,
                             padding=layer.padding, output_padding=layer.output_padding,
                             dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    return layer.activation(y)


# --- forward against Keras --------------------------------------------------------------------
def _keras_grid():
    cases = []
    geometries = [(1, 1), (2, 1), ((1, 2, 3), 1), (1, 2), (1, (2, 1, 3))]
    kernels = [(3, 3, 3), (2, 3, 4), (1, 2, 3)]
    acts = [None, "relu", "sigmoid", "tanh", "gelu", "elu", "swish", "leaky_relu"]
    for i, ((strides, dilation), padding, explicit_op, fmt, dtype) in enumerate(
            itertools.product(geometries, ("valid", "same"), (False, True), FORMATS, DTYPES)):
        s3 = (strides,) * 3 if isinstance(strides, int) else strides
        op = tuple(s - 1 for s in s3) if explicit_op else None
        cases.append(pytest.param(
            dict(kernel_size=kernels[i % 3], strides=strides, padding=padding,
                 output_padding=op, dilation_rate=dilation, data_format=fmt,
                 activation=acts[i % len(acts)], use_bias=i % 4 != 3), dtype,
            id=f"s{strides}-d{dilation}-{padding}-op{op}-{fmt}-{np.dtype(dtype).name}"))
    return cases


def _keras_pair(keras, rng, kwargs, dtype, x_shape):
    """A built Keras layer with random weights, and ours with the same weights."""
    klayer = keras.layers.Conv3DTranspose(filters=2, dtype=np.dtype(dtype).name, **kwargs)
    klayer.build(x_shape)
    klayer.set_weights([rng.standard_normal(w.shape).astype(dtype)
                        for w in klayer.get_weights()])
    ours = Conv3DTranspose(2, dtype=np.dtype(dtype).name, **kwargs)
    ours.set_weights(klayer.get_weights())
    return klayer, ours


@pytest.mark.parametrize("kwargs,dtype", _keras_grid())
def test_forward_matches_keras(keras, rng, kwargs, dtype):
    x = _input(rng, kwargs["data_format"], dtype)
    klayer, ours = _keras_pair(keras, rng, kwargs, dtype, x.shape)
    y = ours(x)
    expected = _np(keras, klayer(x))
    assert y.dtype == dtype and y.shape == expected.shape
    assert ours.compute_output_shape(x.shape) == tuple(klayer.compute_output_shape(x.shape))
    np.testing.assert_allclose(y, expected, **tol(dtype))


@pytest.mark.parametrize("name", sorted(activations.ELEMENTWISE))
def test_every_activation_matches_keras(keras, rng, name):
    kwargs = dict(kernel_size=(2, 3, 2), strides=2, padding="same", activation=name)
    x = _input(rng, "channels_last", np.float64)
    klayer, ours = _keras_pair(keras, rng, kwargs, np.float64, x.shape)
    np.testing.assert_allclose(ours(x), _np(keras, klayer(x)), **tol(np.float64))


def test_keras_weights_round_trip(keras, rng):
    x = _input(rng, "channels_last", np.float32)
    klayer, ours = _keras_pair(keras, rng, dict(kernel_size=3, strides=2), np.float32, x.shape)
    klayer2 = keras.layers.Conv3DTranspose(2, 3, strides=2)
    klayer2.build(x.shape)
    klayer2.set_weights(ours.get_weights())  # our weights load into Keras as they are
    np.testing.assert_allclose(_np(keras, klayer2(x)), ours(x), **tol(np.float32))


def test_from_keras_config(keras, rng):
    klayer = keras.layers.Conv3DTranspose(
        4, (3, 2, 3), strides=(2, 1, 2), padding="same", output_padding=(1, 0, 0),
        data_format="channels_first", activation="selu", use_bias=True,
        kernel_initializer="he_normal", bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L2(0.125), bias_regularizer="l1",
        activity_regularizer=keras.regularizers.L1L2(0.25, 0.5),
        kernel_constraint=keras.constraints.MaxNorm(3.0, axis=[0, 1, 2, 3]),
        bias_constraint="non_neg", name="from_keras")
    x = _input(rng, "channels_first", np.float32)
    klayer.build(x.shape)
    ours = Conv3DTranspose.from_config(klayer.get_config())
    assert ours.name == "from_keras"
    assert isinstance(ours.kernel_initializer, initializers.HeNormal)
    assert ours.kernel_regularizer == regularizers.L2(0.125)
    assert ours.activity_regularizer == regularizers.L1L2(0.25, 0.5)
    assert ours.kernel_constraint.get_config() == {"max_value": 3.0, "axis": [0, 1, 2, 3]}
    assert isinstance(ours.bias_constraint, constraints.NonNeg)
    ours.set_weights(klayer.get_weights())
    np.testing.assert_allclose(ours(x), _np(keras, klayer(x)), **tol(np.float32))
    np.testing.assert_allclose([float(v) for v in ours.losses],
                               [float(_np(keras, v)) for v in klayer.losses], **tol(np.float32))


@pytest.mark.parametrize("trainable", [True, False])
def test_losses_match_keras(keras, rng, trainable):
    kwargs = dict(kernel_size=3, strides=2, padding="same", activation="tanh",
                  kernel_regularizer=regularizers.L1(0.25), bias_regularizer=regularizers.L2(0.5),
                  activity_regularizer=regularizers.L1L2(0.125, 0.25))
    x = _input(rng, "channels_last", np.float32, batch=3)
    klayer = keras.layers.Conv3DTranspose(
        2, 3, strides=2, padding="same", activation="tanh",
        kernel_regularizer=keras.regularizers.L1(0.25),
        bias_regularizer=keras.regularizers.L2(0.5),
        activity_regularizer=keras.regularizers.L1L2(0.125, 0.25), trainable=trainable)
    klayer.build(x.shape)
    klayer.set_weights([rng.standard_normal(w.shape).astype(np.float32)
                        for w in klayer.get_weights()])
    kwargs.pop("kernel_size")
    ours = Conv3DTranspose(2, 3, trainable=trainable, **kwargs)
    ours.set_weights(klayer.get_weights())
    y = ours(x)
    klayer(x)
    theirs = [float(_np(keras, v)) for v in klayer.losses]
    assert len(ours.losses) == len(theirs) == (3 if trainable else 1)
    np.testing.assert_allclose([float(v) for v in ours.losses], theirs, **tol(np.float32))
    # The activity penalty is divided by the batch size (Keras 3).
    np.testing.assert_allclose(ours.losses[0], (0.125 * np.abs(y).sum() + 0.25 * (y ** 2).sum())
                               / 3, **tol(np.float32))


def test_keras_refuses_strides_with_dilation_we_match_reference(keras, rng):
    with pytest.raises(ValueError, match="dilation_rate"):
        keras.layers.Conv3DTranspose(2, 3, strides=2, dilation_rate=2)
    for fmt, padding, op in itertools.product(FORMATS, ("valid", "same"), (None, (1, 0, 2))):
        layer = Conv3DTranspose(2, (3, 2, 3), strides=(2, 3, 3), dilation_rate=(2, 2, 3),
                                padding=padding, output_padding=op, data_format=fmt,
                                activation="softplus", dtype="float64", seed=1,
                                bias_initializer="random_normal")
        x = _input(rng, fmt, np.float64)
        np.testing.assert_allclose(layer(x), _reference_output(layer, x), **tol(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_forward_matches_reference(rng, fmt, dtype):
    for strides, padding, op, dilation, k in [(1, "valid", None, 1, 3), (2, "same", None, 1, 4),
                                              (3, "same", (2, 0, 1), 1, (3, 1, 2)),
                                              (1, "same", 0, 2, 3), (2, "valid", 1, 1, 1)]:
        layer = Conv3DTranspose(3, k, strides=strides, padding=padding, output_padding=op,
                                dilation_rate=dilation, data_format=fmt, activation="mish",
                                dtype=np.dtype(dtype).name, seed=2,
                                bias_initializer="random_uniform")
        x = _input(rng, fmt, dtype, spatial=(3, 1, 5))
        y = layer(x)
        assert y.dtype == dtype
        assert y.shape == layer.compute_output_shape(x.shape)
        np.testing.assert_allclose(y, _reference_output(layer, x), **tol(dtype))


def test_num_threads_do_not_change_numbers(rng):
    x = _input(rng, "channels_last", np.float64, batch=3, spatial=(5, 4, 6))
    outs, grads = [], []
    for n in (1, 2, 3):
        layer = Conv3DTranspose(4, 3, strides=2, padding="same", dtype="float64", seed=0,
                                num_threads=n, activation="sigmoid")
        outs.append(layer(x))
        grads.append((layer.backward(np.ones_like(outs[-1])), layer.kernel_grad))
    for y, (gx, gk) in zip(outs[1:], grads[1:]):
        np.testing.assert_array_equal(y, outs[0])
        np.testing.assert_array_equal(gx, grads[0][0])
        np.testing.assert_array_equal(gk, grads[0][1])


# --- backward ---------------------------------------------------------------------------------
BACKWARD_CASES = [
    dict(kernel_size=3, strides=2, padding="same", activation="tanh"),
    dict(kernel_size=(2, 3, 1), strides=(1, 2, 3), padding="valid", output_padding=(0, 1, 2),
         activation="gelu", data_format="channels_first"),
    dict(kernel_size=2, strides=1, padding="same", dilation_rate=2, activation="softplus",
         use_bias=False),
    dict(kernel_size=3, strides=2, dilation_rate=2, padding="same", activation="elu",
         data_format="channels_first"),
    dict(kernel_size=(3, 1, 2), strides=3, padding="valid", activation=None),
]
REGULARIZED = dict(kernel_regularizer=regularizers.L1L2(0.25, 0.125),
                   bias_regularizer=regularizers.L2(0.5),
                   activity_regularizer=regularizers.L1L2(0.0625, 0.25))


def _loss(layer, x, r):
    """The scalar L = sum(y * r) + sum(layer.losses) whose gradient backward(r) gives."""
    return float(np.sum(layer(x) * r) + sum(float(v) for v in layer.losses))


@pytest.mark.parametrize("regularized", [False, True])
@pytest.mark.parametrize("case", range(len(BACKWARD_CASES)))
def test_backward_finite_differences(rng, case, regularized):
    kwargs = dict(BACKWARD_CASES[case], **(REGULARIZED if regularized else {}))
    layer = Conv3DTranspose(3, dtype="float64", seed=case, bias_initializer="random_normal",
                            **kwargs)
    x = _input(rng, layer.data_format, np.float64)
    y = layer(x)
    r = rng.standard_normal(y.shape)
    gx = layer.backward(r)
    gk, gb = layer.kernel_grad, layer.bias_grad
    h = 1e-6
    # Directional central differences: error ~h^2 from truncation and ~1e-16 |L| / h from
    # rounding, so 1e-6 relative is what they resolve (exact oracles are Keras and torch).
    dx = rng.standard_normal(x.shape)
    fd = (_loss(layer, x + h * dx, r) - _loss(layer, x - h * dx, r)) / (2 * h)
    np.testing.assert_allclose(np.sum(gx * dx), fd, rtol=1e-6)
    weights = layer.get_weights()
    for i, g in enumerate([gk, gb] if layer.use_bias else [gk]):
        d = rng.standard_normal(g.shape)
        plus = [w + h * d if j == i else w for j, w in enumerate(weights)]
        minus = [w - h * d if j == i else w for j, w in enumerate(weights)]
        layer.set_weights(plus)
        lp = _loss(layer, x, r)
        layer.set_weights(minus)
        lm = _loss(layer, x, r)
        layer.set_weights(weights)
        np.testing.assert_allclose(np.sum(g * d), (lp - lm) / (2 * h), rtol=1e-6)


@pytest.mark.parametrize("case", range(len(BACKWARD_CASES) - 2))  # Keras: no strides+dilation
def test_backward_matches_keras_autograd(keras, torch, rng, case):
    kwargs = dict(BACKWARD_CASES[case], **REGULARIZED)
    ours = Conv3DTranspose(3, dtype="float64", seed=case, bias_initializer="random_normal",
                           **kwargs)
    kkwargs = dict(BACKWARD_CASES[case], dtype="float64",
                   kernel_regularizer=keras.regularizers.L1L2(0.25, 0.125),
                   bias_regularizer=keras.regularizers.L2(0.5),
                   activity_regularizer=keras.regularizers.L1L2(0.0625, 0.25))
    klayer = keras.layers.Conv3DTranspose(3, **kkwargs)
    x = _input(rng, ours.data_format, np.float64)
    y = ours(x)
    klayer.build(x.shape)
    klayer.set_weights(ours.get_weights())
    r = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    ky = klayer(xt)
    (torch.sum(ky * torch.tensor(r)) + sum(klayer.losses)).backward()
    gx = ours.backward(r)
    np.testing.assert_allclose(gx, xt.grad.numpy(), **tol(np.float64))
    np.testing.assert_allclose(ours.kernel_grad, klayer.kernel.value.grad.numpy(),
                               **tol(np.float64))
    if ours.use_bias:
        np.testing.assert_allclose(ours.bias_grad, klayer.bias.value.grad.numpy(),
                                   **tol(np.float64))


def test_backward_float32(rng):
    layer = Conv3DTranspose(2, 3, strides=2, activation="relu", kernel_regularizer="l2", seed=0)
    x = _input(rng, "channels_last", np.float32)
    y = layer(x)
    gx = layer.backward(np.ones_like(y))
    assert gx.dtype == layer.kernel_grad.dtype == layer.bias_grad.dtype == np.float32
    ref = Conv3DTranspose(2, 3, strides=2, activation="relu", kernel_regularizer="l2", seed=0,
                          dtype="float64")
    ref(x.astype(np.float64))
    ref.backward(np.ones(y.shape))
    np.testing.assert_allclose(layer.kernel_grad, ref.kernel_grad, **tol(np.float32))


def test_backward_errors(rng):
    layer = Conv3DTranspose(2, 3)
    with pytest.raises(RuntimeError, match="call `layer\\(x\\)` before"):
        layer.backward(np.zeros((1, 3, 3, 3, 2)))
    y = layer(_input(rng, "channels_last", np.float32))
    with pytest.raises(ValueError, match="shape of the last output"):
        layer.backward(np.zeros(y.shape[:-1] + (3,)))


def test_custom_activation_needs_derivative(rng):
    x = _input(rng, "channels_last", np.float64)

    def cube(v):
        return v ** 3

    layer = Conv3DTranspose(2, 2, activation=cube, seed=0, dtype="float64")
    y = layer(x)
    base = Conv3DTranspose(2, 2, seed=0, dtype="float64")
    np.testing.assert_allclose(y, base(x) ** 3, **tol(np.float64))
    with pytest.raises(NotImplementedError, match="'cube' has no derivative"):
        layer.backward(np.ones_like(y))
    layer = Conv3DTranspose(2, 2, activation=activations.Activation(cube, lambda v: 3 * v ** 2),
                            seed=0, dtype="float64")
    layer(x)
    gx = layer.backward(np.ones_like(y))
    np.testing.assert_allclose(gx, base.backward(3 * base(x) ** 2), **tol(np.float64))
    np.testing.assert_allclose(layer.kernel_grad, base.kernel_grad, **tol(np.float64))


def test_regularizer_without_gradient(rng):
    layer = Conv3DTranspose(2, 2, kernel_regularizer=lambda w: float(np.sum(w ** 4)))
    y = layer(_input(rng, "channels_last", np.float32))
    assert len(layer.losses) == 1
    with pytest.raises(NotImplementedError, match="no gradient"):
        layer.backward(np.ones_like(y))


def test_trainable_false(rng):
    x = _input(rng, "channels_last", np.float64)
    frozen = Conv3DTranspose(2, 3, trainable=False, seed=4, dtype="float64", activation="tanh",
                             kernel_regularizer="l2")
    live = Conv3DTranspose(2, 3, seed=4, dtype="float64", activation="tanh")
    y = frozen(x)
    gx = frozen.backward(np.ones_like(y))
    live(x)
    np.testing.assert_array_equal(gx, live.backward(np.ones_like(y)))
    assert frozen.kernel_grad is None and frozen.bias_grad is None
    assert frozen.trainable_weights == [] and len(frozen.non_trainable_weights) == 2
    assert frozen.losses == []  # weight penalties only for trainable weights, as Keras
    before = frozen.get_weights()
    optimizers.Adam().apply_gradients(frozen)
    for a, b in zip(before, frozen.get_weights()):
        np.testing.assert_array_equal(a, b)


# --- training -----------------------------------------------------------------------------------
def test_training_matches_keras(keras, torch, rng):
    """Three Adam steps with regularizers and constraints equal Keras' on the torch backend."""
    kwargs = dict(kernel_size=(2, 3, 2), strides=2, padding="same", activation="sigmoid")
    x = _input(rng, "channels_last", np.float64)
    klayer = keras.layers.Conv3DTranspose(
        2, dtype="float64", kernel_regularizer=keras.regularizers.L2(0.25),
        activity_regularizer=keras.regularizers.L1(0.5),
        kernel_constraint=keras.constraints.MaxNorm(0.5, axis=[0, 1, 2, 3]),
        bias_constraint=keras.constraints.NonNeg(), **kwargs)
    klayer.build(x.shape)
    ours = Conv3DTranspose(2, dtype="float64", kernel_regularizer=regularizers.L2(0.25),
                           activity_regularizer=regularizers.L1(0.5),
                           kernel_constraint=constraints.MaxNorm(0.5, axis=[0, 1, 2, 3]),
                           bias_constraint="non_neg", **kwargs)
    start = [rng.standard_normal(w.shape) * 0.3 for w in klayer.get_weights()]
    klayer.set_weights(start)
    ours.set_weights(start)
    kopt = keras.optimizers.Adam(learning_rate=2.0 ** -4)
    opt = optimizers.Adam(learning_rate=2.0 ** -4)
    for _ in range(3):
        r = rng.standard_normal(ours(x).shape)
        ours.backward(r)
        opt.apply_gradients(ours)
        ky = klayer(torch.tensor(x))
        loss = torch.sum(ky * torch.tensor(r)) + sum(klayer.losses)
        grads = torch.autograd.grad(loss, [v.value for v in klayer.trainable_weights])
        kopt.apply_gradients(zip(grads, klayer.trainable_weights))
    for a, b in zip(ours.get_weights(), klayer.get_weights()):
        np.testing.assert_allclose(a, b, **tol(np.float64))
    assert np.all(ours.bias >= 0)


def test_optimizer_applies_constraints_and_updates_in_place(rng):
    layer = Conv3DTranspose(2, 3, kernel_constraint="non_neg",
                            bias_constraint=constraints.MaxNorm(0.1), seed=0)
    y = layer(_input(rng, "channels_last", np.float32))
    kernel = layer.kernel
    layer.backward(rng.standard_normal(y.shape).astype(np.float32))
    opt = optimizers.SGD(learning_rate=1.0)
    assert opt.apply_gradients(layer) == 1
    assert layer.kernel is kernel  # in place
    assert np.all(layer.kernel >= 0) and np.linalg.norm(layer.bias) <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="no gradients"):
        optimizers.SGD().apply_gradients(Conv3DTranspose(2, 3, input_shape=(2, 2, 2, 1)))


def test_optimizer_on_several_layers(rng):
    a = Conv3DTranspose(2, 2, seed=0)
    b = Conv3DTranspose(3, 2, seed=1, use_bias=False)
    y = b(a(_input(rng, "channels_last", np.float32)))
    a.backward(b.backward(np.ones_like(y)))
    before = a.get_weights() + b.get_weights()
    opt = optimizers.Adam()
    opt.apply_gradients([a, b])
    assert len(opt.variables) == 3
    for w0, w1 in zip(before, a.get_weights() + b.get_weights()):
        assert not np.array_equal(w0, w1)


# --- PyTorch interoperability -----------------------------------------------------------------
TORCH_EQUIVALENT = [  # (kernel, stride, padding, output_padding, dilation) -> (padding, op)
    ((3, 3, 3), 1, 0, 0, 1, "valid", None),
    ((2, 2, 2), 2, 0, 0, 1, "valid", None),
    ((3, 3, 3), 2, 0, 1, 1, "valid", (1, 1, 1)),
    ((1, 1, 1), 3, 0, 0, 1, "valid", (0, 0, 0)),
    ((3, 3, 3), 2, 1, 0, 1, "same", (0, 0, 0)),
    ((4, 4, 4), 2, 1, 0, 1, "same", None),
    ((3, 3, 3), 1, 2, 0, 2, "same", None),
    ((3, 3, 3), 3, 1, 0, 1, "same", (0, 0, 0)),
    ((5, 3, 3), (3, 2, 3), (1, 1, 1), 0, 1, "same", (2, 0, 0)),
    ((3, 2, 4), (2, 1, 3), 0, (1, 0, 2), 1, "valid", (1, 0, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,op,d,padding,output_padding", TORCH_EQUIVALENT)
def test_from_torch(torch, rng, k, s, p, op, d, padding, output_padding, dtype):
    module = torch.nn.ConvTranspose3d(3, 4, k, stride=s, padding=p, output_padding=op,
                                      dilation=d, dtype=getattr(torch, np.dtype(dtype).name))
    layer = Conv3DTranspose.from_torch(module)
    assert (layer.padding, layer.output_padding) == (padding, output_padding)
    assert layer.dtype == np.dtype(dtype).name and layer.data_format == "channels_first"
    x = _input(rng, "channels_first", dtype, spatial=(4, 3, 5))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(layer(x), expected, **tol(dtype))
    last = Conv3DTranspose.from_torch(module, data_format="channels_last", activation="relu")
    np.testing.assert_allclose(last(np.moveaxis(x, 1, -1)),
                               np.maximum(np.moveaxis(expected, 1, -1), 0), **tol(dtype))
    back = layer.to_torch()  # and back to torch
    assert (back.padding, back.output_padding) == (module.padding, module.output_padding)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), expected, **tol(dtype))


@pytest.mark.parametrize("k,s,d,padding,op", [
    (3, 1, 1, "same", None), (4, 2, 1, "same", None), (3, 2, 1, "valid", None),
    (2, 3, 1, "valid", None), (3, 2, 1, "valid", 1), ((5, 3, 1), (3, 1, 2), 1, "same", (2, 0, 1)),
    (3, 1, 2, "same", 0), (1, 2, 1, "same", None)])
def test_to_torch(torch, rng, k, s, d, padding, op):
    layer = Conv3DTranspose(4, k, strides=s, dilation_rate=d, padding=padding,
                            output_padding=op, data_format="channels_first", dtype="float64",
                            seed=0, bias_initializer="random_normal", input_shape=(3, 4, 3, 5))
    module = layer.to_torch()
    x = _input(rng, "channels_first", np.float64, spatial=(4, 3, 5))
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), layer(x),
                                   **tol(np.float64))
    assert module.weight.dtype == torch.float64


@pytest.mark.parametrize("k,s,p,op,d", [(3, 2, 1, 1, 1), (3, 1, 2, 0, 1), (2, 2, 1, 1, 1),
                                        (3, 1, 0, 1, 2), ((3, 4, 3), 2, (1, 1, 1), 0, 1)])
def test_from_torch_without_keras_equivalent(torch, k, s, p, op, d):
    module = torch.nn.ConvTranspose3d(2, 2, k, stride=s, padding=p, output_padding=op,
                                      dilation=d)
    with pytest.raises(ValueError, match="no Keras equivalent"):
        Conv3DTranspose.from_torch(module)


def test_from_torch_refusals(torch):
    with pytest.raises(ValueError, match="groups=1"):
        Conv3DTranspose.from_torch(torch.nn.ConvTranspose3d(2, 2, 3, groups=2))
    module = torch.nn.ConvTranspose3d(2, 2, 3)
    module.padding_mode = "reflect"
    with pytest.raises(ValueError, match="padding_mode"):
        Conv3DTranspose.from_torch(module)
    with pytest.raises(TypeError, match="ConvTranspose3d"):
        Conv3DTranspose.from_torch(torch.nn.Conv3d(2, 2, 3))
    with pytest.raises(TypeError, match="taken from the module"):
        Conv3DTranspose.from_torch(torch.nn.ConvTranspose3d(2, 2, 3), padding="same")
    no_bias = Conv3DTranspose.from_torch(torch.nn.ConvTranspose3d(2, 5, 3, bias=False))
    assert not no_bias.use_bias and no_bias.kernel.shape == (3, 3, 3, 5, 2)


@pytest.mark.parametrize("k,s,op", [(3, 2, None), (2, 1, None), (3, 3, 1), (5, 2, None)])
def test_to_torch_without_equivalent(torch, k, s, op):
    layer = Conv3DTranspose(2, k, strides=s, padding="same", output_padding=op,
                            input_shape=(3, 3, 3, 2))
    with pytest.raises(ValueError, match="asymmetrically"):
        layer.to_torch()


def test_to_torch_warns_about_activation_and_needs_build(torch):
    with pytest.raises(ValueError, match="not built"):
        Conv3DTranspose(2, 3).to_torch()
    layer = Conv3DTranspose(2, 3, activation="relu", input_shape=(None, None, None, 2))
    with pytest.warns(UserWarning, match="activation 'relu'"):
        layer.to_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Conv3DTranspose(2, 3, input_shape=(None, None, None, 2)).to_torch()


def test_kernel_layout_helpers(torch, rng):
    w = rng.standard_normal((3, 4, 2, 5, 1))  # torch: (in, out, kd, kh, kw)
    k = kernel_from_torch(w)
    assert k.shape == (2, 5, 1, 4, 3)
    np.testing.assert_array_equal(k[1, 2, 0, 3, 2], w[2, 3, 1, 2, 0])
    np.testing.assert_array_equal(kernel_to_torch(k), w)
    t = torch.tensor(w, requires_grad=True)
    np.testing.assert_array_equal(kernel_from_torch(t), k)
    with pytest.raises(ValueError, match="5-D"):
        kernel_to_torch(np.zeros((2, 2)))


# --- constructor arguments --------------------------------------------------------------------
def test_data_format_none_reads_keras_config(tmp_path, monkeypatch):
    assert Conv3DTranspose(2, 3).data_format == "channels_last"
    (tmp_path / "keras.json").write_text(json.dumps({"image_data_format": "channels_first"}))
    assert image_data_format() == "channels_first"
    assert Conv3DTranspose(2, 3).data_format == "channels_first"
    assert Conv3DTranspose(2, 3, data_format="channels_last").data_format == "channels_last"
    (tmp_path / "keras.json").write_text(json.dumps({"image_data_format": "nchw"}))
    with pytest.raises(ValueError, match="image_data_format"):
        Conv3DTranspose(2, 3)
    (tmp_path / "keras.json").write_text("{not json")
    assert Conv3DTranspose(2, 3).data_format == "channels_last"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "missing"))
    assert Conv3DTranspose(2, 3).data_format == "channels_last"
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".keras").mkdir()
    (tmp_path / ".keras" / "keras.json").write_text(
        json.dumps({"image_data_format": "channels_first"}))
    assert Conv3DTranspose(2, 3).data_format == "channels_first"


def test_input_shape_builds_and_checks(rng):
    layer = Conv3DTranspose(2, 3, input_shape=(4, None, 5, 3))
    assert layer.built and layer.kernel.shape == (3, 3, 3, 2, 3)
    assert layer.batch_input_shape == (None, 4, None, 5, 3)
    layer(np.zeros((2, 4, 7, 5, 3)))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 4, None, 5, 3\)"):
        layer(np.zeros((2, 5, 7, 5, 3)))
    fixed = Conv3DTranspose(2, 3, input_shape=(4, 4, 4, 3), batch_size=2)
    assert fixed.batch_input_shape == (2, 4, 4, 4, 3)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        fixed(np.zeros((3, 4, 4, 4, 3)))
    first = Conv3DTranspose(2, 3, batch_input_shape=(None, 2, 3, 4, 5),
                            data_format="channels_first")
    assert first.in_channels == 2
    unknown = Conv3DTranspose(2, 3, input_shape=(4, 4, 4, None))
    assert not unknown.built
    with pytest.raises(ValueError, match="disagree"):
        Conv3DTranspose(2, 3, input_shape=(4, 4, 4, 3), batch_input_shape=(1, 4, 4, 4, 2))
    with pytest.raises(ValueError, match="batch_size"):
        Conv3DTranspose(2, 3, batch_input_shape=(1, 4, 4, 4, 2), batch_size=2)
    with pytest.raises(ValueError, match="input_shape"):
        Conv3DTranspose(2, 3, input_shape=(4, 4, 3))
    only_batch = Conv3DTranspose(2, 3, batch_size=2)
    with pytest.raises(ValueError, match="expects inputs"):
        only_batch(np.zeros((1, 3, 3, 3, 1)))


def test_input_channel_and_rank_checks(rng):
    layer = Conv3DTranspose(2, 3)
    layer(np.zeros((1, 3, 3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="built for 4 input channels"):
        layer(np.zeros((1, 3, 3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="5-D"):
        layer(np.zeros((3, 3, 3, 4), np.float32))
    with pytest.raises(TypeError, match="real numbers"):
        layer(np.zeros((1, 3, 3, 3, 4), complex))


def test_unique_names():
    names = [Conv3DTranspose(2, 3).name for _ in range(3)]
    assert len(set(names)) == 3
    assert all(re.fullmatch(r"conv3d_transpose(_\d+)?", n) for n in names)
    suffix = [int(n.rsplit("_", 1)[1]) if n[-1].isdigit() else 0 for n in names]
    assert suffix == sorted(suffix) and suffix[1] == suffix[0] + 1
    assert Conv3DTranspose(2, 3, name="decoder").name == "decoder"
    with pytest.raises(ValueError, match="`name`"):
        Conv3DTranspose(2, 3, name=3)


def test_dtype(rng):
    x = _input(rng, "channels_last", np.float64)
    layer = Conv3DTranspose(2, 3)
    assert layer.dtype == "float32"
    assert layer(x).dtype == np.float32 and layer.kernel.dtype == np.float32  # input cast
    layer64 = Conv3DTranspose(2, 3, dtype="float64")
    assert layer64(x.astype(np.float32)).dtype == np.float64
    assert layer64.kernel.dtype == layer64.bias.dtype == np.float64
    assert Conv3DTranspose(2, 3, dtype=np.float64).dtype == "float64"
    assert Conv3DTranspose(2, 3, dtype={"class_name": "DTypePolicy",
                                        "config": {"name": "float64"}}).dtype == "float64"
    with pytest.raises(ValueError, match="`dtype`"):
        Conv3DTranspose(2, 3, dtype="float16")
    ints = Conv3DTranspose(2, 3, dtype="float64", seed=0)
    np.testing.assert_array_equal(ints(np.ones((1, 2, 2, 2, 1), int)),
                                  ints(np.ones((1, 2, 2, 2, 1))))


def test_initial_weights(rng):
    kernel = rng.standard_normal((2, 2, 2, 3, 4))
    bias = rng.standard_normal(3)
    layer = Conv3DTranspose(3, 2, weights=[kernel, bias], dtype="float64")
    assert not layer.built
    layer(_input(rng, "channels_last", np.float64, channels=4))
    np.testing.assert_array_equal(layer.kernel, kernel)
    np.testing.assert_array_equal(layer.bias, bias)
    built = Conv3DTranspose(3, 2, weights=[kernel], use_bias=False, input_shape=(2, 2, 2, 4))
    np.testing.assert_allclose(built.kernel, kernel.astype(np.float32))
    with pytest.raises(ValueError, match="expects 2 weight"):
        Conv3DTranspose(3, 2, weights=[kernel], input_shape=(2, 2, 2, 4))
    with pytest.raises(ValueError, match="kernel"):
        Conv3DTranspose(3, 2, weights=[kernel, bias], input_shape=(2, 2, 2, 5))


def test_seed_reproducible():
    kw = dict(input_shape=(3, 3, 3, 4), bias_initializer="random_normal")
    a, b = Conv3DTranspose(5, 3, seed=11, **kw), Conv3DTranspose(5, 3, seed=11, **kw)
    c = Conv3DTranspose(5, 3, seed=12, **kw)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.kernel, c.kernel)
    assert not np.array_equal(Conv3DTranspose(5, 3, **kw).kernel,
                              Conv3DTranspose(5, 3, **kw).kernel)
    # An initializer with its own seed keeps it.
    own = initializers.RandomNormal(seed=5)
    d = Conv3DTranspose(5, 3, seed=1, kernel_initializer=own, input_shape=(3, 3, 3, 4))
    np.testing.assert_array_equal(d.kernel, own((3, 3, 3, 5, 4)))


def test_initializers_in_layer(rng):
    shape = (3, 2, 2, 4, 6)
    layer = Conv3DTranspose(4, (3, 2, 2), kernel_initializer="ones", bias_initializer="ones",
                            input_shape=(2, 2, 2, 6))
    np.testing.assert_array_equal(layer.kernel, np.ones(shape))
    np.testing.assert_array_equal(layer.bias, np.ones(4))
    cfg = Conv3DTranspose(4, (3, 2, 2), input_shape=(2, 2, 2, 6), kernel_initializer={
        "class_name": "Constant", "config": {"value": 0.5}})
    np.testing.assert_array_equal(cfg.kernel, np.full(shape, 0.5))
    fn = Conv3DTranspose(4, (3, 2, 2), input_shape=(2, 2, 2, 6),
                         kernel_initializer=lambda s, dtype=None: np.full(s, 2.0, dtype))
    np.testing.assert_array_equal(fn.kernel, np.full(shape, 2.0))
    big = Conv3DTranspose(64, 4, input_shape=(2, 2, 2, 32), seed=0)  # glorot_uniform default
    limit = np.sqrt(6 / ((64 + 32) * 64))
    assert np.abs(big.kernel).max() <= limit and np.abs(big.kernel).max() > 0.99 * limit
    np.testing.assert_array_equal(big.bias, np.zeros(64))
    with pytest.raises(ValueError, match="returned an array of shape"):
        Conv3DTranspose(4, 2, input_shape=(2, 2, 2, 6),
                        kernel_initializer=lambda s, dtype=None: np.zeros(3))


def test_get_set_weights(rng):
    layer = Conv3DTranspose(3, 2, input_shape=(2, 2, 2, 4))
    weights = layer.get_weights()
    weights[0][...] = 7.0  # copies
    assert not np.any(layer.kernel == 7.0)
    kernel = layer.kernel
    new = [rng.standard_normal((2, 2, 2, 3, 4)), rng.standard_normal(3)]
    layer.set_weights(new)
    assert layer.kernel is kernel  # values copied in place
    np.testing.assert_allclose(layer.kernel, new[0].astype(np.float32))
    with pytest.raises(ValueError, match=r"weights\[0\] \(kernel\) must have shape"):
        layer.set_weights([np.zeros((2, 2, 2, 3, 5)), np.zeros(3)])
    with pytest.raises(ValueError, match=r"weights\[1\] \(bias\)"):
        layer.set_weights([new[0], np.zeros(4)])
    with pytest.raises(ValueError, match="expects 2 weight"):
        layer.set_weights([new[0]])
    layer.kernel = np.zeros((2, 2, 2, 3, 4))
    assert layer.kernel is kernel and not np.any(kernel)
    with pytest.raises(ValueError, match="has shape"):
        layer.bias = np.zeros(4)
    unbuilt = Conv3DTranspose(3, 2, use_bias=False)
    unbuilt.set_weights([new[0]])
    assert unbuilt.built and unbuilt.in_channels == 4


def test_config_round_trip(rng):
    layer = Conv3DTranspose(
        4, (3, 2, 1), strides=(2, 1, 3), padding="same", output_padding=(1, 0, 2),
        data_format="channels_first", dilation_rate=1, activation="hard_silu",
        kernel_initializer="lecun_normal", bias_initializer=initializers.RandomUniform(-1, 1),
        kernel_regularizer="l1_l2", bias_regularizer=regularizers.L2(0.3),
        activity_regularizer="l1", kernel_constraint=constraints.UnitNorm(axis=[0, 1, 2, 3]),
        bias_constraint="non_neg", input_shape=(3, 4, 5, 6), dtype="float64", name="dec",
        trainable=False, seed=9, num_threads=2)
    config = layer.get_config()
    json.dumps({k: v for k, v in config.items()})  # built-ins serialize to plain data
    again = Conv3DTranspose.from_config(config)
    assert again.get_config() == config
    for a, b in zip(layer.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _input(rng, "channels_first", np.float64, spatial=(4, 5, 6))
    np.testing.assert_array_equal(layer(x), again(x))
    custom = Conv3DTranspose(2, 2, activation=lambda v: v * 2.0)
    assert Conv3DTranspose.from_config(custom.get_config()).activation is custom.activation


def test_compute_output_shape_and_count_params(keras):
    layer = Conv3DTranspose(5, (3, 2, 4), strides=(2, 3, 1), padding="same")
    klayer = keras.layers.Conv3DTranspose(5, (3, 2, 4), strides=(2, 3, 1), padding="same")
    for shape in [(2, 3, 4, 5, 6), (None, 3, None, 5, 6), (1, 1, 1, 1, 2)]:
        assert layer.compute_output_shape(shape) == tuple(klayer.compute_output_shape(shape))
    with pytest.raises(ValueError, match="not built"):
        layer.count_params()
    layer.build((None, 3, 4, 5, 6))
    klayer.build((None, 3, 4, 5, 6))
    assert layer.count_params() == klayer.count_params() == 3 * 2 * 4 * 5 * 6 + 5
    with pytest.raises(ValueError, match="built for 6 input channels"):
        layer.compute_output_shape((1, 3, 4, 5, 7))


def test_constructor_validation():
    with pytest.raises(ValueError, match="`filters`"):
        Conv3DTranspose(0, 3)
    with pytest.raises(ValueError, match="`kernel_size`"):
        Conv3DTranspose(2, (3, 3))
    with pytest.raises(ValueError, match="`padding`"):
        Conv3DTranspose(2, 3, padding="full")
    with pytest.raises(ValueError, match="`output_padding` must be smaller"):
        Conv3DTranspose(2, 3, strides=2, output_padding=2)
    with pytest.raises(ValueError, match="`data_format`"):
        Conv3DTranspose(2, 3, data_format="nchw")
    with pytest.raises(ValueError, match="Unknown activation"):
        Conv3DTranspose(2, 3, activation="reLU")
    with pytest.raises(ValueError, match="`use_bias`"):
        Conv3DTranspose(2, 3, use_bias="yes")
    with pytest.raises(ValueError, match="`trainable`"):
        Conv3DTranspose(2, 3, trainable=1)
    with pytest.raises(ValueError, match="`seed`"):
        Conv3DTranspose(2, 3, seed=1.5)
    with pytest.raises(ValueError, match="`num_threads`"):
        Conv3DTranspose(2, 3, num_threads=0)
    with pytest.raises(ValueError, match="`weights` must be a list"):
        Conv3DTranspose(2, 3, weights=np.zeros(3))
    assert Conv3DTranspose(2, 3, padding="SAME").padding == "same"
    assert Conv3DTranspose(2, 3, kernel_initializer=None).kernel_initializer.get_config() \
        == initializers.GlorotUniform().get_config()


def test_repr():
    layer = Conv3DTranspose(8, 3, strides=2, padding="same", activation="relu", name="up")
    assert repr(layer) == ("Conv3DTranspose(name='up', filters=8, kernel_size=(3, 3, 3), "
                           "strides=(2, 2, 2), padding='same', data_format='channels_last', "
                           "activation='relu', built=False)")
    layer.build((None, 4, 4, 4, 2))
    assert repr(layer).endswith(f"in_channels=2, params={3 ** 3 * 8 * 2 + 8})")


def test_functional_form(rng):
    layer = layer_conv_3d_transpose(filters=3, kernel_size=2, strides=2, seed=5)
    assert isinstance(layer, Conv3DTranspose) and layer.strides == (2, 2, 2)
    x = _input(rng, "channels_last", np.float32)
    y = layer_conv_3d_transpose(x, filters=3, kernel_size=2, strides=2, seed=5)
    np.testing.assert_array_equal(y, layer(x))
    with pytest.raises(TypeError, match="`filters` and `kernel_size`"):
        layer_conv_3d_transpose(x, filters=3)


def test_example_train_layer_recovers_kernel(capsys):
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "train_layer.py")
    spec = importlib.util.spec_from_file_location("train_layer_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    loss, error = example.main(steps=100, num_threads=1)
    printed = [float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()
               if line.startswith("step")]
    assert printed[0] > 1e-2 and loss < 1e-5 and error < 1e-2
    assert all(b < a for a, b in zip(printed, printed[1:]))  # the loss falls


def test_keras_objects_as_arguments(keras, rng):
    layer = Conv3DTranspose(
        2, 3, kernel_initializer=keras.initializers.HeUniform(seed=3),
        bias_initializer=keras.initializers.Constant(0.5),
        kernel_regularizer=keras.regularizers.L2(0.25),
        activity_regularizer=keras.regularizers.L1L2(l1=0.5),
        kernel_constraint=keras.constraints.MaxNorm(1.5, axis=[0, 1, 2, 3]),
        bias_constraint=keras.constraints.NonNeg(), activation=keras.activations.silu,
        input_shape=(3, 3, 3, 4))
    assert isinstance(layer.kernel_initializer, initializers.HeUniform)
    assert layer.kernel_initializer.seed == 3
    np.testing.assert_array_equal(layer.bias, np.full(2, 0.5, np.float32))
    assert layer.kernel_regularizer == regularizers.L2(0.25)
    assert layer.activity_regularizer == regularizers.L1L2(0.5, 0.0)
    assert isinstance(layer.kernel_constraint, constraints.MaxNorm)
    assert layer.kernel_constraint.get_config() == {"max_value": 1.5, "axis": [0, 1, 2, 3]}
    assert isinstance(layer.bias_constraint, constraints.NonNeg)
    assert layer.activation is activations.silu
    y = layer(_input(rng, "channels_last", np.float32, spatial=(3, 3, 3), channels=4))
    layer.backward(np.ones_like(y))  # every piece has its gradient
    assert layer.kernel_grad.shape == layer.kernel.shape
