"""``tconv3d fit HIGH... --out KERNEL.npz``: learn an upsampling kernel from
high-resolution volumes."""
import math
import time
import warnings

import numpy as np

from ..files import check_input, check_output
from ..io import open_volume
from ..kernel_file import fit_kernel_file, save_kernel, upsample_volumes
from ._common import (EXIT_OK, KERNEL_FILE_HELP, CommandError, HelpFormatter, block_average,
                      crop_to_multiple, factor_text, parse_factor, parse_positive_int,
                      psnr, shape_text)


def add_parser(commands):
    """Add the ``fit`` command to the subparsers ``commands``."""
    fit = commands.add_parser(
        "fit", help="learn an upsampling kernel from high-resolution volumes",
        formatter_class=HelpFormatter,
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
    fit.add_argument("--factor", type=parse_factor, default=(2, 2, 2),
                     help="integer factor, or three as 2,2,1 (default: 2)")
    fit.add_argument("--kernel-size", type=parse_factor, default=None, metavar="K",
                     help="taps per axis (default: 3 x factor: the trilinear support plus "
                          "one low-resolution voxel on each side)")
    fit.add_argument("--max-iter", type=parse_positive_int, default=200,
                     help="L-BFGS iterations at most (default: 200)")
    fit.add_argument("--threads", type=parse_positive_int, default=None, metavar="N",
                     help="threads of the compiled core (default: OpenMP's default)")
    fit.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    fit.set_defaults(run=cmd_fit)


def _training_volumes(paths, factor, size):
    """All volumes of ``paths`` as float64 ``(n, d, h, w)``, each cropped to a multiple of
    ``factor`` and all centre-cropped to a common shape; and whether shapes differed.

    Refuses volumes too small to fit a ``size`` kernel on; warns on constant volumes and
    on a common shape that discards more than half of a file's voxels.
    """
    volumes, origins = [], []
    for path in paths:
        source = open_volume(path, role="HIGH")
        for k in range(source.n_volumes):
            v = np.asarray(source.volume(k), np.float64)
            if not np.isfinite(v).all():
                raise CommandError(f"{path!r} holds NaN or infinite values; fitting needs "
                                   "finite numbers")
            volumes.append(crop_to_multiple(v[None], factor)[0])
            origins.append((path, source.spatial))
    common = tuple(min(v.shape[a] for v in volumes) for a in range(3))
    if min(common) < 1:
        raise CommandError(f"the training volumes are smaller than the factor "
                           f"{shape_text(factor)} along some axis")
    # The kernel spans ceil(k/f) low-resolution voxels per axis; one more is needed for
    # any pair of neighbours to constrain it, and more voxels than unknowns in all.
    need = tuple(f * (math.ceil(k / f) + 1) for k, f in zip(size, factor))
    if any(c < n for c, n in zip(common, need)) \
            or len(volumes) * math.prod(common) <= math.prod(size) + 1:
        raise CommandError(
            f"the training volumes (common shape {shape_text(common)} after cropping to "
            f"a multiple of the factor, {len(volumes)} volume(s)) are too small to fit a "
            f"{shape_text(size)} kernel for factor {shape_text(factor)}: each axis needs at "
            f"least {shape_text(need)} voxels, and more voxels than the kernel's taps")
    constant = sum(np.ptp(v) == 0 for v in volumes)
    if constant:
        warnings.warn(f"{constant} of {len(volumes)} training volumes are constant: they "
                      "hold nothing for the kernel to learn", stacklevel=1)
    worst = {}
    for path, spatial in origins:
        kept = math.prod(common) / math.prod(spatial)
        worst[path] = min(worst.get(path, 1.0), kept)
    for path, kept in worst.items():
        if kept < 0.5:
            warnings.warn(f"centre-cropping to the common shape {shape_text(common)} keeps "
                          f"only {100 * kept:.0f}% of the voxels of {path!r}", stacklevel=1)
    cropped = []
    for v in volumes:
        starts = [((n - c) // 2) // f * f for n, c, f in zip(v.shape, common, factor)]
        cropped.append(v[tuple(slice(s, s + c) for s, c in zip(starts, common))])
    different = any(v.shape != common for v in volumes)
    return np.stack(cropped), different


def cmd_fit(args):
    from ..upsampling import VolumeUpsampler
    for path in args.inputs:
        check_input(path, role="HIGH")
    if not args.out.lower().endswith(".npz"):
        raise CommandError(f"--out {args.out!r}: a kernel file must end in .npz")
    check_output(args.out, args.overwrite, role="--out")
    factor = args.factor
    size = args.kernel_size or tuple(3 * f for f in factor)
    high, cropped = _training_volumes(args.inputs, factor, size)
    low = block_average(high, factor)
    start = time.perf_counter()
    spec, learned, converged = fit_kernel_file(low, high, factor, size, args.max_iter,
                                               args.threads)
    elapsed = time.perf_counter() - start
    up = VolumeUpsampler(factor=factor, kernel=spec.kernel, num_threads=args.threads).fit(low)
    trilinear = VolumeUpsampler(factor=factor, num_threads=args.threads).fit(low)
    gain = psnr(high, upsample_volumes(up, spec, low)) - psnr(high, trilinear.transform(low))
    score = f"training PSNR {gain:+.2f} dB over trilinear" if math.isfinite(gain) else \
        "training PSNR over trilinear not defined (constant or exactly reproduced volumes)"
    save_kernel(args.out, spec, args.overwrite)
    note = "" if converged else f" (stopped at --max-iter {args.max_iter})"
    shape = f"centre-cropped to a common {shape_text(high.shape[1:])}" if cropped else \
        shape_text(high.shape[1:])
    print(f"{args.out}: {shape_text(size)} kernel for factor {factor_text(factor)}, fitted on "
          f"{len(high)} volume(s) ({shape}); {learned.n_iter_} L-BFGS iterations{note}, "
          f"{elapsed:.2f} s; {score}")
    return EXIT_OK
