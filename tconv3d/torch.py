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
float32, float64, bfloat16 or float16, and the arguments are valid. Half precisions compute
as PyTorch's CPU op does: float32 products and sums of the operands, each result element
rounded once to the tensors' dtype (gradients too). Everything else goes to PyTorch's own
``torch.nn.functional.conv_transpose3d``:

- other devices (CUDA, MPS, meta, ...) and other dtypes: PyTorch's op, with a
  :class:`TconvFallbackWarning` the first time each reason occurs, so a converted model can
  still be moved to a GPU;
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
give PyTorch's numbers. The transposed convolution ``F(x, W)``, its input gradient
``Gx(g, W)`` and its weight gradient ``Gw(g, x)`` are the partial gradients of
``T(x, W, g) = <F(x, W), g>``, linear in each argument, so the derivatives of each are
again these three (e.g. ``<Gx(g, W), u>`` gives ``F(u, W)`` and ``Gw(g, u)``). A plain
``backward()`` computes the first-order gradients in one pass; with ``create_graph=True``
the same numbers come from one differentiable call per gradient.
Under ``torch.func.vmap`` a vmapped dimension is folded into the batch (input only) or into
the channels with ``groups`` multiplied by the vmap size (batched weights or bias), so a
vmapped call is one tconv3d call.

Under ``torch.autocast("cpu")`` the call follows autocast's contract for PyTorch's op: its
floating operands other than float64 are cast to the autocast dtype (bfloat16 or float16),
which the result has, and tconv3d computes it as above.

Non-finite weights: PyTorch computes the input gradient over the uncropped output and so
multiplies the zeros at cropped (``padding``) positions by the taps; an infinite tap then
gives NaN there. tconv3d never touches cropped positions, so its gradients hold only what
the definition gives (the same infinities, no NaN): the exact numbers.

Memory layout
-------------
Tensors and arrays share memory both ways (``Tensor.numpy()``, ``torch.from_numpy``); the
kernels read any strides, so neither a contiguous NCDHW input nor a ``channels_last_3d``
input is copied. The output and the input and weight gradients are allocated by PyTorch
(as its own ops' results are) and written in place by the kernels. The output has the
input's memory format: ``channels_last_3d`` in,
``channels_last_3d`` out (PyTorch's CPU op returns contiguous NCDHW in both cases; the values
are the same), anything else gives contiguous NCDHW. Weight gradients are contiguous in
PyTorch's weight layout.

Padding and groups
------------------
On each axis, with ``L = (in - 1)*stride + (k - 1)*dilation + 1`` the uncropped length,
PyTorch returns ``full[p : L - p + op]`` (``p`` = padding, ``op`` = output_padding, planes
past ``L`` holding the bias): tconv3d's ``conv_transpose3d`` takes PyTorch's integer
``padding`` as such, so every geometry is one call, with no wasted work and no copy.
``groups > 1`` (depthwise included) runs in the same single call, with no copy per
group.

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
from dataclasses import dataclass
from typing import List, Optional

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

from ._geometry import torch_plan
from ._validation import MAX_AXIS_LENGTH, normalize_activation
from ._torch_autograd import Call, activate, has_ml_dtypes, transposed_convolution

__all__ = ["ConvTranspose3d", "ConvertReport", "TconvFallbackWarning", "conv_transpose3d",
           "convert"]

_DTYPES = (torch.float32, torch.float64)
# Half precisions: float32 sums of the (exactly) widened operands, rounded once, as
# PyTorch's CPU op computes them.
_HALF_DTYPES = (torch.bfloat16, torch.float16)
_PLAIN_DISPATCH = torch.Tensor.__torch_dispatch__


class TconvFallbackWarning(UserWarning):
    """PyTorch's own ``conv_transpose3d`` ran instead of tconv3d's kernels.

    Issued once per reason (another device, an integer or complex dtype,
    ``torch.jit.trace``); the result is PyTorch's.

    Examples
    --------
    >>> import warnings, torch, tconv3d.torch
    >>> up = tconv3d.torch.ConvTranspose3d(2, 1, 2, stride=2)
    >>> with warnings.catch_warnings():   # TorchScript cannot call tconv3d's kernels
    ...     warnings.simplefilter("ignore")
    ...     traced = torch.jit.trace(up, torch.ones(1, 2, 3, 3, 3))
    >>> traced(torch.ones(1, 2, 3, 3, 3)).shape
    torch.Size([1, 1, 6, 6, 6])
    """


_warned = set()


def _warn_once(reason):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"tconv3d.torch: {reason}; using PyTorch's own conv_transpose3d "
                      f"(warned once).", TconvFallbackWarning, stacklevel=4)


def _triple(value):
    return (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)


