"""Fuzz harness for the argument parsing and the compiled entry points of tconv3d.

Random calls of ``conv_transpose3d``, ``conv_transpose3d_backward`` and
``conv_transpose3d_output_shape``: valid problems with zero, one or two arguments replaced
by something wrong (garbage types, wrong lengths, bools, huge or negative integers, odd
dtypes and memory layouts, zero-strided views of huge shapes). Each call must

- raise nothing but ``ValueError``, ``TypeError`` or ``MemoryError`` (no crash, no hang, no
  ``OverflowError`` or ``IndexError`` from deep inside), and
- when it succeeds, return the oracle's numbers, shape and dtype, and
- never modify an input array.

The oracle works for any geometry (strides and dilations past 2**31 included): each axis is
a 0/1 matrix ``T[o, i, j] = (i*s + j*d - crop == o)``, and the transposed convolution is
one ``einsum`` of the three matrices with ``x`` and the kernel.

How to run
----------
Short run, part of the test suite (a few seconds)::

    pytest tests/test_fuzz.py

Longer: random inputs for N seconds (Hypothesis driven by random bytes), with a summary of
the outcomes at the end; a crash kills the process with a faulthandler traceback::

    python tests/fuzz/fuzz_api.py --seconds 600

Coverage-guided, with atheris (``pip install atheris``); libFuzzer options after the
flag, e.g. ``-max_total_time=3600 -jobs=2``::

    python tests/fuzz/fuzz_api.py --atheris -max_total_time=600

More examples through pytest: ``TCONV3D_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py``.
"""
import argparse
import collections
import faulthandler
import numbers
import os
import sys
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

import tconv3d  # noqa: E402
from reference import output_length  # noqa: E402

ALLOWED = (ValueError, TypeError, MemoryError)
# Valid geometries with outputs between these sizes (elements) are replaced by small ones:
# above MAX_COMPUTED a call is slow to run and to check, and below MIN_REFUSED it would be
# allocated (no MemoryError), so the fuzz would spend its time computing.
MAX_COMPUTED = 2**20
MIN_REFUSED = 2**45
OUTCOMES = collections.Counter()   # what the calls did, for the long run's summary
FLOAT_DTYPES = (np.float32, np.float64)
EXOTIC_DTYPES = (np.float16, np.int8, np.int32, np.int64, np.uint16, np.bool_, np.longdouble,
                 np.dtype(">f4"), np.dtype(">f8"))
BAD_DTYPES = (np.complex64, np.complex128, object, "U2", "S2", "M8[s]", "m8[ms]", "f8,f8",
              "V8")

# ------------------------------------------------------------------------ strategies

GARBAGE = st.one_of(
    st.none(), st.booleans(), st.text(max_size=4), st.binary(max_size=4),
    st.floats(allow_nan=True, allow_infinity=True), st.complex_numbers(),
    st.sampled_from([object(), Ellipsis, slice(2), np.float64(2.0), np.bool_(True),
                     np.array([1, 2, 3]), np.array(2), np.array([[1, 1, 1]]), [1, [2], 3],
                     (1.0, 2, 3), {"a": 1}, {1, 2, 3}, range(3), b"\x00", 2 + 0j]),
    st.lists(st.integers(-2, 3), max_size=5),
)
# Huge values are past what two axes can allocate (2**20 * 2**20 voxels), so a call
# either refuses them or computes a small output.
SPECIAL_INTS = st.sampled_from([0, -1, -2**63, 2**20, 2**31 - 1, 2**31, 2**32 + 1, 2**61,
                                2**62, 2**63 - 1, 2**63, 2**64, 10**30])
INTS = st.one_of(st.integers(-1, 4), st.integers(1, 3), SPECIAL_INTS,
                 st.integers(1, 3).map(np.int32), st.integers(0, 2).map(np.uint8))


def triple_like(valid):
    """A valid value (int or 3-sequence) or anything else."""
    return st.one_of(
        st.just(valid),
        INTS,
        st.tuples(INTS, INTS, INTS),
        st.lists(st.one_of(INTS, GARBAGE), max_size=5).map(tuple),
        GARBAGE,
    )


def _huge_view(dtype, shape):
    return np.broadcast_to(np.zeros((), dtype), shape)


