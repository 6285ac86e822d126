"""The fan-based initializers of :mod:`tconv3d.initializers` (which exports them).

:func:`compute_fans` is Keras' ``compute_fans``; :class:`VarianceScaling` draws with a
variance set by the fans, and Glorot, He and Lecun are its fixed variants, as in Keras 3.
"""
import math
import numbers

import numpy as np

from ._initializer_base import (TRUNCATED_STDDEV, RandomInitializer, float_dtype,
                                truncated_standard_normal, weight_shape)


def compute_fans(shape, input_axes=None, output_axes=None):
    """Return ``(fan_in, fan_out)`` of a weight shape, exactly as Keras' ``compute_fans``.

    Parameters
    ----------
    shape : tuple of int
        E.g. a transposed-convolution kernel ``(kd, kh, kw, filters, in_channels)``.
    input_axes, output_axes : list of int or None, default=None
        When both are given, the fans are the products of these axes' sizes.

    Returns
    -------
    fan_in : int
        ``shape[-2]`` times the receptive field (the product of the other axes), or the
        product of ``input_axes``; for 1-D and 2-D shapes, Keras' rules.
    fan_out : int
        ``shape[-1]`` times the receptive field, or the product of ``output_axes``.

    Examples
    --------
    A kernel ``(kd, kh, kw, filters, in_channels)``: 27 taps, 4 filters, 8 input channels.

    >>> from tconv3d.initializers import compute_fans
    >>> compute_fans((3, 3, 3, 4, 8))
    (108, 216)
    >>> compute_fans((3, 3, 3, 4, 8), input_axes=[4], output_axes=[3])
    (8, 4)
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


class VarianceScaling(RandomInitializer):
    """Scale adapted to the fans: ``n`` is fan_in, fan_out or their mean (``mode``).

    ``distribution="truncated_normal"`` (default; ``"normal"`` is an alias): truncated at 2
    standard deviations, with ``stddev = sqrt(scale / n) / 0.8796...`` before truncation;
    ``"untruncated_normal"``: ``stddev = sqrt(scale / n)``; ``"uniform"``: on
    ``[-limit, limit]`` with ``limit = sqrt(3 * scale / n)``. ``n`` is at least 1.

    Parameters
    ----------
    scale : float > 0, default=1.0
        The variance of the drawn values times ``n``.
    mode : {"fan_in", "fan_out", "fan_avg"}, default="fan_in"
        Which fan is ``n``.
    distribution : {"truncated_normal", "untruncated_normal", "uniform"}, \
default="truncated_normal"
        The distribution drawn from.
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
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
        """Return the variance of the values drawn for ``shape``: ``scale / max(1, n)``.

        Parameters
        ----------
        shape : tuple of int
            The weight's shape (its fans give ``n``).

        Returns
        -------
        float
            The variance (before truncation for the truncated normal, which corrects it).

        Examples
        --------
        >>> from tconv3d.initializers import HeNormal
        >>> HeNormal().variance((3, 3, 3, 4, 8))       # 2 / fan_in, fan_in = 27 * 4
        0.018518518518518517
        """
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}
        return self.scale / max(1.0, n[self.mode])

    def __call__(self, shape, dtype=None):
        shape = weight_shape(shape)
        var = self.variance(shape)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            w = math.sqrt(var) / TRUNCATED_STDDEV * truncated_standard_normal(rng, shape)
        elif self.distribution == "untruncated_normal":
            w = math.sqrt(var) * rng.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * var)
            w = rng.uniform(-limit, limit, shape)
        return w.astype(float_dtype(dtype))

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
    """Truncated normal, ``stddev = sqrt(2 / (fan_in + fan_out))`` (after truncation).

    Parameters
    ----------
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
        Passed to :func:`compute_fans`.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.initializers import GlorotNormal
    >>> kernel = GlorotNormal(seed=0)((3, 3, 3, 4, 8))
    >>> bool(np.abs(kernel).max() < 2 * np.sqrt(2 / (27 * 4 + 27 * 8)) / 0.8796)  # truncated
    True
    """
    _args = (1.0, "fan_avg", "truncated_normal")


class GlorotUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / (fan_in + fan_out))``.

    Keras' default kernel initializer (``"glorot_uniform"``).

    Parameters
    ----------
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
        Passed to :func:`compute_fans`.

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
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
        Passed to :func:`compute_fans`.

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
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
        Passed to :func:`compute_fans`.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.initializers import HeUniform
    >>> bool(np.abs(HeUniform(seed=0)((3, 3, 3, 4, 8))).max() <= np.sqrt(6 / (27 * 4)))
    True
    """
    _args = (2.0, "fan_in", "uniform")


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(1 / fan_in)`` (after truncation).

    Parameters
    ----------
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
        Passed to :func:`compute_fans`.

    Examples
    --------
    >>> from tconv3d.initializers import LecunNormal
    >>> init = LecunNormal(seed=0)
    >>> init.variance((3, 3, 3, 4, 8)) == 1 / (27 * 4), init((3, 3, 3, 4, 8)).dtype
    (True, dtype('float32'))
    """
    _args = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(3 / fan_in)``.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator, default=None
        See the :mod:`~tconv3d.initializers` module docstring.
    input_axes, output_axes : list of int or None, default=None
        Passed to :func:`compute_fans`.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.initializers import LecunUniform
    >>> bool(np.abs(LecunUniform(seed=0)((3, 3, 3, 4, 8))).max() <= np.sqrt(3 / (27 * 4)))
    True
    """
    _args = (1.0, "fan_in", "uniform")
