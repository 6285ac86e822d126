"""VolumeUpsampler(nan_policy=...): propagate, ignore and error against a direct definition
written term by term, in memory and on Dask (bitwise equal), and the learned fit on data
with non-finite voxels."""
import itertools

import numpy as np
import pytest
from sklearn.utils import get_tags
from sklearn.utils._param_validation import InvalidParameterError

from tconv3d.upsampling import VolumeUpsampler, _trilinear_kernel

da = pytest.importorskip("dask.array")
import tconv3d.dask as tdask  # noqa: E402


def _terms(kernel, factor, in_spatial, out_index):
    """The ``(input index, tap)`` pairs of output ``out_index`` with a nonzero tap, from
    the definition (module docstring of tconv3d.upsampling): ``j = o + c - i*s`` in
    ``[0, k)``, ``c = (k - s) // 2`` after padding a short kernel to ``s`` taps, ``i``
    clipped to the volume."""
    per_axis = []
    for a, (o, s, n) in enumerate(zip(out_index, factor, in_spatial)):
        k = kernel.shape[a]
        front = max(0, -((k - s) // 2))            # zeros in front of a short kernel
        K = max(k, s)
        c = (K - s) // 2
        pairs = []
        for i in range(-K - 1, n + K + 1):
            j = o + c - i * s - front
            if 0 <= j < k:
                pairs.append((min(max(i, 0), n - 1), j))
        per_axis.append(pairs)
    for (i0, j0), (i1, j1), (i2, j2) in itertools.product(*per_axis):
        w = kernel[j0, j1, j2]
        if w != 0:
            yield (i0, i1, i2), w


def _direct(x, kernel, bias, factor, policy):
    """The upsampling of the single-channel volumes ``x`` (n, d, h, w), output by output,
    in float64: ``propagate`` sums the terms with IEEE arithmetic (numpy's), ``ignore``
    renormalises over the finite terms."""
    n_spatial = x.shape[1:]
    out = np.empty((len(x), *(n * s for n, s in zip(n_spatial, factor))))
    for o in itertools.product(*(range(m) for m in out.shape[1:])):
        terms = list(_terms(kernel, factor, n_spatial, o))
        idx = tuple(np.array([t[0][a] for t in terms], int) for a in range(3))
        w = np.array([t[1] for t in terms], np.float64)
        values = x[(slice(None), *idx)].astype(np.float64)        # (n, terms)
        with np.errstate(invalid="ignore"):
            full = bias + np.sum(values * w, axis=1) if len(w) else np.full(len(x), bias)
        if policy == "ignore":
            finite = np.isfinite(values)
            weight = (finite * w).sum(axis=1)
            mean = np.where(finite, values, 0) @ w / np.where(weight > 0, weight, 1)
            renorm = np.where(weight > 0, bias + w.sum() * mean, np.nan)
            full = np.where(finite.all(axis=1), full, renorm)
        out[(slice(None), *o)] = full
    return out


def _assert_same(actual, expected, dtype):
    """Equal non-finite pattern (NaN, +inf, -inf) and close finite values."""
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(actual), test(expected))
    finite = np.isfinite(expected)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=tol, atol=tol)


def _volumes(rng, dtype, shape=(2, 4, 3, 5), where="mixed"):
    x = rng.standard_normal(shape).astype(dtype)
    if where == "mixed":            # NaN inside and on borders, infinities of both signs
        x[0, 1, 1, 1] = np.nan
        x[0, 0, 0, 0] = np.nan
        x[0, -1, -1, -1] = np.inf
        x[1, -2, 0, 1] = -np.inf
        x[1, -2, 1, 1] = np.inf
        x[1, :, -1, :] = np.nan     # a whole border plane of one volume
    elif where == "all":
        x[:] = np.nan
    elif where == "corner":
        x[:, :2, :2, :2] = np.nan
    return x


KERNELS = {
    "nearest": lambda f, rng: "nearest",
    "trilinear": lambda f, rng: "trilinear",
    # zero taps inside the kernel, and a kernel shorter than the factor on some axes
    "sparse": lambda f, rng: rng.random((3, 2, 4)) * (rng.random((3, 2, 4)) > 0.4),
    "signed": lambda f, rng: rng.standard_normal((2, 3, 3)),
}


