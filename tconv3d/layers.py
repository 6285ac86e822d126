"""The Keras-like layer :class:`Conv3DTranspose` and its functional form.

The layer holds its weights as numpy arrays in Keras' layout, runs the compiled forward and
backward passes of :mod:`tconv3d._ops`, and is trained with :mod:`tconv3d.optimizers`::

    layer = Conv3DTranspose(8, 3, strides=2, padding="same", activation="relu")
    y = layer(x)                       # builds on the first call
    grad_x = layer.backward(grad_y)    # fills layer.kernel_grad and layer.bias_grad
    Adam().apply_gradients(layer)

Weights are interchangeable with Keras (``layer.set_weights(keras_layer.get_weights())``)
and with PyTorch (:meth:`Conv3DTranspose.from_torch`, :meth:`Conv3DTranspose.to_torch`,
:func:`kernel_from_torch`, :func:`kernel_to_torch`); that interoperability lives in
:mod:`tconv3d._interop` and the weight handling in :mod:`tconv3d._layer_weights`.
"""
import threading

import numpy as np

from . import activations as _activations
from . import constraints as _constraints
from . import initializers as _initializers
from . import regularizers as _regularizers
from ._geometry import deconv_output_length
from ._interop import LayerInterop, image_data_format, kernel_from_torch, kernel_to_torch
from ._layer_weights import LayerWeights
from ._ops import conv_transpose3d, conv_transpose3d_backward
from ._validation import (FROM_OUTPUT, as_array, check_output_padding,
                          normalize_activation, normalize_batch_input_shape, normalize_bool,
                          normalize_data_format, normalize_float_dtype, normalize_int,
                          normalize_num_threads, normalize_optional_string,
                          normalize_padding, normalize_triple, working_dtype)

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


