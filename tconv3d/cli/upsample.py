"""``tconv3d upsample IN OUT``: upsample a volume file by an integer factor."""
import argparse
import os
import sys
import time
import warnings

import numpy as np

from ..files import check_input, check_output, file_format
from ..io import encode_integers, open_volume, write_volume
from ..nifti import NIFTI_HINT, require_nibabel
from ..kernel_file import KernelFile, load_kernel, upsample_volumes
from ._common import (EXIT_OK, KERNEL_FILE_HELP, CommandError, HelpFormatter, factor_text,
                      parse_factor, parse_positive_int, require_finite, shape_text,
                      size_text)

FIXED_KERNELS = ("trilinear", "nearest", "label")
NAN_POLICIES = ("propagate", "ignore", "error")
OUTPUT_DTYPES = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
                 "uint32", "int64", "uint64")


def _kernel_choice(text):
    if text in FIXED_KERNELS or text.lower().endswith(".npz"):
        return text
    hint = " (learn one with `tconv3d fit`)" if text == "learned" else ""
    raise argparse.ArgumentTypeError(
        f"expected trilinear, nearest, label or a kernel file ending in .npz{hint}, "
        f"got {text!r}")


def add_parser(commands):
    """Add the ``upsample`` command to the subparsers ``commands``."""
    up = commands.add_parser(
        "upsample", help="upsample a volume file by an integer factor",
        formatter_class=HelpFormatter,
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
    up.add_argument("--factor", type=parse_factor, default=None,
                    help="integer factor, or three as 2,2,1 (default: 2, or the kernel "
                         "file's)")
    up.add_argument("--kernel", type=_kernel_choice, default="trilinear",
                    help="trilinear (default; PyTorch's align_corners=False numbers), "
                         "nearest (np.repeat), label (segmentations: each voxel takes the "
                         "label with the largest trilinear weight, ties to the smallest; "
                         "the dtype is kept), or a .npz kernel file (see below)")
    up.add_argument("--nan", choices=NAN_POLICIES, default="propagate",
                    help="what NaN and infinite voxels (e.g. outside a resampled scan's "
                         "field of view) do: propagate (default) into the outputs whose "
                         "taps on them are nonzero, as arithmetic does (nearest: exactly "
                         "np.repeat); ignore: those outputs become the kernel-weighted "
                         "mean of the finite inputs they reach (NaN where there is none); "
                         "error: refuse them")
    up.add_argument("--threads", type=parse_positive_int, default=None, metavar="N",
                    help="threads of the compiled core (default: OpenMP's default)")
    up.add_argument("--dtype", choices=("input",) + OUTPUT_DTYPES, default=None,
                    metavar="TYPE",
                    help="data type of OUT: input (IN's), float32, float64, int8, uint8, "
                         "int16, uint16, int32, uint32, int64 or uint64 (default: float64 for "
                         "float64 input, float32 otherwise, integer input included). Integer "
                         "types keep the physical values: on IN's grid (its NIfTI scaling, "
                         "kept: exact for nearest, within half a step otherwise) where they "
                         "fit, else, in NIfTI, with a slope and intercept spanning their "
                         "range; .npy/.npz round to integers and refuse values outside the "
                         "type's range unless --clip")
    up.add_argument("--clip", action="store_true",
                    help="with an integer --dtype: clip values outside the type's range "
                         "(a warning says how many) instead of refusing them")
    up.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    up.add_argument("-q", "--quiet", action="store_true",
                    help="no progress bar and no summary line")
    up.set_defaults(run=cmd_upsample)


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


def _work_dtype(*dtypes):
    """float64 if any of ``dtypes`` is float64, else float32."""
    return np.float64 if any(np.dtype(d) == np.float64 for d in dtypes) else np.float32


def _scaling_text(scaling):
    slope, inter = scaling
    if slope is None or (slope, inter) == (1.0, 0.0):
        return ""
    return f" (slope {slope:g}, intercept {inter:g})"


def _kernel_spec(kernel_arg, factor_arg):
    """``(KernelFile, kernel for VolumeUpsampler, factor, description)`` for the
    ``--kernel`` and ``--factor`` arguments."""
    if kernel_arg in FIXED_KERNELS:
        factor = factor_arg or (2, 2, 2)
        return KernelFile(None, factor), kernel_arg, factor, kernel_arg
    spec = load_kernel(kernel_arg)
    if factor_arg is not None and spec.factor is not None and factor_arg != spec.factor:
        raise CommandError(f"--factor {shape_text(factor_arg)} differs from the factor "
                           f"{shape_text(spec.factor)} the kernel file {kernel_arg!r} was "
                           "made for")
    factor = factor_arg or spec.factor or (2, 2, 2)
    name = f"kernel {os.path.basename(kernel_arg)} ({shape_text(spec.kernel.shape)})"
    return spec, spec.kernel, factor, name


def _fitted_upsampler(kernel, factor, threads, nan_policy):
    from ..upsampling import VolumeUpsampler
    upsampler = VolumeUpsampler(factor=factor, kernel=kernel, num_threads=threads,
                                nan_policy=nan_policy)
    try:
        return upsampler.fit(np.zeros((1, 1, 1, 1)))  # sets the kernel; no data needed
    except ValueError as exc:   # e.g. --nan ignore with a kernel file's negative taps
        raise CommandError(str(exc)) from None


def cmd_upsample(args):
    from .._validation import check_allocation
    kind_out = file_format(args.output, "OUT")
    check_input(args.input)
    check_output(args.output, args.overwrite)
    if kind_out == "nifti":
        require_nibabel(args.output)
    spec, kernel, factor, name = _kernel_spec(args.kernel, args.factor)
    source = open_volume(args.input)
    stored = source.stored_dtype
    if args.dtype == "input" or (args.dtype is None and args.kernel == "label"):
        out_dtype = np.dtype(np.uint8) if stored.kind == "b" else stored   # labels stay labels
    elif args.dtype is not None:
        out_dtype = np.dtype(args.dtype)
    else:
        out_dtype = np.dtype(np.float64 if stored == np.float64 else np.float32)
    # labels are whole numbers: float64 holds every int32 label exactly
    work = np.float64 if args.kernel == "label" else _work_dtype(stored, out_dtype)
    integer_out = out_dtype.kind in "iu"
    out_spatial = tuple(n * f for n, f in zip(source.spatial, factor))
    out_shape = out_spatial + source.extra
    try:
        check_allocation(out_shape, out_dtype, "OUT")
        if integer_out:     # the values are encoded once all are known (one scaling per file)
            check_allocation(out_shape, work, "OUT before encoding")
    except ValueError as exc:   # past the index range: the factor is the cause
        raise CommandError(f"--factor {factor_text(factor)}: {exc}") from None
    upsampler = _fitted_upsampler(kernel, factor, args.threads, args.nan)

    start = time.perf_counter()
    compute = 0.0
    series = source.n_volumes > 1
    progress = Progress(source.n_volumes, "upsampling") if series and not args.quiet else None
    out = np.empty(out_spatial + (source.n_volumes,), work if integer_out else out_dtype) \
        if series else None
    for k in range(source.n_volumes):
        volume = np.asarray(source.volume(k), dtype=work)
        if args.nan == "error":
            require_finite(volume, args.input)
        tic = time.perf_counter()
        up = upsample_volumes(upsampler, spec, volume[np.newaxis])[0]
        if not integer_out:
            up = up.astype(out_dtype, copy=False)
        compute += time.perf_counter() - tic
        if not series:  # one volume: no second output-sized buffer
            out = up
            break
        out[..., k] = up
        if progress:
            progress.update(k + 1)
    out = out.reshape(out_shape)
    scaling = (None, None)
    if integer_out:
        grid = source.scaling if stored.kind in "biu" else None
        out, scaling, clipped = encode_integers(out, out_dtype, grid=grid, clip=args.clip,
                                                can_scale=kind_out == "nifti")
        if clipped:
            warnings.warn(f"clipped {clipped} of {out.size} voxels to {out_dtype}'s range "
                          f"[{np.iinfo(out_dtype).min}, {np.iinfo(out_dtype).max}]",
                          stacklevel=1)
    write_volume(args.output, kind_out, out, source, factor, args.overwrite, scaling)
    elapsed = time.perf_counter() - start
    if not args.quiet:
        zooms = size_text(source.zooms, source.units)
        new_zooms = size_text([z / f for z, f in zip(source.zooms, factor)], source.units)
        volumes = f" x {source.n_volumes} volumes" if source.extra else ""
        print(f"{args.input} {shape_text(source.spatial)}{volumes} {stored} -> {args.output} "
              f"{shape_text(out_spatial)} {out_dtype}{_scaling_text(scaling)}; voxel {zooms} -> "
              f"{new_zooms}; {name} "
              f"x{factor_text(factor)}; {elapsed:.2f} s (upsampling {compute:.2f} s)")
    return EXIT_OK
