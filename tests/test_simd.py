"""Every GEMM micro-kernel variant this CPU can run, forced in turn, against the reference.

The extension picks the widest variant the CPU supports at import (``tconv3d/_gemm.h``),
so a plain test run only exercises that one. Here each variant (``baseline``, ``avx2``,
``avx512``) is forced with ``set_simd_variant`` and a compact forward/backward grid is
checked against ``tests/reference.py``; the channel counts are chosen so that, for every
vector length (2, 4, 8, 16 elements), the two-vector tiles, the one-vector tile and the
scalar column remainder all run, and every row count of a GEMM up to 26 is taken.
Variants this CPU lacks are skipped, by name. The ``TCONV3D_SIMD`` environment variable
is checked in fresh interpreters.
"""
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tconv3d
from tconv3d import _kernels
from helpers import random_problem, tol
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

VARIANTS = ("baseline", "avx2", "avx512")
SUPPORTED = _kernels.simd_variants_supported()

# (cin, cout): 7, 29 and 53 columns cover the tile paths of every vector length, in the
# forward pass (columns = cout) and in the input gradient (columns = cin); 1 channel takes
# the axpy path.
CHANNELS = [(7, 53), (53, 29), (29, 7), (1, 5), (6, 1)]
# (kernel, strides, dilation, padding, output_padding, data_format, spatial)
GEOMETRY = [
    (3, 2, 1, "same", None, "channels_last", (3, 4, 13)),
    (2, 1, 2, "valid", None, "channels_first", (2, 3, 11)),
    ((3, 1, 4), (1, 2, 3), (2, 1, 1), "valid", (0, 1, 2), "channels_last", (2, 3, 7)),
]


@pytest.fixture(params=VARIANTS)
def variant(request):
    """Force one variant for the test, then restore the one in use before (which
    TCONV3D_SIMD may have chosen: other tests, e.g. on dask workers, rely on it)."""
    name = request.param
    if name not in SUPPORTED:
        pytest.skip(f"this CPU/build does not run the {name} micro-kernels "
                    f"(supported: {SUPPORTED})")
    before = _kernels.simd_variant()
    _kernels.set_simd_variant(name)
    try:
        yield name
    finally:
        _kernels.set_simd_variant(before)


def _assert_close(got, expected, dtype, what):
    t = tol(dtype)
    atol = t["rtol"] * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    assert got.dtype == dtype and got.shape == expected.shape, what
    np.testing.assert_allclose(got, expected, rtol=t["rtol"], atol=atol, err_msg=what)


def _problem(rng, cin, cout, geometry, dtype):
    k, s, d, pad, op, fmt, spatial = geometry
    kernel = (k,) * 3 if np.isscalar(k) else k
    x, w, b = random_problem(rng, batch=2, spatial=spatial, cin=cin, cout=cout,
                             kernel=kernel, data_format=fmt, dtype=dtype)
    kwargs = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d,
                  data_format=fmt)
    return x, w, b, kwargs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRY, ids=["same-s2", "valid-d2-cf", "mixed"])
@pytest.mark.parametrize("cin,cout", CHANNELS)
def test_variant_matches_reference(variant, rng, cin, cout, geometry, dtype):
    assert _kernels.simd_variant() == variant
    x, w, b, kwargs = _problem(rng, cin, cout, geometry, dtype)

    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    _assert_close(y, conv_transpose3d_ref(x, w, b, **kwargs), dtype, f"{variant} forward")

    g = rng.standard_normal(y.shape).astype(dtype)
    got = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    expected = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    for a, e, name in zip(got, expected, ("input", "kernel", "bias")):
        _assert_close(a, e, dtype, f"{variant} grad {name}")


