"""Every bad argument is refused in Python, with the right exception and a message that names
the argument, before any compiled loop runs and before any large allocation.

The tables below are the specification: one row per bad input, with the exception type and a
fragment of the message. Each row runs against every public function it applies to, with the
compiled kernels replaced by a stub that fails the test if it is reached and with
``tracemalloc`` watching that nothing sizeable was allocated.
"""
import tracemalloc
import types

import numpy as np
import pytest

import tconv3d
from tconv3d import _ops, _validation

# A valid problem: x (2, 3, 4, 5) spatial, 3 channels; 4 filters; output (2, 4, 5, 6, 4).
X_SHAPE = (2, 3, 4, 5, 3)
K_SHAPE = (2, 2, 2, 4, 3)
OUT_SHAPE = (2, 4, 5, 6, 4)
ALLOCATION_LIMIT = 1 << 20  # bytes a refused call may allocate (messages, small temporaries)


def _huge(shape, dtype=np.float64):
    """A zero-strided view of any shape: costs nothing until it is copied."""
    return np.broadcast_to(np.zeros((), dtype), shape)


# Arguments shared by the three public functions: (id, overrides, exception, fragment).
# ``x``/``kernel`` overrides are arrays; the shape function receives their shapes.
GEOMETRY_CASES = [
    # ndim
    ("x_4d", dict(x=np.ones((2, 3, 4, 3))), ValueError, r"`x` must be 5-D"),
    ("x_6d", dict(x=np.ones((1, 2, 3, 4, 5, 3))), ValueError, r"`x` must be 5-D"),
    ("x_0d", dict(x=np.float64(1)), ValueError, r"`x` must be 5-D"),
    ("x_4d_channels_first", dict(x=np.ones((2, 3, 4, 5)), data_format="channels_first"),
     ValueError, r"`x` must be 5-D \(batch, channels, depth"),
    ("kernel_4d", dict(kernel=np.ones((2, 2, 4, 3))), ValueError, r"`kernel` must be 5-D"),
    ("kernel_6d", dict(kernel=np.ones((1, 2, 2, 2, 4, 3))), ValueError, r"`kernel` must be 5-D"),
    # channels
    ("channels_mismatch", dict(kernel=np.ones((2, 2, 2, 4, 5))), ValueError,
     r"`kernel` expects 5 input channels .* `x` has 3 channels"),
    ("channels_mismatch_first", dict(x=np.ones((2, 5, 4, 5, 3)), data_format="channels_first"),
     ValueError, r"`kernel` expects 3 input channels .* `x` has 5 channels"),
    # zero and negative sizes
    ("x_batch_0", dict(x=np.ones((0, 3, 4, 5, 3))), ValueError, r"`x` must have sizes >= 1"),
    ("x_depth_0", dict(x=np.ones((2, 0, 4, 5, 3))), ValueError, r"`x` must have sizes >= 1"),
    ("x_channels_0", dict(x=np.ones((2, 3, 4, 5, 0)), kernel=np.ones((2, 2, 2, 4, 0))),
     ValueError, r"`x` must have sizes >= 1"),
    ("kernel_spatial_0", dict(kernel=np.ones((2, 0, 2, 4, 3))), ValueError,
     r"`kernel` must have sizes >= 1"),
    ("filters_0", dict(kernel=np.ones((2, 2, 2, 0, 3))), ValueError,
     r"`kernel` must have sizes >= 1"),
    # strides
    ("strides_0", dict(strides=0), ValueError, r"`strides` must be >= 1"),
    ("strides_negative", dict(strides=-2), ValueError, r"`strides` must be >= 1"),
    ("strides_axis_0", dict(strides=(1, 0, 1)), ValueError, r"`strides` must be >= 1"),
    ("strides_len_2", dict(strides=(1, 2)), ValueError, r"`strides` must be an int or a tuple"),
    ("strides_len_4", dict(strides=(1, 2, 2, 1)), ValueError, r"`strides` must be an int or"),
    ("strides_float", dict(strides=2.0), ValueError, r"`strides` must be an int or a tuple"),
    ("strides_np_float", dict(strides=np.float64(2)), ValueError, r"`strides` must be an int"),
    ("strides_float_item", dict(strides=(1, 1.5, 1)), ValueError, r"`strides` must be an int"),
    ("strides_str", dict(strides="2"), ValueError, r"`strides` must be an int or a tuple"),
    ("strides_str_3", dict(strides="222"), ValueError, r"`strides` must be an int or a tuple"),
    ("strides_bool", dict(strides=True), ValueError, r"`strides` must be an int or a tuple"),
    ("strides_bool_item", dict(strides=(1, True, 1)), ValueError, r"`strides` must be an int"),
    ("strides_np_bool", dict(strides=np.True_), ValueError, r"`strides` must be an int"),
    ("strides_none", dict(strides=None), ValueError, r"`strides` must be an int or a tuple"),
    ("strides_nested", dict(strides=((1,), 1, 1)), ValueError, r"`strides` must be an int"),
    # groups (x has 3 channels)
    ("groups_0", dict(groups=0), ValueError, r"`groups` must be an int >= 1, got 0"),
    ("groups_float", dict(groups=1.0), ValueError, r"`groups` must be an int >= 1"),
    ("groups_bool", dict(groups=True), ValueError, r"`groups` must be an int >= 1"),
    ("groups_not_dividing", dict(groups=2), ValueError,
     r"`groups`=2 must divide the 3 input channels"),
    # dilation
    ("dilation_0", dict(dilation_rate=0), ValueError, r"`dilation_rate` must be >= 1"),
    ("dilation_negative", dict(dilation_rate=(1, 1, -1)), ValueError,
     r"`dilation_rate` must be >= 1"),
    ("dilation_len_1", dict(dilation_rate=(2,)), ValueError, r"`dilation_rate` must be an int"),
    ("dilation_float", dict(dilation_rate=1.5), ValueError, r"`dilation_rate` must be an int"),
    ("dilation_bool", dict(dilation_rate=False), ValueError, r"`dilation_rate` must be an int"),
    # output_padding
    ("output_padding_negative", dict(strides=2, output_padding=-1), ValueError,
     r"`output_padding` must be >= 0"),
    ("output_padding_equal_stride", dict(output_padding=1), ValueError,
     r"`output_padding` must be smaller than `strides`"),
    ("output_padding_above_stride", dict(strides=(2, 3, 2), output_padding=(1, 1, 2)),
     ValueError, r"`output_padding` must be smaller than `strides` .*axis 2"),
    ("output_padding_len_2", dict(strides=2, output_padding=(0, 1)), ValueError,
     r"`output_padding` must be an int or a tuple"),
    ("output_padding_float", dict(strides=2, output_padding=0.5), ValueError,
     r"`output_padding` must be an int"),
    ("output_padding_bool", dict(strides=2, output_padding=True), ValueError,
     r"`output_padding` must be an int"),
    # padding, data_format
    ("padding_unknown", dict(padding="full"), ValueError, r"`padding` must be 'valid' or 'same'"),
    ("padding_empty", dict(padding=""), ValueError, r"`padding` must be 'valid' or 'same'"),
    ("padding_none", dict(padding=None), ValueError, r"`padding` must be 'valid' or 'same'"),
    ("padding_bytes", dict(padding=b"same"), ValueError, r"`padding` must be 'valid' or"),
    ("padding_bytes_of_3", dict(padding=b"abc"), ValueError, r"`padding` must be 'valid' or"),
    ("padding_negative", dict(padding=-1), ValueError, r"or PyTorch's: an int or 3 ints >= 0"),
    ("padding_float", dict(padding=1.0), ValueError, r"or PyTorch's: an int or 3 ints >= 0"),
    ("padding_bool", dict(padding=True), ValueError, r"or PyTorch's: an int or 3 ints >= 0"),
    ("padding_len_2", dict(padding=(1, 1)), ValueError, r"or PyTorch's: an int or 3 ints"),
    ("padding_set", dict(padding={0, 1, 2}), ValueError, r"or PyTorch's: an int or 3 ints"),
    ("padding_int_output_padding_too_large", dict(strides=2, padding=1, output_padding=2,
                                                  dilation_rate=2), ValueError,
     r"smaller than max\(`strides`, `dilation_rate`\) \(PyTorch's rule\)"),
    ("padding_int_crops_everything", dict(padding=3), ValueError, r"output of length"),
    ("data_format_unknown", dict(data_format="NDHWC"), ValueError,
     r"`data_format` must be 'channels_last' or 'channels_first'"),
    ("data_format_dash", dict(data_format="channels-last"), ValueError, r"`data_format` must be"),
    ("data_format_none", dict(data_format=None), ValueError, r"`data_format` must be"),
    # an empty output
    ("output_length_0", dict(x=np.ones((1, 1, 1, 1, 3)), kernel=np.ones((4, 4, 4, 4, 3)),
                             padding="same", output_padding=0), ValueError, r"output of length 0"),
    # lengths past the 64-bit index range
    ("dilation_past_index_range", dict(padding="same", output_padding=0, dilation_rate=2**62),
     ValueError, r"more than the \d+ a 64-bit index can safely address.*`dilation_rate`"),
    ("dilation_past_int64", dict(kernel=np.ones((5, 5, 5, 4, 3)), padding="same",
                                 output_padding=0, dilation_rate=2**63 - 1),
     ValueError, r"64-bit index can safely address"),
    ("strides_past_index_range", dict(strides=(1, 2**62, 1)), ValueError,
     r"64-bit index can safely address.*`strides`"),
    ("strides_past_int64", dict(strides=2**64), ValueError, r"64-bit index can safely address"),
    # where they have no effect (a fuzzer's: an OverflowError reached the kernels)
    ("dilation_past_int64_on_a_single_tap", dict(kernel=np.ones((2, 2, 1, 4, 3)),
                                                 dilation_rate=(1, 1, 2**63)),
     ValueError, r"`dilation_rate` \(1, 1, 9223372036854775808\): more than .* no effect"),
    ("strides_past_index_range_on_a_single_voxel", dict(x=np.ones((1, 1, 2, 2, 3)), padding=0,
                                                        strides=(2**62, 1, 1)),
     ValueError, r"`strides` \(4611686018427387904, 1, 1\): more than"),
    # unordered collections: {3, 1, 2} iterates as 1, 2, 3
    ("strides_set", dict(strides={3, 1, 2}), ValueError, r"`strides` must be an int or a tuple"),
    ("dilation_dict_keys", dict(dilation_rate={1: 0, 2: 0, 3: 0}.keys()), ValueError,
     r"`dilation_rate` must be an int or a tuple"),
    ("strides_dict_values", dict(strides={"d": 1, "h": 2, "w": 1}.values()), ValueError,
     r"`strides` must be an int or a tuple"),
    ("strides_dict", dict(strides={0: 1, 1: 2, 2: 1}), ValueError, r"`strides` must be an int"),
]