@st.composite
def laid_out(draw, a):
    """``a``'s values in a random memory layout."""
    kind = draw(st.sampled_from(["c", "c", "fortran", "negative", "strided", "permuted",
                                 "unaligned", "readonly", "list"]))
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative" and a.ndim:
        axes = tuple(draw(st.sets(st.integers(0, a.ndim - 1), min_size=1)))
        return np.flip(np.ascontiguousarray(np.flip(a, axes)), axes)
    if kind == "strided" and a.ndim:
        axis = draw(st.integers(0, a.ndim - 1))
        big = np.repeat(a, 2, axis=axis)
        return big[(slice(None),) * axis + (slice(None, None, 2),)]
    if kind == "permuted" and a.ndim:
        perm = draw(st.permutations(range(a.ndim)))
        return np.ascontiguousarray(a.transpose(perm)).transpose(np.argsort(perm))
    if kind == "unaligned" and a.dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        v = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
        v[...] = a
        return v
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if kind == "list" and a.dtype.kind in "fiub" and a.size < 200:
        return a.tolist()
    return np.ascontiguousarray(a)


@st.composite
def array_like(draw, shape, dtype, rng, wild=True):
    """An array of ``shape`` (values from ``rng``) in a random layout and real dtype, or
    (``wild``) possibly something wrong in its place."""
    kinds = ["ok"] * 3 + ["dtype"]
    if wild:
        kinds += ["bad_dtype", "shape", "huge", "garbage"]
    what = draw(st.sampled_from(kinds))
    if what == "garbage":
        return draw(GARBAGE)
    if what == "dtype":
        dtype = draw(st.sampled_from(EXOTIC_DTYPES))
    if what == "shape":
        ndim = draw(st.integers(0, 6))
        shape = tuple(draw(st.integers(0, 3)) for _ in range(ndim))
    if what == "huge":  # every spatial-ish axis huge: never allocatable
        shape = tuple(draw(st.sampled_from([2**14, 2**15, 2**16])) if 1 <= ax <= 3 else n
                      for ax, n in enumerate(shape))
        return _huge_view(draw(st.sampled_from(FLOAT_DTYPES + EXOTIC_DTYPES[:2])), shape)
    values = rng.integers(-3, 4, shape) if np.dtype(dtype).kind in "iub" \
        else rng.standard_normal(shape)
    if what == "bad_dtype":
        bad = draw(st.sampled_from(BAD_DTYPES))
        try:
            return np.zeros(shape, bad)
        except (TypeError, ValueError):
            return np.zeros(shape, object)
    with np.errstate(invalid="ignore", over="ignore"):
        a = values.astype(dtype)
    return draw(laid_out(a))


def _output_shape(xshape, kshape, kw):
    try:
        return tconv3d.conv_transpose3d_output_shape(xshape, kshape, **kw)
    except (ValueError, TypeError):
        return None


@st.composite
def calls(draw):
    """(function name, kwargs) of one call: a valid one (any layout and real dtype) half of
    the time, else one with some arguments replaced by anything."""
    wild = draw(st.booleans())

    def pick(valid, anything):
        """``valid``, or (wild calls, one time in three) a draw from ``anything``."""
        if wild and not draw(st.integers(0, 2)):
            return draw(anything)
        return valid

    fmt = draw(st.sampled_from(["channels_last", "channels_first"]))
    batch, cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(3))
    ksp = tuple(draw(st.integers(1, 3)) for _ in range(3))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(3))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    output_padding = draw(st.one_of(st.none(), st.tuples(*(st.integers(0, s - 1)
                                                           for s in strides))))
    xshape = (batch, *spatial, cin) if fmt == "channels_last" else (batch, cin, *spatial)
    kshape = (*ksp, cout, cin)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kw = dict(
        strides=pick(strides, triple_like(strides)),
        padding=pick(draw(st.sampled_from(["valid", "same", "SAME", "Valid"])),
                     st.one_of(st.sampled_from(["full", "", " same", "causal"]), GARBAGE)),
        output_padding=pick(output_padding, triple_like(output_padding)),
        dilation_rate=pick(dilation, triple_like(dilation)),
        data_format=pick(draw(st.sampled_from([fmt, fmt.upper()])),
                         st.one_of(st.sampled_from(["NDHWC", "channels-last"]), GARBAGE)),
    )
    out_shape = _output_shape(xshape, kshape, kw)
    if out_shape is not None and MAX_COMPUTED < np.prod(out_shape, dtype=object) < MIN_REFUSED:
        # Valid, allocatable, but slow to compute and to check: use the small geometry.
        kw.update(strides=strides, dilation_rate=dilation, output_padding=output_padding)
        out_shape = _output_shape(xshape, kshape, kw)
    function = draw(st.sampled_from(["forward", "backward", "output_shape"]))
    if function == "output_shape":
        kw["input_shape"] = pick(xshape, st.one_of(st.just(xshape[:4]), GARBAGE,
                                                   st.tuples(*(INTS,) * 5)))
        kw["kernel_shape"] = pick(kshape, st.one_of(GARBAGE, st.tuples(*(INTS,) * 5)))
        return function, kw
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    kw["x"] = draw(array_like(xshape, dtype, rng, wild))
    kw["kernel"] = draw(array_like(kshape, draw(st.sampled_from([dtype, dtype, np.float64])),
                                   rng, wild))
    kw["num_threads"] = pick(draw(st.sampled_from([None, 1, 2, 3])), st.one_of(INTS, GARBAGE))
    if function == "forward":
        kw["bias"] = draw(st.one_of(st.none(), array_like((cout,), dtype, rng, wild)))
        return function, kw
    gshape = out_shape if out_shape is not None else tuple(n + 1 for n in xshape)
    if np.prod(gshape, dtype=object) > MAX_COMPUTED:  # refused anyway: do not fill it
        kw["grad_output"] = _huge_view(dtype, gshape) if np.prod(gshape, dtype=object) < 2**59 \
            else np.zeros(xshape, dtype)
    else:
        kw["grad_output"] = draw(array_like(gshape, dtype, rng, wild))
    kw["compute"] = pick(draw(st.sets(st.sampled_from(["input", "kernel", "bias"]))
                              .map(tuple)),
                         st.one_of(st.sampled_from(["input", "all", None, ("input", "weights"),
                                                    ["kernel"], "bias"]), GARBAGE))
    kw["use_bias"] = pick(draw(st.booleans()), st.one_of(GARBAGE, st.just(np.bool_(False))))
    return function, kw


