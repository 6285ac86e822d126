"""Array layouts around the compiled kernels: the kernel as the forward's packed panels
and as the input gradient's per-group matrices, arrays with contiguous channels, and
PyTorch's weight layout. Each is a compiled copy (transpositions in SIMD blocks, in
parallel): NumPy copies a transposition element by element, several times slower, and
for the large kernels of deep layers that cost more than the convolution itself."""
import math

import numpy as np

from . import _kernels, _threads
from ._geometry import keras_to_torch_kernel
from ._validation import check_allocation, normalize_num_threads


def _team(num_threads, size):
    return _threads.team_size(normalize_num_threads(num_threads), size)


def _taps_inner(kernel):
    """Whether Keras' (kd, kh, kw, F/G, C) ``kernel`` is a view of PyTorch's (C, F/G, kd,
    kh, kw) weight layout: its taps contiguous, innermost."""
    kd, kh, kw = kernel.shape[:3]
    return kernel.strides[:3] == tuple(n * kernel.itemsize for n in (kh * kw, kw, 1))


LINE = 64   # bytes of a cache line


def empty_aligned(shape, dtype, alignment=LINE):
    """``np.empty`` starting on a cache line (NumPy aligns to 16 bytes only): the
    micro-kernels' vector loads of rows of whole lines (weights, the kernel gradient's x)
    then never straddle two lines, which cost 8-17% on some layers."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def pack_kernel(kernel, dtype, groups=1, num_threads=1):
    """The forward pass's kernel layout: taps as (Cin, Cout) matrices of each group, in
    column panels (``_kernels.pack_panels``), packed on up to ``num_threads`` threads.

    The forward contracts over input channels innermost.
    """
    kernel = np.require(kernel, dtype, "A")
    kd, kh, kw, f, c = kernel.shape
    packed = empty_aligned((kd, kh, kw, c, f), dtype)
    _kernels.pack_panels(kernel, packed, groups, _team(num_threads, kernel.size))
    return packed


def by_group(kernel, groups, num_threads=1):
    """Keras' (kd, kh, kw, F/G, C) kernel as (kd, kh, kw, G*F/G, C/G) C-contiguous on a
    cache line, the input gradient's layout: each tap a (F/G, C/G) matrix per group, the
    groups side by side (``kernel`` itself if it is that already); from a view of
    PyTorch's weight layout, each group's (filter, channel, tap) matrices transposed; with
    the filters contiguous (PyTorch's channels_last_3d weights), each tap's (channel,
    filter) matrices."""
    kd, kh, kw, f, c = kernel.shape
    per_group = c // groups
    taps = kernel.reshape(-1, f, c) if kernel.strides[3] == kernel.itemsize else None
    filters_inner = (taps is not None and taps.strides[1] == kernel.itemsize and f > 1
                     and taps.flags.aligned)
    if not filters_inner and not (_taps_inner(kernel) and kernel.strides[-1] != kernel.itemsize
                                  and kernel.flags.aligned):
        # (T, G, F/G, 1, C/G) views of Keras' kernel and of the result: a compiled copy
        # in parallel (a deep layer's kernel is megabytes; NumPy's copy runs on one
        # thread while the others wait), unless the kernel is that layout on a line
        grouped = kernel.reshape(kd * kh * kw, f, groups, 1, per_group).transpose(0, 2, 1, 3, 4)
        if grouped.flags.c_contiguous and grouped.ctypes.data % LINE == 0:
            return grouped.reshape(kd, kh, kw, groups * f, per_group)
        out = empty_aligned((kd, kh, kw, groups * f, per_group), kernel.dtype)
        target = out.reshape(grouped.shape)
        if kernel.flags.aligned:
            _kernels.channels_last(grouped, target, _team(num_threads, kernel.size))
        else:   # (C reads whole elements only)
            target[...] = grouped
        return out
    out = empty_aligned((kd * kh * kw, groups, f, per_group), kernel.dtype)
    for g in range(groups):
        part = slice(g * per_group, (g + 1) * per_group)
        if filters_inner:   # per tap a (C/G, F/G) matrix
            source, dest = taps[..., part].transpose(0, 2, 1), out[:, g]
        else:   # out[t, g, f, i] = kernel[t, f, g*C/G + i]: per filter a (C/G, taps) matrix
            source = kernel[..., part].transpose(3, 4, 0, 1, 2).reshape(f, per_group, -1)
            dest = out[:, g].transpose(1, 0, 2)
        _kernels.transpose(source, dest, _team(num_threads, source.size))
    return out.reshape(kd, kh, kw, groups * f, per_group)


def _rows_on_lines(a):
    """Whether every voxel's channels of ``a`` start on a 64-byte cache line."""
    return a.ctypes.data % LINE == 0 and all(s % LINE == 0 for s in a.strides[:-1])


def channels_last(a, num_threads=1, on_lines=False):
    """The logical (N, D, H, W, C) ``a`` with contiguous channels: itself, or a compiled
    copy (``_kernels.channels_last``; bfloat16 arrays as their bits).

    With ``on_lines``, channels that fill whole cache lines also start on one: a copy
    when they do not (NumPy puts large arrays 16 bytes past a line) and memory allows.
    The kernel gradient loads them as vectors; off a line, its loads straddle two lines
    and it takes 8-14% longer."""
    contiguous = a.shape[-1] == 1 or a.strides[-1] == a.itemsize
    if contiguous and not (on_lines and (a.shape[-1] * a.itemsize) % LINE == 0
                           and not _rows_on_lines(a)):
        return a
    if contiguous:
        try:
            check_allocation(a.shape, a.dtype, "a", copy=True)
        except MemoryError:   # only a matter of speed
            return a
    copy = empty_aligned(a.shape, a.dtype)
    bits = np.uint16 if a.dtype.itemsize == 2 else a.dtype
    _kernels.channels_last(a.view(bits), copy.view(bits), _team(num_threads, a.size))
    return copy


def torch_weight(kernel, num_threads=1, out=None):
    """A C-contiguous Keras (kd, kh, kw, F/G, C) kernel (a kernel gradient) as PyTorch's
    (C, F/G, kd, kh, kw) weight, C-contiguous (into ``out`` when given): per filter, a
    (taps, C) matrix transposed."""
    kd, kh, kw, f, c = kernel.shape
    if out is None:
        out = np.empty((c, f, kd, kh, kw), kernel.dtype)
    if kernel.dtype not in (np.float32, np.float64):   # bfloat16: NumPy's copy
        out[...] = keras_to_torch_kernel(kernel)
        return out
    _kernels.transpose(kernel.reshape(-1, f, c).transpose(1, 0, 2),
                       out.reshape(c, f, -1).transpose(1, 0, 2), _team(num_threads, kernel.size))
    return out
