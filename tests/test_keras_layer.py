"""tconv3d.keras.Conv3DTranspose: Keras' layer, computed by tconv3d on the torch backend.

Against ``keras.layers.Conv3DTranspose`` with the same weights: outputs and gradients for
every padding / strides / output_padding / dilation / data_format Keras accepts, the loss
curve of ``model.fit``, and the ``keras.saving`` round trip.
"""
import itertools

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("tconv3d.keras computes on Keras' torch backend", allow_module_level=True)

from tconv3d import _kernels, _torch_autograd  # noqa: E402
from tconv3d.keras import Conv3DTranspose  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the compiled forward calls: proves the layer ran on tconv3d."""
    calls = []
    real = _kernels.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(_kernels, "forward", counting)
    return calls


def _pair(filters, kernel_size, **kwargs):
    ours = Conv3DTranspose(filters, kernel_size, **kwargs)
    stock = keras.layers.Conv3DTranspose(filters, kernel_size, **kwargs)
    return ours, stock


def _grads(layer, x, r):
    x = torch.tensor(x, requires_grad=True)
    y = layer(x)
    weights = [layer.kernel.value] + ([layer.bias.value] if layer.use_bias else [])
    grads = torch.autograd.grad((y * torch.as_tensor(r)).sum(), [x, *weights])
    return y.detach().numpy(), [g.numpy() for g in grads]


# (strides, padding, output_padding, dilation): what Keras accepts (output_padding < stride,
# dilation > 1 only with stride 1 in Keras' checks on the torch backend).
GEOMETRIES = [
    (1, "valid", None, 1), (1, "same", None, 1), (2, "valid", None, 1), (2, "same", None, 1),
    ((2, 1, 3), "valid", None, 1), ((2, 1, 3), "same", None, 1), (2, "same", 1, 1),
    (3, "valid", (2, 0, 1), 1), (3, "same", (0, 2, 1), 1), (1, "valid", None, 2),
    (1, "same", None, (2, 1, 3)), (1, "same", 0, 2),
]


@pytest.mark.parametrize("geometry, data_format, use_bias", [
    (g, f, b) for g, f, b in itertools.product(GEOMETRIES, ["channels_last", "channels_first"],
                                               [True, False])])
def test_outputs_and_gradients_equal_keras(rng, kernel_calls, geometry, data_format,
                                           use_bias):
    strides, padding, output_padding, dilation = geometry
    kw = dict(strides=strides, padding=padding, output_padding=output_padding,
              dilation_rate=dilation, data_format=data_format, use_bias=use_bias,
              dtype="float64", bias_initializer="random_normal")
    ours, stock = _pair(3, (3, 2, 4), **kw)
    shape = (2, 5, 4, 6, 2) if data_format == "channels_last" else (2, 2, 5, 4, 6)
    x = rng.standard_normal(shape)
    ours.build(shape)
    stock.build(shape)
    stock.set_weights(ours.get_weights())
    r = rng.standard_normal(ours.compute_output_shape(shape))
    y, grads = _grads(ours, x, r)
    assert kernel_calls, "the layer did not run on tconv3d's kernels"
    y_keras, grads_keras = _grads(stock, x, r)
    np.testing.assert_allclose(y, y_keras, rtol=1e-10, atol=1e-12)
    for g, g_keras in zip(grads, grads_keras):
        np.testing.assert_allclose(g, g_keras, rtol=1e-10, atol=1e-12)


def test_activation_and_float32(rng, kernel_calls):
    ours, stock = _pair(4, 3, strides=2, padding="same", activation="relu")
    x = rng.standard_normal((1, 6, 5, 4, 3)).astype(np.float32)
    y = ours(x)
    stock.build(x.shape)
    stock.set_weights(ours.get_weights())
    assert y.dtype == torch.float32 and kernel_calls
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y),
                               keras.ops.convert_to_numpy(stock(x)), rtol=1e-5, atol=1e-6)
    assert (keras.ops.convert_to_numpy(y) >= 0).all()


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "gelu", "silu",
                                        "linear", "sigmoid", "elu"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_activations_at_inference_and_in_training_equal_keras(rng, monkeypatch, activation,
                                                               data_format):
    # Inference (no_grad): relu ... silu fused into tconv3d's forward; sigmoid (Keras
    # keeps its logits) and the rest by Keras. Training: Keras' numbers and gradients.
    kw = dict(strides=2, padding="same", activation=activation, data_format=data_format,
              dtype="float64", bias_initializer="random_normal")
    ours, stock = _pair(3, (3, 2, 3), **kw)
    shape = (2, 4, 3, 5, 2) if data_format == "channels_last" else (2, 2, 4, 3, 5)
    x = 3 * rng.standard_normal(shape)
    ours.build(shape)
    stock.build(shape)
    stock.set_weights(ours.get_weights())
    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(_torch_autograd, "_TORCH_ACTIVATIONS", {})   # none but fused ones
        y = ours(torch.tensor(x))
    with torch.no_grad():
        y_keras = stock(torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), y_keras.numpy(), rtol=1e-12, atol=1e-12)
    if activation == "sigmoid":
        assert hasattr(y, "_keras_logits")
    r = rng.standard_normal(ours.compute_output_shape(shape))
    (y, grads), (y_keras, grads_keras) = _grads(ours, x, r), _grads(stock, x, r)
    np.testing.assert_allclose(y, y_keras, rtol=1e-12, atol=1e-12)
    for g, g_keras in zip(grads, grads_keras):
        np.testing.assert_allclose(g, g_keras, rtol=1e-10, atol=1e-12)


def _decoder(layer_class, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((4, 4, 4, 3)),
        layer_class(6, 3, strides=2, padding="same", activation="tanh"),
        layer_class(2, 2, strides=(1, 2, 1), padding="valid"),
    ])


def test_model_fit_gives_keras_loss_curve(rng):
    before = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        x = rng.standard_normal((8, 4, 4, 4, 3))
        models = {cls: _decoder(cls, 7) for cls in (Conv3DTranspose,
                                                   keras.layers.Conv3DTranspose)}
        stock = models[keras.layers.Conv3DTranspose]
        models[Conv3DTranspose].set_weights(stock.get_weights())
        y = rng.standard_normal((8, *stock.output_shape[1:]))
        losses = {}
        for cls, model in models.items():
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
            history = model.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0)
            losses[cls] = history.history["loss"]
        ours = losses[Conv3DTranspose]
        assert ours[-1] < ours[0]
        np.testing.assert_allclose(ours, losses[keras.layers.Conv3DTranspose], rtol=1e-9)
    finally:
        keras.config.set_floatx(before)


def test_saving_round_trip(rng, tmp_path):
    model = _decoder(Conv3DTranspose, 3)
    x = rng.standard_normal((2, 4, 4, 4, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert all(type(layer) is Conv3DTranspose for layer in loaded.layers)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)),
                                  keras.ops.convert_to_numpy(model(x)))
    config = model.layers[0].get_config()
    assert Conv3DTranspose.from_config(config).get_config() == config
