"""The upsampling plan of a separable kernel (nearest, trilinear): one axis at a time.

A kernel that is the outer product of three 1-D kernels ``w_d, w_h, w_w`` upsamples a volume
as three 1-D upsamplings, one per axis (edge replication is per axis too), each reading
about ``k/s`` inputs per output instead of ``(k/s)**3``. Each pass is one compiled call
(plus two thin ones at the volume's borders) whose every output is a short sum, at a cost
linear in the output size for any factor. A pass along an axis of ``n`` voxels, stride
``s`` and taps ``w`` (``k >= s`` after zero-padding a short kernel, ``c = (k - s) // 2``)
takes one of two forms, by the factor alone (:data:`MIN_CHANNEL_PHASES`):

* **strided** (``s < 16``): the definition of the ``tconv3d.upsampling`` docstring along
  one axis, a transposed convolution of stride ``s`` with kernel ``w``; outputs
  ``[first, stop)`` read the inputs ``[ceil((first + c - k + 1)/s), floor((stop - 1 + c)/s)
  + 1)``. The core enumerates the ``O(k)`` taps of each output row: bounded by 31 here.
* **polyphase** (``s >= 16``): output block ``Q`` (outputs ``Q*s .. Q*s + s - 1``), phase
  ``r'`` (:func:`polyphase`)::

      y[Q*s + r'] = sum_m x[clip(Q + shift - m, 0, n - 1)] * W[m, r'],   0 <= m < M,

  a stride-1 transposed convolution with ``M`` taps (2 or 3 for trilinear, 1 for nearest)
  from one input channel to ``s`` output channels, the phases, which the core computes as
  vector GEMMs and writes straight to their places ``Q*s + r'`` (a strided view: no
  interleaving copy). Blocks ``[Q0, Q1)`` read ``[Q0 + shift - M + 1, Q1 + shift)``.

* **repeat** (the box of ``s`` ones, ``"nearest"``): each output is a copy of its input,
  ``np.repeat`` written through strided views, exact (NaN payloads and ``-0.0`` too).

Outputs whose inputs lie past the volume are computed from small edge-replicated copies,
the others from a view of the input (small volumes: one edge-replicated copy, one call).
Every output of a pass is the same sum (taps in a fixed order), whatever the chunk, the
piece of input it comes from or the thread count, so ``transform`` and ``tconv3d.dask``
agree bitwise. The passes run in a fixed axis order (:func:`order`).
"""
import dataclasses
import math

import numpy as np

from . import _ops
from ._geometry import Geometry
from ._validation import check_allocation, normalize_num_threads

SEPARABLE_KERNELS = ("nearest", "trilinear")
# From this factor on, a pass is polyphase: the core's GEMM vectorises over output
# channels (the phases), and fewer than a SIMD vector of them (16 float32 with AVX-512)
# would run its scalar remainder loop; below it the strided form, whose per-row tap scan
# (O(k) = O(2s)) is then short. A fixed number: the form, hence the last bits, depends on
# the factor only, never on the machine or the chunk.
MIN_CHANNEL_PHASES = 16
# A pass over at most this many voxels reads one edge-replicated copy of them rather than
# a view plus two thin copies at the borders: three compiled calls cost more than the copy.
MAX_COPIED_VOXELS = 1 << 16


