"""The upsampling plan of a 3-D kernel: any box ("chunk") of the output of an edge-replicated
transposed convolution of stride ``factor`` (``tconv3d._plan`` dispatches to it; the
definition is in the ``tconv3d.upsampling`` docstring).

Per spatial axis, with ``n`` input voxels, ``k >= s`` taps (smaller kernels are first
zero-padded, :func:`embed_small`) and ``c = (k - s) // 2``, output ``o`` is full-length
position ``o + c`` of the scatter ``z[i*s + j] += x[i] * w[j]``, so the outputs
``[first, stop)`` read the inputs (:meth:`Plan.reach`)::

    [ceil((first + c - k + 1) / s), floor((stop - 1 + c) / s) + 1)

where indices outside ``[0, n)`` read the nearest edge voxel. A chunk is computed in passes
(:meth:`Plan.chunk`), each one call of the compiled forward kernel with a geometry that lands
exactly on its outputs (crop ``first + c - lo*s``):

1. the chunk from the input voxels inside the volume: exact wherever no tap reaches past
   the volume, i.e. all but the first ``ceil((k - s)/2)`` and the last ``(k - s) // 2``
   outputs of each axis (the "border slabs", :func:`borders`);
2. the parts of the border slabs in the chunk, each from its edge-replicated input and
   written over the first pass's result, in a fixed order, each with the axes reordered
   so that its whole slab's longest axis is innermost (where the core runs its inner loop).

No padded copy of the volume is made: only the thin slabs read edge-replicated copies.
"""
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _ops
from ._validation import check_allocation, make_geometry, normalize_num_threads

# --------------------------------------------------------------------------------- kernel


