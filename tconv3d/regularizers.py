"""Weight and activity penalties with Keras' formulas, each with its gradient.

``L1(l1)``: ``l1 * sum(|x|)``; ``L2(l2)``: ``l2 * sum(x**2)``; ``L1L2(l1, l2)``: both.
The penalty is computed in the dtype of ``x``; the gradient is an array like ``x``
(``l1 * sign(x) + 2 * l2 * x``, with ``sign(0) = 0``).

By name, ``"l1"``, ``"l2"`` and ``"l1_l2"`` each use the factor 0.01, as R keras and Keras 2
do (Keras 3 maps ``"l1_l2"`` to ``L1L2()``, whose factors are 0). The classes keep Keras'
defaults: ``L1()`` and ``L2()`` 0.01, ``L1L2()`` 0.0 and 0.0.

A user function ``fn(x) -> float`` is accepted as a regularizer for the penalty; for the
backward pass give its gradient with ``FunctionRegularizer(fn, gradient)`` (or any object
with ``__call__`` and ``gradient`` methods).
"""
import inspect
import math
import numbers

import numpy as np

from . import _config

__all__ = ["Regularizer", "L1", "L2", "L1L2", "FunctionRegularizer", "l1_l2", "get",
           "serialize", "deserialize"]


def _factor(value, name):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or math.isnan(value) or math.isinf(value) or value < 0):
        raise ValueError(f"`{name}` must be a non-negative finite float, got {value!r}.")
    return float(value)


class Regularizer(_config.Configurable):
    """Base class of the regularizers: ``penalty(x) -> scalar``, ``penalty.gradient(x)``.

    A subclass implements :meth:`__call__` and :meth:`gradient` and, if its constructor
    takes arguments, ``get_config`` returning them. The base is the zero penalty.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.regularizers import Regularizer
    >>> class SumOfCubes(Regularizer):
    ...     def __call__(self, x):
    ...         return float(np.sum(np.asarray(x) ** 3))
    ...     def gradient(self, x):
    ...         return 3 * np.asarray(x) ** 2
    >>> penalty = SumOfCubes()
    >>> penalty(np.array([1.0, 2.0])), penalty.gradient(np.array([1.0, 2.0]))
    (9.0, array([ 3., 12.]))
    """

    def __call__(self, x):
        """Return the penalty of ``x``.

        Parameters
        ----------
        x : array-like
            A weight, or an activity (a layer's output).

        Returns
        -------
        float or numpy scalar
            The penalty (0.0 for the base class).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.regularizers import L2
        >>> float(L2(0.5)(np.array([1.0, -2.0])))
        2.5
        """
        return 0.0

    def gradient(self, x):
        """Return the gradient of the penalty with respect to ``x``.

        Parameters
        ----------
        x : array-like
            As for :meth:`__call__`.

        Returns
        -------
        ndarray
            Of the shape of ``x`` (zeros for the base class).

        Raises
        ------
        NotImplementedError
            If the penalty has no gradient (a :class:`FunctionRegularizer` without one).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.regularizers import L2
        >>> L2(0.5).gradient(np.array([1.0, -2.0]))
        array([ 1., -2.])
        """
        return np.zeros_like(np.asarray(x))

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


