"""What several ``tconv3d`` commands share: exit codes, errors, argument types, the text of
numbers, volume checks and views, and the degradation and score of the demo and ``fit``."""
import argparse
import os
import textwrap

import numpy as np

from ..kernel_file import FORMAT, VERSION

PROG = "tconv3d"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
PLOT_HINT = "pip install 'tconv3d[plot]'"

KERNEL_FILE_HELP = f"""\
kernel files (.npz), written by `tconv3d fit` or by hand with numpy.savez:
  kernel   float array (kd, kh, kw), required: the taps applied to every volume, aligned
           as the trilinear kernel of the same size (its centre tap on the output voxel
           whose centre is the input voxel's centre); see tconv3d.upsampling
  factor   3 ints (or 1), optional: the upsampling factor the kernel was made for;
           `upsample` uses it when --factor is not given and refuses a different one
  bias     float, optional (default 0): added to every output voxel, in the units of
           the volume's values
  relative_bias
           float, optional (default 0): added to every output voxel times the volume's
           robust scale (99th percentile of |values|), so that the kernel does not depend
           on intensity units; `fit` learns this one
  format, version   "{FORMAT}" and {VERSION}: written by `fit`, not required

The upsampled volume is conv_transpose(volume, kernel, stride=factor) + bias +
relative_bias * scale over an edge-replicated border, i.e.
VolumeUpsampler(factor, kernel=kernel).transform(x) + bias + relative_bias * scale.
"""


class CommandError(Exception):
    """A failure to report to the user as one line, without a traceback."""


# --- argument parsing ---------------------------------------------------------------------

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps paragraphs of descriptions and epilogs; keeps indented blocks as written."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if paragraph.startswith(" ") or "\n " in paragraph:
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width,
                                                initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs) + "\n"


def parse_factor(text):
    """``"2"`` -> (2, 2, 2); ``"2,2,1"`` or ``"2x2x1"`` -> (2, 2, 1); ints >= 1."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 1 or three of them as 2,2,1, got {text!r}")
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def parse_positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def import_matplotlib(what):
    """matplotlib's ``Figure``; :class:`CommandError` saying ``what`` needs it if it is not
    installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError(f"{what} needs matplotlib (not installed): {PLOT_HINT}") from None
    return Figure


def picture_format(Figure, path, role="--out"):
    """The picture format matplotlib writes for ``path``'s extension (png, pdf, svg, jpg,
    ...); :class:`CommandError` for an extension it cannot write."""
    supported = Figure().canvas.get_supported_filetypes()
    extension = os.path.splitext(os.fspath(path))[1][1:].lower()
    if extension not in supported:
        raise CommandError(f"{role} {str(path)!r}: matplotlib cannot write "
                           f"{'.' + extension if extension else 'files without an extension'}"
                           f"; use one of {', '.join('.' + e for e in sorted(supported))}")
    return extension


# --- text ----------------------------------------------------------------------------------

def size_text(zooms, units):
    """``"1 x 1 x 1.2 mm"``: voxel sizes and their unit."""
    text = " x ".join(f"{z:.4g}" for z in zooms)
    return f"{text} {units}" if units else text


def shape_text(shape):
    """``"7x11x13"``."""
    return "x".join(str(n) for n in shape)


def factor_text(factor):
    """``2`` for (2, 2, 2), ``2x2x1`` otherwise."""
    return str(factor[0]) if len(set(factor)) == 1 else shape_text(factor)


# --- volumes -------------------------------------------------------------------------------

def require_finite(volume, path):
    """``volume``, or :class:`CommandError` if it holds NaN or infinite values."""
    if not np.isfinite(volume).all():
        bad = volume.size - int(np.isfinite(volume).sum())
        raise CommandError(f"{path!r} holds {bad} NaN or infinite values; upsampling needs "
                           "finite numbers (replace them first, e.g. with numpy.nan_to_num)")
    return volume


def canonical_volume(source, k):
    """Volume ``k`` of the :class:`tconv3d.io.Source` as float, reoriented to RAS for NIfTI;
    its zooms, axis and plane names."""
    volume = np.asarray(source.volume(k), np.float64)
    if source.image is None:
        return volume, source.zooms, ("axis 0", "axis 1", "axis 2"), ("slice",) * 3
    from nibabel.orientations import apply_orientation, io_orientation
    ornt = io_orientation(source.image.affine)
    volume = apply_orientation(volume, ornt)
    zooms = [0.0] * 3
    for axis, (target, _) in enumerate(ornt):
        zooms[int(target)] = source.zooms[axis]
    return volume, tuple(zooms), ("x (R)", "y (A)", "z (S)"), ("sagittal", "coronal", "axial")


def intensity_window(volume):
    """``(lo, hi)`` grey levels to show: the 1st and 99.5th percentiles of the finite
    values."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99.5])
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


# --- degradation and score (fit, demo) -------------------------------------------------------

def block_average(volumes, factor):
    """``(n, d, h, w)`` volumes -> ``(n, d//fd, h//fh, w//fw)`` block means (float64).

    Lengths that are not multiples of the factor are cropped at the end first.
    """
    n = volumes.shape[0]
    (fd, fh, fw) = factor
    d, h, w = (s // f for s, f in zip(volumes.shape[1:], factor))
    v = np.asarray(volumes[:, :d * fd, :h * fh, :w * fw], dtype=np.float64)
    return v.reshape(n, d, fd, h, fh, w, fw).mean(axis=(2, 4, 6))


def crop_to_multiple(volumes, factor):
    """Crop the end of each spatial axis of ``(n, d, h, w)`` to a multiple of ``factor``."""
    return volumes[(slice(None),) + tuple(slice(0, s - s % f)
                                          for s, f in zip(volumes.shape[1:], factor))]


def psnr(reference, estimate):
    """Peak signal-to-noise ratio in dB, the peak being the reference's range."""
    reference = np.asarray(reference, np.float64)
    mse = np.mean((reference - np.asarray(estimate, np.float64)) ** 2)
    peak = np.ptp(reference)
    return float("inf") if mse == 0 else float(20 * np.log10(peak / np.sqrt(mse)))
