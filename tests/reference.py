"""Plain-numpy definition of the 3D transposed convolution: the test oracle.

Written straight from the definition (scatter-add of ``x @ W`` into dilated,
strided positions of the full-length output, then the Keras crop), with no
shared code from the package except nothing: shapes are re-derived here.
"""
import itertools

import numpy as np


def _triple(v):
    return (v,) * 3 if np.isscalar(v) else tuple(v)


def output_length(n, k, s, d, padding, op):
    """Keras' ``deconv_output_length``, written out independently."""
    K = (k - 1) * d + 1
    if op is None:
        return n * s + max(K - s, 0) if padding == "valid" else n * s
    pad = K // 2 if padding == "same" else 0
    return (n - 1) * s + K - 2 * pad + op


def _geometry(in_sp, k_sp, strides, dilation, padding, output_padding):
    strides, dilation = _triple(strides), _triple(dilation)
    ops = (None,) * 3 if output_padding is None else _triple(output_padding)
    # PyTorch's integer padding: p cut on each side, output_padding added on the right
    pads = (None,) * 3 if isinstance(padding, str) else _triple(padding)
    full, out, crop = [], [], []
    for n, k, s, d, op, p in zip(in_sp, k_sp, strides, dilation, ops, pads):
        L = (n - 1) * s + (k - 1) * d + 1
        if p is None:
            O = output_length(n, k, s, d, padding.lower(), op)
        else:
            O = L - 2 * p + (op or 0)
        full.append(L)
        out.append(O)
        crop.append(max(0, (L - O) // 2) if p is None else p)
    return strides, dilation, full, out, crop


def _embed(y_full, out, crop):
    """Crop the full-length result to the output window, zero beyond it."""
    N, C = y_full.shape[0], y_full.shape[-1]
    y = np.zeros((N, *out, C), dtype=y_full.dtype)
    src, dst = [], []
    for L, O, c in zip(y_full.shape[1:4], out, crop):
        m = min(O, L - c)
        src.append(slice(c, c + m))
        dst.append(slice(0, m))
    y[(slice(None), *dst)] = y_full[(slice(None), *src)]
    return y


def _group(a, g, groups, axis):
    """Group ``g`` of ``groups`` equal slices of ``a`` along ``axis``."""
    size = a.shape[axis] // groups
    return np.take(a, range(g * size, (g + 1) * size), axis=axis)


def conv_transpose3d_ref(x, kernel, bias=None, strides=1, padding="valid",
                         output_padding=None, dilation_rate=1,
                         data_format="channels_last", groups=1):
    """Forward pass in float64, returned in the input's data format. With ``groups``,
    the concatenation (along the channels) of each group's convolution: x's and the
    kernel's in_channels split in ``groups`` slices, the kernel holding filters/groups."""
    channels = -1 if data_format == "channels_last" else 1
    if groups > 1:
        y = np.concatenate([
            conv_transpose3d_ref(_group(np.asarray(x), g, groups, channels),
                                 _group(np.asarray(kernel), g, groups, -1), None, strides,
                                 padding, output_padding, dilation_rate, data_format)
            for g in range(groups)], axis=channels)
        if bias is not None:
            shape = [1] * 5
            shape[channels] = -1
            y += np.asarray(bias, dtype=np.float64).reshape(shape)
        return y
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(kernel, dtype=np.float64)  # (kd, kh, kw, filters, in_channels)
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    strides, dil, full, out, crop = _geometry(
        x.shape[1:4], w.shape[:3], strides, dilation_rate, padding, output_padding)
    y_full = np.zeros((x.shape[0], *full, w.shape[3]))
    for j in itertools.product(*(range(k) for k in w.shape[:3])):
        sl = tuple(slice(j[a] * dil[a], j[a] * dil[a] + (x.shape[1 + a] - 1) * strides[a] + 1,
                         strides[a]) for a in range(3))
        y_full[(slice(None), *sl)] += x @ w[j].T
    y = _embed(y_full, out, crop)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)
    if data_format == "channels_first":
        y = np.moveaxis(y, -1, 1)
    return y


def conv_transpose3d_backward_ref(grad_output, x, kernel, strides=1, padding="valid",
                                  output_padding=None, dilation_rate=1,
                                  data_format="channels_last", groups=1):
    """Gradients ``(grad_input, grad_kernel, grad_bias)`` in float64 (``groups``: each
    group's, concatenated as in :func:`conv_transpose3d_ref`)."""
    if groups > 1:
        channels = -1 if data_format == "channels_last" else 1
        parts = [conv_transpose3d_backward_ref(
            _group(np.asarray(grad_output), g, groups, channels),
            _group(np.asarray(x), g, groups, channels),
            _group(np.asarray(kernel), g, groups, -1), strides, padding, output_padding,
            dilation_rate, data_format) for g in range(groups)]
        return (np.concatenate([p[0] for p in parts], axis=channels),
                np.concatenate([p[1] for p in parts], axis=-1),
                np.concatenate([p[2] for p in parts]))
    g = np.asarray(grad_output, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(kernel, dtype=np.float64)
    if data_format == "channels_first":
        g, x = np.moveaxis(g, 1, -1), np.moveaxis(x, 1, -1)
    strides, dil, full, out, crop = _geometry(
        x.shape[1:4], w.shape[:3], strides, dilation_rate, padding, output_padding)
    # Adjoint of the crop: place grad_output back into the full-length frame.
    g_full = np.zeros((g.shape[0], *full, g.shape[-1]))
    src, dst = [], []
    for L, O, c in zip(full, out, crop):
        m = min(O, L - c)
        dst.append(slice(c, c + m))
        src.append(slice(0, m))
    g_full[(slice(None), *dst)] = g[(slice(None), *src)]
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for j in itertools.product(*(range(k) for k in w.shape[:3])):
        sl = tuple(slice(j[a] * dil[a], j[a] * dil[a] + (x.shape[1 + a] - 1) * strides[a] + 1,
                         strides[a]) for a in range(3))
        gj = g_full[(slice(None), *sl)]  # (N, D, H, W, filters)
        gx += gj @ w[j]
        gw[j] = np.einsum("ndhwo,ndhwi->oi", gj, x)
    gb = g.sum(axis=(0, 1, 2, 3))
    if data_format == "channels_first":
        gx = np.moveaxis(gx, -1, 1)
    return gx, gw, gb