# ---------------------------------------------------------------------------- oracle


def _triple(v):
    return (int(v),) * 3 if isinstance(v, numbers.Integral) else tuple(int(a) for a in v)


def _axis_maps(in_sp, k_sp, kw):
    """Per axis, ``T[o, i, j] = 1`` where input ``i`` and tap ``j`` land on output ``o``."""
    s, d = _triple(kw["strides"]), _triple(kw["dilation_rate"])
    ops = (None,) * 3 if kw["output_padding"] is None else _triple(kw["output_padding"])
    # PyTorch's integer padding (a wild draw such as range(3) is one): p cut on each side
    pads = (None,) * 3 if isinstance(kw["padding"], str) else _triple(kw["padding"])
    maps = []
    for n, k, s_, d_, op, p in zip(in_sp, k_sp, s, d, ops, pads):
        full = (n - 1) * s_ + (k - 1) * d_ + 1
        if p is None:
            out = output_length(n, k, s_, d_, kw["padding"].lower(), op)
            crop = max(0, (full - out) // 2)
        else:
            out, crop = full - 2 * p + (op or 0), p
        t = np.zeros((out, n, k))
        for i in range(n):
            for j in range(k):
                o = i * s_ + j * d_ - crop
                if 0 <= o < out:
                    t[o, i, j] = 1.0
        maps.append(t)
    return maps


def _logical(a, channels_first):
    a = np.asarray(a, dtype=np.float64)
    return np.moveaxis(a, 1, -1) if channels_first else a


def oracle_forward(x, kernel, bias, kw):
    first = kw["data_format"].lower() == "channels_first"
    x, w = _logical(x, first), np.asarray(kernel, dtype=np.float64)
    t0, t1, t2 = _axis_maps(x.shape[1:4], w.shape[:3], kw)
    y = np.einsum("aij,bkl,cmn,zikmq,jlnfq->zabcf", t0, t1, t2, x, w, optimize=True)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return np.moveaxis(y, -1, 1) if first else y


def oracle_backward(g, x, kernel, kw):
    first = kw["data_format"].lower() == "channels_first"
    g, x = _logical(g, first), _logical(x, first)
    w = np.asarray(kernel, dtype=np.float64)
    t0, t1, t2 = _axis_maps(x.shape[1:4], w.shape[:3], kw)
    gx = np.einsum("aij,bkl,cmn,zabcf,jlnfq->zikmq", t0, t1, t2, g, w, optimize=True)
    gw = np.einsum("aij,bkl,cmn,zabcf,zikmq->jlnfq", t0, t1, t2, g, x, optimize=True)
    gb = g.sum(axis=(0, 1, 2, 3))
    return (np.moveaxis(gx, -1, 1) if first else gx), gw, gb


def _expected_dtype(*arrays):
    """The documented rule: NumPy's promotion of the operands that have a dtype (lists
    do not widen it); a float of 4 bytes or fewer (any byte order) gives float32,
    anything else (8-byte floats, integers or bool alone) float64."""
    typed = [a.dtype for a in arrays if hasattr(a, "dtype")]
    dtype = np.result_type(*typed) if typed else np.dtype(np.float64)
    return np.float32 if dtype.kind == "f" and dtype.itemsize <= 4 else np.float64


def _assert_close(got, want, dtype, name):
    assert got is not None and got.dtype == dtype, (name, None if got is None else got.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    rtol, atol = (1e-4, 1e-5) if dtype == np.float32 else (1e-10, 1e-12)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=name)


# ------------------------------------------------------------------------- the check


def _memory(a):
    """The array that owns ``a``'s memory (a zero-strided view's owner is one element)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _snapshots(kw):
    return {k: (_memory(v), _memory(v).tobytes()) for k, v in kw.items()
            if isinstance(v, np.ndarray)}


def check_call(function, kw):
    """Call, then check the outcome as the module docstring says."""
    before = _snapshots(kw)
    f = {"forward": tconv3d.conv_transpose3d, "backward": tconv3d.conv_transpose3d_backward,
         "output_shape": tconv3d.conv_transpose3d_output_shape}[function]
    try:
        result = f(**kw)
    except ALLOWED as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        OUTCOMES[f"{function}: {type(exc).__name__}"] += 1
        result = None
    except Exception as exc:
        raise AssertionError(f"{function} raised {type(exc).__name__}: {exc}") from exc
    for name, (a, data) in before.items():
        assert a.tobytes() == data, f"{function} modified `{name}`"
    if result is None:
        return
    OUTCOMES[f"{function}: ok"] += 1
    if function == "output_shape":
        assert len(result) == 5 and all(type(n) is int and n >= 1 for n in result)
        return
    if function == "forward":
        dtype = _expected_dtype(kw["x"], kw["kernel"],
                                *(() if kw["bias"] is None else (kw["bias"],)))
        _assert_close(result, oracle_forward(kw["x"], kw["kernel"], kw["bias"], kw), dtype,
                      "forward")
        return
    dtype = _expected_dtype(kw["x"], kw["kernel"], kw["grad_output"])
    want = oracle_backward(kw["grad_output"], kw["x"], kw["kernel"], kw)
    compute = (kw["compute"],) if isinstance(kw["compute"], str) else tuple(kw["compute"])
    for name, got, w in zip(("input", "kernel", "bias"), result, want):
        if name in compute and (name != "bias" or kw["use_bias"]):
            _assert_close(got, w, dtype, f"grad_{name}")
        else:
            assert got is None, name


FUZZ_SETTINGS = settings(
    deadline=None, database=None, print_blob=True,
    max_examples=int(os.environ.get("TCONV3D_FUZZ_EXAMPLES", "500")),
    suppress_health_check=list(HealthCheck),
)


@FUZZ_SETTINGS
@given(call=calls())
def fuzz_api(call):
    check_call(*call)


# --------------------------------------------------------------------------- runners


def run_for(seconds, seed=None, report_every=60.0):
    """Feed random bytes to the harness for ``seconds``; returns the number of calls."""
    rng = np.random.default_rng(seed)
    fuzz_one = fuzz_api.hypothesis.fuzz_one_input
    start = last = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        fuzz_one(rng.bytes(int(rng.integers(64, 4096))))
        n += 1
        if time.monotonic() - last >= report_every:
            last = time.monotonic()
            print(f"[{last - start:6.0f} s] {n} inputs", flush=True)
    return n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--atheris", action="store_true",
                        help="coverage-guided fuzzing with atheris; remaining arguments go "
                             "to libFuzzer")
    args, rest = parser.parse_known_args(argv)
    faulthandler.enable()
    if args.atheris:
        import atheris
        atheris.instrument_all()
        atheris.Setup([sys.argv[0], *rest], fuzz_api.hypothesis.fuzz_one_input)
        atheris.Fuzz()
        return 0
    print(f"tconv3d {tconv3d.__version__}, numpy {np.__version__}: fuzzing the API for "
          f"{args.seconds:.0f} s (seed {args.seed})", flush=True)
    t0 = time.monotonic()
    n = run_for(args.seconds, args.seed)
    elapsed = time.monotonic() - t0
    print(f"done: {n} random inputs in {elapsed:.0f} s ({n / elapsed:.0f}/s), no crash, no "
          f"unexpected exception, every result equal to the oracle. Outcomes:")
    for key, count in sorted(OUTCOMES.items()):
        print(f"  {key:35s} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
