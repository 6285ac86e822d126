"""A Keras 3 ``Conv3DTranspose`` whose forward and backward run on tconv3d's kernels.

Change one import and keep the rest of a ``keras.Model``::

    import os
    os.environ["KERAS_BACKEND"] = "torch"     # before keras is imported
    import keras
    from tconv3d.keras import Conv3DTranspose   # instead of keras.layers.Conv3DTranspose

    model = keras.Sequential([keras.Input((8, 8, 8, 16)),
                              Conv3DTranspose(8, 3, strides=2, padding="same")])
    model.compile("adam", "mse")

:class:`Conv3DTranspose` subclasses ``keras.layers.Conv3DTranspose``: the same constructor,
config, weights, build and serialization (it is registered as
``"tconv3d>Conv3DTranspose"``, so ``keras.models.load_model`` finds it once this module is
imported). Only ``call`` differs: on Keras' torch backend, for CPU tensors of float32,
float64, bfloat16 or float16 (so a ``"mixed_bfloat16"`` policy too), the transposed
convolution runs through :func:`tconv3d.torch.conv_transpose3d` (the
autograd Function of the PyTorch drop-in, zero-copy, derivatives of any order), with Keras'
padding translated in closed form (:mod:`tconv3d._geometry`); at inference (``predict``,
``no_grad``) the activations relu, leaky_relu, tanh, gelu and silu are applied by the
compiled forward (no second pass over the output, no second array). Anything else (another
backend, a GPU tensor) runs Keras' own op, with a one-time :class:`TconvKerasFallbackWarning` saying why. The numbers are Keras'
either way.
"""
import warnings

try:
    import keras
except ImportError as exc:  # not installed, or its backend (KERAS_BACKEND) is missing
    raise ImportError(f"tconv3d.keras needs Keras 3 on its torch backend (pip install keras "
                      f"torch; KERAS_BACKEND=torch before keras is imported): {exc}") from exc

from ._geometry import keras_trim, torch_window

__all__ = ["Conv3DTranspose", "TconvKerasFallbackWarning"]

_warned = set()
# Keras' activations that tconv3d.torch.conv_transpose3d applies with the same formula and
# parameters: in the compiled forward at inference (no second array), by the PyTorch
# function Keras' torch backend calls otherwise. Not sigmoid: Keras keeps its logits on
# the output for its cross-entropy losses.
_FUSED = tuple((getattr(keras.activations, name), name)
               for name in ("linear", "relu", "leaky_relu", "tanh", "gelu", "silu"))


class TconvKerasFallbackWarning(UserWarning):
    """:class:`Conv3DTranspose` ran Keras' own op instead of tconv3d's kernels.

    Issued once per reason (another backend, a GPU tensor, a dtype other than float32,
    float64, bfloat16 and float16); the result is Keras'.

    Examples
    --------
    A mixed-precision layer runs on tconv3d (a fallback would raise here):

    >>> import warnings
    >>> import numpy as np
    >>> from tconv3d.keras import Conv3DTranspose, TconvKerasFallbackWarning
    >>> layer = Conv3DTranspose(2, 3, dtype="mixed_bfloat16")
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", TconvKerasFallbackWarning)
    ...     str(layer(np.zeros((1, 4, 4, 4, 1), np.float32)).dtype)
    'torch.bfloat16'
    """


def _fall_back(reason):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"tconv3d.keras.Conv3DTranspose runs Keras' own op: {reason}",
                      TconvKerasFallbackWarning, stacklevel=3)


