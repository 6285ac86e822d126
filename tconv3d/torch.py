"""A drop-in :class:`torch.nn.ConvTranspose3d` whose CPU forward and backward run on tconv3d.

Install with ``pip install "tconv3d[torch]"``; ``import tconv3d`` alone never imports torch.

>>> import torch, tconv3d.torch
>>> up = tconv3d.torch.ConvTranspose3d(32, 16, kernel_size=2, stride=2)
>>> up(torch.randn(1, 32, 8, 8, 8)).shape
torch.Size([1, 16, 16, 16, 16])
>>> model = tconv3d.torch.convert(torch.nn.Sequential(torch.nn.ConvTranspose3d(4, 2, 2, 2)))
>>> type(model[0]).__module__
'tconv3d.torch'

:class:`ConvTranspose3d` subclasses :class:`torch.nn.ConvTranspose3d`: same signature,
same parameters (``weight`` of shape ``(in_channels, out_channels // groups, kd, kh, kw)``,
``bias``), same default initialisation and the same ``state_dict``; only ``forward`` differs.
:func:`conv_transpose3d` mirrors :func:`torch.nn.functional.conv_transpose3d`, and
:func:`convert` converts the modules of an existing model in place (by swapping their class),
so their hooks, hook-computed weights (``spectral_norm``, ``weight_norm``, ``prune``) and
parametrizations (``torch.nn.utils.parametrizations``) keep working; it warns about each
module it leaves to PyTorch and, with ``report=True``, returns a :class:`ConvertReport`.

What runs where
---------------
tconv3d's kernels run when input, weight and bias are strided CPU tensors of one dtype,
float32 or float64, and the arguments are valid. Everything else goes to PyTorch's own
``torch.nn.functional.conv_transpose3d``:

- other devices (CUDA, MPS, meta, ...) and other dtypes (float16, bfloat16, ...): PyTorch's
  op, with a :class:`TconvFallbackWarning` the first time each reason occurs, so a converted
  model can still be moved to a GPU or to half precision;
- invalid arguments (wrong channel count, mixed dtypes, output_padding too large, an empty
  output, ...) and empty inputs: PyTorch's op without warning, so errors are exactly
  PyTorch's;
- tensors without data of their own (``__torch_dispatch__`` subclasses such as the
  FakeTensor and FunctionalTensor of PyTorch's tracers): PyTorch's op without warning.

Tensor subclasses that override ``__torch_function__`` (e.g. MONAI's ``MetaTensor``) go
through the ``__torch_function__`` protocol like :mod:`torch.nn.functional`, so the output
keeps the input's subclass.

The thread count is PyTorch's (``torch.get_num_threads()``), so ``torch.set_num_threads``
governs both libraries. All gradients (input, weight, bias) are computed by tconv3d and do
not depend on the thread count.

Derivatives of any order, ``torch.func``
----------------------------------------
The backward is built from differentiable operations on the same kernels, so
``create_graph=True`` (gradient penalties, Jacobian regularisers), ``torch.autograd.grad``
of gradients, forward-mode AD (``torch.autograd.forward_ad``) and ``torch.func`` (``grad``,
``vjp``, ``jvp``, ``jacrev``, ``jacfwd``, ``hessian``, ``vmap``, ``functional_call``) all
give PyTorch's numbers. Three operators do all the work: the transposed convolution
``F(x, W)`` (tconv3d's forward), its input gradient ``Gx(g, W)`` (tconv3d's ``grad_input``,
a regular convolution) and its weight gradient ``Gw(g, x)`` (tconv3d's ``grad_kernel``),
the three partial gradients of ``T(x, W, g) = <F(x, W), g>``; being linear in each
argument, each one's derivatives are again these operators, e.g. the gradient of
``<Gx(g, W), u>`` is ``F(u, W)`` for ``g`` and ``Gw(g, u)`` for ``W``. A plain
``backward()`` computes the first-order gradients in one pass, as before; with
``create_graph=True`` the same numbers come from one differentiable call per gradient.
Under ``torch.func.vmap`` a vmapped dimension is folded into the batch (input only) or into
the channels with ``groups`` multiplied by the vmap size (batched weights or bias), so a
vmapped call is one tconv3d call.

Memory layout
-------------
Tensors and arrays share memory both ways (``Tensor.numpy()``, ``torch.from_numpy``); the
kernels read any strides, so neither a contiguous NCDHW input nor a ``channels_last_3d``
input is copied. The output has the input's memory format: ``channels_last_3d`` in,
``channels_last_3d`` out (PyTorch's CPU op returns contiguous NCDHW in both cases; the values
are the same), anything else gives contiguous NCDHW. Weight gradients are contiguous in
PyTorch's weight layout.

Padding
-------
On each axis, with ``L = (in - 1)*stride + (k - 1)*dilation + 1`` the uncropped length,
PyTorch returns ``full[p : L - p + op]`` (``p`` = padding, ``op`` = output_padding) while
tconv3d computes Keras' geometry ``full[c : c + out]``. When one Keras geometry gives exactly
PyTorch's window on all three axes, a single tconv3d call produces the output (exact path,
no wasted work, no copy):

- ``"valid"`` with ``output_padding=op`` when ``p == 0`` and ``op < stride`` on every axis
  (e.g. the k2 s2 up-sampling of U-Nets);
- ``"same"`` with ``output_padding = op + 2*(k_eff//2 - p)`` (``k_eff = (k-1)*dilation + 1``)
  when that lies in ``[0, stride)`` and ``p == 0 or op == 0`` on every axis (e.g. k3 s1 p1,
  k3 s2 p1).

Otherwise (e.g. k4 s2 p1, k3 s2 p1 op1, per-axis mixes of the two cases above) tconv3d
computes the ``"valid"`` volume ``full[0 : L + q]`` with ``q = min(max(op - p, 0),
stride - 1)`` and PyTorch's window is copied out of it: up to ``p`` wasted planes per side
and axis plus one copy of the output. The backward zero-pads ``grad_output`` back into that
volume, so gradients are exact. Output planes past ``L + q`` (possible only when
``dilation > stride``) hold the bias.

Groups
------
``groups > 1`` is supported: tconv3d is called once per group on channel slices (views, no
input copy); each group's output and gradients are copied into the full tensors.

TorchScript, ``torch.export`` and ``torch.compile``
---------------------------------------------------
- ``torch.jit.script``, ``torch.jit.trace`` and ``torch.export.export`` (strict or not) work
  and record PyTorch's own op (``aten::conv_transpose3d``): the result is portable, can be
  saved and runs without tconv3d, at PyTorch's speed (tracing warns once with
  :class:`TconvFallbackWarning`). Serialized graphs cannot call a Python extension.
- ``torch.compile`` works, with a graph break at each transposed convolution: the tconv3d
  call is excluded from Dynamo's tracing (``torch.compiler.disable``; tracing into it would
  make Dynamo rewrite tconv3d's numpy code as torch ops and break on the compiled kernel
  anyway), runs eagerly on tconv3d, and the layers between are compiled. Caveats (PyTorch
  2.13): ``fullgraph=True`` raises ``Unsupported`` at the break, and a break inside a
  ``torch.nn.Sequential`` makes Dynamo run that whole ``Sequential`` eagerly (PyTorch's own
  modules are not resumed after a break); models with their own ``forward`` calling the
  layers (as U-Nets do) keep everything but the transposed convolutions compiled.
"""
import warnings
from dataclasses import dataclass, replace
from typing import List, Optional

