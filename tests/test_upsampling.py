"""VolumeUpsampler: against np.repeat, PyTorch's trilinear interpolation and the direct
definition, the learned fit, errors, and scikit-learn citizenship."""
import inspect
import itertools
import pickle

import numpy as np
import pytest
from reference import conv_transpose3d_ref
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

from tconv3d import upsampling
from tconv3d._validation import normalize_triple
from tconv3d.upsampling import VolumeUpsampler, _expected_failed_checks

DTYPES = [np.float32, np.float64]
FACTORS = [1, 2, 3, 4, (1, 2, 3), (3, 1, 2), (4, 3, 2)]
SPATIAL = [(7, 5, 3), (1, 11, 2), (13, 1, 1)]   # odd, flat and single-voxel axes


def _repeat(x, factor):
    for axis, s in enumerate(factor):
        x = np.repeat(x, s, axis=1 + axis)
    return x


def _direct(volumes, kernel, bias, factor):
    """The definition, in the plainest way: edge-pad each single-channel volume by P voxels,
    scatter with stride s (numpy oracle), keep the window [c, c + n*s)."""
    pads = [-(-((abs(k - s) + 1) // 2) // s) for k, s in zip(kernel.shape, factor)]
    x = np.pad(volumes, ((0, 0), *((p, p) for p in pads)), mode="edge")[..., None]
    z = conv_transpose3d_ref(x, kernel[..., None, None], [bias], strides=factor)[..., 0]
    window = tuple(slice(p * s + (k - s) // 2, p * s + (k - s) // 2 + n * s)
                   for p, k, s, n in zip(pads, kernel.shape, factor, volumes.shape[1:]))
    return z[(slice(None), *window)]


def _torch_trilinear(x, factor):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    y = torch.nn.functional.interpolate(t, scale_factor=factor, mode="trilinear",
                                        align_corners=False)
    return y[:, 0].numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("spatial", SPATIAL)
def test_nearest_is_np_repeat(rng, dtype, factor, spatial):
    X = rng.standard_normal((2, *spatial)).astype(dtype)
    Y = VolumeUpsampler(factor=factor, kernel="nearest").fit_transform(X)
    assert Y.dtype == dtype
    np.testing.assert_array_equal(Y, _repeat(X, normalize_triple(factor, "factor")))


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("spatial", SPATIAL)
def test_trilinear_matches_torch_float64(rng, factor, spatial):
    X = rng.standard_normal((3, *spatial))
    Y = VolumeUpsampler(factor=factor).fit_transform(X)
    triple = normalize_triple(factor, "factor")
    expected = _torch_trilinear(X, triple)
    assert Y.shape == expected.shape == (3, *(n * s for n, s in zip(spatial, triple)))
    np.testing.assert_allclose(Y, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 3, (1, 2, 3)])
def test_trilinear_float32_is_rounding_close_to_exact(rng, factor):
    # Reference: float64 interpolation of the same float32 numbers. Each output is a convex
    # combination of 8 inputs, so float32 arithmetic is off by at most ~8 eps * max|x|.
    # (torch's own float32 result is off by up to ~1e-6 relative: it rounds coordinates.)
    X = rng.standard_normal((2, 7, 11, 13)).astype(np.float32)
    Y = VolumeUpsampler(factor=factor).fit_transform(X)
    assert Y.dtype == np.float32
    exact = _torch_trilinear(X.astype(np.float64), normalize_triple(factor, "factor"))
    atol = 8 * np.finfo(np.float32).eps * np.abs(X).max()
    np.testing.assert_allclose(Y, exact, rtol=0, atol=atol)


def test_trilinear_borders_are_edge_values():
    # A volume constant along depth except a step: the first/last output planes equal the
    # first/last input planes (clamped coordinates), the inner ones interpolate.
    X = np.zeros((1, 3, 1, 1))
    X[0, :, 0, 0] = [1.0, 2.0, 4.0]
    Y = VolumeUpsampler(factor=(2, 1, 1)).fit_transform(X)[0, :, 0, 0]
    np.testing.assert_allclose(Y, [1.0, 1.25, 1.75, 2.5, 3.5, 4.0])


@pytest.mark.parametrize("factor", [1, 2, 3, 4, (2, 3, 1)])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8, 9])
def test_matches_direct_definition(rng, factor, size):
    # Every kernel size against every factor: smaller than, equal to and larger than it.
    triple = normalize_triple(factor, "factor")
    kernel = rng.standard_normal((size, max(1, size - 1), size + 1))
    X = rng.standard_normal((2, 5, 3, 4))
    up = VolumeUpsampler(factor=factor, kernel=kernel).fit(X)
    np.testing.assert_allclose(up.transform(X), _direct(X, kernel, 0.0, triple),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 4), (4, 3, 1)])
