"""Keras and PyTorch interoperability of :class:`tconv3d.layers.Conv3DTranspose`.

- Keras: the ``image_data_format`` of the Keras config file, and layer configs
  (:meth:`LayerInterop.get_config` / :meth:`LayerInterop.from_config`).
- PyTorch: ``torch.nn.ConvTranspose3d`` modules to and from layers, and kernels between the
  two layouts (:func:`kernel_from_torch`, :func:`kernel_to_torch`, no torch needed).

The padding translation and the kernel transposes are :mod:`tconv3d._geometry`'s; the
checks and their messages are :mod:`tconv3d._validation`'s.
"""
import json
import os
import warnings

import numpy as np

from . import activations as _activations
from . import constraints as _constraints
from . import initializers as _initializers
from . import regularizers as _regularizers
from ._geometry import keras_to_torch_kernel, torch_to_keras_kernel
from ._validation import (as_array, check_5d, keras_padding_from_torch, normalize_float_dtype,
                          torch_padding_from_keras)

__all__ = ["LayerInterop", "image_data_format", "kernel_from_torch", "kernel_to_torch"]


# --- Keras' config file ---------------------------------------------------------------------
def _keras_config_path():
    """Where Keras reads ``keras.json``: ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras``
    when the home directory is not writable), as ``keras.src.backend.config`` does."""
    if "KERAS_HOME" in os.environ:
        base = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        if not os.access(home, os.W_OK):
            home = "/tmp"
        base = os.path.join(home, ".keras")
    return os.path.expanduser(os.path.join(base, "keras.json"))


def image_data_format():
    """Return the ``image_data_format`` of the Keras config file (``"channels_last"`` without).

    Read at each call (no Keras import needed), from ``$KERAS_HOME/keras.json`` or
    ``~/.keras/keras.json``. A file that is not valid JSON is ignored, as Keras does.

    Returns
    -------
    {"channels_last", "channels_first"}
        The layers' default ``data_format``.

    Raises
    ------
    ValueError
        If the file names another value.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from unittest import mock
    >>> from tconv3d.layers import image_data_format
    >>> home = tempfile.TemporaryDirectory()
    >>> with open(os.path.join(home.name, "keras.json"), "w") as f:
    ...     json.dump({"image_data_format": "channels_first"}, f)
    >>> with mock.patch.dict(os.environ, KERAS_HOME=home.name):
    ...     image_data_format()
    'channels_first'
    >>> home.cleanup()
    """
    path = _keras_config_path()
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return "channels_last"
    value = config.get("image_data_format", "channels_last") if isinstance(config, dict) \
        else "channels_last"
    if value not in ("channels_last", "channels_first"):
        raise ValueError(f"Invalid `image_data_format` {value!r} in the Keras config file "
                         f"{path}: expected 'channels_last' or 'channels_first'.")
    return value


# --- kernels --------------------------------------------------------------------------------
def kernel_from_torch(weight):
    """Convert a ``ConvTranspose3d`` weight to Keras' kernel layout (no torch needed).

    Parameters
    ----------
    weight : array-like (or torch tensor) of shape (in_channels, filters, kd, kh, kw)
        A ``torch.nn.ConvTranspose3d``'s ``weight``.

    Returns
    -------
    ndarray of shape (kd, kh, kw, filters, in_channels)
        A copy, of the same dtype.

    Raises
    ------
    ValueError
        If ``weight`` is not 5-D.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d import kernel_from_torch
    >>> weight = np.zeros((8, 4, 3, 3, 3), np.float32)   # ConvTranspose3d(8, 4, 3).weight
    >>> kernel_from_torch(weight).shape
    (3, 3, 3, 4, 8)
    """
    w = check_5d(_as_numpy(weight, "weight"), "weight", "(in_channels, filters, kd, kh, kw)")
    return np.ascontiguousarray(torch_to_keras_kernel(w))


def kernel_to_torch(kernel):
    """Convert a Keras kernel to ``ConvTranspose3d``'s weight layout (no torch needed).

    Parameters
    ----------
    kernel : array-like of shape (kd, kh, kw, filters, in_channels)
        A kernel in Keras' layout (a layer's ``kernel``).

    Returns
    -------
    ndarray of shape (in_channels, filters, kd, kh, kw)
        A copy, of the same dtype.

    Raises
    ------
    ValueError
        If ``kernel`` is not 5-D.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d import kernel_from_torch, kernel_to_torch
    >>> kernel = np.arange(3 * 3 * 3 * 4 * 8, dtype=np.float32).reshape(3, 3, 3, 4, 8)
    >>> kernel_to_torch(kernel).shape
    (8, 4, 3, 3, 3)
    >>> np.array_equal(kernel_from_torch(kernel_to_torch(kernel)), kernel)
    True
    """
    k = check_5d(_as_numpy(kernel, "kernel"), "kernel", "(kd, kh, kw, filters, in_channels)")
    return np.ascontiguousarray(keras_to_torch_kernel(k))