def _tconv_plan(input, weight, bias, stride, padding, output_padding, groups, dilation):
    """The :class:`~tconv3d._geometry.TorchPlan` when tconv3d can run this call; else
    (None, fallback reason)."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if any(type(t).__torch_dispatch__ is not _PLAIN_DISPATCH for t in tensors):
        return None, None  # FakeTensor, FunctionalTensor, ...: no data to hand to numpy
    if not all(t.is_cpu for t in tensors):
        devices = sorted({str(t.device) for t in tensors})
        return None, f"tensors on {', '.join(devices)} (tconv3d runs on CPU only)"
    if any(t.layout != torch.strided for t in tensors):
        return None, None
    if len({t.dtype for t in tensors}) != 1:
        return None, None  # PyTorch raises its own error
    if input.dtype not in _DTYPES + _HALF_DTYPES:
        return None, (f"dtype {input.dtype} (tconv3d computes float32, float64, bfloat16 "
                      f"and float16)")
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
    if max(stride + dilation) > MAX_AXIS_LENGTH:
        return None, "a stride or dilation past tconv3d's 64-bit index range"
    plan = torch_plan(tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding,
                      output_padding, dilation)
    if min(plan.out) < 1:
        return None, None
    return (plan, stride, dilation), None


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, *, activation=None):
    """:func:`torch.nn.functional.conv_transpose3d`, on tconv3d's kernels for CPU tensors.

    Parameters
    ----------
    input : Tensor of shape (batch, in_channels, depth, height, width)
        Or unbatched ``(in_channels, depth, height, width)``. Contiguous or
        ``channels_last_3d``; float32, float64, bfloat16 or float16 (see the module
        docstring for the rest).
    weight : Tensor of shape (in_channels, out_channels // groups, kd, kh, kw)
        The kernel, in PyTorch's layout.
    bias : Tensor of shape (out_channels,), optional
        Added to every output position of each channel.
    stride, padding, output_padding : int or tuple of 3 ints
        PyTorch's meaning (defaults 1, 0, 0): ``output_padding`` must be smaller than
        ``stride`` or ``dilation`` on each axis.
    groups : int, default=1
        Channels split into ``groups`` independent convolutions.
    dilation : int or tuple of 3 ints, default=1
        The spacing of the kernel's taps.
    activation : str or tconv3d.activations.Activation, optional
        Applied to the result (tconv3d's addition): ``"relu"``, ``"leaky_relu"``,
        ``"sigmoid"``, ``"tanh"``, ``"gelu"`` or ``"silu"`` (Keras' parameters); fused into
        the compiled forward (float32, float64) where no autograd mode may differentiate
        the call (no second pass, no second array), else PyTorch's function of it.

    Returns
    -------
    Tensor of shape (batch, out_channels, out_depth, out_height, out_width)
        Each length is ``(in - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1``;
        ``channels_last_3d`` when the input is, contiguous otherwise; input's dtype.

    Raises
    ------
    RuntimeError
        PyTorch's, for the arguments its own op refuses (those calls are handed to it).
    ValueError, TypeError
        If ``activation`` is not one of those (checked first).
    MemoryError
        If tconv3d's output or a working copy would not fit in memory (checked first).

    Warns
    -----
    TconvFallbackWarning
        Once per reason, when valid arguments run on PyTorch's op instead.

    Examples
    --------
    >>> import torch, tconv3d.torch
    >>> x = torch.arange(3.0).reshape(1, 1, 3, 1, 1).requires_grad_()
    >>> y = tconv3d.torch.conv_transpose3d(x, torch.ones(1, 1, 2, 1, 1))
    >>> y.flatten().tolist(), y.shape
    ([0.0, 1.0, 3.0, 2.0], torch.Size([1, 1, 4, 1, 1]))
    >>> y.sum().backward()
    >>> x.grad.flatten().tolist()
    [2.0, 2.0, 2.0]
    """
    normalize_activation(activation)   # refused before any work
    tensors = (input, weight) if bias is None else (input, weight, bias)
    args = (stride, padding, output_padding, groups, dilation)
    if has_torch_function(tensors):  # __torch_function__ subclasses, as torch.nn.functional
        return handle_torch_function(conv_transpose3d, tensors, input, weight, bias, *args,
                                     activation=activation)
    if torch.jit.is_tracing() or torch.compiler.is_exporting():  # they record PyTorch's op
        if torch.jit.is_tracing():   # warned once; torch.export is silent
            _warn_once("torch.jit.trace records PyTorch's op (TorchScript cannot call tconv3d)")
        return activate(F.conv_transpose3d(input, weight, bias, *args), activation)
    if input.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # autocast's contract for this op: its floating operands but float64 are cast to
        # the autocast dtype, which the result then has
        dtype = torch.get_autocast_dtype("cpu")
        cast = [t if t is None or not t.is_floating_point() or t.dtype == torch.float64
                else t.to(dtype) for t in (input, weight, bias)]
        with torch.autocast("cpu", enabled=False):
            return conv_transpose3d(*cast, *args, activation=activation)
    if input.dim() == 4:  # unbatched, as PyTorch accepts
        return conv_transpose3d(input.unsqueeze(0), weight, bias, *args,
                                activation=activation).squeeze(0)
    config, reason = _tconv_plan(input, weight, bias, *args)
    if config is None:
        if reason is not None:
            _warn_once(reason)
        return activate(F.conv_transpose3d(input, weight, bias, *args), activation)
    plan, stride, dilation = config
    call = Call(plan, stride, dilation, groups, tuple(input.shape[2:]), tuple(weight.shape[2:]))
    if input.dtype in _HALF_DTYPES:   # activated after rounding, as by PyTorch's op
        if input.dtype == torch.bfloat16 and has_ml_dtypes():   # tconv3d's bfloat16 path
            y = _apply(input, weight, bias, call)
        else:   # differentiable casts: gradients are rounded likewise
            y = _apply(input.float(), weight.float(), None if bias is None else bias.float(),
                       call).to(input.dtype)
        return activate(y, activation)
    return _apply(input, weight, bias, call, activation)


@torch.compiler.disable
def _apply(input, weight, bias, call, activation=None):
    # Dynamo cannot trace into compiled code: keep the call out of torch.compile's graphs.
    return transposed_convolution(input, weight, bias, call, activation)


class ConvTranspose3d(torch.nn.ConvTranspose3d):
    """:class:`torch.nn.ConvTranspose3d` with tconv3d's CPU forward and backward.

    Same signature, parameters, initialisation and ``state_dict`` as
    :class:`torch.nn.ConvTranspose3d` (this class subclasses it and only replaces
    ``forward``). See the module docstring for the dispatch rules.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    kernel_size : int or tuple of 3 ints
        Taps per spatial axis.
    stride, padding, output_padding : int or tuple of 3 ints
        PyTorch's meaning (defaults 1, 0, 0), as :func:`conv_transpose3d`.
    groups : int, default=1
        Channels split into ``groups`` independent convolutions.
    bias : bool, default=True
        Whether the module has a learnable ``bias``.
    dilation : int or tuple of 3 ints, default=1
        The spacing of the kernel's taps.
    padding_mode : {"zeros"}, default="zeros"
        PyTorch's ``ConvTranspose3d`` only supports ``"zeros"``; so does this class.
    device, dtype : optional
        Factory arguments, as in PyTorch.

    Raises
    ------
    ValueError
        PyTorch's: ``padding_mode`` not ``"zeros"``, ``groups`` not dividing the channels.

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
        """The transposed convolution of ``input``; tconv3d's kernels for CPU tensors.

        Parameters
        ----------
        input : Tensor of shape (batch, in_channels, depth, height, width)
            Or unbatched ``(in_channels, depth, height, width)``.
        output_size : list of int, optional
            The output's spatial size, as in PyTorch: chooses this call's output_padding.

        Returns
        -------
        Tensor of shape (batch, out_channels, out_depth, out_height, out_width)
            As :func:`conv_transpose3d` returns.

        Raises
        ------
        ValueError
            PyTorch's, if ``output_size`` cannot be reached.
        RuntimeError
            PyTorch's, for input its op refuses (e.g. the wrong number of channels).

        Examples
        --------
        >>> import torch, tconv3d.torch
        >>> up = tconv3d.torch.ConvTranspose3d(2, 1, kernel_size=2, stride=2)
        >>> up(torch.ones(1, 2, 3, 3, 3), output_size=[7, 7, 7]).shape
        torch.Size([1, 1, 7, 7, 7])
        """
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

        Examples
        --------
        >>> import torch, tconv3d.torch
        >>> module = torch.nn.ConvTranspose3d(4, 2, kernel_size=2, stride=2)
        >>> tconv3d.torch.ConvTranspose3d.from_torch(module).weight is module.weight
        True
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

    Made by ``convert(model, report=True)``; the parameters are its attributes.

    Parameters
    ----------
    converted : tuple of str
        The modules that now run on tconv3d (their class was swapped in place).
    skipped : dict of str to str
        The transposed convolutions left to PyTorch, with the reason; :func:`convert`
        also warned about each of them.

    Examples
    --------
    >>> import torch, tconv3d.torch
    >>> model = torch.nn.Sequential(torch.nn.ConvTranspose3d(4, 2, 2, 2))
    >>> print(tconv3d.torch.convert(model, report=True)[1])
    converted 1 module(s) to tconv3d.torch: '0'
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
        The model, or a single module.
    report : bool, default=False
        Also return a :class:`ConvertReport` of what was converted and what was skipped.

    Returns
    -------
    model : torch.nn.Module
        ``model`` itself, modified in place (like
        :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, assign the result).
    report : ConvertReport
        Only with ``report=True``.

    Warns
    -----
    UserWarning
        For each subclass of ``torch.nn.ConvTranspose3d`` left to PyTorch, with the reason.

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
