"""VolumeUpsampler(kernel="label"): label maps against a direct definition in exact
arithmetic, ties, dtypes, errors, and Dask equal to the in-memory result."""
import itertools
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pytest

from tconv3d.upsampling import VolumeUpsampler, _trilinear_kernel

da = pytest.importorskip("dask.array")
import tconv3d.dask as tdask  # noqa: E402


def _reference(x, factor):
    """Output o: among the input voxels with a nonzero trilinear weight
    ``max(0, 1 - |u - i|)``, ``u = (o + 1/2)/s - 1/2`` per axis (index clipped to the
    volume), the label with the largest total weight, the smallest on ties; in exact
    fractions."""
    n_spatial = x.shape[1:]
    out = np.empty((len(x), *(n * s for n, s in zip(n_spatial, factor))), x.dtype)
    for o in itertools.product(*(range(m) for m in out.shape[1:])):
        per_axis = []
        for oa, s, n in zip(o, factor, n_spatial):
            u = Fraction(2 * oa + 1, 2 * s) - Fraction(1, 2)
            pairs = []
            for i in range(-2, n + 2):
                w = 1 - abs(u - i)
                if w > 0:
                    pairs.append((min(max(i, 0), n - 1), w))
            per_axis.append(pairs)
        for b in range(len(x)):
            votes = defaultdict(Fraction)
            for (i, wi), (j, wj), (k, wk) in itertools.product(*per_axis):
                votes[x[b, i, j, k].item()] += wi * wj * wk
            best = max(votes.values())
            out[(b, *o)] = min(label for label, v in votes.items() if v == best)
    return out


@pytest.mark.parametrize("factor", [1, 2, 3, (1, 2, 3), (4, 1, 2), (2, 5, 2)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float64])
def test_matches_the_direct_definition(rng, factor, dtype):
    x = rng.integers(0, 3, (2, 3, 4, 3)).astype(dtype)   # 3 labels: many ties
    up = VolumeUpsampler(factor=factor, kernel="label").fit(x)
    y = up.transform(x)
    f = (factor,) * 3 if isinstance(factor, int) else factor
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, _reference(x, f))
    for chunks in [(1, 1, 1, 1), (2, (2, 1), (1, 3), 3)]:
        got = tdask.upsample(up, da.from_array(x, chunks=chunks)).compute(scheduler="threads")
        assert got.dtype == dtype and got.tobytes() == y.tobytes()


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 5, 1), (2, 6, 1, 2)])
def test_one_voxel_axes_and_bool(rng, shape):
    x = rng.integers(0, 2, shape).astype(bool)
    y = VolumeUpsampler(factor=(2, 3, 4), kernel="label").fit_transform(x)
    assert y.dtype == bool
    np.testing.assert_array_equal(y, _reference(x, (2, 3, 4)))


def test_ties_go_to_the_smallest_label():
    # x2: the weights of a 2x2x2 neighbourhood are 27, 9, 9, 9, 3, 3, 3, 1 (/64). Label 7
    # on the 27 corner and label 5 on the three 9 corners tie at 27: 5 wins; with 8
    # instead of 5, 7 wins.
    x = np.full((1, 2, 2, 2), 1, np.int32)
    x[0, 0, 0, 0] = 7
    x[0, 1, 0, 0] = x[0, 0, 1, 0] = x[0, 0, 0, 1] = 5
    y = VolumeUpsampler(factor=2, kernel="label").fit_transform(x)
    assert y[0, 1, 1, 1] == 5               # output (1,1,1) is nearest voxel (0,0,0)
    x[x == 5] = 8
    y = VolumeUpsampler(factor=2, kernel="label").fit_transform(x)
    assert y[0, 1, 1, 1] == 7


def test_labels_are_never_invented(rng):
    x = rng.choice(np.array([-40, 3, 1000, 2**40]), (1, 5, 4, 6))
    y = VolumeUpsampler(factor=3, kernel="label").fit_transform(x)
    assert set(np.unique(y)) <= set(np.unique(x)) and y.dtype == x.dtype
    np.testing.assert_array_equal(y, _reference(x, (3, 3, 3)))
    const = VolumeUpsampler(factor=4, kernel="label").fit_transform(np.full((1, 2, 3, 2), 9))
    assert (const == 9).all()


def test_channels_and_flattened_maps(rng):
    x = rng.integers(0, 4, (2, 3, 3, 2, 2)).astype(np.int16)
    up = VolumeUpsampler(factor=2, kernel="label").fit(x)
    y = up.transform(x)
    assert y.shape == (2, 6, 6, 4, 2) and y.dtype == np.int16
    for c in range(2):
        np.testing.assert_array_equal(y[..., c], up.transform(x[..., c]))
    flat = VolumeUpsampler(factor=2, kernel="label", volume_shape=(3, 3, 2, 2)).fit(
        x.reshape(2, -1))
    np.testing.assert_array_equal(flat.transform(x.reshape(2, -1)), y.reshape(2, -1))


def test_kernel_is_the_trilinear_weights():
    up = VolumeUpsampler(factor=(2, 3, 1), kernel="label").fit(np.zeros((1, 2, 2, 2), int))
    np.testing.assert_array_equal(up.kernel_, _trilinear_kernel((2, 3, 1)))
    assert up.bias_ == 0.0


@pytest.mark.parametrize("values, match", [
    (np.array([0.0, 1.5]), "not"),
    (np.array([0.0, np.nan]), "NaN or infinite"),
    (np.array([1 + 1j, 0j]), "dtype complex"),
])
def test_not_label_maps_are_refused(values, match):
    x = np.resize(values, (1, 2, 2, 2))
    with pytest.raises(ValueError, match=match):
        VolumeUpsampler(kernel="label").fit_transform(x)
    if values.dtype.kind == "f":
        up = VolumeUpsampler(kernel="label").fit(np.zeros((1, 2, 2, 2)))
        with pytest.raises(ValueError, match=match):
            tdask.upsample(up, da.from_array(x, chunks=1)).compute(scheduler="sync")
