"""The base classes of :mod:`tconv3d.initializers` and the checks and draws they share.

:class:`Initializer` is the calling convention, :class:`RandomInitializer` adds the ``seed``
(the module docstring of :mod:`tconv3d.initializers` says what each kind of seed does).
:mod:`tconv3d.initializers` exports both; its fan-based classes live in
:mod:`tconv3d._variance_scaling`.
"""
import numbers

import numpy as np

from . import _config

#: Standard deviation of a standard normal truncated to (-2, 2): Keras' correction factor.
TRUNCATED_STDDEV = 0.87962566103423978


def float_dtype(dtype):
    """``dtype`` as a floating numpy dtype (``None``: float32), else a ValueError."""
    dtype = np.dtype("float32" if dtype is None else dtype)
    if dtype.kind != "f":
        raise ValueError(f"`dtype` must be a floating dtype (float32 or float64), got {dtype}.")
    return dtype


def weight_shape(shape):
    """``shape`` as a tuple of non-negative ints, else a ValueError."""
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"`shape` must be a tuple of ints, got {shape!r}.") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"`shape` must have non-negative sizes, got {shape}.")
    return shape


def truncated_standard_normal(rng, shape):
    """Standard normal samples redrawn until every one lies in (-2, 2)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) >= 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) >= 2
    return out


class Initializer(_config.Configurable):
    """Base class of the initializers: ``init(shape, dtype=None) -> ndarray``.

    A subclass implements :meth:`__call__` and, if its constructor takes arguments,
    ``get_config`` returning them (``from_config`` and the repr follow).

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.initializers import Initializer
    >>> class Arange(Initializer):
    ...     def __call__(self, shape, dtype=None):
    ...         size = int(np.prod(shape))
    ...         return np.arange(size, dtype=dtype or "float32").reshape(shape)
    >>> Arange()((2, 2))
    array([[0., 1.],
           [2., 3.]], dtype=float32)
    """

    def __call__(self, shape, dtype=None):
        """Return an initial weight of ``shape``.

        Parameters
        ----------
        shape : tuple of int
            The weight's shape, e.g. a kernel's ``(kd, kh, kw, filters, in_channels)``.
        dtype : str, numpy.dtype or None, default=None
            A floating dtype; ``None`` is float32.

        Returns
        -------
        ndarray
            A new array of ``shape`` and ``dtype``.

        Raises
        ------
        ValueError
            If ``shape`` is not a tuple of non-negative ints or ``dtype`` is not a floating
            dtype (or the shape is one the initializer cannot fill).
        NotImplementedError
            On the base class itself.

        Examples
        --------
        >>> from tconv3d.initializers import Constant
        >>> Constant(2.0)((2, 3), dtype="float64")
        array([[2., 2., 2.],
               [2., 2., 2.]])
        """
        raise NotImplementedError


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