import numpy as np

try:
    import torch  # absolute import: the top-level PyTorch package, not this module
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "tconv3d.torch needs PyTorch, an optional dependency of tconv3d: install it with "
        "`pip install \"tconv3d[torch]\"` (or follow https://pytorch.org/get-started)."
    ) from exc
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize
from torch.overrides import handle_torch_function, has_torch_function

from ._geometry import TorchPlan, keras_to_torch_kernel, torch_plan, torch_to_keras_kernel
from ._ops import conv_transpose3d as _tconv_forward
from ._ops import conv_transpose3d_backward as _tconv_backward

__all__ = ["ConvTranspose3d", "ConvertReport", "TconvFallbackWarning", "conv_transpose3d",
           "convert"]

_DTYPES = (torch.float32, torch.float64)
_PLAIN_DISPATCH = torch.Tensor.__torch_dispatch__


class TconvFallbackWarning(UserWarning):
    """PyTorch's own ``conv_transpose3d`` ran instead of tconv3d's kernels."""


_warned = set()


def _warn_once(reason):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"tconv3d.torch: {reason}; using PyTorch's own conv_transpose3d "
                      f"(warned once).", TconvFallbackWarning, stacklevel=4)


def _triple(value):
    if isinstance(value, int):
        return (value,) * 3
    return tuple(int(v) for v in value)


