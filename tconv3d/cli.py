"""The ``tconv3d`` command: upsample volumes on disk, look at them, fit kernels, benchmark.

Run ``tconv3d --help`` (or ``python -m tconv3d --help``) for the commands, and
``tconv3d COMMAND --help`` for each one's options. Every command is a function of the
parsed arguments that returns an exit status or raises :class:`CommandError`; :func:`main`
turns errors into one line on stderr, so a user never sees a traceback.

"""
import argparse
import contextlib
import os
import signal
import sys
import textwrap
import threading
import time
import warnings

import numpy as np

from ._version import __version__
from .io import NIFTI_HINT, FileError, check_input, check_output, file_format
from .io import describe_error as _reason
from .io import format_suffix, open_volume, upsampled_affine, write_atomically, write_volume
from .io import require_nibabel as _import_nibabel
from .kernel_file import (FORMAT, VERSION, KernelFile, fit_kernel_file, load_kernel,
                          save_kernel, upsample_volumes)

__all__ = ["KernelFile", "load_kernel", "main", "save_kernel", "upsampled_affine"]

PROG = "tconv3d"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
FIXED_KERNELS = ("trilinear", "nearest")
OUTPUT_DTYPES = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
                 "uint32", "int64", "uint64")
DEMO_PNG = "tconv3d_demo.png"
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


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so that temporary files are removed."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- argument parsing ---------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``tconv3d upsample: error: ... (see --help)``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
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


def _factor(text):
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


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _threads(text):
    from ._validation import MAX_NUM_THREADS
    value = _positive_int(text)
    if value > MAX_NUM_THREADS:
        raise argparse.ArgumentTypeError(
            f"expected an integer between 1 and {MAX_NUM_THREADS}, got {text!r}")
    return value


def _kernel_choice(text):
    if text in FIXED_KERNELS or text.lower().endswith(".npz"):
        return text
    hint = " (learn one with `tconv3d fit`)" if text == "learned" else ""
    raise argparse.ArgumentTypeError(
        f"expected trilinear, nearest or a kernel file ending in .npz{hint}, got {text!r}")


