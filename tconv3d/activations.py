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

import numpy as np

from . import _activation_formulas as _f

__all__ = ["Activation", "get", "serialize", "deserialize", "ELEMENTWISE", "NOT_ELEMENTWISE"]


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

    Raises
    ------
    TypeError
        If ``fn`` is not callable, or ``derivative`` neither callable nor None.

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
        """Whether :meth:`derivative` is available (a bool).

        Examples
        --------
        >>> from tconv3d.activations import Activation
        >>> Activation(abs).has_derivative, Activation(abs, lambda x: x / abs(x)).has_derivative
        (False, True)
        """
        return self._derivative is not None

    def __call__(self, x, **params):
        """Apply the activation element-wise.

        Parameters
        ----------
        x : array-like of any shape, dtype float32 or float64
            The pre-activation.
        **params
            Overrides of the bound parameters.

        Returns
        -------
        ndarray
            ``fn(x)``, of the shape and dtype of ``x``.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d import activations
        >>> activations.get("relu")(np.array([-1.0, 2.0], np.float32))
        array([0., 2.], dtype=float32)
        >>> activations.get("leaky_relu")(np.array([-1.0, 2.0]), negative_slope=0.5)
        array([-0.5,  2. ])
        """
        return self.fn(np.asarray(x), **{**self.params, **params})

    def derivative(self, x, **params):
        """Return the element-wise derivative ``d fn(x) / dx`` at ``x``.

        Parameters
        ----------
        x : array-like of any shape, dtype float32 or float64
            The pre-activation.
        **params
            Overrides of the bound parameters.

        Returns
        -------
        ndarray
            Of the shape and dtype of ``x``.

        Raises
        ------
        NotImplementedError
            If the activation has no derivative (:attr:`has_derivative`).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d import activations
        >>> activations.get("sigmoid").derivative(np.array([0.0]))
        array([0.25])
        """
        if self._derivative is None:
            raise NotImplementedError(
                f"The activation {self.name!r} has no derivative, so no backward pass goes "
                "through it. Give one: `tconv3d.activations.Activation(fn, derivative)`, or an "
                "object with `__call__(x)` and `derivative(x)` methods.")
        return self._derivative(np.asarray(x), **{**self.params, **params})

    def bind(self, **params):
        """Return a copy with ``params`` bound, on top of those already bound.

        Parameters
        ----------
        **params
            Keyword arguments of ``fn`` and ``derivative`` (``approximate=True``, ...).

        Returns
        -------
        Activation
            A new activation; this one is unchanged.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d import activations
        >>> gelu = activations.get("gelu").bind(approximate=True)
        >>> gelu, gelu(np.array([0.0, 1.0])).round(4)
        (Activation('gelu', approximate=True), array([0.    , 0.8412]))
        """
        return Activation(self.fn, self._derivative, self.name, **{**self.params, **params})

    def get_config(self):
        """Return the name and the bound parameters.

        Returns
        -------
        dict
            ``{"name": name, **params}``.

        Examples
        --------
        >>> from tconv3d import activations
        >>> activations.get("elu").bind(alpha=0.5).get_config()
        {'name': 'elu', 'alpha': 0.5}
        """
        return {"name": self.name, **self.params}

    def __eq__(self, other):
        return (isinstance(other, Activation) and self.fn is other.fn
                and self._derivative is other._derivative and self.params == other.params)

    def __hash__(self):
        return hash((self.fn, self._derivative, tuple(sorted(self.params.items()))))

    def __repr__(self):
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Activation({self.name!r}{params})"


def _make(name, fn, derivative):
    act = Activation(fn, derivative, name)
    functools.update_wrapper(act, fn, assigned=("__doc__",), updated=())
    return act


