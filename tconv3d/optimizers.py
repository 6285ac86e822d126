"""Minimal SGD and Adam with Keras 3's update rules, updating numpy weights in place.

``opt.apply_gradients(layer)`` updates ``layer.kernel`` and ``layer.bias`` from
``layer.kernel_grad`` and ``layer.bias_grad`` (filled by ``layer.backward``), skips a layer whose
``trainable`` is False, and then applies the layer's ``kernel_constraint`` and
``bias_constraint``. A list of layers, or a list of ``(gradient, variable)`` pairs of numpy
arrays as in Keras (variables updated in place, no constraints), is accepted too.

As in Keras, one call is one step: ``iterations`` grows by one per call, and the optimizer is
bound to the variables of its first call (a different variable later is an error: use one
optimizer per set of weights). Gradient clipping (``clipnorm``, ``clipvalue``,
``global_clipnorm``) and decoupled ``weight_decay`` follow Keras' order: clip, decay, update,
constrain.

Deliberate differences from Keras: ``learning_rate`` is kept as a Python float (Keras stores
it in a float32 variable, so float64 weights see it rounded to float32); no EMA, loss scaling
or gradient accumulation.
"""
import math
import numbers

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "get"]


class Optimizer:
    """Base class: state per variable, Keras' clipping and weight decay, ``apply_gradients``.

    Parameters
    ----------
    learning_rate : float or callable
        A float, or a callable with no arguments returning the rate of the current step.
    weight_decay : float or None, default=None
        Decoupled decay: ``w -= w * weight_decay * learning_rate`` before each update.
    clipnorm, clipvalue, global_clipnorm : float or None, default=None
        At most one: clip each gradient's L2 norm, each element, or the norm of all gradients.
    name : str or None, default=None
        A name for configs; ``None`` is the class name in lower case.

    Raises
    ------
    ValueError
        If ``learning_rate`` is neither a positive finite float nor a callable, or more
        than one clipping argument is given.

    Examples
    --------
    The clipping, decay and constraints are the base class's; :class:`SGD` and
    :class:`Adam` add their update rules:

    >>> import numpy as np
    >>> from tconv3d.optimizers import SGD
    >>> w = np.array([1.0, 1.0])
    >>> SGD(learning_rate=0.1, clipvalue=0.5).apply_gradients([(np.array([2.0, -0.1]), w)])
    1
    >>> w                                    # the gradient clipped to [-0.5, 0.5] first
    array([0.95, 1.01])
    """

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        if not callable(learning_rate) and (
                isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real)
                or not learning_rate > 0 or math.isinf(learning_rate)):
            raise ValueError("`learning_rate` must be a positive float or a callable, got "
                             f"{learning_rate!r}.")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be "
                             f"set, got clipnorm={clipnorm}, clipvalue={clipvalue}, "
                             f"global_clipnorm={global_clipnorm}.")
        self.learning_rate = learning_rate if callable(learning_rate) else float(learning_rate)
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.name = name if name is not None else type(self).__name__.lower()
        self.iterations = 0
        self._slots = None  # list of (variable, state dict), in build order

    # --- public ------------------------------------------------------------------------
    def apply_gradients(self, target):
        """One optimization step.

        Parameters
        ----------
        target : layer, list of layers, or list of (gradient, variable) pairs
            A layer needs ``kernel``, ``bias``, ``kernel_grad``, ``bias_grad``, ``trainable``,
            ``kernel_constraint`` and ``bias_constraint`` attributes (as
            :class:`tconv3d.layers.Conv3DTranspose`). Variables are float ndarrays, updated in
            place.

        Returns
        -------
        int
            ``iterations`` after the step.

        Raises
        ------
        TypeError
            If ``target`` is none of the above, or a variable is not a writeable float
            ndarray.
        ValueError
            If a gradient's shape differs from its variable's, a layer has no gradients
            (``backward`` not called), or the variables are not those of the first step.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.optimizers import SGD
        >>> w = np.array([1.0, 2.0])
        >>> opt = SGD(learning_rate=0.1)
        >>> opt.apply_gradients([(np.array([1.0, -1.0]), w)])
        1
        >>> w                                    # updated in place: w - 0.1 * g
        array([0.9, 2.1])
        """
        pairs, constraints = self._collect(target)
        if not pairs:
            return self.iterations
        grads = [np.asarray(g) for g, _ in pairs]
        variables = [v for _, v in pairs]
        for g, v in zip(grads, variables):
            if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or not v.flags.writeable:
                raise TypeError("Each variable must be a writeable float ndarray (updated in "
                                f"place), got {type(v).__name__} "
                                f"{getattr(v, 'dtype', '')}.")
            if g.shape != v.shape:
                raise ValueError(f"A gradient of shape {g.shape} was given for a variable of "
                                 f"shape {v.shape}.")
        states = self._states(variables)
        lr = self.learning_rate() if callable(self.learning_rate) else self.learning_rate
        grads = self._clip(grads)
        if self.weight_decay is not None:
            for v in variables:
                t = v.dtype.type
                v -= v * t(self.weight_decay) * t(lr)
        for g, v, state in zip(grads, variables, states):
            self._update(g.astype(v.dtype, copy=False), v, state, lr)
        for v, constraint in zip(variables, constraints):
            if constraint is not None:
                v[...] = constraint(v)
        self.iterations += 1
        return self.iterations

    def apply(self, grads, variables):
        """Apply one step, Keras' way: ``apply_gradients(zip(grads, variables))``.

        Parameters
        ----------
        grads : list of ndarray or None
            One gradient per variable (``None``: the variable is skipped).
        variables : list of ndarray
            Float arrays, updated in place.

        Returns
        -------
        int
            ``iterations`` after the step.

        Raises
        ------
        TypeError, ValueError
            As :meth:`apply_gradients`.

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.optimizers import SGD
        >>> w = np.array([1.0, 2.0])
        >>> SGD(learning_rate=0.5).apply([np.array([1.0, 1.0])], [w])
        1
        >>> w
        array([0.5, 1.5])
        """
        return self.apply_gradients(list(zip(grads, variables)))

    @property
    def variables(self):
        """The variables this optimizer was built on (empty before the first step).

        Examples
        --------
        >>> import numpy as np
        >>> from tconv3d.optimizers import Adam
        >>> w, optimizer = np.zeros(3), Adam()
        >>> optimizer.variables
        []
        >>> _ = optimizer.apply_gradients([(np.ones(3), w)])
        >>> optimizer.variables[0] is w
        True
        """
        return [v for v, _ in self._slots or []]

    def get_config(self):
        """Return the constructor's arguments, as :meth:`from_config` takes them.

        Returns
        -------
        dict
            ``{argument name: value}``, ``name`` included.

        Examples
        --------
        >>> from tconv3d.optimizers import SGD
        >>> SGD(learning_rate=0.1, momentum=0.9).get_config()["momentum"]
        0.9
        """
        return {"name": self.name, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm}

    @classmethod
    def from_config(cls, config):
        """Make an optimizer from :meth:`get_config`'s dict (a new one, with no state).

        Parameters
        ----------
        config : dict
            The constructor's arguments by name.

        Returns
        -------
        Optimizer
            ``cls(**config)``.

        Raises
        ------
        TypeError
            If ``config`` has an argument the constructor does not take.
        ValueError
            If the constructor refuses a value.

        Examples
        --------
        >>> from tconv3d.optimizers import Adam
        >>> optimizer = Adam.from_config(Adam(learning_rate=0.01, amsgrad=True).get_config())
        >>> optimizer.learning_rate, optimizer.amsgrad, optimizer.iterations
        (0.01, True, 0)
        """
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # --- internals ---------------------------------------------------------------------
    def _collect(self, target):
        if _is_layer(target):
            target = [target]
        target = list(target)
        pairs, constraints = [], []
        if all(_is_layer(t) for t in target):
            for layer in target:
                if not layer.trainable:
                    continue
                if layer.kernel_grad is None:
                    raise ValueError(f"Layer {layer.name!r} has no gradients: call "
                                     "`layer.backward(grad_y)` after `layer(x)` first.")
                pairs.append((layer.kernel_grad, layer.kernel))
                constraints.append(layer.kernel_constraint)
                if layer.bias is not None:
                    pairs.append((layer.bias_grad, layer.bias))
                    constraints.append(layer.bias_constraint)
            return pairs, constraints
        for item in target:
            if _is_layer(item) or not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError("`apply_gradients` takes a layer, a list of layers or a list "
                                f"of (gradient, variable) pairs; got an item {item!r}.")
            if item[0] is None:
                continue
            pairs.append(tuple(item))
            constraints.append(None)
        return pairs, constraints

    def _states(self, variables):
        if self._slots is None:
            self._slots = [(v, self._init_state(v)) for v in variables]
        known = {id(v): state for v, state in self._slots}
        missing = [v.shape for v in variables if id(v) not in known]
        if missing:
            raise ValueError(
                f"This optimizer was built on {len(self._slots)} variables at its first step; "
                f"got {len(missing)} other variable(s) of shape(s) {missing}. Use one optimizer "
                "per set of weights, and update weights in place (`layer.set_weights`).")
        return [known[id(v)] for v in variables]

    def _clip(self, grads):
        if self.clipnorm and self.clipnorm > 0:
            out = []
            for g in grads:
                l2 = math.sqrt(float(np.sum(np.square(g))))
                out.append(g * self.clipnorm / max(l2, self.clipnorm))
            return out
        if self.global_clipnorm and self.global_clipnorm > 0:
            norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in grads))
            scale = self.global_clipnorm * min(1.0 / norm if norm else math.inf,
                                               1.0 / self.global_clipnorm)
            return [g * scale for g in grads]
        if self.clipvalue and self.clipvalue > 0:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def _init_state(self, variable):
        return {}

    def _update(self, grad, variable, state, lr):
        raise NotImplementedError