# "ignore" refuses negative taps (test_ignore_refuses_negative_taps)
POLICY_KERNELS = [(p, k) for p in ("propagate", "ignore") for k in KERNELS
                  if (p, k) != ("ignore", "signed")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 3), (3, 1, 2)])
@pytest.mark.parametrize("policy, kind", POLICY_KERNELS)
def test_policies_match_the_direct_definition(rng, policy, kind, factor, dtype):
    kernel = KERNELS[kind](factor, rng)
    x = _volumes(rng, dtype)
    up = VolumeUpsampler(factor=factor, kernel=kernel, nan_policy=policy).fit(x)
    y = up.transform(x)
    assert y.dtype == dtype
    _assert_same(y, _direct(x, up.kernel_, 0.0, factor, policy), dtype)
    # Dask, every chunking: bitwise the in-memory result.
    for chunks in [(1, 1, 1, 1), (2, 3, 2, 2), (1, 4, 3, 5)]:
        got = tdask.upsample(up, da.from_array(x, chunks=chunks)).compute(scheduler="threads")
        assert got.tobytes() == y.tobytes()


@pytest.mark.parametrize("policy", ["propagate", "ignore"])
@pytest.mark.parametrize("where", ["all", "corner"])
@pytest.mark.parametrize("kind", ["nearest", "trilinear", "sparse"])
def test_all_nan_and_nan_corner(rng, policy, where, kind):
    x = _volumes(rng, np.float64, shape=(1, 4, 4, 3), where=where)
    up = VolumeUpsampler(factor=2, kernel=KERNELS[kind](2, rng), nan_policy=policy).fit(x)
    y = up.transform(x)
    expected = _direct(x, up.kernel_, 0.0, (2, 2, 2), policy)
    _assert_same(y, expected, np.float64)
    if where == "all" and kind != "sparse":   # (a sparse phase with no tap is the bias)
        assert np.isnan(y).all()
    got = tdask.upsample(up, da.from_array(x, chunks=(1, 1, 3, 2))).compute()
    assert got.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("factor", [1, 2, 3, (1, 2, 3)])
def test_nearest_propagate_is_np_repeat(rng, dtype, factor):
    x = _volumes(rng, dtype, shape=(2, 3, 5, 4))
    f = (factor,) * 3 if isinstance(factor, int) else factor
    x.flat[3] = -0.0
    x.flat[5] = np.float64(np.nan).astype(dtype) * -1      # another NaN payload
    y = VolumeUpsampler(factor=factor, kernel="nearest").fit_transform(x)
    expected = x
    for axis, s in enumerate(f):
        expected = np.repeat(expected, s, axis=1 + axis)
    assert y.tobytes() == expected.tobytes()   # bit for bit: NaN payloads, -0.0, infinities
    got = tdask.upsample(VolumeUpsampler(factor=factor, kernel="nearest").fit(x),
                         da.from_array(x, chunks=(1, 2, 3, 2))).compute()
    assert got.tobytes() == y.tobytes()


