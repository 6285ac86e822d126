"""The autograd Functions of :mod:`tconv3d.torch`: tconv3d's kernels, differentiable to any
order.

:func:`forward_arrays` and :func:`backward_arrays` compute PyTorch's ``conv_transpose3d``
and its gradients on arrays (one tconv3d call with PyTorch's padding, all groups at once);
the Functions below wrap them for tensors, zero-copy, with ``setup_context`` (as
:mod:`torch.func` requires), ``vmap`` rules and ``jvp`` (forward mode).
:mod:`tconv3d.torch` validates every call before it reaches
:func:`transposed_convolution`: :class:`ConvTranspose3dFunction` then PyTorch's function
of the activation (:func:`activate`), or, when no autograd mode may differentiate the
call, the Function's forward alone with the activation fused.
"""
import functools
import importlib.util
import inspect
from dataclasses import dataclass, replace

import numpy as np
import torch  # absolute import: the top-level PyTorch package
from torch.autograd import forward_ad

from ._geometry import TorchPlan, torch_to_keras_kernel
from ._layouts import torch_weight
from ._validation import is_bfloat16, normalize_activation
from ._ops import conv_transpose3d as _tconv_forward
from ._ops import conv_transpose3d_backward as _tconv_backward

__all__ = ["Call", "ConvTranspose3dFunction", "GradBias", "GradInput", "GradWeight",
           "activate", "backward_arrays", "forward_arrays", "has_ml_dtypes",
           "transposed_convolution"]


# --------------------------------------------------------------------------------------
# numpy side: arrays in, arrays out
# --------------------------------------------------------------------------------------
def _shape(channels_last, batch, spatial, channels):
    return (batch, *spatial, channels) if channels_last else (batch, channels, *spatial)


def forward_arrays(x, w, b, plan, stride, dilation, groups, channels_last, num_threads,
                   out=None, activation=None):
    """PyTorch's conv_transpose3d on arrays, then ``activation`` (fused); x in the layout
    `channels_last` names; into ``out`` when given."""
    return _tconv_forward(x, torch_to_keras_kernel(w), b, out=out, activation=activation,
                          **_arguments(plan, stride, dilation, groups, channels_last,
                                       num_threads))


def backward_arrays(gy, x, w, use_bias, needs, plan, stride, dilation, groups,
                    channels_last, num_threads, out=(None, None)):
    """Gradients (input, weight in PyTorch's layout, bias) of :func:`forward_arrays`; the
    first two into the arrays of ``out`` that are given."""
    compute = tuple(name for name, need in zip(("input", "kernel", "bias"), needs) if need)
    gx, gk, gb = _tconv_backward(gy, x, torch_to_keras_kernel(w), use_bias=use_bias,
                                 compute=compute, out=(out[0], None, None),
                                 **_arguments(plan, stride, dilation, groups, channels_last,
                                              num_threads))
    return gx, None if gk is None else torch_weight(gk, num_threads, out[1]), gb


def _arguments(plan, stride, dilation, groups, channels_last, num_threads):
    """tconv3d's keyword arguments for one PyTorch geometry (its padding is PyTorch's)."""
    return dict(strides=stride, padding=plan.padding, output_padding=plan.output_padding,
                dilation_rate=dilation, groups=groups, num_threads=num_threads,
                data_format="channels_last" if channels_last else "channels_first")


