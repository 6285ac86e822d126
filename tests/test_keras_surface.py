"""Activations, initializers, regularizers, constraints and optimizers against Keras 3.

Keras (torch backend) and torch are oracles where importable; derivatives and gradients are
also checked by finite differences, which need neither.
"""

import numpy as np
import pytest

from helpers import tol
from tconv3d import activations, constraints, initializers, optimizers, regularizers

# Keras 3's torch backend calls np.array(tensor, copy=False) internally (its noise, not ours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

DTYPES = [np.float32, np.float64]
KERNEL = (3, 2, 5, 4, 6)  # (kd, kh, kw, filters, in_channels)

# Activation kinks and switch points: finite differences and torch's subgradient conventions
# are only compared at least this far from them.
KINKS = np.array([-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0])


def _smooth_points(rng, n=200, low=-7.0, high=7.0, gap=1e-3):
    x = rng.uniform(low, high, n)
    return x[np.min(np.abs(x[:, None] - KINKS[None, :]), axis=1) > gap]


def _np(keras, t):
    return keras.ops.convert_to_numpy(t)


# --- activations ----------------------------------------------------------------------------
NAMES = sorted(activations.ELEMENTWISE)
PARAMETRIZED = [
    ("relu", dict(negative_slope=0.1)), ("relu", dict(max_value=4.0)),
    ("relu", dict(threshold=0.5)), ("relu", dict(negative_slope=0.3, max_value=5.0)),
    ("relu", dict(negative_slope=0.2, threshold=-1.0, max_value=3.0)),
    ("leaky_relu", dict(negative_slope=0.05)), ("elu", dict(alpha=0.5)),
    ("celu", dict(alpha=2.0)), ("gelu", dict(approximate=True)), ("squareplus", dict(b=2)),
    ("soft_shrink", dict(threshold=1.0)), ("hard_shrink", dict(threshold=1.0)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_activation_matches_keras(keras, rng, name, dtype):
    x = _smooth_points(rng).astype(dtype)
    ours = activations.get(name)(x)
    theirs = _np(keras, keras.activations.get(name)(x))
    assert ours.dtype == dtype and ours.shape == x.shape
    np.testing.assert_allclose(ours, theirs, **tol(dtype))


@pytest.mark.parametrize("name,params", PARAMETRIZED)
def test_parametrized_activation_matches_keras(keras, rng, name, params):
    x = _smooth_points(rng)
    ours = activations.get(name).bind(**params)(x)
    theirs = _np(keras, getattr(keras.activations, name)(x, **params))
    np.testing.assert_allclose(ours, theirs, **tol(np.float64))


@pytest.mark.parametrize("name,params", [(n, {}) for n in NAMES] + PARAMETRIZED)
def test_activation_derivative_matches_torch_autograd(keras, torch, rng, name, params):
    x = _smooth_points(rng)
    xt = torch.tensor(x, requires_grad=True)
    if name == "hard_sigmoid":
        # torch's hardsigmoid backward multiplies by a float32 1/6 even in float64: use
        # Keras' definition relu6(x + 3) / 6 written with exact torch ops instead.
        torch.nn.functional.relu6(xt + 3).div(6).sum().backward()
    else:
        getattr(keras.activations, name)(xt, **params).sum().backward()
    np.testing.assert_allclose(activations.get(name).derivative(x, **params),
                               xt.grad.numpy(), **tol(np.float64))


@pytest.mark.parametrize("name,params", [(n, {}) for n in NAMES] + PARAMETRIZED)
def test_activation_derivative_finite_differences(rng, name, params):
    act = activations.get(name).bind(**params)
    x = _smooth_points(rng)
    h = 1e-6
    fd = (act(x + h) - act(x - h)) / (2 * h)
    # Central differences: truncation ~h^2 |f'''| and rounding ~1e-16 |f| / h, so 1e-7 is
    # what finite differences can resolve here (the exact comparison is against torch).
    np.testing.assert_allclose(act.derivative(x), fd, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_activation_float32_preserved(rng, name):
    x = rng.standard_normal(7).astype(np.float32)
    act = activations.get(name)
    assert act(x).dtype == np.float32
    assert act.derivative(x).dtype == np.float32


def test_activation_get_identifiers(keras):
    assert activations.get(None) is activations.linear
    assert activations.get("swish") is activations.silu
    assert activations.get("hard_swish") is activations.hard_silu
    assert activations.get(keras.activations.relu) is activations.relu
    assert activations.get(keras.activations.gelu) is activations.gelu
    assert activations.get(activations.tanh) is activations.tanh
    assert activations.get({"class_name": "function", "config": "elu"}) is activations.elu
    bound = activations.get({"class_name": "leaky_relu", "config": {"negative_slope": 0.1}})
    assert bound.params == {"negative_slope": 0.1}
    assert activations.serialize(bound) == {"class_name": "leaky_relu",
                                            "config": {"negative_slope": 0.1}}
    assert activations.get(activations.serialize(bound)) == bound
    assert activations.serialize(activations.relu) == "relu"
    assert activations.serialize(keras.activations.get(None)) == "linear"


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "glu", "sparsemax", "threshold"])
def test_activation_not_elementwise_refused(name):
    with pytest.raises(ValueError, match="not supported"):
        activations.get(name)


def test_activation_unknown_refused():
    with pytest.raises(ValueError, match="Unknown activation 'rellu'"):
        activations.get("rellu")
    with pytest.raises(ValueError, match="Could not interpret"):
        activations.get(3)
    with pytest.raises(TypeError, match="callable"):
        activations.Activation(lambda x: x, derivative=2)


def test_custom_activation_forward_only_then_with_derivative():
    def cube(x):
        return x ** 3

    act = activations.get(cube)
    x = np.array([1.0, -2.0])
    np.testing.assert_array_equal(act(x), [1.0, -8.0])
    assert not act.has_derivative
    with pytest.raises(NotImplementedError, match="'cube' has no derivative"):
        act.derivative(x)
    with_d = activations.Activation(cube, lambda x: 3 * x ** 2)
    np.testing.assert_array_equal(with_d.derivative(x), [3.0, 12.0])

    class Cube:
        def __call__(self, x):
            return x ** 3

        def derivative(self, x):
            return 3 * x ** 2

    obj = activations.get(Cube())
    assert obj.has_derivative
    np.testing.assert_array_equal(obj.derivative(x), [3.0, 12.0])


def test_keras_defaults_of_activations(keras):
    # Keras 3: leaky_relu slope 0.2, gelu exact (erf), hard_sigmoid relu6(x + 3) / 6.
    x = np.array([-2.0, -0.3, 0.7, 2.5])
    np.testing.assert_allclose(activations.leaky_relu(x), np.where(x > 0, x, 0.2 * x))
    from scipy.special import erf
    np.testing.assert_allclose(activations.gelu(x), 0.5 * x * (1 + erf(x / np.sqrt(2))),
                               rtol=1e-15)
    np.testing.assert_allclose(activations.hard_sigmoid(x), np.clip(x + 3, 0, 6) / 6,
                               rtol=1e-15)


# --- initializers ---------------------------------------------------------------------------
SHAPES = [KERNEL, (1, 1, 1, 3, 2), (2, 3, 4, 1, 7), (5, 5), (9,)]
SCALED = {  # name -> (scale, mode, distribution)
    "glorot_uniform": (1.0, "fan_avg", "uniform"), "glorot_normal": (1.0, "fan_avg", "normal"),
    "he_uniform": (2.0, "fan_in", "uniform"), "he_normal": (2.0, "fan_in", "normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"), "lecun_normal": (1.0, "fan_in", "normal"),
}
BIG = (4, 4, 4, 64, 32)  # 131072 draws: sample std within ~0.5% of the truth


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_match_keras(keras, shape):
    from keras.src.initializers.random_initializers import compute_fans
    assert initializers.compute_fans(shape) == compute_fans(shape)
    if len(shape) == 5:
        rf = shape[0] * shape[1] * shape[2]
        assert initializers.compute_fans(shape) == (shape[3] * rf, shape[4] * rf)
    axes = dict(input_axes=[0, -1], output_axes=[1]) if len(shape) > 1 else {}
    if axes:
        assert initializers.compute_fans(shape, **axes) == compute_fans(shape, **axes)


def _expected_std(name, shape):
    scale, mode, _ = SCALED[name]
    fan_in, fan_out = initializers.compute_fans(shape)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    return np.sqrt(scale / max(1.0, n))


@pytest.mark.parametrize("name", sorted(SCALED))
def test_variance_scaling_statistics(name):
    w = initializers.get({"class_name": name, "config": {"seed": 1}})(BIG)
    std = _expected_std(name, BIG)
    assert w.shape == BIG and w.dtype == np.float32
    assert abs(w.mean()) < 5 * std / np.sqrt(w.size)
    np.testing.assert_allclose(w.std(), std, rtol=0.01)
    if SCALED[name][2] == "uniform":
        limit = np.sqrt(3) * std
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.999 * limit
    else:  # truncated at two standard deviations of the untruncated normal
        assert np.abs(w).max() < 2 * std / initializers.TRUNCATED_STDDEV


@pytest.mark.parametrize("name", sorted(SCALED))
def test_variance_scaling_matches_keras_samples(keras, name):
    ours = initializers.get({"class_name": name, "config": {"seed": 0}})(BIG)
    theirs = _np(keras, keras.initializers.get({"class_name": name, "config": {"seed": 0}})(BIG))
    # Two samples of 131072 draws (fixed seeds): std within ~0.4%, quantiles within ~0.01 std
    # (standard errors); the bounds below are about 6 standard errors.
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.02)
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(ours, q), np.quantile(theirs, q),
                               atol=0.05 * theirs.std())
    if SCALED[name][2] == "uniform":  # same support (Keras' truncated normal on torch may
        # leave a rare value past 2 std: it keeps the first in-range draw out of four)
        np.testing.assert_allclose(np.abs(ours).max(), np.abs(theirs).max(), rtol=1e-3)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_arguments(mode, distribution):
    init = initializers.VarianceScaling(scale=3.0, mode=mode, distribution=distribution, seed=1)
    fan_in, fan_out = initializers.compute_fans(BIG)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    assert init.variance(BIG) == 3.0 / n
    np.testing.assert_allclose(init(BIG).std(), np.sqrt(3.0 / n), rtol=0.01)


