"""Super-resolution of real MRI volumes with ``VolumeUpsampler``
=============================================================

nibabel ships two real scans in its test data: a T1 anatomical volume
(``anatomical.nii``, 33 x 41 x 25) and an EPI run of two volumes
(``example4d.nii.gz``, 128 x 96 x 24 x 2). Each volume is degraded by 2x block
averaging (what a scanner with voxels twice as large would record), then upsampled back
by nearest neighbour, trilinear interpolation, a learned kernel, and
``scipy.ndimage.zoom`` of order 1 and 3; each result is scored by its PSNR against the
original volume.

The learned kernel is never scored on the scan it was fitted on (leave one scan out): the
kernel applied to the anatomical volume is fitted on the EPI run, and the one applied to
the EPI volumes is fitted on the anatomical volume. It has 6 taps per axis (3 x factor):
trilinear's support plus one low-resolution voxel on each side, room for the negative
side lobes of a sharpening kernel. Its input is divided by a robust scale of the
low-resolution volume (a number known at test time), so the fitted bias carries over
between scans whose intensity units differ.

Block averaging puts a low-resolution voxel's centre at the centre of its block, which is
the ``align_corners=False`` convention of ``VolumeUpsampler``; ``zoom`` is called with
``grid_mode=True`` so that it uses the same convention.

Needs nibabel (``pip install "tconv3d[nifti]"``); draws the figure with matplotlib if it
is installed. Run::

    python examples/mri_superresolution.py [--png mri_superresolution.png]
"""
import argparse
import os
import sys
import time

import numpy as np
from scipy import ndimage

from tconv3d.upsampling import VolumeUpsampler

FACTOR = 2


def load_scans():
    """``{scan name: float32 array (n_volumes, d, h, w)}``, cropped to even lengths."""
    try:
        import nibabel
    except ImportError:
        sys.exit("This example needs nibabel: pip install 'tconv3d[nifti]'")
    # nibabel installs these scans with itself (nibabel.testing would import pytest)
    data_path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
    scans = {}
    for name, file in [("anatomical", "anatomical.nii"), ("EPI", "example4d.nii.gz")]:
        data = np.asarray(nibabel.load(os.path.join(data_path, file)).dataobj, np.float32)
        volumes = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
        even = tuple(slice(0, n - n % FACTOR) for n in volumes.shape[1:])
        scans[name] = np.ascontiguousarray(volumes[(slice(None), *even)])
    return scans


