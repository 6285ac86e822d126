"""Weights of :class:`tconv3d.layers.Conv3DTranspose`: creation, assignment, get/set.

:class:`LayerWeights` is the part of the layer that owns ``kernel`` and ``bias``: it builds
them from the initializers (seeded per weight), checks and copies assigned values in place
(so optimizers keep tracking the same arrays) and exchanges them in Keras' layout and order.
"""
import numpy as np

from . import initializers as _initializers
from ._validation import as_array, is_int, working_dtype


def derived_seed(seed, index):
    """A reproducible int seed for weight ``index`` (0 kernel, 1 bias) of a layer ``seed``."""
    return int(np.random.SeedSequence(seed).spawn(2)[index].generate_state(1)[0])


class LayerWeights:
    """Weight handling of a Keras-like layer (a base of ``Conv3DTranspose``).

    The layer sets ``name``, ``filters``, ``kernel_size``, ``use_bias``, ``trainable``,
    ``dtype``, ``data_format``, ``seed``, ``kernel_initializer``, ``bias_initializer`` and
    ``_initial_weights`` (a list or None), and ``_kernel = _bias = None`` until built.
    """

    # --- input layout --------------------------------------------------------------------
    def _layout(self):
        return ("(batch, depth, height, width, channels)" if self.data_format == "channels_last"
                else "(batch, channels, depth, height, width)")

    def _channels_of(self, shape):
        return shape[-1] if self.data_format == "channels_last" else shape[1]

    # --- weights -------------------------------------------------------------------------
    @property
    def built(self):
        """Whether the weights exist (a bool): after a call, ``build`` or ``set_weights``.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3)
        >>> layer.built, layer(np.ones((1, 2, 2, 2, 2))).shape, layer.built
        (False, (1, 4, 4, 4, 4), True)
        """
        return self._kernel is not None

    @property
    def in_channels(self):
        """The number of input channels, an int once built (None before).

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> layer.in_channels
        2
        """
        return None if self._kernel is None else self._kernel.shape[-1]

    @property
    def kernel(self):
        """The live kernel, an ndarray of shape (kd, kh, kw, filters, in_channels).

        Keras' layout; None before the layer is built. Assigning copies the values in place
        (shape checked), so optimizers keep tracking the same array.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> layer.kernel.shape
        (3, 3, 3, 4, 2)
        >>> kernel = layer.kernel
        >>> layer.kernel = np.full((3, 3, 3, 4, 2), 0.5)     # copied into the same array
        >>> layer.kernel is kernel, float(kernel.max())
        (True, 0.5)
        """
        return self._kernel

    @kernel.setter
    def kernel(self, value):
        self._assign("kernel", value)

    @property
    def bias(self):
        """The live bias, an ndarray of shape (filters,) (None when ``use_bias=False``).

        Assigning copies the values in place, as for :attr:`kernel`.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> layer.bias
        array([0., 0., 0., 0.], dtype=float32)
        """
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
        """The list ``[kernel, bias]`` of live arrays (``[kernel]`` without bias).

        Empty before the layer is built.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> [w.shape for w in layer.weights]
        [(3, 3, 3, 4, 2), (4,)]
        """
        if not self.built:
            return []
        return [self._kernel] + ([self._bias] if self.use_bias else [])

    @property
    def trainable_weights(self):
        """The :attr:`weights` if the layer is ``trainable``, else ``[]``.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> len(layer.trainable_weights)
        2
        >>> layer.trainable = False
        >>> layer.trainable_weights
        []
        """
        return self.weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        """``[]`` if the layer is ``trainable``, else its :attr:`weights`.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2), trainable=False)
        >>> len(layer.non_trainable_weights)
        2
        """
        return [] if self.trainable else self.weights

    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape`` (5 entries; only channels needed).

        Parameters
        ----------
        input_shape : tuple of 5 ints/None
            In the layer's ``data_format``; the channel entry must be known.

        Raises
        ------
        ValueError
            If ``input_shape`` is not 5 entries, its channels are unknown, or the layer is
            already built for other channels.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, seed=0)
        >>> layer.build((None, 8, 8, 8, 2))
        >>> layer.kernel.shape
        (3, 3, 3, 4, 2)
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
        config = dict(initializer.get_config(), seed=derived_seed(self.seed, index))
        return type(initializer).from_config(config)

    def _initial_value(self, initializer, shape, argname):
        value = as_array(initializer(shape, dtype=self.dtype), argname)
        if value.shape != shape:
            raise ValueError(f"`{argname}` returned an array of shape {value.shape}, expected "
                             f"{shape}.")
        return np.array(value, dtype=self.dtype, order="C", copy=True)

    def get_weights(self):
        """Return copies of ``[kernel, bias]`` in Keras' layout (``[kernel]`` without bias).

        Returns
        -------
        list of ndarray
            The kernel of shape (kd, kh, kw, filters, in_channels), then the bias of shape
            (filters,); empty before the layer is built.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> kernel, bias = layer.get_weights()
        >>> kernel.shape, bias.shape, kernel is layer.kernel
        ((3, 3, 3, 4, 2), (4,), False)
        """
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Set ``[kernel, bias]`` (Keras' layout and order), checking count and shapes.

        An unbuilt layer is built from the kernel's last axis (its input channels).
        Values are cast to the layer's dtype and copied into the existing arrays.

        Parameters
        ----------
        weights : list of array-like
            The kernel of shape (kd, kh, kw, filters, in_channels), then the bias of shape
            (filters,) when ``use_bias``.

        Raises
        ------
        ValueError
            If ``weights`` is not a list of the right length, or a shape is not the
            layer's.
        TypeError
            If a weight holds anything but real numbers.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3)
        >>> layer.set_weights([np.ones((3, 3, 3, 4, 2)), np.zeros(4)])   # builds it
        >>> layer.in_channels, layer.kernel.dtype
        (2, dtype('float32'))
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
        """Return the number of scalars in the weights.

        Returns
        -------
        int
            ``kernel.size + bias.size``.

        Raises
        ------
        ValueError
            If the layer is not built.

        Examples
        --------
        >>> from tconv3d.layers import Conv3DTranspose
        >>> layer = Conv3DTranspose(4, 3, input_shape=(None, None, None, 2))
        >>> layer.count_params()         # 3 * 3 * 3 * 4 * 2 + 4
        220
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built, so it has no parameters yet: "
                             "call it on an input or give `input_shape`.")
        return int(sum(w.size for w in self.weights))
