"""Argument normalisation, dtype rules and memory checks: every error message lives here.

The compiled kernels trust what they are given; this module is what makes that safe. The
shape arithmetic it checks (output lengths, crops, Keras <-> PyTorch padding) is computed by
:mod:`tconv3d._geometry`.
"""
import numbers
import os
from collections.abc import Mapping, Set, ValuesView

import numpy as np

from . import _threads
from ._geometry import Geometry, axis_geometry, find_keras_padding, keras_trim, torch_window

UNORDERED = (Set, Mapping, ValuesView)
PADDINGS = ("valid", "same")
DATA_FORMATS = ("channels_last", "channels_first")
FLOAT_DTYPES = ("float32", "float64")
GRADIENTS = ("input", "kernel", "bias")
_INTP_MAX = np.iinfo(np.intp).max
# Largest uncropped axis length (in - 1)*stride + (kernel - 1)*dilation + 1 accepted: the
# kernels add and subtract such lengths (tap positions, crops, output lengths) in Py_ssize_t,
# so a quarter of the index range leaves every intermediate sum representable.
MAX_AXIS_LENGTH = _INTP_MAX // 4
# Arrays smaller than this are not checked against the available memory: reading
# /proc/meminfo and the cgroup files costs more than a small problem's whole computation.
MEMORY_CHECK_MIN_BYTES = 16 << 20
# Memory limits of the process' cgroup (v2, then v1), read as (limit, usage) file pairs.
_CGROUP_MEMORY_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def normalize_triple(value, name, *, minimum=1, allow_none=False):
    """Return ``value`` (an int or 3 ints) as a tuple of 3 Python ints >= ``minimum``."""
    if value is None and allow_none:
        return None
    # the common cases (an int, a tuple of 3 ints: what PyTorch's modules pass) first,
    # without the checks: a call normalises several of them
    if type(value) is int and value >= minimum:
        return (value,) * 3
    if type(value) is tuple and len(value) == 3:
        a, b, c = value
        if type(a) is type(b) is type(c) is int and min(a, b, c) >= minimum:
            return value
    items = (value,) * 3 if isinstance(value, numbers.Integral) else value
    try:
        # sets and dict views have no order: {3, 1, 2} would silently become (1, 2, 3)
        items = None if isinstance(items, UNORDERED) else tuple(items)
    except TypeError:
        items = None
    if items is None or len(items) != 3 or not all(is_int(v) for v in items):
        raise ValueError(f"`{name}` must be an int or a tuple of 3 ints, got {value!r}.")
    items = tuple(int(v) for v in items)
    if any(v < minimum for v in items):
        raise ValueError(f"`{name}` must be >= {minimum} on every axis, got {value!r}.")
    return items


def normalize_padding(padding, torch_ints=False):
    """Keras' "valid" or "same" (any case); with ``torch_ints``, also PyTorch's padding:
    an int or 3 ints >= 0, returned as a tuple."""
    if isinstance(padding, str) and padding.lower() in PADDINGS:
        return padding.lower()
    if torch_ints and not isinstance(padding, (str, bytes, bytearray)):
        try:
            return normalize_triple(padding, "padding", minimum=0)
        except ValueError:
            pass
    raise ValueError("`padding` must be 'valid' or 'same' (any case)"
                     + (", or PyTorch's: an int or 3 ints >= 0" if torch_ints else "")
                     + f", got {padding!r}.")


def normalize_data_format(data_format):
    if not isinstance(data_format, str) or data_format.lower() not in DATA_FORMATS:
        raise ValueError("`data_format` must be 'channels_last' or 'channels_first', "
                         f"got {data_format!r}.")
    return data_format.lower()


def normalize_num_threads(num_threads):
    """The threads a call runs on: ``None`` (OpenMP's default at call time) or an int >= 1,
    capped and adjusted after ``fork`` as :mod:`tconv3d._threads` explains."""
    if num_threads is not None and (not is_int(num_threads) or num_threads < 1):
        raise ValueError(f"`num_threads` must be None or an int >= 1, got {num_threads!r}.")
    return _threads.resolve(None if num_threads is None else int(num_threads))


def normalize_shape(shape, name):
    """Return ``shape`` (a sequence of ints) as a tuple of Python ints."""
    try:
        items = tuple(shape)
    except TypeError:
        items = None
    if items is None or not all(is_int(n) for n in items):
        raise ValueError(f"`{name}` must be a tuple of ints, got {shape!r}.")
    return tuple(int(n) for n in items)


