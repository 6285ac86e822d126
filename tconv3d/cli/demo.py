"""``tconv3d demo``: degrade a real MRI by 2, upsample it back with the nearest, trilinear
and learned kernels, print the PSNR and time of each and write a comparison picture."""
import os
import time

import numpy as np

from ..files import check_input, check_output, write_atomically
from ..io import open_volume
from ..nifti import NIFTI_HINT
from ..kernel_file import KernelFile, fit_kernel_file, upsample_volumes
from ._common import (EXIT_OK, CommandError, block_average, canonical_volume,
                      crop_to_multiple, import_matplotlib, intensity_window,
                      picture_format,
                      parse_positive_int, psnr, require_finite, shape_text,
                      size_text)

DEMO_PNG = "tconv3d_demo.png"


def add_parser(commands):
    """Add the ``demo`` command to the subparsers ``commands``."""
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
    demo.add_argument("--factor", type=parse_positive_int, default=2,
                      help="degradation and upsampling factor (default: 2)")
    demo.add_argument("--phantom", action="store_true",
                      help="use the synthetic phantoms even if nibabel is installed")
    demo.add_argument("--max-iter", type=parse_positive_int, default=200,
                      help="L-BFGS iterations of the learned fit at most (default: 200; "
                           "it converges in about 100)")
    demo.add_argument("--threads", type=parse_positive_int, default=None, metavar="N",
                      help="threads of the compiled core (default: OpenMP's default)")
    demo.set_defaults(run=cmd_demo)


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
        volume, zooms, _, _ = canonical_volume(source, 0)
        volume = require_finite(volume, args.input)
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
    from ..upsampling import VolumeUpsampler
    if args.input is not None:
        check_input(args.input)
    try:
        Figure = import_matplotlib("the demo's picture")
    except CommandError as exc:
        Figure, no_picture = None, exc
    else:   # a picture that cannot be written is refused before any work
        check_output(args.out, True, role="--out", kind=False)
        picture = picture_format(Figure, args.out)
    factor = (args.factor,) * 3
    name, volume, zooms, units, train, train_name, notes = _demo_data(args)
    for note in notes:
        print(note)
    high = crop_to_multiple(volume[None], factor)
    if min(high.shape[1:]) < 1:
        raise CommandError(f"the volume {shape_text(volume.shape)} is smaller than the "
                           f"factor {args.factor}")
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

    print(f"{name}: {shape_text(volume.shape)} voxels of {size_text(zooms, units)}, cropped "
          f"to {shape_text(high.shape[1:])}, degraded by {args.factor}x block averaging to "
          f"{shape_text(low.shape[1:])}, upsampled back x{args.factor}")
    stop = "" if converged else f", stopped at --max-iter {args.max_iter}"
    print(f"learned kernel: {shape_text(size)} taps fitted on {train_name}: {learned.n_iter_} "
          f"L-BFGS iterations{stop}, {fit_s:.1f} s")
    print(f"{'kernel':<11}{'PSNR (dB)':>10}{'time (ms)':>11}")
    for method in results:
        print(f"{method:<11}{scores[method]:>10.2f}{times[method]:>11.2f}")
    print(f"learned - trilinear: {scores['learned'] - scores['trilinear']:+.2f} dB "
          f"(PSNR against the original, peak = its range)")
    if Figure is None:
        print(f"no picture: {no_picture}")
        return EXIT_OK
    figure = _demo_figure(Figure, name, high[0], low[0], results, scores, times, factor, zooms)
    write_atomically(args.out, lambda tmp: figure.savefig(tmp, format=picture, dpi=110),
                     role="--out")
    print(f"picture: {args.out}")
    return EXIT_OK


def _demo_figure(Figure, name, high, low, results, scores, times, factor, zooms):
    """Middle axial slice of the original, the input and each result; errors below."""
    z = high.shape[2] // 2
    lo, hi = intensity_window(high)
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
