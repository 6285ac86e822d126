"""Kernel files: a learned (or hand-made) upsampling kernel saved as a .npz archive.

>>> from tconv3d.kernel_file import fit_kernel_file, load_kernel, save_kernel
>>> spec, learned, converged = fit_kernel_file(low, high, (2, 2, 2), (6, 6, 6),
...                                            max_iter=200, threads=None)  # doctest: +SKIP
>>> save_kernel("k.npz", spec)                                              # doctest: +SKIP
>>> load_kernel("k.npz").factor                                             # doctest: +SKIP
(2, 2, 2)

The archive's entries (written by :func:`save_kernel` and ``tconv3d fit``, or by hand with
``numpy.savez``; read by :func:`load_kernel`):

``kernel``
    float array ``(kd, kh, kw)``, required: the taps applied to every volume, aligned as
    the trilinear kernel of the same size (see :mod:`tconv3d.upsampling`).
``factor``
    1 or 3 ints, optional: the upsampling factor the kernel was made for.
``bias``
    float, optional (default 0): added to every output voxel, in the volume's units.
``relative_bias``
    float, optional (default 0): added to every output voxel times the volume's robust
    scale (:func:`robust_scale`), so that the kernel does not depend on intensity units.
``format``, ``version``
    ``"tconv3d-kernel"`` and 1 (:data:`FORMAT`, :data:`VERSION`): written, not required.

A volume ``x`` is upsampled as ``VolumeUpsampler(factor, kernel=kernel).transform(x) +
bias + relative_bias * robust_scale(x)`` (:func:`upsample_volumes`).
"""
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .files import FileError, describe_error, write_atomically

__all__ = [
    "FORMAT",
    "VERSION",
    "KernelFile",
    "fit_kernel_file",
    "load_kernel",
    "robust_scale",
    "save_kernel",
    "upsample_volumes",
]

#: The ``format`` entry :func:`save_kernel` writes.
FORMAT = "tconv3d-kernel"
#: The ``version`` entry :func:`save_kernel` writes.
VERSION = 1