def is_int(value):
    """Whether ``value`` is an integer (Python or numpy) and not a bool."""
    # a plain int first: the ABC check costs a microsecond, and calls make dozens
    return type(value) is int or (isinstance(value, numbers.Integral)
                                  and not isinstance(value, bool))


def normalize_int(value, name, *, minimum, allow_none=False):
    """``value`` as a Python int >= ``minimum`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        accepted = "None or an int" if allow_none else "an int"
        raise ValueError(f"`{name}` must be {accepted} >= {minimum}, got {value!r}.")
    return int(value)


def normalize_optional_string(value, name):
    """``value`` if it is a string or None."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"`{name}` must be a string or None, got {value!r}.")
    return value


def normalize_float_dtype(dtype):
    """float32 or float64 as a numpy dtype (None: float32); accepts dtype names, numpy
    dtypes and Keras ``DTypePolicy`` objects or configs."""
    if dtype is None:
        return np.dtype("float32")
    if isinstance(dtype, dict):  # a Keras DTypePolicy config
        dtype = (dtype.get("config") or {}).get("name", dtype)
    name = getattr(dtype, "name", dtype)  # Keras DTypePolicy objects
    try:
        dt = np.dtype(name)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        raise ValueError(f"`dtype` must be 'float32' or 'float64' (or None for float32), got "
                         f"{dtype!r}.")
    return dt


def check_output_padding(output_padding, strides, dilation=None):
    """Refuse an ``output_padding`` (None or 3 ints) not smaller than ``strides`` (Keras'
    rule), or with ``dilation`` (PyTorch's padding) than ``max(strides, dilation)``."""
    if output_padding is None:
        return
    limits = strides if dilation is None else tuple(map(max, strides, dilation))
    for axis, (op, limit) in enumerate(zip(output_padding, limits)):
        if op >= limit:
            rule = ("`strides`" if dilation is None
                    else "max(`strides`, `dilation_rate`) (PyTorch's rule)")
            raise ValueError(f"`output_padding` must be smaller than {rule} on every axis, "
                             f"got output_padding={output_padding}, strides={strides}"
                             + ("" if dilation is None else f", dilation_rate={dilation}")
                             + f" (axis {axis}).")


def normalize_optional_shape(value, name, rank):
    """``value`` as a tuple of ``rank`` entries, each None or an int >= 1 (or None)."""
    if value is None:
        return None
    try:
        shape = tuple(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a tuple of {rank} ints or None, got "
                         f"{value!r}.") from None
    if len(shape) != rank or not all(n is None or (is_int(n) and n >= 1) for n in shape):
        raise ValueError(f"`{name}` must be a tuple of {rank} ints >= 1 or None, got "
                         f"{value!r}.")
    return tuple(None if n is None else int(n) for n in shape)


def normalize_batch_input_shape(input_shape, batch_input_shape, batch_size):
    """The 5-entry input shape (batch axis first, None for unknown sizes) that Keras' three
    ways of declaring it describe together, or None when none is given."""
    input_shape = normalize_optional_shape(input_shape, "input_shape", 4)
    batch_input_shape = normalize_optional_shape(batch_input_shape, "batch_input_shape", 5)
    batch_size = normalize_int(batch_size, "batch_size", minimum=1, allow_none=True)
    if input_shape is not None and batch_input_shape is not None \
            and input_shape != batch_input_shape[1:]:
        raise ValueError(f"`input_shape`={input_shape} and `batch_input_shape`="
                         f"{batch_input_shape} disagree; give one of them.")
    if batch_input_shape is None and input_shape is not None:
        batch_input_shape = (None, *input_shape)
    if batch_size is not None:
        if batch_input_shape is None:
            batch_input_shape = (None,) * 5
        if batch_input_shape[0] not in (None, batch_size):
            raise ValueError(f"`batch_size`={batch_size} disagrees with "
                             f"`batch_input_shape`={batch_input_shape}.")
        batch_input_shape = (batch_size, *batch_input_shape[1:])
    return batch_input_shape


def check_5d(array, name, layout):
    """``array`` if it is 5-D, else ValueError naming its expected ``layout`` of axes."""
    if array.ndim != 5:
        raise ValueError(f"`{name}` must be 5-D {layout}, got shape {array.shape}.")
    return array


