"""Chunked transposed convolution and volume upsampling on Dask arrays.

Install with ``pip install "tconv3d[dask]"``; ``import tconv3d`` alone never imports dask.

>>> import dask.array as da, numpy as np, tconv3d.dask
>>> x = da.ones((2, 16, 16, 16, 4), chunks=(1, 5, 16, 16, 4))
>>> w = np.ones((3, 3, 3, 8, 4))
>>> y = tconv3d.dask.conv_transpose3d(x, w, strides=2, padding="same")
>>> y.shape, y.chunks[1]
((2, 32, 32, 32, 8), (10, 10, 10, 2))

Each output chunk is one task: it gathers the input region its voxels read (its own input
chunk plus a halo taken from the neighbouring chunks) and runs the compiled forward kernel
with a geometry that lands exactly on the chunk. The computed array is **bitwise equal** to
the in-memory :func:`tconv3d.conv_transpose3d` (and ``VolumeUpsampler.transform``) for any
chunking, because every output element is summed by the same kernel over the same taps in
the same order: bias first, then the contributing taps in ascending (depth, height, width)
order, each a contraction over input channels in order. Only input voxels that exist in
the whole volume are ever read, so no extra zero terms are added either.

Chunks and halos
----------------
Per spatial axis, with input length ``n``, kernel ``k``, stride ``s``, dilation ``d``, output
length ``O`` and left crop ``c`` (from :func:`tconv3d._validation.make_geometry`), output
``o`` is full-length position ``p = o + c`` and receives ``x[i] * w[j]`` for every
``i*s + j*d == p`` with ``0 <= j < k`` and ``0 <= i < n``, so::

    i in [ceil((o + c - (k - 1)*d) / s), floor((o + c) / s)]

An output chunk ``[o_lo, o_hi)`` therefore reads the inputs ``[i_lo, i_hi)``::

    i_lo = max(0, min(ceil((o_lo + c - (k - 1)*d) / s), floor((o_lo + c) / s)))
    i_hi = min(n, floor((o_hi - 1 + c) / s) + 1)

(the ``min`` with ``floor((o_lo + c)/s)`` only matters when no input reaches ``o_lo``; it
keeps ``i_lo*s <= o_lo + c``, so the local crop below is never negative). On the input slice
``x[i_lo:i_hi]``, local input ``i' = i - i_lo`` lands on local position ``p - i_lo*s``, so the
chunk is the transposed convolution of that slice with output length ``o_hi - o_lo`` and
crop ``o_lo + c - i_lo*s``, which the compiled kernel computes directly: positions past the
slice's full length get the bias only, exactly as past ``L`` in the whole volume.

Output chunk boundaries are the input chunk boundaries ``b`` mapped to ``b*s - c``, clipped to
``[0, O]`` (the last chunk runs to ``O``; empty chunks are dropped). Then
``i_hi = b_next`` and ``i_lo = b - floor((k - 1)*d / s)``: a chunk reads its own input chunk
plus a halo of ``floor((k - 1)*d / s)`` voxels on the left only, gathered from as many
preceding chunks as needed (chunks smaller than the kernel are fine). Python's ``//`` floors
for negative numerators, so the arithmetic above is exact for every sign.

:func:`upsample` runs ``VolumeUpsampler``'s upsampling plan (``tconv3d._plan``) on each
chunk: output chunks are the input chunks times the factor, each task reads the voxels of
the volume its outputs read (its input chunk plus a halo) and computes its chunk with the
same passes as ``transform``, which computes the chunk that is the whole volume.

Threads
-------
Each task calls the compiled kernel with ``num_threads`` threads (default 1), so a Dask
worker running several tasks at once does not oversubscribe its cores: give a worker as
many Dask threads as cores, or one Dask thread and ``num_threads`` OpenMP threads.
"""
import bisect
import dataclasses
from itertools import product

import numpy as np

try:
    import dask.array as da
    from dask.base import is_dask_collection, tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "tconv3d.dask needs Dask with its array module, an optional extra of tconv3d: "
        "install it with `pip install \"tconv3d[dask]\"` (or `pip install \"dask[array]\"`)."
    ) from exc

from . import _ops, _plan
from ._layouts import pack_kernel
from ._validation import (as_array, check_allocation, check_bias_shape, compute_dtype,
                          make_geometry, normalize_num_threads, without_dtype, working_dtype)

__all__ = ["conv_transpose3d", "upsample"]


# ------------------------------------------------------------------------------ regions