def test_basic_random_initializers_defaults():
    w = initializers.RandomNormal(seed=2)(BIG)
    np.testing.assert_allclose([w.mean(), w.std()], [0.0, 0.05], atol=1e-3)
    w = initializers.RandomUniform(seed=3)(BIG)
    assert w.min() >= -0.05 and w.max() < 0.05
    np.testing.assert_allclose(w.std(), 0.1 / np.sqrt(12), rtol=0.01)
    w = initializers.TruncatedNormal(seed=4)(BIG)
    assert np.abs(w).max() < 0.1
    np.testing.assert_allclose(w.std(), 0.05 * initializers.TRUNCATED_STDDEV, rtol=0.01)
    w = initializers.RandomNormal(mean=1.0, stddev=2.0, seed=5)(BIG, dtype="float64")
    assert w.dtype == np.float64
    np.testing.assert_allclose([w.mean(), w.std()], [1.0, 2.0], rtol=0.02)


def test_constant_initializers():
    np.testing.assert_array_equal(initializers.get("zeros")(KERNEL), np.zeros(KERNEL))
    np.testing.assert_array_equal(initializers.get("ones")((4,), "float64"), np.ones(4))
    assert initializers.get("ones")((4,), "float64").dtype == np.float64
    np.testing.assert_array_equal(initializers.Constant(0.5)((2, 3)), np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="floating dtype"):
        initializers.Zeros()((2,), dtype="int32")


