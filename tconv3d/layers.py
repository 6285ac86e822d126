"""The Keras-like layer :class:`Conv3DTranspose` and its functional form.

The layer holds its weights as numpy arrays in Keras' layout, runs the compiled forward and
backward passes of :mod:`tconv3d._ops`, and is trained with :mod:`tconv3d.optimizers`::

    layer = Conv3DTranspose(8, 3, strides=2, padding="same", activation="relu")
    y = layer(x)                       # builds on the first call
    grad_x = layer.backward(grad_y)    # fills layer.kernel_grad and layer.bias_grad
    Adam().apply_gradients(layer)

Weights are interchangeable with Keras (``layer.set_weights(keras_layer.get_weights())``)
and with PyTorch (:meth:`Conv3DTranspose.from_torch`, :meth:`Conv3DTranspose.to_torch`,
:func:`kernel_from_torch`, :func:`kernel_to_torch`).
"""
import json
import os
import threading
import warnings

import numpy as np

from . import activations as _activations
from . import constraints as _constraints
from . import initializers as _initializers
from . import regularizers as _regularizers
from ._geometry import deconv_output_length, keras_to_torch_kernel, torch_to_keras_kernel
from ._ops import conv_transpose3d, conv_transpose3d_backward
from ._validation import (as_array, check_output_padding, is_int, keras_padding_from_torch,
                          normalize_batch_input_shape, normalize_bool, normalize_data_format,
                          normalize_float_dtype, normalize_int, normalize_num_threads,
                          normalize_optional_string, normalize_padding, normalize_triple,
                          torch_padding_from_keras, working_dtype)

__all__ = ["Conv3DTranspose", "layer_conv_3d_transpose", "kernel_from_torch",
           "kernel_to_torch", "image_data_format"]

_name_lock = threading.Lock()
_name_uids = {}


def _unique_name(prefix):
    """``prefix``, then ``prefix_1``, ``prefix_2``, ... (Keras' ``auto_name``)."""
    with _name_lock:
        uid = _name_uids.get(prefix, 0)
        _name_uids[prefix] = uid + 1
    return prefix if uid == 0 else f"{prefix}_{uid}"


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
    """The ``image_data_format`` of the Keras config file, ``"channels_last"`` without one.

    Read at each call (no Keras import needed), from ``$KERAS_HOME/keras.json`` or
    ``~/.keras/keras.json``. A file that is not valid JSON is ignored, as Keras does.

    Returns
    -------
    {"channels_last", "channels_first"}
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


def _derived_seed(seed, index):
    """A reproducible int seed for weight ``index`` (0 kernel, 1 bias) of a layer ``seed``."""
    return int(np.random.SeedSequence(seed).spawn(2)[index].generate_state(1)[0])


def _nonlinear(activation):
    return activation.fn is not _activations.linear.fn


class Conv3DTranspose:
    """3D transposed convolution layer with Keras' arguments, defaults and numbers.

    Parameters
    ----------
    filters : int
        Number of output channels.
    kernel_size : int or tuple of 3 ints
        Kernel depth, height and width.
    strides : int or tuple of 3 ints, default=(1, 1, 1)
    padding : {"valid", "same"}, default="valid"
        Case-insensitive, as Keras.
    output_padding : int, tuple of 3 ints or None, default=None
        Extra length on the right of each output axis; each value smaller than its stride.
        ``None`` infers the output length as Keras does.
    data_format : {"channels_last", "channels_first"} or None, default=None
        Input layout ``(batch, depth, height, width, channels)`` or
        ``(batch, channels, depth, height, width)``. ``None`` reads ``image_data_format``
        from the Keras config file (see :func:`image_data_format`), else ``"channels_last"``.
    dilation_rate : int or tuple of 3 ints, default=(1, 1, 1)
        Strides > 1 together with dilation > 1 are accepted (Keras refuses them).
    activation : str, callable or None, default=None
        Element-wise activation by Keras name or a callable; see
        :func:`tconv3d.activations.get`. ``backward`` needs its derivative.
    use_bias : bool, default=True
    kernel_initializer, bias_initializer : str, dict, Initializer or callable
        Defaults ``"glorot_uniform"`` and ``"zeros"`` (also used for ``None``); see
        :func:`tconv3d.initializers.get`.
    kernel_regularizer, bias_regularizer, activity_regularizer : str, dict, Regularizer, \
