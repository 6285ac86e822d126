"""bfloat16 operands: float32 products and sums, each result element rounded once.

The reference is float64 on the same (bfloat16-rounded) operands. Each result element
then obeys the bound ``bfloat16_bound``: the rounding to bfloat16 (unit roundoff 2**-8)
plus float32 accumulation over the element's K products (K * 2**-24 times the sum of
their magnitudes). With ``out_dtype="float32"`` only the second term remains.

The forward has two paths (``_kernels.bf16_variants_supported()``): "float32" widens the
operands and runs the float32 kernels (bit for bit); "avx512_bf16" multiplies bfloat16
pairs with vdpbf16ps. Tests of the forward run on each path this CPU has.
"""
import copy
import warnings

import numpy as np
import pytest

import tconv3d
from tconv3d import _kernels
from tconv3d.bench import SUITE
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

GEOMETRIES = [
    dict(strides=1, padding="valid"),
    dict(strides=2, padding="same"),
    dict(strides=(1, 2, 3), padding="same", output_padding=(0, 1, 2)),
    dict(strides=2, padding="valid", dilation_rate=(1, 2, 1)),
    dict(strides=2, padding="same", data_format="channels_first"),
    dict(strides=2, padding="valid", groups=2),
]


@pytest.fixture(params=_kernels.bf16_variants_supported())
def bf16_variant(request, monkeypatch):
    """Each bfloat16 forward path this CPU has, forced for one test: yields its name and
    a list that records, for each compiled forward, whether it ran on pairs."""
    calls = []
    forward = _kernels.forward

    def recording(*args, **kwargs):
        calls.append(args[-1])   # bf16_pairs, passed positionally by _ops
        return forward(*args, **kwargs)

    monkeypatch.setattr(_kernels, "forward", recording)
    _kernels.set_bf16_variant(request.param)
    yield request.param, calls
    _kernels.set_bf16_variant("auto")


def _bf16_problem(rng, batch, spatial, cin, cout, kernel, *, groups=1,
                  data_format="channels_last"):
    x_shape = (batch, *spatial, cin) if data_format == "channels_last" \
        else (batch, cin, *spatial)
    x = rng.standard_normal(x_shape).astype(BF16)
    w = rng.standard_normal((*kernel, cout // groups, cin)).astype(BF16)
    b = rng.standard_normal(cout).astype(BF16)
    return x, w, b


def bfloat16_bound(exact, magnitudes, products, rounded=True):
    """Largest error of a float32 sum of ``products`` terms (whose magnitudes sum to
    ``magnitudes``), then rounded to bfloat16 if ``rounded``."""
    accumulation = 1.01 * products * 2.0 ** -24 * magnitudes
    if not rounded:
        return accumulation
    return 2.0 ** -8 * np.abs(exact) + (1 + 2.0 ** -8) * accumulation


def _geometry_problem(rng, geometry):
    """A small bfloat16 problem for one of GEOMETRIES, and the call's keyword arguments
    (``groups`` included)."""
    kw = {"groups": 1, **geometry}
    x, w, b = _bf16_problem(rng, 2, (3, 4, 5), 6, 4, (3, 2, 3), groups=kw["groups"],
                            data_format=kw.get("data_format", "channels_last"))
    return x, w, b, kw


def _products(w, groups):
    """Products summed into one output element, at most: taps x input channels per
    group, plus the bias."""
    return int(np.prod(w.shape[:3])) * (w.shape[4] // groups) + 1


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g.values())))
def test_forward_within_the_bound_of_the_exact_result(rng, geometry, bf16_variant):
    variant, pairs_calls = bf16_variant
    x, w, b, kw = _geometry_problem(rng, geometry)
    y = tconv3d.conv_transpose3d(x, w, b, **kw)
    assert pairs_calls == [variant == "avx512_bf16"]
    assert y.dtype == BF16
    wide = [a.astype(np.float64) for a in (x, w, b)]
    exact = conv_transpose3d_ref(*wide, **kw)
    magnitudes = conv_transpose3d_ref(*map(np.abs, wide), **kw)
    products = _products(w, kw["groups"])
    error = np.abs(y.astype(np.float64) - exact)
    assert np.all(error <= bfloat16_bound(exact, magnitudes, products))
    assert error.max() > 0   # the check can fail: the result is rounded

    # out_dtype="float32": the float32 sums (on the "float32" path, those of the float32
    # kernels on the widened operands, bit for bit)
    y32 = tconv3d.conv_transpose3d(x, w, b, out_dtype="float32", **kw)
    assert y32.dtype == np.float32
    if variant == "float32":
        assert np.array_equal(y32, tconv3d.conv_transpose3d(
            *(a.astype(np.float32) for a in (x, w, b)), **kw))
    assert np.all(np.abs(y32 - exact) <= bfloat16_bound(exact, magnitudes, products, False))
    # and the default result is that, rounded once to nearest even
    assert np.array_equal(y.view(np.uint16), y32.astype(BF16).view(np.uint16))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g.values())))