# --------------------------------------------------------------------------------------
# numpy side: arrays in, arrays out
# --------------------------------------------------------------------------------------
def _index(channels_last, spatial=(slice(None),) * 3, channels=slice(None)):
    if channels_last:
        return (slice(None), *spatial, channels)
    return (slice(None), channels, *spatial)


def _shape(channels_last, batch, spatial, channels):
    return (batch, *spatial, channels) if channels_last else (batch, channels, *spatial)


def _forward_arrays(x, w, b, plan, stride, dilation, groups, channels_last, num_threads):
    """PyTorch's conv_transpose3d on arrays; x in the layout `channels_last` names."""
    kwargs = dict(strides=stride, padding=plan.padding, output_padding=plan.output_padding,
                  dilation_rate=dilation, num_threads=num_threads,
                  data_format="channels_last" if channels_last else "channels_first")
    if plan.exact and groups == 1:
        return _tconv_forward(x, torch_to_keras_kernel(w), b, **kwargs)
    cin_g, cout_g = w.shape[0] // groups, w.shape[1]
    y = np.empty(_shape(channels_last, x.shape[0], plan.out, cout_g * groups), dtype=x.dtype)
    if not plan.covers:
        y[...] = 0 if b is None else (b if channels_last else b[:, None, None, None])
    src, dst = plan.overlap()
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        z = _tconv_forward(x[_index(channels_last, channels=ci)],
                           torch_to_keras_kernel(w[ci]), None if b is None else b[co], **kwargs)
        y[_index(channels_last, dst, co)] = z[_index(channels_last, src)]
    return y


def _backward_arrays(gy, x, w, use_bias, needs, plan, stride, dilation, groups,
                     channels_last, num_threads):
    """Gradients (input, weight in PyTorch's layout, bias) of :func:`_forward_arrays`."""
    kwargs = dict(strides=stride, padding=plan.padding, output_padding=plan.output_padding,
                  dilation_rate=dilation, num_threads=num_threads,
                  data_format="channels_last" if channels_last else "channels_first")
    need_x, need_w, need_b = needs
    need_b = need_b and use_bias
    # Past the computed volume the output is only bias: its gradient there is a plain sum.
    tconv_bias = need_b and plan.covers
    compute = tuple(name for name, need in
                    zip(("input", "kernel", "bias"), (need_x, need_w, tconv_bias)) if need)
    if plan.exact and groups == 1:
        gx, gk, gb = _tconv_backward(gy, x, torch_to_keras_kernel(w), use_bias=tconv_bias,
                                     compute=compute, **kwargs)
        return gx, None if gk is None else np.ascontiguousarray(keras_to_torch_kernel(gk)), gb
    cin_g, cout_g = w.shape[0] // groups, w.shape[1]
    gx = np.empty(x.shape, dtype=x.dtype) if need_x else None
    gw = np.empty(w.shape, dtype=w.dtype) if need_w else None
    gb = np.empty(cout_g * groups, dtype=w.dtype) if need_b else None
    if need_b and not tconv_bias:
        gb[...] = gy.sum(axis=(0, 1, 2, 3) if channels_last else (0, 2, 3, 4))
    src, dst = plan.overlap()
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        if plan.exact:
            gz = gy[_index(channels_last, channels=co)]
        else:  # zero-pad grad_output back into the computed volume
            gz = np.zeros(_shape(channels_last, gy.shape[0], plan.computed, cout_g), gy.dtype)
            gz[_index(channels_last, src)] = gy[_index(channels_last, dst, co)]
        gx_g, gk_g, gb_g = _tconv_backward(gz, x[_index(channels_last, channels=ci)],
                                           torch_to_keras_kernel(w[ci]), use_bias=tconv_bias,
                                           compute=compute, **kwargs)
        if need_x:
            gx[_index(channels_last, channels=ci)] = gx_g
        if need_w:
            gw[ci] = keras_to_torch_kernel(gk_g)
        if tconv_bias:
            gb[co] = gb_g
    return gx, gw, gb