DTYPE_CASES = [
    ("x_complex", dict(x=np.ones(X_SHAPE, np.complex128)), TypeError,
     r"`x` must hold real numbers.*complex128"),
    ("x_object", dict(x=np.ones(X_SHAPE, object)), TypeError, r"`x` must hold real numbers"),
    ("x_str", dict(x=np.full(X_SHAPE, "1")), TypeError, r"`x` must hold real numbers.*<U1"),
    ("x_bytes", dict(x=np.full(X_SHAPE, b"1")), TypeError, r"`x` must hold real numbers"),
    ("x_datetime", dict(x=np.zeros(X_SHAPE, "M8[s]")), TypeError, r"`x` must hold real numbers"),
    ("x_timedelta", dict(x=np.zeros(X_SHAPE, "m8[s]")), TypeError, r"`x` must hold real"),
    ("x_structured", dict(x=np.zeros(X_SHAPE, "f8,f8")), TypeError, r"`x` must hold real"),
    ("x_none", dict(x=None), TypeError, r"`x` must hold real numbers"),
    ("x_string_scalar", dict(x="abc"), TypeError, r"`x` must hold real numbers"),
    ("x_dict", dict(x={"a": 1}), TypeError, r"`x` must hold real numbers"),
    ("x_object_instance", dict(x=object()), TypeError, r"`x` must hold real numbers"),
    ("x_ragged", dict(x=[[1.0], [1.0, 2.0]]), TypeError, r"`x` must be array-like"),
    ("x_masked", dict(x=np.ma.masked_greater(np.ones(X_SHAPE), 0.5)), TypeError,
     r"`x` is a masked array.*np\.ma\.filled\(x, fill_value\)"),
    ("kernel_masked", dict(kernel=np.ma.MaskedArray(np.ones(K_SHAPE))), TypeError,
     r"`kernel` is a masked array"),
    ("kernel_complex", dict(kernel=np.ones(K_SHAPE, np.complex64)), TypeError,
     r"`kernel` must hold real numbers"),
    ("kernel_object", dict(kernel=np.ones(K_SHAPE, object)), TypeError,
     r"`kernel` must hold real numbers"),
    ("kernel_str", dict(kernel=np.full(K_SHAPE, "1")), TypeError,
     r"`kernel` must hold real numbers"),
]