@pytest.mark.parametrize("shape", [KERNEL, (2, 2, 2, 1, 30), (6, 4)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal(keras, shape, gain):
    w = initializers.Orthogonal(gain=gain, seed=3)(shape, dtype="float64")
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    m = w.reshape(rows, cols)
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(rows, cols)), atol=1e-12)
    k = _np(keras, keras.initializers.Orthogonal(gain=gain, seed=3)(shape)).reshape(rows, cols)
    kgram = k.T @ k if rows >= cols else k @ k.T
    np.testing.assert_allclose(kgram, gram, atol=1e-5)  # Keras draws float32


def test_initializer_seeds():
    a = initializers.GlorotUniform(seed=7)
    np.testing.assert_array_equal(a(KERNEL), a(KERNEL))
    np.testing.assert_array_equal(a(KERNEL), initializers.GlorotUniform(seed=7)(KERNEL))
    assert not np.array_equal(a(KERNEL), initializers.GlorotUniform(seed=8)(KERNEL))
    unseeded = initializers.HeNormal()  # as Keras: a seed fixed at construction
    np.testing.assert_array_equal(unseeded(KERNEL), unseeded(KERNEL))
    assert not np.array_equal(unseeded(KERNEL), initializers.HeNormal()(KERNEL))
    stream = initializers.RandomNormal(seed=np.random.default_rng(0))
    assert not np.array_equal(stream(KERNEL), stream(KERNEL))
    with pytest.raises(ValueError, match="`seed` must be"):
        initializers.RandomNormal(seed="x")