@pytest.mark.parametrize("factor", [2, 4, (2, 4, 2)])
def test_trilinear_propagate_against_torch_interpolate(rng, factor):
    # Even factors: inside the volume every trilinear weight is nonzero, so torch's
    # arithmetic spreads NaN exactly to the outputs whose support holds it, as the
    # policy does. On the border slabs (the first and last s/2 outputs of an axis) torch
    # clamps the coordinate and still reads the next voxel with weight 0: 0 * nan makes
    # more NaN there, which the policy does not.
    torch = pytest.importorskip("torch")
    x = _volumes(rng, np.float64, shape=(2, 5, 4, 3))
    y = VolumeUpsampler(factor=factor).fit_transform(x)
    f = (factor,) * 3 if isinstance(factor, int) else factor
    t = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], scale_factor=f,
                                        mode="trilinear", align_corners=False)[:, 0].numpy()
    border = np.zeros(y.shape, bool)
    for axis, (n, s) in enumerate(zip(x.shape[1:], f)):
        index = [slice(None)] * 4
        index[1 + axis] = np.r_[0:s // 2, n * s - s // 2:n * s]
        border[tuple(index)] = True
    np.testing.assert_array_equal(np.isnan(y)[~border], np.isnan(t)[~border])
    assert not (np.isnan(y) & ~np.isnan(t)).any()
    both = np.isfinite(y) & np.isfinite(t)
    np.testing.assert_allclose(y[both], t[both], rtol=1e-6, atol=1e-12)
    assert (np.isnan(t) & ~np.isnan(y))[border].any()      # the difference exists


def test_zero_taps_do_not_spread_nan(rng):
    # One tap of the kernel is nonzero: each output reads one input through it, and all
    # others through taps of weight 0 (0 * nan would be nan).
    kernel = np.zeros((3, 3, 3))
    kernel[1, 1, 1] = 2.0
    x = rng.standard_normal((1, 4, 4, 4))
    x[0, 1, 2, 3] = np.nan
    y = VolumeUpsampler(factor=1, kernel=kernel).fit_transform(x)
    assert np.isnan(y).sum() == 1 and np.isnan(y[0, 1, 2, 3])
    np.testing.assert_array_equal(y[np.isfinite(y)], 2 * x[np.isfinite(x)])


def test_infinities(rng):
    # inf - inf through the negative tap is NaN; -inf - inf is -inf.
    x = np.array([0.0, np.inf, np.inf, -np.inf, 0.0]).reshape(1, 1, 1, 5)
    up = VolumeUpsampler(factor=(1, 1, 2), kernel=np.array([[[1.0, 1.0, -1.0]]])).fit(x)
    y = up.transform(x)[0, 0, 0]
    _assert_same(y, _direct(x, up.kernel_, 0.0, (1, 1, 2), "propagate")[0, 0, 0],
                 np.float64)
    assert np.isposinf(y).any() and np.isneginf(y).any() and np.isnan(y).any()
    up = VolumeUpsampler(factor=(1, 1, 2), nan_policy="ignore").fit(x)
    ignored = up.transform(x)
    _assert_same(ignored, _direct(x, up.kernel_, 0.0, (1, 1, 2), "ignore"), np.float64)
    assert np.isnan(ignored).sum() == 4 and not np.isinf(ignored).any()


def test_finite_volumes_are_unchanged_by_the_policy(rng):
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    ys = [VolumeUpsampler(factor=(2, 3, 1), kernel=k, nan_policy=p).fit_transform(x)
          for p in ("propagate", "ignore", "error") for k in ("trilinear",)]
    for y in ys[1:]:
        assert y.tobytes() == ys[0].tobytes()


def test_ignore_keeps_the_outputs_away_from_nan_and_the_mean_near_it():
    # Trilinear x2 along one axis: outputs next to a NaN are the finite neighbour.
    x = np.array([1.0, 2.0, np.nan, 4.0, 8.0]).reshape(1, 1, 1, 5)
    y = VolumeUpsampler(factor=(1, 1, 2), nan_policy="ignore").fit_transform(x)[0, 0, 0]
    np.testing.assert_allclose(y, [1.0, 1.25, 1.75, 2.0, 2.0, 4.0, 4.0, 5.0, 7.0, 8.0])
    y = VolumeUpsampler(factor=(1, 1, 2)).fit_transform(x)[0, 0, 0]
    np.testing.assert_array_equal(np.isnan(y), [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])


def test_ignore_gain_of_an_unnormalised_kernel():
    # A kernel of ones, factor 1: sums of 3 inputs; with one missing, 3 * mean of the two.
    x = np.array([1.0, np.nan, 5.0, 7.0]).reshape(1, 1, 1, 4)
    kernel = np.ones((1, 1, 3))
    y = VolumeUpsampler(factor=1, kernel=kernel, nan_policy="ignore").fit_transform(x)
    np.testing.assert_allclose(y[0, 0, 0], [3.0, 9.0, 18.0, 19.0])   # edge: 5 + 7 + 7


def test_error_policy():
    x = np.ones((1, 3, 3, 3))
    x[0, 1, 1, 1] = np.nan
    up = VolumeUpsampler(nan_policy="error")
    with pytest.raises(ValueError, match="NaN"):
        up.fit(x)
    up.fit(np.ones((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        up.transform(x)
    lazy = tdask.upsample(up, da.from_array(x, chunks=2))
    with pytest.raises(ValueError, match="nan_policy='error'"):
        lazy.compute(scheduler="sync")
    with pytest.raises(ValueError, match="NaN"):
        VolumeUpsampler(kernel="learned", nan_policy="error").fit(
            np.ones((1, 2, 2, 2)), np.full((1, 4, 4, 4), np.nan))


def test_parameter_and_tags():
    with pytest.raises(InvalidParameterError, match="'nan_policy' parameter"):
        VolumeUpsampler(nan_policy="omit").fit(np.ones((1, 2, 2, 2)))
    assert VolumeUpsampler().get_params()["nan_policy"] == "propagate"
    assert get_tags(VolumeUpsampler()).input_tags.allow_nan
    assert get_tags(VolumeUpsampler(nan_policy="ignore")).input_tags.allow_nan
    assert not get_tags(VolumeUpsampler(nan_policy="error")).input_tags.allow_nan


def test_ignore_refuses_negative_taps(rng):
    kernel = rng.standard_normal((3, 3, 3))
    with pytest.raises(ValueError, match="negative taps"):
        VolumeUpsampler(kernel=kernel, nan_policy="ignore").fit(np.ones((1, 2, 2, 2)))
    up = VolumeUpsampler(kernel=kernel).fit(np.ones((1, 2, 2, 2)))
    up.set_params(nan_policy="ignore")          # changed after the fit: refused at use
    with pytest.raises(ValueError, match="negative taps"):
        up.transform(np.ones((1, 2, 2, 2)))


def _pairs(rng, kernel, bias, shape=(5, 8, 7, 6)):
    X = rng.standard_normal(shape)
    Y = VolumeUpsampler(factor=2, kernel=kernel).fit(X).transform(X) + bias
    return X, Y


def test_learned_fit_leaves_out_non_finite_voxels(rng):
    true = rng.random((4, 4, 4))
    X, Y = _pairs(rng, true, 0.3)
    X[0, 2, 3, 1] = np.nan
    X[1, 0, 0, 0] = np.inf
    Y[2, 5:9, 3, :] = np.nan
    Y[3, 0, 0, 0] = -np.inf
    up = VolumeUpsampler(kernel="learned", kernel_size=4, tol=1e-14, max_iter=500,
                         num_threads=1).fit(X, Y)
    np.testing.assert_allclose(up.kernel_, true, atol=1e-6)
    assert up.bias_ == pytest.approx(0.3, abs=1e-6) and up.loss_ < 1e-10
    # The voxels left out are those the fitted kernel cannot reproduce: NaN on propagate.
    out = up.transform(X)
    assert np.isnan(out[0]).any() and np.isfinite(out[2]).all()


def test_learned_fit_with_nothing_to_learn_from():
    X = np.ones((1, 2, 2, 2))
    X[0, 0, 0, 0] = np.nan
    Y = np.ones((1, 4, 4, 4))
    Y[:, 3], Y[:, :, 3], Y[:, :, :, 3] = np.nan, np.nan, np.nan  # those not reading X[0, 0, 0, 0]
    with pytest.raises(ValueError, match="no voxel of y to learn from"):
        VolumeUpsampler(kernel="learned").fit(X, Y)


def test_learned_with_ignore_learns_nonnegative_taps(rng):
    sharp = _trilinear_kernel((2, 2, 2), (4, 4, 4)) ** 2
    sharp[0] -= 0.05                                   # a negative lobe to be refused
    X, Y = _pairs(rng, sharp, 0.0)
    free = VolumeUpsampler(kernel="learned", num_threads=1).fit(X, Y)
    assert (free.kernel_ < 0).any()
    X[0, 3, 3, 3] = np.nan
    up = VolumeUpsampler(kernel="learned", nan_policy="ignore", num_threads=1).fit(X, Y)
    assert (up.kernel_ >= 0).all()
    y = up.transform(X)
    assert np.isfinite(y).all()
    got = tdask.upsample(up, da.from_array(X, chunks=(2, 3, 4, 5))).compute()
    assert got.tobytes() == y.tobytes()