# (cin, cout, groups): depthwise over 37 and 5 channels (the channel-wise kernels' vectors
# and scalar tails), one filter pair per group of 8 and 4 channels (the narrower vector
# tiles), and a depthwise channel multiplier of 2 (GEMMs of 2 columns).
GROUPED = [(37, 37, 37), (5, 5, 5), (16, 24, 2), (12, 36, 3), (4, 8, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRY, ids=["same-s2", "valid-d2-cf", "mixed"])
@pytest.mark.parametrize("cin,cout,groups", GROUPED)
def test_grouped_variant_matches_reference(variant, rng, cin, cout, groups, geometry, dtype):
    x, w, b, kwargs = _problem(rng, cin, cout, geometry, dtype)
    w = w[..., : cout // groups, :]
    kwargs["groups"] = groups
    y = tconv3d.conv_transpose3d(x, w, b, **kwargs)
    _assert_close(y, conv_transpose3d_ref(x, w, b, **kwargs), dtype, f"{variant} forward")
    g = rng.standard_normal(y.shape).astype(dtype)
    got = tconv3d.conv_transpose3d_backward(g, x, w, **kwargs)
    expected = conv_transpose3d_backward_ref(g, x, w, **kwargs)
    for a, e, name in zip(got, expected, ("input", "kernel", "bias")):
        _assert_close(a, e, dtype, f"{variant} grad {name}")


@pytest.mark.parametrize("cin,cout,dtype", [(5, 53, np.float32), (96, 96, np.float64)],
                         ids=["rows-by-row", "weight-heavy-blocks"])
def test_every_row_count_of_a_gemm(variant, rng, cin, cout, dtype):
    """A 1x1x1 kernel makes each output row one GEMM of W rows (in the weight-heavy
    layer, one GEMM over rows gathered by pointer): W from 1 to 26 runs every way the
    micro-kernels share rows out into tiles (up to 8 rows each), for every variant."""
    for width in range(1, 27):
        x, w, b = random_problem(rng, batch=1, spatial=(1, 2, width), cin=cin, cout=cout,
                                 kernel=(1, 1, 1), data_format="channels_last", dtype=dtype)
        what = f"{variant}, {width} rows"
        y = tconv3d.conv_transpose3d(x, w, b)
        _assert_close(y, conv_transpose3d_ref(x, w, b), dtype, f"{what}: forward")
        g = rng.standard_normal(y.shape).astype(dtype)
        got = tconv3d.conv_transpose3d_backward(g, x, w)
        expected = conv_transpose3d_backward_ref(g, x, w)
        for a, e, name in zip(got, expected, ("input", "kernel", "bias")):
            _assert_close(a, e, dtype, f"{what}: grad {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variant_is_thread_count_invariant(variant, rng, dtype):
    """Within a variant, results are bitwise the same for 1 and 2 threads."""
    x, w, b, kwargs = _problem(rng, 29, 53, GEOMETRY[0], dtype)   # work for 2 threads
    y1 = tconv3d.conv_transpose3d(x, w, b, num_threads=1, **kwargs)
    y2 = tconv3d.conv_transpose3d(x, w, b, num_threads=2, **kwargs)
    np.testing.assert_array_equal(y1, y2)
    g = rng.standard_normal(y1.shape).astype(dtype)
    for a1, a2 in zip(tconv3d.conv_transpose3d_backward(g, x, w, num_threads=1, **kwargs),
                      tconv3d.conv_transpose3d_backward(g, x, w, num_threads=2, **kwargs)):
        np.testing.assert_array_equal(a1, a2)


def test_auto_picks_the_widest_supported_variant():
    before = _kernels.simd_variant()
    try:
        _kernels.set_simd_variant("auto")
        assert SUPPORTED[0] == "baseline"
        assert _kernels.simd_variant() == SUPPORTED[-1]
    finally:
        _kernels.set_simd_variant(before)


def test_unknown_or_unsupported_variant_is_refused():
    before = _kernels.simd_variant()
    with pytest.raises(ValueError, match="must be 'auto' or one of"):
        _kernels.set_simd_variant("sse9")
    for name in set(VARIANTS) - set(SUPPORTED):
        with pytest.raises(ValueError, match="not available on this CPU"):
            _kernels.set_simd_variant(name)
    assert _kernels.simd_variant() == before


# --- TCONV3D_SIMD at import, in a fresh interpreter ------------------------------------

_PROBE = textwrap.dedent("""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tconv3d
        from tconv3d import _kernels
    print(tconv3d.__file__)
    print(_kernels.simd_variant())
    for w in caught:
        if "TCONV3D_SIMD" in str(w.message):
            print(w.category.__name__, w.message)
""")


@pytest.fixture
def import_with_simd(run_python):
    """Import tconv3d in a new interpreter with TCONV3D_SIMD=value (None: unset)."""
    def run(value):
        out = run_python("-c", _PROBE, env={"TCONV3D_SIMD": value})
        assert out.returncode == 0, out.stderr
        path, chosen, *warned = out.stdout.strip().splitlines()
        assert Path(path).resolve() == Path(tconv3d.__file__).resolve()
        return chosen, warned
    return run


@pytest.mark.parametrize("name", ["baseline", *[v for v in SUPPORTED if v != "baseline"]])
def test_environment_variable_selects_the_variant_at_import(name, import_with_simd):
    chosen, warned = import_with_simd(name)
    assert chosen == name
    assert warned == []


@pytest.mark.parametrize("value", [None, "", "auto", " Auto "])
def test_environment_variable_unset_or_auto_picks_the_best(value, import_with_simd):
    assert import_with_simd(value) == (SUPPORTED[-1], [])


def test_environment_variable_is_case_and_space_insensitive(import_with_simd):
    assert import_with_simd(" BASELINE\n") == ("baseline", [])


@pytest.mark.parametrize("value", ["bogus", "avx1024"])
def test_invalid_environment_variable_warns_and_falls_back(value, import_with_simd):
    chosen, warned = import_with_simd(value)
    assert chosen == SUPPORTED[-1]
    assert len(warned) == 1
    assert warned[0].startswith("RuntimeWarning") and repr(value) in warned[0]


@pytest.mark.skipif(not set(VARIANTS) - set(SUPPORTED), reason="this CPU runs every variant")
def test_unsupported_variant_in_environment_warns_and_falls_back(import_with_simd):
    name = sorted(set(VARIANTS) - set(SUPPORTED))[0]
    chosen, warned = import_with_simd(name)
    assert chosen == SUPPORTED[-1]
    assert len(warned) == 1 and "not available" in warned[0]


# --- The package under test is the installed one (CI) -----------------------------------

@pytest.mark.skipif(os.environ.get("TCONV3D_TEST_INSTALLED", "0") in ("", "0"),
                    reason="set TCONV3D_TEST_INSTALLED=1 to check (CI tests the wheel)")
def test_tested_package_is_the_installed_wheel():
    """CI installs the repaired wheel and runs these tests from outside the source tree."""
    repo = Path(__file__).resolve().parent.parent
    for module in (tconv3d, _kernels):
        path = Path(module.__file__).resolve()
        assert repo not in path.parents, f"{module.__name__} imported from the source tree"
        assert "site-packages" in path.parts, path
