"""The ``tconv3d`` command: upsample volumes on disk, look at them, fit kernels, benchmark.

Run ``tconv3d --help`` (or ``python -m tconv3d --help``) for the commands, and
``tconv3d COMMAND --help`` for each one's options. Every command is a function of the
parsed arguments that returns an exit status or raises an error meant for the user
(:class:`tconv3d.files.FileError`, or ``CommandError``); :func:`main` turns errors into one
line on stderr, so a user never sees a traceback.

The command is a thin layer over the library: volume files live in :mod:`tconv3d.io`
(checks of paths and atomic writes in :mod:`tconv3d.files`, NIfTI geometry in
:mod:`tconv3d.nifti`), kernel files in :mod:`tconv3d.kernel_file`, the upsampling in
:mod:`tconv3d.upsampling`. Here, ``_main`` builds the parser and maps errors to exit
codes; each command has its module (``upsample``, ``show``, ``fit``, ``demo``, ``bench``)
with its arguments (``add_parser``) and its work (``cmd_<name>``); ``_common`` holds what
several commands share.
"""
from ._main import main

__all__ = ["main"]