# --------------------------------------------------------------------------------------
# torch side: differentiable to any order, composable with torch.func
# --------------------------------------------------------------------------------------
# With T(x, W, g) = <F(x, W), g> (F: the transposed convolution without bias), the three
# operators below are the partial gradients of that trilinear form:
#
#   F(x, W)   = dT/dg    (Shape of y)   ConvTranspose3dFunction  tconv3d's forward
#   Gx(g, W)  = dT/dx    (Shape of x)   GradInput                tconv3d's grad_input
#   Gw(g, x)  = dT/dW    (Shape of W)   GradWeight               tconv3d's grad_kernel
#
# so the vector-Jacobian product of each one is again one of them (each is linear in
# each argument): for a cotangent u of Gx's output, <Gx(g, W), u> = T(u, W, g) gives
# d/dg = F(u, W) and d/dW = Gw(g, u); for a cotangent V of Gw's output,
# <Gw(g, x), V> = T(x, V, g) gives d/dg = F(x, V) and d/dx = Gx(g, V). The bias gradient
# Gb(g) (sum of g over batch and space, GradBias) has the broadcast as its adjoint.
# Every backward calls these Functions, so derivatives of any order run on tconv3d's
# kernels. Each Function has a vmap rule (torch.func.vmap, jacrev, ...): a vmapped
# dimension is folded into the batch when only the batch-carrying operand has it, and
# into the channels with `groups` multiplied by the vmap size otherwise.
@dataclass(frozen=True)
class Call:
    """The geometry of one convolution, shared by its forward and all its derivatives."""
    plan: TorchPlan
    stride: tuple
    dilation: tuple
    groups: int
    in_spatial: tuple
    kernel_size: tuple

    def grouped(self, factor):
        """The same call on ``factor`` independent problems stacked along the channels."""
        return replace(self, groups=self.groups * factor)