@pytest.mark.parametrize("size", [(1, 2, 4), (2, 2, 2), (4, 6, 3), (3, 1, 5)])
@pytest.mark.parametrize("spatial", [(1, 1, 1), (1, 3, 2), (5, 1, 1)])
def test_one_voxel_axes_match_direct_definition(rng, factor, size, spatial):
    # Even taps (as many as the factor, or padded to it) on one-voxel axes: the border
    # slab of another axis then reads a one-voxel axis that a centred Keras crop would
    # empty; the result is still the definition.
    kernel = rng.standard_normal(size)
    X = rng.standard_normal((2, *spatial))
    up = VolumeUpsampler(factor=factor, kernel=kernel).fit(X)
    np.testing.assert_allclose(up.transform(X), _direct(X, kernel, 0.0, factor),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [(2, 2, 2), (1, 1, 1)])
def test_learned_fit_on_one_voxel_axes(rng, kernel_size):
    true = rng.random(kernel_size)
    X, Y = _pairs(rng, true, 0.2, shape=(4, 1, 5, 3))
    up = VolumeUpsampler(kernel="learned", kernel_size=kernel_size, tol=1e-14, max_iter=500,
                         num_threads=1).fit(X, Y)
    np.testing.assert_allclose(up.transform(X), Y, atol=1e-6)