def _as_numpy(value, name):
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return as_array(value, name)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch is needed for from_torch()/to_torch(); kernel_from_torch() "
                          "and kernel_to_torch() convert numpy kernels without it.") from None
    return torch


def _serialize_or_none(module, obj):
    return None if obj is None else module.serialize(obj)


# --- the layer's side -----------------------------------------------------------------------
class LayerInterop:
    """Configs and PyTorch modules of a ``Conv3DTranspose`` (one of its bases).

    Uses the layer's constructor arguments (as attributes), its weights (``built``,
    ``in_channels``, ``set_weights``, ``_kernel``, ``_bias``) and ``_activates()``, whether
    its activation is not the identity.
    """

    def get_config(self):
        """Return the constructor arguments (Keras' names); :meth:`from_config` inverts it.

        Built-in activations, initializers, regularizers and constraints are serialized as
        names or ``{"class_name", "config"}`` dicts; custom objects are stored as is.

        Returns
        -------
        dict
            ``{argument: value}``, ``batch_input_shape`` included when known; no weights.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> config = Conv3DTranspose(4, 3, strides=2, activation="relu").get_config()
        >>> config["kernel_size"], config["strides"], config["activation"]
        ((3, 3, 3), (2, 2, 2), 'relu')
        """
        config = {
            "name": self.name, "trainable": self.trainable, "dtype": self.dtype,
            "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
            "padding": self.padding, "output_padding": self.output_padding,
            "data_format": self.data_format, "dilation_rate": self.dilation_rate,
            "activation": _activations.serialize(self.activation), "use_bias": self.use_bias,
            "kernel_initializer": _initializers.serialize(self.kernel_initializer),
            "bias_initializer": _initializers.serialize(self.bias_initializer),
            "kernel_regularizer": _serialize_or_none(_regularizers, self.kernel_regularizer),
            "bias_regularizer": _serialize_or_none(_regularizers, self.bias_regularizer),
            "activity_regularizer": _serialize_or_none(_regularizers,
                                                       self.activity_regularizer),
            "kernel_constraint": _serialize_or_none(_constraints, self.kernel_constraint),
            "bias_constraint": _serialize_or_none(_constraints, self.bias_constraint),
            "seed": self.seed, "num_threads": self.num_threads,
        }
        if self.batch_input_shape is not None:
            config["batch_input_shape"] = self.batch_input_shape
        return config

    @classmethod
    def from_config(cls, config):
        """Make a layer from :meth:`get_config`'s dict, or a Keras ``Conv3DTranspose``'s.

        Keras-only keys that do not change the numbers (``"groups"`` of 1, ``"autocast"``,
        ``"quantization_config"`` of None, ...) are ignored; weights are not part of a
        config (use :meth:`set_weights`).

        Parameters
        ----------
        config : dict
            The constructor's arguments by name.

        Returns
        -------
        Conv3DTranspose
            A new layer, unbuilt unless the config has a ``batch_input_shape`` with its
            channels.

        Raises
        ------
        TypeError
            If ``config`` has a key the constructor does not take.
        ValueError
            If the constructor refuses a value.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, padding="same", name="up")
        >>> copy = Conv3DTranspose.from_config(layer.get_config())
        >>> copy.name, copy.padding, copy.built
        ('up', 'same', False)
        """
        config = dict(config)
        for key, neutral in (("groups", 1), ("autocast", True), ("quantization_config", None),
                             ("lora_rank", None), ("lora_alpha", None)):
            if key in config and config[key] in (neutral, None):
                config.pop(key)
        return cls(**config)

    @classmethod
    def from_torch(cls, module, data_format="channels_first", **kwargs):
        """Make the layer equivalent to a ``torch.nn.ConvTranspose3d``.

        Parameters
        ----------
        module : torch.nn.ConvTranspose3d
            ``groups=1``, ``padding_mode="zeros"``, float32 or float64 weights. Its padding
            ``p`` and ``output_padding`` must have a Keras equivalent on every axis:
            ``p = 0`` ('valid') or the crop of ``'same'``; otherwise ``ValueError``.
        data_format : {"channels_first", "channels_last"}, default="channels_first"
            Layout of the layer's inputs (the module's is channels_first).
        **kwargs
            Other constructor arguments (``activation``, ``name``, ...).

        Returns
        -------
        Conv3DTranspose
            Built, with the module's weights (kernel converted by :func:`kernel_from_torch`).

        Raises
        ------
        TypeError
            If ``module`` is not a ``ConvTranspose3d``, or ``kwargs`` has an argument the
            module sets (``filters``, ``kernel_size``, ``strides``, ...).
        ValueError
            If the module has no Keras equivalent (see ``module``).
        ImportError
            If PyTorch is not installed.

        Examples
        --------
        >>> import torch
        >>> from tconv3d.layers import Conv3DTranspose
        >>> module = torch.nn.ConvTranspose3d(2, 4, kernel_size=4, stride=2, padding=1)
        >>> layer = Conv3DTranspose.from_torch(module)
        >>> layer.padding, layer.kernel.shape, layer.data_format
        ('same', (4, 4, 4, 4, 2), 'channels_first')
        """
        torch = _import_torch()
        if not isinstance(module, torch.nn.ConvTranspose3d):
            raise TypeError("`module` must be a torch.nn.ConvTranspose3d, got "
                            f"{type(module).__name__}.")
        if module.groups != 1:
            raise ValueError(f"Only groups=1 has a Keras equivalent, got groups={module.groups}.")
        if module.padding_mode != "zeros":
            raise ValueError("Only padding_mode='zeros' has a Keras equivalent, got "
                             f"{module.padding_mode!r}.")
        padding, output_padding = keras_padding_from_torch(
            module.kernel_size, module.stride, module.dilation, module.padding,
            module.output_padding)
        weight = module.weight.detach().cpu().numpy()
        for key in ("filters", "kernel_size", "strides", "padding", "output_padding",
                    "dilation_rate", "use_bias", "dtype", "weights"):
            if key in kwargs:
                raise TypeError(f"`{key}` is taken from the module; do not pass it.")
        layer = cls(module.out_channels, tuple(module.kernel_size), strides=tuple(module.stride),
                    padding=padding, output_padding=output_padding, data_format=data_format,
                    dilation_rate=tuple(module.dilation), use_bias=module.bias is not None,
                    dtype=normalize_float_dtype(weight.dtype.name).name, **kwargs)
        weights = [kernel_from_torch(weight)]
        if module.bias is not None:
            weights.append(module.bias.detach().cpu().numpy())
        layer.set_weights(weights)
        return layer

    def to_torch(self):
        """Make the equivalent ``torch.nn.ConvTranspose3d`` (channels_first inputs).

        The activation is not part of the module (a warning says so when there is one).

        Returns
        -------
        torch.nn.ConvTranspose3d
            With copies of the layer's weights, in its dtype.

        Raises
        ------
        ValueError
            If the layer is not built, or its padding crops asymmetrically ('same' with
            ``(effective_kernel - stride)`` odd, or an odd ``output_padding``), which
            ``ConvTranspose3d``'s symmetric ``padding`` cannot express.
        ImportError
            If PyTorch is not installed.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 4, strides=2, padding="same",
        ...                         input_shape=(None, None, None, 2))
        >>> layer.to_torch()
        ConvTranspose3d(2, 4, kernel_size=(4, 4, 4), stride=(2, 2, 2), padding=(1, 1, 1))
        """
        torch = _import_torch()
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built: call it or give `input_shape` "
                             "before `to_torch()`.")
        padding, output_padding = torch_padding_from_keras(
            self.kernel_size, self.strides, self.dilation_rate, self.padding,
            self.output_padding)
        if self._activates():
            warnings.warn(f"to_torch(): the activation {self.activation.name!r} of layer "
                          f"{self.name!r} is not included in the ConvTranspose3d module.",
                          stacklevel=2)
        module = torch.nn.ConvTranspose3d(
            self.in_channels, self.filters, self.kernel_size, stride=self.strides,
            padding=padding, output_padding=output_padding, bias=self.use_bias,
            dilation=self.dilation_rate, dtype=getattr(torch, self.dtype))
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(kernel_to_torch(self._kernel).copy()))
            if self.use_bias:
                module.bias.copy_(torch.from_numpy(self._bias.copy()))
        return module