NUM_THREADS_CASES = [
    (f"num_threads_{name}", dict(num_threads=value), ValueError,
     r"`num_threads` must be None or an int >= 1")
    for name, value in [("0", 0), ("negative", -1), ("float", 2.0), ("bool", True),
                        ("str", "2")]
]

FORWARD_CASES = [
    ("bias_too_short", dict(bias=np.ones(3)), ValueError, r"`bias` must have shape \(4,\)"),
    ("bias_too_long", dict(bias=np.ones(5)), ValueError, r"`bias` must have shape \(4,\)"),
    ("bias_2d", dict(bias=np.ones((4, 1))), ValueError, r"`bias` must have shape \(4,\)"),
    ("bias_scalar", dict(bias=1.0), ValueError, r"`bias` must have shape \(4,\).*got \(\)"),
    ("bias_complex", dict(bias=np.ones(4, np.complex128)), TypeError,
     r"`bias` must hold real numbers"),
    ("bias_str", dict(bias="abcd"), TypeError, r"`bias` must hold real numbers"),
    ("bias_ragged", dict(bias=[1.0, [2.0]]), TypeError, r"`bias` must be array-like"),
]

BACKWARD_CASES = [
    ("grad_output_wrong_shape", dict(grad_output=np.ones((2, 4, 5, 5, 4))), ValueError,
     r"`grad_output` must have the forward output's shape \(2, 4, 5, 6, 4\)"),
    ("grad_output_wrong_filters", dict(grad_output=np.ones((2, 4, 5, 6, 3))), ValueError,
     r"`grad_output` must have the forward output's shape"),
    ("grad_output_4d", dict(grad_output=np.ones((2, 4, 5, 6))), ValueError,
     r"`grad_output` must have the forward output's shape"),
    ("grad_output_channels_first", dict(grad_output=np.ones((2, 4, 5, 6, 4)),
                                        data_format="channels_first",
                                        x=np.ones((2, 3, 3, 4, 5))), ValueError,
     r"`grad_output` must have the forward output's shape \(2, 4, 4, 5, 6\)"),
    ("grad_output_scalar", dict(grad_output=1.0), ValueError, r"`grad_output` must have"),
    ("grad_output_complex", dict(grad_output=np.ones(OUT_SHAPE, np.complex128)), TypeError,
     r"`grad_output` must hold real numbers"),
    ("grad_output_object", dict(grad_output=np.ones(OUT_SHAPE, object)), TypeError,
     r"`grad_output` must hold real numbers"),
    ("grad_output_none", dict(grad_output=None), TypeError, r"`grad_output` must hold real"),
    ("compute_unknown", dict(compute="everything"), ValueError,
     r"`compute` must be a subset of \('input', 'kernel', 'bias'\)"),
    ("compute_one_unknown", dict(compute=("input", "weights")), ValueError,
     r"`compute` must be a subset of"),
    ("compute_none", dict(compute=None), ValueError, r"`compute` must be a subset of"),
    ("compute_int", dict(compute=3), ValueError, r"`compute` must be a subset of"),
    ("compute_bytes", dict(compute=b"input"), ValueError, r"`compute` must be a subset of"),
    ("compute_nested", dict(compute=[["input"]]), ValueError, r"`compute` must be a subset"),
    ("use_bias_str", dict(use_bias="no"), ValueError, r"`use_bias` must be True or False"),
    ("use_bias_none", dict(use_bias=None), ValueError, r"`use_bias` must be True or False"),
    ("use_bias_int", dict(use_bias=1), ValueError, r"`use_bias` must be True or False"),
    ("use_bias_array", dict(use_bias=np.array([True, False])), ValueError,
     r"`use_bias` must be True or False"),
]

