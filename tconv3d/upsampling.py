"""``VolumeUpsampler``: volume upsampling as a scikit-learn transformer.

Every kernel -- nearest, trilinear, learned or given -- runs as one compiled transposed
convolution of stride ``factor`` over an edge-replicated border, applied to each channel
of each volume with a single 1-to-1 kernel.

Geometry, per spatial axis, for ``n`` input voxels, stride ``s`` and a kernel of ``k`` taps:

* The input is edge-padded by ``P = ceil(ceil(|k - s| / 2) / s)`` voxels on each side, so
  that every tap reaching an output voxel reads real (replicated) data.
* The transposed convolution scatters ``z[i*s + j] += xp[i] * w[j]`` over the padded
  input ``xp``; the output is the window ``z[c : c + n*s]`` with
  ``c = P*s + (k - s) // 2``, which puts the kernel's centre tap on the output voxel whose
  centre lies on the input voxel's centre.
* Trilinear interpolation with ``align_corners=False`` reads output voxel ``o`` at input
  coordinate ``u = (o + 0.5)/s - 0.5``, between voxels ``floor(u)`` and ``floor(u) + 1``
  with weights ``1 - frac(u)`` and ``frac(u)``; clamping ``u`` and the neighbour index to
  the volume (as PyTorch does) equals reading an edge-replicated input, so one padded
  voxel per side suffices. The weight input voxel ``i`` gives output ``o`` is the triangle
  ``max(0, 1 - |u - i|)``, a function of ``j = o + c - (i + P)*s`` alone:
  ``w[j] = max(0, 1 - |(j - (k - s)//2 + 0.5)/s - 0.5|)``. It has ``2s`` taps for even
  ``s`` (``[1, 3, 3, 1]/4`` for ``s = 2``) and ``2s - 1`` for odd ``s`` (the ``2s``-th
  tap is zero). The 3-D kernel is the outer product of the three axes' triangles.
* Nearest neighbour is the box ``w = 1`` of ``k = s`` taps: ``P = 0``, ``c = 0``.

The convolution is run in polyphase form, which is the same sum regrouped: writing
``p = q*s + r`` with phase ``r`` in ``[0, s)``, ``z[q*s + r] = sum_t xp[q - t] w[t*s + r]``
is a stride-1 transposed convolution with ``ceil(k/s)`` taps per axis and one filter per
output phase (``s**3`` filters), followed by a depth-to-space shuffle that also cuts the
window. Same multiplications, but a layout the compiled core vectorises over filters.
"""
import numbers
import time
import warnings
from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._ops import conv_transpose3d, conv_transpose3d_backward, conv_transpose3d_output_shape
from ._validation import make_geometry, normalize_num_threads, normalize_triple

__all__ = ["VolumeUpsampler"]

KERNELS = ("nearest", "trilinear", "learned")
_FLOATS = (np.float64, np.float32)


