"""The error, formats, checks and atomic writes of every file tconv3d reads or writes.

The volume files of :mod:`tconv3d.io`, the kernel files of :mod:`tconv3d.kernel_file` and
the ``tconv3d`` command's pictures go through these functions (:mod:`tconv3d.io` re-exports
them: ``from tconv3d.io import FileError`` works as well).

Every failure -- a missing or unreadable file, an unsupported format, an output that exists
or cannot be created -- is a :class:`FileError` whose message is one line naming the file;
the ``role`` arguments say how the message names it (the ``tconv3d`` command's ``IN``,
``OUT``, ``--out``, ...). A file's format is that of its extension (:data:`FORMATS`). Inputs
and outputs are checked before any work (:func:`check_input`, :func:`check_output`), and
outputs are written to a temporary file next to their path and renamed
(:func:`write_atomically`): an interrupted or failed write leaves no partial file.
"""
import contextlib
import errno
import os
import tempfile

__all__ = [
    "FORMATS",
    "FileError",
    "check_input",
    "check_output",
    "file_format",
    "write_atomically",
]

#: File extension -> format name (the format of a path is that of its extension).
FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".npy": "npy", ".npz": "npz"}


class FileError(Exception):
    """A file that cannot be read, or written, as asked.

    The message is one line naming the file and what is wrong with it, meant for the
    user as it is (the ``tconv3d`` command prints it after ``error:``).

    Examples
    --------
    >>> from tconv3d.files import FileError, check_input
    >>> try:
    ...     check_input("no-such-scan.nii.gz")
    ... except FileError as exc:
    ...     print(exc)
    IN 'no-such-scan.nii.gz' does not exist
    """


def describe_error(exc):
    """``"TypeError: first line of the message"``: an exception, on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def file_format(path, role):
    """Return the format of ``path``, from its extension.

    Parameters
    ----------
    path : str or path-like
        A file name ending in one of the :data:`FORMATS` extensions (any case).
    role : str
        How an error message names the file (``"IN"``, ``"--out"``, ...).

    Returns
    -------
    {"npy", "npz", "nifti"}
        The format of the extension.

    Raises
    ------
    FileError
        If the extension is none of :data:`FORMATS`.

    Examples
    --------
    >>> from tconv3d.files import file_format
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

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from tconv3d.files import check_input
    >>> tmp = tempfile.TemporaryDirectory()
    >>> np.save(os.path.join(tmp.name, "v.npy"), np.zeros((2, 2, 2)))
    >>> check_input(os.path.join(tmp.name, "v.npy"))
    'npy'
    >>> check_input(os.path.join(tmp.name, "v.nii"), role="--in")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    tconv3d.files.FileError: --in '...v.nii' does not exist
    >>> tmp.cleanup()
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

    Examples
    --------
    >>> import os, tempfile
    >>> from tconv3d.files import check_output
    >>> tmp = tempfile.TemporaryDirectory()
    >>> check_output(os.path.join(tmp.name, "up.npy"), overwrite=False)    # may be created
    >>> check_output(os.path.join(tmp.name, "up.png"), False)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    tconv3d.files.FileError: OUT '...up.png': unsupported format (.png); expected .npy, ...
    >>> check_output(os.path.join(tmp.name, "up.png"), overwrite=False, kind=False)
    >>> tmp.cleanup()
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

    Examples
    --------
    >>> import os, tempfile
    >>> from tconv3d.files import write_atomically
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "notes.txt")
    >>> def write(tmp_path):
    ...     with open(tmp_path, "w") as f:
    ...         f.write("hello")
    >>> write_atomically(path, write)
    >>> open(path).read(), sorted(os.listdir(tmp.name))      # no temporary file left
    ('hello', ['notes.txt'])
    >>> tmp.cleanup()
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