callable or None, default=None
        Penalties reported in :attr:`losses` and differentiated in :meth:`backward`; the
        activity penalty is divided by the batch size, as Keras 3 does.
    kernel_constraint, bias_constraint : str, dict, Constraint, callable or None
        Applied by the optimizers after every update.
    input_shape : tuple of 4 ints/None, optional
        Input shape without the batch axis; with a known channel count the layer builds at
        construction, and every input is checked against the known sizes.
    batch_input_shape : tuple of 5 ints/None, optional
        Same with the batch axis.
    batch_size : int, optional
        Fixed batch size (with ``input_shape``, or alone).
    dtype : {"float32", "float64"} or None, default=None
        Weights and computation dtype; ``None`` is float32. Inputs are cast to it.
    name : str or None, default=None
        ``None`` gives a unique ``conv3d_transpose``, ``conv3d_transpose_1``, ...
    trainable : bool, default=True
        ``False``: :meth:`backward` returns ``grad_x`` only and optimizers skip the layer.
    weights : list of ndarray, optional
        Initial ``[kernel, bias]`` (``[kernel]`` without bias), set when the layer builds.
    seed : int or None, default=None
        Makes the initialization reproducible (kernel and bias get independent streams);
        an initializer object with its own seed keeps it.
    num_threads : int or None, default=None
        Threads for the compiled kernels (``None``: the OpenMP default).

    Attributes
    ----------
    kernel : ndarray of shape (kd, kh, kw, filters, in_channels), dtype float32 or float64
    bias : ndarray of shape (filters,) or None
    kernel_grad, bias_grad : ndarray like kernel / bias, or None
        Gradients of the last :meth:`backward` (with the regularizers' gradients).
    built : bool
    losses : list of float
        Activity penalty of the last call, then kernel and bias penalties (Keras' order).

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.layers import Conv3DTranspose
    >>> layer = Conv3DTranspose(4, 3, strides=2, padding="same", seed=0)
    >>> x = np.ones((2, 5, 6, 7, 3), dtype=np.float32)
    >>> layer(x).shape
    (2, 10, 12, 14, 4)
    >>> layer.backward(np.ones((2, 10, 12, 14, 4), np.float32)).shape
    (2, 5, 6, 7, 3)
    """

    def __init__(self, filters, kernel_size, strides=(1, 1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1, 1),
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 input_shape=None, batch_input_shape=None, batch_size=None, dtype=None,
                 name=None, trainable=True, weights=None, seed=None, num_threads=None):
        self.filters = normalize_int(filters, "filters", minimum=1)
        self.kernel_size = normalize_triple(kernel_size, "kernel_size")
        self.strides = normalize_triple(strides, "strides")
        self.dilation_rate = normalize_triple(dilation_rate, "dilation_rate")
        self.padding = normalize_padding(padding)
        self.output_padding = normalize_triple(output_padding, "output_padding", minimum=0,
                                               allow_none=True)
        check_output_padding(self.output_padding, self.strides)
        self.data_format = normalize_data_format(
            image_data_format() if data_format is None else data_format)
        self.activation = _activations.get(activation)
        self.use_bias = normalize_bool(use_bias, "use_bias")
        self.kernel_initializer = _initializers.get(
            "glorot_uniform" if kernel_initializer is None else kernel_initializer)
        self.bias_initializer = _initializers.get(
            "zeros" if bias_initializer is None else bias_initializer)
        self.kernel_regularizer = _regularizers.get(kernel_regularizer)
        self.bias_regularizer = _regularizers.get(bias_regularizer)
        self.activity_regularizer = _regularizers.get(activity_regularizer)
        self.kernel_constraint = _constraints.get(kernel_constraint)
        self.bias_constraint = _constraints.get(bias_constraint)
        self.dtype = normalize_float_dtype(dtype).name
        name = normalize_optional_string(name, "name")
        self.name = _unique_name("conv3d_transpose") if name is None else name
        self.trainable = normalize_bool(trainable, "trainable")
        self.seed = normalize_int(seed, "seed", minimum=0, allow_none=True)
        if num_threads is not None:
            normalize_num_threads(num_threads)
        self.num_threads = num_threads
        self.batch_input_shape = normalize_batch_input_shape(input_shape, batch_input_shape,
                                                             batch_size)
        if weights is not None and not isinstance(weights, (list, tuple)):
            raise ValueError("`weights` must be a list [kernel, bias] (or [kernel] without "
                             f"bias), got {type(weights).__name__}.")
        self._initial_weights = None if weights is None else list(weights)

        self._kernel = None
        self._bias = None
        self.kernel_grad = None
        self.bias_grad = None
        self._cache = None
        self._activity_loss = None
        channels = None if self.batch_input_shape is None else \
            self.batch_input_shape[-1 if self.data_format == "channels_last" else 1]
        if channels is not None:
            self.build(self.batch_input_shape)

    # --- input layout --------------------------------------------------------------------
    def _layout(self):
        return ("(batch, depth, height, width, channels)" if self.data_format == "channels_last"
                else "(batch, channels, depth, height, width)")

    def _channels_of(self, shape):
        return shape[-1] if self.data_format == "channels_last" else shape[1]

    # --- weights -------------------------------------------------------------------------
    @property
    def built(self):
        """bool: whether the weights exist."""
        return self._kernel is not None

    @property
    def in_channels(self):
        """int or None: input channels (known once built)."""
        return None if self._kernel is None else self._kernel.shape[-1]

    @property
    def kernel(self):
        """ndarray of shape (kd, kh, kw, filters, in_channels): the live kernel (Keras layout).

        Assigning copies the values in place (shape checked), so optimizers keep tracking it.
        """
        return self._kernel

    @kernel.setter
    def kernel(self, value):
        self._assign("kernel", value)

    @property
    def bias(self):
        """ndarray of shape (filters,), or None when ``use_bias=False``."""
        return self._bias

    @bias.setter
    def bias(self, value):
        self._assign("bias", value)

    def _assign(self, which, value):
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built yet: call it on an input, give "
                             "`input_shape`, or use `set_weights`, before assigning "
                             f"`{which}`.")
        target = self._kernel if which == "kernel" else self._bias
        if target is None:
            raise ValueError(f"Layer {self.name!r} has no bias (use_bias=False).")
        value = as_array(value, which)
        if value.shape != target.shape:
            raise ValueError(f"`{which}` of layer {self.name!r} has shape {target.shape}, got "
                             f"a value of shape {value.shape}.")
        working_dtype((which, value))  # refuses non-real dtypes
        target[...] = value

    @property
    def weights(self):
        """list of ndarray: ``[kernel, bias]`` (live arrays), empty before building."""
        if not self.built:
            return []
        return [self._kernel] + ([self._bias] if self.use_bias else [])

    @property
    def trainable_weights(self):
        """``weights`` if ``trainable`` else ``[]``."""
        return self.weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        """``[]`` if ``trainable`` else ``weights``."""
        return [] if self.trainable else self.weights

    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape`` (5 entries; only channels needed).

        Parameters
        ----------
        input_shape : tuple of 5 ints/None
            In the layer's ``data_format``; the channel entry must be known.
        """
        shape = tuple(input_shape)
        if len(shape) != 5:
            raise ValueError(f"Layer {self.name!r} takes 5-D inputs {self._layout()}, got an "
                             f"input shape {shape}.")
        channels = self._channels_of(shape)
        if not is_int(channels) or channels < 1:
            raise ValueError(f"Layer {self.name!r} needs a known channel count to build, got "
                             f"input shape {shape} (data_format={self.data_format!r}).")
        if self.built:
            if channels != self.in_channels:
                raise ValueError(f"Layer {self.name!r} is built for {self.in_channels} input "
                                 f"channels, got input shape {shape}.")
            return
        self._build_weights(int(channels))

    def _build_weights(self, in_channels):
        kernel_shape = (*self.kernel_size, self.filters, in_channels)
        kernel_init = self._seeded(self.kernel_initializer, 0)
        self._kernel = self._initial_value(kernel_init, kernel_shape, "kernel_initializer")
        if self.use_bias:
            bias_init = self._seeded(self.bias_initializer, 1)
            self._bias = self._initial_value(bias_init, (self.filters,), "bias_initializer")
        if self._initial_weights is not None:
            initial, self._initial_weights = self._initial_weights, None
            try:
                self.set_weights(initial)
            except ValueError:
                self._kernel = self._bias = None
                raise

    def _seeded(self, initializer, index):
        if (self.seed is None or not isinstance(initializer, _initializers.RandomInitializer)
                or initializer.seed is not None):
            return initializer
        config = dict(initializer.get_config(), seed=_derived_seed(self.seed, index))
        return type(initializer).from_config(config)

    def _initial_value(self, initializer, shape, argname):
        value = as_array(initializer(shape, dtype=self.dtype), argname)
        if value.shape != shape:
            raise ValueError(f"`{argname}` returned an array of shape {value.shape}, expected "
                             f"{shape}.")
        return np.array(value, dtype=self.dtype, order="C", copy=True)

    def get_weights(self):
        """Copies of ``[kernel, bias]`` in Keras' layout (``[kernel]`` without bias).

        Returns
        -------
        list of ndarray
            kernel of shape (kd, kh, kw, filters, in_channels), bias of shape (filters,).
        """
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Set ``[kernel, bias]`` (Keras' layout and order), checking count and shapes.

        An unbuilt layer is built from the kernel's last axis (its input channels).
        Values are cast to the layer's dtype and copied into the existing arrays.

        Parameters
        ----------
        weights : list of array-like
            kernel of shape (kd, kh, kw, filters, in_channels), then bias of shape (filters,)
            when ``use_bias``.
        """
        if not isinstance(weights, (list, tuple)):
            raise ValueError(f"`weights` must be a list, got {type(weights).__name__}.")
        expected = 2 if self.use_bias else 1
        if len(weights) != expected:
            names = "[kernel, bias]" if self.use_bias else "[kernel]"
            raise ValueError(f"Layer {self.name!r} (use_bias={self.use_bias}) expects "
                             f"{expected} weight array(s) {names}, got {len(weights)}.")
        arrays = [as_array(w, "weights") for w in weights]
        for w in arrays:
            working_dtype(("weights", w))
        kshape = arrays[0].shape
        if len(kshape) != 5 or tuple(kshape[:4]) != (*self.kernel_size, self.filters):
            raise ValueError("weights[0] (kernel) must have shape "
                             f"{(*self.kernel_size, self.filters)} + (in_channels,), got "
                             f"{kshape}.")
        if self.built and kshape[-1] != self.in_channels:
            raise ValueError(f"weights[0] (kernel) must have shape {self._kernel.shape}, got "
                             f"{kshape}.")
        if self.use_bias and arrays[1].shape != (self.filters,):
            raise ValueError(f"weights[1] (bias) must have shape ({self.filters},), got "
                             f"{arrays[1].shape}.")
        if not self.built:
            self._kernel = np.empty(kshape, dtype=self.dtype)
            self._bias = np.empty((self.filters,), dtype=self.dtype) if self.use_bias else None
        self._kernel[...] = arrays[0]
        if self.use_bias:
            self._bias[...] = arrays[1]

    def count_params(self):
        """Number of scalars in the weights (the layer must be built)."""
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built, so it has no parameters yet: "
                             "call it on an input or give `input_shape`.")
        return int(sum(w.size for w in self.weights))

    # --- computation ---------------------------------------------------------------------
    def _check_input(self, x):
        x = as_array(x, "x")
        working_dtype(("x", x))  # refuses complex, object, strings
        if x.ndim != 5:
            raise ValueError(f"Layer {self.name!r} expects 5-D inputs {self._layout()} "
                             f"(data_format={self.data_format!r}), got shape {x.shape}.")
        if self.batch_input_shape is not None:
            for want, got in zip(self.batch_input_shape, x.shape):
                if want is not None and want != got:
                    raise ValueError(f"Layer {self.name!r} expects inputs of shape "
                                     f"{self.batch_input_shape} (None: any size), got "
                                     f"{x.shape}.")
        if self.built and self._channels_of(x.shape) != self.in_channels:
            raise ValueError(f"Layer {self.name!r} was built for {self.in_channels} input "
                             f"channels, got an input of shape {x.shape} "
                             f"(data_format={self.data_format!r}).")
        return x.astype(self.dtype, copy=False)

    def _op_kwargs(self):
        return dict(strides=self.strides, padding=self.padding,
                    output_padding=self.output_padding, dilation_rate=self.dilation_rate,
                    data_format=self.data_format, num_threads=self.num_threads)

    def __call__(self, x):
        """Forward pass ``activation(conv_transpose3d(x, kernel) + bias)``.

        Parameters
        ----------
        x : array-like of shape (n, d, h, w, in_channels) or (n, in_channels, d, h, w)
            Per ``data_format``; cast to the layer's dtype. Builds the layer on first use.

        Returns
        -------
        ndarray of shape (n, d_out, h_out, w_out, filters) or (n, filters, d_out, ...)
            dtype of the layer. The input (not copied when already of the layer's dtype: do
            not modify it before :meth:`backward`), the pre-activation and the output are
            kept for :meth:`backward`.
        """
        x = self._check_input(x)
        if not self.built:
            self.build(x.shape)
        z = conv_transpose3d(x, self._kernel, self._bias if self.use_bias else None,
                             **self._op_kwargs())
        y = z
        if _nonlinear(self.activation):
            y = np.asarray(self.activation(z))
            if y.shape != z.shape:
                raise ValueError(f"The activation {self.activation.name!r} changed the shape "
                                 f"{z.shape} to {y.shape}; it must be element-wise.")
            y = y.astype(self.dtype, copy=False)
        self._cache = (x, z, y)
        self._activity_loss = None
        if self.activity_regularizer is not None:
            self._activity_loss = self.activity_regularizer(y) / y.dtype.type(y.shape[0])
        return y

    def backward(self, grad_y):
        """Backward pass through the last call.

        Parameters
        ----------
        grad_y : array-like of the shape of the last output
            Gradient of the loss with respect to the layer's output.

        Returns
        -------
        grad_x : ndarray of the shape of the last input, dtype of the layer
            Includes the activity regularizer's gradient.

        Notes
        -----
        Sets ``kernel_grad`` and ``bias_grad`` (overwritten, not accumulated) with the
        regularizers' gradients added; both are None when ``trainable`` is False.
        """
        if self._cache is None:
            raise RuntimeError(f"Layer {self.name!r} has no forward pass to go back through: "
                               "call `layer(x)` before `layer.backward(grad_y)`.")
        x, z, y = self._cache
        g = as_array(grad_y, "grad_y")
        working_dtype(("grad_y", g))
        if g.shape != y.shape:
            raise ValueError(f"`grad_y` must have the shape of the last output {y.shape}, got "
                             f"{g.shape}.")
        g = g.astype(self.dtype, copy=False)
        if self.activity_regularizer is not None:
            g = g + (self.activity_regularizer.gradient(y) / y.shape[0]).astype(self.dtype)
        if _nonlinear(self.activation):
            g = g * self.activation.derivative(z).astype(self.dtype, copy=False)
        compute = ("input",)
        if self.trainable:
            compute += ("kernel", "bias") if self.use_bias else ("kernel",)
        gx, gk, gb = conv_transpose3d_backward(g, x, self._kernel, use_bias=self.use_bias,
                                               compute=compute, **self._op_kwargs())
        if self.trainable:
            if self.kernel_regularizer is not None:
                gk = gk + self.kernel_regularizer.gradient(self._kernel).astype(self.dtype)
            if self.use_bias and self.bias_regularizer is not None:
                gb = gb + self.bias_regularizer.gradient(self._bias).astype(self.dtype)
            self.kernel_grad, self.bias_grad = gk, (gb if self.use_bias else None)
        else:
            self.kernel_grad = self.bias_grad = None
        return gx

    @property
    def losses(self):
        """list of float: the activity penalty of the last call (divided by its batch size),
        then the kernel and bias penalties of the current weights (only when trainable, as
        Keras' ``trainable_weights``)."""
        out = [] if self._activity_loss is None else [self._activity_loss]
        if self.built and self.trainable:
            if self.kernel_regularizer is not None:
                out.append(self.kernel_regularizer(self._kernel))
            if self.use_bias and self.bias_regularizer is not None:
                out.append(self.bias_regularizer(self._bias))
        return out

    def compute_output_shape(self, input_shape):
        """Output shape for ``input_shape`` (5 entries, ``None`` for unknown sizes).

        Returns
        -------
        tuple of 5 ints/None
        """
        shape = tuple(input_shape)
        if len(shape) != 5:
            raise ValueError(f"Layer {self.name!r} takes 5-D inputs {self._layout()}, got an "
                             f"input shape {shape}.")
        channels = self._channels_of(shape)
        if self.built and channels is not None and channels != self.in_channels:
            raise ValueError(f"Layer {self.name!r} was built for {self.in_channels} input "
                             f"channels, got input shape {shape}.")
        spatial = shape[1:4] if self.data_format == "channels_last" else shape[2:]
        ops = self.output_padding or (None,) * 3
        out = []
        for n, k, s, d, op in zip(spatial, self.kernel_size, self.strides, self.dilation_rate,
                                  ops):
            o = None if n is None else deconv_output_length(int(n), k, s, d, self.padding, op)
            if o is not None and o < 1:
                raise ValueError(f"Input shape {shape} gives an output of length {o} on a "
                                 "spatial axis.")
            out.append(o)
        if self.data_format == "channels_last":
            return (shape[0], *out, self.filters)
        return (shape[0], self.filters, *out)

    # --- config --------------------------------------------------------------------------
    def get_config(self):
        """Constructor arguments (Keras' names) as a dict; ``from_config`` inverts it.

        Built-in activations, initializers, regularizers and constraints are serialized as
        names or ``{"class_name", "config"}`` dicts; custom objects are stored as is.
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
        """Layer from :meth:`get_config` output, or from a Keras ``Conv3DTranspose`` config.

        Keras-only keys that do not change the numbers (``"groups"`` of 1, ``"autocast"``,
        ``"quantization_config"`` of None, ...) are ignored; weights are not part of a
        config (use :meth:`set_weights`).
        """
        config = dict(config)
        for key, neutral in (("groups", 1), ("autocast", True), ("quantization_config", None),
                             ("lora_rank", None), ("lora_alpha", None)):
            if key in config and config[key] in (neutral, None):
                config.pop(key)
        return cls(**config)

    def __repr__(self):
        parts = [f"name={self.name!r}", f"filters={self.filters}",
                 f"kernel_size={self.kernel_size}"]
        defaults = {"strides": (1, 1, 1), "padding": "valid", "output_padding": None,
                    "dilation_rate": (1, 1, 1), "use_bias": True, "dtype": "float32",
                    "trainable": True}
        for key, default in defaults.items():
            if getattr(self, key) != default:
                parts.append(f"{key}={getattr(self, key)!r}")
        parts.append(f"data_format={self.data_format!r}")
        if _nonlinear(self.activation):
            parts.append(f"activation={self.activation.name!r}")
        parts.append(f"in_channels={self.in_channels}, params={self.count_params()}"
                     if self.built else "built=False")
        return f"Conv3DTranspose({', '.join(parts)})"

    # --- PyTorch interoperability ----------------------------------------------------------
    @classmethod
    def from_torch(cls, module, data_format="channels_first", **kwargs):
        """The layer equivalent to a ``torch.nn.ConvTranspose3d``.

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
        """The equivalent ``torch.nn.ConvTranspose3d`` (channels_first inputs), weights copied.

        The activation is not part of the module (a warning says so when there is one).

        Raises
        ------
        ValueError
            If the layer is not built, or its padding crops asymmetrically ('same' with
            ``(effective_kernel - stride)`` odd, or an odd ``output_padding``), which
            ``ConvTranspose3d``'s symmetric ``padding`` cannot express.
        """
        torch = _import_torch()
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built: call it or give `input_shape` "
                             "before `to_torch()`.")
        padding, output_padding = torch_padding_from_keras(
            self.kernel_size, self.strides, self.dilation_rate, self.padding,
            self.output_padding)
        if _nonlinear(self.activation):
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


def _serialize_or_none(module, obj):
    return None if obj is None else module.serialize(obj)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch is needed for from_torch()/to_torch(); kernel_from_torch() "
                          "and kernel_to_torch() convert numpy kernels without it.") from None
    return torch


def kernel_from_torch(weight):
    """Convert a ``ConvTranspose3d`` weight to Keras' kernel layout (no torch needed).

    Parameters
    ----------
    weight : array-like (or torch tensor) of shape (in_channels, filters, kd, kh, kw)

    Returns
    -------
    ndarray of shape (kd, kh, kw, filters, in_channels), same dtype (a copy)
    """
    w = _as_numpy(weight, "weight")
    if w.ndim != 5:
        raise ValueError("`weight` must be 5-D (in_channels, filters, kd, kh, kw), got shape "
                         f"{w.shape}.")
    return np.ascontiguousarray(torch_to_keras_kernel(w))


def kernel_to_torch(kernel):
    """Convert a Keras kernel to ``ConvTranspose3d``'s weight layout (no torch needed).

    Parameters
    ----------
    kernel : array-like of shape (kd, kh, kw, filters, in_channels)

    Returns
    -------
    ndarray of shape (in_channels, filters, kd, kh, kw), same dtype (a copy)
    """
    k = _as_numpy(kernel, "kernel")
    if k.ndim != 5:
        raise ValueError("`kernel` must be 5-D (kd, kh, kw, filters, in_channels), got shape "
                         f"{k.shape}.")
    return np.ascontiguousarray(keras_to_torch_kernel(k))


def _as_numpy(value, name):
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return as_array(value, name)


def layer_conv_3d_transpose(object=None, filters=None, kernel_size=None, strides=(1, 1, 1),
                            padding="valid", output_padding=None, data_format=None,
                            dilation_rate=(1, 1, 1), activation=None, use_bias=True,
                            kernel_initializer="glorot_uniform", bias_initializer="zeros",
                            kernel_regularizer=None, bias_regularizer=None,
                            activity_regularizer=None, kernel_constraint=None,
                            bias_constraint=None, input_shape=None, batch_input_shape=None,
                            batch_size=None, dtype=None, name=None, trainable=True,
                            weights=None, seed=None, num_threads=None):
    """R keras' ``layer_conv_3d_transpose``: make a :class:`Conv3DTranspose`, maybe apply it.

    Parameters
    ----------
    object : None or array-like, default=None
        ``None``: return the layer. An input array: return ``layer(object)``.
    filters, kernel_size : required
    **other
        As :class:`Conv3DTranspose`.

    Returns
    -------
    Conv3DTranspose or ndarray
    """
    if filters is None or kernel_size is None:
        raise TypeError("layer_conv_3d_transpose() needs `filters` and `kernel_size`.")
    layer = Conv3DTranspose(
        filters, kernel_size, strides=strides, padding=padding, output_padding=output_padding,
        data_format=data_format, dilation_rate=dilation_rate, activation=activation,
        use_bias=use_bias, kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer, activity_regularizer=activity_regularizer,
        kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
        input_shape=input_shape, batch_input_shape=batch_input_shape, batch_size=batch_size,
        dtype=dtype, name=name, trainable=trainable, weights=weights, seed=seed,
        num_threads=num_threads)
    if object is None:
        return layer
    return layer(object)
