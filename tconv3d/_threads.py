"""How many OpenMP threads a call runs on: the default, the cap, small problems, ``fork``.

- ``None`` asks for OpenMP's default at call time (``OMP_NUM_THREADS``, and
  ``threadpoolctl.threadpool_limits``).
- Every request is capped at :data:`THREADS_PER_CORE` times the cores this process may run
  on. More threads than cores never speed these kernels up and the results do not depend
  on the count, but libgomp ends the whole process, with no Python exception, when it
  cannot create the threads it is asked for (under a memory limit, a few hundred).
- Problems too small to share run on one thread (:func:`team_size`).
- GNU libgomp is not fork-safe: in a child made by ``fork`` after the parent ran a
  parallel region, the child's next region with more than one thread never returns
  (``multiprocessing`` with the ``fork`` start method, PyTorch ``DataLoader`` workers,
  joblib's multiprocessing backend). A forked child therefore runs on one thread by
  default; an explicit request for more is honoured only when this process had not run a
  parallel region before the fork, and otherwise runs on one thread with a one-time
  ``RuntimeWarning``. The numbers are the same either way.
"""
import os
import warnings

from . import _kernels

THREADS_PER_CORE = 4
# Below about this many multiply-adds (plus output elements) per thread, starting and
# joining a parallel region costs more than it saves, and waiting threads spin on a
# loaded machine. Results never depend on the thread count, so this only changes speed.
MIN_WORK_PER_THREAD = 1 << 18

_ran_parallel = False   # this process has started an OpenMP team of more than one thread
_forked = False         # this process is a child made by fork
_forked_after_parallel = False
_warned = False


def _after_fork_in_child():
    global _forked, _forked_after_parallel, _warned
    _forked = True
    _forked_after_parallel = _forked_after_parallel or _ran_parallel
    _warned = False


if hasattr(os, "register_at_fork"):     # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def available_cores():
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads():
    """The most threads any call is given: ``THREADS_PER_CORE * available_cores()``."""
    return THREADS_PER_CORE * available_cores()


def resolve(num_threads):
    """Threads for a call, from a validated request (``None`` or an int >= 1)."""
    global _warned
    if _forked and (num_threads is None or _forked_after_parallel):
        if num_threads is not None and num_threads > 1 and not _warned:
            _warned = True
            warnings.warn(
                f"tconv3d: num_threads={num_threads} in a process forked after tconv3d ran "
                "multi-threaded; GNU OpenMP cannot start threads there (it would hang), so "
                "this process computes on one thread (same numbers). Use the 'spawn' or "
                "'forkserver' start method for parallel workers.", RuntimeWarning,
                stacklevel=4)
        return 1
    if num_threads is None:
        num_threads = _kernels.default_num_threads()
    return max(1, min(num_threads, max_threads()))


def team_size(num_threads, work):
    """Threads for one parallel region of ``work`` multiply-adds plus outputs."""
    global _ran_parallel
    n = int(max(1, min(num_threads, work // MIN_WORK_PER_THREAD)))
    if n > 1:
        _ran_parallel = True
    return n