def test_gradients_within_the_bound_of_the_exact_gradients(rng, geometry, bf16_variant,
                                                           monkeypatch):
    """On the "float32" path, the float32 kernels' gradients on the widened operands,
    bit for bit; on pairs (AVX512_BF16: of filters for the input gradient, of voxels for
    the kernel's), within the bound. Each rounded once; the bias gradient (grad_output
    widened a row at a time) bit for bit with float32's on both."""
    variant, _ = bf16_variant
    x, w, _, kw = _geometry_problem(rng, geometry)
    g = rng.standard_normal(tconv3d.conv_transpose3d(x, w, **kw).shape)
    g = g.astype(BF16)
    on_pairs = []
    for name in ("grad_input", "grad_kernel"):
        def recording(*args, kernel=getattr(_kernels, name)):
            on_pairs.append(args[-1] is True)   # bf16_pairs, passed positionally by _ops
            return kernel(*args)
        monkeypatch.setattr(_kernels, name, recording)
    grads = tconv3d.conv_transpose3d_backward(g, x, w, **kw)
    assert on_pairs == [variant == "avx512_bf16"] * 2
    grads32 = tconv3d.conv_transpose3d_backward(g, x, w, out_dtype="float32", **kw)
    widened = tconv3d.conv_transpose3d_backward(*(a.astype(np.float32) for a in (g, x, w)),
                                                **kw)
    wide = [a.astype(np.float64) for a in (g, x, w)]
    exact = conv_transpose3d_backward_ref(*wide, **kw)
    magnitudes = conv_transpose3d_backward_ref(*map(np.abs, wide), **kw)
    # products per element: taps x filters per group (input), the input voxels (kernel),
    # the output voxels (bias)
    products = (int(np.prod(w.shape[:3])) * w.shape[3], x.size // w.shape[4],
                g.size // (w.shape[3] * kw["groups"]))
    for i, (mine, mine32, theirs) in enumerate(zip(grads, grads32, widened)):
        assert mine.dtype == BF16 and mine32.dtype == np.float32
        if variant == "float32" or i == 2:   # the bias gradient sums float32 always
            assert np.array_equal(mine32, theirs)
        assert np.all(np.abs(mine32 - exact[i]) <= bfloat16_bound(
            exact[i], magnitudes[i], products[i], rounded=False))
        assert np.array_equal(mine.view(np.uint16), mine32.astype(BF16).view(np.uint16))


@pytest.mark.parametrize("cin,cout,groups,pairs", [
    (1, 3, 1, True),     # one channel: a pair with a zero
    (5, 7, 1, True),     # odd: the last pair padded
    (2, 4, 2, True),     # one channel per group, several filters
    (4, 2, 2, False),    # one pair and one filter per group: channel-wise, widened
])
def test_forward_on_pairs_of_any_channel_count(rng, cin, cout, groups, pairs, bf16_variant):
    variant, pairs_calls = bf16_variant
    x, w, b = _bf16_problem(rng, 2, (3, 2, 4), cin, cout, (2, 3, 2), groups=groups)
    kw = dict(strides=(2, 1, 2), padding="same", groups=groups)
    y = tconv3d.conv_transpose3d(x, w, b, out_dtype="float32", **kw)
    assert pairs_calls == [pairs and variant == "avx512_bf16"]
    wide = [a.astype(np.float64) for a in (x, w, b)]
    exact = conv_transpose3d_ref(*wide, **kw)
    magnitudes = conv_transpose3d_ref(*map(np.abs, wide), **kw)
    bound = bfloat16_bound(exact, magnitudes, _products(w, groups), rounded=False)
    assert np.all(np.abs(y - exact) <= bound)


@pytest.mark.parametrize("case", list(SUITE))
def test_every_suite_shape_within_the_bound(case, bf16_variant):
    """The benchmark's shapes (large reductions: up to 320 channels x 8 taps)."""
    n, cin, cout, size, k, s, padding = SUITE[case]
    size = (size,) * 3 if isinstance(size, int) else size
    k = (k,) * 3 if isinstance(k, int) else k
    rng = np.random.default_rng(0)
    x, w, b = _bf16_problem(rng, n, size, cin, cout, k)
    kw = dict(strides=s, padding=padding)
    y = tconv3d.conv_transpose3d(x, w, b, **kw)
    wide = [a.astype(np.float64) for a in (x, w, b)]
    exact = tconv3d.conv_transpose3d(*wide, **kw)   # float64 (checked by test_forward)
    magnitudes = tconv3d.conv_transpose3d(*map(np.abs, wide), **kw)
    error = np.abs(y.astype(np.float64) - exact)
    assert np.all(error <= bfloat16_bound(exact, magnitudes, _products(w, 1)))


@pytest.mark.parametrize("case", ["same_k3s2", "gan_k4s2", "nnunet_deep", "aniso_k133"])
def test_no_less_accurate_than_torch_bfloat16(torch, case):
    n, cin, cout, size, k, s, padding = SUITE[case]
    size = (size,) * 3 if isinstance(size, int) else size
    k = (k,) * 3 if isinstance(k, int) else k
    x, w, b = _bf16_problem(np.random.default_rng(1), n, size, cin, cout, k)
    kw = dict(strides=s, padding="valid")   # torch's padding=0: the same geometry
    y = tconv3d.conv_transpose3d(x, w, b, **kw)
    exact = tconv3d.conv_transpose3d(*(a.astype(np.float64) for a in (x, w, b)), **kw)

    def to_torch(a):
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    theirs = torch.nn.functional.conv_transpose3d(
        to_torch(np.moveaxis(x, -1, 1)), to_torch(w.transpose(4, 3, 0, 1, 2)), to_torch(b),
        stride=s).float().numpy()
    theirs = np.moveaxis(theirs, 1, -1)
    mine_error = np.abs(y.astype(np.float64) - exact)
    their_error = np.abs(theirs.astype(np.float64) - exact)
    assert mine_error.max() <= their_error.max()
    # Where torch also sums in float32 (AVX512_BF16 CPUs), both round nearly the same
    # sums: a float32 sum at a bfloat16 rounding boundary may go either way (a tie, not
    # a loss), which moves the mean error by about 2**-8 of one element's magnitude.
    tie = 2.0 ** -8 * np.abs(exact).max() / exact.size
    assert mine_error.mean() <= their_error.mean() + tie


def test_out_buffer_and_dask(rng):
    x, w, b = _bf16_problem(rng, 2, (4, 4, 4), 3, 2, (2, 2, 2))
    y = tconv3d.conv_transpose3d(x, w, b, strides=2)
    out = np.empty(y.shape, BF16)
    assert tconv3d.conv_transpose3d(x, w, b, strides=2, out=out) is out
    assert np.array_equal(out.view(np.uint16), y.view(np.uint16))
    out32 = np.empty(y.shape, np.float32)
    assert tconv3d.conv_transpose3d(x, w, b, strides=2, out=out32, out_dtype="float32") \
        is out32
    with pytest.raises(TypeError, match="out"):
        tconv3d.conv_transpose3d(x, w, b, strides=2, out=out32)
    grads = [np.empty(x.shape, BF16), np.empty(w.shape, BF16), np.empty(2, BF16)]
    g = np.ones(y.shape, BF16)
    returned = tconv3d.conv_transpose3d_backward(g, x, w, strides=2, out=tuple(grads))
    assert all(r is buffer for r, buffer in zip(returned, grads))
    for mine, fresh in zip(grads, tconv3d.conv_transpose3d_backward(g, x, w, strides=2)):
        assert np.array_equal(mine.view(np.uint16), fresh.view(np.uint16))

    da = pytest.importorskip("dask.array")
    from tconv3d import dask as tconv3d_dask
    lazy = tconv3d_dask.conv_transpose3d(da.from_array(x, chunks=(1, 2, 3, 4, 3)), w, b,
                                         strides=2)
    assert lazy.dtype == BF16
    assert np.array_equal(lazy.compute().view(np.uint16), y.view(np.uint16))


def test_dtype_rules_and_errors(rng):
    x, w, b = _bf16_problem(rng, 1, (2, 2, 2), 2, 2, (2, 2, 2))
    # with bool and 8-bit integers bfloat16 stays; float32 or float64 operands widen it
    assert tconv3d.conv_transpose3d(x, w.astype(np.int8)).dtype == BF16
    assert tconv3d.conv_transpose3d(x, w, b.astype(np.float32)).dtype == np.float32
    assert tconv3d.conv_transpose3d(x, w, [0.5, 1.0]).dtype == BF16   # a list is weak
    # NumPy's promotion as ml_dtypes defines it: before 0.7 none with float16 (or int64),
    # which is refused; from 0.7 on float32 (float64)
    for other, widened in ((np.float16, np.float32), (np.int64, np.float64)):
        try:
            promoted = np.result_type(BF16, other)
        except TypeError:
            with pytest.raises(TypeError, match=rf"no common dtype \(`x` bfloat16, `kernel` "
                                                rf"{np.dtype(other).name}\): cast them"):
                tconv3d.conv_transpose3d(x, w.astype(other))
        else:
            assert promoted == widened
            assert tconv3d.conv_transpose3d(x, w.astype(other)).dtype == widened
    with pytest.raises(ValueError, match="`out_dtype` must be None or 'float32'"):
        tconv3d.conv_transpose3d(x, w, out_dtype="float64")
    with pytest.raises(ValueError, match="`out_dtype` must be None or 'float32' for "
                                         "operands computing in float32"):
        tconv3d.conv_transpose3d(x.astype(np.float32), w.astype(np.float32),
                                 out_dtype="bfloat16")
    assert tconv3d.conv_transpose3d(x.astype(np.float32), w.astype(np.float32),
                                    out_dtype="float32").dtype == np.float32
    before = x.copy()
    tconv3d.conv_transpose3d_backward(np.ones((1, 3, 3, 3, 2), BF16), x, w)
    assert np.array_equal(x.view(np.uint16), before.view(np.uint16))   # inputs untouched


def test_non_finite_values_propagate(rng, bf16_variant):
    x, w, b = _bf16_problem(rng, 1, (3, 3, 3), 2, 2, (2, 2, 2))
    x[0, 1, 1, 1, 0] = np.nan
    w[0, 0, 0, 0, 1] = np.inf
    y = tconv3d.conv_transpose3d(x, w, b)
    y32 = tconv3d.conv_transpose3d(x.astype(np.float32), w.astype(np.float32),
                                   b.astype(np.float32))
    assert np.array_equal(np.isnan(y), np.isnan(y32))
    assert np.array_equal(np.isinf(y), np.isinf(y32))
    # and the gradients, with a NaN and an infinity in grad_output too (at the ends of
    # rows, where the pairs of the kernel gradient end)
    g = rng.standard_normal(y.shape).astype(BF16)
    g[0, 3, 1, -1, 1], g[0, 1, 2, 0, 0] = np.nan, -np.inf
    x[0, 0, 0, -1, 1] = np.inf
    for kw in (dict(), dict(strides=2, padding="same")):
        g = g if not kw else rng.standard_normal(
            tconv3d.conv_transpose3d(x, w, **kw).shape).astype(BF16)
        g[0, -1, -1, -1, 0] = np.inf
        grads = tconv3d.conv_transpose3d_backward(g, x, w, **kw)
        grads32 = tconv3d.conv_transpose3d_backward(
            *(a.astype(np.float32) for a in (g, x, w)), **kw)
        for mine, theirs in zip(grads, grads32):
            assert np.array_equal(np.isnan(mine), np.isnan(theirs))
            assert np.array_equal(np.isinf(mine), np.isinf(theirs))


# --- PyTorch and Keras ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_half_tensors_run_on_tconv3d(torch, dtype, bf16_variant):
    import tconv3d.torch as tt
    pairs = dtype == "bfloat16" and bf16_variant[0] == "avx512_bf16"
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    stock = torch.nn.ConvTranspose3d(6, 4, 3, stride=2, padding=1, output_padding=1)
    ours = tt.ConvTranspose3d.from_torch(copy.deepcopy(stock))
    stock, ours = stock.to(dtype), ours.to(dtype)
    x = torch.randn(2, 6, 3, 4, 5).to(dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tt.TconvFallbackWarning)
        y = ours(x2)
    # the float32 computation on the widened operands, rounded once (on bfloat16 pairs:
    # other float32 sums, rounded once: at most one bfloat16 step apart)
    widened = tt.ConvTranspose3d.from_torch(copy.deepcopy(stock)).float()
    assert y.dtype == dtype
    assert bf16_variant[1][-1:] == [pairs]
    if pairs:
        wide = widened(x.float()).detach()
        assert ((y.float() - wide).abs() <= 2.0 ** -7 * wide.abs() + 1e-6).all()
    else:
        assert torch.equal(y, widened(x.float()).to(dtype))
    exact = torch.nn.functional.conv_transpose3d(
        x.double(), stock.weight.double(), stock.bias.double(), 2, 1, 1)
    assert (y.double() - exact).abs().max() <= (stock(x1).double() - exact).abs().max()
    g = torch.randn(y.shape).to(dtype)
    y.backward(g)
    stock(x1).backward(g)
    assert x2.grad.dtype == ours.weight.grad.dtype == ours.bias.grad.dtype == dtype
    widened_x = x.float().requires_grad_()
    widened(widened_x).backward(g.float())
    assert torch.equal(x2.grad, widened_x.grad.to(dtype))
    assert torch.equal(ours.weight.grad, widened.weight.grad.to(dtype))
    # and no further from the exact (float64) gradients than PyTorch's own bfloat16 op
    exact_x = x.double().requires_grad_()
    exact_w = stock.weight.detach().double().requires_grad_()
    torch.nn.functional.conv_transpose3d(exact_x, exact_w, stock.bias.double(), 2, 1,
                                         1).backward(g.double())
    for mine, theirs, exact in ((x2.grad, x1.grad, exact_x.grad),
                                (ours.weight.grad, stock.weight.grad, exact_w.grad)):
        assert (mine.double() - exact).abs().max() <= (theirs.double() - exact).abs().max()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_autocast_contract(torch, dtype):
    import tconv3d.torch as tt
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    stock = torch.nn.ConvTranspose3d(6, 4, 2, stride=2)
    ours = tt.ConvTranspose3d.from_torch(copy.deepcopy(stock))
    x = torch.randn(2, 6, 3, 4, 5)
    with torch.autocast("cpu", dtype=dtype), warnings.catch_warnings():
        warnings.simplefilter("error", tt.TconvFallbackWarning)
        y = ours(x)
        y_stock = stock(x)
        y64 = copy.deepcopy(ours).double()(x.double())   # float64 is not cast, as by torch
    assert y.dtype == y_stock.dtype == dtype and y64.dtype == torch.float64
    cast = copy.deepcopy(ours).to(dtype).float()
    assert torch.equal(y, cast(x.to(dtype).float()).to(dtype))
    # the float32 parameters get float32 gradients through autocast's casts
    with torch.autocast("cpu", dtype=dtype):
        loss = ours(x).float().square().sum()
    loss.backward()
    assert ours.weight.grad.dtype == torch.float32 and ours.weight.grad.abs().sum() > 0


def test_keras_mixed_bfloat16_runs_on_tconv3d(keras, torch):
    from tconv3d.keras import Conv3DTranspose, TconvKerasFallbackWarning
    stock = keras.layers.Conv3DTranspose(4, 3, strides=2, padding="same",
                                         dtype="mixed_bfloat16")
    ours = Conv3DTranspose(4, 3, strides=2, padding="same", dtype="mixed_bfloat16")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    stock.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(stock.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TconvKerasFallbackWarning)
        y = ours(x)
    assert y.dtype == torch.bfloat16
    # tconv3d's result on the bfloat16 operands Keras' policy casts to, on bfloat16 arrays
    # as the drop-in computes it (AVX512_BF16 pairs where the CPU has them: a float32
    # computation differs in the last bit of some outputs, which Keras' random initial
    # weights choose)
    operands = [t.to(torch.bfloat16) for t in (torch.from_numpy(x), ours.kernel.value.detach(),
                                               ours.bias.value.detach())]
    expected = tconv3d.conv_transpose3d(*(t.view(torch.int16).numpy().view(BF16)
                                          for t in operands), strides=2, padding="same")
    expected = torch.from_numpy(expected.view(np.int16)).view(torch.bfloat16)
    assert torch.equal(y, expected)
    torch.testing.assert_close(y.float(), stock(x).float(), rtol=2 ** -7, atol=1e-2)


# --- the compiled conversions ---------------------------------------------------------------
@pytest.mark.parametrize("simd", _kernels.simd_variants_supported())
def test_rounding_is_ml_dtypes_cast_bit_for_bit(rng, simd):
    """Every class of float32: random bit patterns (NaNs with payloads, infinities,
    subnormals, ties), rounded by the compiled kernel of each SIMD variant."""
    bits = rng.integers(0, 2 ** 32, size=(2, 3, 4, 5, 7), dtype=np.uint64).astype(np.uint32)
    bits.flat[:6] = [0x7F7F8000, 0x3F808000, 0x3F818000, 0x00008000, 0x7FA12345, 0xFF800001]
    y = bits.view(np.float32)
    with np.errstate(invalid="ignore"):
        expected = y.astype(BF16)
    from tconv3d._bfloat16 import rounded
    before = _kernels.simd_variant()
    _kernels.set_simd_variant(simd)
    try:
        mine = rounded(y, BF16, num_threads=2)
    finally:
        _kernels.set_simd_variant(before)
    assert np.array_equal(mine.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("layout", ["C", "F", "reversed", "channels_first view"])
def test_widening_is_exact_in_any_layout(rng, layout):
    from tconv3d._bfloat16 import widened
    a = rng.integers(0, 2 ** 16, size=(2, 3, 4, 5, 7)).astype(np.uint16).view(BF16)
    a = {"C": a, "F": np.asfortranarray(a), "reversed": a[:, ::-1],
         "channels_first view": np.moveaxis(a, -1, 1)}[layout]
    wide = widened(a, num_threads=2)
    assert wide.dtype == np.float32 and wide.shape == a.shape
    # every bit pattern, NaN payloads included, becomes the high half of a float32
    assert np.array_equal(wide.view(np.uint32), a.view(np.uint16).astype(np.uint32) << 16)


@pytest.mark.parametrize("groups,channels", [(1, 4), (1, 5), (3, 9), (2, 2)])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "reversed"])
def test_pairs_hold_each_groups_channels_then_a_zero(rng, groups, channels, layout):
    from tconv3d._bfloat16 import bfloat16_pairs
    x = rng.standard_normal((2, 3, 4, 5, channels)).astype(BF16)
    if layout == "channels_first":
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1, -1)
    elif layout == "reversed":
        x = x[:, ::-1, :, ::-1]
    words = bfloat16_pairs(x, groups, num_threads=2)
    per_group = channels // groups
    halves = words.view(np.uint16).reshape(*x.shape[:4], groups, -1)
    assert halves.shape[-1] == per_group + per_group % 2
    expected = x.view(np.uint16).reshape(*x.shape[:4], groups, per_group)
    assert np.array_equal(halves[..., :per_group], expected)
    assert not halves[..., per_group:].any()


