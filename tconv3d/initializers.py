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
import math
import numbers

import numpy as np

from . import _config

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "GlorotNormal", "GlorotUniform", "HeNormal",
    "HeUniform", "LecunNormal", "LecunUniform", "Orthogonal", "compute_fans", "get",
    "serialize", "deserialize",
]

#: Standard deviation of a standard normal truncated to (-2, 2): Keras' correction factor.
TRUNCATED_STDDEV = 0.87962566103423978


def _dtype(dtype):
    dtype = np.dtype("float32" if dtype is None else dtype)
    if dtype.kind != "f":
        raise ValueError(f"`dtype` must be a floating dtype (float32 or float64), got {dtype}.")
    return dtype


def _shape(shape):
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"`shape` must be a tuple of ints, got {shape!r}.") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"`shape` must have non-negative sizes, got {shape}.")
    return shape


def compute_fans(shape, input_axes=None, output_axes=None):
    """``(fan_in, fan_out)`` of a weight shape, exactly as Keras' ``compute_fans``.

    Parameters
    ----------
    shape : tuple of int
        E.g. a transposed-convolution kernel ``(kd, kh, kw, filters, in_channels)``.
    input_axes, output_axes : list of int or None, default=None
        When both are given, the fans are the products of these axes' sizes.

    Returns
    -------
    fan_in, fan_out : int
    """
    shape = tuple(shape)
    if input_axes is not None and output_axes is not None:
        return (int(np.prod([shape[a] for a in input_axes], dtype=np.int64)),
                int(np.prod([shape[a] for a in output_axes], dtype=np.int64)))
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    receptive_field = int(np.prod(shape[:-2], dtype=np.int64))
    return int(shape[-2]) * receptive_field, int(shape[-1]) * receptive_field


class Initializer(_config.Configurable):
    """Base class: subclasses implement ``__call__(shape, dtype=None)`` and ``get_config``."""

    def __call__(self, shape, dtype=None):
        raise NotImplementedError


class Zeros(Initializer):
    """All zeros.

    Examples
    --------
    >>> from tconv3d.initializers import Zeros
    >>> Zeros()((3,))
    array([0., 0., 0.], dtype=float32)
    """

    def __call__(self, shape, dtype=None):
        return np.zeros(_shape(shape), dtype=_dtype(dtype))


class Ones(Initializer):
    """All ones.

    Examples
    --------
    >>> from tconv3d.initializers import Ones
    >>> Ones()((2,), dtype="float64")
    array([1., 1.])
    """

    def __call__(self, shape, dtype=None):
        return np.ones(_shape(shape), dtype=_dtype(dtype))


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
        return np.full(_shape(shape), self.value, dtype=_dtype(dtype))

    def get_config(self):
        return {"value": self.value}


class RandomInitializer(Initializer):
    """Base of the random initializers: holds the ``seed`` (int, None or Generator)."""

    def __init__(self, seed=None):
        if seed is not None and not isinstance(seed, (numbers.Integral, np.random.Generator)) \
                or isinstance(seed, bool):
            raise ValueError("`seed` must be None, an int or a numpy.random.Generator, "
                             f"got {seed!r}.")
        self.seed = seed
        # As Keras: an unseeded initializer fixes its seed now, so calls repeat their values.
        self._seed = (int(np.random.SeedSequence().generate_state(1)[0]) if seed is None
                      else seed)

    def _rng(self):
        if isinstance(self._seed, np.random.Generator):
            return self._seed
        return np.random.default_rng(int(self._seed))

    def get_config(self):
        return {"seed": self.seed}


