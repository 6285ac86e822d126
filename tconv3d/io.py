"""Volume files on disk: .npy, .npz, .nii and .nii.gz in, the same out, written atomically.

>>> from tconv3d.io import open_volume, write_volume
>>> from tconv3d.upsampling import VolumeUpsampler
>>> source = open_volume("t1.nii.gz")                       # doctest: +SKIP
>>> source.spatial, source.zooms, source.n_volumes          # doctest: +SKIP
((256, 256, 176), (1.0, 1.0, 1.0), 1)
>>> x = source.volume(0)[None].astype("float32")            # doctest: +SKIP
>>> up = VolumeUpsampler(factor=2).fit(x).transform(x)[0]   # doctest: +SKIP
>>> write_volume("t1_x2.nii.gz", "nifti", up, source, (2, 2, 2), overwrite=False)  # doctest: +SKIP

The format is chosen by the file extension (:data:`tconv3d.files.FORMATS`; NIfTI needs
nibabel: ``pip install 'tconv3d[nifti]'``). A file is opened without reading its data
(:class:`Source`: a memory map for .npy, nibabel's array proxy for NIfTI) and read one 3-D
volume at a time. Every failure -- a missing or unreadable file, an unsupported format,
data that are not real numbers, an output that exists -- is a
:class:`~tconv3d.files.FileError` whose message is one line naming the file; the ``role``
arguments say how the message names it (the ``tconv3d`` command's ``IN``, ``OUT``,
``--out``, ...). Outputs are written to a temporary file next to their path and renamed
(:func:`~tconv3d.files.write_atomically`): an interrupted or failed write leaves no partial
file.

The checks, the error and the atomic writes are :mod:`tconv3d.files`' (kernel files use
them too); the NIfTI header and affine of an upsampled image are :mod:`tconv3d.nifti`'s.
This module re-exports the names it always had: ``FORMATS``, ``FileError``,
``check_input``, ``check_output``, ``file_format``, ``write_atomically`` and
``upsampled_affine``.
"""
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

# The names of tconv3d.files and tconv3d.nifti this module has always offered, re-exported
# (NIFTI_HINT, describe_error, format_suffix and require_nibabel too, outside __all__).
from .files import (FORMATS, FileError, check_input, check_output,  # noqa: F401
                    describe_error, file_format, format_suffix, write_atomically)
from .nifti import (NIFTI_HINT, open_image, require_nibabel,  # noqa: F401
                    upsampled_affine, upsampled_image)

__all__ = [
    "FORMATS",
    "FileError",
    "Source",
    "check_input",
    "check_output",
    "encode_integers",
    "file_format",
    "open_volume",
    "upsampled_affine",
    "write_atomically",
    "write_volume",
]


# --- reading -----------------------------------------------------------------------------

