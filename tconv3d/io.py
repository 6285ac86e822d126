"""Volume files on disk: .npy, .npz, .nii and .nii.gz in, the same out, written atomically.

>>> from tconv3d.io import open_volume, write_volume
>>> from tconv3d.upsampling import VolumeUpsampler
>>> source = open_volume("t1.nii.gz")                       # doctest: +SKIP
>>> source.spatial, source.zooms, source.n_volumes          # doctest: +SKIP
((256, 256, 176), (1.0, 1.0, 1.0), 1)
>>> x = source.volume(0)[None].astype("float32")            # doctest: +SKIP
>>> up = VolumeUpsampler(factor=2).fit(x).transform(x)[0]   # doctest: +SKIP
>>> write_volume("t1_x2.nii.gz", "nifti", up, source, (2, 2, 2), overwrite=False)  # doctest: +SKIP

The format is chosen by the file extension (:data:`FORMATS`; NIfTI needs nibabel:
``pip install 'tconv3d[nifti]'``). A file is opened without reading its data
(:class:`Source`: a memory map for .npy, nibabel's array proxy for NIfTI) and read one 3-D
volume at a time. Every failure -- a missing or unreadable file, an unsupported format,
data that are not real numbers, an output that exists -- is a :class:`FileError` whose
message is one line naming the file; the ``role`` arguments say how the message names it
(the ``tconv3d`` command's ``IN``, ``OUT``, ``--out``, ...). Outputs are written to a
temporary file next to their path and renamed (:func:`write_atomically`): an interrupted
or failed write leaves no partial file.

Geometry of an upsampled NIfTI image
------------------------------------
``VolumeUpsampler`` follows ``align_corners=False``: along an axis upsampled by ``f``,
output voxel ``j`` sits at input voxel coordinate ``i = (j + 0.5)/f - 0.5``. With the
input's voxel-to-world affine ``(M, t)`` the output's is therefore

    M' = M @ diag(1/f),        t' = t + M @ ((1/f - 1)/2),

so the ``f`` output voxels ``j = i*f, ..., i*f + f - 1`` that replace input voxel ``i``
have their mean index ``i*f + (f - 1)/2`` at ``i``: the block covers the input voxel, and
every voxel keeps its place in the world (see :func:`upsampled_affine`).
"""
import contextlib
import errno
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

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

#: File extension -> format name (the format of a path is that of its extension).
FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".npy": "npy", ".npz": "npz"}
NIFTI_HINT = "pip install 'tconv3d[nifti]'"


class FileError(Exception):
    """A file that cannot be read, or written, as asked.

    The message is one line naming the file and what is wrong with it, meant for the
    user as it is (the ``tconv3d`` command prints it after ``error:``).
    """