@keras.saving.register_keras_serializable(package="tconv3d")
class Conv3DTranspose(keras.layers.Conv3DTranspose):
    """``keras.layers.Conv3DTranspose`` computed by tconv3d on the torch backend.

    The parameters are Keras', with the same meaning and defaults (see
    :class:`tconv3d.layers.Conv3DTranspose` for the numbers).

    Parameters
    ----------
    filters : int
        Number of output channels.
    kernel_size : int or tuple of 3 ints
        Kernel depth, height and width.
    strides : int or tuple of 3 ints, default=(1, 1, 1)
        The step between the output positions of successive input voxels.
    padding : {"valid", "same"}, default="valid"
        Keras' padding.
    data_format : {"channels_last", "channels_first"} or None, default=None
        The input layout; ``None`` is Keras' ``image_data_format``.
    output_padding : int, tuple of 3 ints or None, default=None
        Extra length on the right of each output axis.
    dilation_rate : int or tuple of 3 ints, default=(1, 1, 1)
        The kernel's dilation.
    activation : str, callable or None, default=None
        A Keras activation, applied after the bias.
    use_bias : bool, default=True
        Whether the layer adds a bias.
    kernel_initializer, bias_initializer : str or keras.initializers.Initializer
        Defaults ``"glorot_uniform"`` and ``"zeros"``.
    kernel_regularizer, bias_regularizer, activity_regularizer : str, \
keras.regularizers.Regularizer or None, default=None
        Keras' penalties.
    kernel_constraint, bias_constraint : str, keras.constraints.Constraint or None, \
default=None
        Keras' constraints.
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.keras import Conv3DTranspose
    >>> layer = Conv3DTranspose(4, 3, strides=2, padding="same")
    >>> tuple(layer(np.zeros((1, 5, 5, 5, 2), np.float32)).shape)
    (1, 10, 10, 10, 4)
    """

    def call(self, inputs):
        """Compute the layer's output (Keras calls it from ``layer(inputs)``).

        Parameters
        ----------
        inputs : torch.Tensor of 5 dimensions
            ``(batch, d, h, w, channels)`` or ``(batch, channels, d, h, w)``, per
            ``data_format``.

        Returns
        -------
        torch.Tensor
            Keras' output, computed by :func:`tconv3d.torch.conv_transpose3d` for float32
            and float64 CPU tensors on the torch backend, by Keras' own op otherwise.

        Warns
        -----
        TconvKerasFallbackWarning
            The first time each reason sends a call to Keras' op.

        Examples
        --------
        >>> import torch
        >>> from tconv3d.keras import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 2, strides=2, data_format="channels_first")
        >>> layer(torch.ones(1, 3, 2, 2, 2)).shape
        torch.Size([1, 4, 4, 4, 4])
        """
        if getattr(getattr(inputs, "device", None), "type", None) == "meta":
            return super().call(inputs)   # Keras infers shapes on data-less tensors
        reason = self._unsupported(inputs)
        if reason is not None:
            _fall_back(reason)
            return super().call(inputs)
        from .torch import conv_transpose3d
        channels_last = self.data_format == "channels_last"
        x = inputs.permute(0, 4, 1, 2, 3) if channels_last else inputs   # a view
        # Keras' crop is PyTorch's symmetric padding, plus one element cut on the right
        # where Keras trims an odd number of them (torch_window).
        windows = [torch_window(keras_trim(k, s, d, self.padding, op))
                   for k, s, d, op in zip(self.kernel_size, self.strides, self.dilation_rate,
                                          self.output_padding or (None,) * 3)]
        weight = self.kernel.value.permute(4, 3, 0, 1, 2)   # (in, out, kd, kh, kw) view
        bias = self.bias.value if self.use_bias else None
        fused = next((name for function, name in _FUSED if function is self.activation), None)
        y = conv_transpose3d(x, weight, bias, stride=tuple(self.strides),
                             padding=tuple(w[0] for w in windows),
                             output_padding=tuple(w[1] for w in windows),
                             dilation=tuple(self.dilation_rate), activation=fused)
        if any(w[2] for w in windows):
            y = y[(slice(None), slice(None)) + tuple(
                slice(0, n - w[2]) for n, w in zip(y.shape[2:], windows))]
        if channels_last:
            y = y.permute(0, 2, 3, 4, 1)
        if fused is None and self.activation is not None:
            y = self.activation(y)
        return y

    def _unsupported(self, inputs):
        """Why tconv3d cannot compute this call (None if it can)."""
        if keras.backend.backend() != "torch":
            return f"the {keras.backend.backend()} backend (tconv3d runs on torch's)"
        import torch
        if not isinstance(inputs, torch.Tensor):
            return f"inputs of type {type(inputs).__name__}"
        if inputs.device.type != "cpu":
            return f"tensors on {inputs.device} (tconv3d runs on CPU only)"
        if inputs.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16) \
                or self.kernel.value.dtype != inputs.dtype:
            return (f"dtype {inputs.dtype} with a {self.kernel.value.dtype} kernel (tconv3d "
                    "computes float32, float64, bfloat16 and float16)")
        return None