@dataclasses.dataclass(frozen=True)
class _Region:
    """Where a task's input region comes from: ``axes``, the positions of the three spatial
    axes; ``parts``, for each, the slices of the consecutive input blocks it spans."""
    axes: tuple
    parts: tuple


def _as_dask(x, name):
    if not is_dask_collection(x):
        x = da.asarray(as_array(x, name))
    if not isinstance(x, da.Array):
        raise TypeError(f"`{name}` must be a dask array (or array-like), got "
                        f"{type(x).__name__}.")
    if any(np.isnan(n) for n in x.shape):
        raise ValueError(f"`{name}` has unknown chunk sizes (shape {x.shape}); call "
                         f"`{name}.compute_chunk_sizes()` first.")
    return x


def _bounds(chunks):
    """Block boundaries of one axis: ``[0, c0, c0 + c1, ..., n]``."""
    return [0, *np.cumsum(chunks, dtype=np.int64).tolist()]


def _parts(bounds, lo, hi):
    """Blocks of an axis overlapping ``[lo, hi)``, as ``[(block, slice within it)]``; at
    least one voxel (a chunk that reads no input still reads the nearest one)."""
    lo = min(max(lo, 0), bounds[-1] - 1)
    hi = max(min(hi, bounds[-1]), lo + 1)
    out = []
    block = bisect.bisect_right(bounds, lo) - 1
    while block < len(bounds) - 1 and bounds[block] < hi:
        start, stop = max(lo, bounds[block]), min(hi, bounds[block + 1])
        if stop > start:  # skips empty blocks
            out.append((block, slice(start - bounds[block], stop - bounds[block])))
        block += 1
    return out


def _assemble(pieces, region):
    """The input region of a task from its blocks ``pieces[d][h][w]`` (no copy when it
    lies in one block)."""
    first = pieces[0][0][0]
    counts = [len(p) for p in region.parts]
    if counts == [1, 1, 1]:
        index = [slice(None)] * first.ndim
        for ax, parts in zip(region.axes, region.parts):
            index[ax] = parts[0]
        return first[tuple(index)]
    shape = list(first.shape)
    offsets = []
    for ax, parts in zip(region.axes, region.parts):
        sizes = [s.stop - s.start for s in parts]
        shape[ax] = sum(sizes)
        offsets.append(np.cumsum([0, *sizes]).tolist())
    out = np.empty(shape, first.dtype)
    for idx in product(*(range(c) for c in counts)):
        src = [slice(None)] * first.ndim
        dst = [slice(None)] * first.ndim
        for ax, parts, off, i in zip(region.axes, region.parts, offsets, idx):
            src[ax] = parts[i]
            dst[ax] = slice(off[i], off[i + 1])
        out[tuple(dst)] = pieces[idx[0]][idx[1]][idx[2]][tuple(src)]
    return out


def _graph(name, x, channel_axis, windows, block_task, constants):
    """The graph of one task per output block.

    ``windows[a]``: the output chunks of spatial axis ``a``, as ``(size, input range
    [lo, hi) read, local numbers)``; ``block_task(keys, region, local numbers of the three
    axes, batch)`` builds the task of a block.
    ``constants`` (key: value) are added once, so that the kernel is sent to a worker
    once rather than pickled into every task.
    """
    axes = tuple(ax for ax in range(1, 5) if ax != channel_axis)
    in_bounds = [_bounds(x.chunks[ax]) for ax in axes]

    def key(name, batch_block, spatial_blocks):
        k = [name, batch_block, *spatial_blocks]
        k.insert(1 + channel_axis, 0)
        return tuple(k)

    dsk = dict(constants)
    for b, batch in enumerate(x.chunks[0]):
        for t in product(*(range(len(w)) for w in windows)):
            chosen = [w[i] for w, i in zip(windows, t)]
            parts = [_parts(bounds, *win[1]) for bounds, win in zip(in_bounds, chosen)]
            blocks = [[i for i, _ in p] for p in parts]
            keys = [[[key(x.name, b, (i, j, k)) for k in blocks[2]] for j in blocks[1]]
                    for i in blocks[0]]
            region = _Region(axes, tuple(tuple(s for _, s in p) for p in parts))
            dsk[key(name, b, t)] = block_task(keys, region, [win[2] for win in chosen], batch)
    return HighLevelGraph.from_collections(name, dsk, dependencies=[x])


