"""Weight initializers with Keras 3's names, defaults and formulas, drawn with numpy.

An initializer is called as ``init(shape, dtype=None)`` and returns an ndarray (float32 by
default). Random ones take ``seed``: an int (every call returns the same values, as in
Keras), ``None`` (a seed drawn once at construction: every call of that instance returns the
same values, as in Keras), or a :class:`numpy.random.Generator` (each call draws fresh values,
like a Keras ``SeedGenerator``).

Fans are Keras' ``compute_fans``: for a kernel of shape ``(kd, kh, kw, filters, in_channels)``
the receptive field is ``kd * kh * kw``, ``fan_in = filters * receptive_field`` (``shape[-2]``)
and ``fan_out = in_channels * receptive_field`` (``shape[-1]``).
"""
import inspect
import numbers

import numpy as np

from . import _config
# The base classes and the fan-based initializers live in private modules; this module is
# their public home (TRUNCATED_STDDEV and RandomInitializer are importable from here too).
from ._initializer_base import (TRUNCATED_STDDEV, Initializer,  # noqa: F401
                                RandomInitializer, float_dtype, truncated_standard_normal,
                                weight_shape)
from ._variance_scaling import (GlorotNormal, GlorotUniform, HeNormal, HeUniform,
                                LecunNormal, LecunUniform, VarianceScaling, compute_fans)

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "GlorotNormal", "GlorotUniform", "HeNormal",
    "HeUniform", "LecunNormal", "LecunUniform", "Orthogonal", "compute_fans", "get",
    "serialize", "deserialize",
]


class Zeros(Initializer):
    """All zeros.

    Examples
    --------
    >>> from tconv3d.initializers import Zeros
    >>> Zeros()((3,))
    array([0., 0., 0.], dtype=float32)
    """

    def __call__(self, shape, dtype=None):
        return np.zeros(weight_shape(shape), dtype=float_dtype(dtype))


class Ones(Initializer):
    """All ones.

    Examples
    --------
    >>> from tconv3d.initializers import Ones
    >>> Ones()((2,), dtype="float64")
    array([1., 1.])
    """

    def __call__(self, shape, dtype=None):
        return np.ones(weight_shape(shape), dtype=float_dtype(dtype))


class Constant(Initializer):
    """Every element equal to ``value`` (a scalar, default 0.0).

    Parameters
    ----------
    value : float, default=0.0
        The value of every element.

    Raises
    ------
    ValueError
        If ``value`` is not a real scalar (for an array, use :func:`get`).

    Examples
    --------
    >>> from tconv3d.initializers import Constant
    >>> Constant(0.1)((3,))
    array([0.1, 0.1, 0.1], dtype=float32)
    """

    def __init__(self, value=0.0):
        if not isinstance(value, numbers.Real):
            raise ValueError(f"`value` must be a real scalar, got {value!r}.")
        self.value = value

    def __call__(self, shape, dtype=None):
        return np.full(weight_shape(shape), self.value, dtype=float_dtype(dtype))

    def get_config(self):
        return {"value": self.value}


class RandomNormal(RandomInitializer):
    """Normal with ``mean`` (0.0) and ``stddev`` (0.05).

    Parameters
    ----------
    mean, stddev : float, default=0.0, 0.05
        Of the normal distribution.
    seed : int, None or numpy.random.Generator, default=None
        See the module docstring.

    Examples
    --------
    >>> from tconv3d.initializers import RandomNormal
    >>> init = RandomNormal(stddev=0.01, seed=0)
    >>> w = init((3, 3, 3, 4, 8))
    >>> w.dtype, bool(np.array_equal(w, init((3, 3, 3, 4, 8))))    # an int seed repeats
    (dtype('float32'), True)
    """

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        z = self._rng().standard_normal(weight_shape(shape))
        return (self.mean + self.stddev * z).astype(float_dtype(dtype))

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class RandomUniform(RandomInitializer):
    """Uniform on ``[minval, maxval)`` (defaults -0.05, 0.05).

    Parameters
    ----------
    minval, maxval : float, default=-0.05, 0.05
        Bounds of the interval.
    seed : int, None or numpy.random.Generator, default=None
        See the module docstring.

    Examples
    --------
    >>> from tconv3d.initializers import RandomUniform
    >>> w = RandomUniform(-1.0, 1.0, seed=0)((1000,))
    >>> bool(w.min() >= -1.0 and w.max() < 1.0)
    True
    """

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval = minval, maxval
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        u = self._rng().uniform(self.minval, self.maxval, weight_shape(shape))
        return u.astype(float_dtype(dtype))

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, **super().get_config()}