def test_kernels_are_the_documented_arrays():
    tri = VolumeUpsampler(factor=(2, 3, 1)).fit(np.ones((1, 2, 2, 2))).kernel_
    np.testing.assert_allclose(tri[:, 2, 0], [0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(tri[1, :, 0] / 0.75, [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    near = VolumeUpsampler(factor=(2, 3, 1), kernel="nearest").fit(np.ones((1, 2, 2, 2)))
    np.testing.assert_array_equal(near.kernel_, np.ones((2, 3, 1)))
    assert near.bias_ == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_are_upsampled_independently(rng, dtype):
    X = rng.standard_normal((2, 7, 5, 3, 4)).astype(dtype)
    up = VolumeUpsampler(factor=(2, 3, 1)).fit(X)
    Y = up.transform(X)
    assert Y.shape == (2, 14, 15, 3, 4) and Y.dtype == dtype
    for c in range(4):
        np.testing.assert_array_equal(Y[..., c], up.transform(X[..., c]))


@pytest.mark.parametrize("volume_shape", [(7, 5, 3), (7, 5, 3, 2), (-1, 5, 3, 2),
                                          (7, -1, 3, 2)])
def test_flattened_volumes(rng, volume_shape):
    X = rng.standard_normal((3, 7, 5, 3, 2))
    if len(volume_shape) == 3:
        X = X[..., 0]
    flat = X.reshape(3, -1)
    up = VolumeUpsampler(factor=2, volume_shape=volume_shape).fit(flat)
    assert up.n_features_in_ == flat.shape[1]
    assert up.volume_shape_ == X.shape[1:]
    Y = up.transform(flat)
    np.testing.assert_array_equal(Y, up.transform(X).reshape(3, -1))
    names = up.get_feature_names_out()
    assert len(names) == Y.shape[1] and names[0] == "volumeupsampler0"


def test_output_dtype(rng):
    X = rng.integers(0, 10, (2, 3, 4, 5))
    assert VolumeUpsampler().fit_transform(X).dtype == np.float64
    assert VolumeUpsampler().fit_transform(X.astype(np.float32)).dtype == np.float32
    flat = X.reshape(2, -1).astype(np.float32)
    assert VolumeUpsampler(volume_shape=(3, 4, 5)).fit_transform(flat).dtype == np.float32


def test_any_volume_size_after_an_nd_fit(rng):
    up = VolumeUpsampler(factor=2).fit(rng.standard_normal((2, 8, 8, 8)))
    X = rng.standard_normal((1, 7, 11, 13, 3))
    assert up.transform(X).shape == (1, 14, 22, 26, 3)


def test_refit_on_volumes_forgets_flat_shape(rng):
    up = VolumeUpsampler(volume_shape=(2, 2, 2)).fit(rng.standard_normal((2, 8)))
    up.fit(rng.standard_normal((2, 3, 3, 3)))
    assert not hasattr(up, "n_features_in_") and not hasattr(up, "volume_shape_")
    with pytest.raises(ValueError, match="fitted on n-D volumes"):
        up.get_feature_names_out()


def test_thread_count_does_not_change_the_result(rng):
    X = rng.standard_normal((5, 9, 7, 11, 2)).astype(np.float32)
    for kernel in ("trilinear", "nearest", rng.standard_normal((3, 4, 5))):
        ref = VolumeUpsampler(factor=(2, 3, 2), kernel=kernel, num_threads=1).fit_transform(X)
        Y = VolumeUpsampler(factor=(2, 3, 2), kernel=kernel, num_threads=2).fit_transform(X)
        np.testing.assert_array_equal(Y, ref)


def test_input_is_not_modified(rng):
    X = rng.standard_normal((2, 5, 4, 3))
    before = X.copy()
    X.flags.writeable = False   # read-only input is accepted, and nothing writes to it
    VolumeUpsampler(kernel="nearest").fit_transform(X)
    VolumeUpsampler().fit_transform(X)
    np.testing.assert_array_equal(X, before)


# -- learned kernel ------------------------------------------------------------------------

def _pairs(rng, kernel, bias, factor=2, shape=(6, 9, 8, 7), noise=0.0):
    X = rng.standard_normal(shape)
    Y = VolumeUpsampler(factor=factor, kernel=kernel).fit(X).transform(X) + bias
    return X, Y + noise * rng.standard_normal(Y.shape)


@pytest.mark.parametrize("factor,size", [(2, (4, 4, 4)), (3, (2, 5, 3)), ((1, 2, 3), (3, 1, 6))])
def test_learned_recovers_a_known_kernel_and_bias(rng, factor, size):
    # Kernels wider, as wide and narrower than the factor.
    true = rng.random(size)
    true *= np.prod(normalize_triple(factor, "factor")) / true.sum()
    X, Y = _pairs(rng, true, 0.3, factor=factor)
    up = VolumeUpsampler(factor=factor, kernel="learned", kernel_size=size, tol=1e-14,
                         max_iter=500, num_threads=1).fit(X, Y)
    np.testing.assert_allclose(up.kernel_, true, atol=1e-6)
    assert up.bias_ == pytest.approx(0.3, abs=1e-6)
    assert up.n_iter_ >= 1 and up.loss_ < 1e-10


@pytest.mark.parametrize("ndim", [2, 4, 5])
def test_learned_beats_trilinear(rng, ndim):
    # The truth is a sharper kernel plus noise: the fit must lower the training error
    # below trilinear's and generalise to volumes it did not see.
    sharp = upsampling._trilinear_kernel((2, 2, 2), (4, 4, 4)) ** 2
    sharp *= 8 / sharp.sum()
    X, Y = _pairs(rng, sharp, 0.0, shape=(8, 7, 6, 5, 2), noise=0.05)
    Xt, Yt = _pairs(rng, sharp, 0.0, shape=(4, 7, 6, 5, 2), noise=0.05)
    if ndim == 4:
        X, Y, Xt, Yt = X[..., 0], Y[..., 0], Xt[..., 0], Yt[..., 0]
    kw = {}
    if ndim == 2:
        X, Y, Xt, Yt = (a.reshape(len(a), -1) for a in (X, Y, Xt, Yt))
        kw = {"volume_shape": (7, 6, 5, 2)}
    learned = VolumeUpsampler(kernel="learned", num_threads=1, **kw).fit(X, Y)
    trilinear = VolumeUpsampler(**kw).fit(X)

    def mse(up, A, B):
        return np.mean((up.transform(A) - B) ** 2)

    assert learned.loss_ == pytest.approx(mse(learned, X, Y), rel=1e-6)
    assert mse(learned, X, Y) < 0.5 * mse(trilinear, X, Y)
    assert mse(learned, Xt, Yt) < 0.5 * mse(trilinear, Xt, Yt)


def test_learned_kernel_size_and_float32(rng):
    X, Y = _pairs(rng, upsampling._trilinear_kernel((3, 3, 3)), 0.0, factor=3,
                  shape=(3, 5, 4, 3))
    up = VolumeUpsampler(factor=3, kernel="learned", kernel_size=(5, 6, 7),
                         num_threads=1).fit(X.astype(np.float32), Y)
    assert up.kernel_.shape == (5, 6, 7)
    assert up.transform(X.astype(np.float32)).dtype == np.float32
    # Trilinear, laid out in the larger frame, is the starting point and the optimum here.
    np.testing.assert_allclose(up.kernel_, upsampling._trilinear_kernel((3, 3, 3), (5, 6, 7)),
                               atol=1e-5)
    assert np.count_nonzero(np.abs(up.kernel_) > 1e-5) == 5 ** 3


def test_learned_verbose_and_convergence_warning(rng, capsys):
    X, Y = _pairs(rng, rng.random((4, 4, 4)), 0.0, shape=(2, 5, 5, 5))
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        up = VolumeUpsampler(kernel="learned", max_iter=2, verbose=1).fit(X, Y)
    out = capsys.readouterr().out
    assert "[VolumeUpsampler] iteration    1  mse" in out and "done: 2 iterations" in out
    assert up.n_iter_ == 2


# -- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("params,X,match", [
    ({}, np.ones((2, 8)), "volume_shape=None does not say how to unflatten"),
    ({"volume_shape": (2, 2)}, np.ones((2, 8)), "`volume_shape` must be"),
    ({"volume_shape": (2, -1, -1)}, np.ones((2, 8)), "`volume_shape` must be"),
    ({"volume_shape": (2, 0, 2)}, np.ones((2, 8)), "`volume_shape` must be"),
    ({"volume_shape": (2, 2, 3)}, np.ones((2, 8)), "does not fit rows of 8 features"),
    ({"volume_shape": (3, -1, 1)}, np.ones((2, 8)), "does not fit rows of 8 features"),
    ({}, np.ones((2, 3, 4)), "got shape \\(2, 3, 4\\)"),
    ({}, np.ones((1, 2, 2, 2, 1, 1)), "X must be 2-D"),
    ({}, np.ones((1, 0, 2, 2)), "at least one voxel"),
    ({"factor": 0}, np.ones((1, 2, 2, 2)), "`factor` must be >= 1"),
    ({"factor": (2, 2)}, np.ones((1, 2, 2, 2)), "`factor` must be an int or a tuple of 3"),
    ({"kernel": "cubic"}, np.ones((1, 2, 2, 2)), "`kernel` must be one of"),
    ({"kernel": np.ones((2, 2))}, np.ones((1, 2, 2, 2)), "`kernel` must be one of"),
    ({"kernel": np.full((2, 2, 2), np.nan)}, np.ones((1, 2, 2, 2)), "finite"),
    ({"kernel": "learned", "kernel_size": 0}, np.ones((1, 2, 2, 2)), "`kernel_size`"),
    ({"num_threads": 0}, np.ones((1, 2, 2, 2)), "`num_threads`"),
])
def test_fit_errors(params, X, match):
    with pytest.raises(ValueError, match=match):
        VolumeUpsampler(**params).fit(X, np.ones((1, 4, 4, 4)))


@pytest.mark.parametrize("kernel", [np.ones((2, 2, 2), np.complex128),
                                    [[[1 + 0j, 2j]]], np.ones((3, 1, 1), np.complex64)])
def test_complex_kernel_is_refused(kernel):
    # Not truncated to its real part (numpy's ComplexWarning): a TypeError naming it.
    with pytest.raises(TypeError, match=r"`kernel` must hold real numbers, got a complex"):
        VolumeUpsampler(kernel=kernel).fit(np.ones((1, 2, 2, 2)))


def test_learned_kernel_size_defaults_to_three_times_the_factor(rng):
    X = rng.standard_normal((1, 3, 4, 2))
    Y = rng.standard_normal((1, 6, 12, 2))
    up = VolumeUpsampler(factor=(2, 3, 1), kernel="learned", max_iter=1)
    with pytest.warns(ConvergenceWarning):
        up.fit(X, Y)
    assert up.kernel_.shape == (6, 9, 3)


@pytest.mark.parametrize("params,match", [
    ({"max_iter": "a"}, r"'max_iter' parameter .* an int in the range \[1, inf\)\. Got 'a'"),
    ({"max_iter": -1}, r"'max_iter' parameter .* Got -1 instead"),
    ({"max_iter": 0}, r"'max_iter' parameter .* Got 0 instead"),
    ({"max_iter": 2.5}, r"'max_iter' parameter .* Got 2.5 instead"),
    ({"tol": np.nan}, r"'tol' parameter .* in the range \[0.0, inf\)\. Got nan instead"),
    ({"tol": -1e-3}, r"'tol' parameter .* Got -0.001 instead"),
    ({"verbose": "x"}, r"'verbose' parameter .* Got 'x' instead"),
    ({"verbose": -1}, r"'verbose' parameter .* Got -1 instead"),
    ({"factor": 2.5}, r"'factor' parameter .* Got 2.5 instead"),
    ({"kernel": 3}, r"'kernel' parameter .* Got 3 instead"),
    ({"num_threads": 1.5}, r"'num_threads' parameter .* Got 1.5 instead"),
])
@pytest.mark.parametrize("kernel", ["trilinear", "learned"])
def test_parameters_are_checked_before_any_work(params, match, kernel):
    # Every parameter, whatever the kernel, as scikit-learn checks them (an
    # InvalidParameterError is a ValueError and a TypeError).
    up = VolumeUpsampler(**{"kernel": kernel, **params})
    with pytest.raises(InvalidParameterError, match=match):
        up.fit(np.ones((1, 2, 2, 2)), np.ones((1, 4, 4, 4)))


@pytest.mark.parametrize("kernel", ["trilinear", "nearest", "learned"])
def test_parameter_constraints_pass_scikit_learn_check(kernel):
    check_param_validation("VolumeUpsampler", VolumeUpsampler(kernel=kernel))


def test_learned_needs_matching_high_resolution_volumes():
    X = np.ones((2, 3, 4, 5))
    up = VolumeUpsampler(kernel="learned")
    with pytest.raises(ValueError, match=r"call fit\(X, y\).*\(2, 6, 8, 10\)"):
        up.fit(X)
    with pytest.raises(ValueError, match=r"of shape \(2, 6, 8, 10\).*got \(2,\)"):
        up.fit(X, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"of shape \(2, 960\).*got \(2, 6, 8, 10\)"):
        VolumeUpsampler(kernel="learned", volume_shape=(3, 4, 5, 2)).fit(
            np.ones((2, 120)), np.ones((2, 6, 8, 10)))


def test_transform_errors(rng):
    with pytest.raises(NotFittedError):
        VolumeUpsampler().transform(np.ones((1, 2, 2, 2)))
    up = VolumeUpsampler(volume_shape=(2, 2, -1)).fit(np.ones((3, 8)))
    with pytest.raises(ValueError, match="X has 12 features, but VolumeUpsampler is "
                                         "expecting 8 features"):
        up.transform(np.ones((3, 12)))


def test_tags():
    tags = get_tags(VolumeUpsampler())
    assert tags.input_tags.three_d_array and tags.input_tags.two_d_array
    assert tags.transformer_tags.preserves_dtype == ["float64", "float32"]
    assert not tags.target_tags.required
    assert get_tags(VolumeUpsampler(kernel="learned")).target_tags.required


# -- scikit-learn citizenship -------------------------------------------------------------

# xfail_strict (scikit-learn >= 1.7) makes an expected failure that passes an error.
_STRICT = ({"xfail_strict": True}
           if "xfail_strict" in inspect.signature(parametrize_with_checks).parameters else {})


@parametrize_with_checks(
    [VolumeUpsampler(volume_shape=(1, 1, -1)),
     VolumeUpsampler(factor=(1, 2, 3), kernel="nearest", volume_shape=(-1, 1, 1, 1)),
     VolumeUpsampler(factor=(2, 1, 1), kernel=np.full((3, 1, 2), 0.5),
                     volume_shape=(1, -1, 1))],
    expected_failed_checks=_expected_failed_checks, **_STRICT)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_expected_failed_checks_are_few_and_explained():
    for est in (VolumeUpsampler(), VolumeUpsampler(kernel="nearest")):
        assert list(_expected_failed_checks(est)) == ["check_transformer_n_iter"]
    assert _expected_failed_checks(VolumeUpsampler(kernel="learned")) == {}


def _dataset(rng, n=40, shape=(4, 3, 5)):
    """Two classes of small volumes that differ by a blob near one corner."""
    y = np.arange(n) % 2
    X = rng.standard_normal((n, *shape))
    X[y == 1, :2, :2, :2] += 1.5
    return X.reshape(n, -1), y


def test_pipeline_grid_search_clone_and_pickle(rng):
    X, y = _dataset(rng)
    pipe = Pipeline([("up", VolumeUpsampler(volume_shape=(4, 3, 5), num_threads=1)),
                     ("pca", PCA(n_components=5)),
                     ("clf", LogisticRegression())])
    grid = GridSearchCV(pipe, {"up__factor": [1, 2, (1, 2, 1)],
                               "up__kernel": ["nearest", "trilinear"]}, cv=3)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 6
    assert grid.score(X, y) > 0.8
    best = grid.best_estimator_
    assert best.named_steps["pca"].n_features_in_ == (
        60 * int(np.prod(best.named_steps["up"].factor_)))

    restored = pickle.loads(pickle.dumps(best))
    np.testing.assert_array_equal(restored.predict_proba(X), best.predict_proba(X))
    fresh = clone(best)
    assert not hasattr(fresh.named_steps["up"], "kernel_")
    assert fresh.get_params()["up__kernel"] == best.get_params()["up__kernel"]
    np.testing.assert_array_equal(fresh.fit(X, y).predict_proba(X), best.predict_proba(X))


def test_feature_names_with_pandas(rng):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(rng.standard_normal((3, 8)), columns=[f"v{i}" for i in range(8)])
    up = VolumeUpsampler(kernel="nearest", volume_shape=(2, 2, 2)).fit(df)
    np.testing.assert_array_equal(up.feature_names_in_, df.columns)
    assert list(up.get_feature_names_out(df.columns))[:2] == ["volumeupsampler0",
                                                             "volumeupsampler1"]
    out = up.set_output(transform="pandas").transform(df)
    assert out.shape == (3, 64) and out.columns[63] == "volumeupsampler63"


def test_learned_clone_and_pickle(rng):
    X, Y = _pairs(rng, upsampling._trilinear_kernel((2, 2, 2)), 0.1, shape=(3, 4, 4, 4))
    up = VolumeUpsampler(kernel="learned", num_threads=1).fit(X, Y)
    again = pickle.loads(pickle.dumps(up))
    np.testing.assert_array_equal(again.transform(X), up.transform(X))
    for a, b in itertools.combinations([up, again, clone(up).fit(X, Y)], 2):
        np.testing.assert_array_equal(a.kernel_, b.kernel_)


@pytest.mark.parametrize("kernel", ["trilinear", "nearest", "label", "learned"])
def test_huge_factors_are_refused_before_allocating(kernel):
    """Each voxel's output at factor 10**4 would need TiB (10**9: past the index range):
    a clear error naming the factor, at once, instead of the OOM killer."""
    x = np.ones((1, 2, 2, 2))
    with pytest.raises(MemoryError, match=r"`factor` \(10000, 10000, 10000\): `output of one "
                                          r"voxel` of shape .* needs .* TiB"):
        VolumeUpsampler(factor=10**4, kernel=kernel).fit(x, x if kernel == "learned" else None)
    with pytest.raises(ValueError, match=r"`factor` \(1000000000, .*`output of one voxel` .* "
                                         r"more than a 64-bit index"):
        VolumeUpsampler(factor=10**9, kernel=kernel).fit(x, x if kernel == "learned" else None)
    up = VolumeUpsampler(factor=(1, 1, 10**5), kernel=kernel if kernel != "learned" else
                         "trilinear").fit(x)
    assert up.transform(x).shape == (1, 2, 2, 2 * 10**5)


def test_learned_fit_too_large_for_memory_is_refused_before_allocating():
    """kernel_size (1200,)*3 fits in memory (12.9 GiB) but not the fit's working copies."""
    with pytest.raises(MemoryError, match=r"`factor` \(400, 400, 400\): `learned kernel_'s "
                                          r"working copies` of shape \(28, 1200, 1200, 1200\)"
                                          r" .* needs 360.5 GiB"):
        VolumeUpsampler(factor=400, kernel="learned").fit(np.ones((1, 1, 1, 1)))


@pytest.mark.parametrize("kernel", ["trilinear", "nearest", "label"])
def test_separable_kernels_are_never_multiplied_out(rng, kernel, monkeypatch):
    """fit and transform keep the three 1-D kernels; kernel_ is built on access only."""
    x = rng.integers(0, 3, (2, 3, 4, 5)).astype(np.float64)
    up = VolumeUpsampler(factor=(2, 3, 4), kernel=kernel)
    expected = up.fit_transform(x)
    product = upsampling._separable.outer

    def refuse(taps):
        raise AssertionError("the 3-D kernel was built")

    monkeypatch.setattr(upsampling._separable, "outer", refuse)
    np.testing.assert_array_equal(up.fit_transform(x), expected)
    assert [t.shape for t in up.kernel_taps_] == ([(2,), (3,), (4,)] if kernel == "nearest"
                                                  else [(4,), (5,), (8,)])
    monkeypatch.setattr(upsampling._separable, "outer", product)
    np.testing.assert_array_equal(up.kernel_, product(up.kernel_taps_))
    # a refit with another kind of kernel forgets the taps, and back again
    up.set_params(kernel=np.ones((2, 2, 2))).fit(x)
    assert up.kernel_taps_ is None and up.kernel_.shape == (2, 2, 2)
    np.testing.assert_array_equal(up.set_params(kernel=kernel).fit_transform(x), expected)
