"""NIfTI images: opening one with nibabel, and the header of its upsampled version.

:mod:`tconv3d.io` opens and writes NIfTI files through these functions, as it does .npy
and .npz files; they need nibabel (``pip install 'tconv3d[nifti]'``), imported on first
use. :func:`upsampled_affine` is also :func:`tconv3d.io.upsampled_affine`.

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
import numpy as np

from .files import FileError

__all__ = ["open_image", "upsampled_affine", "upsampled_image"]

#: How to install nibabel, for messages.
NIFTI_HINT = "pip install 'tconv3d[nifti]'"


def require_nibabel(path):
    """The ``nibabel`` module; :class:`~tconv3d.files.FileError` naming the NIfTI ``path``
    if it is not installed."""
    try:
        import nibabel
    except ImportError:
        raise FileError(f"{str(path)!r} is a NIfTI file, which needs nibabel (not "
                        f"installed): {NIFTI_HINT}") from None
    return nibabel


def open_image(path):
    """Open the NIfTI-1 or NIfTI-2 image ``path`` without reading its data.

    Parameters
    ----------
    path : str or path-like
        A .nii or .nii.gz file.

    Returns
    -------
    image : nibabel.Nifti1Image or nibabel.Nifti2Image
        Its ``dataobj`` reads the data on demand, scaled by the header's slope and
        intercept.
    zooms : tuple of 3 floats
        The voxel sizes of the three spatial axes (1.0 for missing axes).
    units : str
        Their unit (``"mm"``, ...), ``""`` if unknown.

    Raises
    ------
    tconv3d.files.FileError
        If nibabel is not installed, or the file is another kind of image.
    Exception
        Whatever nibabel raises for a file it cannot read (:func:`tconv3d.io.open_volume`
        turns it into a :class:`~tconv3d.files.FileError`).

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel
    >>> import numpy as np
    >>> from tconv3d.nifti import open_image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "t1.nii.gz")
    >>> nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 2), np.int16),
    ...                                  np.diag([2.0, 2.0, 3.0, 1.0])), path)
    >>> image, zooms, units = open_image(path)
    >>> image.shape, zooms, units
    ((4, 4, 2), (2.0, 2.0, 3.0), '')
    >>> tmp.cleanup()
    """
    nibabel = require_nibabel(path)
    image = nibabel.load(path)
    if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise FileError(f"{str(path)!r} is not a NIfTI-1 or NIfTI-2 image "
                        f"({type(image).__name__})")
    header = image.header
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    zooms += (1.0,) * (3 - len(zooms))
    units = header.get_xyzt_units()[0]
    return image, zooms, "" if units == "unknown" else units


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
    >>> from tconv3d.nifti import upsampled_affine
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


def upsampled_image(image, data, factor, scaling=(None, None)):
    """The NIfTI image of ``data``, ``image`` upsampled by ``factor``: header kept consistent.

    Parameters
    ----------
    image : nibabel.Nifti1Image, nibabel.Nifti2Image or None
        The input image. Its header is kept, with each of the sform and qform upsampled
        (:func:`upsampled_affine`) and keeping its code, the voxel sizes divided by
        ``factor``, and the slice timing fields cleared when the slice axis (all axes if
        unknown) is resampled. ``None`` (an array input) gives a NIfTI-1 image in index
        coordinates: voxels of size 1 before upsampling, units unknown.
    data : ndarray
        The upsampled volume(s), spatial axes first, in the dtype to store.
    factor : sequence of 3 ints
        The upsampling factor per spatial axis.
    scaling : (slope, inter), default=(None, None)
        The header's scaling: physical values are ``slope * data + inter``
        (:func:`tconv3d.io.encode_integers`); ``(None, None)`` stores none.

    Returns
    -------
    nibabel.Nifti1Image or nibabel.Nifti2Image
        The image to save, of ``image``'s type.

    Raises
    ------
    ImportError
        If ``image`` is ``None`` and nibabel is not installed.

    Examples
    --------
    >>> import nibabel
    >>> import numpy as np
    >>> from tconv3d.nifti import upsampled_image
    >>> image = nibabel.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.diag([2, 2, 3, 1]))
    >>> up = upsampled_image(image, np.zeros((8, 8, 2), np.float32), (2, 2, 1))
    >>> [float(z) for z in up.header.get_zooms()], up.affine[:3, 3]
    ([1.0, 1.0, 3.0], array([-0.5, -0.5,  0. ]))
    """
    if image is None:  # from .npy/.npz: index coordinates, voxel size 1
        import nibabel
        out = nibabel.Nifti1Image(data, upsampled_affine(np.eye(4), factor))
        out.header.set_xyzt_units("unknown")
        out.header.set_slope_inter(*scaling)
        out.set_qform(out.affine, code=1)
        return out
    old = image.header
    header = old.copy()
    header.set_data_dtype(data.dtype)
    out = type(image)(data, upsampled_affine(image.affine, factor), header=header)
    header = out.header
    # The constructor sets both forms to the affine with codes of its choosing: give each
    # form back its code, and its own upsampled input form (they may differ).
    out.set_sform(upsampled_affine(old.get_sform(), factor), code=int(old["sform_code"]))
    out.set_qform(upsampled_affine(old.get_qform(), factor), code=int(old["qform_code"]))
    zooms = list(old.get_zooms())
    zooms[:3] = [z / f for z, f in zip(zooms[:3], factor)]
    header.set_zooms(zooms)
    header.set_slope_inter(*scaling)
    slice_axis = old.get_dim_info()[2]
    resliced = any(f != 1 for f in factor) if slice_axis is None else factor[slice_axis] != 1
    if resliced:  # the slice-timing fields count slices that no longer exist
        for k in ("slice_start", "slice_end", "slice_code", "slice_duration"):
            header[k] = 0
    return out