def _truncated_standard_normal(rng, shape):
    """Standard normal samples redrawn until every one lies in (-2, 2)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) >= 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) >= 2
    return out


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
        z = self._rng().standard_normal(_shape(shape))
        return (self.mean + self.stddev * z).astype(_dtype(dtype))

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
        u = self._rng().uniform(self.minval, self.maxval, _shape(shape))
        return u.astype(_dtype(dtype))

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
        z = _truncated_standard_normal(self._rng(), _shape(shape))
        return (self.mean + self.stddev * z).astype(_dtype(dtype))

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class VarianceScaling(RandomInitializer):
    """Scale adapted to the fans: ``n`` is fan_in, fan_out or their mean (``mode``).

    ``distribution="truncated_normal"`` (default; ``"normal"`` is an alias): truncated at 2
    standard deviations, with ``stddev = sqrt(scale / n) / 0.8796...`` before truncation;
    ``"untruncated_normal"``: ``stddev = sqrt(scale / n)``; ``"uniform"``: on
    ``[-limit, limit]`` with ``limit = sqrt(3 * scale / n)``. ``n`` is at least 1.

    Parameters
    ----------
    scale : float > 0, default=1.0
    mode : {"fan_in", "fan_out", "fan_avg"}, default="fan_in"
    distribution : {"truncated_normal", "untruncated_normal", "uniform"}
    seed : int, None or numpy.random.Generator
    input_axes, output_axes : list of int or None
        Passed to :func:`compute_fans`.

    Raises
    ------
    ValueError
        If ``scale``, ``mode``, ``distribution`` or ``seed`` is not one it accepts.

    Examples
    --------
    >>> from tconv3d.initializers import VarianceScaling
    >>> init = VarianceScaling(scale=2.0, mode="fan_in", distribution="uniform", seed=0)
    >>> init.variance((3, 3, 3, 4, 8)) == 2.0 / (27 * 4)     # fan_in: 27 taps x filters
    True
    """

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        if not isinstance(scale, numbers.Real) or not scale > 0:
            raise ValueError(f"`scale` must be a positive float, got {scale!r}.")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError("`mode` must be 'fan_in', 'fan_out' or 'fan_avg', "
                             f"got {mode!r}.")
        dist = str(distribution).lower()
        dist = "truncated_normal" if dist == "normal" else dist
        if dist not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError("`distribution` must be 'truncated_normal', 'untruncated_normal' "
                             f"or 'uniform', got {distribution!r}.")
        self.scale, self.mode, self.distribution = scale, mode, dist
        self.input_axes, self.output_axes = input_axes, output_axes
        super().__init__(seed)

    def variance(self, shape):
        """``scale / max(1, n)``: the variance of the drawn values for this ``shape``."""
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}
        return self.scale / max(1.0, n[self.mode])

    def __call__(self, shape, dtype=None):
        shape = _shape(shape)
        var = self.variance(shape)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            w = math.sqrt(var) / TRUNCATED_STDDEV * _truncated_standard_normal(rng, shape)
        elif self.distribution == "untruncated_normal":
            w = math.sqrt(var) * rng.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * var)
            w = rng.uniform(-limit, limit, shape)
        return w.astype(_dtype(dtype))

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed, "input_axes": self.input_axes,
                "output_axes": self.output_axes}


class _FixedVarianceScaling(VarianceScaling):
    _args = None  # (scale, mode, distribution)

    def __init__(self, seed=None, input_axes=None, output_axes=None):
        scale, mode, distribution = self._args
        super().__init__(scale, mode, distribution, seed, input_axes, output_axes)

    def get_config(self):
        return {"seed": self.seed, "input_axes": self.input_axes,
                "output_axes": self.output_axes}


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(2 / (fan_in + fan_out))`` (after truncation)."""
    _args = (1.0, "fan_avg", "truncated_normal")


class GlorotUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / (fan_in + fan_out))``.

    Keras' default kernel initializer (``"glorot_uniform"``).

    Parameters
    ----------
    seed, input_axes, output_axes
        See :class:`VarianceScaling`.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.initializers import GlorotUniform
    >>> kernel = GlorotUniform(seed=0)((3, 3, 3, 4, 8))   # (kd, kh, kw, filters, in_channels)
    >>> kernel.shape, kernel.dtype
    ((3, 3, 3, 4, 8), dtype('float32'))
    >>> bool(np.abs(kernel).max() <= np.sqrt(6 / (27 * 8 + 27 * 4)))   # fans: 27 taps x channels
    True
    """
    _args = (1.0, "fan_avg", "uniform")


class HeNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(2 / fan_in)`` (after truncation).

    Parameters
    ----------
    seed, input_axes, output_axes
        See :class:`VarianceScaling`.

    Examples
    --------
    >>> from tconv3d.initializers import HeNormal
    >>> HeNormal(seed=0)((3, 3, 3, 4, 8)).shape
    (3, 3, 3, 4, 8)
    """
    _args = (2.0, "fan_in", "truncated_normal")


class HeUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / fan_in)``.

    Parameters
    ----------
    seed, input_axes, output_axes
        See :class:`VarianceScaling`.

    Examples
    --------
    >>> from tconv3d.initializers import HeUniform
    >>> bool(np.abs(HeUniform(seed=0)((3, 3, 3, 4, 8))).max() <= np.sqrt(6 / (27 * 4)))
    True
    """
    _args = (2.0, "fan_in", "uniform")


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(1 / fan_in)`` (after truncation)."""
    _args = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(3 / fan_in)``."""
    _args = (1.0, "fan_in", "uniform")


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
        shape = _shape(shape)
        if len(shape) < 2:
            raise ValueError("The Orthogonal initializer needs a shape of rank >= 2, got "
                             f"{shape}.")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(_dtype(dtype))

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


class _ArrayInitializer(Initializer):
    """Returns a given array (checked against the requested shape)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __call__(self, shape, dtype=None):
        if self.value.shape != _shape(shape):
            raise ValueError(f"The initial value has shape {self.value.shape}, but a weight of "
                             f"shape {tuple(shape)} is being initialized.")
        return self.value.astype(_dtype(dtype), copy=True)

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
    """``{"class_name": ..., "config": ...}`` for built-ins; the object itself otherwise.

    Parameters
    ----------
    initializer : Initializer or callable

    Returns
    -------
    config : dict or object

    Examples
    --------
    >>> from tconv3d.initializers import Constant, serialize
    >>> serialize(Constant(0.5))
    {'class_name': 'Constant', 'config': {'value': 0.5}}
    """
    return _config.serialize(initializer, _CLASSES)


def deserialize(config):
    """Initializer from a ``{"class_name": ..., "config": ...}`` dict.

    Parameters
    ----------
    config : dict

    Returns
    -------
    initializer : Initializer

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
