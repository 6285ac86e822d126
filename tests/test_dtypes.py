"""The dtype rule: NumPy's promotion of the operands given as arrays, float16 raised to
float32, bool and integers alone to float64; lists do not widen it. Every pair of
{bool, int8, uint8, int64, float16, float32, float64, list} for x, kernel, bias and
grad_output, each result against the float64 reference on the same values."""
import itertools

import numpy as np
import pytest

import tconv3d
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

TYPES = ["bool", "int8", "uint8", "int64", "float16", "float32", "float64", "list"]
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def expected(*types):
    """The rule, spelled out independently of tconv3d._validation."""
    typed = [np.dtype(t) for t in types if t != "list"]
    if not typed:
        return F64
    promoted = np.result_type(*typed)
    if promoted.kind == "f":
        return F32 if promoted.itemsize <= 4 else F64
    return F64


def test_the_rule_on_the_cases_users_meet():
    assert expected("float32", "float32") == F32
    assert expected("uint8", "float32") == F32          # an 8-bit scan, a float32 kernel
    assert expected("int16", "float32") == F32
    assert expected("int64", "float32") == F64          # float32 cannot hold every int64
    assert expected("float16", "float16") == F32
    assert expected("float32", "float32", "list") == F32  # a bias list keeps float32
    assert expected("bool", "int8") == F64
    assert expected("list", "list") == F64


def _operand(rng, shape, kind):
    values = rng.integers(0, 3, shape) if kind in ("bool", "int8", "uint8", "int64") \
        else rng.standard_normal(shape)
    if kind == "bool":
        return values > 0
    if kind == "list":
        return values.tolist()
    return values.astype(kind)


def _as_float64(value):
    return np.asarray(value, dtype=np.float64)


def _tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)


GEOMETRY = dict(strides=(2, 1, 2), padding="same")
X_SHAPE, K_SHAPE = (2, 3, 4, 3, 2), (2, 3, 2, 3, 2)


@pytest.mark.parametrize("x_type, k_type", list(itertools.product(TYPES, TYPES)))
def test_forward_x_and_kernel(rng, x_type, k_type):
    x, k = _operand(rng, X_SHAPE, x_type), _operand(rng, K_SHAPE, k_type)
    y = tconv3d.conv_transpose3d(x, k, **GEOMETRY)
    assert y.dtype == expected(x_type, k_type)
    want = conv_transpose3d_ref(_as_float64(x), _as_float64(k), None, **GEOMETRY)
    np.testing.assert_allclose(y, want, **_tolerance(y.dtype))


@pytest.mark.parametrize("b_type", TYPES)
@pytest.mark.parametrize("x_type", ["float32", "float64", "uint8", "list"])
def test_forward_bias(rng, x_type, b_type):
    x, k = _operand(rng, X_SHAPE, x_type), _operand(rng, K_SHAPE, "float32")
    b = _operand(rng, (3,), b_type)
    y = tconv3d.conv_transpose3d(x, k, b, **GEOMETRY)
    assert y.dtype == expected(x_type, "float32", b_type)
    want = conv_transpose3d_ref(_as_float64(x), _as_float64(k), _as_float64(b), **GEOMETRY)
    np.testing.assert_allclose(y, want, **_tolerance(y.dtype))


@pytest.mark.parametrize("g_type", TYPES)
@pytest.mark.parametrize("x_type", ["float32", "int8", "float16"])
def test_backward_grad_output(rng, x_type, g_type):
    x, k = _operand(rng, X_SHAPE, x_type), _operand(rng, K_SHAPE, "float32")
    out_shape = tconv3d.conv_transpose3d_output_shape(X_SHAPE, K_SHAPE, **GEOMETRY)
    g = _operand(rng, out_shape, g_type)
    grads = tconv3d.conv_transpose3d_backward(g, x, k, **GEOMETRY)
    want = conv_transpose3d_backward_ref(_as_float64(g), _as_float64(x), _as_float64(k),
                                         **GEOMETRY)
    for got, ref in zip(grads, want):
        assert got.dtype == expected(x_type, "float32", g_type)
        np.testing.assert_allclose(got, ref, **_tolerance(got.dtype))