INIT_NAMES = ["zeros", "ones", "constant", "random_normal", "random_uniform",
              "truncated_normal", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
              "lecun_normal", "lecun_uniform", "variance_scaling", "orthogonal"]


@pytest.mark.parametrize("name", INIT_NAMES)
def test_initializer_identifiers_and_config(keras, name):
    init = initializers.get(name)
    # keras.initializers.get("constant") fails in Keras itself (Constant.from_config needs
    # a value): build Keras' instance from its class there.
    keras_init = (keras.initializers.Constant() if name == "constant"
                  else keras.initializers.get(name))
    assert type(init).__name__ == type(keras_init).__name__
    ours_cfg = {k: v for k, v in init.get_config().items() if k != "seed"}
    theirs_cfg = {k: v for k, v in keras_init.get_config().items() if k != "seed"}
    assert ours_cfg == theirs_cfg  # same defaults as Keras
    again = initializers.get(initializers.serialize(init))
    assert type(again) is type(init) and again.get_config() == init.get_config()
    from_keras = initializers.get(keras.initializers.serialize(keras_init))
    assert type(from_keras) is type(init)
    assert type(initializers.get(type(init).__name__)) is type(init)


def test_initializer_other_identifiers():
    assert initializers.get(None) is None
    assert isinstance(initializers.get("normal"), initializers.RandomNormal)
    assert isinstance(initializers.get(initializers.HeUniform), initializers.HeUniform)
    value = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(initializers.get(value)((2, 3)), value)
    with pytest.raises(ValueError, match="shape"):
        initializers.get(value)((3, 2))

    def fn(shape, dtype=None):
        return np.full(shape, 2.0, dtype)

    assert initializers.get(fn) is fn
    with pytest.raises(ValueError, match="Unknown initializer 'glorot'"):
        initializers.get("glorot")
    with pytest.raises(ValueError, match="mode"):
        initializers.VarianceScaling(mode="fan")