SHAPE_CASES = [
    ("input_shape_none", dict(input_shape=None), ValueError,
     r"`input_shape` must be a tuple of ints, got None"),
    ("input_shape_int", dict(input_shape=5), ValueError, r"`input_shape` must be a tuple of"),
    ("input_shape_float", dict(input_shape=(2, 2.5, 4, 5, 3)), ValueError,
     r"`input_shape` must be a tuple of ints"),
    ("input_shape_str", dict(input_shape=(2, "3", 4, 5, 3)), ValueError,
     r"`input_shape` must be a tuple of ints"),
    ("input_shape_bool", dict(input_shape=(2, True, 4, 5, 3)), ValueError,
     r"`input_shape` must be a tuple of ints"),
    ("kernel_shape_float", dict(kernel_shape=(2.0, 2, 2, 4, 3)), ValueError,
     r"`kernel_shape` must be a tuple of ints"),
    ("kernel_shape_none", dict(kernel_shape=None), ValueError, r"`kernel_shape` must be a"),
    ("input_shape_negative", dict(input_shape=(2, -3, 4, 5, 3)), ValueError,
     r"`x` must have sizes >= 1"),
]

# Outputs and copies too large to index or to fit in memory. 2**50 bytes (1 PiB) is more
# than any machine this runs on has; 2**64 elements are more than a 64-bit index addresses.
HUGE_FORWARD_CASES = [
    ("output_past_index", dict(x=np.ones((1, 1, 1, 1, 3)), strides=2**21), ValueError,
     r"`output` of shape \(1, 2097152, 2097152, 2097152, 4\) has \d+ elements \(\d+ bytes of "
     r"float64\), more than a 64-bit index can address"),
    ("output_past_memory", dict(x=np.ones((1, 1, 1, 1, 3)), kernel=np.ones((1, 1, 1, 1, 3)),
                                bias=None, strides=(2**16, 2**16, 2**15)), MemoryError,
     r"`output` of shape \(1, 65536, 65536, 32768, 1\) and dtype float64 needs 1024\.0 TiB, "
     r"more than the [\d.]+ [KMGT]iB of memory available"),
    ("kernel_copy_past_memory", dict(x=np.ones((1, 1, 1, 1, 1)), bias=None,
                                     kernel=_huge((65537, 65537, 65537, 1, 1)), padding="same",
                                     output_padding=0), MemoryError,
     r"A float64 copy of `kernel` of shape \(65537, 65537, 65537, 1, 1\)"),
    # output (1, 256, 256, 256, 1) float32 is 64 MiB, the float32 copy of x 1 PiB
    ("x_copy_past_memory", dict(x=_huge((1, 256, 256, 256, 2**24), np.float16),
                                kernel=_huge((1, 1, 1, 1, 2**24), np.float32), bias=None,
                                padding="same", output_padding=0), MemoryError,
     r"A float32 copy of `x` of shape \(1, 256, 256, 256, 16777216\) and dtype float32 "
     r"needs 1024\.0 TiB"),
]