linear = _make("linear", _f.linear, _f.d_linear)
relu = _make("relu", _f.relu, _f.d_relu)
leaky_relu = _make("leaky_relu", _f.leaky_relu, _f.d_leaky_relu)
relu6 = _make("relu6", _f.relu6, _f.d_relu6)
sigmoid = _make("sigmoid", _f.sigmoid, _f.d_sigmoid)
hard_sigmoid = _make("hard_sigmoid", _f.hard_sigmoid, _f.d_hard_sigmoid)
sparse_sigmoid = _make("sparse_sigmoid", _f.sparse_sigmoid, _f.d_sparse_sigmoid)
tanh = _make("tanh", _f.tanh, _f.d_tanh)
tanh_shrink = _make("tanh_shrink", _f.tanh_shrink, _f.d_tanh_shrink)
hard_tanh = _make("hard_tanh", _f.hard_tanh, _f.d_hard_tanh)
softplus = _make("softplus", _f.softplus, _f.sigmoid)
softsign = _make("softsign", _f.softsign, _f.d_softsign)
squareplus = _make("squareplus", _f.squareplus, _f.d_squareplus)
soft_shrink = _make("soft_shrink", _f.soft_shrink, _f.d_soft_shrink)
hard_shrink = _make("hard_shrink", _f.hard_shrink, _f.d_soft_shrink)
sparse_plus = _make("sparse_plus", _f.sparse_plus, _f.d_sparse_plus)
elu = _make("elu", _f.elu, _f.d_elu)
selu = _make("selu", _f.selu, _f.d_selu)
celu = _make("celu", _f.celu, _f.d_celu)
silu = _make("silu", _f.silu, _f.d_silu)
hard_silu = _make("hard_silu", _f.hard_silu, _f.d_hard_silu)
gelu = _make("gelu", _f.gelu, _f.d_gelu)
exponential = _make("exponential", _f.exponential, _f.exponential)
mish = _make("mish", _f.mish, _f.d_mish)
log_sigmoid = _make("log_sigmoid", _f.log_sigmoid, _f.d_log_sigmoid)
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
        The activation (``linear`` for ``None``).

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
    """Return an activation's name or config dict, as Keras stores it.

    Parameters
    ----------
    activation : None, str, dict, Activation or callable
        Anything :func:`get` takes.

    Returns
    -------
    str, dict or Activation
        The name of a built-in without bound parameters; ``{"class_name": name, "config":
        params}`` for a bound built-in; the :class:`Activation` itself otherwise (which
        round-trips through :func:`get` in the same process only).

    Raises
    ------
    ValueError
        If :func:`get` refuses ``activation``.

    Examples
    --------
    >>> from tconv3d import activations
    >>> activations.serialize("relu"), activations.serialize(None)
    ('relu', 'linear')
    >>> activations.serialize(activations.get("leaky_relu").bind(negative_slope=0.1))
    {'class_name': 'leaky_relu', 'config': {'negative_slope': 0.1}}
    """
    activation = get(activation)
    builtin = ELEMENTWISE.get(activation.name)
    if builtin is not None and activation.fn is builtin.fn:
        if not activation.params:
            return activation.name
        return {"class_name": activation.name, "config": dict(activation.params)}
    return activation


def deserialize(config):
    """Return the activation :func:`serialize` described.

    Parameters
    ----------
    config : str, dict or Activation
        A name, a config dict ``{"class_name": name, "config": params}`` (Keras'
        ``{"class_name": "function", "config": name}`` too), or anything :func:`get` takes.

    Returns
    -------
    Activation
        The built-in, with ``params`` bound.

    Raises
    ------
    ValueError
        If a dict has no ``class_name``, its ``config`` is not a dict (or a name), or the
        name is unknown.

    Examples
    --------
    >>> from tconv3d import activations
    >>> activations.deserialize({"class_name": "leaky_relu", "config": {"negative_slope": 0.1}})
    Activation('leaky_relu', negative_slope=0.1)
    >>> activations.deserialize({"class_name": "function", "config": "gelu"})
    Activation('gelu')
    """
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