# --- regularizers ---------------------------------------------------------------------------
# Factors exact in float32: Keras keeps L1's factor in a float32 tensor (its default 0.01
# becomes 0.009999999776...), which would otherwise differ from our float factor by 2e-9.
REGS = [("L1", dict(l1=0.25)), ("L2", dict(l2=0.125)), ("L1L2", dict(l1=0.0625, l2=0.5)),
        ("L1", dict(l1=2.0 ** -7)), ("L2", {}), ("L1L2", dict(l2=0.25))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", REGS)
def test_regularizer_value_matches_keras(keras, rng, cls, kwargs, dtype):
    w = rng.standard_normal(KERNEL).astype(dtype)
    ours = getattr(regularizers, cls)(**kwargs)
    theirs = getattr(keras.regularizers, cls)(**kwargs)
    value = ours(w)
    assert value.dtype == dtype
    np.testing.assert_allclose(value, float(_np(keras, theirs(keras.ops.convert_to_tensor(w)))),
                               **tol(dtype))
    assert ours.get_config() == theirs.get_config()


@pytest.mark.parametrize("cls,kwargs", REGS)
def test_regularizer_gradient_matches_torch_autograd(keras, torch, rng, cls, kwargs):
    w = rng.standard_normal(KERNEL)
    wt = torch.tensor(w, requires_grad=True)
    getattr(keras.regularizers, cls)(**kwargs)(wt).backward()
    grad = getattr(regularizers, cls)(**kwargs).gradient(w)
    np.testing.assert_allclose(grad, wt.grad.numpy(), **tol(np.float64))


@pytest.mark.parametrize("cls,kwargs", REGS)
def test_regularizer_gradient_finite_differences(rng, cls, kwargs):
    reg = getattr(regularizers, cls)(**kwargs)
    w = rng.standard_normal(KERNEL)
    d = rng.standard_normal(KERNEL)
    h = 1e-6  # |w| > h almost surely: the L1 kink at 0 is not crossed
    fd = (reg(w + h * d) - reg(w - h * d)) / (2 * h)
    np.testing.assert_allclose(np.sum(reg.gradient(w) * d), fd, rtol=1e-7)


def test_regularizer_names_and_configs(keras):
    assert regularizers.get("l1").get_config() == {"l1": 0.01}
    assert regularizers.get("l2").get_config() == {"l2": 0.01}
    # R keras / Keras 2 default for the name (Keras 3 would give 0 and 0).
    assert regularizers.get("l1_l2").get_config() == {"l1": 0.01, "l2": 0.01}
    assert regularizers.l1_l2().get_config() == {"l1": 0.01, "l2": 0.01}
    assert regularizers.get("L1L2").get_config() == {"l1": 0.0, "l2": 0.0}
    assert regularizers.get("L1L2")(np.ones(3)) == 0.0
    np.testing.assert_array_equal(regularizers.get("L1L2").gradient(np.ones(3)), np.zeros(3))
    for cls in ("L1", "L2", "L1L2"):  # Keras' class defaults (L1's stored in float32)
        theirs = getattr(keras.regularizers, cls)().get_config()
        assert getattr(regularizers, cls)().get_config() == pytest.approx(theirs, rel=1e-7)
    assert regularizers.get(None) is None
    reg = regularizers.L1L2(0.2, 0.3)
    assert regularizers.get(regularizers.serialize(reg)) == reg
    assert regularizers.L2.from_config(regularizers.L2(0.5).get_config()) == regularizers.L2(0.5)
    from_keras = regularizers.get(keras.regularizers.serialize(keras.regularizers.L1(0.25)))
    assert from_keras == regularizers.L1(0.25)
    with pytest.raises(ValueError, match="non-negative"):
        regularizers.L1(-1.0)
    with pytest.raises(ValueError, match="Unknown regularizer"):
        regularizers.get("l3")


def test_function_regularizer():
    reg = regularizers.get(lambda w: 2.0 * np.sum(w))
    w = np.ones(3)
    assert reg(w) == 6.0
    with pytest.raises(NotImplementedError, match="no gradient"):
        reg.gradient(w)
    with_grad = regularizers.FunctionRegularizer(lambda w: 2.0 * np.sum(w),
                                                 lambda w: np.full_like(w, 2.0))
    np.testing.assert_array_equal(with_grad.gradient(w), [2.0, 2.0, 2.0])


# --- constraints ----------------------------------------------------------------------------
CONSTRAINTS = [
    ("MaxNorm", {}), ("MaxNorm", dict(max_value=1.5, axis=[0, 1, 2, 3])),
    ("MaxNorm", dict(max_value=0.5, axis=[0, 1, 2, 4])), ("NonNeg", {}),
    ("UnitNorm", {}), ("UnitNorm", dict(axis=[0, 1, 2, 3])), ("UnitNorm", dict(axis=-1)),
    ("MinMaxNorm", {}), ("MinMaxNorm", dict(min_value=0.5, max_value=1.5, rate=0.3,
                                            axis=[0, 1, 2, 3])),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", CONSTRAINTS)
def test_constraint_matches_keras(keras, rng, cls, kwargs, dtype):
    w = rng.standard_normal(KERNEL).astype(dtype)
    if cls == "NonNeg" and dtype == np.float64:
        # Keras returns float32 here (maximum with the int 0 on torch); the exact answer:
        np.testing.assert_array_equal(constraints.NonNeg()(w), np.maximum(w, 0.0))
        assert constraints.NonNeg()(w).dtype == np.float64
        return
    ours = getattr(constraints, cls)(**kwargs)(w)
    theirs = _np(keras, getattr(keras.constraints, cls)(**kwargs)(keras.ops.convert_to_tensor(w)))
    assert ours.dtype == dtype and ours.shape == w.shape
    np.testing.assert_allclose(ours, theirs, **tol(dtype))


@pytest.mark.parametrize("name", ["max_norm", "non_neg", "unit_norm", "min_max_norm"])
def test_constraint_names_and_configs(keras, name):
    ours, theirs = constraints.get(name), keras.constraints.get(name)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.get_config() == theirs.get_config()
    again = constraints.get(constraints.serialize(ours))
    assert type(again) is type(ours) and again.get_config() == ours.get_config()
    from_keras = constraints.get(keras.constraints.serialize(theirs))
    assert type(from_keras) is type(ours)


def test_constraint_defaults_and_callables(rng):
    w = rng.standard_normal(KERNEL)
    norms = np.sqrt(np.sum(w ** 2, axis=0, keepdims=True))
    np.testing.assert_allclose(constraints.UnitNorm()(w), w / (1e-7 + norms), rtol=1e-15)
    clipped = constraints.MaxNorm()(w)  # max_value=2 over axis 0 (Keras' default)
    assert np.all(np.sqrt(np.sum(clipped ** 2, axis=0)) <= 2 + 1e-12)
    fn = np.abs
    assert constraints.get(fn) is fn
    with pytest.raises(ValueError, match="Unknown constraint"):
        constraints.get("maxnorm")


# --- optimizers -----------------------------------------------------------------------------
OPTIMIZERS = [
    ("SGD", {}), ("SGD", dict(momentum=0.9)), ("SGD", dict(momentum=0.5, nesterov=True)),
    ("Adam", {}), ("Adam", dict(amsgrad=True)),
    ("Adam", dict(beta_1=0.5, beta_2=0.9, epsilon=1e-3)),
    ("Adam", dict(clipnorm=0.5)), ("SGD", dict(clipvalue=0.125)),
    ("Adam", dict(global_clipnorm=1.0)), ("SGD", dict(weight_decay=0.125, momentum=0.9)),
    ("Adam", dict(weight_decay=0.0625)),
]  # hyper-parameters exact in float32: Keras' torch backend rounds clipvalue and
# weight_decay to float32, which float64 variables would otherwise show at 1e-8.


def _keras_steps(keras, cls, kwargs, values, grads, dtype):
    opt = getattr(keras.optimizers, cls)(**kwargs)
    variables = [keras.Variable(v.copy(), dtype=np.dtype(dtype).name) for v in values]
    for step in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)
                             for g, v in zip(step, variables)])
    return [_np(keras, v) for v in variables]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_optimizer_matches_keras(keras, rng, cls, kwargs, dtype):
    # A float32-exact learning rate: Keras keeps it in a float32 variable.
    kwargs = dict(kwargs, learning_rate=2.0 ** -5)
    values = [rng.standard_normal((3, 2, 2, 4, 5)).astype(dtype),
              rng.standard_normal(4).astype(dtype)]
    grads = [[rng.standard_normal(v.shape) for v in values] for _ in range(5)]
    # Keras' torch backend rounds the clipping norms to float32 (`ops.maximum(norm, 0.5)`
    # returns float32): give the gradients norms exact in float32 (2.0, above the clip).
    if "clipnorm" in kwargs:
        grads = [[2.0 * g / np.linalg.norm(g) for g in step] for step in grads]
    if "global_clipnorm" in kwargs:
        grads = [[2.0 * g / np.sqrt(sum(np.sum(h * h) for h in step)) for g in step]
                 for step in grads]
    grads = [[g.astype(dtype) for g in step] for step in grads]
    ours = [v.copy() for v in values]
    opt = getattr(optimizers, cls)(**kwargs)
    for step in grads:
        opt.apply_gradients(list(zip(step, ours)))
    assert opt.iterations == 5
    for a, b in zip(ours, _keras_steps(keras, cls, kwargs, values, grads, dtype)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **tol(dtype))


