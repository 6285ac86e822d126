"""The upsampling of ``VolumeUpsampler``, executed by ``transform`` and ``tconv3d.dask``.

The definition of the upsampling (an edge-replicated transposed convolution of stride
``factor`` cut to ``n*s`` outputs per axis) is in the ``tconv3d.upsampling`` docstring.
:class:`Upsampling` holds what a fitted upsampler computes (kernel, bias, factor, NaN
policy) and computes any box ("chunk") of its output; the in-memory ``transform`` is the
chunk that is the whole volume and ``tconv3d.dask.upsample`` runs one chunk per task, so
both run the same compiled convolutions on the same inputs and their results are bitwise
equal. The plan of a chunk depends on the kernel:

- a separable kernel (``nearest``, ``trilinear``): ``tconv3d._separable``, one axis at a
  time, at a cost linear in the output size for any factor;
- any other kernel: ``tconv3d._conv_plan`` (strided 3-D convolution plus border slabs);
- ``kernel="label"``: ``tconv3d._labels`` (a trilinear-weighted vote, no convolution).

Non-finite input (``nan_policy``, see :meth:`Upsampling.run`) is handled here, on top of
the plan: every policy is a few runs of the same plan on masks and filled volumes.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _conv_plan, _labels, _separable
from ._validation import check_allocation, is_int, normalize_num_threads

NAN_POLICIES = ("propagate", "ignore", "error")


def check_ignore_kernel(kernel):
    """Refuse ``nan_policy="ignore"`` for a kernel with a negative tap."""
    kernel = np.asarray(kernel)
    if (kernel < 0).any():
        raise ValueError(
            "nan_policy='ignore' computes each output as the kernel-weighted mean of the "
            "finite inputs it reaches, which needs a kernel without negative taps; this "
            f"kernel has {int(np.count_nonzero(kernel < 0))} negative taps (min "
            f"{kernel.min():.3g}). Use nan_policy='propagate', or fit kernel='learned' with "
            "nan_policy='ignore' (the learned taps are then constrained to be >= 0).")


class Upsampling:
    """What a fitted ``VolumeUpsampler`` computes, for volumes of any size.

    Parameters
    ----------
    factor : tuple of 3 ints
    kernel : ndarray of shape (kd, kh, kw), optional
        The kernel (float64).
    taps : tuple of 3 ndarrays, optional
        Instead of ``kernel``: the 1-D kernels, without negative taps, whose outer product
        is the kernel (run one axis at a time; no bias).
    bias : float, default=0.0
    nan_policy : {"propagate", "ignore", "error"}, default="propagate"
        See :meth:`run`.
    label : bool, default=False
        Instead of a kernel: label maps, upsampled by a trilinear-weighted vote
        (``tconv3d._labels``).

    Notes
    -----
    Instances are sent once to each Dask worker; the kernels prepared for a dtype are
    cached on the instance.
    """

    def __init__(self, factor, kernel=None, *, taps=None, bias=0.0, nan_policy="propagate",
                 label=False):
        self.factor = tuple(int(s) for s in factor)
        self.bias = float(bias)
        self.nan_policy = nan_policy
        self.label = bool(label)
        self.kernel = self.taps = None
        self.has_negative = False
        if taps is not None and not self.label:
            self.taps = tuple(np.asarray(t, np.float64) for t in taps)
            if self.bias != 0 or any((t < 0).any() for t in self.taps):
                raise ValueError("separable taps must be >= 0, without a bias")
        elif not self.label:
            self.kernel = _conv_plan.embed_small(np.asarray(kernel, np.float64),
                                                 self.factor)[0]
            self.has_negative = bool((self.kernel < 0).any())
            if nan_policy == "ignore":
                check_ignore_kernel(self.kernel)
        self._operators = {}

    def __dask_tokenize__(self):
        arrays = (self.kernel,) if self.taps is None else self.taps
        return ("tconv3d._plan.Upsampling", self.factor, self.bias, self.nan_policy,
                self.label, *((a.shape, a.tobytes()) for a in arrays if a is not None))

    def __getstate__(self):  # the prepared kernels are rebuilt where they are used
        return {**self.__dict__, "_operators": {}}

    # -- plan ---------------------------------------------------------------------------

    def plan(self, in_spatial):
        """The plan of volumes of ``in_spatial`` voxels: ``.reads(axis, first, stop)``,
        the voxels of the volume the outputs ``[first, stop)`` of ``axis`` read, and
        ``.chunk(ranges)``, the chunk of the outputs ``ranges`` for :meth:`run`."""
        if self.label:
            return _labels.LabelPlan(in_spatial, self.factor)
        if self.taps is not None:
            passes = [_separable.axis_pass(t, s, a)
                      for a, (t, s) in enumerate(zip(self.taps, self.factor))]
            return _separable.SeparablePlan(in_spatial, passes, self.factor)
        return _conv_plan.Plan(in_spatial, self.kernel.shape, self.factor)

    def _operator(self, name, dtype):
        """The prepared kernel ``name`` in ``dtype``: "kernel" (with the bias), "weights"
        (without), "support" (1 on the nonzero taps), "positive", "negative"."""
        key = (name, np.dtype(dtype).str)
        if key in self._operators:
            return self._operators[key]
        if self.taps is not None:  # no negative taps, no bias
            taps = self.taps
            if name in ("support", "positive"):
                taps = [(t != 0).astype(np.float64) for t in taps]
            self._operators[key] = _separable.prepare(taps, self.factor, dtype)
        else:
            kernel, bias = self.kernel, 0.0
            if name == "kernel":
                bias = self.bias
            elif name == "support":
                kernel = (kernel != 0).astype(np.float64)
            elif name == "positive":
                kernel = (kernel > 0).astype(np.float64)
            elif name == "negative":
                kernel = (kernel < 0).astype(np.float64)
            self._operators[key] = _conv_plan.prepare(kernel, bias, dtype)
        return self._operators[key]

    def _linear(self, x, chunk, name, num_threads, output, side_by_side, out=None):
        """The chunk of the single-channel volumes ``x`` upsampled with kernel ``name``
        (in ``out`` if given)."""
        operator = self._operator(name, x.dtype)
        if self.taps is not None:
            return _separable.run(x, chunk, operator, num_threads, output=output, out=out)
        y = _conv_plan.run(x, chunk, operator, num_threads, output=output,
                           side_by_side=side_by_side)
        if out is None:
            return y
        out[...] = y
        return out

    def _copies(self):
        """Whether each output is a copy of one input (nearest), which propagates NaN
        and infinities as they are."""
        return self.taps is not None and all(
            len(t) == s and (t == 1).all() for t, s in zip(self.taps, self.factor))

    def _phase_sums(self, ranges):
        """Sum of the taps each output of the chunk ``ranges`` receives (all of its stride
        phase: edge replication supplies every input), broadcastable to the chunk."""
        s = self.factor
        if self.taps is not None:
            sums = 1.0
            for axis, (t, (first, stop)) in enumerate(zip(self.taps, ranges)):
                t = _separable.embed(t, s[axis])
                table = np.pad(t, (0, -len(t) % s[axis])).reshape(-1, s[axis]).sum(axis=0)
                shape = [1] * 5
                shape[1 + axis] = stop - first
                sums = sums * table[(np.arange(first, stop) + (len(t) - s[axis]) // 2)
                                    % s[axis]].reshape(shape)
            return sums
        kernel = self.kernel
        k = kernel.shape
        padded = np.pad(kernel, [(0, -n % f) for n, f in zip(k, s)])
        table = padded.reshape(-1, s[0], padded.shape[1] // s[1], s[1],
                               padded.shape[2] // s[2], s[2]).sum(axis=(0, 2, 4))
        index = [(np.arange(first, stop) + (n - f) // 2) % f
                 for (first, stop), n, f in zip(ranges, k, s)]
        return table[np.ix_(*index)][None, ..., None]

    # -- execution ------------------------------------------------------------------------

    def run(self, x, chunk, num_threads, *, output="output", side_by_side=False, out=None):
        """Compute one chunk of the upsampled volumes.

        Parameters
        ----------
        x : ndarray of shape (n, d, h, w, c)
            The input voxels ``chunk.reads`` of each volume, float32 or float64 (label
            maps: any real dtype, kept).
        chunk : object
            From ``self.plan(in_spatial).chunk(ranges)``.
        num_threads : int or None
            OpenMP threads of each compiled call.
        output : str
            How a too-large output is named in the ``MemoryError``.
        side_by_side : bool
            Let the plan run its small passes side by side on Python threads (results do
            not depend on it).
        out : ndarray of shape (n, D, H, W, c), optional
            Where to write the chunk (the separable passes write straight into it).

        Returns
        -------
        y : ndarray of shape (n, D, H, W, c)
            The chunk of ``x.dtype``: ``out``, or new and C-contiguous.

        Notes
        -----
        Non-finite inputs, by ``nan_policy``:

        - ``"error"``: ``ValueError``.
        - ``"propagate"``: each output is what IEEE arithmetic gives over the terms of its
          sum with a nonzero tap: NaN if one of them reads NaN or if they read infinities
          of both signs (after the sign of the tap), else the signed infinity they read,
          else the finite sum. A tap of weight 0 never spreads a NaN (``0 * nan`` is not
          computed). Computed as the convolution of ``x`` with non-finite voxels set to 0,
          then the counts of NaN and signed infinite terms (convolutions of indicator
          volumes with the 0/1 support of the positive and of the negative taps).
        - ``"ignore"``: the outputs whose sum has a nonzero tap on a non-finite input
          become ``bias + g * sum(w x) / sum(w)`` over their finite inputs, where ``g`` is
          the sum of all their taps (the kernel's response to a finite volume; 1 for
          ``nearest`` and ``trilinear``, so the kernel-weighted mean of the finite
          inputs); NaN if no finite input has a nonzero tap. Other outputs are those of
          a finite volume. Needs a kernel without negative taps.
        """
        n, c = x.shape[0], x.shape[-1]
        if c == 1:
            y = self._run(x, chunk, num_threads, output, side_by_side, out)
            if out is None or y is out:
                return y
            out[...] = y
            return out
        x = np.moveaxis(x, -1, 1).reshape(n * c, *x.shape[1:4], 1)
        y = np.moveaxis(self._run(x, chunk, num_threads, output, side_by_side, None).reshape(
            n, c, *y_shape(chunk)), 1, -1)
        if out is None:
            return np.ascontiguousarray(y)
        out[...] = y
        return out

    def _run(self, x, chunk, num_threads, output, side_by_side, out):
        if self.label:
            return _labels.run(x, chunk, self.factor, output=output)

        def linear(volumes, name, out=None):
            return self._linear(volumes, chunk, name, num_threads, output, side_by_side,
                                out)

        finite = np.isfinite(x)
        if finite.all() or (self.nan_policy == "propagate" and self._copies()):
            return linear(x, "kernel", out)
        if self.nan_policy == "error":
            bad = finite.size - int(np.count_nonzero(finite))
            raise ValueError(f"Input X contains {bad} NaN or infinite values, which "
                             "nan_policy='error' refuses; nan_policy='propagate' or "
                             "'ignore' upsamples them.")
        y = linear(np.where(finite, x, 0), "kernel", out)
        if self.nan_policy == "propagate":
            _propagate(y, x, linear, self.has_negative)
        else:
            hit = linear((~finite).astype(np.float32), "support") > 0
            weight = linear(finite.astype(x.dtype), "weights")[hit]
            gain = np.broadcast_to(self._phase_sums(chunk.ranges), y.shape)[hit]
            part = (y[hit].astype(np.float64) - self.bias) * (gain / np.where(
                weight > 0, weight, 1))
            y[hit] = np.where(weight > 0, self.bias + part, np.nan)
        return y


def y_shape(chunk):
    """The spatial shape of the outputs of ``chunk``."""
    return tuple(stop - first for first, stop in chunk.ranges)


def _propagate(y, x, linear, has_negative):
    """Set the outputs of ``y`` (computed with non-finite inputs as 0) whose nonzero taps
    read non-finite inputs to what IEEE arithmetic gives (see :meth:`Upsampling.run`)."""
    n = len(x)
    signs = np.concatenate([x == np.inf, x == -np.inf, np.isnan(x)]).astype(np.float32)
    counts = linear(signs, "positive")
    plus, minus, nan = counts[:n], counts[n:2 * n], counts[2 * n:]
    if has_negative:
        flipped = linear(signs, "negative")
        plus += flipped[n:2 * n]
        minus += flipped[:n]
        nan += flipped[2 * n:]
    plus, minus = plus > 0, minus > 0
    y[plus] = np.inf
    y[minus] = -np.inf
    y[(nan > 0) | (plus & minus)] = np.nan


def from_estimator(upsampler):
    """The :class:`Upsampling` of a fitted ``VolumeUpsampler`` (its public attributes):
    separable when it has ``kernel_taps_`` (``"nearest"``, ``"trilinear"``) and no bias."""
    factor, policy = upsampler.factor_, upsampler.nan_policy
    if isinstance(upsampler.kernel, str) and upsampler.kernel == "label":
        return Upsampling(factor, label=True, nan_policy=policy)
    taps = getattr(upsampler, "kernel_taps_", None)
    if taps is not None and upsampler.bias_ == 0:
        return Upsampling(factor, taps=taps, nan_policy=policy)
    return Upsampling(factor, upsampler.kernel_, bias=upsampler.bias_, nan_policy=policy)


# Output voxels per Python thread below which one call computes the whole volume: a
# thread costs about 0.1 ms to start on an idle machine and a scheduling delay of 1 ms or
# more on a loaded one, about the time nearest takes for 2M voxels (trilinear 3-8 ms).
MIN_PARALLEL_VOXELS = 1 << 21


def upsample(volumes, upsampling, num_threads):
    """Upsample ``(n, d, h, w, c)`` volumes: the chunk that is the whole volume.

    Separable kernels on ``num_threads > 1`` threads compute it as up to that many chunks
    (volumes, else slabs along depth) of at least ``MIN_PARALLEL_VOXELS`` outputs, side by
    side on Python threads with one OpenMP thread each, written straight into the output:
    no barrier between the passes, which on a loaded machine cost more than the passes
    themselves (each waits for the slowest thread to be scheduled); a smaller output is
    one chunk on one thread. Chunks give the same bits as the whole (as on Dask).

    Returns a new C-contiguous ``(n, d*sd, h*sh, w*sw, c)`` array of ``volumes.dtype``.
    """
    n, spatial, c = len(volumes), volumes.shape[1:4], volumes.shape[4]
    factor = upsampling.factor
    plan = upsampling.plan(spatial)
    out_spatial = tuple(m * s for m, s in zip(spatial, factor))
    threads = normalize_num_threads(num_threads)
    size = n * c * int(np.prod(out_spatial, dtype=np.float64))
    parts = 1
    if upsampling.taps is not None and threads > 1:
        parts = int(min(threads, size // MIN_PARALLEL_VOXELS, max(n, spatial[0])))
    if parts <= 1:
        whole = plan.chunk([(0, m) for m in out_spatial])
        threads = 1 if upsampling.taps is not None else num_threads
        return upsampling.run(volumes, whole, threads, side_by_side=True)
    shape = (n, *out_spatial, c)
    check_allocation(shape, volumes.dtype, "output")
    y = np.empty(shape, volumes.dtype)
    if n >= parts:    # whole volumes
        bounds = np.linspace(0, n, parts + 1).astype(int)
        boxes = [((b0, b1), (0, spatial[0])) for b0, b1 in zip(bounds[:-1], bounds[1:])]
    else:             # slabs along depth
        bounds = np.linspace(0, spatial[0], parts + 1).astype(int)
        boxes = [((0, n), (d0, d1)) for d0, d1 in zip(bounds[:-1], bounds[1:])]

    def work(box):
        (b0, b1), (d0, d1) = box
        ranges = [(d0 * factor[0], d1 * factor[0]), (0, out_spatial[1]), (0, out_spatial[2])]
        chunk = plan.chunk(ranges)
        x = volumes[(slice(b0, b1), *(slice(lo, hi) for lo, hi in chunk.reads))]
        upsampling.run(x, chunk, 1, out=y[b0:b1, slice(*ranges[0])])

    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(work, boxes))
    return y


# ------------------------------------------------------------------------- volumes layout

def check_volumes_shape(shape):
    """The ndim of ``X`` of ``shape``: 4-D and 5-D volumes need a voxel per axis, 2-D rows
    a volume shape; any other ndim raises."""
    ndim = len(shape)
    if ndim in (4, 5):
        if min(shape[1:]) < 1:
            raise ValueError(f"X must have at least one voxel per axis, got shape {shape}.")
    elif ndim != 2:
        raise ValueError("X must be 2-D (n_samples, n_features) with volume_shape, 4-D "
                         "(n_samples, d, h, w) or 5-D (n_samples, d, h, w, c), got "
                         f"shape {shape}.")
    return ndim


def resolve_volume_shape(volume_shape, n_features):
    """``volume_shape`` (3 or 4 ints, at most one -1) for rows of ``n_features``."""
    if volume_shape is None:
        raise ValueError(
            "2-D X of shape (n_samples, n_features) holds flattened volumes, and "
            "volume_shape=None does not say how to unflatten them: pass "
            "volume_shape=(d, h, w) or (d, h, w, c) (one entry may be -1, inferred from "
            f"n_features={n_features}), or pass X as 4-D (n_samples, d, h, w) or 5-D "
            "(n_samples, d, h, w, c) volumes.")
    try:
        shape = tuple(volume_shape)
    except TypeError:
        shape = ()
    if (len(shape) not in (3, 4) or shape.count(-1) > 1
            or not all(is_int(v) and (v >= 1 or v == -1) for v in shape)):
        raise ValueError("`volume_shape` must be (d, h, w) or (d, h, w, c): ints >= 1, one of "
                         f"which may be -1 (inferred), got {volume_shape!r}.")
    shape = tuple(int(v) for v in shape)
    known = int(np.prod([v for v in shape if v != -1]))
    if -1 in shape and n_features % known == 0:
        shape = tuple(n_features // known if v == -1 else v for v in shape)
    if int(np.prod(shape)) != n_features:
        raise ValueError(f"`volume_shape`={volume_shape!r} does not fit rows of "
                         f"{n_features} features (X of shape (n_samples, {n_features})).")
    return shape


def as_volumes(X, volume_shape=None):
    """4-D or 5-D ``X``, or 2-D ``X`` of flattened volumes of ``volume_shape``, as
    ``(n, d, h, w, c)`` volumes (a view; NumPy or Dask)."""
    if X.ndim == 5:
        return X
    if X.ndim == 4:
        return X[..., np.newaxis]
    return X.reshape(len(X), *volume_shape[:3], 1 if len(volume_shape) == 3 else volume_shape[3])


def layout(shape, ndim):
    """Volumes' shape ``(n, d, h, w, c)`` written as ``X`` of ``ndim`` dimensions is."""
    if ndim == 2:
        return (shape[0], int(np.prod(shape[1:])))
    return tuple(shape[:ndim])

