"""Threads: results do not depend on the thread count or the run, concurrent calls from many
Python threads are independent, and the GIL is released while the compiled loops run."""
import threading
import time

import numpy as np
import pytest

import tconv3d
from tconv3d import _ops, _threads
from helpers import random_problem, tol
from reference import conv_transpose3d_backward_ref, conv_transpose3d_ref

FORMATS = ["channels_last", "channels_first"]


@pytest.fixture
def every_thread(monkeypatch):
    """Use every thread asked for, however small the problem.

    By default a call runs on at most one thread per ``_threads.MIN_WORK_PER_THREAD``
    multiply-adds, so the small problems here would otherwise never be split, and on at
    most ``_threads.THREADS_PER_CORE`` threads per core.
    """
    monkeypatch.setattr(_threads, "MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(_threads, "THREADS_PER_CORE", 64)

# Odd sizes; strides, dilation and output padding differ per axis, so every branch of the
# phase and crop arithmetic runs. Rows (batch * depth * height) are many more than 8, so
# each thread count partitions the work differently.
DETERMINISM_CASES = [
    dict(spatial=(7, 11, 13), kernel=(3, 3, 3), strides=2, padding="same", output_padding=None,
         dilation_rate=1),
    dict(spatial=(5, 7, 6), kernel=(3, 2, 4), strides=(1, 2, 3), padding="valid",
         output_padding=(0, 1, 2), dilation_rate=(2, 1, 2)),
]


def _problem(rng, case, fmt, dtype, batch=3, cin=5, cout=7):
    x, w, b = random_problem(rng, batch=batch, spatial=case["spatial"], cin=cin, cout=cout,
                             kernel=case["kernel"], data_format=fmt, dtype=dtype)
    kwargs = {k: case[k] for k in ("strides", "padding", "output_padding", "dilation_rate")}
    kwargs["data_format"] = fmt
    shape = tconv3d.conv_transpose3d_output_shape(x.shape, w.shape, **kwargs)
    g = rng.standard_normal(shape).astype(dtype)
    return x, w, b, g, kwargs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", range(len(DETERMINISM_CASES)))
def test_bitwise_identical_for_any_thread_count_and_run(rng, every_thread, case, fmt, dtype):
    x, w, b, g, kwargs = _problem(rng, DETERMINISM_CASES[case], fmt, dtype)
    first = None
    for num_threads in [1, 2, 3, 4, 5, 6, 7, 8, 1, 8]:  # the last two: run-to-run
        y = tconv3d.conv_transpose3d(x, w, b, num_threads=num_threads, **kwargs)
        grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=num_threads, **kwargs)
        bits = [a.tobytes() for a in (y, *grads)]
        if first is None:
            first = bits
            # Identical to each other is only worth something if also right.
            np.testing.assert_allclose(y, conv_transpose3d_ref(x, w, b, **kwargs),
                                       **tol(dtype))
            continue
        for name, got, want in zip(("forward", "grad_input", "grad_kernel", "grad_bias"),
                                   bits, first):
            assert got == want, f"{name} differs with num_threads={num_threads}"


def test_bitwise_identical_under_threadpoolctl(rng, every_thread):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x, w, b, g, kwargs = _problem(rng, DETERMINISM_CASES[0], "channels_last", np.float32)
    y = tconv3d.conv_transpose3d(x, w, b, num_threads=1, **kwargs)
    grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=1, **kwargs)
    for limit in (1, 2, 5):
        with threadpoolctl.threadpool_limits(limits=limit, user_api="openmp"):
            assert tconv3d.conv_transpose3d(x, w, b, **kwargs).tobytes() == y.tobytes()
            for got, want in zip(tconv3d.conv_transpose3d_backward(g, x, w, **kwargs), grads):
                assert got.tobytes() == want.tobytes()


# ------------------------------------------------------------------- thread safety


