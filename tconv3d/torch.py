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
:func:`convert` swaps the modules of an existing model.

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
not depend on the thread count. Double backward is not supported (``once_differentiable``).

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
from torch.autograd.function import once_differentiable
from torch.overrides import handle_torch_function, has_torch_function

from ._geometry import keras_to_torch_kernel, torch_plan, torch_to_keras_kernel
from ._ops import conv_transpose3d as _tconv_forward
from ._ops import conv_transpose3d_backward as _tconv_backward

__all__ = ["ConvTranspose3d", "TconvFallbackWarning", "conv_transpose3d", "convert"]

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
# torch side
# --------------------------------------------------------------------------------------
def _is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


def _as_array(t, channels_last):
    """Zero-copy ndarray view of a CPU tensor, NCDHW tensors seen as NDHWC when asked."""
    a = t.detach().resolve_neg().numpy()
    return np.moveaxis(a, 1, -1) if channels_last else a


def _as_tensor(a, channels_last):
    """Zero-copy tensor of an ndarray; an NDHWC array becomes a channels_last_3d tensor."""
    t = torch.from_numpy(a)
    return t.permute(0, 4, 1, 2, 3) if channels_last else t


class _ConvTranspose3dFunction(torch.autograd.Function):
    """tconv3d's forward and backward for validated 5-D CPU float tensors."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan, stride, dilation, groups):
        channels_last = _is_channels_last(x)
        num_threads = torch.get_num_threads()
        y = _forward_arrays(_as_array(x, channels_last), _as_array(weight, False),
                            None if bias is None else _as_array(bias, False), plan, stride,
                            dilation, groups, channels_last, num_threads)
        ctx.save_for_backward(x, weight)
        ctx.config = (bias is not None, plan, stride, dilation, groups)
        return _as_tensor(y, channels_last)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        use_bias, plan, stride, dilation, groups = ctx.config
        channels_last = _is_channels_last(x)
        gx, gw, gb = _backward_arrays(
            _as_array(grad_output, channels_last), _as_array(x, channels_last),
            _as_array(weight, False), use_bias, ctx.needs_input_grad[:3], plan, stride,
            dilation, groups, channels_last, torch.get_num_threads())
        return (None if gx is None else _as_tensor(gx, channels_last),
                None if gw is None else torch.from_numpy(gw),
                None if gb is None else torch.from_numpy(gb),
                None, None, None, None)


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
    return _apply(input, weight, bias, plan, stride, dilation, groups)


@torch.compiler.disable
def _apply(input, weight, bias, plan, stride, dilation, groups):
    # Dynamo cannot trace into compiled code: keep the call out of torch.compile's graphs.
    return _ConvTranspose3dFunction.apply(input, weight, bias, plan, stride, dilation, groups)


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
        """This class's module sharing ``module``'s parameters (no copy, no initialisation).

        Parameters
        ----------
        module : torch.nn.ConvTranspose3d

        Returns
        -------
        ConvTranspose3d
            Uses the same ``weight`` and ``bias`` Parameter objects, so optimizers built
            on ``module.parameters()`` keep working; has ``module``'s training flag.
            Module hooks are not carried over.
        """
        new = cls(module.in_channels, module.out_channels, module.kernel_size,
                  stride=module.stride, padding=module.padding,
                  output_padding=module.output_padding, groups=module.groups,
                  bias=module.bias is not None, dilation=module.dilation,
                  padding_mode=module.padding_mode, device="meta")
        new.weight = module.weight
        new.bias = module.bias
        new.train(module.training)
        return new


def convert(model):
    """Replace every :class:`torch.nn.ConvTranspose3d` of ``model`` by :class:`ConvTranspose3d`.

    Only modules whose type is exactly ``torch.nn.ConvTranspose3d`` are replaced (not
    subclasses such as ``LazyConvTranspose3d``, parametrized modules or user classes with
    their own ``forward``); the new modules share the old ones' parameters, so weights,
    ``state_dict`` keys and existing optimizers are unchanged. Everything else is left
    untouched. Like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, ``model`` is
    modified in place and returned (if ``model`` itself is a ``ConvTranspose3d``, the
    replacement is returned).

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
    """
    if type(model) is torch.nn.ConvTranspose3d:
        return ConvTranspose3d.from_torch(model)
    for name, child in model.named_children():
        new = convert(child)
        if new is not child:
            setattr(model, name, new)
    return model
