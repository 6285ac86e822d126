"""``VolumeUpsampler``: volume upsampling as a scikit-learn transformer.

Every kernel -- nearest, trilinear, learned or given -- is a transposed convolution of
stride ``factor`` over an edge-replicated border, run by the compiled core on each channel
of each volume with a single 1-to-1 kernel.

Definition, per spatial axis, for ``n`` input voxels ``x``, stride ``s`` and a kernel ``w``
of ``k`` taps: output voxel ``o`` (``0 <= o < n*s``) is

    y[o] = sum_i x[clip(i, 0, n - 1)] * w[o + c - i*s],   c = (k - s) // 2,

over the ``i`` that put ``o + c - i*s`` in ``[0, k)``: the scatter ``z[i*s + j] += x[i] * w[j]``
cut to the window ``[c, c + n*s)``, read over an edge-replicated input. The window puts the
kernel's centre tap on the output voxel whose centre is the input voxel's centre.

* Trilinear interpolation with ``align_corners=False`` reads output ``o`` at input
  coordinate ``u = (o + 0.5)/s - 0.5`` with weight ``max(0, 1 - |u - i|)`` on voxel ``i``;
  PyTorch clamps ``u`` and the neighbour index to the volume, which is reading an
  edge-replicated input. With ``j = o + c - i*s`` the weight is the triangle
  ``w[j] = max(0, 1 - |(j - c + 0.5)/s - 0.5|)``: ``2s`` taps for even ``s``
  (``[1, 3, 3, 1]/4`` for ``s = 2``), ``2s - 1`` for odd ``s``. The 3-D kernel is the outer
  product of the three axes' triangles.
* Nearest neighbour is the box of ``k = s`` ones (``c = 0``): ``np.repeat``.
* A kernel with fewer taps than ``s`` is first zero-padded to ``s`` taps, with
  ``-((k - s) // 2)`` zeros in front, which leaves ``y`` unchanged and makes ``c >= 0``.

Computation: ``tconv3d._plan`` (one plan executed by ``transform`` on the whole volume and
by ``tconv3d.dask.upsample`` on each chunk, so both give the same bits). ``"nearest"`` and
``"trilinear"`` are outer products of 1-D kernels and run one axis at a time
(``tconv3d._separable``: three 1-D transposed convolutions, each output a sum of at most 3
terms, a cost linear in the output size for any factor). Other kernels run as the strided
``padding="same"`` 3-D transposed convolution of the unpadded volume, then the thin border
slabs whose taps reach past the volume recomputed from edge-replicated input and written
over (``tconv3d._conv_plan``). No padded copy of the volume is made.
"""
from numbers import Integral, Real

import numpy as np
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                          _fit_context)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _plan, _separable
from ._learning import WORKING_COPIES, fit_kernel
from ._validation import check_allocation, normalize_num_threads, normalize_triple

__all__ = ["VolumeUpsampler"]

KERNELS = ("nearest", "trilinear", "learned", "label")
_FLOATS = (np.float64, np.float32)


def _trilinear_kernel(factor, size=None):
    """The trilinear kernel of ``factor`` (``size`` taps per axis, default as in
    :func:`tconv3d._separable.triangle`), float64."""
    size = (None,) * 3 if size is None else size
    return _separable.outer([_separable.triangle(s, k) for s, k in zip(factor, size)])