def _constants(name, kernel, bias):
    """Graph entries holding the kernel and bias once (not copied into every task), and
    their keys; the bias key is None without a bias."""
    constants = {f"{name}-kernel": kernel}
    if bias is not None:
        constants[f"{name}-bias"] = bias
    return constants, f"{name}-kernel", None if bias is None else f"{name}-bias"


# ------------------------------------------------------------------------------- tasks

def _conv_chunk(pieces, region, wt, bias, geom, num_threads):
    """One output chunk of :func:`conv_transpose3d`."""
    check_allocation(geom.output_shape, wt.dtype, "output chunk")
    return _ops.forward_packed(_assemble(pieces, region), wt, bias, geom, num_threads)


def _upsample_chunk(pieces, region, upsampling, chunk, num_threads):
    """One output chunk of :func:`upsample`: the :class:`tconv3d._plan.Upsampling` run on
    the plan of the chunk ``chunk`` and the voxels it reads."""
    return upsampling.run(_assemble(pieces, region), chunk, num_threads,
                          output="output chunk")


# ----------------------------------------------------------------------- public functions

def conv_transpose3d(x, kernel, bias=None, *, strides=1, padding="valid",
                     output_padding=None, dilation_rate=1, data_format="channels_last",
                     num_threads=1):
    """Lazy 3D transposed convolution of a chunked :class:`dask.array.Array`.

    Parameters
    ----------
    x : dask.array.Array of shape (batch, depth, height, width, in_channels)
        Or ``(batch, in_channels, depth, height, width)`` with
        ``data_format="channels_first"``. Chunked along batch and/or spatial axes in any
        sizes; the channel axis is rechunked to one chunk if it is not. Other array-likes
        are wrapped as a single chunk.
    kernel : array-like of shape (kernel_depth, kernel_height, kernel_width, filters, in_channels)
        In memory (it is sent to every task once).
    bias : array-like of shape (filters,), optional
        Added to every output position of each filter.
    strides : int or tuple of 3 ints, default=1
        As in :func:`tconv3d.conv_transpose3d`.
    padding : {"valid", "same"} or int or tuple of 3 ints, default="valid"
        As in :func:`tconv3d.conv_transpose3d` (Keras' or PyTorch's).
    output_padding : int or tuple of 3 ints, optional
        As in :func:`tconv3d.conv_transpose3d`.
    dilation_rate : int or tuple of 3 ints, default=1
        As in :func:`tconv3d.conv_transpose3d`.
    data_format : {"channels_last", "channels_first"}, default="channels_last"
        As in :func:`tconv3d.conv_transpose3d`.
    num_threads : int, default=1
        OpenMP threads of the compiled kernel in each task (``None``: the worker's OpenMP
        default). Keep 1 when the Dask workers run one task per core.

    Returns
    -------
    dask.array.Array of shape (batch, out_depth, out_height, out_width, filters)
        Or channels-first; float32 when every input is float32, float64 otherwise. Its
        batch chunks are ``x``'s; its spatial chunk boundaries are ``x``'s times the stride
        (see the module docstring). Computed, it is bitwise equal to
        ``tconv3d.conv_transpose3d`` on the whole array.

    Raises
    ------
    TypeError
        If ``x`` is neither a dask array nor array-like; if ``x``, ``kernel`` or ``bias``
        is a masked array or holds anything but real numbers.
    ValueError
        If ``x`` has unknown chunk sizes (``x.compute_chunk_sizes()`` first); for the
        shapes and arguments :func:`tconv3d.conv_transpose3d` refuses (checked when the
        graph is built, from the shapes alone); or if ``num_threads`` is not None or an
        int >= 1.
    MemoryError
        When computed, if a task cannot allocate its chunk or workspace.

    See Also
    --------
    tconv3d.conv_transpose3d : The in-memory computation.

    Examples
    --------
    >>> import numpy as np, dask.array as da, tconv3d, tconv3d.dask
    >>> x = da.ones((2, 4, 4, 4, 3), chunks=(1, 2, 4, 4, 3), dtype=np.float32)
    >>> w = np.ones((2, 2, 2, 5, 3), dtype=np.float32)
    >>> y = tconv3d.dask.conv_transpose3d(x, w, strides=2)
    >>> y.shape, y.dtype
    ((2, 8, 8, 8, 5), dtype('float32'))
    >>> y.chunks
    ((1, 1), (4, 4), (8,), (8,), (5,))

    Computed, the same bits as in memory:

    >>> result = y.compute()
    >>> np.array_equal(result, tconv3d.conv_transpose3d(x.compute(), w, strides=2))
    True
    """
    weak = without_dtype(("kernel", kernel), ("bias", bias))
    x = _as_dask(x, "x")
    kernel = as_array(kernel, "kernel")
    extra = () if bias is None else (("bias", as_array(bias, "bias")),)
    dtype = working_dtype(("x", x), ("kernel", kernel), *extra, weak=weak)
    geom = make_geometry(x.shape, kernel.shape, strides, padding, output_padding,
                         dilation_rate, data_format)
    if bias is not None:
        check_bias_shape(extra[0][1], geom.filters)
    if num_threads is not None:
        num_threads = normalize_num_threads(num_threads)
    channel_axis = 4 if geom.channels_last else 1
    if x.numblocks[channel_axis] > 1:
        x = x.rechunk({channel_axis: -1})

    computed = compute_dtype(dtype)   # bfloat16: float32 chunks, rounded at the end
    wt = pack_kernel(kernel, computed)
    b = None if bias is None else np.require(extra[0][1], computed, "CA")

    windows = []
    spatial_axes = [ax for ax in range(1, 5) if ax != channel_axis]
    for a, ax in enumerate(spatial_axes):
        n, k, s, d = (geom.in_spatial[a], geom.kernel_spatial[a], geom.strides[a],
                      geom.dilation[a])
        out, c = geom.out_spatial[a], geom.crop[a]
        bounds = _bounds(x.chunks[ax])
        # Output chunks start at the input chunks' starts times s, minus the crop. Each
        # reads at least its own input chunk's first voxel b (which lands on output
        # b*s - c), or for a clipped first chunk the inputs up to floor((o_hi - 1 + c)/s).
        edges = sorted({min(max(lo * s - c, 0), out) for lo in bounds[:-1]} | {out})
        axis = []
        for o_lo, o_hi in zip(edges[:-1], edges[1:]):
            # Inputs read by outputs [o_lo, o_hi) (module docstring): i*s + j*d = o + c.
            i_lo = max(0, min(-(-(o_lo + c - (k - 1) * d) // s), (o_lo + c) // s))
            i_hi = min(n, (o_hi - 1 + c) // s + 1)
            axis.append((o_hi - o_lo, (i_lo, i_hi),
                         (i_hi - i_lo, o_hi - o_lo, o_lo + c - i_lo * s)))
        windows.append(axis)

    name = f"conv_transpose3d-{tokenize(x, wt, b, geom, num_threads)}"
    constants, wt_key, b_key = _constants(name, wt, b)

    def block_task(keys, region, local, batch):
        local_geom = dataclasses.replace(
            geom, batch=batch, in_spatial=tuple(v[0] for v in local),
            out_spatial=tuple(v[1] for v in local), crop=tuple(v[2] for v in local))
        return (_conv_chunk, keys, region, wt_key, b_key, local_geom, num_threads)

    graph = _graph(name, x, channel_axis, windows, block_task, constants)
    chunks = [x.chunks[0], *(tuple(w[0] for w in axis) for axis in windows)]
    chunks.insert(channel_axis, (geom.filters,))
    y = da.Array(graph, name, chunks=tuple(chunks), meta=np.empty((0,) * 5, computed))
    return y if computed == dtype else y.astype(dtype)


def upsample(upsampler, X, *, num_threads=None):
    """Lazy ``upsampler.transform(X)`` of a chunked :class:`dask.array.Array`.

    Parameters
    ----------
    upsampler : tconv3d.upsampling.VolumeUpsampler
        Fitted.
    X : dask.array.Array of shape (n_samples, d, h, w), (n_samples, d, h, w, c) or \
(n_samples, n_features)
        As for ``transform``; 4-D and 5-D volumes may be chunked along samples and space in
        any sizes (the channel axis is rechunked to one chunk). Flattened 2-D volumes are
        chunked along samples only.
    num_threads : int, optional
        OpenMP threads of the compiled kernel in each task; ``None`` uses the upsampler's
        ``num_threads`` if set, else 1 (one per Dask thread).

    Returns
    -------
    dask.array.Array
        Of the shape and dtype ``transform`` returns (label maps keep their dtype); its
        sample chunks are ``X``'s and its spatial chunks ``X``'s times the factor.
        Computed, it is bitwise equal to ``upsampler.transform(X.compute())``, non-finite
        voxels included (with ``nan_policy="error"`` they raise ``ValueError`` when a
        chunk reading them is computed).

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If ``upsampler`` is not fitted (a ``ValueError``).
    TypeError
        If ``X`` is neither a dask array nor array-like, or is a masked array.
    ValueError
        When the graph is built: if ``X`` has unknown chunk sizes, does not hold real
        numbers, is not 2-D, 4-D or 5-D or has an empty axis; if 2-D ``X`` has another
        number of features than the fit saw or no ``volume_shape`` fits its rows; if
        ``num_threads`` is not None or an int >= 1. When a chunk is computed: non-finite
        voxels with ``nan_policy="error"``, or (``kernel="label"``) values that are not
        whole numbers.

    See Also
    --------
    tconv3d.upsampling.VolumeUpsampler.transform : Calls this function for dask input.

    Notes
    -----
    ``transform`` computes the chunk of the upsampling plan (``tconv3d._plan``) that is the
    whole volume; each task here computes its chunk of the same plan, with the same
    compiled calls per voxel, so every voxel is summed exactly as in memory.

    Examples
    --------
    >>> import numpy as np, dask.array as da, tconv3d.dask
    >>> from tconv3d.upsampling import VolumeUpsampler
    >>> up = VolumeUpsampler(factor=2, kernel="nearest").fit(np.zeros((1, 2, 2, 2)))
    >>> X = da.arange(16, dtype=np.float32).reshape(2, 2, 2, 2).rechunk((1, 1, 2, 2))
    >>> Y = tconv3d.dask.upsample(up, X)
    >>> Y.shape, Y.dtype
    ((2, 4, 4, 4), dtype('float32'))
    >>> Y.chunks
    ((1, 1), (2, 2), (4,), (4,))
    >>> np.array_equal(Y.compute(), up.transform(X.compute()))
    True

    ``transform`` of a dask array returns the same lazy array:

    >>> type(up.transform(X)).__name__
    'Array'
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(upsampler)
    if num_threads is None:
        num_threads = 1 if upsampler.num_threads is None else upsampler.num_threads
    num_threads = normalize_num_threads(num_threads)
    X = _as_dask(X, "X")
    volumes, ndim = _dask_volumes(upsampler, X)
    if volumes.numblocks[4] > 1:
        volumes = volumes.rechunk({4: -1})
    factor = upsampler.factor_
    upsampling = _plan.from_estimator(upsampler)
    plan = upsampling.plan(volumes.shape[1:4])
    windows = []   # per axis: the input chunks times the factor, and the voxels they read
    for a, s in enumerate(factor):
        bounds = _bounds(volumes.chunks[1 + a])
        windows.append([((hi - lo) * s, plan.reads(a, lo * s, hi * s), (lo * s, hi * s))
                        for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo])

    name = f"volumeupsampler-transform-{tokenize(volumes, upsampling, num_threads)}"
    spec_key = f"{name}-upsampling"

    def block_task(keys, region, local, batch):
        return (_upsample_chunk, keys, region, spec_key, plan.chunk(local), num_threads)

    graph = _graph(name, volumes, 4, windows, block_task, {spec_key: upsampling})
    chunks = (volumes.chunks[0], *(tuple(v[0] for v in axis) for axis in windows),
              volumes.chunks[4])
    out = da.Array(graph, name, chunks=chunks, meta=np.empty((0,) * 5, volumes.dtype))
    return out if ndim == 5 else out.reshape(_plan.layout(out.shape, ndim))


def _dask_volumes(upsampler, X):
    """``X`` as ``(n, d, h, w, c)`` float volumes, and its ndim: the checks of
    ``VolumeUpsampler.transform`` that need no data (the NaN policy is applied when a
    chunk is computed)."""
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must hold real numbers, got dtype {X.dtype}.")
    labels = isinstance(upsampler.kernel, str) and upsampler.kernel == "label"
    if X.dtype not in (np.float32, np.float64) and not labels:   # label maps keep theirs
        X = X.astype(np.float64)
    ndim = _plan.check_volumes_shape(X.shape)
    if ndim != 2:
        return _plan.as_volumes(X), ndim
    expected = getattr(upsampler, "n_features_in_", None)
    if expected is not None and X.shape[1] != expected:
        raise ValueError(f"X has {X.shape[1]} features, but {type(upsampler).__name__} is "
                         f"expecting {expected} features as input.")
    shape = getattr(upsampler, "volume_shape_", None)
    if shape is None:
        shape = _plan.resolve_volume_shape(upsampler.volume_shape, X.shape[1])
    return _plan.as_volumes(X.rechunk({1: -1}), shape), 2