@pytest.mark.parametrize("groups,filters", [(1, 4), (1, 5), (3, 3), (2, 1)])
def test_filter_pairs_hold_each_groups_filters_then_a_zero(rng, groups, filters):
    from tconv3d._bfloat16 import filter_pairs
    kernel = rng.standard_normal((2, 3, 1, filters, 4 * groups)).astype(BF16)[:, ::-1]
    words = filter_pairs(kernel, groups, num_threads=2)
    pairs = -(-filters // 2)
    assert words.shape == (2, 3, 1, groups * pairs, 4)
    halves = words.view(np.uint16).reshape(2, 3, 1, groups, pairs, 4, 2)
    for g in range(groups):
        expected = kernel[..., g * 4:(g + 1) * 4].view(np.uint16)   # (.., filters, 4)
        got = halves[:, :, :, g].transpose(0, 1, 2, 3, 5, 4).reshape(2, 3, 1, 2 * pairs, 4)
        assert np.array_equal(got[:, :, :, :filters], expected)
        assert not got[:, :, :, filters:].any()


@pytest.mark.parametrize("filters", [4, 5])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "reversed"])
def test_gradients_of_any_layout_match_the_contiguous_ones(rng, layout, filters,
                                                           bf16_variant):
    """grad_output and x of any strides (channels contiguous or not: pairs made from a
    compiled copy, or from the filter pairs when no group is padded; the bias widened
    row by row) give the contiguous operands' bits."""
    x, w, _ = _bf16_problem(rng, 2, (3, 4, 5), 6, filters, (3, 2, 3))
    kw = dict(strides=(1, 2, 3), padding="same")
    g = rng.standard_normal(tconv3d.conv_transpose3d(x, w, **kw).shape).astype(BF16)
    if layout == "channels_first":
        g2, x2 = (np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 1)), 1, -1)
                  for a in (g, x))
    elif layout == "reversed":
        g2, x2 = (np.ascontiguousarray(a[:, ::-1, :, ::-1])[:, ::-1, :, ::-1] for a in (g, x))
    else:
        g2, x2 = g, x
    expected = tconv3d.conv_transpose3d_backward(g, x, w, **kw)
    for mine, theirs in zip(tconv3d.conv_transpose3d_backward(g2, x2, w, **kw), expected):
        assert np.array_equal(mine.view(np.uint16), theirs.view(np.uint16))


