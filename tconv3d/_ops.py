"""Public functions: validate, allocate, call the compiled kernels."""
import dataclasses
import math

import numpy as np

from . import _kernels, _threads
from ._bfloat16 import (bfloat16_pairs, channels_inner, filter_pairs, rounded,
                        runs_on_pairs, voxel_pairs, widened)
from ._layouts import by_group, channels_last, pack_kernel
from ._validation import (FROM_OUTPUT, as_array, check_allocation, check_bias_shape,
                          check_out, compute_dtype, gradient_buffers, is_bfloat16,
                          make_geometry, normalize_activation, normalize_bool,
                          normalize_compute, normalize_num_threads, normalize_out_dtype,
                          normalize_shape, without_dtype, working_dtype)

__all__ = ["conv_transpose3d", "conv_transpose3d_backward", "conv_transpose3d_output_shape"]


def conv_transpose3d_output_shape(input_shape, kernel_shape, *, strides=1, padding="valid",
                                  output_padding=None, dilation_rate=1,
                                  data_format="channels_last", groups=1):
    """Return the shape of :func:`conv_transpose3d`'s output, without computing it.

    Parameters
    ----------
    input_shape : tuple of 5 ints
        Shape of ``x``: ``(batch, depth, height, width, in_channels)``, or
        ``(batch, in_channels, depth, height, width)`` with
        ``data_format="channels_first"``. Every size >= 1.
    kernel_shape : tuple of 5 ints
        Shape of ``kernel``: ``(kernel_depth, kernel_height, kernel_width,
        filters // groups, in_channels)`` (Keras' layout, whatever ``data_format``). Every
        size >= 1; its ``in_channels`` must be ``input_shape``'s.
    strides : int or tuple of 3 ints, default=1
        Each >= 1.
    padding : {"valid", "same"} or int or tuple of 3 ints, default="valid"
        Keras' padding (case-insensitive), or PyTorch's: ints >= 0, each axis cropped by
        ``p`` on both sides (``torch.nn.functional.conv_transpose3d``'s numbers).
    output_padding : int or tuple of 3 ints, optional
        Extra length on the high side of each output axis; must be smaller than the
        stride on that axis (with PyTorch's padding, than ``max(stride, dilation)``, as
        in PyTorch). ``None`` and ``0`` differ for ``"same"``, as in Keras.
    dilation_rate : int or tuple of 3 ints, default=1
        Each >= 1.
    data_format : {"channels_last", "channels_first"}, default="channels_last"
        The layout of ``input_shape`` and of the returned shape.
    groups : int, default=1
        As in :func:`conv_transpose3d`; must divide ``in_channels``.

    Returns
    -------
    tuple of 5 ints
        In ``data_format``'s layout; each spatial length follows Keras'
        ``deconv_output_length``.

    Raises
    ------
    ValueError
        If a shape is not a sequence of ints, not 5-D or has a size below 1; if the
        kernel's ``in_channels`` differ from the input's; if ``strides``,
        ``dilation_rate`` or ``output_padding`` is not an int or 3 ints, is below its
        minimum (1, 1, 0) or ``output_padding >= strides`` on an axis; if ``padding`` or
        ``data_format`` is not one of its values; or if the arguments give an output
        length below 1 or above what a 64-bit index can address.

    See Also
    --------
    conv_transpose3d : The computation whose shape this is.

    Examples
    --------
    >>> import tconv3d
    >>> tconv3d.conv_transpose3d_output_shape((1, 4, 4, 4, 8), (3, 3, 3, 16, 8), strides=2)
    (1, 9, 9, 9, 16)
    >>> tconv3d.conv_transpose3d_output_shape((1, 4, 4, 4, 8), (3, 3, 3, 16, 8), strides=2,
    ...                                       padding="same")
    (1, 8, 8, 8, 16)

    Channels first, with ``output_padding``:

    >>> tconv3d.conv_transpose3d_output_shape((1, 8, 4, 4, 4), (3, 3, 3, 16, 8), strides=2,
    ...                                       padding="same", output_padding=1,
    ...                                       data_format="channels_first")
    (1, 16, 8, 8, 8)
    """
    return make_geometry(normalize_shape(input_shape, "input_shape"),
                         normalize_shape(kernel_shape, "kernel_shape"), strides, padding,
                         output_padding, dilation_rate, data_format, groups).output_shape