def describe_error(exc):
    """``"TypeError: first line of the message"``: an exception, on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --- paths -------------------------------------------------------------------------------

def file_format(path, role):
    """The format of ``path``, from its extension.

    Parameters
    ----------
    path : str or path-like
        A file name ending in one of the :data:`FORMATS` extensions (any case).
    role : str
        How an error message names the file (``"IN"``, ``"--out"``, ...).

    Returns
    -------
    {"npy", "npz", "nifti"}

    Raises
    ------
    FileError
        If the extension is none of :data:`FORMATS`.

    Examples
    --------
    >>> from tconv3d.io import file_format
    >>> file_format("t1.NII.GZ", "IN"), file_format("scan.npy", "IN")
    ('nifti', 'npy')
    """
    lower = str(path).lower()
    for suffix, kind in FORMATS.items():
        if lower.endswith(suffix):
            return kind
    ext = os.path.splitext(lower)[1] or "no extension"
    raise FileError(f"{role} {str(path)!r}: unsupported format ({ext}); expected .npy, .npz, "
                    ".nii or .nii.gz")


def format_suffix(path):
    """The :data:`FORMATS` extension ``path`` ends with, as written there (``".nii.gz"``),
    or ``""`` if it ends with none."""
    lower = str(path).lower()
    return next((s for s in FORMATS if lower.endswith(s)), "")


def require_nibabel(path):
    """The ``nibabel`` module; :class:`FileError` naming the NIfTI ``path`` if it is not
    installed."""
    try:
        import nibabel
    except ImportError:
        raise FileError(f"{str(path)!r} is a NIfTI file, which needs nibabel (not "
                        f"installed): {NIFTI_HINT}") from None
    return nibabel


def check_input(path, role="IN"):
    """Refuse a missing, directory, unreadable or unsupported ``path`` before any work.

    Parameters
    ----------
    path : str or path-like
        The file to read.
    role : str, default="IN"
        How an error message names the file.

    Returns
    -------
    {"npy", "npz", "nifti"}
        The file's format (:func:`file_format`).

    Raises
    ------
    FileError
        If ``path`` cannot be read as a volume file.
    """
    kind = file_format(path, role)
    if not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as exc:   # a symlink loop or a dangling link is not "missing"
            if exc.errno == errno.ELOOP:
                raise FileError(f"{role} {str(path)!r} is a symbolic link loop") from None
        if os.path.islink(path):
            raise FileError(f"{role} {str(path)!r} is a symbolic link to "
                            f"{os.readlink(path)!r}, which does not exist")
        raise FileError(f"{role} {str(path)!r} does not exist")
    if os.path.isdir(path):
        raise FileError(f"{role} {str(path)!r} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise FileError(f"{role} {str(path)!r} is not readable (permission denied)")
    return kind


def check_output(path, overwrite, role="OUT", kind=True):
    """Refuse an output that exists (without ``overwrite``) or cannot be created.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    role : str, default="OUT"
        How an error message names the file.
    kind : bool, default=True
        Also require one of the :data:`FORMATS` extensions (``False`` for a picture).

    Raises
    ------
    FileError
        If ``path`` is a directory, exists without ``overwrite``, has an unsupported
        extension, or its directory is missing or not writable.
    """
    if kind:
        file_format(path, role)
    if os.path.isdir(path):
        raise FileError(f"{role} {str(path)!r} is a directory")
    if os.path.lexists(path) and not overwrite:
        raise FileError(f"{role} {str(path)!r} exists; pass --overwrite to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileError(f"{role} {str(path)!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise FileError(f"{role} {str(path)!r}: directory {directory!r} is not writable")


def write_atomically(path, write, overwrite=True, role="OUT"):
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary file has ``path``'s extension (nibabel picks the format from it) and
    the permissions a new file gets; on any failure (or Ctrl-C) it is removed and
    ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        The file to create or replace.
    write : callable
        ``write(tmp)`` writes the whole file to the path ``tmp``.
    overwrite : bool, default=True
        If ``False``, refuse (:class:`FileError`) a ``path`` that appeared meanwhile.
    role : str, default="OUT"
        How an error message names the file.

    Raises
    ------
    FileError
        If the file cannot be written or renamed (naming ``path``), or ``path`` appeared.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = format_suffix(base) or os.path.splitext(base)[1]
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".part{suffix}", dir=directory)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if not overwrite and os.path.lexists(path):  # appeared while we were working
            raise FileError(f"{role} {path!r} exists; pass --overwrite to replace it")
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(exc, OSError):   # name the file the user gave, not the temporary one
            raise FileError(f"cannot write {role} {path!r}: "
                            f"{exc.strerror or describe_error(exc)}") from None
        raise


# --- reading -----------------------------------------------------------------------------

@dataclass
class Source:
    """A volume file opened for reading, one 3-D volume at a time.

    ``shape`` is the array's full shape, the first three axes spatial; ``n_volumes`` is
    the product of the others; ``volume(k)`` reads the ``k``-th 3-D volume (C order over
    the trailing axes). ``stored_dtype`` is the type on disk (NIfTI scaling aside), which
    decides the default output type. ``key`` and ``compressed`` describe a .npz archive,
    ``image`` is the nibabel image of a NIfTI file (``None`` otherwise), ``zooms`` its voxel
    sizes and ``units`` their unit (``""`` if unknown; arrays have voxels of size 1).
    """
    path: str
    kind: str
    shape: tuple
    stored_dtype: np.dtype
    _array: object = field(repr=False)
    key: str = "arr_0"
    compressed: bool = False
    image: object = field(default=None, repr=False)
    zooms: tuple = (1.0, 1.0, 1.0)
    units: str = ""

    @property
    def spatial(self):
        return tuple(self.shape[:3])

    @property
    def scaling(self):
        """``(slope, intercept)`` taking stored values to physical ones (NIfTI's
        ``scl_slope``/``scl_inter``; ``(1.0, 0.0)`` for arrays and unscaled images)."""
        slope = getattr(self._array, "slope", 1.0)
        inter = getattr(self._array, "inter", 0.0)
        return float(slope), float(inter)

    @property
    def extra(self):
        return tuple(self.shape[3:])

    @property
    def n_volumes(self):
        return int(np.prod(self.extra, dtype=np.int64))

    def volume(self, k):
        """The ``k``-th volume, ``ndarray of shape spatial`` in the file's (scaled) dtype."""
        index = np.unravel_index(k, self.extra) if self.extra else ()
        try:
            data = np.asarray(self._array[(slice(None),) * 3 + tuple(index)])
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

    Raises
    ------
    FileError
        For every failure: missing file, unsupported format, unreadable contents, not
        numbers, fewer than three axes, an empty array.

    Examples
    --------
    >>> import os, tempfile
    >>> from tconv3d.io import open_volume
    >>> tmp = tempfile.TemporaryDirectory()
    >>> np.save(os.path.join(tmp.name, "v.npy"), np.zeros((4, 3, 2, 5), np.int16))
    >>> source = open_volume(os.path.join(tmp.name, "v.npy"))
    >>> source.spatial, source.n_volumes, source.volume(4).dtype
    ((4, 3, 2), 5, dtype('int16'))
    >>> tmp.cleanup()
    """
    kind = check_input(path, role)
    nibabel = require_nibabel(path) if kind == "nifti" else None
    try:
        source = _open(path, kind, nibabel)
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


def _open(path, kind, nibabel):
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
    image = nibabel.load(path)
    if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise FileError(f"{path!r} is not a NIfTI-1 or NIfTI-2 image "
                        f"({type(image).__name__})")
    header = image.header
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    zooms += (1.0,) * (3 - len(zooms))
    units = header.get_xyzt_units()[0]
    return Source(path, kind, image.shape, np.dtype(image.get_data_dtype()), image.dataobj,
                  image=image, zooms=zooms, units="" if units == "unknown" else units)


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


# --- NIfTI geometry ----------------------------------------------------------------------

def upsampled_affine(affine, factor):
    """Voxel-to-world affine of a volume upsampled by ``factor`` (``align_corners=False``).

    Parameters
    ----------
    affine : array-like of shape (4, 4)
        The input's voxel-to-world affine ``[[M, t], [0, 1]]``.
    factor : sequence of 3 ints
        Upsampling factor per voxel axis.

    Returns
    -------
    ndarray of shape (4, 4), dtype=float64
        ``[[M @ diag(1/f), t + M @ ((1/f - 1)/2)], [0, 1]]``: output voxel ``j`` is input
        voxel coordinate ``(j + 0.5)/f - 0.5``, so the block of ``f`` output voxels
        replacing input voxel ``i`` is centred on it (module docstring).

    Examples
    --------
    Voxels of 2 mm upsampled by 2: voxels of 1 mm, and the origin (the centre of voxel 0)
    moves half a new voxel back, to the centre of the first new voxel:

    >>> import numpy as np
    >>> from tconv3d.io import upsampled_affine
    >>> upsampled_affine(np.diag([2.0, 2.0, 2.0, 1.0]), (2, 2, 2))
    array([[ 1. ,  0. ,  0. , -0.5],
           [ 0. ,  1. ,  0. , -0.5],
           [ 0. ,  0. ,  1. , -0.5],
           [ 0. ,  0. ,  0. ,  1. ]])
    """
    affine = np.array(affine, dtype=np.float64)
    inverse = 1.0 / np.asarray(factor, dtype=np.float64)
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * inverse
    out[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((inverse - 1.0) / 2.0)
    return out


def _nifti_image(nibabel, source, data, factor, scaling):
    """The upsampled NIfTI image: data, affine, zooms and header kept consistent."""
    if source.image is None:  # from .npy/.npz: index coordinates, voxel size 1
        image = nibabel.Nifti1Image(data, upsampled_affine(np.eye(4), factor))
        image.header.set_xyzt_units("unknown")
        image.header.set_slope_inter(*scaling)
        image.set_qform(image.affine, code=1)
        return image
    old = source.image.header
    affine = upsampled_affine(source.image.affine, factor)
    header = old.copy()
    header.set_data_dtype(data.dtype)
    image = type(source.image)(data, affine, header=header)
    header = image.header
    # The constructor sets both forms to `affine` with codes of its choosing: give each form
    # back its code, and its own upsampled input form (they may differ).
    image.set_sform(upsampled_affine(old.get_sform(), factor), code=int(old["sform_code"]))
    image.set_qform(upsampled_affine(old.get_qform(), factor), code=int(old["qform_code"]))
    zooms = list(old.get_zooms())
    zooms[:3] = [z / f for z, f in zip(zooms[:3], factor)]
    header.set_zooms(zooms)
    header.set_slope_inter(*scaling)
    slice_axis = old.get_dim_info()[2]
    resliced = any(f != 1 for f in factor) if slice_axis is None else factor[slice_axis] != 1
    if resliced:  # the slice-timing fields count slices that no longer exist
        for k in ("slice_start", "slice_end", "slice_code", "slice_duration"):
            header[k] = 0
    return image


# --- writing -----------------------------------------------------------------------------

def encode_integers(values, dtype, *, grid=None, can_scale=False, clip=False, role="OUT"):
    """Store physical ``values`` as integers of ``dtype``: ``values ~ slope * q + inter``.

    Parameters
    ----------
    values : ndarray of floats
        The values to store.
    dtype : integer dtype
        The storage type.
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

    Returns
    -------
    q : ndarray of ``dtype``
    scaling : (float, float)
        ``(slope, inter)``; NIfTI stores them as float32, so they are float32 values.
    n_clipped : int

    Raises
    ------
    FileError
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
        Its format (:func:`file_format`).
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
    FileError
        If ``path`` exists without ``overwrite``, cannot be written, or needs nibabel.
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
        image = _nifti_image(nibabel, source, data, factor, scaling)

        def write(tmp):
            nibabel.save(image, tmp)
    write_atomically(path, write, overwrite)