# --------------------------------------------------------------------------------------
# torch side: differentiable to any order, composable with torch.func
# --------------------------------------------------------------------------------------
# With T(x, W, g) = <F(x, W), g> (F: the transposed convolution without bias), the three
# operators below are the partial gradients of that trilinear form:
#
#   F(x, W)   = dT/dg    (Shape of y)   _ConvTranspose3dFunction  tconv3d's forward
#   Gx(g, W)  = dT/dx    (Shape of x)   _GradInput                tconv3d's grad_input
#   Gw(g, x)  = dT/dW    (Shape of W)   _GradWeight               tconv3d's grad_kernel
#
# so the vector-Jacobian product of each one is again one of them (each is linear in
# each argument): for a cotangent u of Gx's output, <Gx(g, W), u> = T(u, W, g) gives
# d/dg = F(u, W) and d/dW = Gw(g, u); for a cotangent V of Gw's output,
# <Gw(g, x), V> = T(x, V, g) gives d/dg = F(x, V) and d/dx = Gx(g, V). The bias gradient
# Gb(g) (sum of g over batch and space, _GradBias) has the broadcast as its adjoint.
# Every backward calls these Functions, so derivatives of any order run on tconv3d's
# kernels. Each Function has a vmap rule (torch.func.vmap, jacrev, ...): a vmapped
# dimension is folded into the batch when only the batch-carrying operand has it, and
# into the channels with `groups` multiplied by the vmap size otherwise.
@dataclass(frozen=True)
class _Call:
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


def _as_array(t, channels_last):
    """Zero-copy ndarray view of a CPU tensor, NCDHW tensors seen as NDHWC when asked."""
    a = t.detach().resolve_neg().numpy()
    return np.moveaxis(a, 1, -1) if channels_last else a


def _as_tensor(a, channels_last):
    """Zero-copy tensor of an ndarray; an NDHWC array becomes a channels_last_3d tensor."""
    t = torch.from_numpy(a)
    return t.permute(0, 4, 1, 2, 3) if channels_last else t


def _placeholder(shape, dtype):
    """A read-only array of ``shape`` without memory: an operand the kernels do not read."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _backward(grad_output, x, weight, use_bias, needs, call, channels_last):
    """:func:`_backward_arrays` on tensors (``x``/``weight`` may be placeholder arrays)."""
    return _backward_arrays(_as_array(grad_output, channels_last), x, weight, use_bias, needs,
                            call.plan, call.stride, call.dilation, call.groups, channels_last,
                            torch.get_num_threads())


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


class _ConvTranspose3dFunction(torch.autograd.Function):
    """``F(x, W) + b``: tconv3d's forward, for validated 5-D CPU float tensors."""

    @staticmethod
    def forward(x, weight, bias, call):
        channels_last = _is_channels_last(x)
        y = _forward_arrays(_as_array(x, channels_last), _as_array(weight, False),
                            None if bias is None else _as_array(bias, False), call.plan,
                            call.stride, call.dilation, call.groups, channels_last,
                            torch.get_num_threads())
        return _as_tensor(y, channels_last)

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
            return (None if gx is None else _as_tensor(gx, channels_last),
                    None if gw is None else torch.from_numpy(gw),
                    None if gb is None else torch.from_numpy(gb), None)
        # create_graph=True, or torch.func: the gradients as differentiable operations.
        return (_GradInput.apply(grad_output, weight, call, channels_last) if need_x else None,
                _GradWeight.apply(grad_output, x, call) if need_w else None,
                _GradBias.apply(grad_output, call, x.shape[1]) if need_b else None, None)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _):
        x, weight = ctx.saved_tensors
        apply = _ConvTranspose3dFunction.apply
        terms = [apply(dx, weight, None, ctx.call) if dx is not None else None,
                 apply(x, dweight, None, ctx.call) if dweight is not None else None,
                 None if dbias is None else dbias.reshape(1, -1, 1, 1, 1).expand(ctx.shape)]
        return _sum_terms(terms)

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, call):
        x_dim, w_dim, b_dim = in_dims[:3]
        apply = _ConvTranspose3dFunction.apply
        if w_dim is None and b_dim is None:  # one weight: vmap and batch are one batch
            x = x.movedim(x_dim, 0)
            y = apply(x.flatten(0, 1), weight, bias, call)
            return y.unflatten(0, x.shape[:2]), 0
        size = info.batch_size
        y = apply(_fold_channels(x, x_dim, size), _batch_first(weight, w_dim, size).flatten(0, 1),
                  None if bias is None else _batch_first(bias, b_dim, size).flatten(),
                  call.grouped(size))
        return y.unflatten(1, (size, -1)), 1