@dataclass
class Source:
    """A volume file opened for reading, one 3-D volume at a time.

    :func:`open_volume` makes it; the data are read by :meth:`volume`.

    Parameters
    ----------
    path : str
        The file.
    kind : {"npy", "npz", "nifti"}
        Its format.
    shape : tuple of int
        The array's full shape, the first three axes spatial.
    stored_dtype : numpy.dtype
        The type on disk (NIfTI scaling aside), which decides the default output type.
    array : array-like
        The data, read on indexing: a memory map (.npy), an ndarray (.npz) or nibabel's
        array proxy (NIfTI, which applies the scaling).
    key : str, default="arr_0"
        The array's name in a .npz archive.
    compressed : bool, default=False
        Whether the .npz archive is compressed.
    image : nibabel image or None, default=None
        The NIfTI image (``None`` for arrays).
    zooms : tuple of 3 floats, default=(1.0, 1.0, 1.0)
        The voxel sizes (arrays have voxels of size 1).
    units : str, default=""
        The unit of ``zooms`` (``""`` if unknown).

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.io import Source
    >>> data = np.arange(4 * 3 * 2 * 5, dtype=np.int16).reshape(4, 3, 2, 5)
    >>> source = Source("v.npy", "npy", data.shape, data.dtype, data)
    >>> source.spatial, source.extra, source.n_volumes, source.scaling
    ((4, 3, 2), (5,), 5, (1.0, 0.0))
    """
    path: str
    kind: str
    shape: tuple
    stored_dtype: np.dtype
    array: object = field(repr=False)
    key: str = "arr_0"
    compressed: bool = False
    image: object = field(default=None, repr=False)
    zooms: tuple = (1.0, 1.0, 1.0)
    units: str = ""

    @property
    def spatial(self):
        """The three spatial sizes, ``shape[:3]``.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.io import Source
        >>> Source("v.npy", "npy", (4, 3, 2), np.dtype("f4"), np.zeros((4, 3, 2))).spatial
        (4, 3, 2)
        """
        return tuple(self.shape[:3])

    @property
    def scaling(self):
        """The ``(slope, intercept)`` taking stored values to physical ones.

        NIfTI's ``scl_slope`` and ``scl_inter``; ``(1.0, 0.0)`` for arrays and unscaled
        images.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.io import Source
        >>> Source("v.npy", "npy", (4, 3, 2), np.dtype("f4"), np.zeros((4, 3, 2))).scaling
        (1.0, 0.0)
        """
        slope = getattr(self.array, "slope", 1.0)
        inter = getattr(self.array, "inter", 0.0)
        return float(slope), float(inter)

    @property
    def extra(self):
        """The sizes of the axes after the spatial ones, ``shape[3:]`` (``()`` for 3-D).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.io import Source
        >>> Source("v.npy", "npy", (4, 3, 2, 5, 2), np.dtype("f4"), None).extra
        (5, 2)
        """
        return tuple(self.shape[3:])

    @property
    def n_volumes(self):
        """The number of 3-D volumes, the product of :attr:`extra`.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.io import Source
        >>> Source("v.npy", "npy", (4, 3, 2, 5, 2), np.dtype("f4"), None).n_volumes
        10
        """
        return int(np.prod(self.extra, dtype=np.int64))

    def volume(self, k):
        """Read the ``k``-th 3-D volume (C order over the :attr:`extra` axes).

        Parameters
        ----------
        k : int
            In ``range(n_volumes)``.

        Returns
        -------
        ndarray of shape spatial
            In the file's dtype (NIfTI: the scaled dtype).

        Raises
        ------
        tconv3d.files.FileError
            If the data cannot be read (a truncated or corrupt file behind a valid header).
        ValueError
            If ``k`` is out of range for a series of volumes.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.io import Source
        >>> data = np.arange(2 * 2 * 2 * 3).reshape(2, 2, 2, 3)
        >>> Source("v.npy", "npy", data.shape, data.dtype, data).volume(1)[0]
        array([[ 1,  4],
               [ 7, 10]])
        """
        index = np.unravel_index(k, self.extra) if self.extra else ()
        try:
            data = np.asarray(self.array[(slice(None),) * 3 + tuple(index)])
        except Exception as exc:  # truncated or corrupt data behind a valid header
            raise FileError(f"cannot read {self.path!r}: {describe_error(exc)}") from None
        return data