def _thread_jobs(n_jobs):
    """Different problems (shapes, geometry, dtype, format) with their serial results."""
    rng = np.random.default_rng(7)
    jobs = []
    for i in range(n_jobs):
        fmt = FORMATS[i % 2]
        dtype = (np.float32, np.float64)[(i // 2) % 2]
        case = dict(spatial=(3 + i % 3, 4 + i % 2, 5), kernel=(1 + i % 3, 2, 3),
                    strides=1 + i % 3, padding=("valid", "same")[i % 2], output_padding=None,
                    dilation_rate=1 + (i // 4))
        x, w, b, g, kwargs = _problem(rng, case, fmt, dtype, batch=1 + i % 2, cin=1 + i % 4,
                                      cout=2 + i % 3)
        y = tconv3d.conv_transpose3d(x, w, b, num_threads=1, **kwargs)
        grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=1, **kwargs)
        # the serial results are right, so equal-to-serial below means right
        np.testing.assert_allclose(y, conv_transpose3d_ref(x, w, b, **kwargs), **tol(dtype))
        for got, want in zip(grads, conv_transpose3d_backward_ref(g, x, w, **kwargs)):
            np.testing.assert_allclose(got, want, rtol=tol(dtype)["rtol"],
                                       atol=tol(dtype)["atol"] * max(1, np.abs(want).max()))
        jobs.append((x, w, b, g, kwargs, y, grads))
    return jobs


def _run_in_threads(n_threads, work):
    """Run ``work(i)`` in ``n_threads`` threads released together; re-raise any failure."""
    barrier = threading.Barrier(n_threads)
    errors = []

    def target(i):
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append((i, exc))

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise AssertionError(f"{len(errors)} thread(s) failed: {errors[:3]}") from errors[0][1]


def test_eight_python_threads_at_once_get_the_right_answers(every_thread):
    jobs = _thread_jobs(8)
    repeats = 6

    def work(i):
        x, w, b, g, kwargs, y_want, grads_want = jobs[i]
        for r in range(repeats):
            num_threads = 1 + (i + r) % 3  # OpenMP teams of different sizes side by side
            y = tconv3d.conv_transpose3d(x, w, b, num_threads=num_threads, **kwargs)
            assert y.tobytes() == y_want.tobytes(), f"thread {i}: forward"
            grads = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=num_threads,
                                                      **kwargs)
            for name, got, want in zip(("input", "kernel", "bias"), grads, grads_want):
                assert got.tobytes() == want.tobytes(), f"thread {i}: grad_{name}"

    _run_in_threads(8, work)


def test_eight_python_threads_sharing_one_input(every_thread):
    """Many readers of the same (read-only) arrays at once, each with its own output."""
    rng = np.random.default_rng(3)
    x, w, b, g, kwargs = _problem(rng, DETERMINISM_CASES[1], "channels_first", np.float64)
    for a in (x, w, b, g):
        a.flags.writeable = False
    y_want = tconv3d.conv_transpose3d(x, w, b, num_threads=1, **kwargs)
    grads_want = tconv3d.conv_transpose3d_backward(g, x, w, num_threads=1, **kwargs)
    results = [None] * 8

    def work(i):
        results[i] = (tconv3d.conv_transpose3d(x, w, b, num_threads=2, **kwargs),
                      tconv3d.conv_transpose3d_backward(g, x, w, num_threads=2, **kwargs))

    _run_in_threads(8, work)
    for y, grads in results:
        assert y.tobytes() == y_want.tobytes()
        assert all(a.tobytes() == e.tobytes() for a, e in zip(grads, grads_want))


def test_eight_python_threads_upsampling_at_once():
    upsampling = pytest.importorskip("tconv3d.upsampling")
    rng = np.random.default_rng(11)
    jobs = []
    for i in range(8):
        volumes = rng.standard_normal((1 + i % 2, 3 + i % 3, 4, 5 - i % 2, 1 + i % 3))
        volumes = volumes.astype((np.float32, np.float64)[i % 2])
        up = upsampling.VolumeUpsampler(factor=2 + i % 2,
                                        kernel=("nearest", "trilinear")[(i // 2) % 2])
        up.fit(volumes)
        jobs.append((up, volumes, up.transform(volumes)))
    # nearest neighbour is np.repeat: the serial results are right
    for up, volumes, want in jobs:
        if up.kernel == "nearest":
            f = up.factor
            np.testing.assert_allclose(
                want, volumes.repeat(f, 1).repeat(f, 2).repeat(f, 3), rtol=1e-6)

    jobs_conv = _thread_jobs(8)

    def work(i):
        up, volumes, want = jobs[i]
        for _ in range(4):
            got = up.transform(volumes)
            np.testing.assert_array_equal(got, want, err_msg=f"thread {i}")
            x, w, b, g, kwargs, y_want, _ = jobs_conv[i]
            assert tconv3d.conv_transpose3d(x, w, b, **kwargs).tobytes() == y_want.tobytes()

    _run_in_threads(8, work)


# ---------------------------------------------------------------------------- GIL


class _Ticker:
    """A Python thread that counts, stamping the time every ``every`` increments."""

    def __init__(self, every=200):
        self.every = every
        self.stamps = []
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        stamps, every, clock = self.stamps, self.every, time.perf_counter
        n = 0
        while not self._stop:
            n += 1
            if n % every == 0:
                stamps.append(clock())
        self.count = n

    def __enter__(self):
        self._thread.start()
        while not self.stamps:  # running
            time.sleep(0.001)
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()

    def progress(self, t0, t1):
        """(ticks inside [t0, t1], longest time inside it without a tick)."""
        inside = [t for t in self.stamps if t0 <= t <= t1]
        edges = [t0, *inside, t1]
        return len(inside), max(b - a for a, b in zip(edges, edges[1:]))


def _long_problem(rng, target_seconds, compute):
    """A problem whose single-threaded call takes at least ``target_seconds``."""
    batch = 1
    while True:
        x = rng.standard_normal((batch, 24, 24, 24, 8)).astype(np.float32)
        w = rng.standard_normal((3, 3, 3, 8, 8)).astype(np.float32)
        g = rng.standard_normal((batch, 48, 48, 48, 8)).astype(np.float32)
        call = _gil_call(x, w, g, compute)
        t0 = time.perf_counter()
        call()
        elapsed = time.perf_counter() - t0
        if elapsed >= target_seconds or batch >= 64:
            return call, elapsed
        batch *= 2


def _gil_call(x, w, g, compute):
    kwargs = dict(strides=2, padding="same", num_threads=1)
    if compute == "forward":
        return lambda: tconv3d.conv_transpose3d(x, w, **kwargs)
    return lambda: tconv3d.conv_transpose3d_backward(g, x, w, compute=(compute,), **kwargs)


@pytest.mark.parametrize("compute", ["forward", "input", "kernel"])
def test_gil_is_released_during_compute(rng, compute):
    call, elapsed = _long_problem(rng, 0.3, compute)
    with _Ticker() as ticker:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    ticks, longest_gap = ticker.progress(t0, t1)
    # Holding the GIL through the loops would stall the ticker for the whole call (~t1-t0);
    # released, its longest pause is a scheduler slice.
    assert ticks >= 20, f"the other thread ticked {ticks} times in {t1 - t0:.2f} s"
    assert longest_gap < 0.5 * (t1 - t0), (
        f"the other thread stalled {longest_gap:.3f} s of a {t1 - t0:.3f} s call")


def test_ticker_detects_a_call_that_holds_the_gil():
    """Negative control: list.sort holds the GIL throughout, and the ticker sees it stall."""
    data = np.random.default_rng(0).standard_normal(2_000_000).tolist()
    with _Ticker() as ticker:
        t0 = time.perf_counter()
        sorted(data)
        t1 = time.perf_counter()
    _, longest_gap = ticker.progress(t0, t1)
    assert longest_gap >= 0.5 * (t1 - t0)


def test_every_thread_fixture_reaches_the_thread_count(every_thread):
    """The determinism tests above do run 8 threads (if tconv3d bounds threads by work)."""
    threads_for = getattr(_ops, "_threads_for", None)
    if threads_for is None:
        pytest.skip("tconv3d does not bound the thread count by the work")
    geom = tconv3d._validation.make_geometry((3, 5, 7, 6, 5), (3, 2, 4, 7, 5), 1, "valid",
                                             None, 1, "channels_last")
    assert threads_for(8, geom) == 8


# --- thread requests never end the process --------------------------------------------------

@pytest.mark.parametrize("requested", [10**3, 10**6, 2**64])
def test_thread_requests_are_capped_not_refused(rng, requested):
    x, w, b = random_problem(rng, batch=1, spatial=(5, 6, 7), cin=3, cout=4, kernel=(2, 3, 2),
                             data_format="channels_last", dtype=np.float64)
    assert _threads.resolve(requested) == _threads.max_threads()
    want = tconv3d.conv_transpose3d(x, w, b, strides=2, num_threads=1)
    got = tconv3d.conv_transpose3d(x, w, b, strides=2, num_threads=requested)
    assert np.array_equal(got, want)


_MEMORY_LIMITED = """
import resource, sys
import numpy as np
import tconv3d
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
x, k = np.ones((1, 32, 32, 32, 16), np.float32), np.ones((3, 3, 3, 16, 16), np.float32)
y = tconv3d.conv_transpose3d(x, k, num_threads=1024)
tconv3d.conv_transpose3d_backward(np.ones_like(y), x, k, num_threads=1024)
print("survived", float(y.sum()))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux only")
def test_many_threads_under_a_memory_limit(run_python):
    """1024 thread stacks do not fit in 3 GiB of address space: libgomp would end the
    process ('Thread creation failed'); the cap keeps the request within the cores."""
    done = run_python("-c", _MEMORY_LIMITED, env={"OMP_NUM_THREADS": None})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("survived")


# --- fork -------------------------------------------------------------------------------------

_FORKED_WORKERS = """
import json, multiprocessing, os, sys, warnings
import numpy as np
import tconv3d
from tconv3d import _threads

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 24, 24, 24, 16)).astype(np.float32)
k = rng.standard_normal((3, 3, 3, 16, 16)).astype(np.float32)
vol = rng.standard_normal((2, 24, 24, 24)).astype(np.float32)
parallel_first = sys.argv[1] == "parallel"

def forward(num_threads=None):
    return tconv3d.conv_transpose3d(x, k, strides=2, num_threads=num_threads)

def backward():
    return tconv3d.conv_transpose3d_backward(forward(), x, k, strides=2)[1]

def layer():
    return tconv3d.Conv3DTranspose(16, 3, strides=2, seed=0)(x)

def upsample():
    return tconv3d.VolumeUpsampler(factor=2).fit(vol).transform(vol)

def explicit():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        y = forward(num_threads=2)
    return y, [str(w.message) for w in seen], _threads.resolve(2)

if parallel_first:     # the parent starts an OpenMP team before forking
    assert _threads.team_size(_threads.resolve(2), 1 << 30) == 2
jobs = {"forward": forward, "backward": backward, "layer": layer, "upsample": upsample}
try:
    import torch, tconv3d.torch
    module = tconv3d.torch.ConvTranspose3d(16, 8, 3, stride=2).double()
    xt = torch.from_numpy(x.astype(np.float64)).permute(0, 4, 1, 2, 3)
    def torch_module():
        with torch.no_grad():
            return module(xt).numpy()
    jobs["torch"] = torch_module
except ImportError:
    pass
want = {name: job() for name, job in jobs.items()}
want_explicit = forward(num_threads=2 if parallel_first else 1)
with multiprocessing.get_context("fork").Pool(1) as pool:
    got, warned, resolved = pool.apply_async(explicit).get(timeout=60)
    assert np.array_equal(got, want_explicit)
    for name, job in jobs.items():
        got = pool.apply_async(job).get(timeout=60)
        assert np.array_equal(got, want[name]), name
print(json.dumps({"jobs": sorted(jobs), "warned": warned, "resolved": resolved}))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "register_at_fork"), reason="needs fork")
@pytest.mark.parametrize("parent", ["parallel", "serial"])
def test_forked_workers_compute_and_do_not_hang(run_python, parent):
    """GNU libgomp hangs in a forked child whose parent ran a parallel region; tconv3d runs
    such children on one thread (same numbers) and says so when threads were asked for."""
    import json
    threads = "2" if parent == "parallel" else "1"   # the parent's default
    done = run_python("-c", _FORKED_WORKERS, parent, env={"OMP_NUM_THREADS": threads},
                      timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"forward", "backward", "layer", "upsample"} <= set(report["jobs"])
    if parent == "parallel":
        assert report["resolved"] == 1
        assert len(report["warned"]) == 1 and "forked" in report["warned"][0]
    else:   # no team to inherit: an explicit request is honoured
        assert report["resolved"] == 2 and report["warned"] == []