class _GradInput(torch.autograd.Function):
    """``Gx(g, W)``: the gradient of ``F(x, W)`` with respect to ``x``, in ``x``'s layout."""

    @staticmethod
    def forward(grad_output, weight, call, channels_last):
        dtype = _as_array(weight, False).dtype
        x = _placeholder(_shape(channels_last, grad_output.shape[0], call.in_spatial,
                                weight.shape[0]), dtype)
        gx, _, _ = _backward(grad_output, x, _as_array(weight, False), False,
                             (True, False, False), call, channels_last)
        return _as_tensor(gx, channels_last)

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
        return (_ConvTranspose3dFunction.apply(u, weight, None, ctx.call) if need_g else None,
                _GradWeight.apply(grad_output, u, ctx.call) if need_w else None, None, None)

    @staticmethod
    def jvp(ctx, dgrad_output, dweight, *_):
        grad_output, weight = ctx.saved_tensors
        apply = _GradInput.apply
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
            gx = _GradInput.apply(grad_output.flatten(0, 1), weight, call, channels_last)
            return gx.unflatten(0, grad_output.shape[:2]), 0
        size = info.batch_size
        gx = _GradInput.apply(_fold_channels(grad_output, g_dim, size),
                              _batch_first(weight, w_dim, size).flatten(0, 1),
                              call.grouped(size), channels_last)
        return gx.unflatten(1, (size, -1)), 1


class _GradWeight(torch.autograd.Function):
    """``Gw(g, x)``: the gradient of ``F(x, W)`` with respect to ``W``, PyTorch's layout."""

    @staticmethod
    def forward(grad_output, x, call):
        channels_last = _is_channels_last(x)
        xa = _as_array(x, channels_last)
        weight = _placeholder((x.shape[1], grad_output.shape[1] // call.groups,
                               *call.kernel_size), xa.dtype)
        _, gw, _ = _backward(grad_output, xa, weight, False, (False, True, False), call,
                             channels_last)
        return torch.from_numpy(gw)

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
        return (_ConvTranspose3dFunction.apply(x, v, None, ctx.call) if need_g else None,
                _GradInput.apply(grad_output, v, ctx.call, _is_channels_last(x))
                if need_x else None, None)

    @staticmethod
    def jvp(ctx, dgrad_output, dx, _):
        grad_output, x = ctx.saved_tensors
        apply = _GradWeight.apply
        return _sum_terms([None if dgrad_output is None else apply(dgrad_output, x, ctx.call),
                           None if dx is None else apply(grad_output, dx, ctx.call)])

    @staticmethod
    def vmap(info, in_dims, grad_output, x, call):
        g_dim, x_dim = in_dims[:2]
        size = info.batch_size
        gw = _GradWeight.apply(_fold_channels(grad_output, g_dim, size),
                               _fold_channels(x, x_dim, size), call.grouped(size))
        return gw.unflatten(0, (size, -1)), 0


class _GradBias(torch.autograd.Function):
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
        return torch.from_numpy(gb)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, call, in_channels = inputs
        ctx.shape, ctx.call, ctx.in_channels = grad_output.shape, call, in_channels

    @staticmethod
    def backward(ctx, c):
        return c.reshape(1, -1, 1, 1, 1).expand(ctx.shape), None, None

    @staticmethod
    def jvp(ctx, dgrad_output, *_):
        return _GradBias.apply(dgrad_output, ctx.call, ctx.in_channels)

    @staticmethod
    def vmap(info, in_dims, grad_output, call, in_channels):
        size = info.batch_size
        gb = _GradBias.apply(_fold_channels(grad_output, in_dims[0], size),
                             call.grouped(size), in_channels * size)
        return gb.unflatten(0, (size, -1)), 0


