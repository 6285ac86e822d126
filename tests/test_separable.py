"""Separable kernels (nearest, trilinear) run one axis at a time (tconv3d._separable): the
numbers of np.repeat and torch's interpolate at every factor, both pass forms (strided
below 16, polyphase from 16 on), bitwise equal on Dask, and a cost linear in the output."""
import time

import numpy as np
import pytest

from tconv3d import _plan, _separable
from tconv3d.upsampling import VolumeUpsampler

da = pytest.importorskip("dask.array")
import tconv3d.dask as tdask  # noqa: E402


def _repeat(x, factor):
    for axis, s in enumerate(factor):
        x = np.repeat(x, s, axis=1 + axis)
    return x


def _torch(x, factor):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(x, np.float64))[:, None]
    return torch.nn.functional.interpolate(t, scale_factor=factor, mode="trilinear",
                                           align_corners=False)[:, 0].numpy()


# Factors on both sides of the polyphase threshold, odd and even, mixed per axis.
FACTORS = [(15, 1, 2), (16, 16, 16), (17, 3, 1), (1, 1, 33), (2, 20, 5), (64, 1, 1)]
SHAPES = [(2, 3, 4, 2), (1, 1, 1, 1), (1, 1, 5, 2)]


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("shape", SHAPES)
def test_trilinear_matches_torch_at_large_factors(rng, factor, shape):
    x = rng.standard_normal(shape)
    y = VolumeUpsampler(factor=factor).fit_transform(x)
    np.testing.assert_allclose(y, _torch(x, factor), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("factor", FACTORS)
def test_nearest_is_np_repeat_at_large_factors(rng, factor, dtype):
    x = rng.standard_normal((2, 3, 2, 2)).astype(dtype)
    y = VolumeUpsampler(factor=factor, kernel="nearest").fit_transform(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, _repeat(x, factor))


def test_float32_trilinear_at_a_large_factor_is_rounding_close(rng):
    x = rng.standard_normal((1, 3, 4, 2)).astype(np.float32)
    y = VolumeUpsampler(factor=(20, 3, 17)).fit_transform(x)
    exact = _torch(x, (20, 3, 17))
    np.testing.assert_allclose(y, exact, rtol=0, atol=8 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("kernel", ["nearest", "trilinear"])
@pytest.mark.parametrize("factor", [(16, 2, 3), (2, 1, 17), (3, 3, 3)])
@pytest.mark.parametrize("policy", ["propagate", "ignore"])
def test_dask_is_bitwise_the_in_memory_result(rng, kernel, factor, policy):
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    x[0, 2, 1, 3] = np.nan
    x[2, 0, 0, :] = np.nan
    up = VolumeUpsampler(factor=factor, kernel=kernel, nan_policy=policy).fit(x)
    expected = up.transform(x)
    for chunks in [(1, 1, 1, 1), (2, (2, 3), (3, 1), (1, 4, 1)), (3, 5, 4, 6)]:
        got = tdask.upsample(up, da.from_array(x, chunks=chunks)).compute(scheduler="threads")
        assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("kernel", ["nearest", "trilinear"])
@pytest.mark.parametrize("factor", [(2, 3, 2), (16, 1, 2)])
def test_borders_from_views_and_copies_agree(rng, monkeypatch, kernel, factor):
    # Large volumes compute the border outputs from thin edge-replicated copies and the
    # others from a view; small ones all from one copy. Same sums, same bits.
    x = rng.standard_normal((2, 9, 7, 8))
    up = VolumeUpsampler(factor=factor, kernel=kernel).fit(x)
    one_copy = up.transform(x)
    monkeypatch.setattr(_separable, "MAX_COPIED_VOXELS", 0)
    assert up.transform(x).tobytes() == one_copy.tobytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_the_result(rng, threads):
    x = rng.standard_normal((2, 40, 30, 20)).astype(np.float32)   # past MAX_COPIED_VOXELS
    for kernel, factor in (("trilinear", (2, 3, 2)), ("nearest", (16, 1, 2))):
        ref = VolumeUpsampler(factor=factor, kernel=kernel, num_threads=1).fit_transform(x)
        y = VolumeUpsampler(factor=factor, kernel=kernel, num_threads=threads).fit_transform(x)
        assert y.tobytes() == ref.tobytes()


def test_named_kernels_run_separably_and_a_changed_kernel_is_honoured(rng):
    x = rng.standard_normal((1, 4, 3, 5))
    up = VolumeUpsampler(factor=(2, 3, 1)).fit(x)
    assert _plan.from_estimator(up).taps is not None
    separable = up.transform(x)
    up.kernel_ = up.kernel_ * 2.0      # no longer the named kernel: the 3-D plan, as given
    assert _plan.from_estimator(up).taps is None
    np.testing.assert_allclose(up.transform(x), 2 * separable, rtol=1e-12)


@pytest.mark.parametrize("s", [1, 2, 3, 4, 15, 16, 17, 32, 33])
def test_polyphase_form_is_the_definition(s):
    # W[m, r'] is the tap output Q*s + r' gives to input Q + shift - m.
    taps = _separable.triangle(s)
    W, shift = _separable.polyphase(taps, s)
    k, c = len(taps), (len(taps) - s) // 2
    for q in range(-1, 2):
        for r in range(s):
            o = q * s + r
            expected = {i: taps[o + c - i * s] for i in range(-3, 4) if 0 <= o + c - i * s < k}
            got = {q + shift - m: W[m, r] for m in range(len(W)) if W[m, r] != 0}
            assert got == {i: w for i, w in expected.items() if w != 0}


def test_huge_factor_on_one_axis_is_fast():
    # Issue 16: `--factor 1,1,100000` on a 4x5x6 volume ran for minutes.
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 6))
    start = time.perf_counter()
    y = VolumeUpsampler(factor=(1, 1, 100000)).fit_transform(x)
    near = VolumeUpsampler(factor=(1, 1, 100000), kernel="nearest").fit_transform(x)
    assert time.perf_counter() - start < 20   # about 0.1 s; generous on a busy machine
    assert y.shape == (1, 4, 5, 600000)
    np.testing.assert_array_equal(near, np.repeat(x, 100000, axis=3))
    np.testing.assert_allclose(y[0, :, :, ::25000], _torch(x, (1, 1, 100000))[0, :, :, ::25000],
                               rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 7, 4, 3), (1, 7, 4, 3), (2, 5, 3, 4, 3), (1, 2, 9, 9)])
@pytest.mark.parametrize("factor", [(2, 3, 2), (1, 2, 17), (3, 1, 1)])
@pytest.mark.parametrize("policy", ["propagate", "ignore"])
@pytest.mark.parametrize("kernel", ["trilinear", "nearest"])
def test_chunks_on_python_threads_are_bitwise_one_call(rng, monkeypatch, shape, factor,
                                                       policy, kernel):
    # num_threads > 1 splits the volume into chunks (volumes, else depth slabs) computed
    # side by side, each written straight into the output where its layout allows.
    from tconv3d import _plan

    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::17] = np.nan
    ref = VolumeUpsampler(factor=factor, kernel=kernel, nan_policy=policy,
                          num_threads=1).fit_transform(x)
    monkeypatch.setattr(_plan, "MIN_PARALLEL_VOXELS", 1)
    for threads in (2, 3):
        up = VolumeUpsampler(factor=factor, kernel=kernel, nan_policy=policy,
                             num_threads=threads)
        assert up.fit_transform(x).tobytes() == ref.tobytes()
