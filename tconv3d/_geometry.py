"""Shape arithmetic of the transposed convolution, in closed form and in one place.

Nothing here validates or raises: the functions take valid ints (checked by
:mod:`tconv3d._validation`) and return lengths, crops and layouts.

One spatial axis
----------------
With ``k_eff = (k - 1)*d + 1`` the effective kernel length, the uncropped (``"full"``)
result of an input of length ``n`` has ``L = (n - 1)*s + k_eff`` elements. Keras (and
tconv3d) returns ``full[c : c + O]``, zero past ``L``, where

- ``O = L - trim`` and ``trim`` (:func:`keras_trim`) depends on the kernel, stride,
  dilation, padding and output_padding but not on ``n``;
- ``c = max(0, trim // 2)`` (:func:`left_crop`): the odd element of an odd ``trim`` is
  cut on the right.

PyTorch returns ``full[p : L - p + op]`` (``p`` = padding, ``op`` = output_padding): its
trim is ``2*p - op`` (:func:`torch_trim`) and its crop ``p``. Both outputs grow with slope
``s`` in ``n``, so two settings agree on every input length exactly when their trims and
crops agree; every Keras <-> PyTorch translation below compares those two numbers.

Kernel layouts
--------------
Keras: ``(kd, kh, kw, filters, in_channels)``; PyTorch's ``ConvTranspose3d`` weight:
``(in_channels, out_channels // groups, kd, kh, kw)`` (one group's slice along the first axis
is a Keras kernel of that group).
"""
from dataclasses import dataclass

__all__ = ["Geometry", "TorchPlan", "axis_geometry", "deconv_output_length", "effective_kernel",
           "find_keras_padding", "full_length", "keras_output_padding", "keras_to_torch_kernel",
           "keras_trim", "left_crop", "torch_plan", "torch_to_keras_kernel", "torch_trim",
           "torch_window"]


# --------------------------------------------------------------------------------------
# Keras' geometry of one axis
# --------------------------------------------------------------------------------------
def effective_kernel(kernel_size, dilation):
    """Length ``(k - 1)*d + 1`` covered by a dilated kernel."""
    return (kernel_size - 1) * dilation + 1


def full_length(length, kernel_size, stride, dilation):
    """Uncropped output length ``(n - 1)*s + (k - 1)*d + 1``."""
    return (length - 1) * stride + effective_kernel(kernel_size, dilation)


def keras_trim(kernel_size, stride, dilation, padding, output_padding):
    """``L - O``: how much shorter Keras' output is than the uncropped length (any ``n``).

    ``output_padding=None``: ``min(k_eff - s, 0)`` for ``"valid"`` (the output is at least
    ``n*s`` long), ``k_eff - s`` for ``"same"`` (length ``n*s``); otherwise ``2*pad -
    output_padding`` with ``pad = k_eff // 2`` for ``"same"``, 0 for ``"valid"``.
    """
    k_eff = effective_kernel(kernel_size, dilation)
    if output_padding is None:
        return min(k_eff - stride, 0) if padding == "valid" else k_eff - stride
    pad = k_eff // 2 if padding == "same" else 0
    return 2 * pad - output_padding


def deconv_output_length(length, kernel_size, stride, dilation, padding, output_padding):
    """Output length of one axis, exactly as Keras' ``deconv_output_length``."""
    return (full_length(length, kernel_size, stride, dilation)
            - keras_trim(kernel_size, stride, dilation, padding, output_padding))