class VolumeUpsampler(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Upsample volumes by an integer factor with a fixed or learned kernel.

    Each channel of each volume is upsampled independently, by a compiled transposed
    convolution of stride ``factor`` over an edge-replicated border (see the module
    docstring for the geometry); ``"nearest"`` and ``"trilinear"`` run it one axis at a
    time, at a cost linear in the output size for any factor.

    Parameters
    ----------
    factor : int or tuple of 3 ints, default=2
        Upsampling factor along depth, height and width; each ``>= 1``.
    kernel : {"trilinear", "nearest", "learned", "label"} or ndarray of shape (kd, kh, kw), \
default="trilinear"
        - ``"nearest"``: each voxel repeated ``factor`` times per axis (``np.repeat``).
        - ``"trilinear"``: the numbers of ``torch.nn.functional.interpolate(...,
          mode="trilinear", align_corners=False)``, borders included.
        - ``"label"``: for label maps (segmentations): labels in, labels out, in the
          input's dtype (any integer or bool; floats must hold whole numbers, NaN is
          refused). Each output voxel takes, among the input voxels with a nonzero
          trilinear weight on it (at most 8), the label whose weights add up to the
          most; ties go to the smallest label. Smoother than ``"nearest"`` (boundaries
          follow the trilinear interpolation of each label's mask) and never a label
          that is not among the neighbours. ``kernel_`` holds the trilinear weights.
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
        Taps of the learned kernel per axis; ``None`` means ``3 * factor`` (the default
        of ``tconv3d fit`` too): each output then reads three input voxels per axis,
        room for the negative lobes of a sharpening kernel, where ``2 * factor`` taps
        (two voxels, as trilinear) can only re-weight linear interpolation. On
        nibabel's ``anatomical.nii`` (x2, learned on one half, scored on the other)
        ``2 * factor`` gains 0.6 dB PSNR over trilinear, ``3 * factor`` 1.3 dB and
        ``4 * factor`` no more. Only used with ``kernel="learned"``.
    nan_policy : {"propagate", "ignore", "error"}, default="propagate"
        What non-finite input voxels (NaN, +-inf; e.g. outside the field of view of a
        resampled or statistical map) do:

        - ``"propagate"``: they flow through the convolution as IEEE arithmetic does,
          into the outputs whose kernel taps on them are nonzero, and only those (a tap
          of weight 0 does not spread a NaN). ``"nearest"`` is then exactly
          ``np.repeat``; ``"trilinear"`` gives NaN to the outputs within one input voxel
          of a NaN. No value is ever invented.
        - ``"ignore"``: normalised convolution. An output whose kernel reaches a
          non-finite input is the kernel-weighted mean of the finite inputs it reaches,
          ``bias + g * sum(w*x) / sum(w)`` over those (``g``: the sum of the output's
          taps, 1 for ``"nearest"`` and ``"trilinear"``); NaN only where no finite input
          has a nonzero tap. Other outputs are unchanged. Needs a kernel without
          negative taps: refused for such a given kernel, and ``kernel="learned"``
          then learns taps ``>= 0``.
        - ``"error"``: ``ValueError`` (``fit`` and ``transform``).

        ``fit`` with ``kernel="learned"`` (policies other than ``"error"``) learns from
        the voxels of ``y`` that are finite and whose inputs (the whole
        ``kernel_size`` box) are all finite; the others are left out of the loss.
    max_iter : int, default=200
        Maximum L-BFGS iterations of the learned fit; ``>= 1``.
    tol : float, default=1e-6
        The learned fit stops when an iteration lowers the mean squared error by less
        than ``tol`` times the error of the starting (trilinear) kernel; ``>= 0``.
    num_threads : int, default=None
        Threads of the compiled convolution; ``None`` uses the OpenMP default, which
        honours ``threadpoolctl.threadpool_limits``. Results do not depend on it.
    verbose : int, default=0
        If positive, the learned fit prints its progress every ``verbose`` iterations;
        ``>= 0``.

    Attributes
    ----------
    factor_ : tuple of 3 ints
        The upsampling factor per axis.
    kernel_ : ndarray of shape (kd, kh, kw), dtype=float64
        The kernel applied to every channel (for ``"nearest"``, ``"trilinear"`` and
        ``"label"``: the outer product of ``kernel_taps_``, computed on access).
    kernel_taps_ : tuple of 3 ndarrays of shape (kd,), (kh,), (kw,), or None
        For ``"nearest"``, ``"trilinear"`` and ``"label"``: the 1-D kernels whose outer
        product is the kernel, run one axis at a time; the 3-D kernel is never built.
        ``None`` for other kernels.
    bias_ : float
        Added to every output voxel; 0 unless learned.
    n_iter_ : int
        L-BFGS iterations of the learned fit (``kernel="learned"`` only).
    loss_ : float
        Training mean squared error of the learned fit (``kernel="learned"`` only), over
        the voxels it learned from.
    volume_shape_ : tuple of 3 or 4 ints
        Shape of one volume, ``-1`` resolved (fitted on 2-D ``X`` only).
    n_features_in_ : int
        Number of features seen during fit (fitted on 2-D ``X`` only).
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
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
    The output is float32 for float32 input and float64 otherwise (``kernel="label"``:
    the input's dtype).

    On ``num_threads > 1`` threads, ``"nearest"`` and ``"trilinear"`` upsample large
    outputs as chunks (volumes, else depth slabs) side by side, one thread each; every
    output voxel is computed exactly as in one piece, so the result does not depend on
    the thread count, nor on the Dask chunking (:func:`tconv3d.dask.upsample`).

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

    # Checked by scikit-learn when fit starts (its messages). factor, kernel, volume_shape,
    # kernel_size and num_threads are only type-checked here: their values are checked in
    # fit by the normalisers of tconv3d._validation and tconv3d._plan, with their own
    # messages.
    _parameter_constraints: dict = {
        "factor": [Integral, "array-like"],
        "kernel": [str, "array-like"],
        "volume_shape": [None, "array-like"],
        "kernel_size": [None, Integral, "array-like"],
        "nan_policy": [StrOptions(set(_plan.NAN_POLICIES))],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "num_threads": [None, Integral],
        "verbose": ["verbose"],
    }

    def __init__(self, factor=2, kernel="trilinear", volume_shape=None, kernel_size=None,
                 nan_policy="propagate", max_iter=200, tol=1e-6, num_threads=None,
                 verbose=0):
        self.factor = factor
        self.kernel = kernel
        self.volume_shape = volume_shape
        self.kernel_size = kernel_size
        self.nan_policy = nan_policy
        self.max_iter = max_iter
        self.tol = tol
        self.num_threads = num_threads
        self.verbose = verbose

    def _learns(self):
        return isinstance(self.kernel, str) and self.kernel == "learned"

    def _initial_kernel(self, factor):
        """The kernel to use (fixed) or to start from (learned), float64: for
        ``"nearest"``, ``"trilinear"`` and ``"label"`` the tuple of its three 1-D kernels,
        which are never multiplied out; otherwise the 3-D array."""
        if isinstance(self.kernel, str):
            if self.kernel not in KERNELS:
                raise ValueError(f"`kernel` must be one of {KERNELS} or an array of shape "
                                 f"(kd, kh, kw), got {self.kernel!r}.")
            if self.kernel != "learned":   # "label": the trilinear weights of the vote
                name = "nearest" if self.kernel == "nearest" else "trilinear"
                return _separable.named_taps(name, factor)
            size = normalize_triple(self.kernel_size, "kernel_size", allow_none=True)
            size = size or tuple(3 * s for s in factor)
            try:   # the learned kernel_ is (kd, kh, kw): refuse a fit that cannot run
                check_allocation((WORKING_COPIES, *size), np.float64,
                                 "learned kernel_'s working copies")
            except (MemoryError, ValueError) as exc:
                raise type(exc)(f"`factor` {factor}: {exc}") from None
            return _trilinear_kernel(factor, size)
        try:
            kernel = np.asarray(self.kernel)
        except (TypeError, ValueError):
            kernel = None
        if kernel is not None and kernel.dtype.kind == "c":
            raise TypeError(f"`kernel` must hold real numbers, got a complex array (dtype "
                            f"{kernel.dtype}); pass the part you mean explicitly, e.g. "
                            "`kernel.real` or `abs(kernel)`.")
        try:
            kernel = None if kernel is None else np.array(kernel, dtype=np.float64)
        except (TypeError, ValueError):
            kernel = None
        if kernel is None or kernel.ndim != 3 or kernel.size == 0:
            raise ValueError(f"`kernel` must be one of {KERNELS} or an array of shape "
                             f"(kd, kh, kw), got {self.kernel!r}.")
        if not np.isfinite(kernel).all():
            raise ValueError("`kernel` must hold finite numbers.")
        return kernel

    def _labels(self):
        return isinstance(self.kernel, str) and self.kernel == "label"

    def _validate_volumes(self, X, *, reset):
        """``X`` as float ``(n, d, h, w, c)`` volumes (label maps: their dtype), and the
        ndim of ``X``."""
        if not hasattr(X, "ndim"):  # lists and other array-likes
            X = np.asarray(X)
        finite = self.nan_policy == "error"
        dtype = _FLOATS
        if self._labels():   # the labels' own dtype; their values are checked when used
            finite, dtype = False, None
            kind = getattr(getattr(X, "dtype", None), "kind", "i")  # (DataFrames: later)
            if kind not in "biuf":
                raise ValueError("kernel='label' upsamples label maps (integers), got "
                                 f"dtype {X.dtype}.")
        if X.ndim in (4, 5):
            # Float volumes in memory need no conversion: scikit-learn's checks (about
            # 0.1 ms) are skipped unless they would raise.
            plain = (type(X) is np.ndarray and len(X) >= 1
                     and (X.dtype in _FLOATS if dtype is not None else X.dtype.kind in "biuf")
                     and not (finite and not np.isfinite(X).all()))
            if not plain:
                X = check_array(X, allow_nd=True, dtype=dtype, ensure_all_finite=finite,
                                estimator=self)
            _plan.check_volumes_shape(X.shape)
            if reset:  # forget the shape of an earlier 2-D fit
                for name in ("n_features_in_", "feature_names_in_", "volume_shape_"):
                    self.__dict__.pop(name, None)
            return _plan.as_volumes(X), X.ndim
        if X.ndim > 2:
            _plan.check_volumes_shape(np.shape(X))
        X = validate_data(self, X, reset=reset, dtype=dtype, ensure_all_finite=finite)
        if reset or not hasattr(self, "volume_shape_"):
            shape = _plan.resolve_volume_shape(self.volume_shape, X.shape[1])
            if reset:
                self.volume_shape_ = shape
        else:
            shape = self.volume_shape_
        return _plan.as_volumes(X, shape), 2

    @_fit_context(prefer_skip_nested_validation=True)
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
        VolumeUpsampler
            The fitted estimator (``self``).

        Raises
        ------
        ValueError
            For an invalid parameter or ``X`` (see :meth:`transform`), a negative tap with
            ``nan_policy="ignore"``, or (``kernel="learned"``) a missing or misshapen ``y``.

        Examples
        --------
        >>> X = np.random.default_rng(0).random((2, 4, 4, 4))
        >>> y = VolumeUpsampler(factor=2, kernel="nearest").fit_transform(X)
        >>> up = VolumeUpsampler(factor=2, kernel="learned", kernel_size=2).fit(X, y)
        >>> up.kernel_.shape, bool(np.allclose(up.kernel_, 1.0))   # learned: nearest's box
        ((2, 2, 2), True)
        """
        factor = normalize_triple(self.factor, "factor")
        if self.num_threads is not None:
            normalize_num_threads(self.num_threads)
        volumes, ndim = self._validate_volumes(X, reset=True)
        try:   # a factor no transform can serve: one voxel's output alone is too large
            check_allocation(factor, volumes.dtype, "output of one voxel")
        except (MemoryError, ValueError) as exc:
            raise type(exc)(f"`factor` {factor}: {exc}") from None
        kernel = self._initial_kernel(factor)
        taps = kernel if isinstance(kernel, tuple) else None
        if self.nan_policy == "ignore" and not self._learns() and taps is None:
            _plan.check_ignore_kernel(kernel)
        bias = 0.0
        if self._learns():
            targets = self._check_targets(y, volumes, ndim, factor)
            kernel, bias, self.n_iter_, self.loss_ = fit_kernel(
                volumes, targets, kernel, factor, max_iter=self.max_iter, tol=self.tol,
                num_threads=self.num_threads, verbose=self.verbose,
                nonnegative=self.nan_policy == "ignore")
        self.factor_, self.bias_ = factor, float(bias)
        if taps is None:
            self.kernel_ = kernel
        else:
            self.__dict__.pop("_kernel", None)
            self.kernel_taps_ = taps
        return self

    @property
    def kernel_(self):
        """The kernel applied to every channel, ndarray of shape (kd, kh, kw), float64.

        For ``"nearest"``, ``"trilinear"`` and ``"label"`` it is the outer product of
        ``kernel_taps_``, computed here on access (``transform`` never builds it). A
        kernel assigned to it replaces the fitted one and runs as given.

        Examples
        --------
        >>> up = VolumeUpsampler(factor=(2, 1, 1)).fit(np.zeros((1, 2, 2, 2)))
        >>> up.kernel_taps_[0], up.kernel_.shape
        (array([0.25, 0.75, 0.75, 0.25]), (4, 1, 1))
        >>> up.kernel_ = 2 * up.kernel_     # runs as given from now on
        >>> up.kernel_taps_ is None
        True
        """
        kernel = self.__dict__.get("_kernel")
        if kernel is None:
            taps = self.__dict__.get("kernel_taps_")
            if taps is None:
                raise AttributeError("'VolumeUpsampler' object has no attribute 'kernel_'")
            check_allocation(tuple(map(len, taps)), np.float64, "kernel_")
            kernel = _separable.outer(taps)
        return kernel

    @kernel_.setter
    def kernel_(self, kernel):
        self.__dict__["_kernel"] = kernel
        self.kernel_taps_ = None

    def transform(self, X):
        """Upsample ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, d, h, w), (n_samples, d, h, w, c) or \
(n_samples, n_features)
            Volumes (see Notes of the class).

        Returns
        -------
        ndarray of shape (n_samples, d*fd, h*fh, w*fw[, c]) or \
(n_samples, n_features * fd*fh*fw)
            Same layout as ``X``; float32 for float32 ``X``, float64 otherwise (label
            maps: ``X``'s dtype). A
            ``dask.array`` ``X`` gives a lazy ``dask.array``, chunked by sample and space,
            equal to the in-memory result (see :func:`tconv3d.dask.upsample`).

        Raises
        ------
        ValueError
            If not fitted (``NotFittedError``); ``X`` not 2-D, 4-D or 5-D, with an empty
            axis, other features than the fit's, or non-finite with ``nan_policy="error"``.
        MemoryError
            If the output would not fit in memory (checked first).

        Examples
        --------
        >>> up = VolumeUpsampler(factor=2, kernel="nearest").fit(np.zeros((1, 2, 2, 2)))
        >>> up.transform(np.arange(3.0).reshape(1, 3, 1, 1, 1))[0, :, 0, 0, 0]   # any size
        array([0., 0., 1., 1., 2., 2.])
        """
        check_is_fitted(self)
        if hasattr(X, "__dask_graph__"):  # a dask array: stay lazy (tconv3d[dask])
            from .dask import upsample
            return upsample(self, X)
        volumes, ndim = self._validate_volumes(X, reset=False)
        out = _plan.upsample(volumes, _plan.from_estimator(self), self.num_threads)
        return out.reshape(_plan.layout(out.shape, ndim))

    @property
    def _n_features_out(self):
        """Output features of a fit on 2-D ``X`` (used by ``get_feature_names_out``)."""
        return int(np.prod(self.volume_shape_)) * int(np.prod(self.factor_))

    def get_feature_names_out(self, input_features=None):
        """Return the names of the output features, for an estimator fitted on 2-D ``X``.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Only checked against the names seen in ``fit``.

        Returns
        -------
        ndarray of str objects
            ``volumeupsampler0``, ``volumeupsampler1``, ... in the order of the flattened
            output (C order of ``(d*fd, h*fh, w*fw[, c])``).

        Raises
        ------
        ValueError
            If not fitted, fitted on 4-D or 5-D volumes, or given other ``input_features``.

        Examples
        --------
        >>> up = VolumeUpsampler(factor=(1, 1, 2), volume_shape=(1, 2, 2)).fit(np.zeros((3, 4)))
        >>> up.get_feature_names_out()[:2]
        array(['volumeupsampler0', 'volumeupsampler1'], dtype=object)
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
        tags.input_tags.allow_nan = self.nan_policy != "error"
        tags.target_tags.required = self._learns()
        return tags

    def _check_targets(self, y, volumes, ndim, factor):
        shape = (len(volumes), *(n * s for n, s in zip(volumes.shape[1:4], factor)),
                 volumes.shape[4])
        expected = _plan.layout(shape, ndim)
        if y is None:
            raise ValueError("kernel='learned' learns from examples: call fit(X, y) with y "
                             f"the high-resolution volumes matching X, of shape {expected}.")
        y = check_array(y, allow_nd=True, ensure_2d=False, dtype=np.float64,
                        ensure_all_finite=self.nan_policy == "error", input_name="y",
                        estimator=self)
        if y.shape != expected:
            raise ValueError(f"kernel='learned': y must hold the high-resolution volumes "
                             f"matching X, of shape {expected} (X's with each spatial axis "
                             f"times factor={factor}), got {y.shape}.")
        return y.reshape(shape)


def _expected_failed_checks(estimator):
    """scikit-learn common checks that cannot pass, as ``{check name: reason}``."""
    if estimator._learns():
        return {}
    return {"check_transformer_n_iter": "max_iter caps the learned fit only; a fixed kernel "
                                        "is not fitted iteratively and has no n_iter_."}