class TruncatedNormal(RandomInitializer):
    """Normal with ``mean`` (0.0) and ``stddev`` (0.05), redrawn beyond 2 ``stddev``.

    Parameters
    ----------
    mean, stddev : float, default=0.0, 0.05
        Of the normal distribution before truncation.
    seed : int, None or numpy.random.Generator, default=None
        See the module docstring.

    Examples
    --------
    >>> from tconv3d.initializers import TruncatedNormal
    >>> bool(np.abs(TruncatedNormal(stddev=1.0, seed=0)((1000,))).max() < 2.0)
    True
    """

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        z = truncated_standard_normal(self._rng(), weight_shape(shape))
        return (self.mean + self.stddev * z).astype(float_dtype(dtype))

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class Orthogonal(RandomInitializer):
    """``gain`` times an orthogonal matrix reshaped to ``shape`` (Keras' QR construction).

    The matrix has ``prod(shape[:-1])`` rows and ``shape[-1]`` columns: orthonormal columns if
    it has at least as many rows, else orthonormal rows.

    Parameters
    ----------
    gain : float, default=1.0
        Multiplies the orthogonal matrix.
    seed : int, None or numpy.random.Generator, default=None
        See the module docstring.

    Raises
    ------
    ValueError
        When called with a shape of fewer than 2 axes.

    Examples
    --------
    >>> from tconv3d.initializers import Orthogonal
    >>> q = Orthogonal(seed=0)((4, 3))
    >>> bool(np.allclose(q.T @ q, np.eye(3), atol=1e-6))
    True
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain = gain
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        shape = weight_shape(shape)
        if len(shape) < 2:
            raise ValueError("The Orthogonal initializer needs a shape of rank >= 2, got "
                             f"{shape}.")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(float_dtype(dtype))

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


class _ArrayInitializer(Initializer):
    """Returns a given array (checked against the requested shape)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __call__(self, shape, dtype=None):
        if self.value.shape != weight_shape(shape):
            raise ValueError(f"The initial value has shape {self.value.shape}, but a weight of "
                             f"shape {tuple(shape)} is being initialized.")
        return self.value.astype(float_dtype(dtype), copy=True)

    def get_config(self):
        return {"value": self.value}


_CLASSES = [Zeros, Ones, Constant, RandomNormal, RandomUniform, TruncatedNormal,
            VarianceScaling, GlorotNormal, GlorotUniform, HeNormal, HeUniform, LecunNormal,
            LecunUniform, Orthogonal]
_SNAKE = {Zeros: "zeros", Ones: "ones", Constant: "constant", RandomNormal: "random_normal",
          RandomUniform: "random_uniform", TruncatedNormal: "truncated_normal",
          VarianceScaling: "variance_scaling", GlorotNormal: "glorot_normal",
          GlorotUniform: "glorot_uniform", HeNormal: "he_normal", HeUniform: "he_uniform",
          LecunNormal: "lecun_normal", LecunUniform: "lecun_uniform", Orthogonal: "orthogonal"}
#: Names accepted by :func:`get`: Keras' class names, snake_case names and aliases.
NAMES = {**{c.__name__: c for c in _CLASSES}, **{s: c for c, s in _SNAKE.items()},
         "normal": RandomNormal, "uniform": RandomUniform, "one": Ones, "zero": Zeros,
         "OrthogonalInitializer": Orthogonal}


def get(identifier):
    """Return an initializer (callable ``(shape, dtype=None) -> ndarray``).

    Parameters
    ----------
    identifier : None, str, dict, Initializer, class, ndarray or callable
        A name from :data:`NAMES` (Keras defaults); a config dict ``{"class_name": ...,
        "config": {...}}`` (Keras-serialized dicts with extra keys work too); an instance or
        class; a ``keras.initializers`` object (mapped to ours through its config); an array
        (returned as is when the requested shape matches); or a callable
        ``fn(shape, dtype=None)``. ``None`` gives ``None``.

    Returns
    -------
    Initializer, callable or None
        The initializer; a callable given is returned as it is.

    Raises
    ------
    ValueError
        Unknown names and identifiers that are none of the above.

    Examples
    --------
    >>> from tconv3d import initializers
    >>> initializers.get("he_normal")
    HeNormal(seed=None, input_axes=None, output_axes=None)
    >>> initializers.get({"class_name": "Constant", "config": {"value": 0.5}})((2,))
    array([0.5, 0.5], dtype=float32)
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return _config.from_name(identifier, NAMES, "initializer",
                                 "a config dict, an Initializer or a callable")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, (np.ndarray, np.generic)):
        return _ArrayInitializer(identifier)
    if _config.is_keras_object(identifier, NAMES):
        return deserialize(_config.as_dict(identifier))
    if inspect.isclass(identifier):
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret initializer identifier {identifier!r}: expected a "
                     "name, a config dict, an Initializer, an array or a callable.")


def serialize(initializer):
    """Return ``{"class_name": ..., "config": ...}`` for a built-in, else the object itself.

    Parameters
    ----------
    initializer : Initializer or callable
        The initializer to serialize.

    Returns
    -------
    dict or object
        Keras' config dict for this module's initializers; ``initializer`` itself
        otherwise.

    Examples
    --------
    >>> from tconv3d.initializers import Constant, serialize
    >>> serialize(Constant(0.5))
    {'class_name': 'Constant', 'config': {'value': 0.5}}
    """
    return _config.serialize(initializer, _CLASSES)


def deserialize(config):
    """Return the initializer a ``{"class_name": ..., "config": ...}`` dict describes.

    Parameters
    ----------
    config : dict
        ``class_name`` one of :data:`NAMES`; ``config`` the constructor's arguments.

    Returns
    -------
    Initializer
        A new initializer.

    Raises
    ------
    ValueError
        If ``config`` is not a dict with a known ``class_name``.

    Examples
    --------
    >>> from tconv3d.initializers import deserialize
    >>> deserialize({"class_name": "HeNormal", "config": {"seed": 1}})
    HeNormal(seed=1, input_axes=None, output_axes=None)
    """
    return _config.deserialize(config, NAMES, "initializer")
