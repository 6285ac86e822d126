"""The compiled layout copies around the kernels (tconv3d._layouts) against their NumPy
definitions: the forward's packed panels and the input gradient's per-group matrices from
Keras' kernel and from a view of PyTorch's weight, arrays with contiguous channels, and
kernel gradients back in PyTorch's layout; sizes that leave edges to every SIMD block, on
every variant this CPU runs."""
import numpy as np
import pytest

import tconv3d
from tconv3d import _kernels, _layouts
from tconv3d._geometry import keras_to_torch_kernel, torch_to_keras_kernel
from helpers import each_simd_variant

PANEL = _kernels.PANEL_BYTES


def _panels_reference(kernel, groups):
    """Each tap's (C/G, F/G) matrix of each group, cut into column panels stored one after
    the other (``_kernels.pack_panels``' definition)."""
    kd, kh, kw, f, c = kernel.shape
    a, width = c // groups, PANEL // kernel.itemsize
    out = np.empty((kd, kh, kw, c, f), kernel.dtype)
    flat = out.reshape(kd, kh, kw, groups, a * f)
    for g in range(groups):
        matrices = kernel[..., g * a:(g + 1) * a].transpose(0, 1, 2, 4, 3)   # (.., a, f)
        for j0 in range(0, f, width):
            panel = matrices[..., j0:j0 + width]
            flat[..., g, j0 * a:j0 * a + panel[0, 0, 0].size] = panel.reshape(kd, kh, kw, -1)
    return out


def _kernels_of(rng, shape, dtype):
    """The same kernel as a C-contiguous Keras array, as a view of PyTorch's weight, and
    as a view of its channels_last_3d weight (filters contiguous)."""
    kernel = rng.standard_normal(shape).astype(dtype)
    weight = keras_to_torch_kernel(kernel)   # (in, out, kd, kh, kw)
    channels_last_3d = np.ascontiguousarray(weight.transpose(0, 2, 3, 4, 1)).transpose(
        0, 4, 1, 2, 3)
    return {"keras": kernel,
            "torch view": torch_to_keras_kernel(np.ascontiguousarray(weight)),
            "torch channels_last_3d view": torch_to_keras_kernel(channels_last_3d)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((3, 2, 3, 37, 13), 1), ((2, 1, 3, 10, 21), 3),
                                           ((1, 1, 1, 9, 4), 4), ((4, 4, 4, 70, 40), 2),
                                           ((2, 2, 2, 20, 36), 2)])
def test_kernel_layouts_match_their_definitions(rng, dtype, shape, groups):
    kd, kh, kw, f, c = shape
    for name, kernel in _kernels_of(rng, shape, dtype).items():
        panels = _panels_reference(np.ascontiguousarray(kernel), groups)
        per_group = np.ascontiguousarray(kernel.reshape(kd, kh, kw, f, groups, -1)
                                         .transpose(0, 1, 2, 4, 3, 5)).reshape(
            kd, kh, kw, groups * f, -1)
        for variant in each_simd_variant():
            for threads in (1, 2):
                packed = _layouts.pack_kernel(kernel, dtype, groups, threads)
                grouped = _layouts.by_group(kernel, groups, threads)
                np.testing.assert_array_equal(packed, panels, err_msg=f"{name}, {variant}")
                np.testing.assert_array_equal(grouped, per_group, err_msg=f"{name}, {variant}")
                # on a cache line: the micro-kernels' row loads never straddle two
                assert packed.ctypes.data % 64 == 0 and grouped.ctypes.data % 64 == 0, name


def _off_a_line(rng, shape):
    """Random float32 values, C-contiguous, starting 16 bytes past a 64-byte line (where
    NumPy puts arrays of 4 MiB or more)."""
    size = int(np.prod(shape))
    buffer = np.empty(size + 16, np.float32)
    start = (16 - buffer.ctypes.data) % 64 // 4
    a = buffer[start:start + size].reshape(shape)
    a[...] = rng.standard_normal(shape)
    assert a.ctypes.data % 64 == 16
    return a


def test_channels_filling_lines_are_put_on_lines_for_the_kernel_gradient(rng):
    """x 16 bytes past a cache line, 16 float32 channels (one line a voxel): the kernel
    gradient works on an aligned copy and gives the same bits as on an aligned x."""
    x = _off_a_line(rng, (2, 3, 4, 5, 16))
    on_lines = _layouts.channels_last(x, 2, on_lines=True)
    assert on_lines.ctypes.data % 64 == 0 and not np.shares_memory(on_lines, x)
    np.testing.assert_array_equal(on_lines, x)
    assert _layouts.channels_last(x, 2) is x    # without on_lines: used as it is
    narrow = np.ascontiguousarray(x[..., :3])    # 12 bytes a voxel: no line to start on
    assert _layouts.channels_last(narrow, 2, on_lines=True) is narrow
    w = rng.standard_normal((2, 2, 2, 4, 16)).astype(np.float32)
    g = rng.standard_normal((2, 6, 8, 10, 4)).astype(np.float32)
    kernel_grad = tconv3d.conv_transpose3d_backward(g, x, w, strides=2)[1]
    aligned = tconv3d.conv_transpose3d_backward(g, on_lines, w, strides=2)[1]
    np.testing.assert_array_equal(kernel_grad, aligned)


def test_a_kernel_off_a_cache_line_is_copied_onto_one(rng):
    kernel = _off_a_line(rng, (2, 3, 1, 4, 4))
    grouped = _layouts.by_group(kernel, 1)
    assert grouped.ctypes.data % 64 == 0 and not np.shares_memory(grouped, kernel)
    np.testing.assert_array_equal(grouped, kernel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 2, 3, 37, 13), (1, 1, 1, 1, 9), (4, 4, 4, 16, 32),
                                   (2, 2, 2, 20, 36)])
def test_torch_weight_is_the_transposed_copy(rng, dtype, shape):
    kernel = rng.standard_normal(shape).astype(dtype)
    for variant in each_simd_variant():
        weight = _layouts.torch_weight(kernel, 2)
        assert weight.flags.c_contiguous, variant
        np.testing.assert_array_equal(weight, keras_to_torch_kernel(kernel), err_msg=variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_channels_last_copies_any_layout(rng, dtype):
    a = (rng.standard_normal((2, 3, 4, 37, 19)) * 100).astype(dtype)
    for variant in each_simd_variant():
        for view in (np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 1)), 1, -1),
                     np.asfortranarray(a), a[:, :, :, ::-2]):
            copy = _layouts.channels_last(view, 2)
            assert copy.strides[-1] == copy.itemsize, variant
            np.testing.assert_array_equal(copy, view, err_msg=variant)
    assert _layouts.channels_last(a) is a
