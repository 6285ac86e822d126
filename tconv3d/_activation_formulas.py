"""The formulas of :mod:`tconv3d.activations`: each element-wise function and its derivative.

``relu`` and ``d_relu``, ``gelu`` and ``d_gelu``, ...: Keras 3's formulas and defaults, same
order of operations. Each takes ``x`` as an ndarray and keeps its dtype: Python-float
constants do not promote float32 (NEP 50). :mod:`tconv3d.activations` wraps each pair in an
``Activation``; this module has no other user.
"""
import math

import numpy as np


def _erf(x):
    """erf from scipy (imported on first use: it costs 0.2 s at import), else math.erf."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - exercised only without scipy
        erf = np.vectorize(math.erf, otypes=[np.float64])
    return erf(x)


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _step(cond, x):
    return cond.astype(x.dtype)


def linear(x):
    return x


def d_linear(x):
    return np.ones_like(x)


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    # keras.activations.relu, same order of operations.
    if negative_slope != 0.0 and max_value is None and threshold == 0:
        return leaky_relu(x, negative_slope)
    if threshold != 0:
        y = np.where(x > threshold, x, 0).astype(x.dtype)
    else:
        y = np.maximum(x, 0)
    if max_value is not None:
        y = np.clip(y, 0, max_value)
    if negative_slope != 0.0:
        y = y - negative_slope * np.maximum(threshold - x, 0)
    return y


def d_relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    on = x > threshold
    if max_value is not None:  # Keras clips the thresholded part to [0, max_value]
        on &= (x > 0) & (x < max_value)
    d = _step(on, x)
    if negative_slope != 0.0:
        d = d + negative_slope * _step(x < threshold, x)
    return d


def leaky_relu(x, negative_slope=0.2):
    return np.where(x > 0, x, x * negative_slope).astype(x.dtype)


def d_leaky_relu(x, negative_slope=0.2):
    return np.where(x > 0, 1.0, negative_slope).astype(x.dtype)


def relu6(x):
    return np.clip(x, 0, 6)


def d_relu6(x):
    return _step((x > 0) & (x < 6), x)


def sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def d_sigmoid(x):
    s = sigmoid(x)
    return s * (1 - s)


def hard_sigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def d_hard_sigmoid(x):
    return _step((x > -3) & (x < 3), x) / 6


def sparse_sigmoid(x):
    return np.clip(0.5 * (x + 1), 0, 1)


def d_sparse_sigmoid(x):
    return 0.5 * _step((x > -1) & (x < 1), x)


def tanh(x):
    return np.tanh(x)


def d_tanh(x):
    t = np.tanh(x)
    return 1 - t * t


def tanh_shrink(x):
    return x - np.tanh(x)


def d_tanh_shrink(x):
    t = np.tanh(x)
    return t * t


def hard_tanh(x):
    return np.clip(x, -1, 1)


def d_hard_tanh(x):
    return _step((x > -1) & (x < 1), x)


def softplus(x):
    return np.logaddexp(x, 0).astype(x.dtype)


def softsign(x):
    return x / (np.abs(x) + 1)


def d_softsign(x):
    a = np.abs(x) + 1
    return 1 / (a * a)


def squareplus(x, b=4):
    return (x + np.sqrt(x * x + b)) / 2


def d_squareplus(x, b=4):
    return (1 + x / np.sqrt(x * x + b)) / 2


def soft_shrink(x, threshold=0.5):
    return np.where(x > threshold, x - threshold,
                    np.where(x < -threshold, x + threshold, 0)).astype(x.dtype)


def d_soft_shrink(x, threshold=0.5):
    return _step(np.abs(x) > threshold, x)


def hard_shrink(x, threshold=0.5):
    return np.where(np.abs(x) > threshold, x, 0).astype(x.dtype)


def sparse_plus(x):
    return np.where(x <= -1, 0, np.where(x < 1, 0.25 * (x + 1) ** 2, x)).astype(x.dtype)


def d_sparse_plus(x):
    return np.where(x <= -1, 0, np.where(x < 1, 0.5 * (x + 1), 1)).astype(x.dtype)


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)


def d_elu(x, alpha=1.0):
    return np.where(x > 0, 1, alpha * np.exp(np.minimum(x, 0))).astype(x.dtype)


def selu(x):
    return _SELU_SCALE * elu(x, _SELU_ALPHA)


def d_selu(x):
    return _SELU_SCALE * d_elu(x, _SELU_ALPHA)


def celu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) / alpha)).astype(x.dtype)


def d_celu(x, alpha=1.0):
    return np.where(x > 0, 1, np.exp(np.minimum(x, 0) / alpha)).astype(x.dtype)


def silu(x):
    return x * sigmoid(x)


def d_silu(x):
    s = sigmoid(x)
    return s * (1 + x * (1 - s))


def hard_silu(x):
    return x * hard_sigmoid(x)


def d_hard_silu(x):
    return np.where(x < -3, 0, np.where(x > 3, 1, (2 * x + 3) / 6)).astype(x.dtype)


def gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))
    return (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype)


def d_gelu(x, approximate=False):
    if approximate:
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
        t = np.tanh(u)
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
    return (cdf + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)).astype(x.dtype)


def exponential(x):
    return np.exp(x)


def mish(x):
    return x * np.tanh(softplus(x))


def d_mish(x):
    t = np.tanh(softplus(x))
    return t + x * (1 - t * t) * sigmoid(x)


def log_sigmoid(x):
    return -softplus(-x)


def d_log_sigmoid(x):
    return sigmoid(-x)