def _is_wrapped(t):
    """Whether ``t`` is a torch.func wrapper (batched or grad-tracking): no data to read."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def _is_channels_last(t):
    if _is_wrapped(t):  # the layout of a vmapped tensor is not queryable
        return False
    return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


@functools.lru_cache(maxsize=None)
def has_ml_dtypes():
    """Whether bfloat16 tensors can be seen as ``ml_dtypes.bfloat16`` arrays (the [bf16]
    extra); without it :mod:`tconv3d.torch` runs them as float32 tensors (the same
    numbers but for the forward's AVX512_BF16 path)."""
    return importlib.util.find_spec("ml_dtypes") is not None


def _as_array(t, channels_last):
    """Zero-copy ndarray view of a CPU tensor (bfloat16 as ``ml_dtypes.bfloat16``, when
    :func:`has_ml_dtypes`), NCDHW tensors seen as NDHWC when asked."""
    t = t.detach().resolve_neg()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        a = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
        a = t.numpy()
    return a.transpose(0, 2, 3, 4, 1) if channels_last else a


def _as_tensor(a, channels_last):
    """Zero-copy tensor of an ndarray (``ml_dtypes.bfloat16`` as bfloat16); an NDHWC array
    becomes a channels_last_3d tensor."""
    if is_bfloat16(a.dtype):
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.permute(0, 4, 1, 2, 3) if channels_last else t


def _placeholder(shape, dtype):
    """A read-only array of ``shape`` without memory: an operand the kernels do not read."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _backward(grad_output, x, weight, use_bias, needs, call, channels_last):
    """:func:`backward_arrays` on tensors (``x``/``weight`` may be placeholder arrays); the
    input and weight gradients tensors of PyTorch's allocator (:func:`_new_tensor`), the
    bias gradient an array."""
    gx = gw = None
    if needs[0]:
        gx = _new_tensor((x.shape[0], x.shape[-1] if channels_last else x.shape[1],
                          *call.in_spatial), grad_output.dtype, channels_last)
    if needs[1]:
        gw = _new_tensor(weight.shape, grad_output.dtype, False)
    _, _, gb = backward_arrays(_as_array(grad_output, channels_last), x, weight, use_bias,
                               needs, call.plan, call.stride, call.dilation, call.groups,
                               channels_last, torch.get_num_threads(),
                               (None if gx is None else _as_array(gx, channels_last),
                                None if gw is None else _as_array(gw, False)))
    return gx, gw, gb


def _new_tensor(shape, dtype, channels_last):
    """An uninitialised tensor of PyTorch's ``shape`` (N, C, D, H, W) for the kernels to
    write: PyTorch's allocator, as for its own ops' results. (NumPy advises huge pages
    for large arrays; after PyTorch's ops have fragmented memory, their first touch can
    stall in memory compaction: 6 ms for an 8 MiB output on the test VM.)"""
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last_3d
                       if channels_last else torch.contiguous_format)


def _batch_first(t, dim, size):
    """``t`` with its vmapped dimension first; broadcast to ``size`` when it has none."""
    return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def _fold_channels(t, dim, size):
    """A vmapped ``(batch, channels, ...)`` tensor as ``(batch, size * channels, ...)``.

    The vmapped index becomes the slower channel index, as a ``groups`` multiple expects.
    """
    if dim is None:
        t = t.unsqueeze(1).expand(t.shape[0], size, *t.shape[1:])
    else:
        t = t.movedim(dim, 1)
    return t.flatten(1, 2)


def _sum_terms(terms):
    """The sum of the terms that are not None (a jvp's tangent)."""
    terms = [t for t in terms if t is not None]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def transposed_convolution(x, weight, bias, call, activation=None):
    """``activation(F(x, W) + b)``: :class:`ConvTranspose3dFunction` then PyTorch's function
    of the activation (:func:`activate`), so that autograd differentiates both; when
    nothing may differentiate the call (inference), the Function's forward alone, with the
    activation applied by the compiled forward to each block of outputs in cache (no
    second pass over the output, no second array; and no Function.apply: 30-50 us).
    ``activation`` as :func:`tconv3d._validation.normalize_activation` accepts it."""
    if _differentiated(x, weight, bias):
        return activate(ConvTranspose3dFunction.apply(x, weight, bias, call), activation)
    return _forward(x, weight, bias, call, activation)


_TORCH_ACTIVATIONS = {
    "linear": lambda y, alpha: y,
    "relu": lambda y, alpha: torch.relu(y),
    "leaky_relu": lambda y, alpha: torch.nn.functional.leaky_relu(y, alpha),
    "sigmoid": lambda y, alpha: torch.sigmoid(y),
    "tanh": lambda y, alpha: torch.tanh(y),
    "gelu": lambda y, alpha: torch.nn.functional.gelu(y),
    "gelu_tanh": lambda y, alpha: torch.nn.functional.gelu(y, approximate="tanh"),
    "silu": lambda y, alpha: torch.nn.functional.silu(y),
}


def activate(y, activation):
    """``y`` through ``activation`` (as ``normalize_activation`` accepts it) by PyTorch's
    function of the same formula (Keras' parameters)."""
    if activation is None:
        return y
    name, alpha = normalize_activation(activation)
    return _TORCH_ACTIVATIONS[name](y, alpha)


def _differentiated(*tensors):
    """Whether an autograd mode may differentiate a call on ``tensors``: reverse mode (a
    tensor requires grad), forward mode (a ``dual_level`` is open, even under no_grad) or
    a :mod:`torch.func` transform."""
    if torch._C._are_functorch_transforms_active():
        return True
    if getattr(forward_ad, "_current_level", 0) >= 0:   # PyTorch's record of open levels
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _forward(x, weight, bias, call, activation=None):
    """tconv3d's forward on tensors (``activation`` fused), into a new tensor in ``x``'s
    memory format."""
    channels_last = _is_channels_last(x)
    y = _new_tensor((x.shape[0], weight.shape[1] * call.groups, *call.plan.out), x.dtype,
                    channels_last)
    forward_arrays(_as_array(x, channels_last), _as_array(weight, False),
                   None if bias is None else _as_array(bias, False), call.plan, call.stride,
                   call.dilation, call.groups, channels_last, torch.get_num_threads(),
                   out=_as_array(y, channels_last), activation=activation)
    return y


class ConvTranspose3dFunction(torch.autograd.Function):
    """``F(x, W) + b``: tconv3d's forward, for validated 5-D CPU float tensors."""

    @staticmethod
    def forward(x, weight, bias, call):
        return _forward(x, weight, bias, call)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, call = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.call, ctx.use_bias, ctx.shape = call, bias is not None, output.shape

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        call = ctx.call
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        channels_last = _is_channels_last(x)
        if not torch.is_grad_enabled() and not any(map(_is_wrapped, (grad_output, x, weight))):
            # First-order backward of plain tensors: all gradients in one pass.
            gx, gw, gb = _backward(grad_output, _as_array(x, channels_last),
                                   _as_array(weight, False), ctx.use_bias,
                                   (need_x, need_w, need_b), call, channels_last)
            return (gx, gw,
                    None if gb is None else _as_tensor(gb, False), None)
        # create_graph=True, or torch.func: the gradients as differentiable operations.
        return (GradInput.apply(grad_output, weight, call, channels_last) if need_x else None,
                GradWeight.apply(grad_output, x, call) if need_w else None,
                GradBias.apply(grad_output, call, x.shape[1]) if need_b else None, None)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _):
        x, weight = ctx.saved_tensors
        apply = ConvTranspose3dFunction.apply
        terms = [apply(dx, weight, None, ctx.call) if dx is not None else None,
                 apply(x, dweight, None, ctx.call) if dweight is not None else None,
                 None if dbias is None else dbias.reshape(1, -1, 1, 1, 1).expand(ctx.shape)]
        return _sum_terms(terms)

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, call):
        x_dim, w_dim, b_dim = in_dims[:3]
        apply = ConvTranspose3dFunction.apply
        if w_dim is None and b_dim is None:  # one weight: vmap and batch are one batch
            x = x.movedim(x_dim, 0)
            y = apply(x.flatten(0, 1), weight, bias, call)
            return y.unflatten(0, x.shape[:2]), 0
        size = info.batch_size
        y = apply(_fold_channels(x, x_dim, size), _batch_first(weight, w_dim, size).flatten(0, 1),
                  None if bias is None else _batch_first(bias, b_dim, size).flatten(),
                  call.grouped(size))
        return y.unflatten(1, (size, -1)), 1


