"""Voxel centres of a NIfTI volume before and after ``tconv3d upsample --factor 2``.

Two axes of a 3 x 3 grid of 2 mm voxels, upsampled by 2 with the affine of
:func:`tconv3d.nifti.upsampled_affine`: the new voxels tile the same field of view, and each
block of 2 x 2 new voxels is centred on the old voxel it replaces (``align_corners=False``).
"""
import matplotlib.pyplot as plt
import numpy as np

from tconv3d.nifti import upsampled_affine

affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 4], [0, 0, 2.0, 0], [0, 0, 0, 1]])
factor = (2, 2, 1)
up = upsampled_affine(affine, factor)


def centres(aff, shape):
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    voxels = np.stack([i.ravel(), j.ravel(), np.zeros(i.size), np.ones(i.size)])
    return (aff @ voxels)[:2]


def edges(aff, shape):
    """World x and y of the voxel boundaries (index -0.5 ... n - 0.5) of each axis."""
    return [aff[a, a] * (np.arange(shape[a] + 1) - 0.5) + aff[a, 3] for a in (0, 1)]


fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6), sharex=True, sharey=True)
panels = [(axes[0], None, "input: 3 x 3 voxels of 2 mm, centres o"),
          (axes[1], up, "upsampled x2: 6 x 6 voxels of 1 mm, centres \u2022")]
for ax, new, title in panels:
    if new is not None:
        for e, line in zip(edges(new, (6, 6)), (ax.axvline, ax.axhline)):
            for v in e:
                line(v, color="0.8", lw=0.6, ls="--")
    for e, line in zip(edges(affine, (3, 3)), (ax.axvline, ax.axhline)):
        for v in e:
            line(v, color="0.45", lw=1.0)
    ax.plot(*centres(affine, (3, 3)), "o", ms=8, mfc="none", mec="tab:blue")
    if new is not None:
        ax.plot(*centres(new, (6, 6)), ".", color="tab:red")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm)")
axes[0].set_ylabel("y (mm)")
axes[0].set_ylim(1.2, 9.5)
o = up[:2, 3]
axes[1].annotate(f"new origin: ({o[0]:g}, {o[1]:g})", xy=o, xytext=(o[0] + 0.3, 1.7),
                 fontsize=8, arrowprops=dict(arrowstyle="->", lw=0.8))
axes[0].annotate(f"origin: ({affine[0, 3]:g}, {affine[1, 3]:g})", xy=affine[:2, 3],
                 xytext=(affine[0, 3] - 0.6, 1.7), fontsize=8,
                 arrowprops=dict(arrowstyle="->", lw=0.8))