def test_optimizer_defaults_match_keras(keras):
    for cls in ("SGD", "Adam"):
        ours = getattr(optimizers, cls)().get_config()
        theirs = getattr(keras.optimizers, cls)().get_config()
        for key, value in ours.items():
            if key != "name":
                assert theirs[key] == pytest.approx(value), (cls, key)


def test_optimizer_rules_by_hand():
    w = np.array([1.0, -2.0])
    g = np.array([0.5, 0.25])
    optimizers.SGD(learning_rate=0.1).apply_gradients([(g, w)])
    np.testing.assert_allclose(w, [0.95, -2.025], rtol=1e-15)
    w = np.array([1.0])
    opt = optimizers.Adam(learning_rate=0.1, epsilon=0.0)
    opt.apply_gradients([(np.array([3.0]), w)])  # first step: m/sqrt(v) = sign(g)
    np.testing.assert_allclose(w, [0.9], rtol=1e-15)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="learning_rate"):
        optimizers.SGD(learning_rate=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="Only one of"):
        optimizers.Adam(clipnorm=1.0, clipvalue=1.0)
    opt = optimizers.SGD()
    w = np.zeros(3)
    opt.apply_gradients([(np.ones(3), w)])
    with pytest.raises(ValueError, match="built on 1 variables"):
        opt.apply_gradients([(np.ones(2), np.zeros(2))])
    with pytest.raises(ValueError, match="shape"):
        opt.apply_gradients([(np.ones(2), w)])
    with pytest.raises(TypeError, match="writeable float ndarray"):
        optimizers.SGD().apply_gradients([(np.ones(2), [0.0, 0.0])])
    assert isinstance(optimizers.get("adam"), optimizers.Adam)
    assert optimizers.get({"class_name": "SGD", "config": {"momentum": 0.5}}).momentum == 0.5


def test_optimizer_callable_learning_rate():
    rates = iter([0.5, 0.25])
    opt = optimizers.SGD(learning_rate=lambda: next(rates))
    w = np.zeros(1)
    opt.apply_gradients([(np.ones(1), w)])
    opt.apply_gradients([(np.ones(1), w)])
    np.testing.assert_array_equal(w, [-0.75])