def keras_padding_from_torch(kernel_size, stride, dilation, padding, output_padding):
    """Keras ``(padding, output_padding)`` equal to PyTorch's on every axis, else ValueError."""
    found = find_keras_padding(kernel_size, stride, dilation, padding, output_padding)
    if found is None:
        raise ValueError(
            f"The torch module's padding={tuple(padding)} and output_padding="
            f"{tuple(output_padding)} (kernel_size={tuple(kernel_size)}, stride="
            f"{tuple(stride)}, dilation={tuple(dilation)}) have no Keras equivalent: Keras "
            "crops either nothing ('valid', torch padding 0) or the 'same' amount (torch "
            "padding (dilation * (kernel - 1) + 1) // 2 with output_padding 0, or a smaller "
            "padding balanced by an even Keras output_padding), with Keras' output_padding < "
            "stride.")
    return found


def torch_padding_from_keras(kernel_size, stride, dilation, padding, output_padding):
    """PyTorch ``(padding, output_padding)`` equal to the Keras setting, else ValueError."""
    ops = output_padding or (None,) * 3
    torch_padding, torch_output_padding = [], []
    for axis, (k, s, d, op) in enumerate(zip(kernel_size, stride, dilation, ops)):
        p, top, surplus = torch_window(keras_trim(k, s, d, padding, op))
        if surplus or top >= max(s, d):
            raise ValueError(
                f"padding={padding!r} with output_padding={output_padding}, kernel_size="
                f"{tuple(kernel_size)}, strides={tuple(stride)}, dilation_rate="
                f"{tuple(dilation)} crops the output asymmetrically on axis {axis}, which "
                "torch's ConvTranspose3d (symmetric padding, output_padding < max(stride, "
                "dilation)) cannot express. Use padding='valid', or a kernel/stride with an "
                "even difference (or an even output_padding) for 'same'.")
        torch_padding.append(p)
        torch_output_padding.append(top)
    return tuple(torch_padding), tuple(torch_output_padding)


def make_geometry(input_shape, kernel_shape, strides, padding, output_padding,
                  dilation_rate, data_format, groups=1):
    """Validate every shape argument and return the :class:`Geometry` of the call."""
    input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
    data_format = normalize_data_format(data_format)
    padding = normalize_padding(padding, torch_ints=True)
    strides = normalize_triple(strides, "strides")
    dilation = normalize_triple(dilation_rate, "dilation_rate")
    output_padding = normalize_triple(output_padding, "output_padding", minimum=0,
                                      allow_none=True)
    for name, values in (("strides", strides), ("dilation_rate", dilation)):
        if max(values) > MAX_AXIS_LENGTH:   # the kernels take it as an index
            raise ValueError(
                f"`{name}` {values}: more than the {MAX_AXIS_LENGTH} a 64-bit index can "
                "safely address, even on an axis where it has no effect (one input voxel, "
                "one tap). Use smaller `strides` or `dilation_rate`.")
    layout = ("(batch, depth, height, width, channels)" if data_format == "channels_last"
              else "(batch, channels, depth, height, width)")
    if len(input_shape) != 5:
        raise ValueError(f"`x` must be 5-D {layout} for data_format={data_format!r}, "
                         f"got shape {input_shape}.")
    if len(kernel_shape) != 5:
        raise ValueError("`kernel` must be 5-D (kernel_depth, kernel_height, kernel_width, "
                         f"filters, in_channels), got shape {kernel_shape}.")
    if any(int(n) < 1 for n in input_shape):
        raise ValueError(f"`x` must have sizes >= 1 on every axis, got shape {input_shape}.")
    if any(int(n) < 1 for n in kernel_shape):
        raise ValueError(f"`kernel` must have sizes >= 1 on every axis, got shape {kernel_shape}.")
    channels_last = data_format == "channels_last"
    if channels_last:
        batch, *in_spatial, in_channels = input_shape
    else:
        batch, in_channels, *in_spatial = input_shape
    *kernel_spatial, filters, kernel_in = kernel_shape
    if kernel_in != in_channels:
        raise ValueError(f"`kernel` expects {kernel_in} input channels (its last axis) but `x` "
                         f"has {in_channels} channels (shape {input_shape}, "
                         f"data_format={data_format!r}).")
    groups = normalize_int(groups, "groups", minimum=1)
    if in_channels % groups:
        raise ValueError(f"`groups`={groups} must divide the {in_channels} input channels.")
    torch_padding = not isinstance(padding, str)
    check_output_padding(output_padding, strides, dilation if torch_padding else None)
    ops = output_padding if output_padding is not None else (None,) * 3
    pads = padding if torch_padding else (padding,) * 3
    out, crop = [], []
    for n, k, s, d, op, pad in zip(in_spatial, kernel_spatial, strides, dilation, ops, pads):
        full, o, c = axis_geometry(n, k, s, d, pad, op)
        if o < 1:
            raise ValueError(
                f"These arguments give an output of length {o} on a spatial axis: input length "
                f"{n}, kernel {k}, stride {s}, dilation {d}, padding {padding!r}, output_padding "
                f"{op}. Use a longer input, padding='valid' or a larger output_padding.")
        if full > MAX_AXIS_LENGTH or o > MAX_AXIS_LENGTH:
            raise ValueError(
                f"These arguments give a spatial axis of length {max(full, o)} (input length "
                f"{n}, kernel {k}, stride {s}, dilation {d}): more than the {MAX_AXIS_LENGTH} "
                f"a 64-bit index can safely address. Use smaller `strides` or `dilation_rate`.")
        out.append(o)
        crop.append(c)
    return Geometry(int(batch), int(in_channels), int(filters) * groups,
                    tuple(map(int, in_spatial)), tuple(map(int, kernel_spatial)),
                    strides, dilation, tuple(out), tuple(crop), channels_last, groups)


