# Compiled core of tconv3d: forward and backward 3D transposed convolution.
#
# These kernels trust their caller (tconv3d/_ops.py): shapes, dtypes and the geometry
# have been validated there, output arrays allocated there. The geometry reaches the
# kernels as one Problem struct, filled by _problem() from the Geometry's named fields.
# Nothing here validates; the only error raised is MemoryError, for a workspace.
#
# Conventions shared by every kernel
# - Arrays arrive as *logical* 5-D views (batch, depth, height, width, channels) with
#   arbitrary element strides, so channels_first, Fortran-ordered, sliced or negatively
#   strided inputs are read in place: the layout is just a set of strides.
# - Per spatial axis, input i and kernel tap j feed full-length position i*s + j*d;
#   output o is full position o + crop (crop >= 0). All numerators below are kept
#   non-negative because `cdivision=True` makes // and % truncate toward zero.
# - Work is split with `prange(..., schedule='static')` over whole rows (batch, depth,
#   height) of the array being written, each written by exactly one thread: no atomics,
#   and the summation order of every output element does not depend on the thread count.
# - Along the width axis the outputs of one stride phase (o + crop) % s use the same
#   taps and consecutive inputs, so a block of BLOCK of them is accumulated together:
#   each kernel tap matrix is loaded once per block instead of once per voxel, and the
#   channel contraction is a GEMM whose vectors run over contiguous channels (_gemm.h).
# - The kernel-gradient reduction runs over a fixed partition into chunks (independent
#   of the thread count), each chunk into its own buffer, and the buffers are added in
#   chunk order: results are bitwise identical for any number of threads.

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define TCONV3D_OPENMP 1
    #else
    #define TCONV3D_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    static const char *tconv3d_simd_flags(void) {
        return ""
    #ifdef __SSE2__
            " SSE2"
    #endif
    #ifdef __AVX__
            " AVX"
    #endif
    #ifdef __FMA__
            " FMA"
    #endif
    #ifdef __AVX2__
            " AVX2"
    #endif
    #ifdef __AVX512F__
            " AVX512F"
    #endif
    #ifdef __ARM_NEON
            " NEON"
    #endif
            ;
    }
    """
    int omp_get_max_threads() noexcept nogil
    int TCONV3D_OPENMP
    const char *tconv3d_simd_flags()


cdef extern from "_gemm.h":
    ctypedef void (*tc_gemm_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const float *,
                                   Py_ssize_t, Py_ssize_t, const float *, Py_ssize_t,
                                   float *, Py_ssize_t) noexcept nogil
    ctypedef void (*tc_gemm_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const double *,
                                   Py_ssize_t, Py_ssize_t, const double *, Py_ssize_t,
                                   double *, Py_ssize_t) noexcept nogil
    tc_gemm_f32_t tc_gemm_f32
    tc_gemm_f64_t tc_gemm_f64
    int tc_variant
    void tc_axpy_f32(Py_ssize_t n, float alpha, const float *x, Py_ssize_t incx,
                     float *y) noexcept nogil
    void tc_axpy_f64(Py_ssize_t n, double alpha, const double *x, Py_ssize_t incx,
                     double *y) noexcept nogil
    int tc_variant_supported(int variant) noexcept nogil
    int tc_select_variant(int variant) noexcept nogil
    int tc_best_variant() noexcept nogil


SIMD_VARIANTS = ("baseline", "avx2", "avx512")


def simd_variant():
    """Name of the micro-kernel variant in use ("baseline", "avx2" or "avx512")."""
    return SIMD_VARIANTS[tc_variant]


def simd_variants_supported():
    """The variants this build and this CPU can run."""
    return [name for v, name in enumerate(SIMD_VARIANTS) if tc_variant_supported(v)]


def set_simd_variant(name):
    """Force a micro-kernel variant (tests, benchmarks); "auto" picks the best one."""
    if name != "auto" and name not in SIMD_VARIANTS:
        raise ValueError(f"SIMD variant must be 'auto' or one of {SIMD_VARIANTS}, got {name!r}")
    variant = tc_best_variant() if name == "auto" else SIMD_VARIANTS.index(name)
    if not tc_select_variant(variant):
        raise ValueError(f"SIMD variant {name!r} is not available on this CPU/build; "
                         f"available: {simd_variants_supported()}")


def _select_at_import():
    """Best variant for this CPU, unless TCONV3D_SIMD names one (tests force each)."""
    import os
    import warnings
    name = os.environ.get("TCONV3D_SIMD", "auto").strip().lower() or "auto"
    try:
        set_simd_variant(name)
    except ValueError as exc:
        warnings.warn(f"TCONV3D_SIMD={name!r} ignored: {exc}", RuntimeWarning)
        set_simd_variant("auto")


_select_at_import()


cdef inline void _gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating *A, Py_ssize_t sai, Py_ssize_t sap,
                       const floating *B, Py_ssize_t ldb,
                       floating *C, Py_ssize_t ldc) noexcept nogil:
    """C[i, j] += sum_p A[i*sai + p*sap] * B[p*ldb + j] (see _gemm.h)."""
    if floating is float:
        tc_gemm_f32(m, n, k, A, sai, sap, B, ldb, C, ldc)
    else:
        tc_gemm_f64(m, n, k, A, sai, sap, B, ldb, C, ldc)


cdef inline void _axpy(Py_ssize_t n, floating alpha, const floating *x, Py_ssize_t incx,
                       floating *y) noexcept nogil:
    """y[i] += alpha * x[i*incx] (see _gemm.h)."""
    if floating is float:
        tc_axpy_f32(n, alpha, x, incx, y)
    else:
        tc_axpy_f64(n, alpha, x, incx, y)


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(TCONV3D_OPENMP)


def default_num_threads():
    """Threads an OpenMP region uses by default now (honours threadpoolctl's limits)."""
    return omp_get_max_threads()


def simd_flags():
    """The SIMD instruction sets this build was compiled for."""
    return tconv3d_simd_flags().decode().split()


# Width-axis block (voxels accumulated together) is sized so the accumulator stays in L1.
cdef Py_ssize_t ACC_ELEMENTS = 2048
cdef Py_ssize_t MAX_BLOCK = 512
# Kernel-gradient partition: at most this many chunks, and at most this many bytes of
# partial buffers. Fixed numbers (not the thread count) so results are reproducible.
cdef Py_ssize_t MAX_CHUNKS = 64
cdef Py_ssize_t CHUNK_BUFFER_BYTES = 64 * 1024 * 1024
cdef Py_ssize_t MIN_CHUNK_VOXELS = 256


ctypedef struct Problem:
    # One transposed convolution as the kernels see it, filled only by _problem().
    Py_ssize_t batch, cin, cout  # batch size, input channels, filters
    Py_ssize_t n_in[3]      # input spatial lengths (depth, height, width)
    Py_ssize_t k[3]         # kernel lengths (taps per axis)
    Py_ssize_t s[3]         # strides
    Py_ssize_t d[3]         # dilations
    Py_ssize_t n_out[3]     # output spatial lengths
    Py_ssize_t crop[3]      # left crop of the full-length axis
    Py_ssize_t xs[5]        # element strides of x / grad_input (n, d, h, w, c)
    Py_ssize_t ys[5]        # element strides of y / grad_output (n, d, h, w, c)


cdef Problem _problem(geometry, tuple x_strides, tuple y_strides) except *:
    """The Problem of `geometry` (the Python-side Geometry dataclass, read by field name)
    and the element strides of the logical x-side and y-side arrays.

    Python ints past Py_ssize_t raise OverflowError here, before any kernel runs.
    """
    cdef Problem p
    cdef int a
    p.batch = geometry.batch
    p.cin = geometry.in_channels
    p.cout = geometry.filters
    for a in range(3):
        p.n_in[a] = geometry.in_spatial[a]
        p.k[a] = geometry.kernel_spatial[a]
        p.s[a] = geometry.strides[a]
        p.d[a] = geometry.dilation[a]
        p.n_out[a] = geometry.out_spatial[a]
        p.crop[a] = geometry.crop[a]
    for a in range(5):
        p.xs[a] = x_strides[a]
        p.ys[a] = y_strides[a]
    return p


cdef inline Py_ssize_t _output_index(const Problem *p, int a, Py_ssize_t i,
                                     Py_ssize_t j) noexcept nogil:
    """Output that input `i` feeds through tap `j` on axis `a` (may be outside the output)."""
    return i * p.s[a] + j * p.d[a] - p.crop[a]


# ------------------------------------------------------------- taps, by arithmetic
#
# Nothing scans all the taps of an axis: the taps that reach an output, or that an input
# reaches, are enumerated arithmetically, so the work is proportional to the multiply-adds
# performed plus the size of the arrays, for any stride, dilation and kernel length.
# Taps are always taken in increasing j, the summation order of every kernel.
#
# - From input i the taps form one range: o = i*s + j*d - crop in [0, n_out).
# - Into output o come the taps of o's stride phase, (j*d) % s == (o + crop) % s. With
#   g = gcd(s, d) these are j0, j0 + step, j0 + 2*step, ... (step = s/g), whose inputs
#   go down by shift = d/g from one to the next, for the smallest such tap j0. Outputs
#   o and o + s share the phase, so j0 is found once per call for each o < min(s, n_out):
#   a Phase, built in O(min(k, step) + min(s, n_out)) by _fill_phases.

cdef inline Py_ssize_t _floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """floor(a / b) for b > 0 and a of either sign, dividing non-negative numbers only
    (`cdivision` truncates toward zero). b == 1, i.e. no dilation, skips the division."""
    if b == 1:
        return a
    if a >= 0:
        return a // b
    return -((-a - 1) // b) - 1


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0 and a of either sign (as _floor_div)."""
    if b == 1:
        return a
    if a <= 0:
        return -((-a) // b)
    return (a - 1) // b + 1


ctypedef struct Phase:
    # The outputs o0, o0 + s, o0 + 2s, ... of one axis (0 <= o0 < min(s, n_out)).
    Py_ssize_t outputs    # how many of them are below n_out
    Py_ssize_t q          # (o0 + crop) // s: output o0 + t*s is at full position
                          # (q + t)*s + (o0 + crop) % s
    Py_ssize_t first_tap  # j0, the phase's smallest tap (-1 if none: then taps == 0)
    Py_ssize_t taps       # its taps below k are j0 + u*step, 0 <= u < taps
    Py_ssize_t m          # (j0*d) // s: tap j0 + u*step feeds output o0 + t*s from
                          # input q + t - m - u*shift


ctypedef struct Phases:
    # The taps of each axis grouped by stride phase, filled only by _fill_phases().
    Py_ssize_t step[3]    # s / gcd(s, d): taps j and j + step have the same phase
    Py_ssize_t shift[3]   # d / gcd(s, d): and read inputs this far apart
    Py_ssize_t count[3]   # min(s, n_out): the phases that have outputs
    Phase *of[3]          # of[a][o % s]: the phase of output o on axis a


cdef inline Py_ssize_t _gcd(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Py_ssize_t t
    while b != 0:
        t = a % b
        a = b
        b = t
    return a


cdef inline Py_ssize_t _phase_count(const Problem *p) noexcept nogil:
    """Entries of the table _fill_phases needs: sum over axes of min(s, n_out)."""
    cdef Py_ssize_t total = 0
    cdef int a
    for a in range(3):
        total += p.s[a] if p.s[a] < p.n_out[a] else p.n_out[a]
    return total


cdef void _fill_phases(const Problem *p, Phase *table, Phases *ph) noexcept nogil:
    """Fill `ph`, its Phase entries stored in `table` (_phase_count(p) of them)."""
    cdef int a
    cdef Py_ssize_t s, d, count, o0, j, phase, crop_phase
    cdef Phase *f
    for a in range(3):
        s = p.s[a]
        d = p.d[a]
        ph.step[a] = s // _gcd(s, d)
        ph.shift[a] = d // _gcd(s, d)
        count = s if s < p.n_out[a] else p.n_out[a]
        ph.count[a] = count
        ph.of[a] = table
        table += count
        for o0 in range(count):
            f = &ph.of[a][o0]
            f.outputs = (p.n_out[a] - 1 - o0) // s + 1
            f.q = (o0 + p.crop[a]) // s
            f.first_tap = -1
            f.taps = 0
            f.m = 0
        # Taps j < step have distinct phases (j*d) % s and each is the first of its
        # phase; that phase's outputs start at o0 = ((j*d) % s - crop) mod s.
        crop_phase = p.crop[a] % s
        for j in range(ph.step[a] if ph.step[a] < p.k[a] else p.k[a]):
            phase = (j * d) % s
            o0 = phase - crop_phase if phase >= crop_phase else phase - crop_phase + s
            if o0 < count:
                f = &ph.of[a][o0]
                f.first_tap = j
                f.taps = (p.k[a] - 1 - j) // ph.step[a] + 1
                f.m = (j * d) // s


cdef inline Py_ssize_t _output_taps(const Problem *p, const Phases *ph, int a, Py_ssize_t o,
                                    Py_ssize_t *tap_j, Py_ssize_t *tap_i) noexcept nogil:
    """Taps (j, i) of axis `a` feeding output `o`: i*s + j*d == o + crop, 0 <= i < n_in."""
    cdef const Phase *f = &ph.of[a][o % p.s[a]]
    cdef Py_ssize_t top = f.q + o // p.s[a] - f.m   # the input of the phase's first tap
    cdef Py_ssize_t u, ulo, uhi, count = 0
    if f.taps == 0 or top < 0:
        return 0
    # Tap u reads input top - u*shift, which must lie in [0, n_in).
    uhi = _floor_div(top, ph.shift[a])
    if uhi > f.taps - 1:
        uhi = f.taps - 1
    ulo = _ceil_div(top - p.n_in[a] + 1, ph.shift[a])
    if ulo < 0:
        ulo = 0
    for u in range(ulo, uhi + 1):
        tap_j[count] = f.first_tap + u * ph.step[a]
        tap_i[count] = top - u * ph.shift[a]
        count += 1
    return count


cdef inline Py_ssize_t _input_taps(const Problem *p, int a, Py_ssize_t i,
                                   Py_ssize_t *tap_j, Py_ssize_t *tap_o) noexcept nogil:
    """Taps (j, o) of axis `a` fed by input `i`: o = i*s + j*d - crop, 0 <= o < n_out."""
    cdef Py_ssize_t base = i * p.s[a] - p.crop[a]   # the output of tap 0
    cdef Py_ssize_t j, count = 0
    cdef Py_ssize_t jlo = _ceil_div(-base, p.d[a])
    cdef Py_ssize_t jhi = _floor_div(p.n_out[a] - 1 - base, p.d[a])
    if jlo < 0:
        jlo = 0
    if jhi > p.k[a] - 1:
        jhi = p.k[a] - 1
    for j in range(jlo, jhi + 1):
        tap_j[count] = j
        tap_o[count] = base + j * p.d[a]
        count += 1
    return count


# Width inputs first + b (0 <= b < count) whose tap jw lands on an output, i.e.
# 0 <= (first + b)*s + jw*d - crop < n_out, are b in [_first_reaching, _end_reaching).
# Numerators are kept non-negative (cdivision). Two functions, not out-pointers: a prange
# variable assigned only through a pointer would be shared between threads.

cdef inline Py_ssize_t _first_reaching(const Problem *p, Py_ssize_t jw,
                                       Py_ssize_t first) noexcept nogil:
    cdef Py_ssize_t num = p.crop[2] - jw * p.d[2] - first * p.s[2]
    return 0 if num <= 0 else (num + p.s[2] - 1) // p.s[2]


cdef inline Py_ssize_t _end_reaching(const Problem *p, Py_ssize_t jw, Py_ssize_t first,
                                     Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t num = p.n_out[2] - 1 + p.crop[2] - jw * p.d[2] - first * p.s[2]
    if num < 0:
        return 0
    num = num // p.s[2] + 1
    return count if num > count else num


# The width taps reaching inputs [first, first + count) lie in [_lowest_tap, _highest_tap];
# every tap there reaches one of them unless the outputs are fewer than the stride: then
# the outputs of consecutive inputs leave gaps, and _next_tap jumps over a gap.

cdef inline Py_ssize_t _lowest_tap(const Problem *p, Py_ssize_t first,
                                   Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t j = _ceil_div(p.crop[2] - (first + count - 1) * p.s[2], p.d[2])
    return 0 if j < 0 else j


cdef inline Py_ssize_t _highest_tap(const Problem *p, Py_ssize_t first) noexcept nogil:
    cdef Py_ssize_t j = _floor_div(p.n_out[2] - 1 + p.crop[2] - first * p.s[2], p.d[2])
    return p.k[2] - 1 if j > p.k[2] - 1 else j


cdef inline Py_ssize_t _next_tap(const Problem *p, Py_ssize_t jw,
                                 Py_ssize_t first) noexcept nogil:
    """After tap `jw` reached none of the inputs >= first: the first tap of the next
    input down, the one whose outputs start past jw*d - crop (k when it is below first).
    Inputs that jw already passed (theirs end before it) are done with, so this is a
    jump over a gap, at most one per input."""
    cdef Py_ssize_t i = _ceil_div(p.crop[2] - jw * p.d[2], p.s[2]) - 1
    if i < first:
        return p.k[2]
    return _ceil_div(p.crop[2] - i * p.s[2], p.d[2])


cdef inline void _width_taps(const Problem *p, Py_ssize_t first, Py_ssize_t count,
                             Row *r) noexcept nogil:
    """The width taps reaching inputs [first, first + count), into r.wj, r.wlo, r.whi."""
    cdef Py_ssize_t jw = _lowest_tap(p, first, count), jhi = _highest_tap(p, first)
    cdef Py_ssize_t lo, hi, n = 0
    while jw <= jhi:
        lo = _first_reaching(p, jw, first)
        hi = _end_reaching(p, jw, first, count)
        if hi <= lo:
            jw = _next_tap(p, jw, first)
            continue
        r.wj[n] = jw
        r.wlo[n] = lo
        r.whi[n] = hi
        n += 1
        jw += 1
    r.n_wtaps = n


cdef inline Py_ssize_t _block_size(Py_ssize_t channels) noexcept nogil:
    cdef Py_ssize_t b = ACC_ELEMENTS // channels
    return 1 if b < 1 else (MAX_BLOCK if b > MAX_BLOCK else b)


# ------------------------------------------------------------------ rows and their taps
#
# The forward walks the rows (batch, depth, height) of the output, the gradients those
# of the input; along a row's width they work in blocks. What a row needs from the
# other side of the convolution is given by its depth and height taps, found once per
# row into lists that each thread allocates once.

ctypedef struct Row:
    Py_ssize_t n, d, h       # the row: batch index, depth, height
    Py_ssize_t n_taps[2]     # number of its taps on depth (0) and height (1)
    Py_ssize_t *j[2]         # those taps' kernel indices
    Py_ssize_t *index[2]     # and the depth or height they join the row with on the
                             # other side: inputs of an output row, outputs of an input row
    # The gradients' width taps of a run of inputs (_width_taps), NULL in the forward
    Py_ssize_t n_wtaps       # how many
    Py_ssize_t *wj           # their kernel indices, increasing
    Py_ssize_t *wlo          # each reaches inputs first + [wlo, whi) of the run
    Py_ssize_t *whi


cdef inline void *_thread_malloc(size_t size, int *failed) noexcept nogil:
    """malloc for a thread's workspace, flagging a failure in the shared `failed`."""
    cdef void *ptr = malloc(size)
    if ptr == NULL:
        failed[0] = 1
    return ptr


cdef inline Row _thread_row(const Problem *p, bint width, int *failed) noexcept nogil:
    """A thread's Row: its tap lists in one allocation (j[0] NULL if none); the width
    lists only if `width`."""
    cdef Row r
    cdef Py_ssize_t *lists = <Py_ssize_t *> _thread_malloc(
        (2 * (p.k[0] + p.k[1]) + (3 * p.k[2] if width else 0)) * sizeof(Py_ssize_t),
        failed)
    memset(&r, 0, sizeof(Row))
    if lists != NULL:
        r.j[0] = lists
        r.index[0] = lists + p.k[0]
        r.j[1] = lists + 2 * p.k[0]
        r.index[1] = lists + 2 * p.k[0] + p.k[1]
        if width:
            r.wj = lists + 2 * (p.k[0] + p.k[1])
            r.wlo = r.wj + p.k[2]
            r.whi = r.wlo + p.k[2]
    return r


cdef inline void _split_row(Row *r, Py_ssize_t row, const Py_ssize_t *lengths) noexcept nogil:
    """Position of row number `row` among (batch, lengths[0], lengths[1]) rows."""
    r.n = row // (lengths[0] * lengths[1])
    r.d = (row // lengths[1]) % lengths[0]
    r.h = row % lengths[1]


cdef inline void _output_row(const Problem *p, const Phases *ph, Py_ssize_t row,
                             Row *r) noexcept nogil:
    """Output row number `row` and the input rows that feed it."""
    _split_row(r, row, p.n_out)
    r.n_taps[0] = _output_taps(p, ph, 0, r.d, r.j[0], r.index[0])
    r.n_taps[1] = _output_taps(p, ph, 1, r.h, r.j[1], r.index[1])


cdef inline void _input_row(const Problem *p, Py_ssize_t row, Row *r) noexcept nogil:
    """Input row number `row` and the output rows it feeds."""
    _split_row(r, row, p.n_in)
    r.n_taps[0] = _input_taps(p, 0, r.d, r.j[0], r.index[0])
    r.n_taps[1] = _input_taps(p, 1, r.h, r.j[1], r.index[1])


cdef inline Py_ssize_t _row_offset(const Py_ssize_t *strides, Py_ssize_t n, Py_ssize_t d,
                                   Py_ssize_t h) noexcept nogil:
    """Element offset of row (n, d, h) in a logical array of these element strides."""
    return n * strides[0] + d * strides[1] + h * strides[2]


cdef inline Py_ssize_t _tap_matrix(const Problem *p, const Row *r, Py_ssize_t td,
                                   Py_ssize_t th, Py_ssize_t jw) noexcept nogil:
    """Element offset of the channel matrix (Cin x Cout or Cout x Cin) of kernel tap
    (r.j[0][td], r.j[1][th], jw) in a C-contiguous (kd, kh, kw, ., .) kernel."""
    return ((r.j[0][td] * p.k[1] + r.j[1][th]) * p.k[2] + jw) * p.cin * p.cout


cdef int _check(int status) except -1:
    if status != 0:
        raise MemoryError("tconv3d: no memory for a thread's workspace")
    return 0


# ----------------------------------------------------------------------------- forward

cdef int _conv_transpose(const Problem *p,
                         const Phases *ph,
                         const floating *x,     # IN  logical (N, D, H, W, Cin), strides p.xs
                         const floating *wt,    # IN  (kd, kh, kw, Cin, Cout) C-contiguous
                         const floating *bias,  # IN  (Cout,) or NULL
                         floating *y,           # OUT logical (N, OD, OH, OW, Cout), strides p.ys
                         int num_threads) noexcept nogil:
    cdef Py_ssize_t cin = p.cin, cout = p.cout, iw_n = p.n_in[2]
    cdef Py_ssize_t stepw = ph.step[2], shiftw = ph.shift[2]
    cdef Py_ssize_t rows = p.batch * p.n_out[0] * p.n_out[1]
    cdef Py_ssize_t block = _block_size(cout)
    cdef Py_ssize_t row, o0, phase_len, q, m, first_tap, taps, blk, tb, nb, b, blo, bhi
    cdef Py_ssize_t istart, ulo, uhi, u, td, th, co, ldc
    cdef Py_ssize_t ystep = p.s[2] * p.ys[3]  # between consecutive outputs of a phase
    cdef bint direct = p.ys[4] == 1 and not (cin == 1 and cout == 1)
    cdef Row r
    cdef floating *acc = NULL
    cdef floating *cbuf
    cdef const floating *xrow
    cdef const floating *xstart
    cdef const floating *wtap
    cdef floating *yp

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        acc = <floating *> _thread_malloc(block * cout * sizeof(floating), failed_ptr)
        r = _thread_row(p, False, failed_ptr)
        for row in prange(rows, schedule='static'):
            if acc == NULL or r.j[0] == NULL:
                continue  # flagged in `failed`: the call raises MemoryError
            _output_row(p, ph, row, &r)
            for o0 in range(ph.count[2]):
                # Outputs o0 + t*sw (0 <= t < phase_len) share a stride phase; output
                # o0 + t*sw reads input q + t - m - u*shiftw through the phase's width
                # tap first_tap + u*stepw, 0 <= u < taps (see Phase).
                phase_len = ph.of[2][o0].outputs
                q = ph.of[2][o0].q
                m = ph.of[2][o0].m
                first_tap = ph.of[2][o0].first_tap
                taps = ph.of[2][o0].taps
                yp = y + _row_offset(p.ys, r.n, r.d, r.h) + o0 * p.ys[3]
                for blk in range((phase_len + block - 1) // block):
                    tb = blk * block
                    nb = block if phase_len - tb > block else phase_len - tb
                    # With contiguous output channels the GEMMs accumulate straight into
                    # y (rows ystep apart); otherwise into acc, stored afterwards.
                    if direct:
                        cbuf = yp + tb * ystep
                        ldc = ystep
                    else:
                        cbuf = acc
                        ldc = cout
                    if bias == NULL and not direct:
                        memset(acc, 0, nb * cout * sizeof(floating))
                    elif cout == 1:
                        for b in range(nb):
                            cbuf[b * ldc] = 0 if bias == NULL else bias[0]
                    else:
                        for b in range(nb):
                            if bias == NULL:
                                memset(cbuf + b * ldc, 0, cout * sizeof(floating))
                            else:
                                memcpy(cbuf + b * ldc, bias, cout * sizeof(floating))
                    # The taps u whose inputs q + t - m - u*shiftw, tb <= t < tb + nb,
                    # meet [0, iw_n): each of them reaches at least one output of the block.
                    ulo = _ceil_div(q + tb - m - iw_n + 1, shiftw)
                    if ulo < 0:
                        ulo = 0
                    uhi = _floor_div(q + tb + nb - 1 - m, shiftw)
                    if uhi > taps - 1:
                        uhi = taps - 1
                    for td in range(r.n_taps[0] if ulo <= uhi else 0):
                        for th in range(r.n_taps[1]):
                            xrow = x + _row_offset(p.xs, r.n, r.index[0][td], r.index[1][th])
                            for u in range(ulo, uhi + 1):
                                istart = q + tb - m - u * shiftw
                                blo = -istart if istart < 0 else 0
                                bhi = iw_n - istart if iw_n - istart < nb else nb
                                wtap = wt + _tap_matrix(p, &r, td, th, first_tap + u * stepw)
                                xstart = xrow + (istart + blo) * p.xs[3]
                                if cin == 1 and cout == 1:
                                    _axpy(bhi - blo, wtap[0], xstart, p.xs[3], acc + blo)
                                else:
                                    _gemm(bhi - blo, cout, cin, xstart, p.xs[3], p.xs[4],
                                          wtap, cout, cbuf + blo * ldc, ldc)
                    if direct:
                        continue
                    if cout == 1:  # no per-voxel inner loop (GCC would call memcpy)
                        for b in range(nb):
                            yp[(tb + b) * ystep] = acc[b]
                    else:  # strided channels (channels_first): channel by channel, along the row
                        for co in range(cout):
                            for b in range(nb):
                                yp[(tb + b) * ystep + co * p.ys[4]] = acc[b * cout + co]
        free(r.j[0])
        free(acc)
    return -1 if failed else 0


def forward(const floating[:, :, :, :, :] x, const floating[:, :, :, :, ::1] wt,
            const floating[::1] bias, floating[:, :, :, :, :] y, geometry,
            tuple x_strides, tuple y_strides, int num_threads):
    """y = conv_transpose3d(x, wt, bias), bias None for none; see the module comment."""
    cdef Problem p = _problem(geometry, x_strides, y_strides)
    cdef const floating *bias_ptr = NULL
    if bias is not None:
        bias_ptr = &bias[0]
    cdef Phases ph
    cdef Phase *table = <Phase *> malloc((_phase_count(&p) + 1) * sizeof(Phase))
    if table == NULL:
        raise MemoryError("tconv3d: no memory for the stride-phase table")
    cdef int status
    with nogil:
        _fill_phases(&p, table, &ph)
        status = _conv_transpose(&p, &ph, &x[0, 0, 0, 0, 0], &wt[0, 0, 0, 0, 0], bias_ptr,
                                 &y[0, 0, 0, 0, 0], num_threads)
    free(table)
    _check(status)


# ----------------------------------------------------------------------- grad of input

cdef int _grad_input(const Problem *p,
                      const floating *g,    # IN  logical (N, OD, OH, OW, Cout), strides p.ys
                      const floating *w,    # IN  (kd, kh, kw, Cout, Cin) C-contiguous
                      floating *gx,         # OUT logical (N, D, H, W, Cin), strides p.xs
                      int num_threads) noexcept nogil:
    cdef Py_ssize_t cin = p.cin, cout = p.cout
    cdef Py_ssize_t sw = p.s[2], kw = p.k[2], iw_n = p.n_in[2]
    cdef Py_ssize_t rows = p.batch * p.n_in[0] * p.n_in[1]
    cdef Py_ssize_t block = _block_size(cin)
    cdef Py_ssize_t row, blk, tb, nb, b, blo, bhi, td, th, t, jw, ci
    cdef Py_ssize_t gstep = sw * p.ys[3]  # between the outputs consecutive inputs feed
    cdef Row r
    cdef floating *acc = NULL
    cdef const floating *grow
    cdef const floating *gstart
    cdef const floating *wtap
    cdef floating *ap
    cdef floating *gxp

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        acc = <floating *> _thread_malloc(block * cin * sizeof(floating), failed_ptr)
        r = _thread_row(p, True, failed_ptr)
        for row in prange(rows, schedule='static'):
            if acc == NULL or r.j[0] == NULL:
                continue  # flagged in `failed`: the call raises MemoryError
            _input_row(p, row, &r)
            for blk in range((iw_n + block - 1) // block):
                tb = blk * block
                nb = block if iw_n - tb > block else iw_n - tb
                memset(acc, 0, nb * cin * sizeof(floating))
                _width_taps(p, tb, nb, &r)
                for td in range(r.n_taps[0] if r.n_wtaps > 0 else 0):
                    for th in range(r.n_taps[1]):
                        grow = g + _row_offset(p.ys, r.n, r.index[0][td], r.index[1][th])
                        for t in range(r.n_wtaps):
                            jw = r.wj[t]
                            blo = r.wlo[t]
                            bhi = r.whi[t]
                            wtap = w + _tap_matrix(p, &r, td, th, jw)
                            gstart = grow + _output_index(p, 2, tb + blo, jw) * p.ys[3]
                            if cin == 1 and cout == 1:
                                _axpy(bhi - blo, wtap[0], gstart, gstep, acc + blo)
                            else:
                                _gemm(bhi - blo, cin, cout, gstart, gstep, p.ys[4],
                                      wtap, cin, acc + blo * cin, cin)
                gxp = gx + _row_offset(p.xs, r.n, r.d, r.h) + tb * p.xs[3]
                if cin == 1:  # no per-voxel inner loop (GCC would call memcpy)
                    for b in range(nb):
                        gxp[b * p.xs[3]] = acc[b]
                elif p.xs[4] <= p.xs[3]:  # channels contiguous: voxel by voxel
                    for b in range(nb):
                        ap = acc + b * cin
                        for ci in range(cin):
                            gxp[b * p.xs[3] + ci * p.xs[4]] = ap[ci]
                else:  # channels_first: channel by channel, along the row
                    for ci in range(cin):
                        for b in range(nb):
                            gxp[b * p.xs[3] + ci * p.xs[4]] = acc[b * cin + ci]
        free(r.j[0])
        free(acc)
    return -1 if failed else 0


def grad_input(const floating[:, :, :, :, :] g, const floating[:, :, :, :, ::1] w,
               floating[:, :, :, :, :] gx, geometry, tuple x_strides,
               tuple y_strides, int num_threads):
    """gx = adjoint of the forward map in x, applied to g."""
    cdef Problem p = _problem(geometry, x_strides, y_strides)
    cdef int status
    with nogil:
        status = _grad_input(&p, &g[0, 0, 0, 0, 0], &w[0, 0, 0, 0, 0], &gx[0, 0, 0, 0, 0],
                             num_threads)
    _check(status)


# ---------------------------------------------------------------------- grad of kernel

cdef inline Py_ssize_t _num_chunks(Py_ssize_t rows, Py_ssize_t voxels,
                                   Py_ssize_t chunk_bytes) noexcept nogil:
    """Chunks of a reduction: each needs enough voxels to pay for its partial buffer."""
    cdef Py_ssize_t c = CHUNK_BUFFER_BYTES // chunk_bytes
    if c > voxels // MIN_CHUNK_VOXELS:
        c = voxels // MIN_CHUNK_VOXELS
    if c > MAX_CHUNKS:
        c = MAX_CHUNKS
    if c > rows:
        c = rows
    return 1 if c < 1 else c


cdef int _grad_kernel(const Problem *p,
                       const floating *g,     # IN  logical (N, OD, OH, OW, Cout), strides p.ys
                       const floating *x,     # IN  logical (N, D, H, W, Cin), strides p.xs
                       floating *partial,     # WORK (chunks, kd, kh, kw, Cout, Cin)
                       Py_ssize_t chunks,
                       floating *gw,          # OUT (kd, kh, kw, Cout, Cin) C-contiguous
                       int num_threads) noexcept nogil:
    cdef Py_ssize_t cin = p.cin, cout = p.cout
    cdef Py_ssize_t sw = p.s[2], kw = p.k[2], iw_n = p.n_in[2]
    cdef Py_ssize_t ksize = p.k[0] * p.k[1] * kw * cout * cin
    cdef Py_ssize_t rows = p.batch * p.n_in[0] * p.n_in[1]
    cdef Py_ssize_t chunk, row, td, th, t, jw, lo, hi, e, c
    cdef Py_ssize_t gstep = sw * p.ys[3]  # between the outputs consecutive inputs feed
    cdef Row r
    cdef floating *buf
    cdef const floating *grow
    cdef const floating *xrow
    cdef floating total

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        r = _thread_row(p, True, failed_ptr)
        if r.j[0] != NULL:
            _width_taps(p, 0, iw_n, &r)  # the same for every row: whole rows
        for chunk in prange(chunks, schedule='static'):
            if r.j[0] == NULL:
                continue  # flagged in `failed`: the call raises MemoryError
            buf = partial + chunk * ksize
            memset(buf, 0, ksize * sizeof(floating))
            for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
                _input_row(p, row, &r)
                xrow = x + _row_offset(p.xs, r.n, r.d, r.h)
                for td in range(r.n_taps[0]):
                    for th in range(r.n_taps[1]):
                        grow = g + _row_offset(p.ys, r.n, r.index[0][td], r.index[1][th])
                        for t in range(r.n_wtaps):
                            # One GEMM (Cout x Cin) += g^T (Cout x k) x (k x Cin) over
                            # the inputs lo <= iw < hi that tap jw takes to an output.
                            jw = r.wj[t]
                            lo = r.wlo[t]
                            hi = r.whi[t]
                            _gemm(cout, cin, hi - lo,
                                  grow + _output_index(p, 2, lo, jw) * p.ys[3], p.ys[4],
                                  gstep, xrow + lo * p.xs[3], p.xs[3],
                                  buf + _tap_matrix(p, &r, td, th, jw), cin)
        free(r.j[0])
    if failed:
        return -1

    # Add the chunks' partial sums in chunk order, whatever thread computed them.
    for e in prange(ksize, schedule='static', num_threads=num_threads):
        total = partial[e]
        for c in range(1, chunks):
            total = total + partial[c * ksize + e]
        gw[e] = total
    return 0


def grad_kernel(const floating[:, :, :, :, :] g, const floating[:, :, :, :, :] x,
                floating[:, :, :, :, ::1] gw, geometry, tuple x_strides,
                tuple y_strides, int num_threads):
    """gw[j, co, ci] = sum over batch and space of g[o(i, j), co] * x[i, ci]."""
    cdef Problem p = _problem(geometry, x_strides, y_strides)
    cdef Py_ssize_t ksize = gw.size
    cdef Py_ssize_t chunks = _num_chunks(p.batch * p.n_in[0] * p.n_in[1],
                                         p.batch * p.n_in[0] * p.n_in[1] * p.n_in[2],
                                         ksize * sizeof(floating))
    cdef floating *partial = <floating *> malloc(chunks * ksize * sizeof(floating))
    if partial == NULL:
        raise MemoryError("tconv3d: no memory for the kernel-gradient partial sums")
    cdef int status
    with nogil:
        status = _grad_kernel(&p, &g[0, 0, 0, 0, 0], &x[0, 0, 0, 0, 0], partial, chunks,
                              &gw[0, 0, 0, 0, 0], num_threads)
    free(partial)
    _check(status)


# ------------------------------------------------------------------------ grad of bias

cdef inline const floating *_row_start(const floating *a, const Py_ssize_t *strides,
                                       const Py_ssize_t *lengths,
                                       Py_ssize_t row) noexcept nogil:
    """Start of row number `row` of `a`, a logical array (batch, lengths[0], lengths[1],
    ., .) of these element strides. (A local Row: a prange variable written only
    through a pointer would be shared between threads.)"""
    cdef Row r
    _split_row(&r, row, lengths)
    return a + _row_offset(strides, r.n, r.d, r.h)


cdef void _grad_bias(const Problem *p,
                     const floating *g,     # IN  logical (N, OD, OH, OW, Cout), strides p.ys
                     floating *partial,     # WORK (chunks, OW, Cout)
                     Py_ssize_t chunks,
                     floating *gb,          # OUT (Cout,)
                     int num_threads) noexcept nogil:
    # Each chunk adds its rows element-wise into a row-sized accumulator (independent
    # sums: vectorised, no serial dependency chain), reduced over the row only at the end.
    cdef Py_ssize_t cout = p.cout, ow_n = p.n_out[2], width = p.n_out[2] * p.cout
    cdef Py_ssize_t rows = p.batch * p.n_out[0] * p.n_out[1]
    cdef bint contiguous_rows = p.ys[4] == 1 and p.ys[3] == cout
    cdef Py_ssize_t chunk, row, o, co, c
    cdef floating *buf
    cdef const floating *grow
    cdef floating total
    for chunk in prange(chunks, schedule='static', num_threads=num_threads):
        buf = partial + chunk * width
        memset(buf, 0, width * sizeof(floating))
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            grow = _row_start(g, p.ys, p.n_out, row)
            if contiguous_rows:
                _axpy(width, <floating> 1, grow, 1, buf)
            else:
                for o in range(ow_n):
                    for co in range(cout):
                        buf[o * cout + co] = buf[o * cout + co] + grow[o * p.ys[3]
                                                                       + co * p.ys[4]]
    # Sum each chunk's row (in order), then the chunks (in order).
    for co in range(cout):
        total = 0
        for c in range(chunks):
            for o in range(ow_n):
                total = total + partial[c * width + o * cout + co]
        gb[co] = total


def grad_bias(const floating[:, :, :, :, :] g, floating[::1] gb, geometry,
              tuple y_strides, int num_threads):
    """gb[co] = sum over batch and space of g[..., co], reduced in a fixed order."""
    cdef Problem p = _problem(geometry, (0, 0, 0, 0, 0), y_strides)  # no x-side array
    cdef Py_ssize_t chunks = _num_chunks(p.batch * p.n_out[0] * p.n_out[1],
                                         p.batch * p.n_out[0] * p.n_out[1] * p.n_out[2],
                                         p.n_out[2] * p.cout * sizeof(floating))
    cdef floating *partial = <floating *> malloc(chunks * p.n_out[2] * p.cout
                                                 * sizeof(floating))
    if partial == NULL:
        raise MemoryError("tconv3d: no memory for the bias-gradient partial sums")
    try:
        with nogil:
            _grad_bias(&p, &g[0, 0, 0, 0, 0], partial, chunks, &gb[0], num_threads)
    finally:
        free(partial)