def _tconv_plan(input, weight, bias, stride, padding, output_padding, groups, dilation):
    """The :class:`~tconv3d._geometry.TorchPlan` when tconv3d can run this call; else
    (None, fallback reason)."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if any(type(t).__torch_dispatch__ is not _PLAIN_DISPATCH for t in tensors):
        return None, None  # FakeTensor, FunctionalTensor, ...: no data to hand to numpy
    if any(t.device.type != "cpu" for t in tensors):
        devices = sorted({str(t.device) for t in tensors})
        return None, f"tensors on {', '.join(devices)} (tconv3d runs on CPU only)"
    if any(t.layout != torch.strided for t in tensors):
        return None, None
    if len({t.dtype for t in tensors}) != 1:
        return None, None  # PyTorch raises its own error
    if input.dtype not in _DTYPES:
        return None, f"dtype {input.dtype} (tconv3d computes float32 and float64)"
    if input.dim() != 5 or weight.dim() != 5 or input.numel() == 0:
        return None, None
    if not (isinstance(groups, int) and groups >= 1 and weight.shape[0] % groups == 0
            and input.shape[1] == weight.shape[0]
            and (bias is None or tuple(bias.shape) == (weight.shape[1] * groups,))):
        return None, None
    try:
        stride, padding, output_padding, dilation = map(
            _triple, (stride, padding, output_padding, dilation))
    except (TypeError, ValueError):
        return None, None
    if not (all(len(t) == 3 for t in (stride, padding, output_padding, dilation))
            and min(stride + dilation) >= 1 and min(padding + output_padding) >= 0
            and all(op < max(s, d) for op, s, d in zip(output_padding, stride, dilation))):
        return None, None
    plan = torch_plan(tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding,
                      output_padding, dilation)
    if min(plan.out) < 1:
        return None, None
    return (plan, stride, dilation), None


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1):
    """:func:`torch.nn.functional.conv_transpose3d`, on tconv3d's kernels for CPU tensors.

    Parameters
    ----------
    input : Tensor of shape (batch, in_channels, depth, height, width)
        Or unbatched ``(in_channels, depth, height, width)``. Contiguous or
        ``channels_last_3d``, float32 or float64 (see the module docstring for the rest).
    weight : Tensor of shape (in_channels, out_channels // groups, kd, kh, kw)
    bias : Tensor of shape (out_channels,), optional
    stride, padding, output_padding, dilation : int or tuple of 3 ints
        PyTorch's meaning: ``output_padding`` must be smaller than ``stride`` or
        ``dilation`` on each axis.
    groups : int, default=1

    Returns
    -------
    Tensor of shape (batch, out_channels, out_depth, out_height, out_width)
        Each length is ``(in - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1``;
        ``channels_last_3d`` when the input is, contiguous otherwise; input's dtype.
    """
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if has_torch_function(tensors):  # __torch_function__ subclasses, as torch.nn.functional
        return handle_torch_function(conv_transpose3d, tensors, input, weight, bias, stride,
                                     padding, output_padding, groups, dilation)
    if torch.jit.is_tracing():
        _warn_once("torch.jit.trace records PyTorch's op (TorchScript cannot call tconv3d)")
        return F.conv_transpose3d(input, weight, bias, stride, padding, output_padding,
                                  groups, dilation)
    if torch.compiler.is_exporting():  # torch.export records PyTorch's op
        return F.conv_transpose3d(input, weight, bias, stride, padding, output_padding,
                                  groups, dilation)
    if input.dim() == 4:  # unbatched, as PyTorch accepts
        return conv_transpose3d(input.unsqueeze(0), weight, bias, stride, padding,
                                output_padding, groups, dilation).squeeze(0)
    config, reason = _tconv_plan(input, weight, bias, stride, padding, output_padding, groups,
                                 dilation)
    if config is None:
        if reason is not None:
            _warn_once(reason)
        return F.conv_transpose3d(input, weight, bias, stride, padding, output_padding,
                                  groups, dilation)
    plan, stride, dilation = config
    call = _Call(plan, stride, dilation, groups, tuple(input.shape[2:]), tuple(weight.shape[2:]))
    return _apply(input, weight, bias, call)


@torch.compiler.disable
def _apply(input, weight, bias, call):
    # Dynamo cannot trace into compiled code: keep the call out of torch.compile's graphs.
    return _ConvTranspose3dFunction.apply(input, weight, bias, call)


class ConvTranspose3d(torch.nn.ConvTranspose3d):
    """:class:`torch.nn.ConvTranspose3d` with tconv3d's CPU forward and backward.

    Same signature, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.ConvTranspose3d` (this class subclasses it and only replaces
    ``forward``). See the module docstring for the dispatch rules.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or tuple of 3 ints
    stride, padding, output_padding, dilation : int or tuple of 3 ints
    groups : int, default=1
    bias : bool, default=True
    padding_mode : {"zeros"}, default="zeros"
        PyTorch's ``ConvTranspose3d`` only supports ``"zeros"``; so does this class.
    device, dtype : optional
        Factory arguments, as in PyTorch.

    Examples
    --------
    >>> import torch, tconv3d.torch
    >>> torch_up = torch.nn.ConvTranspose3d(8, 4, 2, stride=2)
    >>> up = tconv3d.torch.ConvTranspose3d(8, 4, 2, stride=2)
    >>> _ = up.load_state_dict(torch_up.state_dict())
    >>> x = torch.randn(2, 8, 5, 5, 5)
    >>> torch.allclose(up(x), torch_up(x), atol=1e-5)
    True
    """

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose3d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding,  # type: ignore[arg-type]
            self.kernel_size, 3, self.dilation)  # type: ignore[arg-type]
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            return F.conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                      output_padding, self.groups, self.dilation)
        return self._tconv_forward(input, output_padding)

    @torch.jit.unused
    def _tconv_forward(self, input: Tensor, output_padding: List[int]) -> Tensor:
        return conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)

    @classmethod
    def from_torch(cls, module):
        """A new module of this class sharing ``module``'s parameters (no copy, no init).

        Parameters
        ----------
        module : torch.nn.ConvTranspose3d
            With its own ``weight`` Parameter: not parametrized, weight not computed by a
            hook (``spectral_norm``, ``weight_norm``, ``prune``, ...).

        Returns
        -------
        ConvTranspose3d
            Uses the same ``weight`` and ``bias`` Parameter objects, so optimizers built
            on ``module.parameters()`` keep working; has ``module``'s training flag.
            Module hooks are not carried over (a warning names them): :func:`convert`
            converts a module in place and keeps its hooks and parametrizations.

        Raises
        ------
        TypeError
            If ``module`` is not a ``torch.nn.ConvTranspose3d`` or its weight is not a
            Parameter of its own.
        """
        if not isinstance(module, torch.nn.ConvTranspose3d):
            raise TypeError(f"`module` must be a torch.nn.ConvTranspose3d, got "
                            f"{type(module).__name__}.")
        if "weight" not in module._parameters:
            raise TypeError(f"`module`'s weight is computed ({_computed_weight(module)}), not "
                            f"a Parameter of its own: tconv3d.torch.convert(module) converts "
                            f"it in place and keeps that computation.")
        hooks = _hook_kinds(module)
        if hooks:
            warnings.warn(f"tconv3d.torch.ConvTranspose3d.from_torch: the module's "
                          f"{', '.join(hooks)} are not carried over to the new module; "
                          f"tconv3d.torch.convert(module) converts it in place and keeps "
                          f"them.", UserWarning, stacklevel=2)
        new = cls(module.in_channels, module.out_channels, module.kernel_size,
                  stride=module.stride, padding=module.padding,
                  output_padding=module.output_padding, groups=module.groups,
                  bias=module.bias is not None, dilation=module.dilation,
                  padding_mode=module.padding_mode, device="meta")
        new.weight = module.weight
        new.bias = module.bias
        new.train(module.training)
        return new


_HOOKS = {"_forward_pre_hooks": "forward pre-hooks", "_forward_hooks": "forward hooks",
          "_backward_pre_hooks": "backward pre-hooks", "_backward_hooks": "backward hooks",
          "_state_dict_pre_hooks": "state_dict pre-hooks",
          "_state_dict_hooks": "state_dict hooks",
          "_load_state_dict_pre_hooks": "load_state_dict pre-hooks",
          "_load_state_dict_post_hooks": "load_state_dict post-hooks"}


def _hook_kinds(module):
    return [kind for attribute, kind in _HOOKS.items() if getattr(module, attribute, None)]


def _computed_weight(module):
    if parametrize.is_parametrized(module, "weight"):
        return "parametrized"
    return "by a forward pre-hook" if module._forward_pre_hooks else "not a Parameter"


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert` did, by qualified module name (``""`` is the model itself).

    Attributes
    ----------
    converted : tuple of str
        The modules that now run on tconv3d (their class was swapped in place).
    skipped : dict of str to str
        The transposed convolutions left to PyTorch, with the reason; :func:`convert`
        also warned about each of them.
    """
    converted: tuple
    skipped: dict

    def __str__(self):
        lines = [f"converted {len(self.converted)} module(s) to tconv3d.torch: "
                 f"{', '.join(repr(n) for n in self.converted) or '-'}"]
        lines += [f"skipped {name!r}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def _parametrized_class(cls, module):
    """``cls`` (PyTorch's parametrized ConvTranspose3d class) rebuilt on :class:`ConvTranspose3d`.

    ``torch.nn.utils.parametrize`` gives a parametrized module a class of its own deriving
    from the module's class, holding one property per parametrized tensor; the same
    attributes on a class deriving from tconv3d's module keep every parametrization
    working (and ``remove_parametrizations`` gives a :class:`ConvTranspose3d` back).
    Returns None when ``cls`` holds anything else (a user's subclass).
    """
    if cls.__bases__ != (torch.nn.ConvTranspose3d,):
        return None
    attributes = {name: value for name, value in vars(cls).items()
                  if name not in ("__dict__", "__weakref__")}
    own = {name for name in attributes if not name.startswith("__")}
    if not own <= set(module.parametrizations.keys()):
        return None
    attributes["__module__"] = __name__
    return type(cls.__name__, (ConvTranspose3d,), attributes)


def _skip_reason(module):
    """Why ``module`` (a torch.nn.ConvTranspose3d subclass) cannot be converted."""
    if isinstance(module, LazyModuleMixin):
        return ("an uninitialized lazy module: run one forward pass (it then becomes a "
                "torch.nn.ConvTranspose3d) and convert again")
    if parametrize.is_parametrized(module):
        return (f"a parametrized {type(module).__bases__[0].__qualname__} (only parametrized "
                f"torch.nn.ConvTranspose3d modules are converted)")
    return (f"a subclass ({type(module).__qualname__}) of torch.nn.ConvTranspose3d, whose "
            f"forward may differ")


def convert(model, *, report=False):
    """Make every :class:`torch.nn.ConvTranspose3d` of ``model`` run on tconv3d, in place.

    Each module whose class is exactly ``torch.nn.ConvTranspose3d`` becomes a
    :class:`ConvTranspose3d` by swapping its class in place (as
    ``torch.nn.utils.parametrize`` does), so everything attached to it is kept:
    parameters (weights, ``state_dict`` keys and existing optimizers are unchanged), hooks of
    every kind (forward, forward pre-, full backward, backward pre-, ``state_dict`` and
    ``load_state_dict`` hooks) and weights computed by hooks (``torch.nn.utils.spectral_norm``,
    ``weight_norm``, ``torch.nn.utils.prune``). Modules parametrized with
    ``torch.nn.utils.parametrize`` (``torch.nn.utils.parametrizations.weight_norm``,
    ``spectral_norm``, ``orthogonal``, ...) are converted too, keeping their
    parametrizations. Other subclasses of ``torch.nn.ConvTranspose3d`` (user classes,
    uninitialized ``LazyConvTranspose3d``, ...) are left to PyTorch with a
    :class:`UserWarning` saying why. Everything else is untouched; converting twice changes
    nothing.

    Parameters
    ----------
    model : torch.nn.Module
    report : bool, default=False
        Also return a :class:`ConvertReport` of what was converted and what was skipped.

    Returns
    -------
    model : torch.nn.Module
        ``model`` itself, modified in place (like
        :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, assign the result).
    report : ConvertReport
        Only with ``report=True``.

    Examples
    --------
    >>> import torch, tconv3d.torch
    >>> up = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose3d(4, 2, 2, 2))
    >>> model, report = tconv3d.torch.convert(torch.nn.Sequential(up), report=True)
    >>> report.converted, isinstance(model[0], tconv3d.torch.ConvTranspose3d)
    (('0',), True)
    """
    converted, skipped = [], {}
    for name, module in model.named_modules():
        if isinstance(module, ConvTranspose3d) or not isinstance(module,
                                                                torch.nn.ConvTranspose3d):
            continue
        cls = type(module)
        if cls is torch.nn.ConvTranspose3d:
            new_cls = ConvTranspose3d
        elif parametrize.is_parametrized(module):
            new_cls = _parametrized_class(cls, module)
        else:
            new_cls = None
        if new_cls is None:
            skipped[name] = reason = _skip_reason(module)
            warnings.warn(f"tconv3d.torch.convert: left {name or 'the model'!r} to PyTorch: "
                          f"{reason}.", UserWarning, stacklevel=2)
            continue
        module.__class__ = new_cls
        converted.append(name)
    if report:
        return model, ConvertReport(tuple(converted), skipped)
    return model
