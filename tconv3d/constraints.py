"""Weight constraints with Keras 3's names, defaults and formulas.

A constraint maps a weight array to its projection (a new array of the same shape and dtype);
the layer applies it after every optimizer step.

The axis convention is Keras': ``axis`` names the axes the norm is taken *over*, literally, in
the weight's own layout. This layer's kernel is ``(kd, kh, kw, filters, in_channels)``, so the
default ``axis=0`` (Keras' default too) takes norms along the kernel depth only. To bound the
norm of all weights that read one input channel, as Keras' docs advise for convolution kernels,
use ``axis=[0, 1, 2, 3]``; for the weights that write one filter, ``axis=[0, 1, 2, 4]``.

The norm is divided as ``w * desired / (epsilon + norm)`` with ``epsilon = 1e-7`` (Keras'
default ``backend.epsilon()``).
"""
import inspect

import numpy as np

from . import _config

__all__ = ["Constraint", "MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm", "get", "serialize",
           "deserialize", "EPSILON"]

#: Keras' default fuzz factor (``keras.config.epsilon()``).
EPSILON = 1e-7


def _axis(axis):
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    return int(axis)


def _norms(w, axis):
    return np.sqrt(np.sum(np.square(w), axis=_axis(axis), keepdims=True))


class Constraint(_config.Configurable):
    """Base class of the constraints: ``constraint(w) -> projected w``.

    A subclass implements :meth:`__call__` and, if its constructor takes arguments,
    ``get_config`` returning them. The base is the identity.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.constraints import Constraint
    >>> class Clip(Constraint):
    ...     def __init__(self, limit=1.0):
    ...         self.limit = limit
    ...     def __call__(self, w):
    ...         return np.clip(w, -self.limit, self.limit)
    ...     def get_config(self):
    ...         return {"limit": self.limit}
    >>> Clip(0.5)(np.array([-2.0, 0.25, 2.0])), Clip(0.5)
    (array([-0.5 ,  0.25,  0.5 ]), Clip(limit=0.5))
    """

    def __call__(self, w):
        """Return the projection of the weight ``w``.

        Parameters
        ----------
        w : array-like
            A weight, e.g. a kernel ``(kd, kh, kw, filters, in_channels)``.

        Returns
        -------
        ndarray
            A new array of the shape (and floating dtype) of ``w``; ``w`` for the base.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.constraints import NonNeg
        >>> NonNeg()(np.array([[0.5, -1.0]]))
        array([[0.5, 0. ]])
        """
        return np.asarray(w)