HUGE_BACKWARD_CASES = [
    ("grad_input_past_memory",
     dict(x=_huge((1, 2**16, 2**16, 2**15, 1), np.float32), kernel=np.ones((1, 1, 1, 1, 1)),
          grad_output=_huge((1, 2**16, 2**16, 2**15, 1), np.float32)),
     MemoryError, r"`grad_input` of shape \(1, 65536, 65536, 32768, 1\) and dtype float64"),
    ("grad_output_copy_past_memory",
     dict(x=np.ones((1, 1, 1, 1, 1), np.float32), kernel=np.ones((1, 1, 1, 1, 1), np.float32),
          strides=(2**16, 2**16, 2**15),
          grad_output=_huge((1, 2**16, 2**16, 2**15, 1), np.float16)),
     MemoryError, r"A float32 copy of `grad_output` of shape \(1, 65536, 65536, 32768, 1\)"),
    ("kernel_copy_past_memory",
     dict(x=np.ones((1, 1, 1, 1, 1)), kernel=_huge((65537, 65537, 65537, 1, 1)),
          grad_output=np.ones((1, 1, 1, 1, 1)), padding="same", output_padding=0),
     MemoryError, r"A float64 copy of `kernel` of shape \(65537, 65537, 65537, 1, 1\)"),
    # numpy caps an array's bytes at 2**63 - 1: a uint8 x can still have 2**62 elements,
    # whose float64 gradient cannot be indexed.
    ("grad_input_past_index",
     dict(x=_huge((1, 2**21, 2**21, 2**20, 1), np.uint8), kernel=np.ones((1, 1, 1, 1, 1)),
          grad_output=_huge((1, 2**21, 2**21, 2**20, 1), np.uint8)),
     ValueError, r"`grad_input` of shape \(1, 2097152, 2097152, 1048576, 1\) has "
                 r"4611686018427387904 elements .* more than a 64-bit index can address"),
]


