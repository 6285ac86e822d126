"""Element-wise activations by Keras name, each with its derivative.

Every built-in is an :class:`Activation`: call it like a function (``relu(x)``), ask for its
derivative with ``relu.derivative(x)``, and bind non-default parameters with
``leaky_relu.bind(negative_slope=0.1)``. The formulas and defaults are Keras 3's
(``keras.activations``); values are computed in the dtype of ``x`` (float32 stays float32).

A user function is accepted wherever an activation is: :func:`get` wraps it. Its forward pass
works as is; for the backward pass give its derivative, either as
``Activation(fn, derivative)`` or as an object with ``__call__(x)`` and ``derivative(x)``.
Backward through a function without a derivative raises :class:`NotImplementedError`.

Not element-wise, hence not supported as a layer activation: ``softmax``, ``log_softmax``,
``glu``, ``sparsemax`` (they mix the channels of one position). ``threshold`` needs
arguments without defaults: use ``Activation`` with your own values.
"""
import functools
import math

import numpy as np

def _erf(x):
    """erf from scipy (imported on first use: it costs 0.2 s at import), else math.erf."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - exercised only without scipy
        erf = np.vectorize(math.erf, otypes=[np.float64])
    return erf(x)

__all__ = ["Activation", "get", "serialize", "deserialize", "ELEMENTWISE", "NOT_ELEMENTWISE"]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class Activation:
    """An element-wise activation ``y = fn(x)`` with its derivative ``dy/dx = derivative(x)``.

    Parameters
    ----------
    fn : callable
        ``fn(x, **params) -> ndarray`` of the shape and dtype of ``x``.
    derivative : callable or None, default=None
        ``derivative(x, **params) -> ndarray``, the element-wise derivative of ``fn`` at ``x``.
        Without it the activation still works forward, and :meth:`derivative` (hence a
        layer's ``backward``) raises :class:`NotImplementedError`.
    name : str or None, default=None
        Name used in configs and reprs; defaults to ``fn.__name__``.
    **params
        Parameters bound to both functions (e.g. ``negative_slope=0.1``).

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.activations import Activation
    >>> cube = Activation(lambda x: x ** 3, lambda x: 3 * x ** 2, name="cube")
    >>> cube.derivative(np.array([2.0]))
    array([12.])
    """

    def __init__(self, fn, derivative=None, name=None, **params):
        if not callable(fn):
            raise TypeError(f"`fn` must be callable, got {type(fn).__name__}: {fn!r}.")
        if derivative is not None and not callable(derivative):
            raise TypeError("`derivative` must be callable or None, got "
                            f"{type(derivative).__name__}: {derivative!r}.")
        self.fn = fn
        self._derivative = derivative
        self.name = name if name is not None else getattr(fn, "__name__", type(fn).__name__)
        self.params = dict(params)

    @property
    def has_derivative(self):
        """bool: whether :meth:`derivative` is available."""
        return self._derivative is not None

    def __call__(self, x, **params):
        """Apply the activation element-wise.

        Parameters
        ----------
        x : array-like of any shape, dtype float32 or float64
        **params
            Overrides of the bound parameters.

        Returns
        -------
        ndarray of the shape and dtype of ``x``
        """
        return self.fn(np.asarray(x), **{**self.params, **params})

    def derivative(self, x, **params):
        """Element-wise derivative at ``x`` (same shape and dtype as ``x``)."""
        if self._derivative is None:
            raise NotImplementedError(
                f"The activation {self.name!r} has no derivative, so no backward pass goes "
                "through it. Give one: `tconv3d.activations.Activation(fn, derivative)`, or an "
                "object with `__call__(x)` and `derivative(x)` methods.")
        return self._derivative(np.asarray(x), **{**self.params, **params})

    def bind(self, **params):
        """Return a copy with ``params`` bound (e.g. ``gelu.bind(approximate=True)``)."""
        return Activation(self.fn, self._derivative, self.name, **{**self.params, **params})

    def get_config(self):
        """``{"name": ..., **params}``."""
        return {"name": self.name, **self.params}

    def __eq__(self, other):
        return (isinstance(other, Activation) and self.fn is other.fn
                and self._derivative is other._derivative and self.params == other.params)

    def __hash__(self):
        return hash((self.fn, self._derivative, tuple(sorted(self.params.items()))))

    def __repr__(self):
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Activation({self.name!r}{params})"


# --- the formulas -------------------------------------------------------------------------
# Each pair (f, df) takes x as an ndarray; Python-float constants keep x's dtype (NEP 50).

def _step(cond, x):
    return cond.astype(x.dtype)


def _linear(x):
    return x


def _d_linear(x):
    return np.ones_like(x)


def _relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    # keras.activations.relu, same order of operations.
    if negative_slope != 0.0 and max_value is None and threshold == 0:
        return _leaky_relu(x, negative_slope)
    if threshold != 0:
        y = np.where(x > threshold, x, 0).astype(x.dtype)
    else:
        y = np.maximum(x, 0)
    if max_value is not None:
        y = np.clip(y, 0, max_value)
    if negative_slope != 0.0:
        y = y - negative_slope * np.maximum(threshold - x, 0)
    return y


def _d_relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    on = x > threshold
    if max_value is not None:  # Keras clips the thresholded part to [0, max_value]
        on &= (x > 0) & (x < max_value)
    d = _step(on, x)
    if negative_slope != 0.0:
        d = d + negative_slope * _step(x < threshold, x)
    return d


def _leaky_relu(x, negative_slope=0.2):
    return np.where(x > 0, x, x * negative_slope).astype(x.dtype)


def _d_leaky_relu(x, negative_slope=0.2):
    return np.where(x > 0, 1.0, negative_slope).astype(x.dtype)


def _relu6(x):
    return np.clip(x, 0, 6)


def _d_relu6(x):
    return _step((x > 0) & (x < 6), x)


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _d_sigmoid(x):
    s = _sigmoid(x)
    return s * (1 - s)


def _hard_sigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def _d_hard_sigmoid(x):
    return _step((x > -3) & (x < 3), x) / 6


def _sparse_sigmoid(x):
    return np.clip(0.5 * (x + 1), 0, 1)


def _d_sparse_sigmoid(x):
    return 0.5 * _step((x > -1) & (x < 1), x)


def _tanh(x):
    return np.tanh(x)


def _d_tanh(x):
    t = np.tanh(x)
    return 1 - t * t


def _tanh_shrink(x):
    return x - np.tanh(x)


def _d_tanh_shrink(x):
    t = np.tanh(x)
    return t * t


def _hard_tanh(x):
    return np.clip(x, -1, 1)


def _d_hard_tanh(x):
    return _step((x > -1) & (x < 1), x)


def _softplus(x):
    return np.logaddexp(x, 0).astype(x.dtype)


def _softsign(x):
    return x / (np.abs(x) + 1)


def _d_softsign(x):
    a = np.abs(x) + 1
    return 1 / (a * a)


def _squareplus(x, b=4):
    return (x + np.sqrt(x * x + b)) / 2


def _d_squareplus(x, b=4):
    return (1 + x / np.sqrt(x * x + b)) / 2


def _soft_shrink(x, threshold=0.5):
    return np.where(x > threshold, x - threshold,
                    np.where(x < -threshold, x + threshold, 0)).astype(x.dtype)


def _d_soft_shrink(x, threshold=0.5):
    return _step(np.abs(x) > threshold, x)


def _hard_shrink(x, threshold=0.5):
    return np.where(np.abs(x) > threshold, x, 0).astype(x.dtype)


def _sparse_plus(x):
    return np.where(x <= -1, 0, np.where(x < 1, 0.25 * (x + 1) ** 2, x)).astype(x.dtype)


def _d_sparse_plus(x):
    return np.where(x <= -1, 0, np.where(x < 1, 0.5 * (x + 1), 1)).astype(x.dtype)


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)


def _d_elu(x, alpha=1.0):
    return np.where(x > 0, 1, alpha * np.exp(np.minimum(x, 0))).astype(x.dtype)


def _selu(x):
    return _SELU_SCALE * _elu(x, _SELU_ALPHA)


def _d_selu(x):
    return _SELU_SCALE * _d_elu(x, _SELU_ALPHA)


def _celu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) / alpha)).astype(x.dtype)


def _d_celu(x, alpha=1.0):
    return np.where(x > 0, 1, np.exp(np.minimum(x, 0) / alpha)).astype(x.dtype)


def _silu(x):
    return x * _sigmoid(x)


def _d_silu(x):
    s = _sigmoid(x)
    return s * (1 + x * (1 - s))


def _hard_silu(x):
    return x * _hard_sigmoid(x)


def _d_hard_silu(x):
    return np.where(x < -3, 0, np.where(x > 3, 1, (2 * x + 3) / 6)).astype(x.dtype)


def _gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))
    return (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype)


def _d_gelu(x, approximate=False):
    if approximate:
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
        t = np.tanh(u)
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
    return (cdf + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)).astype(x.dtype)


def _exponential(x):
    return np.exp(x)


def _mish(x):
    return x * np.tanh(_softplus(x))


def _d_mish(x):
    t = np.tanh(_softplus(x))
    return t + x * (1 - t * t) * _sigmoid(x)


def _log_sigmoid(x):
    return -_softplus(-x)


def _d_log_sigmoid(x):
    return _sigmoid(-x)


def _make(name, fn, derivative):
    act = Activation(fn, derivative, name)
    functools.update_wrapper(act, fn, assigned=("__doc__",), updated=())
    return act


linear = _make("linear", _linear, _d_linear)
relu = _make("relu", _relu, _d_relu)
leaky_relu = _make("leaky_relu", _leaky_relu, _d_leaky_relu)
relu6 = _make("relu6", _relu6, _d_relu6)
sigmoid = _make("sigmoid", _sigmoid, _d_sigmoid)
hard_sigmoid = _make("hard_sigmoid", _hard_sigmoid, _d_hard_sigmoid)
sparse_sigmoid = _make("sparse_sigmoid", _sparse_sigmoid, _d_sparse_sigmoid)
tanh = _make("tanh", _tanh, _d_tanh)
tanh_shrink = _make("tanh_shrink", _tanh_shrink, _d_tanh_shrink)
hard_tanh = _make("hard_tanh", _hard_tanh, _d_hard_tanh)
softplus = _make("softplus", _softplus, _sigmoid)
softsign = _make("softsign", _softsign, _d_softsign)
squareplus = _make("squareplus", _squareplus, _d_squareplus)
soft_shrink = _make("soft_shrink", _soft_shrink, _d_soft_shrink)
hard_shrink = _make("hard_shrink", _hard_shrink, _d_soft_shrink)
sparse_plus = _make("sparse_plus", _sparse_plus, _d_sparse_plus)
elu = _make("elu", _elu, _d_elu)
selu = _make("selu", _selu, _d_selu)
celu = _make("celu", _celu, _d_celu)
silu = _make("silu", _silu, _d_silu)
hard_silu = _make("hard_silu", _hard_silu, _d_hard_silu)
gelu = _make("gelu", _gelu, _d_gelu)
exponential = _make("exponential", _exponential, _exponential)
mish = _make("mish", _mish, _d_mish)
log_sigmoid = _make("log_sigmoid", _log_sigmoid, _d_log_sigmoid)
swish = silu
hard_swish = hard_silu

#: Every supported name (Keras' element-wise activations and aliases) -> Activation.
ELEMENTWISE = {a.name: a for a in (
    linear, relu, leaky_relu, relu6, sigmoid, hard_sigmoid, sparse_sigmoid, tanh, tanh_shrink,
    hard_tanh, softplus, softsign, squareplus, soft_shrink, hard_shrink, sparse_plus, elu, selu,
    celu, silu, hard_silu, gelu, exponential, mish, log_sigmoid)}
ELEMENTWISE["swish"] = silu
ELEMENTWISE["hard_swish"] = hard_silu

#: Keras activations that are not element-wise (or need arguments), refused with a reason.
NOT_ELEMENTWISE = {
    "softmax": "normalises over an axis", "log_softmax": "normalises over an axis",
    "sparsemax": "normalises over an axis", "glu": "splits the channel axis in two",
    "threshold": "has required arguments (use Activation(fn, derivative) with your values)",
}


def get(identifier):
    """Return the :class:`Activation` for ``identifier``.

    Parameters
    ----------
    identifier : None, str, dict, Activation or callable
        ``None`` or ``"linear"`` for the identity; a Keras name from :data:`ELEMENTWISE`
        (``"relu"``, ``"gelu"``, ``"swish"``, ...); a config dict ``{"class_name": name,
        "config": {params}}`` (a Keras-serialized ``{"class_name": "function", "config":
        name}`` too); an :class:`Activation`; a ``keras.activations`` function (mapped to the
        built-in of the same name); an object with ``__call__`` and ``derivative``; or any
        callable (forward only).

    Returns
    -------
    Activation

    Raises
    ------
    ValueError
        Unknown or non-element-wise names, malformed dicts, non-callables.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d import activations
    >>> relu = activations.get("relu")
    >>> x = np.array([-1.0, 2.0])
    >>> relu(x), relu.derivative(x)
    (array([0., 2.]), array([0., 1.]))
    >>> activations.get("leaky_relu").bind(negative_slope=0.1)(x)
    array([-0.1,  2. ])
    """
    if identifier is None:
        return linear
    if isinstance(identifier, Activation):
        return identifier
    if isinstance(identifier, str):
        if identifier in ELEMENTWISE:
            return ELEMENTWISE[identifier]
        if identifier in NOT_ELEMENTWISE:
            raise ValueError(f"activation={identifier!r} is not supported: it "
                             f"{NOT_ELEMENTWISE[identifier]}, and this layer needs an "
                             "element-wise activation.")
        raise ValueError(f"Unknown activation {identifier!r}. Expected None or one of "
                         f"{sorted(ELEMENTWISE)}, a config dict or a callable.")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        name = getattr(identifier, "__name__", None)
        module = getattr(identifier, "__module__", None) or ""
        if module.split(".")[0] == "keras" and name in ELEMENTWISE:
            return ELEMENTWISE[name]
        derivative = getattr(identifier, "derivative", None)
        return Activation(identifier, derivative if callable(derivative) else None,
                          name=name or type(identifier).__name__)
    raise ValueError(f"Could not interpret activation identifier {identifier!r}: expected None, "
                     "a name, a config dict or a callable.")


def serialize(activation):
    """Name (str) of a built-in without bound parameters; a config dict for a bound built-in;
    the object itself otherwise (round-trips through :func:`get` in the same process)."""
    activation = get(activation)
    builtin = ELEMENTWISE.get(activation.name)
    if builtin is not None and activation.fn is builtin.fn:
        if not activation.params:
            return activation.name
        return {"class_name": activation.name, "config": dict(activation.params)}
    return activation


def deserialize(config):
    """Inverse of :func:`serialize` for names and config dicts."""
    if not isinstance(config, dict):
        return get(config)
    if "class_name" not in config:
        raise ValueError(f"An activation config dict needs a 'class_name' key, got {config!r}.")
    name, params = config["class_name"], config.get("config") or {}
    if name == "function" and isinstance(params, str):  # Keras' serialized built-in
        return get(params)
    if not isinstance(params, dict):
        raise ValueError(f"The 'config' of an activation must be a dict, got {params!r}.")
    act = get(name)
    return act.bind(**params) if params else act