def build_parser():
    """The ``tconv3d`` argument parser and its subcommands."""
    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Fast CPU 3-D upsampling of volumes on disk (.npy, .npz, .nii, .nii.gz) "
                    "with tconv3d's compiled transposed convolution.",
        epilog="examples:\n"
               "  tconv3d demo                                   # real MRI, PSNR, picture\n"
               "  tconv3d upsample t1.nii.gz t1_x2.nii.gz --factor 2\n"
               "  tconv3d upsample vol.npy vol_x3.npy --factor 3 --kernel nearest\n"
               "  tconv3d fit hires/*.nii.gz --out k.npz && "
               "tconv3d upsample lo.nii lo_x2.nii --kernel k.npz\n"
               "  tconv3d show t1_x2.nii.gz --out slices.png\n"
               "  tconv3d bench --cases unet_up --threads 2\n\n"
               "exit status: 0 success, 1 error (one line on stderr), 2 bad command line, "
               "130 interrupted, 143 terminated.\n\nTCONV3D_DEBUG=1 shows the traceback of an "
               "unexpected error.")
    parser.add_argument("--version", action="version", version=f"tconv3d {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_Parser)

    up = commands.add_parser(
        "upsample", help="upsample a volume file by an integer factor",
        formatter_class=_Formatter,
        description="Upsample IN by an integer factor and write OUT. Formats, chosen by the "
                    "file extension: .npy, .npz (one array), .nii and .nii.gz (needs "
                    f"nibabel: {NIFTI_HINT}); IN and OUT may differ in format. The first three "
                    "axes are space; a 4-D (or higher) input is a series of volumes, each "
                    "upsampled (with a progress bar on stderr).\n\n"
                    "NIfTI: the affine is updated so every voxel keeps its world position "
                    "(align_corners=False): voxel size / factor, origin moved by "
                    "affine[:3, :3] @ ((1/factor - 1)/2); qform/sform codes, units and the "
                    "time step are kept, slice-timing fields are cleared when the slice axis "
                    "is upsampled.\n\n"
                    "OUT is written to a temporary file in its directory, then renamed: an "
                    "interrupted run leaves no partial file.",
        epilog=KERNEL_FILE_HELP)
    up.add_argument("input", metavar="IN", help="volume to upsample")
    up.add_argument("output", metavar="OUT", help="file to write")
    up.add_argument("--factor", type=_factor, default=None,
                    help="integer factor, or three as 2,2,1 (default: 2, or the kernel "
                         "file's)")
    up.add_argument("--kernel", type=_kernel_choice, default="trilinear",
                    help="trilinear (default; PyTorch's align_corners=False numbers), "
                         "nearest (np.repeat), or a .npz kernel file (see below)")
    up.add_argument("--threads", type=_threads, default=None, metavar="N",
                    help="threads of the compiled core (default: OpenMP's default)")
    up.add_argument("--dtype", choices=("input",) + OUTPUT_DTYPES, default=None,
                    metavar="TYPE",
                    help="data type of OUT: input (IN's), float32, float64, int8, uint8, "
                         "int16, uint16, int32, uint32, int64 or uint64; integer types round "
                         "to nearest and clip to the type's range (default: float64 for "
                         "float64 input, float32 otherwise, integer input included)")
    up.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    up.add_argument("-q", "--quiet", action="store_true",
                    help="no progress bar and no summary line")
    up.set_defaults(run=cmd_upsample)

    show = commands.add_parser(
        "show", help="PNG of the three orthogonal middle slices of a volume",
        description="Write a PNG montage of the three orthogonal middle slices of IN (needs "
                    f"matplotlib: {PLOT_HINT}). NIfTI volumes are shown in RAS orientation "
                    "(nibabel's closest canonical) with their voxel sizes; arrays by index "
                    "axes. Intensities are windowed to the 1st-99.5th percentiles.")
    show.add_argument("input", metavar="IN", help="volume to show (.npy, .npz, .nii, .nii.gz)")
    show.add_argument("--out", default=None,
                      help="PNG to write (default: IN's name with _slices.png, in the "
                           "current directory)")
    show.add_argument("--volume", type=int, default=0, metavar="K",
                      help="which volume of a 4-D series (default: 0)")
    show.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    show.set_defaults(run=cmd_show)

    fit = commands.add_parser(
        "fit", help="learn an upsampling kernel from high-resolution volumes",
        formatter_class=_Formatter,
        description="Learn a kernel for `tconv3d upsample --kernel KERNEL.npz`. Each HIGH "
                    "volume (every volume of a 4-D series) is cropped to a multiple of the "
                    "factor and degraded by block averaging (what voxels `factor` times "
                    "larger would record); the kernel and bias minimising the mean squared "
                    "error between the upsampled degraded volumes and the originals are "
                    "found by L-BFGS, starting from trilinear, with each pair divided by the "
                    "robust scale of its degraded volume (so the kernel carries over between "
                    "intensity units; the bias is saved as relative_bias). Volumes of "
                    "different shapes "
                    "are centre-cropped to the smallest. Fit on scans like the ones you will "
                    "upsample (same contrast and intensity units), then score on others.",
        epilog=KERNEL_FILE_HELP)
    fit.add_argument("inputs", metavar="HIGH", nargs="+",
                     help="high-resolution training volumes")
    fit.add_argument("--out", required=True, metavar="KERNEL.npz", help="kernel file to write")
    fit.add_argument("--factor", type=_factor, default=(2, 2, 2),
                     help="integer factor, or three as 2,2,1 (default: 2)")
    fit.add_argument("--kernel-size", type=_factor, default=None, metavar="K",
                     help="taps per axis (default: 3 x factor: the trilinear support plus "
                          "one low-resolution voxel on each side)")
    fit.add_argument("--max-iter", type=_positive_int, default=200,
                     help="L-BFGS iterations at most (default: 200)")
    fit.add_argument("--threads", type=_threads, default=None, metavar="N",
                     help="threads of the compiled core (default: OpenMP's default)")
    fit.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    fit.set_defaults(run=cmd_fit)

    demo = commands.add_parser(
        "demo", help="degrade a real MRI by 2, upsample it back, PSNR and picture",
        description="With nothing else given: take a real T1 MRI from nibabel's test data "
                    "(anatomical.nii; a synthetic phantom if nibabel is not installed, or "
                    "with --phantom), degrade it by block averaging, upsample it back with "
                    "the nearest, trilinear and learned kernels, print the time and the PSNR "
                    "of each against the original, and write a comparison PNG (replaced if "
                    "it exists; needs matplotlib). The learned kernel is fitted on other data "
                    "than the scored volume: nibabel's EPI scan example4d.nii.gz (or another "
                    "phantom), intensities divided by a robust scale of each scan.")
    demo.add_argument("input", metavar="IN", nargs="?", default=None,
                      help="score this volume instead (first volume of a series)")
    demo.add_argument("--out", default=DEMO_PNG, help="comparison PNG (default: %(default)s)")
    demo.add_argument("--factor", type=_positive_int, default=2,
                      help="degradation and upsampling factor (default: 2)")
    demo.add_argument("--phantom", action="store_true",
                      help="use the synthetic phantoms even if nibabel is installed")
    demo.add_argument("--max-iter", type=_positive_int, default=200,
                      help="L-BFGS iterations of the learned fit at most (default: 200; "
                           "it converges in about 100)")
    demo.add_argument("--threads", type=_threads, default=None, metavar="N",
                      help="threads of the compiled core (default: OpenMP's default)")
    demo.set_defaults(run=cmd_demo)

    commands.add_parser(
        "bench", add_help=False, help="benchmark suite against PyTorch/TensorFlow "
                                      "(`tconv3d bench --help`: its options)")
    return parser


# --- files -------------------------------------------------------------------------------

def _import_matplotlib(what):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError(f"{what} needs matplotlib (not installed): {PLOT_HINT}") from None
    return Figure


# --- numbers -----------------------------------------------------------------------------

def _work_dtype(*dtypes):
    """float64 if any of ``dtypes`` is float64, else float32."""
    return np.float64 if any(np.dtype(d) == np.float64 for d in dtypes) else np.float32


def _cast(values, dtype):
    """``values`` as ``dtype``: integers rounded to nearest and clipped to the range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


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


def _format_size(zooms, units):
    text = " x ".join(f"{z:.4g}" for z in zooms)
    return f"{text} {units}" if units else text


def _shape(shape):
    return "x".join(str(n) for n in shape)


def _factor_text(factor):
    """``2`` for (2, 2, 2), ``2x2x1`` otherwise."""
    return str(factor[0]) if len(set(factor)) == 1 else _shape(factor)


class Progress:
    """A text progress bar on ``stream``: redrawn in place on a terminal, else written once
    when done (no carriage returns in logs)."""

    def __init__(self, total, label, stream=None, width=30):
        self.total, self.label, self.width = total, label, width
        self.stream = sys.stderr if stream is None else stream
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()

    def _line(self, done):
        filled = self.width * done // self.total
        elapsed = time.perf_counter() - self.start
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{done}/{self.total} volumes, {elapsed:.1f} s")

    def update(self, done):
        if self.live:
            self.stream.write("\r" + self._line(done))
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif done == self.total:
            self.stream.write(self._line(done) + "\n")
            self.stream.flush()


# --- commands ----------------------------------------------------------------------------

def _kernel_spec(kernel_arg, factor_arg):
    """``(KernelFile, kernel for VolumeUpsampler, factor, description)`` for the
    ``--kernel`` and ``--factor`` arguments."""
    if kernel_arg in FIXED_KERNELS:
        factor = factor_arg or (2, 2, 2)
        return KernelFile(None, factor), kernel_arg, factor, kernel_arg
    spec = load_kernel(kernel_arg)
    if factor_arg is not None and spec.factor is not None and factor_arg != spec.factor:
        raise CommandError(f"--factor {_shape(factor_arg)} differs from the factor "
                           f"{_shape(spec.factor)} the kernel file {kernel_arg!r} was made "
                           "for")
    factor = factor_arg or spec.factor or (2, 2, 2)
    name = f"kernel {os.path.basename(kernel_arg)} ({_shape(spec.kernel.shape)})"
    return spec, spec.kernel, factor, name


def _fitted_upsampler(kernel, factor, threads):
    from .upsampling import VolumeUpsampler
    upsampler = VolumeUpsampler(factor=factor, kernel=kernel, num_threads=threads)
    return upsampler.fit(np.zeros((1, 1, 1, 1)))  # sets the kernel; no data needed


def _finite(volume, path):
    if not np.isfinite(volume).all():
        bad = volume.size - int(np.isfinite(volume).sum())
        raise CommandError(f"{path!r} holds {bad} NaN or infinite values; upsampling needs "
                           "finite numbers (replace them first, e.g. with numpy.nan_to_num)")
    return volume


def cmd_upsample(args):
    from ._validation import check_allocation
    kind_out = file_format(args.output, "OUT")
    check_input(args.input)
    check_output(args.output, args.overwrite)
    if kind_out == "nifti":
        _import_nibabel(args.output)
    spec, kernel, factor, name = _kernel_spec(args.kernel, args.factor)
    source = open_volume(args.input)
    stored = source.stored_dtype
    if args.dtype == "input":
        out_dtype = np.dtype(np.uint8) if stored.kind == "b" else stored
    elif args.dtype is not None:
        out_dtype = np.dtype(args.dtype)
    else:
        out_dtype = np.dtype(np.float64 if stored == np.float64 else np.float32)
    work = _work_dtype(stored, out_dtype)
    out_spatial = tuple(n * f for n, f in zip(source.spatial, factor))
    out_shape = out_spatial + source.extra
    check_allocation(out_shape, out_dtype, "OUT")
    upsampler = _fitted_upsampler(kernel, factor, args.threads)

    start = time.perf_counter()
    compute = 0.0
    series = source.n_volumes > 1
    progress = Progress(source.n_volumes, "upsampling") if series and not args.quiet else None
    out = np.empty(out_spatial + (source.n_volumes,), out_dtype) if series else None
    for k in range(source.n_volumes):
        volume = _finite(np.asarray(source.volume(k), dtype=work), args.input)
        tic = time.perf_counter()
        up = _cast(upsample_volumes(upsampler, spec, volume[np.newaxis])[0], out_dtype)
        compute += time.perf_counter() - tic
        if not series:  # one volume: no second output-sized buffer
            out = up
            break
        out[..., k] = up
        if progress:
            progress.update(k + 1)
    out = out.reshape(out_shape)
    write_volume(args.output, kind_out, out, source, factor, args.overwrite)
    elapsed = time.perf_counter() - start
    if not args.quiet:
        zooms = _format_size(source.zooms, source.units)
        new_zooms = _format_size([z / f for z, f in zip(source.zooms, factor)], source.units)
        volumes = f" x {source.n_volumes} volumes" if source.extra else ""
        print(f"{args.input} {_shape(source.spatial)}{volumes} {stored} -> {args.output} "
              f"{_shape(out_spatial)} {out_dtype}; voxel {zooms} -> {new_zooms}; {name} "
              f"x{_factor_text(factor)}; {elapsed:.2f} s (upsampling {compute:.2f} s)")
    return EXIT_OK


def _canonical(source, k):
    """Volume ``k`` as float, reoriented to RAS for NIfTI; its zooms, axis and plane names."""
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


def _window(volume):
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99.5])
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


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
        panels.append((f"{plane}, {names[axis].split()[0]} = {middle}", image,
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
    Figure = _import_matplotlib("show")
    source = open_volume(args.input)
    if not 0 <= args.volume < source.n_volumes:
        raise CommandError(f"--volume {args.volume} is out of range: {args.input!r} holds "
                           f"{source.n_volumes} volume(s)")
    volume, zooms, names, planes = _canonical(source, args.volume)
    lo, hi = _window(volume)
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
    fig.suptitle(f"{os.path.basename(args.input)}: {_shape(source.spatial)} voxels of "
                 f"{_format_size(zooms, source.units)}{series}", fontsize=11)
    write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100), args.overwrite,
                     role="--out")
    print(f"{out}: middle slices of {args.input}{series}")
    return EXIT_OK


def _training_volumes(paths, factor):
    """All volumes of ``paths`` as float64 ``(n, d, h, w)``, each cropped to a multiple of
    ``factor`` and all centre-cropped to a common shape; and a note on the cropping."""
    volumes = []
    for path in paths:
        source = open_volume(path, role="HIGH")
        for k in range(source.n_volumes):
            v = np.asarray(source.volume(k), np.float64)
            if not np.isfinite(v).all():
                raise CommandError(f"{path!r} holds NaN or infinite values; fitting needs "
                                   "finite numbers")
            volumes.append(crop_to_multiple(v[None], factor)[0])
    common = tuple(min(v.shape[a] for v in volumes) for a in range(3))
    if min(common) < 1:
        raise CommandError(f"the training volumes are smaller than the factor "
                           f"{_shape(factor)} along some axis")
    cropped = []
    for v in volumes:
        starts = [((n - c) // 2) // f * f for n, c, f in zip(v.shape, common, factor)]
        cropped.append(v[tuple(slice(s, s + c) for s, c in zip(starts, common))])
    different = any(v.shape != common for v in volumes)
    return np.stack(cropped), different


def cmd_fit(args):
    from .upsampling import VolumeUpsampler
    for path in args.inputs:
        check_input(path, role="HIGH")
    if not args.out.lower().endswith(".npz"):
        raise CommandError(f"--out {args.out!r}: a kernel file must end in .npz")
    check_output(args.out, args.overwrite, role="--out")
    factor = args.factor
    size = args.kernel_size or tuple(3 * f for f in factor)
    high, cropped = _training_volumes(args.inputs, factor)
    low = block_average(high, factor)
    start = time.perf_counter()
    spec, learned, converged = fit_kernel_file(low, high, factor, size, args.max_iter,
                                               args.threads)
    elapsed = time.perf_counter() - start
    up = VolumeUpsampler(factor=factor, kernel=spec.kernel, num_threads=args.threads).fit(low)
    trilinear = VolumeUpsampler(factor=factor, num_threads=args.threads).fit(low)
    gain = psnr(high, upsample_volumes(up, spec, low)) - psnr(high, trilinear.transform(low))
    save_kernel(args.out, spec, args.overwrite)
    note = "" if converged else f" (stopped at --max-iter {args.max_iter})"
    shape = f"centre-cropped to a common {_shape(high.shape[1:])}" if cropped else \
        _shape(high.shape[1:])
    print(f"{args.out}: {_shape(size)} kernel for factor {_factor_text(factor)}, fitted on "
          f"{len(high)} volume(s) ({shape}); {learned.n_iter_} L-BFGS iterations{note}, "
          f"{elapsed:.2f} s; training PSNR {gain:+.2f} dB over trilinear")
    return EXIT_OK


# --- demo --------------------------------------------------------------------------------

def phantom(shape, seed):
    """A synthetic head-like volume of ``shape``, values in [0, 1]: scalp, skull, grey
    and white matter with a smooth texture, ventricles and a few small bright lesions;
    ``seed`` moves and resizes everything."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")

    def ellipsoid(centre, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1

    scale = 1 + 0.05 * rng.standard_normal(3)
    head = 0.92 * scale
    out = np.zeros(shape)
    out[ellipsoid((0, 0, 0), head)] = 0.35                      # scalp
    out[ellipsoid((0, 0, 0), head * 0.93)] = 0.9                # skull (bright, thin)
    out[ellipsoid((0, 0, 0), head * 0.86)] = 0.45               # grey matter
    wobble = sum(0.04 * np.sin(rng.uniform(3, 7) * g + rng.uniform(0, 6)) for g in grids)
    white = sum((g / r) ** 2 for g, r in zip(grids, head * 0.68)) <= 1 + wobble
    out[white] = 0.7
    for side in (-1, 1):                                        # ventricles
        centre = (0.13 * side + 0.03 * rng.standard_normal(), rng.uniform(-0.1, 0.1), 0.05)
        out[ellipsoid(centre, (0.08, 0.3, 0.18) * (1 + 0.1 * rng.standard_normal(3)))] = 0.15
    for _ in range(5):                                          # lesions
        centre = (*rng.uniform(-0.45, 0.45, 2), rng.uniform(-0.2, 0.2))
        out[ellipsoid(centre, rng.uniform(0.04, 0.09, 3))] = 1.0
    texture = sum(np.cos(rng.uniform(8, 16) * g + rng.uniform(0, 6)) for g in grids)
    out += 0.03 * texture * (out > 0)
    return np.clip(out, 0, 1)


def nibabel_data_file(nibabel, name):
    """Path of one of the example scans installed with nibabel (``nibabel/tests/data``).

    Found from the package folder: ``nibabel.testing.data_path`` would import pytest,
    which a user's environment need not have.
    """
    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", name)


def _demo_data(args):
    """``(name, scored volume (d, h, w), its voxel sizes and units, training volumes
    (n, d, h, w), training name, notes)``: never trained on the scored file."""
    notes = []
    nibabel = None
    if not args.phantom:
        try:
            import nibabel
        except ImportError:
            notes.append(f"nibabel is not installed: synthetic phantom ({NIFTI_HINT} for "
                         "the real MRI)")
    files = {name: nibabel_data_file(nibabel, name) for name in
             ("anatomical.nii", "example4d.nii.gz")} if nibabel is not None else {}
    real = bool(files) and all(os.path.isfile(f) for f in files.values())
    if nibabel is not None and not real:
        notes.append("nibabel's test data are not installed: synthetic phantom")

    def canonical(name):
        image = nibabel.as_closest_canonical(nibabel.load(files[name]))
        return np.asarray(image.dataobj, np.float64), image.header.get_zooms()[:3]

    def same_file(name):
        return args.input is not None and os.path.samefile(args.input, files[name])

    if real and not same_file("example4d.nii.gz"):
        # a central block of the first EPI volume keeps the fit to a few seconds
        train = canonical("example4d.nii.gz")[0][32:96, 16:80, :, 0][None]
        train_name = "nibabel's EPI scan example4d.nii.gz (64x64x24 block of volume 0)"
    elif real:
        train = canonical("anatomical.nii")[0][None]
        train_name = "nibabel's T1 scan anatomical.nii"
    else:
        train = phantom((48, 48, 40), seed=1)[None]
        train_name = "a different synthetic phantom (48x48x40)"

    if args.input is not None:
        source = open_volume(args.input)
        volume, zooms, _, _ = _canonical(source, 0)
        volume = _finite(volume, args.input)
        name, units = os.path.basename(args.input), source.units
        if source.extra:
            name += f" (volume 0 of {source.n_volumes})"
    elif real:
        (volume, zooms), units = canonical("anatomical.nii"), "mm"
        name = "nibabel's T1 scan anatomical.nii"
    else:
        volume, zooms, units = phantom((48, 56, 40), seed=0), (1.0, 1.0, 1.0), ""
        name = "a synthetic phantom"
    zooms = tuple(float(z) for z in zooms)
    return name, volume, zooms, units, train, train_name, notes


def _best_ms(function, repeat=3):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, 1000 * best


def cmd_demo(args):
    from .upsampling import VolumeUpsampler
    if args.input is not None:
        check_input(args.input)
    factor = (args.factor,) * 3
    name, volume, zooms, units, train, train_name, notes = _demo_data(args)
    for note in notes:
        print(note)
    high = crop_to_multiple(volume[None], factor)
    if min(high.shape[1:]) < 1:
        raise CommandError(f"the volume {_shape(volume.shape)} is smaller than the factor "
                           f"{args.factor}")
    low = block_average(high, factor).astype(np.float32)
    train = crop_to_multiple(train, factor)
    size = tuple(3 * f for f in factor)

    start = time.perf_counter()
    spec, learned, converged = fit_kernel_file(block_average(train, factor), train, factor,
                                               size, args.max_iter, args.threads)
    fit_s = time.perf_counter() - start
    results, times, scores = {}, {}, {}
    for method, kernel in [("nearest", "nearest"), ("trilinear", "trilinear"),
                           ("learned", spec.kernel)]:
        up = VolumeUpsampler(factor=factor, kernel=kernel, num_threads=args.threads).fit(low)
        method_spec = spec if method == "learned" else KernelFile(None)
        results[method], times[method] = _best_ms(
            lambda up=up, method_spec=method_spec: upsample_volumes(up, method_spec, low))
        scores[method] = psnr(high[0], results[method][0])

    print(f"{name}: {_shape(volume.shape)} voxels of {_format_size(zooms, units)}, cropped to "
          f"{_shape(high.shape[1:])}, degraded by {args.factor}x block averaging to "
          f"{_shape(low.shape[1:])}, upsampled back x{args.factor}")
    stop = "" if converged else f", stopped at --max-iter {args.max_iter}"
    print(f"learned kernel: {_shape(size)} taps fitted on {train_name}: {learned.n_iter_} "
          f"L-BFGS iterations{stop}, {fit_s:.1f} s")
    print(f"{'kernel':<11}{'PSNR (dB)':>10}{'time (ms)':>11}")
    for method in results:
        print(f"{method:<11}{scores[method]:>10.2f}{times[method]:>11.2f}")
    print(f"learned - trilinear: {scores['learned'] - scores['trilinear']:+.2f} dB "
          f"(PSNR against the original, peak = its range)")
    try:
        Figure = _import_matplotlib("the demo's picture")
    except CommandError as exc:
        print(f"no picture: {exc}")
        return EXIT_OK
    check_output(args.out, True, role="--out", kind=False)
    figure = _demo_figure(Figure, name, high[0], low[0], results, scores, times, factor, zooms)
    write_atomically(args.out, lambda tmp: figure.savefig(tmp, format="png", dpi=110),
                     role="--out")
    print(f"picture: {args.out}")
    return EXIT_OK


def _demo_figure(Figure, name, high, low, results, scores, times, factor, zooms):
    """Middle axial slice of the original, the input and each result; errors below."""
    z = high.shape[2] // 2
    lo, hi = _window(high)
    aspect = zooms[1] / zooms[0]
    columns = [("original", high[:, :, z]),
               (f"input (1/{factor[0]} per axis)", low[:, :, z // factor[2]])]
    columns += [(f"{m}\n{scores[m]:.2f} dB, {times[m]:.1f} ms", r[0][:, :, z])
                for m, r in results.items()]
    errors = {m: np.abs(r[0][:, :, z] - high[:, :, z]) for m, r in results.items()}
    emax = max(float(np.percentile(e, 99.5)) for e in errors.values()) or 1.0
    fig = Figure(figsize=(2.2 * len(columns), 5.4), layout="constrained")
    axes = fig.subplots(2, len(columns))
    extent = (0, high.shape[0], 0, high.shape[1])
    for col, (title, image) in enumerate(columns):
        ax = axes[0, col]
        ax.imshow(image.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent,
                  aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        method = list(errors)[col - 2] if col >= 2 else None
        ax_err = axes[1, col]
        if method is None:
            ax_err.axis("off")
        else:
            shown = ax_err.imshow(errors[method].T, cmap="magma", vmin=0, vmax=emax,
                                  origin="lower", extent=extent, aspect=aspect,
                                  interpolation="nearest")
            ax_err.set_title(f"|{method} - original|", fontsize=9)
        for a in (ax, ax_err):
            a.set_xticks([])
            a.set_yticks([])
    fig.colorbar(shown, ax=axes[1, -1], shrink=0.9)
    axes[1, 0].text(0.0, 0.5, "middle axial slice;\nbelow: absolute error\n(same scale)",
                    fontsize=9, transform=axes[1, 0].transAxes, va="center")
    fig.suptitle(f"tconv3d demo: {name}, {factor[0]}x block-averaged and upsampled back",
                 fontsize=11)
    return fig


def cmd_bench(argv):
    from . import bench
    bench.main(argv, prog=f"{PROG} bench")
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------

def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"{PROG}: warning: {text}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Run the ``tconv3d`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 1 error (reported on one line of stderr), 2 bad
        command line, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":  # bench has its own parser and --help
        run, target = cmd_bench, argv[1:]
        where = f"{PROG} bench"
    else:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: upsample, show, fit, demo or bench")
        run, target, where = args.run, args, f"{PROG} {args.command}"
    with warnings.catch_warnings(), _sigterm_unwinds():
        warnings.showwarning = _one_line_warning
        try:
            return run(target)
        except (CommandError, FileError) as exc:
            print(f"{where}: error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print(f"{where}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Terminated:
            print(f"{where}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except MemoryError as exc:
            print(f"{where}: error: not enough memory: {exc}", file=sys.stderr)
        except OSError as exc:  # writing: disk full, permissions changed meanwhile, ...
            print(f"{where}: error: {_os_error(exc)}", file=sys.stderr)
        except Exception as exc:
            if os.environ.get("TCONV3D_DEBUG", "") not in ("", "0"):
                raise
            print(f"{where}: error: {_reason(exc)} (unexpected; TCONV3D_DEBUG=1 shows the "
                  "traceback)", file=sys.stderr)
    return EXIT_ERROR


def _os_error(exc):
    if exc.filename:
        return f"{exc.strerror or exc}: {exc.filename!r}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