def embed_small(kernel, factor):
    """Zero-pad the axes with fewer taps than the factor to ``factor`` taps (same ``y``).

    Returns the kernel and the slices of it that hold the given taps.
    """
    front = [max(0, -((k - s) // 2)) for k, s in zip(kernel.shape, factor)]
    back = [max(0, s - k - f) for k, s, f in zip(kernel.shape, factor, front)]
    taps = tuple(slice(f, f + k) for f, k in zip(front, kernel.shape))
    if any(front) or any(back):
        kernel = np.pad(kernel, list(zip(front, back)))
    return kernel, taps


def borders(in_spatial, kernel_shape, factor):
    """The border slabs, outputs that read past the volume: ``(axis, first, stop)``."""
    slabs = []
    for axis, (n, k, s) in enumerate(zip(in_spatial, kernel_shape, factor)):
        length = n * s
        for first, stop in ((0, k - s - (k - s) // 2), (length - (k - s) // 2, length)):
            first, stop = max(first, 0), min(stop, length)
            if first < stop:
                slabs.append((axis, first, stop))
    return slabs


# ----------------------------------------------------------------------------------- plan

@dataclasses.dataclass(frozen=True)
class Pass:
    """One transposed convolution of a chunk.

    ``order``: the axis order it runs in; ``source``: per axis ``(lo, hi)``, the volume's
    input voxels it reads (outside ``[0, n)``: the nearest edge voxel); ``geom``: its
    :class:`~tconv3d._validation.Geometry` in ``order`` (batch set when run); ``target``:
    the slices of the chunk it writes, ``None`` for the first pass (the whole chunk).
    """
    order: tuple
    source: tuple
    geom: object
    target: tuple = None


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """The passes of the output chunk ``ranges`` (per axis ``(first, stop)``) and the input
    voxels ``reads`` (per axis ``(lo, hi)``, inside the volume of ``in_spatial`` voxels)
    they read together."""
    in_spatial: tuple
    ranges: tuple
    reads: tuple
    passes: tuple


class Plan:
    """How to compute any chunk of the upsampled volume (module docstring).

    Parameters
    ----------
    in_spatial : tuple of 3 ints
        Voxels of the volume per axis.
    kernel_shape : tuple of 3 ints
        Taps of the embedded kernel (at least ``factor``) per axis.
    factor : tuple of 3 ints
    """

    def __init__(self, in_spatial, kernel_shape, factor):
        self.in_spatial, self.factor = tuple(in_spatial), tuple(factor)
        self.kernel_shape = tuple(kernel_shape)
        # The whole volume's "same" convolution: length n*s, crop (k - s)//2 per axis.
        self.whole = make_geometry((1, *in_spatial, 1), (*kernel_shape, 1, 1), factor,
                                   "same", None, 1, "channels_last")
        self.out_spatial, self.crop = self.whole.out_spatial, self.whole.crop
        # Each slab with the axis order of its whole extent (longest innermost).
        self.slabs = []
        for axis, first, stop in borders(in_spatial, kernel_shape, factor):
            lengths = [stop - first if a == axis else self.out_spatial[a] for a in range(3)]
            self.slabs.append((axis, first, stop,
                               tuple(np.argsort(lengths, kind="stable").tolist())))

    def reach(self, axis, first, stop):
        """Inputs ``[lo, hi)`` (edge-replicated past the volume) that the outputs
        ``[first, stop)`` of ``axis`` read."""
        k, s, c = self.kernel_shape[axis], self.factor[axis], self.crop[axis]
        return -(-(first + c - (k - 1)) // s), (stop - 1 + c) // s + 1

    def reads(self, axis, first, stop):
        """The voxels of the volume that the outputs ``[first, stop)`` of ``axis`` read."""
        lo, hi = self.reach(axis, first, stop)
        return max(lo, 0), min(hi, self.in_spatial[axis])

    def local(self, axis, first, stop, lo):
        """Output length and crop of the outputs ``[first, stop)`` computed from input
        ``lo`` on: their positions in that convolution's full-length result start at
        ``crop``."""
        return stop - first, first + self.crop[axis] - lo * self.factor[axis]

    def _pass(self, order, ranges, inside, target=None):
        """The pass computing the outputs ``ranges``, from the voxels inside the volume
        (``inside``) or from the edge-replicated input."""
        source, local = [], []
        for a, (first, stop) in enumerate(ranges):
            lo, hi = self.reads(a, first, stop) if inside else self.reach(a, first, stop)
            source.append((lo, hi))
            local.append((hi - lo, *self.local(a, first, stop, lo)))
        geom = dataclasses.replace(
            self.whole, in_spatial=tuple(local[a][0] for a in order),
            kernel_spatial=tuple(self.kernel_shape[a] for a in order),
            strides=tuple(self.factor[a] for a in order),
            out_spatial=tuple(local[a][1] for a in order),
            crop=tuple(local[a][2] for a in order))
        return Pass(tuple(order), tuple(source), geom, target)

    def chunk(self, ranges):
        """The :class:`ChunkPlan` of the outputs ``ranges`` (per axis ``(first, stop)``)."""
        ranges = tuple(tuple(r) for r in ranges)
        passes = [self._pass((0, 1, 2), ranges, inside=True)]
        for axis, first, stop, order in self.slabs:
            first, stop = max(first, ranges[axis][0]), min(stop, ranges[axis][1])
            if first >= stop:
                continue
            part = list(ranges)
            part[axis] = (first, stop)
            target = tuple(slice(f - c0, t - c0) for (f, t), (c0, _) in zip(part, ranges))
            passes.append(self._pass(order, part, inside=False, target=target))
        reads = tuple(self.reads(a, *r) for a, r in enumerate(ranges))
        return ChunkPlan(self.in_spatial, ranges, reads, tuple(passes))


# ------------------------------------------------------------------------------ execution

def read_edge_replicated(x, x_lo, in_spatial, source):
    """The input voxels ``source`` (per axis ``(lo, hi)``) of ``x``, whose first voxel is
    voxel ``x_lo`` of a volume of ``in_spatial`` voxels; voxels outside the volume read
    its nearest edge voxel. A view when ``source`` lies inside the volume."""
    if all(0 <= lo and hi <= n for (lo, hi), n in zip(source, in_spatial)):
        return x[(slice(None), *(slice(lo - o, hi - o) for (lo, hi), o in zip(source, x_lo)))]
    d, h, w = (np.clip(np.arange(lo, hi), 0, n - 1) - o
               for (lo, hi), n, o in zip(source, in_spatial, x_lo))
    return x[:, d[:, None, None], h[None, :, None], w[None, None, :]]


def _convolve(x, chunk, step, kernel, bias, num_threads, output):
    """Run one :class:`Pass` on the single-channel volumes ``x`` (``chunk.reads``)."""
    part = read_edge_replicated(x, [lo for lo, _ in chunk.reads], chunk.in_spatial,
                                step.source)
    order = list(step.order)
    part = part.transpose(0, *(a + 1 for a in order), 4)
    wt = np.ascontiguousarray(kernel.transpose(*order, 3, 4))  # Cin = Cout = 1: packed
    geom = dataclasses.replace(step.geom, batch=len(x))
    check_allocation(geom.output_shape, wt.dtype, output)
    z = _ops.forward_packed(part, wt, bias, geom, num_threads)
    return z.transpose(0, *(order.index(a) + 1 for a in range(3)), 4)


def run(x, chunk, operator, num_threads, *, output="output", side_by_side=False):
    """Compute one chunk of the upsampled single-channel volumes.

    Parameters
    ----------
    x : ndarray of shape (n, d, h, w, 1)
        The input voxels ``chunk.reads`` of each volume, float32 or float64.
    chunk : ChunkPlan
    operator : tuple
        ``(kernel, bias)`` from :func:`prepare` with ``x.dtype``.
    num_threads : int or None
        OpenMP threads of each pass.
    output : str
        How a too-large output is named in the ``MemoryError``.
    side_by_side : bool
        Run the border passes (thin, up to six) side by side on Python threads with one
        OpenMP thread each (the core releases the GIL) rather than one after the other:
        six small OpenMP regions, whose every barrier waits for the slowest thread, are
        costly on a busy machine. Results do not depend on it.

    Returns
    -------
    y : ndarray of shape (n, D, H, W, 1)
        The chunk, new and C-contiguous, of ``x.dtype``.
    """
    kernel, bias = operator
    first, *slabs = chunk.passes
    y = _convolve(x, chunk, first, kernel, bias, num_threads, output)
    if slabs:
        if side_by_side:
            with ThreadPoolExecutor(min(len(slabs), normalize_num_threads(num_threads))) as pool:
                results = pool.map(
                    lambda step: _convolve(x, chunk, step, kernel, bias, 1, output), slabs)
                for step, values in zip(slabs, results):
                    y[(slice(None), *step.target)] = values
        else:
            for step in slabs:
                y[(slice(None), *step.target)] = _convolve(x, chunk, step, kernel, bias,
                                                           num_threads, output)
    return y


def prepare(kernel, bias, dtype):
    """The operator of :func:`run`: an embedded ``(kd, kh, kw)`` kernel as
    ``(kd, kh, kw, 1, 1)`` of ``dtype`` and the bias as an array of shape ``(1,)``
    (``None`` for a zero bias)."""
    return (np.ascontiguousarray(kernel, dtype)[..., None, None],
            None if bias == 0 else np.full(1, bias, dtype))