def is_bfloat16(dtype):
    """Whether ``dtype`` is ``ml_dtypes.bfloat16`` (recognised by name: no import)."""
    return dtype.kind == "V" and dtype.name == "bfloat16"   # .name is slow to build


def working_dtype(*arrays, weak=()):
    """The dtype a call returns in, from its operands ``(name, array)``.

    NumPy's promotion of the operands' dtypes (``np.result_type``), then: float32 and
    float64 stay; float16 computes in float32; bool and integers alone compute in float64;
    bfloat16 (``ml_dtypes.bfloat16``, alone or with bool and 8-bit integers) stays, and is
    computed in float32 (:func:`compute_dtype`).
    So uint8 with float32 gives float32 and int64 with float32 float64, as in NumPy.
    Operands named in ``weak`` (given as Python lists, tuples or scalars, which have no
    dtype) do not take part, as NumPy 2 treats Python scalars: a list bias keeps a float32
    call float32. Complex, object, string and other dtypes raise ``TypeError``.
    """
    for name, a in arrays:
        if a.dtype.kind not in "biuf" and not is_bfloat16(a.dtype):
            raise TypeError(f"`{name}` must hold real numbers (float32, float64 or "
                            f"bfloat16), got dtype {a.dtype}.")
    typed = [a.dtype for name, a in arrays if name not in weak]
    try:
        dtype = np.result_type(*typed) if typed else np.dtype(np.float64)
    except TypeError:   # e.g. bfloat16 with float16 or int64: no common dtype
        names = ", ".join(f"`{name}` {a.dtype}" for name, a in arrays if name not in weak)
        raise TypeError(f"The operands have no common dtype ({names}): cast them to one "
                        f"of float32, float64 or bfloat16.") from None
    if is_bfloat16(dtype):
        return dtype
    # by kind and size, so that byte-swapped float32 (">f4" here) also stays float32
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def compute_dtype(dtype):
    """The dtype the kernels compute a call of result dtype ``dtype`` in: bfloat16
    operands are widened (exactly) to float32, which also accumulates."""
    return np.dtype(np.float32) if is_bfloat16(dtype) else dtype


def normalize_out_dtype(out_dtype, dtype):
    """The result dtype of a call whose operands give ``dtype``: ``dtype`` itself, or
    float32 instead of bfloat16 (the float32 sums, before their rounding)."""
    if out_dtype is None:
        return dtype
    try:
        wanted = np.dtype(out_dtype)
    except TypeError:
        wanted = None
    if wanted == dtype or (wanted == np.float32 and is_bfloat16(dtype)):
        return wanted
    allowed = "None or 'float32'" if is_bfloat16(dtype) else f"None or {dtype.name!r}"
    raise ValueError(f"`out_dtype` must be {allowed} for operands computing in "
                     f"{dtype.name}, got {out_dtype!r}.")