class _KernelsReached(AssertionError):
    pass


@pytest.fixture
def no_compiled_loops(monkeypatch):
    """Replace the compiled kernels: a refused call must never reach them."""
    def reached(*args, **kwargs):
        raise _KernelsReached("a compiled kernel ran for a call that should be refused")

    stub = types.SimpleNamespace(forward=reached, grad_input=reached, grad_kernel=reached,
                                 grad_bias=reached)
    monkeypatch.setattr(_ops, "_kernels", stub)


def _forward_args(overrides):
    kw = dict(x=np.ones(X_SHAPE), kernel=np.ones(K_SHAPE), bias=np.ones(4))
    kw.update(overrides)
    return kw


def _backward_args(overrides):
    kw = dict(grad_output=np.ones(OUT_SHAPE), x=np.ones(X_SHAPE), kernel=np.ones(K_SHAPE))
    kw.update(overrides)
    return kw


def _shape_args(overrides):
    kw = dict(input_shape=X_SHAPE, kernel_shape=K_SHAPE)
    for name in ("x", "kernel"):
        if name in overrides:
            overrides = dict(overrides)
            kw[f"{name}_shape" if name == "kernel" else "input_shape"] = \
                np.shape(overrides.pop(name))
    kw.update(overrides)
    return kw


def _assert_refused(function, kwargs, exc, match):
    """``function(**kwargs)`` raises ``exc`` matching ``match`` and allocates next to nothing.

    The arguments are built before tracing starts, so the peak counts only what the call
    itself allocated.
    """
    tracemalloc.start()
    try:
        with pytest.raises(exc, match=match) as info:
            function(**kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not isinstance(info.value, _KernelsReached)
    assert peak < ALLOCATION_LIMIT, f"{peak} bytes allocated before refusing"
    return info.value


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("name,overrides,exc,match", GEOMETRY_CASES + DTYPE_CASES
                         + NUM_THREADS_CASES + FORWARD_CASES + HUGE_FORWARD_CASES,
                         ids=_ids(GEOMETRY_CASES + DTYPE_CASES + NUM_THREADS_CASES
                                  + FORWARD_CASES + HUGE_FORWARD_CASES))
def test_forward_refuses(no_compiled_loops, name, overrides, exc, match):
    _assert_refused(tconv3d.conv_transpose3d, _forward_args(overrides), exc, match)


@pytest.mark.parametrize("name,overrides,exc,match", GEOMETRY_CASES + DTYPE_CASES
                         + NUM_THREADS_CASES + BACKWARD_CASES + HUGE_BACKWARD_CASES,
                         ids=_ids(GEOMETRY_CASES + DTYPE_CASES + NUM_THREADS_CASES
                                  + BACKWARD_CASES + HUGE_BACKWARD_CASES))
def test_backward_refuses(no_compiled_loops, name, overrides, exc, match):
    _assert_refused(tconv3d.conv_transpose3d_backward, _backward_args(overrides), exc, match)


@pytest.mark.parametrize("name,overrides,exc,match", GEOMETRY_CASES + SHAPE_CASES,
                         ids=_ids(GEOMETRY_CASES + SHAPE_CASES))
def test_output_shape_refuses(name, overrides, exc, match):
    _assert_refused(tconv3d.conv_transpose3d_output_shape, _shape_args(overrides), exc, match)


def test_the_valid_call_of_the_tables_is_accepted():
    """The tables perturb one valid call: check that call is valid, so each row tests one thing."""
    y = tconv3d.conv_transpose3d(**_forward_args({}))
    assert y.shape == OUT_SHAPE
    grads = tconv3d.conv_transpose3d_backward(**_backward_args({}))
    assert [g.shape for g in grads] == [X_SHAPE, K_SHAPE, (4,)]
    assert tconv3d.conv_transpose3d_output_shape(X_SHAPE, K_SHAPE) == OUT_SHAPE


@pytest.mark.parametrize("value", [np.int8(2), np.int64(2), np.uint16(2), (np.int32(2), 2, 2)])
def test_numpy_integers_are_accepted(value):
    x, w = np.ones(X_SHAPE), np.ones(K_SHAPE)
    expected = tconv3d.conv_transpose3d(x, w, strides=2, dilation_rate=2, num_threads=2)
    got = tconv3d.conv_transpose3d(x, w, strides=value, dilation_rate=value,
                                   num_threads=np.int64(2))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("order", [">", "<", "="])
def test_float32_in_any_byte_order_stays_float32(order):
    x = np.arange(2 * 3 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 3, 2) / 10
    w = np.linspace(-1, 1, 2 * 2 * 2 * 4 * 2, dtype=np.float32).reshape(2, 2, 2, 4, 2)
    y = tconv3d.conv_transpose3d(x.astype(order + "f4"), w.astype(order + "f4"), strides=2)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, tconv3d.conv_transpose3d(x, w, strides=2))
    grads = tconv3d.conv_transpose3d_backward(y.astype(order + "f4"), x.astype(order + "f4"),
                                              w, strides=2)
    assert all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("use_bias", [True, False, np.True_, np.False_])
