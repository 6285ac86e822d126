"""Shared helpers of the test suite: problem generation and tolerances."""
import numpy as np

from tconv3d import _kernels
from tconv3d._geometry import full_length, torch_window

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def tol(dtype):
    return TOL[np.dtype(dtype).type]


def each_simd_variant():
    """Yield each micro-kernel variant this CPU runs, forced in turn; restore the one in
    use before."""
    before = _kernels.simd_variant()
    try:
        for name in _kernels.simd_variants_supported():
            _kernels.set_simd_variant(name)
            yield name
    finally:
        _kernels.set_simd_variant(before)


def random_problem(rng, *, batch, spatial, cin, cout, kernel, data_format, dtype):
    """x in `data_format`, kernel in Keras layout, bias; values of unit scale."""
    if data_format == "channels_last":
        xshape = (batch, *spatial, cin)
    else:
        xshape = (batch, cin, *spatial)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal((*kernel, cout, cin)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    return x, w, b


def to_torch_args(geometry_kwargs, x_spatial, kernel_spatial, out_spatial):
    """torch `padding`/`output_padding` that reproduce our crop, plus a final slice.

    Our output is full[c : c + O] (c = max(0, (L - O)//2)); torch's is
    full[p : L - p + op]. :func:`tconv3d._geometry.torch_window` gives p = c and the op
    with which torch covers ours; the slice [:O] drops the one element torch keeps when our
    crop is asymmetric. The crop itself is checked independently by ``tests/reference.py``.
    """
    s, d = geometry_kwargs["strides"], geometry_kwargs["dilation_rate"]
    pads, ops = [], []
    for n, k, o in zip(x_spatial, kernel_spatial, out_spatial):
        p, op, _ = torch_window(full_length(n, k, s, d) - o)
        pads.append(p)
        ops.append(op)
    return tuple(pads), tuple(ops)