def without_dtype(*named):
    """Names of the operands ``(name, value)`` given without a dtype (lists, scalars)."""
    return {name for name, value in named if not hasattr(value, "dtype")}


def normalize_bool(value, name):
    """``value`` as a bool; only True, False and numpy bools are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def as_array(value, name):
    """View ``value`` as an ndarray without copying, with a clear error for non-arrays."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"`{name}` is a masked array, whose mask the computation would ignore "
                        f"(masked values would flow into the result): pass "
                        f"`np.ma.filled({name}, fill_value)` or `{name}.data` explicitly.")
    try:
        return np.asarray(value)
    except Exception as exc:  # e.g. ragged nested lists
        raise TypeError(f"`{name}` must be array-like, got {type(value).__name__}: {exc}") from None


def check_allocation(shape, dtype, name, *, copy=False):
    """Refuse, before any work, an array too large to index or to fit in memory.

    ``copy=True`` words the message for a working copy of the argument ``name``.
    """
    count = 1
    for n in shape:
        count *= int(n)
    nbytes = count * np.dtype(dtype).itemsize
    if count <= _INTP_MAX and nbytes < MEMORY_CHECK_MIN_BYTES:
        return   # (before the message: formatting a dtype costs more than the check)
    what = f"A {np.dtype(dtype)} copy of `{name}`" if copy else f"`{name}`"
    if count > _INTP_MAX or nbytes > _INTP_MAX:
        raise ValueError(f"{what} of shape {tuple(shape)} has {count} elements ({nbytes} bytes "
                         f"of {np.dtype(dtype)}), more than a 64-bit index can address.")
    available = _available_memory()
    if available is not None and nbytes > available:
        raise MemoryError(f"{what} of shape {tuple(shape)} and dtype {np.dtype(dtype)} needs "
                          f"{_format_bytes(nbytes)}, more than the {_format_bytes(available)} "
                          f"of memory available.")


def _format_bytes(n):
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _available_memory():
    """Memory currently available, in bytes (None where it cannot be read).

    The smaller of the machine's available memory and the headroom left under the memory
    limit of the process' cgroup (containers), which is what the OOM killer enforces.
    """
    candidates = [_machine_available_memory(), _cgroup_memory_headroom()]
    candidates = [c for c in candidates if c is not None]
    return min(candidates) if candidates else None


def _machine_available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_memory_headroom():
    """``limit - usage`` of the first cgroup memory controller found; None if unlimited."""
    for limit_path, usage_path in _CGROUP_MEMORY_FILES:
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max":
            return None
        try:
            limit = int(limit)
        except ValueError:
            continue
        if limit >= 2**62:  # cgroup v1 spells "unlimited" as a huge page-rounded number
            return None
        return max(limit - usage, 0)
    return None


# Activations the compiled forward applies to its output (conv_transpose3d's
# ``activation``): name -> its parameters and their defaults (Keras'); "swish" is "silu".
FUSABLE_ACTIVATIONS = {"linear": {}, "relu": {}, "leaky_relu": {"negative_slope": 0.2},
                       "sigmoid": {}, "tanh": {}, "gelu": {"approximate": False},
                       "silu": {}, "swish": {}}
# Those whose derivative is a function of their output (conv_transpose3d_backward).
FROM_OUTPUT = ("linear", "relu", "leaky_relu", "sigmoid", "tanh")


def normalize_activation(activation):
    """``activation`` as ``(name, alpha)`` for the compiled kernels: None, a name of
    FUSABLE_ACTIVATIONS with Keras' defaults, or an activation object with ``name`` and
    ``params`` (:class:`tconv3d.activations.Activation`) naming one with those parameters.
    ``alpha`` is leaky_relu's slope; gelu with ``approximate=True`` is ``"gelu_tanh"``."""
    if activation is None:
        return "linear", 0.0
    if isinstance(activation, str):
        name, params = activation, {}
    elif isinstance(getattr(activation, "name", None), str) \
            and isinstance(getattr(activation, "params", None), dict):
        name, params = activation.name, dict(activation.params)
    else:
        raise TypeError(f"`activation` must be None, a name or a tconv3d.activations."
                        f"Activation, got {type(activation).__name__}: {activation!r}.")
    fusable = sorted(FUSABLE_ACTIVATIONS)
    if name not in FUSABLE_ACTIVATIONS:
        raise ValueError(f"`activation` {name!r} is not one the compiled forward applies "
                         f"({', '.join(fusable)}); apply it to the result instead.")
    unknown = sorted(set(params) - set(FUSABLE_ACTIVATIONS[name]))
    if unknown:
        raise ValueError(f"`activation` {name!r} with {', '.join(unknown)} is not one the "
                         f"compiled forward applies (it takes {name} with "
                         f"{sorted(FUSABLE_ACTIVATIONS[name]) or 'no parameters'}); apply it "
                         "to the result instead.")
    values = {**FUSABLE_ACTIVATIONS[name], **params}
    alpha = 0.0
    if name == "leaky_relu":
        alpha = values["negative_slope"]
        if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
                and np.isfinite(alpha)):
            raise ValueError(f"leaky_relu's `negative_slope` must be a finite number, got "
                             f"{alpha!r}.")
    if name == "gelu" and values["approximate"]:
        name = "gelu_tanh"
    return ("silu" if name == "swish" else name), float(alpha)