def left_crop(trim):
    """Elements cut on the left of an axis trimmed by ``trim``: ``max(0, trim // 2)``.

    The crop of :class:`Geometry` (``trim = full - out``); a negative ``trim`` (output
    longer than the full length) crops nothing and zero-extends on the right.
    """
    return max(0, trim // 2)


def axis_geometry(length, kernel_size, stride, dilation, padding, output_padding):
    """``(full, out, crop)`` of one axis: uncropped length, output length, left crop.
    ``padding`` is Keras' ("valid"/"same") or PyTorch's (an int p: p cut on each side,
    then ``output_padding`` added on the right)."""
    full = full_length(length, kernel_size, stride, dilation)
    if not isinstance(padding, str):
        return full, full - 2 * padding + (output_padding or 0), padding
    out = full - keras_trim(kernel_size, stride, dilation, padding, output_padding)
    return full, out, left_crop(full - out)


@dataclass(frozen=True)
class Geometry:
    """Per-axis sizes of one transposed convolution (spatial axes depth, height, width).

    ``full`` is the uncropped length ``(in - 1) * stride + (k - 1) * dilation + 1``;
    ``crop`` is how much of it is cut on the left: output ``o`` is full position
    ``o + crop``, and positions past ``full`` are zero (plus bias). With ``groups`` G,
    input channels ``[g*C/G, (g+1)*C/G)`` feed only filters ``[g*F/G, (g+1)*F/G)``, and the
    kernel holds ``F/G`` filters (PyTorch's ``groups``).
    """
    batch: int
    in_channels: int
    filters: int    # of all groups
    in_spatial: tuple
    kernel_spatial: tuple
    strides: tuple
    dilation: tuple
    out_spatial: tuple
    crop: tuple
    channels_last: bool
    groups: int = 1

    def _shape(self, spatial, channels):
        if self.channels_last:
            return (self.batch, *spatial, channels)
        return (self.batch, channels, *spatial)

    @property
    def input_shape(self):
        return self._shape(self.in_spatial, self.in_channels)

    @property
    def output_shape(self):
        return self._shape(self.out_spatial, self.filters)

    @property
    def kernel_shape(self):
        return (*self.kernel_spatial, self.filters // self.groups, self.in_channels)


# --------------------------------------------------------------------------------------
# Keras <-> PyTorch padding
# --------------------------------------------------------------------------------------
def torch_trim(padding, output_padding):
    """``L - out`` of PyTorch's ``full[p : L - p + op]``: ``2*p - op`` (its crop is ``p``)."""
    return 2 * padding - output_padding


def torch_window(trim):
    """PyTorch ``(padding, output_padding, surplus)`` for a Keras axis trimmed by ``trim``.

    PyTorch's window starts at Keras' crop; it is Keras' output exactly (``surplus`` 0),
    or one element longer (``surplus`` 1, when ``trim`` is odd and positive: Keras cuts the
    odd element on the right, PyTorch's symmetric padding cannot), so that ``[:O]`` of it
    is Keras' output. Shifting the window by ``surplus`` (``padding + surplus``,
    ``output_padding + surplus``) gives Keras' length instead, one element later.
    """
    crop = left_crop(trim)
    output_padding = 2 * crop - trim
    return (crop, output_padding, 0) if output_padding >= 0 else (crop, 0, 1)


def keras_output_padding(padding, kernel_size, stride, dilation, torch_padding,
                         torch_output_padding):
    """Keras ``output_padding`` in ``[0, stride)`` giving PyTorch's window with Keras'
    ``padding`` (``"valid"`` or ``"same"``), or None if there is none."""
    trim = torch_trim(torch_padding, torch_output_padding)
    if left_crop(trim) != torch_padding:
        return None
    pad = effective_kernel(kernel_size, dilation) // 2 if padding == "same" else 0
    output_padding = 2 * pad - trim
    return output_padding if 0 <= output_padding < stride else None


def find_keras_padding(kernel_size, stride, dilation, padding, output_padding):
    """Keras ``(padding, output_padding)`` equal to PyTorch's on every axis, or None.

    Tried in order: ``"valid"``, ``"same"``, each first with ``output_padding=None`` then with
    an explicit one (``< stride``).
    """
    axes = list(zip(kernel_size, stride, dilation, padding, output_padding))
    for mode in ("valid", "same"):
        if all(keras_trim(k, s, d, mode, None) == torch_trim(p, op) and left_crop(
                torch_trim(p, op)) == p for k, s, d, p, op in axes):
            return mode, None
        chosen = tuple(keras_output_padding(mode, k, s, d, p, op) for k, s, d, p, op in axes)
        if None not in chosen:
            return mode, chosen
    return None


@dataclass(frozen=True)
class TorchPlan:
    """One PyTorch geometry as tconv3d computes it (spatial triples): tconv3d's
    ``padding`` (PyTorch's integers) and ``output_padding``, and the output lengths."""
    padding: tuple
    output_padding: tuple
    out: tuple


def torch_plan(in_spatial, kernel_size, stride, padding, output_padding, dilation):
    """The :class:`TorchPlan` of one PyTorch call; all arguments are triples of valid ints."""
    axes = zip(in_spatial, kernel_size, stride, padding, output_padding, dilation)
    out = tuple(full_length(n, k, s, d) - torch_trim(p, op) for n, k, s, p, op, d in axes)
    return TorchPlan(tuple(padding), tuple(output_padding), out)


# --------------------------------------------------------------------------------------
# kernel layouts
# --------------------------------------------------------------------------------------
def torch_to_keras_kernel(weight):
    """PyTorch weight ``(in, out, kd, kh, kw)`` as a Keras kernel ``(kd, kh, kw, out, in)``
    (a transposed view of the ndarray)."""
    return weight.transpose(2, 3, 4, 1, 0)


def keras_to_torch_kernel(kernel):
    """Keras kernel ``(kd, kh, kw, out, in)`` as a PyTorch weight ``(in, out, kd, kh, kw)``
    (a transposed view of the ndarray)."""
    return kernel.transpose(4, 3, 0, 1, 2)