def block_average(volumes):
    n, d, h, w = volumes.shape
    f = FACTOR
    return volumes.reshape(n, d // f, f, h // f, f, w // f, f).mean(axis=(2, 4, 6))


def psnr(reference, estimate):
    """Peak signal-to-noise ratio in dB, the peak being the reference's range."""
    reference, estimate = reference.astype(np.float64), estimate.astype(np.float64)
    mse = np.mean((reference - estimate) ** 2)
    return 20 * np.log10(np.ptp(reference) / np.sqrt(mse))


def robust_scale(volumes):
    return np.percentile(np.abs(volumes), 99, axis=(1, 2, 3), keepdims=True)


def fit_learned(low, high):
    scale = robust_scale(low)
    return VolumeUpsampler(factor=FACTOR, kernel="learned", kernel_size=3 * FACTOR).fit(
        low / scale, high / scale)


def methods(learned):
    """``{name: function (n, d, h, w) -> (n, 2d, 2h, 2w)}``."""
    def zoom(order):
        return lambda low: np.stack([ndimage.zoom(v, FACTOR, order=order, grid_mode=True,
                                                  mode="nearest") for v in low])

    def fixed(kernel):
        up = VolumeUpsampler(factor=FACTOR, kernel=kernel)
        return lambda low: up.fit(low).transform(low)

    def learned_kernel(low):
        scale = robust_scale(low)
        return learned.transform(low / scale) * scale

    found = {"nearest": fixed("nearest"), "trilinear": fixed("trilinear"),
             "learned": learned_kernel, "zoom order 1": zoom(1), "zoom order 3": zoom(3)}
    try:   # the peers users reach for, where installed
        import torch
    except ImportError:
        pass
    else:
        def interpolate(low):
            with torch.inference_mode():
                return torch.nn.functional.interpolate(
                    torch.from_numpy(low)[:, None], scale_factor=FACTOR, mode="trilinear",
                    align_corners=False)[:, 0].numpy()
        found["torch interpolate"] = interpolate
    import nibabel.processing
    from tconv3d.nifti import upsampled_affine

    def nibabel_spline(low):   # world-space resampling onto the upsampled voxel grid
        target = (tuple(FACTOR * n for n in low.shape[1:]),
                  upsampled_affine(np.eye(4), (FACTOR,) * 3))
        return np.stack([nibabel.processing.resample_from_to(
            nibabel.Nifti1Image(v, np.eye(4)), target, order=3, mode="nearest").get_fdata()
            for v in low])
    found["nibabel order 3"] = nibabel_spline
    return found


def best_time(function, argument, repeat=5):
    """Result of ``function(argument)`` and its best wall time in ms over ``repeat``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(argument)
        times.append(time.perf_counter() - start)
    return result, 1000 * min(times)


def save_figure(path, scans, results, scores):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'tconv3d[plot]').")
        return
    names = list(next(iter(results.values())))
    columns = ["original", "input (1/2)"] + names
    fig, axes = plt.subplots(len(scans), len(columns), figsize=(2.1 * len(columns),
                                                                2.4 * len(scans)))
    for row, (scan, volumes) in enumerate(scans.items()):
        z = volumes.shape[3] // 2
        images = [volumes[0, :, :, z], block_average(volumes)[0, :, :, z // FACTOR]]
        images += [results[scan][name][0, :, :, z] for name in names]
        lo, hi = np.percentile(volumes[0], [1, 99.5])
        for col, (title, image) in enumerate(zip(columns, images)):
            ax = axes[row, col]
            ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=hi,
                      extent=(0, volumes.shape[1], 0, volumes.shape[2]))
            if col >= 2:
                title = f"{title}\n{scores[scan][title]:.2f} dB"
            ax.set_title(title if row == 0 or col >= 2 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(scan)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--png", default="mri_superresolution.png",
                        help="where to save the figure (default: %(default)s)")
    args = parser.parse_args()

    scans = load_scans()
    low = {scan: block_average(volumes) for scan, volumes in scans.items()}
    learned, fit_seconds = {}, {}
    for scan in scans:
        (other,) = set(scans) - {scan}
        start = time.perf_counter()
        learned[scan] = fit_learned(low[other], scans[other])
        fit_seconds[scan] = time.perf_counter() - start

    results, scores, times = {}, {}, {}
    for scan, volumes in scans.items():
        results[scan], scores[scan], times[scan] = {}, {}, {}
        for name, function in methods(learned[scan]).items():
            result, ms = best_time(function, low[scan])
            results[scan][name], times[scan][name] = result, ms
            scores[scan][name] = np.mean([psnr(v, r) for v, r in zip(volumes, result)])

    shapes = ", ".join(f"{scan} {volumes.shape[0]} x {volumes.shape[1:]}"
                       for scan, volumes in scans.items())
    print(f"2x block-averaged, upsampled back ({shapes}): PSNR (dB) against the originals, "
          "mean over a scan's volumes, and the best time (ms) of 5 runs of the upsampling")
    header = f"{'method':<18}" + "".join(f"{scan + ' dB':>15}{scan + ' ms':>15}"
                                         for scan in scans)
    print(header)
    print("-" * len(header))
    for name in results[next(iter(scans))]:
        print(f"{name:<18}" + "".join(
            f"{scores[scan][name]:>15.2f}{times[scan][name]:>15.2f}" for scan in scans))
    for scan in scans:
        (other,) = set(scans) - {scan}
        print(f"learned kernel for {scan}: fitted on {other} "
              f"({learned[scan].n_iter_} L-BFGS iterations, {fit_seconds[scan]:.2f} s)")
    for scan in scans:
        gain = scores[scan]["learned"] - scores[scan]["trilinear"]
        print(f"learned - trilinear on held-out {scan}: {gain:+.2f} dB")
    save_figure(args.png, scans, results, scores)


if __name__ == "__main__":
    main()