def _triangle(factor, size):
    """Taps of linear interpolation along one axis, ``(size,)`` float64 (module docstring)."""
    u = (np.arange(size) - (size - factor) // 2 + 0.5) / factor - 0.5
    return np.maximum(0.0, 1.0 - np.abs(u))


def _separable(taps):
    """Outer product of three 1-D kernels: ``(kd, kh, kw)``."""
    return taps[0][:, None, None] * taps[1][None, :, None] * taps[2][None, None, :]


def _trilinear_kernel(factor, size=None):
    size = tuple(2 * s - s % 2 for s in factor) if size is None else size
    return _separable([_triangle(s, k) for s, k in zip(factor, size)])


@dataclass(frozen=True)
class _Plan:
    """Per-axis numbers of one upsampling, for volumes of one spatial shape.

    ``pad``: edge voxels added on each side, giving ``padded`` lengths; ``taps``:
    polyphase taps ``ceil(k/s)``; ``start``: the first output's place in the polyphase
    result, as (block, phase);
    ``conv``: the stride-1 call's keyword arguments. Channels-first, so that each phase
    (filter) of the result is contiguous for the shuffle.
    """
    in_spatial: tuple
    kernel_spatial: tuple
    factor: tuple
    pad: tuple
    padded: tuple
    taps: tuple
    start: tuple
    conv: dict

    @property
    def out_spatial(self):
        return tuple(n * s for n, s in zip(self.in_spatial, self.factor))

    def pad_volumes(self, volumes):
        """``(n, c, d, h, w)`` (any view) -> ``(n*c, 1, D, H, W)``, edge-padded."""
        n, c = volumes.shape[:2]
        if any(self.pad):
            volumes = np.pad(volumes, ((0, 0), (0, 0), *((p, p) for p in self.pad)),
                             mode="edge")
        return volumes.reshape(n * c, 1, *volumes.shape[2:])

    def polyphase_kernel(self, kernel):
        """``(kd, kh, kw)`` -> ``(Td, Th, Tw, sd*sh*sw, 1)``: ``[t, r] = kernel[t*s + r]``."""
        full = np.zeros(tuple(t * s for t, s in zip(self.taps, self.factor)), kernel.dtype)
        full[tuple(slice(0, k) for k in self.kernel_spatial)] = kernel
        (td, th, tw), (sd, sh, sw) = self.taps, self.factor
        w = full.reshape(td, sd, th, sh, tw, sw).transpose(0, 2, 4, 1, 3, 5)
        return w.reshape(td, th, tw, sd * sh * sw, 1)

    def polyphase_kernel_adjoint(self, grad):
        """Adjoint of :meth:`polyphase_kernel`: ``(Td, Th, Tw, S, 1)`` -> ``(kd, kh, kw)``."""
        (td, th, tw), (sd, sh, sw) = self.taps, self.factor
        full = grad.reshape(td, th, tw, sd, sh, sw).transpose(0, 3, 1, 4, 2, 5)
        full = full.reshape(td * sd, th * sh, tw * sw)
        return full[tuple(slice(0, k) for k in self.kernel_spatial)]

    def _phase_slices(self):
        """For each phase: (filter index, output slices, polyphase-block slices)."""
        per_axis = []
        for n, s, (q0, b) in zip(self.in_spatial, self.factor, self.start):
            axis = []
            for r in range(s):
                first = r - b if r >= b else r - b + s   # first output o with o + b = r (mod s)
                block = q0 + (first + b) // s
                count = len(range(first, n * s, s))
                axis.append((slice(first, None, s), slice(block, block + count)))
            per_axis.append(axis)
        for f, (d, h, w) in enumerate(product(*per_axis)):
            yield f, (d[0], h[0], w[0]), (d[1], h[1], w[1])

    def shuffle(self, z, out):
        """Write the window of the polyphase result ``z`` of shape ``(n*c, S, Q, Q, Q)``
        into ``out`` of shape ``(n, D', H', W', c)`` (depth-to-space, one pass)."""
        n, c = out.shape[0], out.shape[-1]
        z = z.reshape(n, c, *z.shape[1:])
        out = np.moveaxis(out, -1, 1)
        for f, dst, src in self._phase_slices():
            out[(slice(None), slice(None), *dst)] = z[(slice(None), slice(None), f, *src)]

    def unshuffle(self, grad, z_shape):
        """Adjoint of :meth:`shuffle`: ``(n, D', H', W', c)`` -> ``z_shape``, zero outside."""
        n, c = grad.shape[0], grad.shape[-1]
        gz = np.zeros((n, c, *z_shape[1:]), grad.dtype)
        grad = np.moveaxis(grad, -1, 1)
        for f, dst, src in self._phase_slices():
            gz[(slice(None), slice(None), f, *src)] = grad[(slice(None), slice(None), *dst)]
        return gz.reshape(z_shape)


def _edge_width(k, s):
    return -(-((abs(k - s) + 1) // 2) // s)


def _plan(in_spatial, kernel_spatial, factor):
    pad = tuple(_edge_width(k, s) for k, s in zip(kernel_spatial, factor))
    padded = tuple(n + 2 * p for n, p in zip(in_spatial, pad))
    taps = tuple(-(-k // s) for k, s in zip(kernel_spatial, factor))
    conv = {"strides": 1, "padding": "same", "data_format": "channels_first"}
    # "same" keeps as many polyphase blocks as padded voxels, cropping (T - 1)//2 of them
    # on the left. By the choice of P that keeps every block the window [c, c + n*s)
    # needs: the first, c // s >= (T - 1)//2, and the last, (c + n*s - 1) // s < n + 2P.
    geom = make_geometry((1, 1, *padded), (*taps, int(np.prod(factor)), 1), 1,
                         conv["padding"], None, 1, conv["data_format"])
    start = []
    for p, k, s, crop in zip(pad, kernel_spatial, factor, geom.crop):
        c = p * s + (k - s) // 2          # window start in the full-length result
        start.append((c // s - crop, c % s))
    return _Plan(tuple(in_spatial), tuple(kernel_spatial), tuple(factor), pad, padded, taps,
                 tuple(start), conv)


# Volumes are upsampled in chunks whose polyphase result stays under this size: a buffer
# this small is recycled by the allocator from one chunk to the next instead of being
# page-faulted in afresh, and is still warm in cache when the shuffle reads it. Volumes
# are never split, so the result does not depend on it.
_CHUNK_BYTES = 16 * 2**20


def _upsample(volumes, kernel, bias, factor, num_threads):
    """Upsample ``(n, d, h, w, c)`` volumes with one ``(kd, kh, kw)`` kernel per channel.

    Returns a new C-contiguous ``(n, d*sd, h*sh, w*sw, c)`` array of ``volumes.dtype``.
    """
    n, c, dtype = volumes.shape[0], volumes.shape[-1], volumes.dtype
    plan = _plan(volumes.shape[1:4], kernel.shape, factor)
    w = plan.polyphase_kernel(kernel.astype(dtype, copy=False))
    b = None if bias == 0 else np.full(w.shape[3], bias, dtype)
    out = np.empty((n, *plan.out_spatial, c), dtype)
    z_bytes = c * w.shape[3] * np.prod(plan.padded, dtype=float) * dtype.itemsize
    step = max(1, int(_CHUNK_BYTES // z_bytes))
    channels_first = np.moveaxis(volumes, -1, 1)
    for i in range(0, n, step):
        x = plan.pad_volumes(channels_first[i:i + step])
        z = conv_transpose3d(x, w, b, **plan.conv, num_threads=num_threads)
        plan.shuffle(z, out[i:i + step])
    return out


def _resolve_volume_shape(volume_shape, n_features):
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
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                       and (v >= 1 or v == -1) for v in shape)):
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


class VolumeUpsampler(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Upsample volumes by an integer factor with a fixed or learned kernel.

    Each channel of each volume is upsampled independently, by one compiled transposed
    convolution of stride ``factor`` over an edge-replicated border (see the module
    docstring for the geometry).

    Parameters
    ----------
    factor : int or tuple of 3 ints, default=2
        Upsampling factor along depth, height and width; each ``>= 1``.
    kernel : {"trilinear", "nearest", "learned"} or ndarray of shape (kd, kh, kw), \
default="trilinear"
        - ``"nearest"``: each voxel repeated ``factor`` times per axis (``np.repeat``).
        - ``"trilinear"``: the numbers of ``torch.nn.functional.interpolate(...,
          mode="trilinear", align_corners=False)``, borders included.
        - ``"learned"``: ``fit(X, y)`` learns a kernel of ``kernel_size`` taps and a bias
          that minimise the mean squared error between ``transform(X)`` and the
          high-resolution volumes ``y``, starting from the trilinear kernel.
        - an array: the kernel used as given, aligned as the trilinear kernel of the same
          size would be (its centre tap on the output voxel whose centre is the input
          voxel's centre).
    volume_shape : tuple of 3 or 4 ints, default=None
        Shape ``(d, h, w)`` or ``(d, h, w, c)`` of one volume, for 2-D ``X`` of flattened
        volumes (C order, channels last); one entry may be ``-1``, inferred from the
        number of features as in :func:`numpy.reshape`. 2-D ``X`` requires it: a row of
        features alone does not say which voxels are neighbours, and guessing would
        silently upsample the wrong neighbours. Not used for 4-D and 5-D ``X``.
    kernel_size : int or tuple of 3 ints, default=None
        Taps of the learned kernel per axis; ``None`` means ``2 * factor``. Only used
        with ``kernel="learned"``.
    max_iter : int, default=200
        Maximum L-BFGS iterations of the learned fit.
    tol : float, default=1e-7
        The learned fit stops when an iteration lowers the mean squared error (relative
        to the mean square of ``y``) by less than ``tol``.
    num_threads : int, default=None
        Threads of the compiled convolution; ``None`` uses the OpenMP default, which
        honours ``threadpoolctl.threadpool_limits``. Results do not depend on it.
    verbose : int, default=0
        If positive, the learned fit prints its progress every ``verbose`` iterations.

    Attributes
    ----------
    factor_ : tuple of 3 ints
        The upsampling factor per axis.
    kernel_ : ndarray of shape (kd, kh, kw), dtype=float64
        The kernel applied to every channel.
    bias_ : float
        Added to every output voxel; 0 unless learned.
    n_iter_ : int
        L-BFGS iterations of the learned fit (``kernel="learned"`` only).
    loss_ : float
        Training mean squared error of the learned fit (``kernel="learned"`` only).
    volume_shape_ : tuple of 3 or 4 ints
        Shape of one volume, ``-1`` resolved (fitted on 2-D ``X`` only).
    n_features_in_ : int
        Number of features seen during fit (fitted on 2-D ``X`` only).
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    Notes
    -----
    ``X`` may be:

    - ``(n_samples, d, h, w)``: single-channel volumes, upsampled to
      ``(n_samples, d*fd, h*fh, w*fw)``;
    - ``(n_samples, d, h, w, c)``: channels-last volumes, each channel upsampled
      independently, to ``(n_samples, d*fd, h*fh, w*fw, c)``;
    - ``(n_samples, n_features)`` with ``volume_shape``: flattened volumes, returned
      flattened, ``(n_samples, n_features * fd * fh * fw)``, ready for a downstream
      scikit-learn estimator.

    A kernel only looks at neighbouring voxels, so volumes of any spatial size (and any
    number of channels) can be transformed once the estimator is fitted on 4-D or 5-D
    ``X``; after a fit on 2-D ``X``, ``transform`` expects ``n_features_in_`` features.
    The output is float32 for float32 input and float64 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.upsampling import VolumeUpsampler
    >>> X = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> VolumeUpsampler(factor=2, kernel="nearest").fit_transform(X).shape
    (1, 4, 4, 4)
    >>> flat = X.reshape(1, -1)
    >>> VolumeUpsampler(factor=(1, 1, 3), volume_shape=(2, 2, 2)).fit_transform(flat).shape
    (1, 24)
    """

    def __init__(self, factor=2, kernel="trilinear", volume_shape=None, kernel_size=None,
                 max_iter=200, tol=1e-7, num_threads=None, verbose=0):
        self.factor = factor
        self.kernel = kernel
        self.volume_shape = volume_shape
        self.kernel_size = kernel_size
        self.max_iter = max_iter
        self.tol = tol
        self.num_threads = num_threads
        self.verbose = verbose

    def _learns(self):
        return isinstance(self.kernel, str) and self.kernel == "learned"

    def _initial_kernel(self, factor):
        """The kernel to use (fixed) or to start from (learned), float64."""
        if isinstance(self.kernel, str):
            if self.kernel not in KERNELS:
                raise ValueError(f"`kernel` must be one of {KERNELS} or an array of shape "
                                 f"(kd, kh, kw), got {self.kernel!r}.")
            if self.kernel == "nearest":
                return np.ones(factor)
            size = None
            if self.kernel == "learned":
                size = normalize_triple(self.kernel_size, "kernel_size", allow_none=True)
                size = size or tuple(2 * s for s in factor)
            return _trilinear_kernel(factor, size)
        try:
            kernel = np.array(self.kernel, dtype=np.float64)
        except (TypeError, ValueError):
            kernel = None
        if kernel is None or kernel.ndim != 3 or kernel.size == 0:
            raise ValueError(f"`kernel` must be one of {KERNELS} or an array of shape "
                             f"(kd, kh, kw), got {self.kernel!r}.")
        if not np.isfinite(kernel).all():
            raise ValueError("`kernel` must hold finite numbers.")
        return kernel

    def _validate_volumes(self, X, *, reset):
        """``X`` as float ``(n, d, h, w, c)`` volumes, and the ndim of ``X``."""
        if not hasattr(X, "ndim"):  # lists and other array-likes
            X = np.asarray(X)
        ndim = X.ndim
        if ndim in (4, 5):
            X = check_array(X, allow_nd=True, dtype=_FLOATS, estimator=self)
            if min(X.shape[1:]) < 1:
                raise ValueError(f"X must have at least one voxel per axis, got shape "
                                 f"{X.shape}.")
            if reset:  # forget the shape of an earlier 2-D fit
                for name in ("n_features_in_", "feature_names_in_", "volume_shape_"):
                    self.__dict__.pop(name, None)
            return (X if ndim == 5 else X[..., np.newaxis]), ndim
        if ndim > 2:
            raise ValueError("X must be 2-D (n_samples, n_features) with volume_shape, 4-D "
                             "(n_samples, d, h, w) or 5-D (n_samples, d, h, w, c), got "
                             f"shape {np.shape(X)}.")
        X = validate_data(self, X, reset=reset, dtype=_FLOATS)
        if reset or not hasattr(self, "volume_shape_"):
            shape = _resolve_volume_shape(self.volume_shape, X.shape[1])
            if reset:
                self.volume_shape_ = shape
        else:
            shape = self.volume_shape_
        return X.reshape(len(X), *shape[:3], 1 if len(shape) == 3 else shape[3]), 2

    def fit(self, X, y=None):
        """Set the kernel; with ``kernel="learned"``, learn it from ``(X, y)`` pairs.

        Parameters
        ----------
        X : array-like of shape (n_samples, d, h, w), (n_samples, d, h, w, c) or \
(n_samples, n_features)
            Low-resolution volumes (see Notes of the class).
        y : array-like, default=None
            For ``kernel="learned"``: the matching high-resolution volumes, of the shape
            ``transform(X)`` returns. Ignored otherwise.

        Returns
        -------
        self : VolumeUpsampler
            The fitted estimator.
        """
        factor = normalize_triple(self.factor, "factor")
        kernel = self._initial_kernel(factor)
        if self.num_threads is not None:
            normalize_num_threads(self.num_threads)
        volumes, ndim = self._validate_volumes(X, reset=True)
        bias = 0.0
        if self._learns():
            targets = self._check_targets(y, volumes, ndim, factor)
            kernel, bias, self.n_iter_, self.loss_ = _fit_kernel(
                volumes, targets, kernel, factor, max_iter=self.max_iter, tol=self.tol,
                num_threads=self.num_threads, verbose=self.verbose)
        self.factor_, self.kernel_, self.bias_ = factor, kernel, float(bias)
        return self

    def transform(self, X):
        """Upsample ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, d, h, w), (n_samples, d, h, w, c) or \
(n_samples, n_features)
            Volumes (see Notes of the class).

        Returns
        -------
        X_up : ndarray of shape (n_samples, d*fd, h*fh, w*fw[, c]) or \
(n_samples, n_features * fd*fh*fw)
            Same layout as ``X``; float32 for float32 ``X``, float64 otherwise.
        """
        check_is_fitted(self)
        volumes, ndim = self._validate_volumes(X, reset=False)
        out = _upsample(volumes, self.kernel_, self.bias_, self.factor_, self.num_threads)
        return out.reshape(_layout(out.shape, ndim))

    @property
    def _n_features_out(self):
        """Output features of a fit on 2-D ``X`` (used by ``get_feature_names_out``)."""
        return int(np.prod(self.volume_shape_)) * int(np.prod(self.factor_))

    def get_feature_names_out(self, input_features=None):
        """Names of the output features, for an estimator fitted on 2-D ``X``.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Only checked against the names seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
            ``volumeupsampler0``, ``volumeupsampler1``, ... in the order of the flattened
            output (C order of ``(d*fd, h*fh, w*fw[, c])``).
        """
        check_is_fitted(self)
        if not hasattr(self, "volume_shape_"):
            raise ValueError("get_feature_names_out is defined for an estimator fitted on "
                             "2-D X (flattened volumes); this one was fitted on n-D "
                             "volumes, whose output is not a table of features.")
        return super().get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # scikit-learn's only tag for input of more than 2 dimensions (as for
        # PatchExtractor): here 4-D and 5-D volumes; 2-D needs `volume_shape`.
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.target_tags.required = self._learns()
        return tags

    def _check_targets(self, y, volumes, ndim, factor):
        shape = (len(volumes), *(n * s for n, s in zip(volumes.shape[1:4], factor)),
                 volumes.shape[4])
        expected = _layout(shape, ndim)
        if y is None:
            raise ValueError("kernel='learned' learns from examples: call fit(X, y) with y "
                             f"the high-resolution volumes matching X, of shape {expected}.")
        y = check_array(y, allow_nd=True, ensure_2d=False, dtype=np.float64,
                        input_name="y", estimator=self)
        if y.shape != expected:
            raise ValueError(f"kernel='learned': y must hold the high-resolution volumes "
                             f"matching X, of shape {expected} (X's with each spatial axis "
                             f"times factor={factor}), got {y.shape}.")
        return y.reshape(shape)


def _layout(shape, ndim):
    """Volumes' shape ``(n, d, h, w, c)`` written as ``X`` of ``ndim`` dimensions is."""
    if ndim == 2:
        return (shape[0], int(np.prod(shape[1:])))
    return tuple(shape[:ndim])


def _fit_kernel(volumes, targets, kernel, factor, *, max_iter, tol, num_threads, verbose):
    """Least-squares kernel and bias: L-BFGS with the compiled gradient.

    Minimises ``mean((upsample(volumes) - targets)**2)`` from ``kernel``; data are divided
    by the root mean square of ``targets`` so the loss starts near or below 1 whatever the
    intensity units, which makes ``tol`` relative. Returns ``(kernel, bias, n_iter, mse)``.
    """
    scale = float(np.sqrt(np.mean(np.square(targets)))) or 1.0
    plan = _plan(volumes.shape[1:4], kernel.shape, factor)
    x = plan.pad_volumes(np.moveaxis(volumes, -1, 1).astype(np.float64) / scale)
    n_phases = int(np.prod(factor))
    z_shape = conv_transpose3d_output_shape(x.shape, (*plan.taps, n_phases, 1), **plan.conv)
    # The residual lives in the polyphase layout: targets are shuffled there once, and the
    # blocks outside the output window are masked out, so no iteration shuffles.
    target = plan.unshuffle(targets / scale, z_shape)
    inside = plan.unshuffle(np.ones((1, *targets.shape[1:4], 1), bool), (1, *z_shape[1:]))
    evaluated = {}

    def loss_and_grad(theta):
        w = plan.polyphase_kernel(theta[:-1].reshape(kernel.shape))
        residual = conv_transpose3d(x, w, np.full(n_phases, theta[-1]), **plan.conv,
                                    num_threads=num_threads)
        residual -= target
        residual *= inside
        loss = np.vdot(residual, residual) / targets.size
        _, grad_w, grad_b = conv_transpose3d_backward(
            residual, x, w, **plan.conv, compute=("kernel", "bias"), num_threads=num_threads)
        evaluated["theta"], evaluated["loss"] = theta.copy(), loss
        grad = np.append(plan.polyphase_kernel_adjoint(grad_w).ravel(), grad_b.sum())
        return loss, grad * (2.0 / targets.size)

    start = time.perf_counter()
    iteration = [0]

    def report(theta):
        iteration[0] += 1
        if iteration[0] % verbose == 0 and np.array_equal(theta, evaluated["theta"]):
            print(f"[VolumeUpsampler] iteration {iteration[0]:4d}  "
                  f"mse {evaluated['loss'] * scale**2:.6g}  "
                  f"({time.perf_counter() - start:.2f} s)", flush=True)

    result = minimize(loss_and_grad, np.append(kernel.ravel(), 0.0), jac=True,
                      method="L-BFGS-B", callback=report if verbose > 0 else None,
                      options={"maxiter": max_iter, "ftol": tol, "gtol": 0.0})
    if result.status == 1:
        warnings.warn(f"The learned fit stopped at max_iter={max_iter} iterations before "
                      f"reaching tol={tol}; increase max_iter.", ConvergenceWarning)
    if verbose > 0:
        print(f"[VolumeUpsampler] done: {result.nit} iterations, mse "
              f"{result.fun * scale**2:.6g} ({time.perf_counter() - start:.2f} s): "
              f"{result.message}", flush=True)
    theta = result.x
    return (theta[:-1].reshape(kernel.shape), theta[-1] * scale, int(result.nit),
            float(result.fun * scale**2))


def _expected_failed_checks(estimator):
    """scikit-learn common checks that cannot pass, as ``{check name: reason}``."""
    if estimator._learns():
        return {}
    return {"check_transformer_n_iter": "max_iter caps the learned fit only; a fixed kernel "
                                        "is not fitted iteratively and has no n_iter_."}
