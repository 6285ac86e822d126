"""bfloat16 operands around the compiled kernels: the pairs of channels the AVX512_BF16
forward multiplies, the exact widening to float32 of the other paths, and the one
rounding of float32 results to bfloat16. The dtype rule
itself is :func:`tconv3d._validation.working_dtype` / ``compute_dtype``; :mod:`tconv3d._ops`
decides where these run."""
import numpy as np

from . import _kernels, _threads
from ._layouts import channels_last
from ._validation import is_bfloat16, normalize_num_threads


def runs_on_pairs(geom, gradient=None):
    """Whether a bfloat16 forward (``gradient`` None) or gradient ("input", "kernel")
    runs on bfloat16 pairs (``_kernels.bf16_variant()`` "avx512_bf16"): on CPUs that
    have them, for every problem but the channel-wise ones, which take no GEMM. The
    forward pairs input channels, the input gradient filters, the kernel gradient voxels
    (:func:`voxel_pairs`)."""
    cin, cout = geom.in_channels // geom.groups, geom.filters // geom.groups
    if gradient == "kernel":
        channel_wise = cin == 1 and cout == 1
    else:   # one pair summed into one output channel
        summed, kept = (cout, cin) if gradient == "input" else (cin, cout)
        channel_wise = summed <= 2 and kept == 1
    return _kernels.bf16_variant() == "avx512_bf16" and not channel_wise


def bfloat16_pairs(a, groups, num_threads=1):
    """The channels (last axis) of a bfloat16 array as 32-bit words of two consecutive
    channels of a group (low half the even one; a zero channel ends a group of odd size),
    C-contiguous and viewed as float32: the kernels move the words as they move floats,
    and only the bfloat16 micro-kernel multiplies their halves. ``a`` is 5-D (the logical
    input) or the kernel, of any strides; a C-contiguous ``a`` with groups of even size
    is its own words (a read-only view: the kernels never write their operands)."""
    *lead, c = a.shape
    per_group = c // groups
    if per_group % 2 == 0 and a.flags.c_contiguous and a.ctypes.data % 4 == 0:
        words = a.view(np.uint16).view(np.float32)   # already the words, in place
        words.flags.writeable = False
        return words
    halves = np.empty((*lead, groups * (per_group + per_group % 2)), np.uint16)
    _kernels.bfloat16_pairs(a.view(np.uint16).reshape(-1, *a.shape[-4:]),
                            halves.reshape(-1, *halves.shape[-4:]), groups,
                            _threads.team_size(num_threads, a.size))
    return halves.view(np.float32)


def filter_pairs(kernel, groups, num_threads=1):
    """Keras' (kd, kh, kw, F/G, C) bfloat16 kernel as the input gradient's tap matrices
    (``_layouts.by_group``'s layout) on pairs of filters: (kd, kh, kw, G*E, C/G) float32
    words, E = F/G / 2 rounded up, word (q, c) of group g holding filters 2q and 2q + 1
    (a zero one past an odd F/G) of its input channel c; as :func:`bfloat16_pairs`
    holds the output gradient's filters."""
    kd, kh, kw, f, c = kernel.shape
    matrices = kernel.view(np.uint16).reshape(kd * kh * kw, f, groups, c // groups)
    halves = np.empty((kd * kh * kw, groups, -(-f // 2), 2 * (c // groups)), np.uint16)
    _kernels.bfloat16_row_pairs(matrices.transpose(0, 2, 1, 3), halves,
                                _threads.team_size(num_threads, kernel.size))
    return halves.view(np.float32).reshape(kd, kh, kw, -1, c // groups)


def channels_inner(a, num_threads=1, pairs=None):
    """The logical (N, D, H, W, C) bfloat16 ``a`` with contiguous channels: itself, the
    halves of :func:`bfloat16_pairs`' words ``pairs`` made from it when no group of
    channels was padded, or a compiled copy (:func:`tconv3d._layouts.channels_last`)."""
    if a.strides[-1] != a.itemsize and pairs is not None \
            and 2 * pairs.shape[-1] == a.shape[-1]:
        return pairs.view(a.dtype)
    return channels_last(a, num_threads)


def voxel_pairs(a, step, num_threads=1):
    """The logical (N, D, H, W, C) bfloat16 ``a`` as (N, D, H, 2*step*E, C) float32 words
    of two voxels ``step`` apart along the width, E = W / (2*step) rounded up: from each
    phase r < 2*step in turn, word q holds voxels r + 2q*step and r + (2q+1)*step (a zero
    one past the row), as the kernel gradient reduces over (``_kernels._pair_word``)."""
    n, d, h, w, c = a.shape
    halves = np.empty((n, d, h, 2 * step, -(-w // (2 * step)), 2 * c), np.uint16)
    _kernels.bfloat16_voxel_pairs(channels_inner(a, num_threads).view(np.uint16), halves,
                                  step, _threads.team_size(num_threads, a.size))
    return halves.view(np.float32).reshape(n, d, h, -1, c)


def rounded(y, dtype, out=None, num_threads=None):
    """``y`` (float32 sums of bfloat16 operands) as ``dtype``, into ``out`` if given:
    each element rounded once, to nearest even (ml_dtypes' cast; compiled and parallel
    for a C-contiguous ``y``, 10x faster than it)."""
    if y.dtype == dtype:
        return y
    if not (is_bfloat16(dtype) and y.dtype == np.float32 and y.flags.c_contiguous):
        if out is None:
            return y.astype(dtype)
        out[...] = y
        return out
    direct = out is not None and out.flags.c_contiguous
    rounded = out if direct else np.empty(y.shape, dtype)
    _kernels.round_bfloat16(y.reshape(-1), rounded.view(np.uint16).reshape(-1),
                            _threads.team_size(normalize_num_threads(num_threads), y.size))
    if out is None or direct:
        return rounded
    out[...] = rounded
    return out


def widened(a, num_threads=None):
    """A bfloat16 array as float32 (exact), in its own memory order; compiled and
    parallel for contiguous arrays (ml_dtypes' cast is 6x slower)."""
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        return a.astype(np.float32)
    wide = np.empty_like(a, dtype=np.float32)
    _kernels.widen_bfloat16(a.view(np.uint16).ravel(order="K"), wide.ravel(order="K"),
                            _threads.team_size(normalize_num_threads(num_threads), a.size))
    return wide
