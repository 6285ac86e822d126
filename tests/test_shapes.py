"""Output-shape arithmetic against Keras' own and the written-out rule."""
import itertools

import pytest

import tconv3d
from reference import output_length

CASES = [
    (n, k, s, d, pad, op)
    for n, k, s, d, pad in itertools.product((1, 2, 7), (1, 2, 3, 4, 5), (1, 2, 3), (1, 2),
                                             ("valid", "same"))
    for op in ([None] + list(range(s)))
]


@pytest.mark.parametrize("n,k,s,d,pad,op", CASES)
def test_output_shape_rule(n, k, s, d, pad, op):
    expected = output_length(n, k, s, d, pad, op)
    args = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d)
    if expected < 1:
        with pytest.raises(ValueError, match="output of length"):
            tconv3d.conv_transpose3d_output_shape((2, n, n, n, 3), (k, k, k, 4, 3), **args)
        return
    shape = tconv3d.conv_transpose3d_output_shape((2, n, 1, n, 3), (k, 1, k, 4, 3), **args)
    assert shape == (2, expected, output_length(1, 1, s, d, pad, op), expected, 4)
    shape = tconv3d.conv_transpose3d_output_shape((2, 3, n, n, n), (k, k, k, 4, 3),
                                                  data_format="channels_first", **args)
    assert shape == (2, 4, expected, expected, expected)


def test_documented_examples():
    # valid, kernel smaller than the stride: still in * s
    assert tconv3d.conv_transpose3d_output_shape((1, 5, 5, 5, 1), (1, 1, 1, 1, 1),
                                                 strides=3) == (1, 15, 15, 15, 1)
    # same with output_padding=0 differs from None, as in Keras
    a = tconv3d.conv_transpose3d_output_shape((1, 5, 5, 5, 1), (2, 2, 2, 1, 1), strides=2,
                                              padding="same")
    b = tconv3d.conv_transpose3d_output_shape((1, 5, 5, 5, 1), (2, 2, 2, 1, 1), strides=2,
                                              padding="same", output_padding=0)
    assert a == (1, 10, 10, 10, 1) and b == (1, 8, 8, 8, 1)


KERAS_CASES = [c for c in CASES if c[2] == 1 or c[3] == 1]


@pytest.mark.parametrize("n,k,s,d,pad,op", KERAS_CASES)
def test_output_shape_matches_keras(n, k, s, d, pad, op):
    keras = pytest.importorskip("keras")
    layer = keras.layers.Conv3DTranspose(4, k, strides=s, padding=pad, output_padding=op,
                                         dilation_rate=d)
    try:
        expected = tuple(layer.compute_output_shape((2, n, n + 1, n, 3)))
    except ValueError:
        pytest.skip("Keras refuses these arguments")
    args = dict(strides=s, padding=pad, output_padding=op, dilation_rate=d)
    if any(v < 1 for v in expected[1:4]):
        with pytest.raises(ValueError, match="output of length"):
            tconv3d.conv_transpose3d_output_shape((2, n, n + 1, n, 3), (k, k, k, 4, 3), **args)
        return
    assert tconv3d.conv_transpose3d_output_shape((2, n, n + 1, n, 3), (k, k, k, 4, 3),
                                                 **args) == expected