class L1L2(Regularizer):
    """``l1 * sum(|x|) + l2 * sum(x**2)``.

    Parameters
    ----------
    l1, l2 : float >= 0, default=0.0
        The factors of the L1 and L2 terms (``None``: 0.0).

    Raises
    ------
    ValueError
        If a factor is negative, infinite, NaN or not a number.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.regularizers import L1L2
    >>> penalty = L1L2(l1=0.5, l2=0.25)
    >>> x = np.array([1.0, -2.0, 0.0])
    >>> float(penalty(x))                    # 0.5 * 3 + 0.25 * 5
    2.75
    >>> penalty.gradient(x)                  # 0.5 * sign(x) + 0.5 * x
    array([ 1. , -1.5,  0. ])
    """

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2")

    def __call__(self, x):
        """Return the penalty ``l1 * sum(|x|) + l2 * sum(x**2)``.

        Parameters
        ----------
        x : array-like
            A weight, or an activity (a layer's output).

        Returns
        -------
        numpy scalar
            Of ``x``'s dtype (float64 for integer ``x``).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.regularizers import L1L2
        >>> penalty = L1L2(l1=1.0, l2=0.5)(np.array([1.0, -2.0], np.float32))
        >>> float(penalty), penalty.dtype
        (5.5, dtype('float32'))
        """
        x = np.asarray(x)
        t = x.dtype.type if x.dtype.kind == "f" else np.float64
        penalty = t(0.0)
        if self.l1:
            penalty = penalty + t(self.l1) * np.sum(np.abs(x), dtype=t)
        if self.l2:
            penalty = penalty + t(self.l2) * np.sum(np.square(x), dtype=t)
        return penalty

    def gradient(self, x):
        """Return the gradient ``l1 * sign(x) + 2 * l2 * x`` (``sign(0) = 0``).

        Parameters
        ----------
        x : array-like
            As for :meth:`__call__`.

        Returns
        -------
        ndarray
            Of the shape and dtype of ``x``.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.regularizers import L1L2
        >>> L1L2(l1=1.0, l2=0.5).gradient(np.array([1.0, -2.0, 0.0]))
        array([ 2., -3.,  0.])
        """
        x = np.asarray(x)
        g = np.zeros_like(x)
        if self.l1:
            g = g + self.l1 * np.sign(x)
        if self.l2:
            g = g + (2 * self.l2) * x
        return g

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum(|x|)``, ``l1`` default 0.01.

    Parameters
    ----------
    l1 : float >= 0, default=0.01
        The factor (``None``: 0.01).

    Raises
    ------
    ValueError
        If ``l1`` is negative, infinite, NaN or not a number.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.regularizers import L1
    >>> penalty = L1(0.5)
    >>> x = np.array([1.0, -2.0, 0.0])
    >>> float(penalty(x)), penalty.gradient(x)
    (1.5, array([ 0.5, -0.5,  0. ]))
    """

    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum(x**2)``, ``l2`` default 0.01.

    Parameters
    ----------
    l2 : float >= 0, default=0.01
        The factor (``None``: 0.01).

    Raises
    ------
    ValueError
        If ``l2`` is negative, infinite, NaN or not a number.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.regularizers import L2
    >>> penalty = L2(0.01)
    >>> x = np.array([1.0, -2.0])
    >>> float(penalty(x)), penalty.gradient(x)
    (0.05, array([ 0.02, -0.04]))
    """

    def __init__(self, l2=0.01):
        super().__init__(l2=0.01 if l2 is None else l2)

    def get_config(self):
        return {"l2": self.l2}


def l1_l2(l1=0.01, l2=0.01):
    """Return an ``L1L2`` with R keras' and Keras 2's defaults (0.01 and 0.01).

    Parameters
    ----------
    l1, l2 : float >= 0, default=0.01
        The factors of the L1 and L2 terms.

    Returns
    -------
    L1L2
        The regularizer.

    Raises
    ------
    ValueError
        If a factor is negative, infinite, NaN or not a number.

    Examples
    --------
    >>> from tconv3d.regularizers import l1_l2
    >>> l1_l2()
    L1L2(l1=0.01, l2=0.01)
    >>> l1_l2(l2=0.5)
    L1L2(l1=0.01, l2=0.5)
    """
    return L1L2(l1=l1, l2=l2)


class FunctionRegularizer(Regularizer):
    """A user penalty ``fn(x) -> scalar`` with its gradient ``gradient(x) -> array like x``.

    ``gradient=None`` keeps the penalty usable in ``layer.losses``; a layer's ``backward``
    then raises :class:`NotImplementedError`.

    Parameters
    ----------
    fn : callable
        ``fn(x) -> scalar``, the penalty of an ndarray ``x``.
    gradient : callable, optional
        ``gradient(x) -> ndarray like x``, the penalty's gradient.
    name : str, optional
        For messages; default ``fn.__name__``.

    Raises
    ------
    TypeError
        If ``fn`` is not callable, or ``gradient`` neither callable nor None.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.regularizers import FunctionRegularizer
    >>> quartic = FunctionRegularizer(lambda x: float(np.sum(x**4)), lambda x: 4 * x**3,
    ...                               name="quartic")
    >>> x = np.array([1.0, -2.0])
    >>> quartic(x), quartic.gradient(x)
    (17.0, array([  4., -32.]))
    """

    def __init__(self, fn, gradient=None, name=None):
        if not callable(fn) or (gradient is not None and not callable(gradient)):
            raise TypeError("`fn` must be callable and `gradient` callable or None, got "
                            f"{fn!r} and {gradient!r}.")
        self.fn, self._gradient = fn, gradient
        self.name = name if name is not None else getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, x):
        return self.fn(np.asarray(x))

    def gradient(self, x):
        if self._gradient is None:
            raise NotImplementedError(
                f"The regularizer {self.name!r} has no gradient, so backward cannot include "
                "it. Use `tconv3d.regularizers.FunctionRegularizer(fn, gradient)` or an object "
                "with `__call__(x)` and `gradient(x)` methods.")
        return np.asarray(self._gradient(np.asarray(x)))

    def get_config(self):
        return {"fn": self.fn, "gradient": self._gradient, "name": self.name}

    def __eq__(self, other):
        return self is other

    __hash__ = object.__hash__


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
#: Names accepted by :func:`get` and the instance each gives.
NAMES = {"l1": lambda: L1(0.01), "l2": lambda: L2(0.01), "l1_l2": lambda: L1L2(0.01, 0.01),
         "L1": L1, "L2": L2, "L1L2": L1L2}


