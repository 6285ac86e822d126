"""``tconv3d show IN``: a PNG of the three orthogonal middle slices of a volume."""
import os

import numpy as np

from ..files import check_input, check_output, format_suffix, write_atomically
from ..io import open_volume
from ._common import (EXIT_OK, PLOT_HINT, CommandError, canonical_volume, import_matplotlib,
                      intensity_window, picture_format, shape_text, size_text)


def add_parser(commands):
    """Add the ``show`` command to the subparsers ``commands``."""
    show = commands.add_parser(
        "show", help="PNG of the three orthogonal middle slices of a volume",
        description="Write a PNG montage of the three orthogonal middle slices of IN (needs "
                    f"matplotlib: {PLOT_HINT}). NIfTI volumes are shown in RAS orientation "
                    "(nibabel's closest canonical) with their voxel sizes; arrays by index "
                    "axes. Intensities are windowed to the 1st-99.5th percentiles.")
    show.add_argument("input", metavar="IN", help="volume to show (.npy, .npz, .nii, .nii.gz)")
    show.add_argument("--out", default=None,
                      help="picture to write, in the format of its extension (.png, .pdf, "
                           ".svg, .jpg, ...; default: IN's name with _slices.png, in the "
                           "current directory)")
    show.add_argument("--volume", type=int, default=0, metavar="K",
                      help="which volume of a 4-D series (default: 0)")
    show.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    show.set_defaults(run=cmd_show)


def _middle_slices(volume, zooms, names, planes):
    """``[(title, image, aspect, x label, y label)]`` for the three middle planes.

    The plane through the middle of axis ``a`` shows the other two axes ``b < c`` with
    ``b`` horizontal and ``c`` vertical (``image`` is ``(c, b)``, for ``origin="lower"``):
    sagittal y-z, coronal x-z, axial x-y in RAS orientation.
    """
    panels = []
    for axis, plane in enumerate(planes):
        b, c = [a for a in range(3) if a != axis]
        middle = volume.shape[axis] // 2
        image = np.take(volume, middle, axis=axis).T
        coordinate = names[axis].split(" (")[0]    # "x (R)" -> "x"; "axis 0" stays
        panels.append((f"{plane}, {coordinate} = {middle}", image,
                       zooms[c] / zooms[b], names[b], names[c]))
    return panels


def cmd_show(args):
    check_input(args.input)
    out = args.out
    if out is None:
        base = os.path.basename(args.input)
        suffix = format_suffix(base)
        base = base[:-len(suffix)] if suffix else base
        out = f"{base}_slices.png"
    check_output(out, args.overwrite, role="--out", kind=False)
    source = open_volume(args.input)    # a bad input is reported before a missing matplotlib
    if not 0 <= args.volume < source.n_volumes:
        raise CommandError(f"--volume {args.volume} is out of range: {args.input!r} holds "
                           f"{source.n_volumes} volume(s)")
    Figure = import_matplotlib("show")
    picture = picture_format(Figure, out)
    volume, zooms, names, planes = canonical_volume(source, args.volume)
    lo, hi = intensity_window(volume)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (title, image, aspect, xlabel, ylabel) in zip(
            axes, _middle_slices(volume, zooms, names, planes)):
        shown = ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                          aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(shown, ax=list(axes), shrink=0.8)
    series = f", volume {args.volume} of {source.n_volumes}" if source.extra else ""
    fig.suptitle(f"{os.path.basename(args.input)}: {shape_text(source.spatial)} voxels of "
                 f"{size_text(zooms, source.units)}{series}", fontsize=11)
    write_atomically(out, lambda tmp: fig.savefig(tmp, format=picture, dpi=100), args.overwrite,
                     role="--out")
    print(f"{out}: middle slices of {args.input}{series}")
    return EXIT_OK