def open_volume(path, role="IN"):
    """Open ``path`` as a :class:`Source`, checked, without reading its data.

    Parameters
    ----------
    path : str or path-like
        A .npy file, a .npz archive of exactly one array, or a NIfTI-1/2 image, holding
        a 3-D volume or a series of them (more axes after the three spatial ones) of
        real numbers (integer, float or boolean).
    role : str, default="IN"
        How an error message names the file.

    Returns
    -------
    Source
        The file, checked, its data not read yet.

    Raises
    ------
    tconv3d.files.FileError
        For every failure: missing file, unsupported format, unreadable contents, not
        numbers, fewer than three axes, an empty array.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from tconv3d.io import open_volume
    >>> tmp = tempfile.TemporaryDirectory()
    >>> np.save(os.path.join(tmp.name, "v.npy"), np.zeros((4, 3, 2, 5), np.int16))
    >>> source = open_volume(os.path.join(tmp.name, "v.npy"))
    >>> source.spatial, source.n_volumes, source.volume(4).dtype
    ((4, 3, 2), 5, dtype('int16'))
    >>> tmp.cleanup()
    """
    kind = check_input(path, role)
    if kind == "nifti":
        require_nibabel(path)
    try:
        source = _open(path, kind)
    except FileError:
        raise
    except Exception as exc:
        what = {"npy": "a NumPy .npy file", "npz": "a NumPy .npz archive",
                "nifti": "a NIfTI image"}[kind]
        raise FileError(f"cannot read {str(path)!r} as {what}: {describe_error(exc)}") \
            from None
    dtype = source.stored_dtype = source.stored_dtype.newbyteorder("=")  # NIfTI may be '>'
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise FileError(f"{role} {str(path)!r} holds {dtype} data; expected real numbers "
                        "(integer, float or boolean)")
    if len(source.shape) < 3:
        raise FileError(f"{role} {str(path)!r} holds an array of shape {source.shape}; "
                        "expected a 3-D volume (or a 4-D series of volumes)")
    if min(source.shape) < 1:
        raise FileError(f"{role} {str(path)!r} holds an empty array of shape "
                        f"{source.shape}")
    return source


def _open(path, kind):
    path = os.fspath(path)
    if kind == "npy":
        _check_npy_header(path)
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return Source(path, kind, array.shape, array.dtype, array)
    if kind == "npz":
        with zipfile.ZipFile(path) as archive:
            compressed = any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist())
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if len(keys) != 1:
                raise FileError(
                    f"{path!r} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); "
                    "expected exactly one")
            array = archive[keys[0]]
        return Source(path, kind, array.shape, array.dtype, array, key=keys[0],
                      compressed=compressed)
    image, zooms, units = open_image(path)
    return Source(path, kind, image.shape, np.dtype(image.get_data_dtype()), image.dataobj,
                  image=image, zooms=zooms, units=units)