class GradInput(torch.autograd.Function):
    """``Gx(g, W)``: the gradient of ``F(x, W)`` with respect to ``x``, in ``x``'s layout."""

    @staticmethod
    def forward(grad_output, weight, call, channels_last):
        dtype = _as_array(weight, False).dtype
        x = _placeholder(_shape(channels_last, grad_output.shape[0], call.in_spatial,
                                weight.shape[0]), dtype)
        gx, _, _ = _backward(grad_output, x, _as_array(weight, False), False,
                             (True, False, False), call, channels_last)
        return gx

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, weight, call, channels_last = inputs
        ctx.save_for_backward(grad_output, weight)
        ctx.save_for_forward(grad_output, weight)
        ctx.call, ctx.channels_last = call, channels_last

    @staticmethod
    def backward(ctx, u):
        grad_output, weight = ctx.saved_tensors
        need_g, need_w = ctx.needs_input_grad[:2]
        return (ConvTranspose3dFunction.apply(u, weight, None, ctx.call) if need_g else None,
                GradWeight.apply(grad_output, u, ctx.call) if need_w else None, None, None)

    @staticmethod
    def jvp(ctx, dgrad_output, dweight, *_):
        grad_output, weight = ctx.saved_tensors
        apply = GradInput.apply
        return _sum_terms([
            None if dgrad_output is None else apply(dgrad_output, weight, ctx.call,
                                                    ctx.channels_last),
            None if dweight is None else apply(grad_output, dweight, ctx.call,
                                               ctx.channels_last)])

    @staticmethod
    def vmap(info, in_dims, grad_output, weight, call, channels_last):
        g_dim, w_dim = in_dims[:2]
        if w_dim is None:
            grad_output = grad_output.movedim(g_dim, 0)
            gx = GradInput.apply(grad_output.flatten(0, 1), weight, call, channels_last)
            return gx.unflatten(0, grad_output.shape[:2]), 0
        size = info.batch_size
        gx = GradInput.apply(_fold_channels(grad_output, g_dim, size),
                             _batch_first(weight, w_dim, size).flatten(0, 1),
                             call.grouped(size), channels_last)
        return gx.unflatten(1, (size, -1)), 1