def test_use_bias_accepts_python_and_numpy_bools(use_bias):
    x, w = np.ones(X_SHAPE), np.ones(K_SHAPE)
    _, _, gb = tconv3d.conv_transpose3d_backward(np.ones(OUT_SHAPE), x, w, use_bias=use_bias)
    assert (gb is None) == (not use_bias)


# ------------------------------------------------------------------ available memory


def test_memory_error_against_the_memory_actually_available(no_compiled_loops):
    """An output between the available memory and the address space: the range where an
    unchecked np.empty would succeed (overcommit) and the process be OOM-killed later."""
    available = _validation._available_memory()
    if available is None:
        pytest.skip("available memory cannot be read here")
    depth = int(1.5 * available) // (8 * 1024 * 1024) + 1
    kwargs = dict(x=np.ones((1, 1, 1, 1, 1)), kernel=np.ones((1, 1, 1, 1, 1)),
                  strides=(depth, 1024, 1024))
    _assert_refused(tconv3d.conv_transpose3d, kwargs, MemoryError,
                    rf"`output` of shape \(1, {depth}, 1024, 1024, 1\) and dtype float64 needs "
                    r"[\d.]+ [GT]iB, more than the [\d.]+ [KMGT]iB of memory available")


def test_memory_error_with_a_small_limit(monkeypatch, no_compiled_loops):
    monkeypatch.setattr(_validation, "_available_memory", lambda: 20 << 20)
    kwargs = dict(x=np.ones((1, 8, 8, 8, 1)), kernel=np.ones((2, 2, 2, 1024, 1)), strides=2)
    _assert_refused(tconv3d.conv_transpose3d, kwargs, MemoryError,
                    r"`output` of shape \(1, 16, 16, 16, 1024\) and dtype float64 needs 32\.0 MiB, "
                    r"more than the 20\.0 MiB of memory available")
    kwargs = dict(grad_output=np.ones((1, 16, 16, 16, 64)), x=_huge((1, 8, 8, 8, 8192)),
                  kernel=_huge((2, 2, 2, 64, 8192)), strides=2)
    _assert_refused(tconv3d.conv_transpose3d_backward, kwargs, MemoryError,
                    r"`grad_input` of shape \(1, 8, 8, 8, 8192\) and dtype float64 needs 32\.0 MiB")