def _check_npy_header(path):
    """Refuse, with a clear message, a file that is not .npy or holds Python objects."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        if f.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
            raise FileError(f"{path!r} is not a NumPy .npy file (no .npy header)")
        f.seek(0)
        version = fmt.read_magic(f)
        read_header = {(1, 0): fmt.read_array_header_1_0,
                       (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is not None and read_header(f)[2].hasobject:
            raise FileError(f"{path!r} holds Python objects, not numbers")


# --- writing -----------------------------------------------------------------------------

def encode_integers(values, dtype, *, grid=None, can_scale=False, clip=False, role="OUT"):
    """Store physical ``values`` as integers of ``dtype``: ``values ~ slope * q + inter``.

    Parameters
    ----------
    values : ndarray of floats
        The values to store.
    dtype : numpy.dtype or str
        The storage type, an integer type.
    grid : (slope, inter), optional
        The input's quantisation grid (its NIfTI scaling, ``(1, 0)`` for integer arrays):
        tried first. Values on it (as nearest-neighbour upsampling gives) are stored
        exactly; others within half its step.
    can_scale : bool, default=False
        Whether the file stores a scaling (NIfTI). If ``values`` do not fit ``dtype`` on
        ``grid`` (or there is no grid), a slope and intercept map their range onto the
        type's; every value is then within half of that step. Otherwise values are
        rounded to integers (slope 1) and must fit the type's range.
    clip : bool, default=False
        Whether values outside the type's range may be clipped to it (arrays only).
    role : str, default="OUT"
        How an error message names the file.

    Returns
    -------
    q : ndarray of ``dtype``
        The stored integers, of the shape of ``values``.
    scaling : (float, float)
        ``(slope, inter)``; NIfTI stores them as float32, so they are float32 values.
    n_clipped : int
        How many values were clipped to the type's range (only with ``clip``).

    Raises
    ------
    tconv3d.files.FileError
        NaN or infinite values (no integer holds them), or values outside the type's
        range that may be neither rescaled nor clipped.

    Examples
    --------
    >>> from tconv3d.io import encode_integers
    >>> encode_integers(np.array([0.0, 1.0, 2.6]), "uint8")
    (array([0, 1, 3], dtype=uint8), (1.0, 0.0), 0)
    """
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    finite = np.isfinite(values)
    if not finite.all():
        raise FileError(f"{role} would hold {int(values.size - finite.sum())} NaN or infinite "
                        f"values, which {dtype} cannot store; choose a float --dtype")

    def on_grid(slope, inter):
        return np.rint((values - inter) / slope)

    def fits(q):
        return q.size == 0 or (q.min() >= info.min and q.max() <= info.max)

    if grid is not None:
        slope, inter = (float(np.float32(v)) for v in grid)
        q = on_grid(slope, inter)
        if fits(q) or not can_scale:
            return _clipped(q, dtype, info, clip, role, (slope, inter))
    if can_scale:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        slope = float(np.float32((hi - lo) / (float(info.max) - float(info.min)))) or 1.0
        inter = float(np.float32(lo - info.min * slope))
        q = np.clip(on_grid(slope, inter), info.min, info.max)   # float32 rounding only
        return q.astype(dtype), (slope, inter), 0
    return _clipped(on_grid(1.0, 0.0), dtype, info, clip, role, (1.0, 0.0))


def _clipped(q, dtype, info, clip, role, scaling):
    outside = int(np.count_nonzero((q < info.min) | (q > info.max)))
    if outside and not clip:
        slope, inter = scaling
        grid = "" if scaling == (1.0, 0.0) else f" with slope {slope:g}, intercept {inter:g}"
        raise FileError(f"{outside} voxels of {role} fall outside {dtype}'s range "
                        f"[{info.min}, {info.max}]{grid}; choose a wider --dtype, or pass "
                        "--clip to clip them")
    return np.clip(q, info.min, info.max).astype(dtype), scaling, outside


def write_volume(path, kind, data, source, factor, overwrite, scaling=(None, None)):
    """Write ``data``, the upsampled ``source``, to ``path`` in format ``kind``, atomically.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    kind : {"npy", "npz", "nifti"}
        Its format (:func:`~tconv3d.files.file_format`).
    data : ndarray
        The upsampled volume(s), spatial axes first, in the dtype to store.
    source : Source
        What ``data`` was computed from: a .npz output keeps its array name and
        compression; a NIfTI output keeps its header, with the affine, voxel sizes and
        slice timing updated for ``factor`` (an array input gets an index-coordinate
        affine).
    factor : sequence of 3 ints
        The upsampling factor per spatial axis.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    scaling : (slope, inter), optional
        NIfTI only: the physical values are ``slope * data + inter``
        (:func:`encode_integers`); ``(None, None)`` stores ``data`` as they are.

    Raises
    ------
    tconv3d.files.FileError
        If ``path`` exists without ``overwrite``, cannot be written, or needs nibabel.

    Examples
    --------
    An array upsampled by 2 along its first axis, written as a NIfTI image: in index
    coordinates, with voxels of half a unit along that axis
    (:func:`~tconv3d.nifti.upsampled_affine`).

    >>> import os, tempfile
    >>> import numpy as np
    >>> from tconv3d.io import Source, open_volume, write_volume
    >>> tmp = tempfile.TemporaryDirectory()
    >>> data = np.zeros((2, 3, 4), np.float32)
    >>> source = Source("v.npy", "npy", data.shape, data.dtype, data)
    >>> path = os.path.join(tmp.name, "up.nii.gz")
    >>> write_volume(path, "nifti", np.repeat(data, 2, axis=0), source, (2, 1, 1), False)
    >>> open_volume(path).zooms
    (0.5, 1.0, 1.0)
    >>> tmp.cleanup()
    """
    if kind == "npy":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, data, allow_pickle=False)
    elif kind == "npz":
        save = np.savez_compressed if source.compressed else np.savez
        key = source.key if source.kind == "npz" else "arr_0"

        def write(tmp):
            with open(tmp, "wb") as f:
                save(f, **{key: data})
    else:
        nibabel = require_nibabel(path)
        image = upsampled_image(source.image, data, factor, scaling)

        def write(tmp):
            nibabel.save(image, tmp)
    write_atomically(path, write, overwrite)