class MaxNorm(Constraint):
    """Scale each slice whose L2 norm over ``axis`` exceeds ``max_value`` down to it.

    Parameters
    ----------
    max_value : float, default=2
        The largest norm kept.
    axis : int or list of int, default=0
        The axes the norm is taken over (module docstring).

    Examples
    --------
    Bound the norm of all the weights that read one input channel (the last axis of the
    kernel ``(kd, kh, kw, filters, in_channels)``):

    >>> import numpy as np
    >>> from tconv3d.constraints import MaxNorm
    >>> kernel = np.ones((3, 3, 3, 4, 2))
    >>> projected = MaxNorm(max_value=2, axis=[0, 1, 2, 3])(kernel)
    >>> np.sqrt((projected ** 2).sum(axis=(0, 1, 2, 3))).round(6)
    array([2., 2.])
    """

    def __init__(self, max_value=2, axis=0):
        self.max_value, self.axis = max_value, axis

    def __call__(self, w):
        w = np.asarray(w)
        norms = _norms(w, self.axis)
        desired = np.clip(norms, 0, self.max_value)
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Negative weights set to 0.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.constraints import NonNeg
    >>> NonNeg()(np.array([1.0, -2.0]))
    array([1., 0.])
    """

    def __call__(self, w):
        return np.maximum(np.asarray(w), 0)


class UnitNorm(Constraint):
    """Each slice divided by its L2 norm over ``axis`` (default 0).

    Parameters
    ----------
    axis : int or list of int, default=0
        The axes the norm is taken over (module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.constraints import UnitNorm
    >>> UnitNorm(axis=0)(np.array([[3.0], [4.0]])).round(6)
    array([[0.6],
           [0.8]])
    """

    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        w = np.asarray(w)
        return w / (EPSILON + _norms(w, self.axis))

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Norms over ``axis`` moved toward ``[min_value, max_value]`` at ``rate``.

    The new norm is ``rate * clip(norm, min_value, max_value) + (1 - rate) * norm``.

    Parameters
    ----------
    min_value : float, default=0.0
        Smallest norm kept.
    max_value : float, default=1.0
        Largest norm kept.
    rate : float, default=1.0
        1 projects onto ``[min_value, max_value]`` at once; smaller values move the norm
        only part of the way at each step.
    axis : int or list of int, default=0
        The axes the norm is taken over (module docstring).

    Examples
    --------
    A slice of norm 5 moved into ``[1, 2]``, at once or half-way:

    >>> import numpy as np
    >>> from tconv3d.constraints import MinMaxNorm
    >>> w = np.array([[3.0], [4.0]])
    >>> MinMaxNorm(1.0, 2.0)(w).round(6)
    array([[1.2],
           [1.6]])
    >>> MinMaxNorm(1.0, 2.0, rate=0.5)(w).round(6)
    array([[2.1],
           [2.8]])
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value, self.max_value, self.rate, self.axis = min_value, max_value, rate, axis

    def __call__(self, w):
        w = np.asarray(w)
        norms = _norms(w, self.axis)
        desired = (self.rate * np.clip(norms, self.min_value, self.max_value)
                   + (1 - self.rate) * norms)
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


_CLASSES = [MaxNorm, NonNeg, UnitNorm, MinMaxNorm]
#: Names accepted by :func:`get`: Keras' class names and snake_case names.
NAMES = {**{c.__name__: c for c in _CLASSES}, "max_norm": MaxNorm, "non_neg": NonNeg,
         "unit_norm": UnitNorm, "min_max_norm": MinMaxNorm}


def get(identifier):
    """Return a constraint.

    Parameters
    ----------
    identifier : None, str, dict, Constraint, class or callable
        ``None``; a name from :data:`NAMES` (Keras defaults); a config dict
        ``{"class_name": ..., "config": {...}}``; an instance or class; a
        ``keras.constraints`` object (mapped through its config); or a callable
        ``fn(w) -> w``.

    Returns
    -------
    Constraint, callable or None
        ``None`` for ``None``; a callable given is returned as it is.

    Raises
    ------
    ValueError
        Unknown names, invalid configs and identifiers that are none of the above.

    Examples
    --------
    >>> from tconv3d import constraints
    >>> constraints.get("max_norm")
    MaxNorm(max_value=2, axis=0)
    >>> constraints.get({"class_name": "UnitNorm", "config": {"axis": [0, 1, 2, 3]}})
    UnitNorm(axis=[0, 1, 2, 3])
    >>> constraints.get(None) is None
    True
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return _config.from_name(identifier, NAMES, "constraint", "a config dict or a callable")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if inspect.isclass(identifier):
        return identifier()
    if _config.is_keras_object(identifier, NAMES):
        return deserialize(_config.as_dict(identifier))
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret constraint identifier {identifier!r}: expected a "
                     "name, a config dict, a Constraint or a callable.")


def serialize(constraint):
    """Return ``{"class_name": ..., "config": ...}`` for a built-in, else the object itself.

    Parameters
    ----------
    constraint : Constraint or callable
        The constraint to serialize.

    Returns
    -------
    dict or object
        Keras' config dict for this module's constraints; ``constraint`` itself
        otherwise.

    Examples
    --------
    >>> from tconv3d.constraints import MaxNorm, serialize
    >>> serialize(MaxNorm(3, axis=[0, 1, 2, 3]))
    {'class_name': 'MaxNorm', 'config': {'max_value': 3, 'axis': [0, 1, 2, 3]}}
    """
    return _config.serialize(constraint, _CLASSES)


def deserialize(config):
    """Return the constraint a ``{"class_name": ..., "config": ...}`` dict describes.

    Parameters
    ----------
    config : dict
        ``class_name`` one of :data:`NAMES`; ``config`` the constructor's arguments.

    Returns
    -------
    Constraint
        A new constraint (Keras' dicts work too).

    Raises
    ------
    ValueError
        If ``config`` is not a dict with a ``class_name`` key, or the name is unknown.

    Examples
    --------
    >>> from tconv3d.constraints import deserialize
    >>> deserialize({"class_name": "non_neg", "config": {}})
    NonNeg()
    """
    return _config.deserialize(config, NAMES, "constraint")