def test_small_arrays_skip_the_memory_query(monkeypatch):
    """Below MEMORY_CHECK_MIN_BYTES the check costs no file reads (small calls stay fast)."""
    def unreadable():
        raise AssertionError("memory queried for a small array")

    monkeypatch.setattr(_validation, "_available_memory", unreadable)
    y = tconv3d.conv_transpose3d(np.ones((1, 8, 8, 8, 1)), np.ones((2, 2, 2, 8, 1)), strides=2)
    assert y.nbytes < _validation.MEMORY_CHECK_MIN_BYTES and y.shape == (1, 16, 16, 16, 8)


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("limit,usage,expected", [
    ("max", "123", None),                                    # cgroup v2, no limit
    ("1073741824", "268435456", 1073741824 - 268435456),     # cgroup v2 limit 1 GiB
    ("9223372036854771712", "5", None),                      # cgroup v1 "unlimited"
    ("1000", "2000", 0),                                     # over the limit already
    ("garbage", "1", None),
])
def test_cgroup_headroom(tmp_path, monkeypatch, limit, usage, expected):
    files = ((_write(tmp_path / "memory.max", limit), _write(tmp_path / "memory.current", usage)),)
    monkeypatch.setattr(_validation, "_CGROUP_MEMORY_FILES", files)
    assert _validation._cgroup_memory_headroom() == expected


def test_cgroup_limit_lowers_available_memory(tmp_path, monkeypatch, no_compiled_loops):
    files = ((_write(tmp_path / "memory.max", str(64 << 20)),
              _write(tmp_path / "memory.current", str(48 << 20))),)
    monkeypatch.setattr(_validation, "_CGROUP_MEMORY_FILES", files)
    assert _validation._available_memory() == 16 << 20
    kwargs = dict(x=np.ones((1, 8, 8, 8, 1)), kernel=np.ones((2, 2, 2, 1024, 1)), strides=2)
    _assert_refused(tconv3d.conv_transpose3d, kwargs, MemoryError,    # output 32 MiB
                    r"needs 32\.0 MiB, more than the 16\.0 MiB of memory available")


def test_missing_cgroup_files_are_ignored(tmp_path, monkeypatch):
    files = ((str(tmp_path / "nope"), str(tmp_path / "nope2")),)
    monkeypatch.setattr(_validation, "_CGROUP_MEMORY_FILES", files)
    assert _validation._cgroup_memory_headroom() is None
    assert _validation._available_memory() == _validation._machine_available_memory()


@pytest.mark.parametrize("compute", [(), ("bias",), ("kernel", "bias")])
def test_backward_checks_only_the_gradients_it_computes(monkeypatch, compute):
    """grad_input (32 MiB here, more than the 20 MiB said to be free) is neither allocated
    nor checked when it is not asked for."""
    monkeypatch.setattr(_validation, "_available_memory", lambda: 20 << 20)
    x = np.ones((1, 64, 64, 128, 8))
    g = np.ones((1, 64, 64, 128, 2))
    kernel = np.ones((1, 1, 1, 2, 8))
    gx, gk, gb = tconv3d.conv_transpose3d_backward(g, x, kernel, compute=compute)
    assert gx is None
    assert (gk is not None) == ("kernel" in compute)
    assert (gb is not None) == ("bias" in compute)
    if gb is not None:
        assert np.array_equal(gb, np.full(2, 64 * 64 * 128.0))
    with pytest.raises(MemoryError, match="`grad_input`"):
        tconv3d.conv_transpose3d_backward(g, x, kernel, compute=("input", *compute))
