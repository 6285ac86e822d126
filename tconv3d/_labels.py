"""The plan of ``kernel="label"``: label maps upsampled by a trilinear-weighted vote.

Output voxel ``o`` takes, among the labels of the (at most 8) input voxels with a nonzero
trilinear weight, the label whose weights add up to the most; ties go to the smallest label.
Per axis, with ``s`` the factor, output ``o`` sits at input coordinate
``u = (o + 0.5)/s - 0.5 = (2o + 1 - s) / (2s)`` (``align_corners=False``), between voxels
``i0 = floor(u)`` and ``i0 + 1`` with weights ``2s - r`` and ``r`` in units of ``1/(2s)``,
``r = (2o + 1 - s) mod 2s``; indices are clipped to the volume (edge replication, as for
``"trilinear"``). The weight of a voxel is the product of its three axes' weights, an
integer, so sums and ties are exact.

The vote needs no arithmetic on the labels: they keep their dtype (any integer, bool, or a
float holding whole numbers). Computed per output box ("chunk") from the voxels it reads,
so ``transform`` and ``tconv3d.dask`` give the same labels: inputs are gathered per 2x2x2
block of neighbours, a block whose 8 labels agree gives its label to all its outputs, and
only the outputs of mixed blocks (label boundaries) are voted on.
"""
import dataclasses

import numpy as np

from ._validation import check_allocation


def axis_weights(first, stop, factor):
    """For the outputs ``[first, stop)`` of an axis: the lower neighbour ``i0`` (may be -1
    or the last voxel, not clipped) and the integer weights of ``i0`` and ``i0 + 1``."""
    s = factor
    t = 2 * np.arange(first, stop, dtype=np.int64) + 1 - s
    i0 = t // (2 * s)
    r = t - i0 * 2 * s
    return i0, 2 * s - r, r


@dataclasses.dataclass(frozen=True)
class LabelChunk:
    """The output chunk ``ranges`` (per axis ``(first, stop)``) and the input voxels
    ``reads`` (per axis ``(lo, hi)``, inside the volume of ``in_spatial`` voxels) it
    reads."""
    in_spatial: tuple
    ranges: tuple
    reads: tuple


class LabelPlan:
    """How to compute any chunk of a label map upsampled by ``factor``."""

    def __init__(self, in_spatial, factor):
        self.in_spatial, self.factor = tuple(in_spatial), tuple(factor)
        self.out_spatial = tuple(n * s for n, s in zip(in_spatial, factor))

    def reads(self, axis, first, stop):
        """The voxels of the volume that the outputs ``[first, stop)`` of ``axis`` read."""
        n, s = self.in_spatial[axis], self.factor[axis]
        lo = (2 * first + 1 - s) // (2 * s)
        hi = (2 * (stop - 1) + 1 - s) // (2 * s) + 2
        lo = min(max(lo, 0), n - 1)
        return lo, max(min(hi, n), lo + 1)

    def chunk(self, ranges):
        """The :class:`LabelChunk` of the outputs ``ranges``."""
        ranges = tuple(tuple(int(v) for v in r) for r in ranges)
        return LabelChunk(self.in_spatial, ranges,
                          tuple(self.reads(a, *r) for a, r in enumerate(ranges)))


def check_labels(x):
    """Refuse what is not a label map: non-real dtypes, non-finite or fractional values."""
    if x.dtype.kind not in "biuf":
        raise ValueError(f"kernel='label' upsamples label maps (integers), got dtype "
                         f"{x.dtype}.")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            raise ValueError(f"kernel='label' upsamples label maps: X holds "
                             f"{int(np.count_nonzero(bad))} NaN or infinite values, which "
                             "are no labels (whatever nan_policy).")
        fractional = x != np.round(x)
        if fractional.any():
            raise ValueError("kernel='label' upsamples label maps (whole numbers): X holds "
                             f"{int(np.count_nonzero(fractional))} values such as "
                             f"{x[fractional].flat[0]!r} that are not; for intensities "
                             "use kernel='trilinear'.")


def run(x, chunk, factor, *, output="output"):
    """Compute one chunk of the upsampled label maps.

    Parameters
    ----------
    x : ndarray of shape (n, d, h, w, 1)
        The input voxels ``chunk.reads`` of each map.
    chunk : LabelChunk
    factor : tuple of 3 ints
    output : str
        How a too-large output is named in the ``MemoryError``.

    Returns
    -------
    y : ndarray of shape (n, D, H, W, 1)
        The chunk, new and C-contiguous, of ``x.dtype``.
    """
    check_labels(x)
    v = x[..., 0]
    shape = (len(v), *(stop - first for first, stop in chunk.ranges))
    check_allocation(shape, v.dtype, output)
    # Per axis: the block (lower neighbour i0) of each output, its two clipped neighbours
    # in x, their weights; blocks numbered by `inverse`.
    near, weights, blocks, inverse = [], [], [], []
    for (first, stop), s, n, (lo, _) in zip(chunk.ranges, factor, chunk.in_spatial,
                                            chunk.reads):
        i0, w0, w1 = axis_weights(first, stop, s)
        unique, inv = np.unique(i0, return_inverse=True)
        near.append((np.clip(i0, 0, n - 1) - lo, np.clip(i0 + 1, 0, n - 1) - lo))
        weights.append((w0, w1))
        blocks.append((np.clip(unique, 0, n - 1) - lo, np.clip(unique + 1, 0, n - 1) - lo))
        inverse.append(inv)

    def gather(index_d, index_h, index_w, n=slice(None)):
        return v[n, index_d[:, None, None], index_h[None, :, None], index_w[None, None, :]]

    first_corner = gather(blocks[0][0], blocks[1][0], blocks[2][0])
    uniform = np.ones(first_corner.shape, bool)
    for c in range(1, 8):
        d, h, w = (c >> 2) & 1, (c >> 1) & 1, c & 1
        uniform &= gather(blocks[0][d], blocks[1][h], blocks[2][w]) == first_corner
    y = first_corner[:, inverse[0][:, None, None], inverse[1][None, :, None],
                     inverse[2][None, None, :]]
    if not uniform.all():
        mixed = np.nonzero(~uniform[:, inverse[0][:, None, None], inverse[1][None, :, None],
                                    inverse[2][None, None, :]])
        y[mixed] = _vote(v, mixed, near, weights)
    return y[..., None]


def _vote(v, outputs, near, weights):
    """The labels of the outputs ``(n, od, oh, ow)`` (index arrays): the label with the
    largest total weight among their 8 neighbours, the smallest on ties."""
    n, od, oh, ow = outputs
    labels, totals = [], []
    for c in range(8):
        d, h, w = (c >> 2) & 1, (c >> 1) & 1, c & 1
        labels.append(v[n, near[0][d][od], near[1][h][oh], near[2][w][ow]])
        totals.append(weights[0][d][od] * weights[1][h][oh] * weights[2][w][ow])
    best_label, best_total = None, None
    for c in range(8):
        total = sum(np.where(labels[c2] == labels[c], totals[c2], 0) for c2 in range(8))
        if best_label is None:
            best_label, best_total = labels[c], total
            continue
        better = (total > best_total) | ((total == best_total) & (labels[c] < best_label))
        best_label = np.where(better, labels[c], best_label)
        best_total = np.where(better, total, best_total)
    return best_label