def get(identifier):
    """Return a regularizer.

    Parameters
    ----------
    identifier : None, str, dict, Regularizer, class or callable
        ``"l1"``, ``"l2"``, ``"l1_l2"`` (factor 0.01), a class name (``"L1"``, ``"L2"``,
        ``"L1L2"``: class defaults), a config dict ``{"class_name": ..., "config": {...}}``,
        an instance or class, a ``keras.regularizers`` L1/L2/L1L2 object (mapped through its
        config), or a callable ``fn(x) -> scalar`` (wrapped in
        :class:`FunctionRegularizer`, with its ``gradient`` method if it has one).
        ``None`` gives ``None``.

    Returns
    -------
    Regularizer or None
        The regularizer; ``None`` for ``None``.

    Raises
    ------
    ValueError
        Unknown names, invalid configs and identifiers that are none of the above.

    Examples
    --------
    >>> from tconv3d import regularizers
    >>> regularizers.get("l2")
    L2(l2=0.01)
    >>> regularizers.get("l1_l2"), regularizers.get("L1L2")    # name vs. class defaults
    (L1L2(l1=0.01, l2=0.01), L1L2(l1=0.0, l2=0.0))
    >>> regularizers.get({"class_name": "L2", "config": {"l2": 0.1}})
    L2(l2=0.1)
    """
    if identifier is None:
        return None
    if isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        return _config.from_name(identifier, NAMES, "regularizer", "a config dict or a callable")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if inspect.isclass(identifier):
        return get(identifier())
    if _config.is_keras_object(identifier, _CLASSES):
        return deserialize(_config.as_dict(identifier))
    if callable(identifier):
        gradient = getattr(identifier, "gradient", None)
        return FunctionRegularizer(identifier, gradient if callable(gradient) else None)
    raise ValueError(f"Could not interpret regularizer identifier {identifier!r}: expected a "
                     "name, a config dict, a Regularizer or a callable.")


def serialize(regularizer):
    """Return ``{"class_name": ..., "config": ...}`` for L1/L2/L1L2, else the object itself.

    Parameters
    ----------
    regularizer : Regularizer or callable
        The regularizer to serialize.

    Returns
    -------
    dict or object
        Keras' config dict for L1, L2 and L1L2; ``regularizer`` itself otherwise.

    Examples
    --------
    >>> from tconv3d.regularizers import L1, serialize
    >>> serialize(L1(0.5))
    {'class_name': 'L1', 'config': {'l1': 0.5}}
    """
    return _config.serialize(regularizer, _CLASSES.values())


def deserialize(config):
    """Return the regularizer a ``{"class_name": ..., "config": ...}`` dict describes.

    Parameters
    ----------
    config : dict
        ``class_name`` one of :data:`NAMES`; ``config`` overrides the arguments that name
        gives.

    Returns
    -------
    Regularizer
        A new regularizer (Keras' dicts work too).

    Raises
    ------
    ValueError
        If ``config`` is not a dict with a ``class_name`` key, the name is unknown, or a
        factor is invalid.

    Examples
    --------
    >>> from tconv3d.regularizers import deserialize
    >>> deserialize({"class_name": "l1_l2", "config": {"l2": 0.5}})
    L1L2(l1=0.01, l2=0.5)
    """
    return _config.deserialize(config, NAMES, "regularizer", _with_defaults)


def _with_defaults(factory, params):
    """The instance ``factory()`` gives, its config overridden by ``params``."""
    base = factory()
    return type(base).from_config({**base.get_config(), **params})