class GradWeight(torch.autograd.Function):
    """``Gw(g, x)``: the gradient of ``F(x, W)`` with respect to ``W``, PyTorch's layout."""

    @staticmethod
    def forward(grad_output, x, call):
        channels_last = _is_channels_last(x)
        xa = _as_array(x, channels_last)
        weight = _placeholder((x.shape[1], grad_output.shape[1] // call.groups,
                               *call.kernel_size), xa.dtype)
        _, gw, _ = _backward(grad_output, xa, weight, False, (False, True, False), call,
                             channels_last)
        return gw

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, x, call = inputs
        ctx.save_for_backward(grad_output, x)
        ctx.save_for_forward(grad_output, x)
        ctx.call = call

    @staticmethod
    def backward(ctx, v):
        grad_output, x = ctx.saved_tensors
        need_g, need_x = ctx.needs_input_grad[:2]
        return (ConvTranspose3dFunction.apply(x, v, None, ctx.call) if need_g else None,
                GradInput.apply(grad_output, v, ctx.call, _is_channels_last(x))
                if need_x else None, None)

    @staticmethod
    def jvp(ctx, dgrad_output, dx, _):
        grad_output, x = ctx.saved_tensors
        apply = GradWeight.apply
        return _sum_terms([None if dgrad_output is None else apply(dgrad_output, x, ctx.call),
                           None if dx is None else apply(grad_output, dx, ctx.call)])

    @staticmethod
    def vmap(info, in_dims, grad_output, x, call):
        g_dim, x_dim = in_dims[:2]
        size = info.batch_size
        gw = GradWeight.apply(_fold_channels(grad_output, g_dim, size),
                              _fold_channels(x, x_dim, size), call.grouped(size))
        return gw.unflatten(0, (size, -1)), 0


class GradBias(torch.autograd.Function):
    """``Gb(g)``: the gradient of the bias, ``g`` summed over batch and space."""

    @staticmethod
    def forward(grad_output, call, in_channels):
        channels_last = _is_channels_last(grad_output)
        dtype = _as_array(grad_output, False).dtype
        x = _placeholder(_shape(channels_last, grad_output.shape[0], call.in_spatial,
                                in_channels), dtype)
        weight = _placeholder((in_channels, grad_output.shape[1] // call.groups,
                               *call.kernel_size), dtype)
        _, _, gb = _backward(grad_output, x, weight, True, (False, False, True), call,
                             channels_last)
        return _as_tensor(gb, False)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, call, in_channels = inputs
        ctx.shape, ctx.call, ctx.in_channels = grad_output.shape, call, in_channels

    @staticmethod
    def backward(ctx, c):
        return c.reshape(1, -1, 1, 1, 1).expand(ctx.shape), None, None

    @staticmethod
    def jvp(ctx, dgrad_output, *_):
        return GradBias.apply(dgrad_output, ctx.call, ctx.in_channels)

    @staticmethod
    def vmap(info, in_dims, grad_output, call, in_channels):
        size = info.batch_size
        gb = GradBias.apply(_fold_channels(grad_output, in_dims[0], size),
                            call.grouped(size), in_channels * size)
        return gb.unflatten(0, (size, -1)), 0


# Function.apply binds its arguments to ``forward``'s signature on every call
# (``inspect.signature``: 10 us, most of a small layer's overhead); a signature stored on
# the function is returned as it is.
for _function in (ConvTranspose3dFunction, GradInput, GradWeight, GradBias):
    _function.forward.__signature__ = inspect.signature(_function.forward)
del _function