def _logical(a, geom):
    """View an array in the kernels' (batch, depth, height, width, channels) order."""
    return a if geom.channels_last else a.transpose(0, 2, 3, 4, 1)


def _element_strides(a):
    return tuple(s // a.itemsize for s in a.strides)


def _needs_copy(a, dtype):
    return a.dtype != dtype or not a.flags.aligned or any(s % a.itemsize for s in a.strides)


def _operand(a, dtype):
    """The array in the working dtype; copies only to cast or to fix unaligned strides."""
    if not _needs_copy(a, dtype):
        return a
    if is_bfloat16(a.dtype) and dtype == np.float32 and a.flags.aligned:
        return widened(a)
    return np.array(a, dtype=dtype)


def _check_copies(dtype, *operands):
    """Refuse up front the copies `_operand` or the kernel packing will make.

    Inputs are usually small or already in the working dtype, but a broadcast view
    (zero strides) of a huge shape costs nothing until it is copied.
    """
    for name, a, always in operands:
        if always or _needs_copy(a, dtype):
            check_allocation(a.shape, dtype, name, copy=True)


def _threads_for(num_threads, geom):
    macs = geom.batch * geom.in_channels * geom.filters // geom.groups
    for n, k in zip(geom.in_spatial, geom.kernel_spatial):
        macs *= n * k
    work = macs + geom.batch * geom.filters * math.prod(geom.out_spatial)
    return _threads.team_size(normalize_num_threads(num_threads), work)


def _prepare(x, kernel, strides, padding, output_padding, dilation_rate, data_format,
             groups, extra=()):
    weak = without_dtype(("x", x), ("kernel", kernel), *extra)
    x = as_array(x, "x")
    kernel = as_array(kernel, "kernel")
    extra = [(name, as_array(a, name)) for name, a in extra]
    dtype = working_dtype(("x", x), ("kernel", kernel), *extra, weak=weak)
    geom = make_geometry(x.shape, kernel.shape, strides, padding, output_padding,
                         dilation_rate, data_format, groups)
    return geom, dtype, x, kernel, dict(extra)


def conv_transpose3d(x, kernel, bias=None, *, strides=1, padding="valid",
                     output_padding=None, dilation_rate=1, data_format="channels_last",
                     groups=1, activation=None, out_dtype=None, num_threads=None, out=None):
    """3D transposed convolution, with the numbers of Keras' ``Conv3DTranspose``.

    Parameters
    ----------
    x : array-like of shape (batch, depth, height, width, in_channels)
        Or ``(batch, in_channels, depth, height, width)`` with
        ``data_format="channels_first"``. Any memory layout; never modified.
    kernel : array-like of shape (kernel_depth, kernel_height, kernel_width, filters // groups, \
in_channels)
        Keras' layout. PyTorch's ``weight`` of shape ``(in, out // groups, kd, kh, kw)``
        becomes ``weight.transpose(2, 3, 4, 1, 0)``.
    bias : array-like of shape (filters,), optional
        Added to every output position of each filter.
    strides : int or tuple of 3 ints, default=1
        Each >= 1: the step between the positions of successive input values.
    padding : {"valid", "same"} or int or tuple of 3 ints, default="valid"
        Keras' padding (case-insensitive), or PyTorch's: ints >= 0, each axis cropped by
        ``p`` on both sides (``torch.nn.functional.conv_transpose3d``'s numbers).
    output_padding : int or tuple of 3 ints, optional
        Extra length on the high side of each output axis; must be smaller than the
        stride on that axis (with PyTorch's padding, than ``max(stride, dilation)``, as
        in PyTorch). ``None`` and ``0`` differ for ``"same"``, as in Keras.
    dilation_rate : int or tuple of 3 ints, default=1
        May be combined with ``strides > 1`` (PyTorch's numbers).
    data_format : {"channels_last", "channels_first"}, default="channels_last"
        The layout of ``x`` and of the output.
    groups : int, default=1
        Independent convolutions side by side, as PyTorch's ``groups``: input channels
        ``[g*C/G, (g+1)*C/G)`` feed only filters ``[g*F/G, (g+1)*F/G)``, through the
        kernel's ``in_channels`` slice ``[g*C/G, (g+1)*C/G)``. ``groups=in_channels`` is
        a depthwise convolution. One compiled call runs all groups.
    activation : str or tconv3d.activations.Activation, optional
        Applied to the result by the compiled forward, to each block of outputs while it
        is in cache (no second pass over the output): ``"linear"``, ``"relu"``,
        ``"leaky_relu"`` (``negative_slope`` 0.2 unless bound, e.g.
        ``activations.get("leaky_relu").bind(negative_slope=0.01)``), ``"sigmoid"``,
        ``"tanh"``, ``"gelu"`` (exact, or ``approximate=True``), ``"silu"``/``"swish"``;
        Keras' formulas.
    out_dtype : {None, "float32"}, optional
        For bfloat16 operands, ``"float32"`` returns the float32 sums instead of rounding
        them to bfloat16. ``None`` (or the result's own dtype) otherwise.
    num_threads : int, optional
        Threads for this call. ``None`` uses the OpenMP default, which honours
        ``threadpoolctl.threadpool_limits``.
    out : ndarray, optional
        Where to write the result (returned): exactly the result's shape and dtype, any
        aligned layout, sharing no memory with the inputs. Reusing one buffer across calls
        saves allocating (and, for large outputs, first touching) a fresh one.

    Returns
    -------
    ndarray of shape (batch, out_depth, out_height, out_width, filters)
        Or channels-first. Each output length follows Keras' ``deconv_output_length``.
        The dtype, which is also the one computed in, is NumPy's promotion of the dtypes of
        the operands given as arrays (``np.result_type``; lists and scalars do not widen
        it, as NumPy 2 treats Python scalars), with float16 raised to float32 and bool or
        integers alone to float64: float32 inputs give float32, uint8 ``x`` with a float32
        kernel float32, int64 with float32 float64. bfloat16 operands
        (``ml_dtypes.bfloat16``, as PyTorch's bfloat16 convolution) are multiplied and
        summed in float32, and each result element is rounded once to bfloat16 (to
        nearest even); see ``out_dtype``. The result does not depend on ``num_threads``.

    Raises
    ------
    ValueError
        If an argument has a value it does not accept (``x`` or ``kernel`` not 5-D or with
        an empty axis, mismatched input channels, ``bias`` not of shape ``(filters,)``,
        ``strides``, ``dilation_rate``, ``output_padding``, ``padding``, ``data_format``,
        ``groups``, ``activation``, ``out_dtype`` or ``num_threads`` out of range, an output
        length below 1); if the output or a
        working copy has more elements than a 64-bit index can address; or if ``out`` has
        the wrong shape, is read-only, has overlapping or unaligned strides, or shares
        memory with ``x``, ``kernel`` or ``bias``.
    TypeError
        If ``x``, ``kernel`` or ``bias`` is not array-like, is a masked array, holds
        anything but real numbers (complex, object, strings) or has no common dtype with
        the others (bfloat16 and float16); or if ``out`` is not an ndarray or not of the
        result's dtype.
    MemoryError
        If the output or a working copy of an input would not fit in the memory available
        (checked before any work, the process' cgroup limit included), or a thread cannot
        allocate its workspace.

    See Also
    --------
    conv_transpose3d_backward : The gradients of this function.
    conv_transpose3d_output_shape : The output's shape, without computing it.

    Notes
    -----
    Per spatial axis with input ``x[i]``, tap ``w[j]``, stride ``s`` and dilation ``d``,
    the full-length result ``z[i*s + j*d] += x[i] * w[j]`` has length
    ``L = (in - 1)*s + (k - 1)*d + 1``; the output is ``y[o] = z[o + c]`` with
    ``c = max(0, (L - out) // 2)`` (for ``"same"`` the odd extra element is cropped on
    the right, as TensorFlow and Keras do), zero past ``L``, plus ``bias``.

    Examples
    --------
    >>> import numpy as np, tconv3d
    >>> x = np.ones((1, 4, 4, 4, 8), dtype=np.float32)
    >>> w = np.ones((2, 2, 2, 16, 8), dtype=np.float32)
    >>> tconv3d.conv_transpose3d(x, w, strides=2).shape
    (1, 8, 8, 8, 16)

    Along one axis, each input value adds a copy of the kernel at its position times the
    stride (integer inputs compute in float64):

    >>> x = np.arange(3).reshape(1, 3, 1, 1, 1)
    >>> w = np.ones((2, 1, 1, 1, 1))
    >>> tconv3d.conv_transpose3d(x, w).ravel()
    array([0., 1., 3., 2.])
    >>> tconv3d.conv_transpose3d(x, w, strides=(2, 1, 1)).ravel()
    array([0., 0., 1., 1., 2., 2.])

    Writing into a preallocated buffer:

    >>> out = np.empty((1, 4, 1, 1, 1))
    >>> tconv3d.conv_transpose3d(x, w, bias=[10.0], out=out) is out
    True
    >>> out.ravel()
    array([10., 11., 13., 12.])
    """
    geom, dtype, x, kernel, extra = _prepare(
        x, kernel, strides, padding, output_padding, dilation_rate, data_format, groups,
        extra=() if bias is None else (("bias", bias),))
    result, computed = normalize_out_dtype(out_dtype, dtype), compute_dtype(dtype)
    if bias is not None:
        check_bias_shape(extra["bias"], geom.filters)
    if out is None:
        check_allocation(geom.output_shape, result, "output")
    else:
        check_out(out, "out", geom.output_shape, result, [("x", x), ("kernel", kernel),
                                                           *extra.items()])
    activation = normalize_activation(activation)
    num_threads = normalize_num_threads(num_threads)   # refused before the kernel is packed
    _check_copies(computed, ("x", x, False), ("kernel", kernel, True))
    if result != computed:   # the float32 sums before their rounding
        check_allocation(geom.output_shape, computed, "output", copy=True)
    bias = None if bias is None else np.require(extra["bias"], computed, "CA")
    into = out if result == computed else None
    if is_bfloat16(dtype) and runs_on_pairs(geom):
        words = bfloat16_pairs(_logical(_operand(x, dtype), geom), geom.groups, num_threads)
        wt = pack_kernel(bfloat16_pairs(_operand(kernel, dtype), geom.groups), computed,
                         geom.groups, num_threads)
        pairs_geom = dataclasses.replace(geom, in_channels=words.shape[-1])
        if result == computed:   # the float32 sums
            return _run_forward(words, wt, bias, pairs_geom, num_threads, into, activation,
                                bf16_pairs=True)
        # rounded to bfloat16 by the kernels as each block of outputs is complete
        y = np.empty(geom.output_shape, result) if out is None else out
        return _run_forward(words, wt, bias, pairs_geom, num_threads, None, activation,
                            bf16_pairs=True, bf16_out=y)
    y = forward_packed(x, pack_kernel(kernel, computed, geom.groups, num_threads), bias,
                       geom, num_threads, into, activation)
    return rounded(y, result, out, num_threads)


def forward_packed(x, wt, bias, geom, num_threads, out=None, activation=("linear", 0.0)):
    """Run the compiled forward pass on a validated geometry, into ``out`` or a new array.

    The one internal entry that :mod:`tconv3d._plan` and :mod:`tconv3d.dask` share with
    :func:`conv_transpose3d`. ``geom`` need not come from Keras' padding rules (any crop
    >= 0 and output length: tconv3d.dask computes chunks with it); ``x`` in ``geom``'s
    layout, any dtype; ``wt`` from :func:`~tconv3d._layouts.pack_kernel`; ``bias`` of
    shape ``(Cout,)`` and ``wt``'s dtype, or None; ``out`` checked by
    :func:`~tconv3d._validation.check_out`; ``activation`` from
    :func:`~tconv3d._validation.normalize_activation`.
    """
    x_logical = _contiguous_channels(_logical(_operand(x, wt.dtype), geom), geom, num_threads)
    return _run_forward(x_logical, wt, bias, geom, num_threads, out, activation)


def _contiguous_channels(x, geom, num_threads):
    """The forward's logical ``x``, or its copy with contiguous channels when they are
    strided (channels_first) and the copy needs at most a quarter of the output's memory
    (and that memory is free): the GEMMs read each voxel's channels as a row, and strided
    rows cost them 10-15 % (a power-of-two stride puts every channel of a tile in one L1
    set), several times what the copy costs. A few channels per group are read as vectors
    of groups only when contiguous: copied whatever the output."""
    if (4 * x.size > math.prod(geom.output_shape)
            and not _kernels.groups_in_vectors(geom, x.itemsize, True)):
        return x
    try:
        return channels_last(x, num_threads)
    except MemoryError:
        return x


def _run_forward(x_logical, wt, bias, geom, num_threads, out, activation, bf16_pairs=False,
                 bf16_out=None):
    """The compiled forward on the logical (N, D, H, W, C) ``x`` in ``wt``'s dtype, into
    ``out`` or a new array in ``geom``'s layout; ``bf16_pairs``: ``x`` and ``wt`` are
    made of :func:`~tconv3d._bfloat16.bfloat16_pairs` words, which ``geom.in_channels``
    counts, and the result may be rounded into the bfloat16 array ``bf16_out`` instead."""
    if bf16_out is None:
        y = np.empty(geom.output_shape, dtype=wt.dtype) if out is None else out
        y_logical = strides_of = _logical(y, geom)
        y_bf16 = None
    else:
        y, y_logical = bf16_out, None
        y_bf16 = strides_of = _logical(bf16_out.view(np.uint16), geom)
    name, alpha = activation
    _kernels.forward(x_logical, wt, bias, y_logical, geom, _element_strides(x_logical),
                     _element_strides(strides_of), _threads_for(num_threads, geom),
                     _kernels.FUSED_ACTIVATIONS.index(name), alpha, bf16_pairs, y_bf16=y_bf16)
    return y


def conv_transpose3d_backward(grad_output, x, kernel, *, strides=1, padding="valid",
                              output_padding=None, dilation_rate=1,
                              data_format="channels_last", groups=1, use_bias=True,
                              compute=("input", "kernel", "bias"), activation=None,
                              output=None, out_dtype=None, num_threads=None, out=None):
    """Compute the gradients of :func:`conv_transpose3d` for its input, kernel and bias.

    Parameters
    ----------
    grad_output : array-like
        Gradient of the loss with respect to the forward output; exactly the forward
        output's shape.
    x, kernel : array-like
        The forward call's input and kernel.
    strides : int or tuple of 3 ints, default=1
        As in the forward call.
    padding : {"valid", "same"} or int or tuple of 3 ints, default="valid"
        As in the forward call.
    output_padding : int or tuple of 3 ints, optional
        As in the forward call.
    dilation_rate : int or tuple of 3 ints, default=1
        As in the forward call.
    data_format : {"channels_last", "channels_first"}, default="channels_last"
        As in the forward call.
    groups : int, default=1
        As in the forward call.
    use_bias : bool, default=True
        Whether the forward call had a bias; if not, ``grad_bias`` is None.
    compute : iterable of {"input", "kernel", "bias"}, default=all three
        Gradients to compute; the others are returned as None and cost nothing.
    activation : str or tconv3d.activations.Activation, optional
        The forward call's ``activation``; ``grad_output`` is then the gradient with
        respect to the activated output, and its derivative is taken in one compiled
        pass from ``output``. Only activations whose derivative is a function of their
        output: ``"linear"``, ``"relu"``, ``"leaky_relu"``, ``"sigmoid"``, ``"tanh"``.
    output : array-like, optional
        The forward call's (activated) output; required with a non-linear
        ``activation``.
    out_dtype : {None, "float32"}, optional
        For bfloat16 operands, ``"float32"`` returns the gradients' float32 sums instead
        of rounding them to bfloat16.
    num_threads : int, optional
        Threads for this call; ``None`` uses the OpenMP default.
    out : tuple of 3 (ndarray or None), optional
        Buffers ``(grad_input, grad_kernel, grad_bias)`` to write the computed gradients
        into (a None entry: a new array), as ``out`` of :func:`conv_transpose3d`;
        ``grad_kernel`` and ``grad_bias`` buffers must be C-contiguous.

    Returns
    -------
    grad_input : ndarray with x's shape, or None
        Every gradient has the dtype of the forward call (the promotion of ``x``,
        ``kernel`` and ``grad_output``, as :func:`conv_transpose3d` describes; bfloat16
        operands: float32 sums rounded once to bfloat16, or ``out_dtype``).
    grad_kernel : ndarray of shape (kd, kh, kw, filters // groups, in_channels), or None
        The kernel's gradient (Keras' layout).
    grad_bias : ndarray of shape (filters,), or None
        The bias' gradient (None without ``use_bias``).

    Raises
    ------
    ValueError
        For the arguments shared with :func:`conv_transpose3d`, as it raises; if
        ``grad_output`` does not have the forward output's shape; if ``use_bias`` is not a
        bool or ``compute`` not a subset of ``{"input", "kernel", "bias"}``; if
        ``activation`` is not one with a fused backward, or ``output`` is missing or not
        of the output's shape; if ``out_dtype`` is not accepted; or if an
        ``out`` buffer has the wrong shape, is read-only, is not C-contiguous where
        required, or shares memory with an input or another buffer.
    TypeError
        If ``grad_output``, ``x`` or ``kernel`` is not array-like, is a masked array or
        holds anything but real numbers or they have no common dtype; if ``out`` is not a
        tuple of 3 entries, or one of its buffers not an ndarray of the result's dtype.
    MemoryError
        If a computed gradient or a working copy would not fit in the memory available
        (checked before any work), or a thread cannot allocate its partial sums.

    See Also
    --------
    conv_transpose3d : The forward computation.

    Notes
    -----
    All three gradients are **bitwise identical for any** ``num_threads``: ``grad_input``
    is a gather in which each element is summed by one thread in a fixed order, and the
    ``grad_kernel`` and ``grad_bias`` reductions run over a fixed partition of the work
    whose partial sums are added in a fixed order. (PyTorch does not promise this.)

    Examples
    --------
    >>> import numpy as np, tconv3d
    >>> x = np.ones((1, 2, 2, 2, 1), dtype=np.float32)
    >>> w = np.ones((2, 2, 2, 1, 1), dtype=np.float32)
    >>> y = tconv3d.conv_transpose3d(x, w, strides=2)
    >>> grad_x, grad_w, grad_b = tconv3d.conv_transpose3d_backward(np.ones_like(y), x, w,
    ...                                                            strides=2)
    >>> grad_x.shape, grad_x.dtype, grad_w.shape, grad_b
    ((1, 2, 2, 2, 1), dtype('float32'), (2, 2, 2, 1, 1), array([64.], dtype=float32))

    With a loss ``y.sum()``, each input element's gradient is the sum of the kernel's
    eight taps:

    >>> grad_x.ravel()
    array([8., 8., 8., 8., 8., 8., 8., 8.], dtype=float32)

    Only the kernel's gradient:

    >>> grad_x, grad_w, grad_b = tconv3d.conv_transpose3d_backward(
    ...     np.ones_like(y), x, w, strides=2, compute=["kernel"])
    >>> grad_x is None, grad_w.shape, grad_b is None
    (True, (2, 2, 2, 1, 1), True)
    """
    geom, dtype, x, kernel, extra = _prepare(
        x, kernel, strides, padding, output_padding, dilation_rate, data_format, groups,
        extra=(("grad_output", grad_output),))
    grad_output = extra["grad_output"]
    if grad_output.shape != geom.output_shape:
        raise ValueError(f"`grad_output` must have the forward output's shape "
                         f"{geom.output_shape}, got {grad_output.shape}.")
    compute = normalize_compute(compute)
    use_bias = normalize_bool(use_bias, "use_bias")
    working = dtype   # the operands' (bfloat16 is computed in float32)
    result, dtype = normalize_out_dtype(out_dtype, dtype), compute_dtype(dtype)
    num_threads = _threads_for(num_threads, geom)
    activated = _through_activation(grad_output, activation, output, geom, dtype,
                                    num_threads)
    # bfloat16 operands, unless an activation's derivative made grad_output float32: the
    # input and kernel gradients on pairs (of filters, of voxels), the bias gradient
    # widening grad_output a row at a time
    bf16_grad = is_bfloat16(working) and activated is grad_output
    pairs = {gradient for gradient in ("input", "kernel")
             if gradient in compute and bf16_grad and runs_on_pairs(geom, gradient)}
    bias = "bias" in compute and use_bias
    grad_output = activated
    buffers = gradient_buffers(out, geom, result, compute, use_bias,
                               [("grad_output", grad_output), ("x", x), ("kernel", kernel)])
    if "input" in compute and buffers[0] is None:   # only what is computed is allocated
        check_allocation(geom.input_shape, result, "grad_input")
    if "input" in compute and result != dtype:   # its float32 sums, before rounding
        check_allocation(geom.input_shape, dtype, "grad_input", copy=True)
    # bfloat16: computed into new float32 arrays, rounded into the caller's buffers
    targets, buffers = buffers, buffers if result == dtype else (None, None, None)
    _check_copies(dtype, ("grad_output", grad_output, False),
                  *([("x", x, False)] if "kernel" in compute else []),
                  *([("kernel", kernel, True)] if "input" in compute else []))

    g = _logical(_operand(grad_output, dtype), geom) \
        if (compute & {"input", "kernel"}) - pairs or (bias and not bf16_grad) else None
    if (g is not None and compute & {"input", "kernel"} and g.strides[-1] != g.itemsize
            and _kernels.groups_in_vectors(geom, g.itemsize, False)):
        # a few channels per group: the gradients' vectors of groups read them contiguous
        check_allocation(g.shape, dtype, "grad_output", copy=True)
        g = channels_last(g, num_threads)
    g16 = _logical(_operand(grad_output, working), geom) if bf16_grad else None
    words = bfloat16_pairs(g16, geom.groups, num_threads) if "input" in pairs else None
    if "kernel" in pairs:   # voxel pairs read whole voxels
        g16 = channels_inner(g16, num_threads, words)
    grad_input = grad_kernel = grad_bias = None
    if "input" in compute:
        grad_input = np.empty(geom.input_shape, dtype=dtype) if buffers[0] is None \
            else buffers[0]
        gx = _logical(grad_input, geom)
        if "input" in pairs:
            _kernels.grad_input(
                words, filter_pairs(_operand(kernel, working), geom.groups, num_threads),
                gx, dataclasses.replace(geom, filters=words.shape[-1]),
                _element_strides(gx), _element_strides(words), num_threads, True)
        else:
            w = by_group(np.asarray(kernel, dtype=dtype), geom.groups, num_threads)
            _kernels.grad_input(g, w, gx, geom, _element_strides(gx), _element_strides(g),
                                num_threads)
    if "kernel" in compute:
        grad_kernel = np.empty(geom.kernel_shape, dtype=dtype) if buffers[1] is None \
            else buffers[1]
        kd, kh, kw, f, c = geom.kernel_shape
        grouped = grad_kernel if geom.groups == 1 else np.empty(
            (kd, kh, kw, geom.groups * f, c // geom.groups), dtype)
        if "kernel" in pairs:
            gw = voxel_pairs(g16, geom.strides[2], num_threads)
            xw = voxel_pairs(_logical(_operand(x, working), geom), 1, num_threads)
            _kernels.grad_kernel(gw, xw, grouped, geom, _element_strides(xw),
                                 _element_strides(gw), num_threads, True)
        else:
            # the GEMM reads x's channels as vectors
            xl = channels_last(_logical(_operand(x, dtype), geom), num_threads, on_lines=True)
            _kernels.grad_kernel(g, xl, grouped, geom, _element_strides(xl),
                                 _element_strides(g), num_threads)
        if geom.groups > 1:   # back to Keras' layout: the in_channels axis is the groups'
            grad_kernel.reshape(kd, kh, kw, f, geom.groups, -1)[...] = grouped.reshape(
                kd, kh, kw, geom.groups, f, -1).transpose(0, 1, 2, 4, 3, 5)
    if bias:
        grad_bias = np.empty(geom.filters, dtype=dtype) if buffers[2] is None else buffers[2]
        if bf16_grad:
            _kernels.grad_bias(None, grad_bias, geom, _element_strides(g16), num_threads,
                               g16.view(np.uint16))
        else:
            _kernels.grad_bias(g, grad_bias, geom, _element_strides(g), num_threads)
    return tuple(None if grad is None else rounded(grad, result, buffer, num_threads)
                 for grad, buffer in zip((grad_input, grad_kernel, grad_bias), targets))


def _through_activation(grad_output, activation, output, geom, dtype, num_threads):
    """``grad_output * activation'`` (from the activated ``output``), in one compiled
    pass; ``grad_output`` itself for no or a linear activation."""
    name, alpha = normalize_activation(activation)
    if name == "linear":
        return grad_output
    if name not in FROM_OUTPUT:
        raise ValueError(f"`activation` {name!r}: its derivative needs the pre-activation, "
                         "which a fused forward does not keep; run the forward without "
                         "`activation` and apply the activation (and its derivative) to "
                         f"the result. Fused backwards: {', '.join(FROM_OUTPUT)}.")
    if output is None:
        raise ValueError(f"`output` (the forward's activated output) is required with "
                         f"activation={name!r}.")
    output = as_array(output, "output")
    if output.shape != geom.output_shape:
        raise ValueError(f"`output` must have the forward output's shape "
                         f"{geom.output_shape}, got {output.shape}.")
    check_allocation(geom.output_shape, dtype, "grad_output", copy=True)
    g = np.require(grad_output, dtype, "CA").reshape(-1)
    y = np.require(output, dtype, "CA").reshape(-1)
    result = np.empty(g.shape, dtype)
    _kernels.activation_grad(g, y, result, _kernels.FUSED_ACTIVATIONS.index(name), alpha,
                             num_threads)
    return result.reshape(geom.output_shape)