def normalize_compute(compute):
    if isinstance(compute, str):
        compute = (compute,)
    try:
        compute = tuple(compute)
    except TypeError:
        compute = None
    if compute is None or any(c not in GRADIENTS for c in compute):
        raise ValueError(f"`compute` must be a subset of {GRADIENTS}, got {compute!r}.")
    return frozenset(compute)


def check_out(out, name, shape, dtype, inputs, *, contiguous=False):
    """Refuse an ``out=`` buffer the call cannot write its result into.

    ``out`` must be a writeable ndarray of exactly ``shape`` and ``dtype`` (the call's:
    no casting), with aligned, non-overlapping element strides (C-contiguous if
    ``contiguous``), sharing no memory with the ``inputs`` ``(name, array)``: the kernels
    read the inputs while they write ``out``.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray, got {type(out).__name__}.")
    if out.shape != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {out.shape}.")
    if out.dtype != dtype:
        raise TypeError(f"`{name}` must have dtype {np.dtype(dtype)} (the dtype the call "
                        f"computes in), got {out.dtype}.")
    if not out.flags.writeable:
        raise ValueError(f"`{name}` is read-only.")
    overlapping = any(s == 0 and n > 1 for s, n in zip(out.strides, out.shape))
    if not out.flags.aligned or any(s % out.itemsize for s in out.strides) or overlapping \
            or (contiguous and not out.flags.c_contiguous):
        need = "C-contiguous" if contiguous else "aligned, with a distinct element per index"
        raise ValueError(f"`{name}` must be {need}, got strides {out.strides}.")
    for input_name, a in inputs:
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            try:
                shared = np.shares_memory(out, a, max_work=10**6)
            except np.exceptions.TooHardError if hasattr(np, "exceptions") else Exception:
                shared = True
            if shared:
                raise ValueError(f"`{name}` shares memory with `{input_name}`, which the "
                                 "call reads while it writes: pass a separate buffer.")
    return out


def check_bias_shape(bias, filters):
    """Refuse a bias that is not one value per filter."""
    if bias.shape != (filters,):
        raise ValueError(f"`bias` must have shape ({filters},) (the kernel's filters), "
                         f"got {bias.shape}.")


def gradient_buffers(out, geom, dtype, compute, use_bias, inputs):
    """The checked ``out=`` buffers of the backward, None where a new array is made."""
    if out is None:
        return None, None, None
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("`out` must be a tuple (grad_input, grad_kernel, grad_bias) of arrays "
                        f"or None, got {type(out).__name__}.")
    wanted = (("input", "out[0] (grad_input)", geom.input_shape, False),
              ("kernel", "out[1] (grad_kernel)", geom.kernel_shape, True),
              ("bias", "out[2] (grad_bias)", (geom.filters,), True))
    buffers = []
    for buffer, (gradient, name, shape, contiguous) in zip(out, wanted):
        computed = gradient in compute and (gradient != "bias" or use_bias)
        if buffer is not None and computed:
            check_out(buffer, name, shape, dtype, inputs, contiguous=contiguous)
        buffers.append(buffer if computed else None)
    checked = [b for b in buffers if b is not None]
    for i, a in enumerate(checked):   # three gradients, three separate buffers
        if any(np.may_share_memory(a, b) for b in checked[i + 1:]):
            raise ValueError("`out` buffers must not share memory with each other.")
    return tuple(buffers)