def test_the_bfloat16_benchmark_times_every_pass():
    """`python -m tconv3d.bench`'s bfloat16 lines: one per shape, both dtypes, each pass."""
    import io

    from tconv3d._bench_layers import run_bfloat16_shapes
    printed = io.StringIO()
    rows = run_bfloat16_shapes({"tiny": (1, 4, 3, 3, 2, 2, "same")}, 1, 5, out=printed)
    assert sorted(rows["tiny"]) == sorted(f"{dtype}_{p}" for dtype in ("float32", "bfloat16")
                                          for p in ("fwd", "input", "kernel"))
    assert all(ms > 0 for ms in rows["tiny"].values())
    line, = printed.getvalue().splitlines()
    assert line.startswith(f"bfloat16 tiny (1 thr, {_kernels.bf16_variant()}) ms")


def test_bitwise_identical_for_any_thread_count(rng, bf16_variant):
    """The pairs' sums have a fixed order (the kernel gradient a fixed partition into
    chunks), as float32's: the same bits on 1, 2 and 3 threads."""
    x, w, b = _bf16_problem(rng, 2, (6, 5, 9), 12, 9, (3, 2, 3))   # 3 threads' work
    kw = dict(strides=(2, 1, 2), padding="same")
    from tconv3d._threads import MIN_WORK_PER_THREAD
    assert x.size * w.size // x.shape[-1] >= 3 * MIN_WORK_PER_THREAD
    g = rng.standard_normal(tconv3d.conv_transpose3d(x, w, b, **kw).shape).astype(BF16)
    results = []
    for threads in (1, 2, 3):
        y = tconv3d.conv_transpose3d(x, w, b, num_threads=threads, **kw)
        grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=threads, **kw)
        results.append([a.view(np.uint16) for a in (y, *grads)])
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))