def triangle(factor, size=None):
    """Taps of linear interpolation along one axis, ``(size,)`` float64: ``2*factor`` taps
    for even factors, ``2*factor - 1`` for odd ones by default (``tconv3d.upsampling``
    docstring)."""
    size = 2 * factor - factor % 2 if size is None else size
    u = (np.arange(size) - (size - factor) // 2 + 0.5) / factor - 0.5
    return np.maximum(0.0, 1.0 - np.abs(u))


def named_taps(name, factor):
    """The three 1-D kernels of the separable kernel ``name`` at ``factor``."""
    if name == "nearest":
        return tuple(np.ones(s) for s in factor)
    return tuple(triangle(s) for s in factor)


def outer(taps):
    """Outer product of three 1-D kernels: ``(kd, kh, kw)``."""
    return taps[0][:, None, None] * taps[1][None, :, None] * taps[2][None, None, :]


def embed(taps, factor):
    """``taps`` zero-padded to ``factor`` taps if shorter (as ``_conv_plan.embed_small``)."""
    k = len(taps)
    front = max(0, -((k - factor) // 2))
    return np.pad(taps, (front, max(0, factor - k - front)))


def polyphase(taps, factor):
    """``(W, shift)`` of the polyphase form of ``taps`` at stride ``factor``.

    ``W`` of shape ``(M, factor)``, ``W[m, r']`` the tap that output ``Q*s + r'`` gives to
    input ``Q + shift - m`` (module docstring). All-zero rows are trimmed.
    """
    s = factor
    taps = embed(np.asarray(taps, np.float64), s)
    k = len(taps)
    a, b = divmod((k - s) // 2, s)            # output o is full position o + c, c = a*s + b
    M = -(-k // s)
    W = np.zeros((M, s))
    W.flat[:k] = taps                          # W[m, r] = taps[m*s + r]
    if b == 0:  # output Q*s + r is full position (Q + a)*s + r
        shift = a
    else:  # phase r' reads full phase r' + b of block Q + a, or r' + b - s of Q + a + 1
        rotated = np.zeros((M + 1, s))
        rotated[1:, :s - b] = W[:, b:]
        rotated[:M, s - b:] = W[:, :b]
        W, shift = rotated, a + 1
    used = np.flatnonzero(W.any(axis=1))
    if len(used) == 0:
        return np.zeros((1, s)), 0
    return W[used[0]:used[-1] + 1], shift - int(used[0])


@dataclasses.dataclass(frozen=True)
class AxisPass:
    """The pass along ``axis``: ``form`` "strided", "polyphase" or "repeat", ``factor``,
    ``kernel`` (packed for the core: ``(k, 1, 1, 1, 1)``/``(1, 1, k, 1, 1)`` strided,
    ``(M, 1, 1, 1, s)``/``(1, 1, M, 1, s)`` polyphase, for depth or height/width; ``None``
    for repeat) and ``offset`` (``c`` strided, ``shift`` polyphase, 0 for repeat)."""
    axis: int
    form: str
    factor: int
    kernel: object
    offset: int

    @property
    def taps(self):
        if self.kernel is None:
            return 1
        return self.kernel.shape[0] if self.axis < 2 else self.kernel.shape[2]

    def reach(self, first, stop):
        """Inputs ``[lo, hi)`` (edge-replicated past the volume) that the outputs
        ``[first, stop)`` read (module docstring)."""
        s, k, c = self.factor, self.taps, self.offset
        if self.form == "strided":
            return -(-(first + c - k + 1) // s), (stop - 1 + c) // s + 1
        return first // s + c - k + 1, -(-stop // s) + c      # polyphase, repeat

    def inside(self, n):
        """The outputs ``[lo, hi)`` that read only voxels of a volume of ``n``."""
        s, k, c = self.factor, self.taps, self.offset
        if self.form == "strided":
            return k - c - s, n * s - c
        return (k - 1 - c) * s, (n - c) * s                  # polyphase, repeat


_PREPARED = {}   # (taps, factor, axis, dtype) -> AxisPass: named kernels repeat (every
                 # transform of every fitted upsampler), so their passes are kept


def axis_pass(taps, factor, axis, dtype=np.float64):
    """The :class:`AxisPass` of ``taps`` at ``factor`` along ``axis`` in ``dtype``, or
    ``None`` for the identity (factor 1, the single tap 1)."""
    taps = np.asarray(taps, np.float64)
    key = (taps.tobytes(), int(factor), axis, np.dtype(dtype).str)
    if key not in _PREPARED:
        if len(_PREPARED) > 256:
            _PREPARED.clear()
        _PREPARED[key] = _axis_pass(taps, int(factor), axis, np.dtype(dtype))
    return _PREPARED[key]


def _axis_pass(taps, s, axis, dtype):
    """:func:`axis_pass`, computed."""
    taps = embed(taps, s)
    if s == 1 and len(taps) == 1 and taps[0] == 1:
        return None
    if len(taps) == s and (taps == 1).all():   # the box of nearest: a copy
        return AxisPass(axis, "repeat", s, None, 0)
    if s < MIN_CHANNEL_PHASES:
        w, offset, form = taps[:, None], (len(taps) - s) // 2, "strided"
    else:
        w, offset = polyphase(taps, s)
        form = "polyphase"
    shape = (len(w), 1, 1, 1, w.shape[1]) if axis < 2 else (1, 1, len(w), 1, w.shape[1])
    return AxisPass(axis, form, s, np.ascontiguousarray(w.reshape(shape), dtype), offset)


def order(factor):
    """The axes in the order of their passes: smallest factor first (the intermediate
    volumes stay smallest), then width, height, depth."""
    return sorted(range(3), key=lambda a: (factor[a], -a))


@dataclasses.dataclass(frozen=True)
class SeparableChunk:
    """The output chunk ``ranges`` (per axis ``(first, stop)``) and the input voxels
    ``reads`` (per axis ``(lo, hi)``, inside the volume of ``in_spatial`` voxels) its
    passes read."""
    in_spatial: tuple
    ranges: tuple
    reads: tuple


class SeparablePlan:
    """How to compute any chunk of the volume upsampled by a separable kernel.

    Parameters
    ----------
    in_spatial : tuple of 3 ints
        Voxels of the volume per axis.
    passes : tuple of 3 AxisPass or None
        From :func:`axis_pass`, per axis (any dtype: only the geometry is used).
    factor : tuple of 3 ints
    """

    def __init__(self, in_spatial, passes, factor):
        self.in_spatial, self.factor = tuple(in_spatial), tuple(factor)
        self.passes = tuple(passes)
        self.out_spatial = tuple(n * s for n, s in zip(in_spatial, factor))

    def reach(self, axis, first, stop):
        """Inputs ``[lo, hi)`` (edge-replicated past the volume) that the outputs
        ``[first, stop)`` of ``axis`` read."""
        step = self.passes[axis]
        return (first, stop) if step is None else step.reach(first, stop)

    def reads(self, axis, first, stop):
        """The voxels of the volume that the outputs ``[first, stop)`` of ``axis`` read
        (at least the nearest one)."""
        lo, hi = self.reach(axis, first, stop)
        n = self.in_spatial[axis]
        lo = min(max(lo, 0), n - 1)
        return lo, max(min(hi, n), lo + 1)

    def chunk(self, ranges):
        """The :class:`SeparableChunk` of the outputs ``ranges``."""
        ranges = tuple(tuple(int(v) for v in r) for r in ranges)
        for step, (first, stop) in zip(self.passes, ranges):
            if step is not None and step.form == "polyphase" \
                    and (first % step.factor or stop % step.factor):
                raise ValueError(f"a polyphase pass computes whole blocks of {step.factor} "
                                 f"outputs, not [{first}, {stop})")
        reads = tuple(self.reads(a, *r) for a, r in enumerate(ranges))
        return SeparableChunk(self.in_spatial, ranges, reads)


def prepare(taps, factor, dtype):
    """The operator of :func:`run`: per axis its :class:`AxisPass` in ``dtype`` (or
    ``None``)."""
    return tuple(axis_pass(t, s, a, dtype) for a, (t, s) in enumerate(zip(taps, factor)))


def _view(a, shape):
    """``a`` reshaped to ``shape`` without a copy (the output is written through it);
    ``ValueError`` if that needs a copy."""
    try:
        return np.reshape(a, shape, copy=False)
    except TypeError:   # numpy < 2.1 has no `copy`: a reshape that copied shares nothing
        view = a.reshape(shape)
        if view.size and not np.may_share_memory(view, a):
            raise ValueError("the reshape needs a copy") from None
        return view


def _call(piece, target, step, first, src_lo, num_threads):
    """One compiled call: the outputs ``target`` (``(before, L, after)``, outputs
    ``first ..`` of the axis) from ``piece`` (``(before, rows, after)``, inputs ``src_lo
    ..``, edge-replicated)."""
    before, length, after = target.shape
    rows, s, k, kernel = piece.shape[1], step.factor, step.taps, step.kernel
    if step.form == "strided":   # full position of output o: o + c; of input i: i*s
        channels, out, crop, strides = 1, length, first + step.offset - src_lo * s, s
        y = target
    else:                        # blocks Q: full position Q + shift - (M - 1) - src_lo
        channels, out, crop, strides = s, length // s, k - 1, 1
        y = _view(target, (before, out, s, after)).transpose(0, 1, 3, 2)
    if step.axis < 2:   # logical (before, rows, 1, after, 1) -> (before, out, 1, after, ch)
        x5 = piece.reshape(before, rows, 1, after, 1)
        y5 = _view(y, (before, out, 1, after, 1)) if channels == 1 else y[:, :, None]
        in_sp, out_sp, crop3, st = (rows, 1, after), (out, 1, after), (crop, 0, 0), (strides, 1, 1)
    else:               # logical (before, 1, 1, rows, 1) -> (before, 1, 1, out, ch)
        x5 = piece.reshape(before, 1, 1, rows, 1)
        y5 = _view(y, (before, 1, 1, out, channels)) if channels == 1 else y[:, None, None, :, :, 0]
        in_sp, out_sp, crop3, st = (1, 1, rows), (1, 1, out), (0, 0, crop), (1, 1, strides)
    geom = Geometry(before, 1, channels, in_sp, kernel.shape[:3], st, (1, 1, 1), out_sp,
                    crop3, True)
    _ops.forward_packed(x5, kernel, None, geom, num_threads, out=y5)   # into the view


def _pass(v, step, lo, n, ranges, num_threads, output, out=None):
    """The pass ``step`` over the volumes ``v`` ``(N, A0, A1, A2)``, whose rows along its
    axis are the volume's voxels ``[lo, lo + v.shape[1 + axis])`` (``n`` in all): the
    outputs ``ranges = (first, stop)`` of the axis, in ``out`` if given and its layout
    allows, else a new C-contiguous array."""
    axis, (first, stop) = step.axis, ranges
    shape = list(v.shape)
    shape[1 + axis] = stop - first
    before, after = math.prod(shape[:1 + axis]), math.prod(shape[2 + axis:])
    try:
        if out is None:
            raise ValueError
        y, y3 = out, _view(out, (before, stop - first, after))
    except ValueError:   # no out, or one whose axes do not merge
        check_allocation(shape, v.dtype, output)
        y = np.empty(shape, v.dtype)
        y3 = _view(y, (before, stop - first, after))
    v3 = v.reshape(before, v.shape[1 + axis], after)
    if step.form == "repeat":       # output o is input o // s: inside the volume
        s = step.factor
        q0, q1 = first // s, -(-stop // s)
        src = v3[:, q0 - lo:q1 - lo]
        if after > 1 and first % s == 0 and stop % s == 0:
            _view(y3, (before, q1 - q0, s, after))[...] = src[:, :, None, :]
        else:
            y3[...] = np.repeat(src, s, axis=1)[:, first - q0 * s:stop - q0 * s]
        return y
    inner_lo, inner_hi = step.inside(n)
    if step.form == "polyphase":    # whole blocks
        s = step.factor
        inner_lo, inner_hi = -(-inner_lo // s) * s, inner_hi // s * s
    inner_lo = min(max(first, inner_lo), stop)
    inner_hi = max(min(stop, inner_hi), inner_lo)
    parts = ((first, inner_lo), (inner_lo, inner_hi), (inner_hi, stop))
    if v.size <= MAX_COPIED_VOXELS:
        parts = ((first, stop),)
    for o0, o1 in parts:
        if o1 <= o0:
            continue
        src_lo, src_hi = step.reach(o0, o1)
        if 0 <= src_lo and src_hi <= n:
            piece = v3[:, src_lo - lo:src_hi - lo]
        else:
            piece = np.take(v3, np.clip(np.arange(src_lo, src_hi), 0, n - 1) - lo, axis=1)
        _call(piece, y3[:, o0 - first:o1 - first], step, o0, src_lo, num_threads)
    return y


def _repeat(v, ranges, factor, lows, out, output):
    """Nearest (every pass a copy) on whole blocks: ``np.repeat`` along width, then one
    broadcast copy for depth and height, into ``out`` if given (fewer passes over the
    output than one per axis)."""
    sd, sh, sw = factor
    q = [(first // s - lo, stop // s - lo) for (first, stop), s, lo in zip(ranges, factor, lows)]
    src = v[:, q[0][0]:q[0][1], q[1][0]:q[1][1], q[2][0]:q[2][1]]
    rows = np.repeat(src, sw, axis=3) if sw > 1 else src
    n, qd, qh, width = rows.shape
    shape = (n, qd * sd, qh * sh, width)
    try:
        if out is None:
            raise ValueError
        y = out[..., 0]
        view = _view(y, (n, qd, sd, qh, sh, width))
    except ValueError:   # no out, or one whose axes do not merge
        check_allocation(shape, v.dtype, output)
        y = np.empty(shape, v.dtype)
        view = _view(y, (n, qd, sd, qh, sh, width))
    view[...] = rows[:, :, None, :, None, :]
    if out is not None:
        if not np.shares_memory(y, out):
            out[..., 0] = y
        return out
    return y[..., None]


def run(x, chunk, operator, num_threads, *, output="output", side_by_side=False, out=None):
    """Compute one chunk of the upsampled single-channel volumes.

    Parameters
    ----------
    x : ndarray of shape (n, d, h, w, 1)
        The input voxels ``chunk.reads`` of each volume, float32 or float64.
    chunk : SeparableChunk
    operator : tuple
        From :func:`prepare` with ``x.dtype``.
    num_threads : int or None
        OpenMP threads of each pass.
    output : str
        How a too-large output is named in the ``MemoryError``.
    side_by_side : bool
        Unused (the passes depend on each other).
    out : ndarray of shape (n, D, H, W, 1), optional
        Where to write the chunk: the last pass writes straight into it when its layout
        allows.

    Returns
    -------
    y : ndarray of shape (n, D, H, W, 1)
        The chunk of ``x.dtype``: ``out``, or new and C-contiguous.
    """
    num_threads = normalize_num_threads(num_threads)
    lows = [lo for lo, _ in chunk.reads]
    index = [slice(None)] * 4          # identity axes: the chunk's own voxels
    for axis, step in enumerate(operator):
        if step is None:
            first, stop = chunk.ranges[axis]
            index[1 + axis] = slice(first - lows[axis], stop - lows[axis])
    v = x[(*index, 0)]
    factor = tuple(1 if step is None else step.factor for step in operator)
    passes = [operator[a] for a in order(factor) if operator[a] is not None]
    if passes and all(step.form == "repeat" for step in passes) and all(
            first % s == 0 and stop % s == 0 for (first, stop), s in zip(chunk.ranges, factor)):
        lows = [first if step is None else lo
                for step, (first, _), lo in zip(operator, chunk.ranges, lows)]
        return _repeat(v, chunk.ranges, factor, lows, out, output)
    last = None if out is None else out[..., 0]
    for i, step in enumerate(passes):
        a = step.axis
        v = _pass(v, step, lows[a], chunk.in_spatial[a], chunk.ranges[a], num_threads,
                  output, last if i == len(passes) - 1 else None)
    if out is not None:
        if v is not last:
            last[...] = v
        return out
    if not passes:
        check_allocation(v.shape, x.dtype, output)
        v = np.array(v, dtype=x.dtype, order="C")
    return v[..., None]