def _is_layer(obj):
    return hasattr(obj, "kernel_grad") and hasattr(obj, "trainable")


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as Keras 3.

    ``velocity = momentum * velocity - learning_rate * g``; ``w += velocity`` (Nesterov:
    ``w += momentum * velocity - learning_rate * g``); without momentum
    ``w -= learning_rate * g``.

    Parameters
    ----------
    learning_rate : float or callable, default=0.01
        The step size (see :class:`Optimizer`).
    momentum : float in [0, 1], default=0.0
        The velocity's decay; 0 is plain gradient descent.
    nesterov : bool, default=False
        Nesterov momentum.
    weight_decay, clipnorm, clipvalue, global_clipnorm : float or None, default=None
        See :class:`Optimizer`.
    name : str or None, default=None
        See :class:`Optimizer`.

    Raises
    ------
    ValueError
        If ``momentum`` is not in [0, 1], or as :class:`Optimizer`.

    Examples
    --------
    One step on ``(gradient, variable)`` pairs, updated in place (a layer works the same,
    with ``apply_gradients(layer)`` after ``layer.backward``):

    >>> import numpy as np
    >>> from tconv3d.optimizers import SGD
    >>> w = np.array([1.0, -2.0])
    >>> SGD(learning_rate=0.1).apply_gradients([(np.array([0.5, 0.5]), w)])   # iterations
    1
    >>> w
    array([ 0.95, -2.05])
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"`momentum` must be a float in [0, 1], got {momentum!r}.")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _init_state(self, variable):
        return {"momentum": np.zeros_like(variable)} if self.momentum != 0 else {}

    def _update(self, grad, variable, state, lr):
        t = variable.dtype.type
        lr = t(lr)
        if self.momentum != 0:
            m, momentum = state["momentum"], t(self.momentum)
            m[...] = m * momentum - grad * lr
            if self.nesterov:
                variable += m * momentum - grad * lr
            else:
                variable += m
        else:
            variable -= grad * lr

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam, as Keras 3 (``epsilon`` is the "epsilon hat" added to ``sqrt(v)``).

    With ``t = iterations + 1``: ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``;
    ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``;
    (AMSGrad: ``v_hat = max(v_hat, v)`` used for ``v``); ``w -= m * alpha / (sqrt(v) + epsilon)``.

    Parameters
    ----------
    learning_rate : float or callable, default=0.001
        The step size (see :class:`Optimizer`).
    beta_1 : float in [0, 1), default=0.9
        Decay of the first moment ``m``.
    beta_2 : float in [0, 1), default=0.999
        Decay of the second moment ``v``.
    epsilon : float, default=1e-7
        Added to ``sqrt(v)``.
    amsgrad : bool, default=False
        Use the largest ``v`` so far (AMSGrad).
    weight_decay, clipnorm, clipvalue, global_clipnorm : float or None, default=None
        See :class:`Optimizer`.
    name : str or None, default=None
        See :class:`Optimizer`.

    Raises
    ------
    ValueError
        If ``beta_1`` or ``beta_2`` is not in [0, 1), or as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from tconv3d.layers import Conv3DTranspose
    >>> from tconv3d.optimizers import Adam
    >>> layer = Conv3DTranspose(2, 3, strides=2, padding="same", seed=0)
    >>> y = layer(np.ones((1, 4, 4, 4, 3), np.float32))
    >>> _ = layer.backward(y)                 # gradient of 0.5 * sum(y**2)
    >>> optimizer = Adam(learning_rate=1e-3)
    >>> optimizer.apply_gradients(layer)      # updates layer.kernel and layer.bias
    1
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name)
        for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= value < 1:
                raise ValueError(f"`{key}` must be in [0, 1), got {value!r}.")
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon, self.amsgrad = float(epsilon), bool(amsgrad)

    def _init_state(self, variable):
        state = {"momentum": np.zeros_like(variable), "velocity": np.zeros_like(variable)}
        if self.amsgrad:
            state["velocity_hat"] = np.zeros_like(variable)
        return state

    def _update(self, grad, variable, state, lr):
        t = variable.dtype.type
        step = t(self.iterations + 1)
        beta_1_power = np.power(t(self.beta_1), step)
        beta_2_power = np.power(t(self.beta_2), step)
        alpha = t(lr) * np.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m, v = state["momentum"], state["velocity"]
        m += (grad - m) * (1 - self.beta_1)
        v += (np.square(grad) - v) * (1 - self.beta_2)
        if self.amsgrad:
            v_hat = state["velocity_hat"]
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        variable -= (m * alpha) / (np.sqrt(v) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


def get(identifier):
    """Return an optimizer.

    Parameters
    ----------
    identifier : str, dict or Optimizer
        ``"sgd"`` or ``"adam"`` (Keras defaults, any case), a config dict
        ``{"class_name": ..., "config": {...}}``, or an Optimizer instance.

    Returns
    -------
    Optimizer
        A new optimizer; an instance given is returned as it is.

    Raises
    ------
    ValueError
        For any other identifier, or (from the constructor) an invalid argument in the
        config.
    TypeError
        If the config has an argument the optimizer does not take.

    Examples
    --------
    >>> from tconv3d import optimizers
    >>> opt = optimizers.get("Adam")
    >>> type(opt).__name__, opt.learning_rate
    ('Adam', 0.001)
    >>> optimizers.get({"class_name": "SGD", "config": {"learning_rate": 0.1}}).learning_rate
    0.1
    """
    if isinstance(identifier, Optimizer):
        return identifier
    classes = {"sgd": SGD, "adam": Adam}
    if isinstance(identifier, str) and identifier.lower() in classes:
        return classes[identifier.lower()]()
    if isinstance(identifier, dict) and str(identifier.get("class_name", "")).lower() in classes:
        return classes[identifier["class_name"].lower()].from_config(
            dict(identifier.get("config") or {}))
    raise ValueError(f"Could not interpret optimizer identifier {identifier!r}: expected "
                     "'sgd', 'adam', a config dict or an Optimizer.")