def robust_scale(volumes):
    """Return the 99th percentile of the finite ``|volumes|`` of each ``(d, h, w)`` volume.

    It is 1 where the percentile is 0 or no value is finite: NaN outside a scan's field of
    view must not turn the relative bias into NaN everywhere.

    Parameters
    ----------
    volumes : ndarray of shape (n, d, h, w)
        Real numbers; NaN and infinities are left out.

    Returns
    -------
    ndarray of shape (n, 1, 1, 1), dtype=float64
        One positive scale per volume, broadcastable against ``volumes``.

    Raises
    ------
    numpy.exceptions.AxisError
        If ``volumes`` has fewer than 4 dimensions.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.kernel_file import robust_scale
    >>> volumes = np.stack([np.full((2, 2, 2), -3.0), np.zeros((2, 2, 2)),
    ...                     np.full((2, 2, 2), np.nan)])
    >>> robust_scale(volumes).ravel()
    array([3., 1., 1.])
    """
    magnitude = np.abs(volumes)
    magnitude = np.where(np.isfinite(magnitude), magnitude, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN volumes: handled below
        scale = np.nanpercentile(magnitude, 99, axis=(1, 2, 3), keepdims=True)
    return np.where(scale > 0, scale, 1.0)


@dataclass(frozen=True)
class KernelFile:
    """The contents of a kernel file (format in the module docstring).

    Parameters
    ----------
    kernel : ndarray of shape (kd, kh, kw), or None
        As the attribute.
    factor : tuple of 3 ints, optional
        As the attribute; required by :func:`save_kernel`.
    bias : float, default=0.0
        As the attribute.
    relative_bias : float, default=0.0
        As the attribute.

    Attributes
    ----------
    kernel : ndarray of shape (kd, kh, kw), dtype=float64, or None
        The taps (``None`` stands for a fixed kernel, trilinear or nearest, and no bias).
    factor : tuple of 3 ints or None
        The upsampling factor the kernel was made for, if known.
    bias, relative_bias : float
        Added to every output voxel: ``bias`` as it is, ``relative_bias`` times the
        volume's :func:`robust_scale`.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.kernel_file import KernelFile
    >>> spec = KernelFile(np.ones((2, 2, 2)), factor=(2, 2, 2), bias=1.0, relative_bias=0.5)
    >>> spec.offset(np.full((1, 2, 2, 2), 4.0)).ravel()    # 1 + 0.5 * 4
    array([3.])
    """
    kernel: np.ndarray
    factor: tuple = None
    bias: float = 0.0
    relative_bias: float = 0.0

    def offset(self, volumes):
        """Return what is added to each upsampled volume: ``bias + relative_bias * scale``.

        Parameters
        ----------
        volumes : ndarray of shape (n, d, h, w)
            The volumes before upsampling (``relative_bias`` scales with their
            :func:`robust_scale`).

        Returns
        -------
        ndarray of shape (n, 1, 1, 1), dtype=float64
            One offset per volume, broadcastable against the upsampled volumes.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.kernel_file import KernelFile
        >>> spec = KernelFile(np.ones((2, 2, 2)), bias=1.0, relative_bias=0.5)
        >>> spec.offset(np.stack([np.full((2, 2, 2), 4.0), np.full((2, 2, 2), -2.0)])).ravel()
        array([3., 2.])
        """
        offset = np.full((len(volumes), 1, 1, 1), self.bias)
        if self.relative_bias:
            offset += self.relative_bias * robust_scale(volumes)
        return offset


def upsample_volumes(upsampler, spec, volumes):
    """Return ``upsampler.transform(volumes)`` plus the kernel file's biases, same dtype.

    Parameters
    ----------
    upsampler : VolumeUpsampler
        Fitted with ``spec.kernel`` (or a fixed kernel when ``spec.kernel`` is ``None``).
    spec : KernelFile
        The kernel file whose biases are added.
    volumes : ndarray of shape (n, d, h, w)
        The volumes to upsample.

    Returns
    -------
    ndarray of shape (n, d*fd, h*fh, w*fw)
        In the dtype ``upsampler.transform`` returns.

    Raises
    ------
    ValueError
        What ``upsampler.transform`` raises (not fitted, wrong shape, non-finite values
        refused by its ``nan_policy``, ...).
    MemoryError
        If the output would not fit in the memory available.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.kernel_file import KernelFile, upsample_volumes
    >>> from tconv3d.upsampling import VolumeUpsampler
    >>> spec = KernelFile(np.ones((2, 2, 2)), factor=(2, 2, 2), bias=1.0)
    >>> up = VolumeUpsampler(factor=spec.factor, kernel=spec.kernel).fit(np.zeros((1, 2, 2, 2)))
    >>> out = upsample_volumes(up, spec, np.ones((1, 2, 2, 2), dtype=np.float32))
    >>> out.shape, out.dtype, np.unique(out)
    ((1, 4, 4, 4), dtype('float32'), array([2.], dtype=float32))
    """
    out = upsampler.transform(volumes)
    offset = spec.offset(volumes)
    if offset.any():
        out += offset.astype(out.dtype)
    return out


def save_kernel(path, kernel_file, overwrite=True):
    """Write ``kernel_file`` (a :class:`KernelFile` with a factor) to ``path``, atomically.

    Parameters
    ----------
    path : str or path-like
        The .npz file to write.
    kernel_file : KernelFile
        Its ``factor`` must be set.
    overwrite : bool, default=True
        If ``False``, refuse (:class:`tconv3d.files.FileError`) a ``path`` that exists by
        the time the file is complete.

    Raises
    ------
    tconv3d.files.FileError
        If ``path`` exists and ``overwrite`` is False, or it cannot be written.
    TypeError
        If ``kernel_file.factor`` is None (it cannot be stored as integers).

    Examples
    --------
    A hand-made kernel (trilinear's taps along the last axis only), saved and read back:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from tconv3d.kernel_file import KernelFile, load_kernel, save_kernel
    >>> taps = np.array([1, 3, 3, 1], float).reshape(1, 1, 4) / 4
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "k.npz")
    >>> save_kernel(path, KernelFile(taps, factor=(1, 1, 2)))
    >>> spec = load_kernel(path)
    >>> spec.factor, spec.kernel.shape, spec.bias
    ((1, 1, 2), (1, 1, 4), 0.0)
    >>> tmp.cleanup()
    """
    arrays = dict(kernel=np.asarray(kernel_file.kernel, np.float64),
                  factor=np.asarray(kernel_file.factor, np.int64),
                  bias=np.float64(kernel_file.bias),
                  relative_bias=np.float64(kernel_file.relative_bias),
                  format=np.str_(FORMAT), version=np.int64(VERSION))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_atomically(path, write, overwrite, role="--out")


def load_kernel(path):
    """The :class:`KernelFile` at ``path``.

    Parameters
    ----------
    path : str or path-like
        A .npz archive with at least a ``kernel`` entry (format in the module docstring).

    Returns
    -------
    KernelFile
        ``kernel`` as float64, ``factor`` as 3 ints (or ``None``), the biases as floats.

    Raises
    ------
    tconv3d.files.FileError
        If the file is missing, not a .npz archive, or an entry is invalid; the message
        names the file as the ``tconv3d`` command's ``--kernel``.

    Examples
    --------
    >>> from tconv3d.kernel_file import load_kernel
    >>> load_kernel("no-such-kernel.npz")
    Traceback (most recent call last):
        ...
    tconv3d.files.FileError: --kernel 'no-such-kernel.npz' does not exist

    :func:`save_kernel` has a round trip.
    """
    if not os.path.isfile(path):
        raise FileError(f"--kernel {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {k: archive[k] for k in archive.files}
    except Exception as exc:
        raise FileError(f"cannot read --kernel {str(path)!r} as a .npz kernel file: "
                        f"{describe_error(exc)}") from None
    where = f"--kernel {str(path)!r}"
    if "kernel" not in entries:
        raise FileError(f"{where} has no 'kernel' entry (it has: "
                        f"{', '.join(entries) or 'nothing'}); see `tconv3d upsample --help`")
    kernel = entries["kernel"]
    if kernel.ndim != 3 or kernel.size == 0 or kernel.dtype.kind not in "iuf" \
            or not np.isfinite(kernel).all():
        raise FileError(f"{where}: 'kernel' must be a 3-D array of finite numbers, got "
                        f"shape {kernel.shape} and dtype {kernel.dtype}")
    biases = {}
    for name in ("bias", "relative_bias"):
        value = entries.get(name, np.float64(0.0))
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            raise FileError(f"{where}: {name!r} must be one finite number, got {value!r}")
        biases[name] = float(value.ravel()[0])
    factor = entries.get("factor")
    if factor is not None:
        values = factor.ravel().tolist() if factor.dtype.kind in "iu" else []
        if factor.size not in (1, 3) or len(values) != factor.size or min(values) < 1:
            raise FileError(f"{where}: 'factor' must be 1 or 3 integers >= 1, got "
                            f"{factor!r}")
        factor = tuple(int(v) for v in values * (3 // len(values)))
    return KernelFile(kernel.astype(np.float64), factor, **biases)


def fit_learned(low, high, factor, kernel_size, max_iter, threads):
    """Learned ``VolumeUpsampler`` of ``(n, d, h, w)`` ``low`` -> ``high``, and whether the
    fit converged before ``max_iter``."""
    from sklearn.exceptions import ConvergenceWarning

    from .upsampling import VolumeUpsampler

    upsampler = VolumeUpsampler(factor=factor, kernel="learned", kernel_size=kernel_size,
                                max_iter=max_iter, num_threads=threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        upsampler.fit(low, high)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return upsampler, converged


def fit_kernel_file(low, high, factor, kernel_size, max_iter, threads):
    """A :class:`KernelFile` learned from pairs of volumes.

    Each pair is divided by the :func:`robust_scale` of its ``low`` volume, so the
    learned bias is saved as ``relative_bias`` and the kernel carries over between
    intensity units.

    Parameters
    ----------
    low : ndarray of shape (n, d, h, w)
        The low-resolution volumes.
    high : ndarray of shape (n, d*fd, h*fh, w*fw)
        The high-resolution volumes they should be upsampled to.
    factor : tuple of 3 ints
        The upsampling factor ``(fd, fh, fw)``.
    kernel_size : tuple of 3 ints
        Taps per axis of the learned kernel.
    max_iter : int
        L-BFGS iterations at most.
    threads : int or None
        Threads of the compiled core (``None``: OpenMP's default).

    Returns
    -------
    spec : KernelFile
        The learned kernel, ``factor`` and ``relative_bias``.
    learned : VolumeUpsampler
        The fitted upsampler (on the scaled volumes), e.g. for ``n_iter_``.
    converged : bool
        Whether the fit converged before ``max_iter``.

    Raises
    ------
    ValueError
        What ``VolumeUpsampler(kernel="learned").fit`` raises: ``high`` not of the
        upsampled shape of ``low``, invalid ``factor``, ``kernel_size``, ``max_iter`` or
        ``threads``, no finite voxel to learn from, ...

    Examples
    --------
    From one pair made by nearest-neighbour upsampling, the fit finds the box kernel:

    >>> import numpy as np
    >>> from tconv3d.kernel_file import fit_kernel_file
    >>> from tconv3d.upsampling import VolumeUpsampler
    >>> low = np.random.default_rng(0).random((1, 4, 4, 4))
    >>> high = VolumeUpsampler(factor=2, kernel="nearest").fit_transform(low)
    >>> spec, learned, converged = fit_kernel_file(low, high, (2, 2, 2), (2, 2, 2),
    ...                                            max_iter=100, threads=1)
    >>> spec.factor, converged, bool(np.allclose(spec.kernel, 1.0))
    ((2, 2, 2), True, True)
    """
    scale = robust_scale(low)
    learned, converged = fit_learned(low / scale, high / scale, factor, kernel_size,
                                     max_iter, threads)
    spec = KernelFile(learned.kernel_, tuple(factor), relative_bias=learned.bias_)
    return spec, learned, converged
