"""tconv3d.dask: lazy chunked transposed convolution and upsampling, bitwise equal to the
in-memory results for any chunking, on the threaded scheduler and on a LocalCluster of
processes; a worker's peak memory does not grow with the volume."""
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import tconv3d  # noqa: E402
import tconv3d.dask as tdask  # noqa: E402
from tconv3d import _kernels, _ops, _threads  # noqa: E402
from tconv3d.upsampling import VolumeUpsampler  # noqa: E402

DTYPES = [np.float32, np.float64]
FORMATS = ["channels_last", "channels_first"]


def _chunked(x, spatial_chunks, batch_chunks, data_format, channel_chunks=None):
    """``x`` as a dask array with the given spatial and batch chunks."""
    channels = x.shape[-1] if data_format == "channels_last" else x.shape[1]
    chunks = [batch_chunks, *spatial_chunks]
    chunks.insert(4 if data_format == "channels_last" else 1, channel_chunks or channels)
    return da.from_array(x, chunks=tuple(chunks))


def _assert_bitwise(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected, strict=True)
    assert actual.tobytes() == expected.tobytes()  # also -0.0 versus 0.0


# Geometries: every stride phase, kernels larger and smaller than the stride, dilation,
# output_padding on some axes only, and "same"'s odd crop. Spatial sizes are odd and the
# chunks (below) do not divide them.
CASES = [
    dict(kernel=(3, 3, 3), strides=2, padding="same"),
    dict(kernel=(2, 2, 2), strides=2, padding="valid"),
    dict(kernel=(4, 1, 5), strides=(1, 2, 3), padding="valid", output_padding=(0, 1, 2)),
    dict(kernel=(3, 4, 2), strides=(3, 1, 2), padding="same", dilation_rate=(2, 3, 1)),
    dict(kernel=(5, 3, 1), strides=(2, 3, 4), padding="same", output_padding=(1, 2, 3)),
    dict(kernel=(1, 2, 3), strides=(5, 4, 7), padding="valid"),                # gaps s > k
    dict(kernel=(3, 3, 3), strides=1, padding="same", dilation_rate=(3, 2, 1)),
    dict(kernel=(2, 3, 4), strides=(2, 2, 3), padding="valid", dilation_rate=2,
         output_padding=(1, 0, 2)),
    dict(kernel=(6, 5, 7), strides=(4, 1, 2), padding="same", output_padding=0),
    # PyTorch's integer padding, with bias-only planes (output_padding >= stride, d > s)
    dict(kernel=(3, 3, 2), strides=2, padding=(1, 0, 2), output_padding=(1, 0, 1)),
    dict(kernel=(3, 2, 3), strides=1, padding=(2, 1, 0), output_padding=(1, 1, 0),
         dilation_rate=(2, 2, 1)),
]
# (spatial chunks, batch chunks) for spatial size (7, 5, 6) and batch 3: uneven chunks,
# single-voxel chunks (smaller than every kernel, so halos span several chunks) and none.
CHUNKINGS = [
    (((3, 3, 1), (2, 1, 2), (4, 2)), (2, 1)),
    (((1,) * 7, (1,) * 5, (1,) * 6), (3,)),
    (((7,), (5,), (6,)), (1, 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_transpose3d_is_bitwise_the_in_memory_result(rng, case, fmt, dtype):
    kwargs = dict(CASES[case], data_format=fmt)
    kernel = kwargs.pop("kernel")
    shape = (3, 7, 5, 6, 4) if fmt == "channels_last" else (3, 4, 7, 5, 6)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((*kernel, 3, 4)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    expected = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    for spatial_chunks, batch_chunks in CHUNKINGS:
        xd = _chunked(x, spatial_chunks, batch_chunks, fmt)
        y = tdask.conv_transpose3d(xd, w, b, **kwargs)
        assert isinstance(y, da.Array) and y.shape == expected.shape and y.dtype == dtype
        assert y.chunks[0] == batch_chunks
        _assert_bitwise(y.compute(scheduler="threads"), expected)
    # Without bias too (the kernel starts each sum at zero instead of the bias).
    y = tdask.conv_transpose3d(_chunked(x, *CHUNKINGS[0], fmt), w, **kwargs)
    _assert_bitwise(y.compute(scheduler="threads"), tconv3d.conv_transpose3d(x, w, **kwargs))


def _random_chunks(rng, n):
    cuts = sorted(rng.choice(np.arange(1, n), size=rng.integers(0, n), replace=False)) \
        if n > 1 else []
    return tuple(np.diff([0, *cuts, n]).tolist())


def test_conv_transpose3d_random_geometries_and_chunks_are_bitwise(rng):
    """A seeded sweep: any stride, kernel, dilation, padding, output_padding and chunking
    (sizes 1 to 9, kernels up to 6 taps, strides up to 5)."""
    checked = 0
    while checked < 60:
        spatial = tuple(rng.integers(1, 10, size=3).tolist())
        kernel = tuple(rng.integers(1, 7, size=3).tolist())
        strides = tuple(rng.integers(1, 6, size=3).tolist())
        dilation = tuple(rng.integers(1, 4, size=3).tolist())
        padding = ["valid", "same"][rng.integers(2)]
        output_padding = (None if rng.random() < 0.4 else
                          tuple(int(rng.integers(0, s)) for s in strides))
        kwargs = dict(strides=strides, padding=padding, output_padding=output_padding,
                      dilation_rate=dilation)
        try:
            tconv3d.conv_transpose3d_output_shape((1, *spatial, 1), (*kernel, 1, 1), **kwargs)
        except ValueError:  # an empty output: not a geometry
            continue
        x = rng.standard_normal((2, *spatial, 2))
        w = rng.standard_normal((*kernel, 2, 2))
        b = rng.standard_normal(2)
        xd = da.from_array(x, chunks=((1, 1), *(_random_chunks(rng, n) for n in spatial), 2))
        y = tdask.conv_transpose3d(xd, w, b, **kwargs)
        _assert_bitwise(y.compute(scheduler="sync"), tconv3d.conv_transpose3d(x, w, b, **kwargs))
        checked += 1


@pytest.mark.parametrize("variant", _kernels.simd_variants_supported())
def test_bitwise_with_every_simd_variant(rng, variant):
    # Chunks put each output voxel at another place in the GEMM's row tiles than the
    # whole-volume call does: exactness relies on every tile path summing in one order.
    x = rng.standard_normal((2, 9, 7, 23, 5))
    w = rng.standard_normal((3, 2, 4, 6, 5))
    kwargs = dict(strides=(2, 1, 3), padding="same", dilation_rate=(1, 2, 1))
    xd = da.from_array(x, chunks=(1, 4, 3, (7, 1, 9, 6), 5))
    before = _kernels.simd_variant()
    try:
        _kernels.set_simd_variant(variant)
        for dtype in DTYPES:
            expected = tconv3d.conv_transpose3d(x.astype(dtype), w.astype(dtype), **kwargs)
            y = tdask.conv_transpose3d(xd.astype(dtype), w.astype(dtype), **kwargs)
            _assert_bitwise(y.compute(scheduler="sync"), expected)
    finally:
        _kernels.set_simd_variant(before)


@pytest.mark.parametrize("k, d, s", [(3, 1, 2), (7, 2, 1), (4, 3, 2), (2, 1, 3), (5, 1, 5)])
def test_output_chunks_and_halos_follow_the_stride_arithmetic(k, d, s):
    # Output chunk boundaries are the input's times s minus the crop, and each output
    # chunk reads its own input chunk plus floor((k - 1)*d / s) voxels to its left only,
    # from as many chunks as that takes.
    n, chunks = 11, (1, 3, 1, 2, 4)
    x = da.ones((1, n, 1, 1, 1), chunks=(1, chunks, 1, 1, 1))
    y = tdask.conv_transpose3d(x, np.ones((k, 1, 1, 1, 1)), strides=(s, 1, 1),
                               dilation_rate=(d, 1, 1), padding="same")
    geom = _ops.make_geometry(x.shape, (k, 1, 1, 1, 1), (s, 1, 1), "same", None,
                              (d, 1, 1), "channels_last")
    c, out = geom.crop[0], geom.out_spatial[0]
    bounds = np.cumsum((0, *chunks))
    edges = sorted({min(max(b * s - c, 0), out) for b in bounds[:-1]} | {out})
    assert y.chunks[1] == tuple(np.diff(edges))
    halo = (k - 1) * d // s
    deps = y.__dask_graph__().get_all_dependencies()
    for t, (o_lo, o_hi) in enumerate(zip(edges[:-1], edges[1:])):
        blocks = {key[2] for key in deps[(y.name, 0, t, 0, 0, 0)] if key[0] == x.name}
        i_lo = max(0, -(-(o_lo + c - (k - 1) * d) // s))
        i_hi = min(n, (o_hi - 1 + c) // s + 1)
        needed = {i for i in range(len(chunks)) if bounds[i] < i_hi and bounds[i + 1] > i_lo}
        assert blocks == needed
        if 0 < o_lo == bounds[t] * s - c:  # an unclipped boundary: left halo only
            assert i_lo == max(0, bounds[t] - halo) and i_hi == bounds[t + 1]
    _assert_bitwise(y.compute(scheduler="sync"),
                    tconv3d.conv_transpose3d(np.ones(x.shape), np.ones((k, 1, 1, 1, 1)),
                                             strides=(s, 1, 1), dilation_rate=(d, 1, 1),
                                             padding="same"))


def test_channel_chunks_are_merged_and_inputs_are_cast(rng):
    x = rng.standard_normal((2, 6, 5, 4, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2, 6)).astype(np.float32)
    xd = da.from_array(x, chunks=(1, 4, 2, 3, 2))
    y = tdask.conv_transpose3d(xd, w, strides=2, padding="same")
    assert y.chunks[4] == (2,) and y.dtype == np.float32
    _assert_bitwise(y.compute(), tconv3d.conv_transpose3d(x, w, strides=2, padding="same"))
    # other dtypes follow the in-memory rule (int16 with float32: float32; float64 wins).
    xi = (x * 10).astype(np.int16)
    y = tdask.conv_transpose3d(da.from_array(xi, chunks=(1, 4, 2, 3, 6)), w, strides=2)
    _assert_bitwise(y.compute(), tconv3d.conv_transpose3d(xi, w, strides=2))
    y = tdask.conv_transpose3d(xd.astype(np.float16), w.astype(np.float64))
    assert y.dtype == np.float64
    _assert_bitwise(y.compute(), tconv3d.conv_transpose3d(x.astype(np.float16),
                                                          w.astype(np.float64)))


def test_each_task_runs_the_kernel_on_num_threads(rng, monkeypatch):
    monkeypatch.setattr(_threads, "MIN_WORK_PER_THREAD", 1)  # let small calls use threads
    calls = []
    forward = _kernels.forward

    def spy(*args, **kwargs):
        calls.append(args[7])
        return forward(*args, **kwargs)

    monkeypatch.setattr(_kernels, "forward", spy)
    x = rng.standard_normal((2, 6, 6, 6, 3))
    w = rng.standard_normal((3, 3, 3, 2, 3))
    xd = da.from_array(x, chunks=(1, 3, 6, 6, 3))
    expected = tconv3d.conv_transpose3d(x, w, strides=2, num_threads=1)
    calls.clear()
    _assert_bitwise(tdask.conv_transpose3d(xd, w, strides=2).compute(scheduler="threads"),
                    expected)
    assert calls == [1] * 4       # default: one thread per task, whatever OpenMP's default
    calls.clear()
    y = tdask.conv_transpose3d(xd, w, strides=2, num_threads=2)
    _assert_bitwise(y.compute(scheduler="threads"), expected)
    assert calls == [2] * 4
    calls.clear()
    up = VolumeUpsampler(factor=2).fit(x[..., 0])
    tdask.upsample(up, xd[..., 0]).compute(scheduler="threads")
    assert calls and set(calls) == {1}
    calls.clear()
    tdask.upsample(up.set_params(num_threads=2), xd[..., 0]).compute(scheduler="threads")
    assert calls and set(calls) == {2}


def test_result_is_lazy_and_numpy_input_is_wrapped(rng):
    def fail(block):
        raise RuntimeError("computed")

    x = da.ones((1, 4, 4, 4, 2), chunks=2).map_blocks(fail, dtype=float)
    y = tdask.conv_transpose3d(x, np.ones((2, 2, 2, 3, 2)), strides=2)   # builds only
    assert y.shape == (1, 8, 8, 8, 3)
    with pytest.raises(RuntimeError, match="computed"):
        y.compute(scheduler="sync")
    xn = rng.standard_normal((1, 4, 4, 4, 2))
    y = tdask.conv_transpose3d(xn, np.ones((2, 2, 2, 3, 2)), strides=2)
    assert isinstance(y, da.Array)
    _assert_bitwise(y.compute(), tconv3d.conv_transpose3d(xn, np.ones((2, 2, 2, 3, 2)),
                                                          strides=2))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=da.ones((4, 4, 4, 2))), ValueError, "must be 5-D"),
    (dict(kernel=np.ones((2, 2, 2, 3, 5))), ValueError, "input channels"),
    (dict(bias=np.ones(4)), ValueError, r"`bias` must have shape \(3,\)"),
    (dict(num_threads=0), ValueError, "`num_threads`"),
    (dict(strides=0), ValueError, "`strides`"),
    (dict(output_padding=2), ValueError, "smaller than `strides`"),
    (dict(x=da.ones((1, 4, 4, 4, 2), dtype=complex)), TypeError, "real numbers"),
])
def test_errors_are_raised_when_the_graph_is_built(kwargs, error, match):
    args = dict(x=da.ones((1, 4, 4, 4, 2), chunks=2), kernel=np.ones((2, 2, 2, 3, 2)))
    args.update(kwargs)
    x, kernel = args.pop("x"), args.pop("kernel")
    with pytest.raises(error, match=match):
        tdask.conv_transpose3d(x, kernel, strides=args.pop("strides", 2), **args)


def test_unknown_chunk_sizes_are_refused():
    x = da.ones((4, 4, 4, 4, 2), chunks=2)
    x = x[da.arange(4, chunks=2) > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        tdask.conv_transpose3d(x, np.ones((2, 2, 2, 3, 2)))


def test_module_docstring_example():
    import doctest

    assert doctest.testmod(tdask).failed == 0


def test_import_tconv3d_never_imports_dask(run_python):
    out = run_python("-c", "import sys, tconv3d, tconv3d.upsampling; "
               "print(sorted(m for m in sys.modules if m.split('.')[0] in "
               "('dask', 'distributed')))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_dask_names_the_extra(run_python):
    out = run_python("-c", "import sys; sys.modules['dask'] = None\n"
               "try:\n    import tconv3d.dask\nexcept ImportError as e:\n    print(e)")
    assert out.returncode == 0, out.stderr
    assert 'pip install "tconv3d[dask]"' in out.stdout


# ------------------------------------------------------------------------------ upsample

UPSAMPLE_KERNELS = ["nearest", "trilinear", "array", "small", "learned"]


def _fitted(kind, factor, X, rng):
    if kind == "learned":  # a learned kernel and a nonzero bias
        up = VolumeUpsampler(factor=factor, kernel="learned", max_iter=2)
        Y = rng.standard_normal((len(X), *(n * s for n, s in zip(X.shape[1:4], factor)),
                                 *X.shape[4:]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return up.fit(X, Y)
    kernel = {"array": rng.standard_normal((5, 4, 3)),          # more taps than factor
              "small": rng.standard_normal((1, 2, 1))}.get(kind, kind)  # fewer taps
    return VolumeUpsampler(factor=factor, kernel=kernel).fit(X)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 3), (3, 4, 2)])
@pytest.mark.parametrize("kind", UPSAMPLE_KERNELS)
def test_upsample_is_bitwise_the_in_memory_transform(rng, kind, factor, dtype):
    X = rng.standard_normal((3, 7, 5, 6, 2)).astype(dtype)
    up = _fitted(kind, factor, X, rng)
    expected = up.transform(X)
    for spatial_chunks, batch_chunks in CHUNKINGS:
        Xd = _chunked(X, spatial_chunks, batch_chunks, "channels_last", channel_chunks=1)
        Y = tdask.upsample(up, Xd)
        assert Y.chunks[0] == batch_chunks and Y.chunks[4] == (2,)
        assert Y.chunks[1:4] == tuple(tuple(c * s for c in cs)
                                      for cs, s in zip(spatial_chunks, factor))
        _assert_bitwise(Y.compute(scheduler="threads"), expected)


@pytest.mark.parametrize("kernel, factor", [
    ((2, 3, 2), (2, 2, 1)),     # as many (even) taps as the factor on a one-voxel axis
    ((1, 3, 4), (2, 2, 2)),     # fewer taps than the factor: padded to two
    ("trilinear", (4, 2, 3)),
])
def test_upsample_even_taps_on_a_one_voxel_axis_as_in_memory(rng, kernel, factor):
    # The in-memory path used to raise here while the Dask path computed: both now run
    # the same plan, so they give the same numbers whatever the chunking.
    X = rng.standard_normal((2, 1, 5, 4, 2))
    kernel = rng.standard_normal(kernel) if isinstance(kernel, tuple) else kernel
    up = VolumeUpsampler(factor=factor, kernel=kernel).fit(X)
    expected = up.transform(X)
    for chunks in [(1, 1, 2, 3, 2), (2, 1, 5, 4, 2), (1, 1, 1, 1, 1)]:
        _assert_bitwise(tdask.upsample(up, da.from_array(X, chunks=chunks)).compute(),
                        expected)


def test_dask_and_upsampling_import_one_way():
    # tconv3d.dask builds its graphs over _ops, _plan and _validation: it never imports
    # tconv3d.upsampling, not even inside a function (upsampling imports dask lazily).
    import ast
    import inspect

    from tconv3d import _conv_plan, _labels, _plan, _separable

    for module in (tdask, _plan, _conv_plan, _separable, _labels):
        imported = set()
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported.update(f"{node.module or ''}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not any("upsampling" in name for name in imported), (module, imported)


def test_upsample_layouts_dtypes_and_errors(rng):
    from sklearn.exceptions import NotFittedError

    X = rng.standard_normal((4, 5, 6, 7))
    up = VolumeUpsampler(factor=(2, 1, 3)).fit(X)
    Xd = da.from_array(X, chunks=(3, 2, 4, 3))
    _assert_bitwise(tdask.upsample(up, Xd).compute(), up.transform(X))        # 4-D
    Xi = (X * 10).astype(np.int32)                                             # -> float64
    _assert_bitwise(tdask.upsample(up, da.from_array(Xi, chunks=2)).compute(),
                    up.transform(Xi))
    flat = VolumeUpsampler(factor=2, volume_shape=(5, 6, -1)).fit(X.reshape(4, -1))
    Yd = tdask.upsample(flat, da.from_array(X.reshape(4, -1), chunks=(1, 50)))   # 2-D
    assert Yd.chunks[0] == (1, 1, 1, 1)
    _assert_bitwise(Yd.compute(), flat.transform(X.reshape(4, -1)))
    with pytest.raises(ValueError, match="expecting 210 features"):
        tdask.upsample(flat, da.ones((2, 211)))
    with pytest.raises(ValueError, match="X must be 2-D"):
        tdask.upsample(up, da.ones((2, 3, 4)))
    with pytest.raises(NotFittedError):
        tdask.upsample(VolumeUpsampler(), Xd)
    bad = X.copy()
    bad[3, 4, 5, 6] = np.nan
    up.set_params(nan_policy="error")      # the default, "propagate", gives NaN outputs
    Yd = tdask.upsample(up, da.from_array(bad, chunks=(3, 2, 4, 3)))          # lazy...
    with pytest.raises(ValueError, match="NaN"):
        Yd.compute(scheduler="sync")                                           # ...raises


def test_upsample_chunks_read_only_their_neighbourhood():
    # Each output chunk depends on its input chunk and, for the trilinear halo of one
    # voxel, its neighbours: at most 3 x 3 x 3 input chunks, never the whole volume.
    from dask.core import flatten

    X = da.zeros((1, 64, 64, 64, 1), chunks=(1, 16, 16, 16, 1), dtype=np.float32)
    Y = tdask.upsample(VolumeUpsampler(factor=2).fit(np.zeros((1, 2, 2, 2))), X)
    deps = Y.__dask_graph__().get_all_dependencies()
    inputs = set(flatten(X.__dask_keys__()))
    counts = [len(deps[key] & inputs) for key in flatten(Y.__dask_keys__())]
    assert len(counts) == 64 and min(counts) == 8 and max(counts) == 27


@pytest.mark.parametrize("store", ["npy", "zarr"])
def test_example_dask_large_volume_runs_and_is_exact(tmp_path, store, capsys):
    import importlib.util
    from pathlib import Path

    if store == "zarr":
        pytest.importorskip("zarr")
    path = Path(__file__).resolve().parent.parent / "examples" / "dask_large_volume.py"
    spec = importlib.util.spec_from_file_location("dask_large_volume_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--size", "21", "17", "26", "--chunks", "8", "5", "9", "--store",
                           store, "--dir", str(tmp_path), "--threads", "2", "--check"])
    assert result["shape"] == (42, 34, 52) and result["equal"]
    assert "Mvoxel/s" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # the stores are removed without --keep


# ------------------------------------------------------------------ distributed cluster

def _volume_block(block_info=None):
    """A chunk of a deterministic volume, made on the worker (nothing shipped)."""
    (_, _), (d0, d1), (h0, h1), (w0, w1) = block_info[None]["array-location"]
    d, h, w = np.ogrid[d0:d1, h0:h1, w0:w1]
    return np.sin(0.1 * d + 0.0007 * h * h + 0.3 * w).astype(np.float32)[None]


def _digest(block):
    """A chunk reduced to two checksums of its bits (the sum and the xor of its 32-bit
    words: any single changed value changes the sum), so results stay small on workers."""
    words = np.ascontiguousarray(block).view(np.uint32)
    sums = [np.sum(words, dtype=np.uint64), np.bitwise_xor.reduce(words, axis=None)]
    return np.array(sums, np.uint64).reshape((1,) * (block.ndim - 1) + (2,))


def _reset_peak_memory():
    """Reset this process' peak resident size (Linux >= 4.0); return the current size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _memory()["VmRSS"]


def _memory():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in
                (line.split(":", 1) for line in f if line.startswith(("VmHWM", "VmRSS")))}


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  memory_limit="1GiB") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


def test_conv_transpose3d_on_a_cluster_of_processes(client, rng):
    x = rng.standard_normal((3, 9, 7, 8, 4))
    w = rng.standard_normal((4, 3, 2, 5, 4))
    b = rng.standard_normal(5)
    kwargs = dict(strides=(2, 3, 1), padding="same", dilation_rate=(1, 1, 2),
                  output_padding=(1, 0, 0))
    xd = da.from_array(x, chunks=(2, (1, 4, 4), (2, 5), 3, 4))
    y = tdask.conv_transpose3d(xd, w, b, **kwargs)
    _assert_bitwise(client.compute(y).result(), tconv3d.conv_transpose3d(x, w, b, **kwargs))


def test_upsample_on_a_cluster_keeps_worker_memory_bounded(client):
    # 32 MiB of input, 256 MiB of output, 128 tasks of 16x32x128 input voxels. Each worker
    # makes its input chunks and reduces each output chunk to checksums, so at its peak it
    # holds a few tasks' working sets (2 MiB of output each) and the front of input chunks
    # they share, not a share of the volume: well below the whole input (measured: 10 to
    # 15 MiB over the idle worker; keeping its half of the output would be 128 MiB).
    shape, chunks = (1, 512, 128, 128), (1, 16, 32, 128)
    X = da.map_blocks(_volume_block, dtype=np.float32,
                      chunks=tuple((c,) * (n // c) for n, c in zip(shape, chunks)))
    up = VolumeUpsampler(factor=2).fit(np.zeros((1, 2, 2, 2), np.float32))
    Y = tdask.upsample(up, X)
    digest_chunks = (*((1,) * len(c) for c in Y.chunks[:3]), (2,) * len(Y.chunks[3]))
    digests = Y.map_blocks(_digest, dtype=np.uint64, chunks=digest_chunks)
    client.compute(tdask.upsample(up, X[:, :8, :8, :8])).result()   # imports, warm-up
    try:
        idle = client.run(_reset_peak_memory)
    except OSError as exc:
        pytest.skip(f"cannot reset the peak resident size here: {exc}")
    got = client.compute(digests).result()
    peak = client.run(_memory)
    x = X.compute(scheduler="sync")
    expected = up.transform(x)
    assert Y.shape == expected.shape and expected.nbytes == 8 * x.nbytes
    want = da.from_array(expected, chunks=Y.chunks).map_blocks(
        _digest, dtype=np.uint64, chunks=digest_chunks).compute(scheduler="sync")
    np.testing.assert_array_equal(got, want)
    assert got.shape == (1, 32, 4, 2) and len(np.unique(got[..., 0])) > 1
    for worker, rss in idle.items():
        grew = peak[worker]["VmHWM"] - rss
        assert 0 < grew < x.nbytes, (worker, grew / 2**20)