class Conv3DTranspose(LayerWeights, LayerInterop):
    """3D transposed convolution layer with Keras' arguments, defaults and numbers.

    Parameters
    ----------
    filters : int
        Number of output channels.
    kernel_size : int or tuple of 3 ints
        Kernel depth, height and width.
    strides : int or tuple of 3 ints, default=(1, 1, 1)
        The step between the output positions of successive input voxels.
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
        Whether the layer adds a bias.
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

    Raises
    ------
    ValueError
        If an argument has a value it does not accept (``filters < 1``, an unknown
        ``padding``, a non-element-wise ``activation``, an identifier the
        activations/initializers/regularizers/constraints do not know, an integer
        ``dtype``, ``output_padding >= strides``, ``weights`` that are not a list, ...).

    Notes
    -----
    Weight handling is inherited from :class:`tconv3d._layer_weights.LayerWeights`, configs
    and PyTorch conversion from :class:`tconv3d._interop.LayerInterop`.

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
        if self.batch_input_shape is not None \
                and self._channels_of(self.batch_input_shape) is not None:
            self.build(self.batch_input_shape)

    def _activates(self):
        """Whether the activation is not the identity (``backward`` needs its derivative)."""
        return self.activation.fn is not _activations.linear.fn

    def _fused_activation(self):
        """The activation when the compiled forward can apply it and the backward take its
        derivative from the output (tconv3d's own relu, leaky_relu, sigmoid, tanh), else
        None: the activation then runs on the forward's result, as given."""
        builtin = _activations.ELEMENTWISE.get(self.activation.name)
        if not self._activates() or builtin is None or self.activation.fn is not builtin.fn:
            return None
        try:
            name, _ = normalize_activation(self.activation)
        except ValueError:
            return None
        return self.activation if name in FROM_OUTPUT else None

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
            The dtype of the layer. The input (not copied when already of the layer's dtype:
            do not modify it before :meth:`backward`) and the output are kept for
            :meth:`backward`, and the pre-activation unless the compiled forward applies
            the activation itself (tconv3d's relu, leaky_relu, sigmoid and tanh, whose
            derivatives are taken from the output).

        Raises
        ------
        ValueError
            If ``x`` is not 5-D, does not match the known input shape or the built channel
            count, or the activation changes the shape.
        TypeError
            If ``x`` holds anything but real numbers.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(2, 2, strides=2, kernel_initializer="ones")
        >>> layer(np.ones((1, 1, 1, 1, 3))).ravel()       # every output: 3 inputs x 1
        array([3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3.],
              dtype=float32)
        """
        x = self._check_input(x)
        if not self.built:
            self.build(x.shape)
        fused = self._fused_activation()
        z = conv_transpose3d(x, self._kernel, self._bias if self.use_bias else None,
                             activation=fused, **self._op_kwargs())
        y = z
        if fused is not None:   # z holds the activated output; no pre-activation kept
            z = None
        elif self._activates():
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
        ndarray of the shape of the last input, dtype of the layer
            The gradient with respect to the input, the activity regularizer's included.

        Raises
        ------
        RuntimeError
            If the layer has not been called yet.
        ValueError
            If ``grad_y`` does not have the last output's shape.
        NotImplementedError
            If the activation or a regularizer has no derivative.

        Notes
        -----
        Sets ``kernel_grad`` and ``bias_grad`` (overwritten, not accumulated) with the
        regularizers' gradients added; both are None when ``trainable`` is False.

        Examples
        --------
        Gradients of the loss ``y.sum()``:

        >>> import numpy as np
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(2, 2, strides=2, kernel_initializer="ones")
        >>> y = layer(np.ones((1, 1, 1, 1, 3)))
        >>> layer.backward(np.ones_like(y)).ravel()     # 8 taps x 2 filters per input
        array([16., 16., 16.], dtype=float32)
        >>> layer.kernel_grad.shape, layer.bias_grad
        ((2, 2, 2, 2, 3), array([8., 8.], dtype=float32))
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
        fused = None
        if z is None:   # a fused forward: the derivative from the output, in the same call
            fused = self.activation
        elif self._activates():
            g = g * self.activation.derivative(z).astype(self.dtype, copy=False)
        compute = ("input",)
        if self.trainable:
            compute += ("kernel", "bias") if self.use_bias else ("kernel",)
        gx, gk, gb = conv_transpose3d_backward(g, x, self._kernel, use_bias=self.use_bias,
                                               compute=compute, activation=fused, output=y,
                                               **self._op_kwargs())
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
        """The penalties: a list of floats, as Keras' ``layer.losses``.

        The activity penalty of the last call (divided by its batch size), then the kernel
        and bias penalties of the current weights (only when trainable, as Keras'
        ``trainable_weights``).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(1, 1, kernel_initializer="ones", kernel_regularizer="l2",
        ...                         activity_regularizer="l1")
        >>> _ = layer(np.full((2, 1, 1, 1, 1), 3.0))
        >>> [round(float(loss), 6) for loss in layer.losses]    # 0.01 * 6 / 2, 0.01 * 1
        [0.03, 0.01]
        """
        out = [] if self._activity_loss is None else [self._activity_loss]
        if self.built and self.trainable:
            if self.kernel_regularizer is not None:
                out.append(self.kernel_regularizer(self._kernel))
            if self.use_bias and self.bias_regularizer is not None:
                out.append(self.bias_regularizer(self._bias))
        return out

    def compute_output_shape(self, input_shape):
        """Return the output shape for inputs of ``input_shape``, without computing.

        Parameters
        ----------
        input_shape : tuple of 5 ints/None
            In the layer's ``data_format``; ``None`` for unknown sizes.

        Returns
        -------
        tuple of 5 ints/None
            ``None`` where the input size is unknown.

        Raises
        ------
        ValueError
            If ``input_shape`` is not 5 entries, has other channels than the built layer,
            or gives an output length below 1.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> Conv3DTranspose(4, 3, strides=2).compute_output_shape((None, 8, None, 8, 2))
        (None, 17, None, 17, 4)
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
        if self._activates():
            parts.append(f"activation={self.activation.name!r}")
        parts.append(f"in_channels={self.in_channels}, params={self.count_params()}"
                     if self.built else "built=False")
        return f"Conv3DTranspose({', '.join(parts)})"


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
    filters : int
        Required: number of output channels.
    kernel_size : int or tuple of 3 ints
        Required: kernel depth, height and width.
    strides : int or tuple of 3 ints, default=(1, 1, 1)
        As :class:`Conv3DTranspose`.
    padding : {"valid", "same"}, default="valid"
        As :class:`Conv3DTranspose`.
    output_padding : int, tuple of 3 ints or None, default=None
        As :class:`Conv3DTranspose`.
    data_format : {"channels_last", "channels_first"} or None, default=None
        As :class:`Conv3DTranspose`.
    dilation_rate : int or tuple of 3 ints, default=(1, 1, 1)
        As :class:`Conv3DTranspose`.
    activation : str, callable or None, default=None
        As :class:`Conv3DTranspose`.
    use_bias : bool, default=True
        As :class:`Conv3DTranspose`.
    kernel_initializer, bias_initializer : str, dict, Initializer or callable
        As :class:`Conv3DTranspose`.
    kernel_regularizer, bias_regularizer, activity_regularizer : str, dict, Regularizer, \
callable or None, default=None
        As :class:`Conv3DTranspose`.
    kernel_constraint, bias_constraint : str, dict, Constraint, callable or None
        As :class:`Conv3DTranspose`.
    input_shape : tuple of 4 ints/None, optional
        As :class:`Conv3DTranspose`.
    batch_input_shape : tuple of 5 ints/None, optional
        As :class:`Conv3DTranspose`.
    batch_size : int, optional
        As :class:`Conv3DTranspose`.
    dtype : {"float32", "float64"} or None, default=None
        As :class:`Conv3DTranspose`.
    name : str or None, default=None
        As :class:`Conv3DTranspose`.
    trainable : bool, default=True
        As :class:`Conv3DTranspose`.
    weights : list of ndarray, optional
        As :class:`Conv3DTranspose`.
    seed : int or None, default=None
        As :class:`Conv3DTranspose`.
    num_threads : int or None, default=None
        As :class:`Conv3DTranspose`.

    Returns
    -------
    Conv3DTranspose or ndarray
        The layer, or its output for ``object``.

    Raises
    ------
    TypeError
        If ``filters`` or ``kernel_size`` is missing.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d import layer_conv_3d_transpose
    >>> x = np.ones((1, 4, 4, 4, 3), np.float32)
    >>> layer_conv_3d_transpose(x, filters=2, kernel_size=3, strides=2, padding="same").shape
    (1, 8, 8, 8, 2)
    >>> layer_conv_3d_transpose(filters=2, kernel_size=3).filters
    2
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
