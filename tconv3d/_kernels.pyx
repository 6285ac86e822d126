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
# - Work is split with `prange` over whole rows (batch, depth, height) of the array being
#   written, each written by exactly one thread: no atomics, and the summation order of
#   every output element does not depend on the thread count. The compute-bound loops
#   hand rows out dynamically, a few at a time (_grab: a core slowed by another process
#   leaves its rows to the others; which thread writes a row changes nothing in it);
#   copies split statically.
# - Taps are never scanned: those joining an output to inputs, or an input to outputs,
#   are enumerated arithmetically ("taps, by arithmetic" below), so the cost is the
#   multiply-adds performed plus the size of the arrays, for any stride, dilation and
#   kernel length; every element takes its taps in a fixed order (the gradients: width
#   tap, then depth and height taps, each increasing; the forward's rows: width taps
#   increasing, then depth and height taps decreasing, their input rows increasing:
#   _output_taps).
# - Along the width axis a row is worked in runs of consecutive voxels accumulated
#   together: each kernel tap matrix is loaded once per run instead of once per voxel,
#   and the channel contraction is a GEMM whose vectors run over contiguous channels
#   (_gemm.h). Which GEMMs a run takes is the same in every row, listed once per call;
#   each width tap's GEMMs over the row's depth and height taps are one batch-reduce GEMM
#   (its C tile stays in registers), and so are a kernel-gradient chunk's rows per tap.
# - The order of every sum depends only on the problem: not on the thread count, the
#   memory layout (strides), nor on where an element falls in a run or a GEMM tile.
# - The kernel-gradient reduction runs over a fixed partition into chunks (independent
#   of the thread count), each chunk into its own buffer, and the buffers are added in
#   chunk order: results are bitwise identical for any number of threads.

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy, memset


cdef extern from "math.h" nogil:
    float expf(float)
    double exp(double)
    float tanhf(float)
    double tanh(double)
    float erff(float)
    double erf(double)

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
    ctypedef void (*tc_brgemm_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                     const float **, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                     const float **, Py_ssize_t, Py_ssize_t, float *,
                                     Py_ssize_t) noexcept nogil
    ctypedef void (*tc_brgemm_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                     const double **, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                     const double **, Py_ssize_t, Py_ssize_t, double *,
                                     Py_ssize_t) noexcept nogil
    tc_brgemm_f32_t tc_brgemm_f32
    tc_brgemm_f64_t tc_brgemm_f64
    void tc_gemm_rows_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float **Ar,
                          Py_ssize_t sap, const float *B, Py_ssize_t ldb,
                          float **Cr, Py_ssize_t coff) noexcept nogil
    void tc_gemm_rows_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double **Ar,
                          Py_ssize_t sap, const double *B, Py_ssize_t ldb,
                          double **Cr, Py_ssize_t coff) noexcept nogil
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
                     float *y, Py_ssize_t incy) noexcept nogil
    void tc_axpy_f64(Py_ssize_t n, double alpha, const double *x, Py_ssize_t incx,
                     double *y, Py_ssize_t incy) noexcept nogil
    void tc_cmadd_f32(Py_ssize_t m, Py_ssize_t n, const float *A, Py_ssize_t sai,
                      const float *B, float *C, Py_ssize_t ldc) noexcept nogil
    void tc_cmadd_f64(Py_ssize_t m, Py_ssize_t n, const double *A, Py_ssize_t sai,
                      const double *B, double *C, Py_ssize_t ldc) noexcept nogil
    void tc_cdot_f32(Py_ssize_t m, Py_ssize_t n, const float *A, Py_ssize_t sai,
                     const float *X, Py_ssize_t sxi, float *C) noexcept nogil
    void tc_cdot_f64(Py_ssize_t m, Py_ssize_t n, const double *A, Py_ssize_t sai,
                     const double *X, Py_ssize_t sxi, double *C) noexcept nogil
    void tc_interleave2_f32(const float *a, const float *b, float *y,
                            Py_ssize_t n) noexcept nogil
    void tc_interleave2_f64(const double *a, const double *b, double *y,
                            Py_ssize_t n) noexcept nogil
    int tc_variant_supported(int variant) noexcept nogil
    void tc_brgemm_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t nb,
                        const float **A, Py_ssize_t aoff, Py_ssize_t sai, Py_ssize_t sap,
                        const float **B, Py_ssize_t boff, Py_ssize_t ldb, float *C,
                        Py_ssize_t ldc, int half_last) noexcept nogil
    void tc_gemm_rows_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float **Ar,
                           Py_ssize_t sap, const float *B, Py_ssize_t ldb, float **Cr,
                           Py_ssize_t coff) noexcept nogil
    int tc_bf16_supported() noexcept nogil
    void tc_round_bf16(const float *src, Py_ssize_t stride, uint16_t *dst,
                       Py_ssize_t n) noexcept nogil
    void tc_widen_bf16(const uint16_t *src, float *dst, Py_ssize_t n) noexcept nogil
    void tc_grouped_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t ca, Py_ssize_t cb,
                        Py_ssize_t lanes, Py_ssize_t nb, const float **A, Py_ssize_t aoff,
                        Py_ssize_t sai, const float **B, float *C,
                        Py_ssize_t ldc) noexcept nogil
    void tc_grouped_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t ca, Py_ssize_t cb,
                        Py_ssize_t lanes, Py_ssize_t nb, const double **A, Py_ssize_t aoff,
                        Py_ssize_t sai, const double **B, double *C,
                        Py_ssize_t ldc) noexcept nogil
    void tc_grouped_dot_f32(Py_ssize_t k, Py_ssize_t n, Py_ssize_t ca, Py_ssize_t cb,
                            Py_ssize_t lanes, Py_ssize_t nb, const float **A,
                            Py_ssize_t aoff, Py_ssize_t sap, const float **B,
                            Py_ssize_t boff, Py_ssize_t sbp, float *C) noexcept nogil
    void tc_grouped_dot_f64(Py_ssize_t k, Py_ssize_t n, Py_ssize_t ca, Py_ssize_t cb,
                            Py_ssize_t lanes, Py_ssize_t nb, const double **A, Py_ssize_t aoff,
                            Py_ssize_t sap, const double **B, Py_ssize_t boff,
                            Py_ssize_t sbp, double *C) noexcept nogil
    Py_ssize_t tc_grouped_lanes(size_t itemsize) noexcept nogil
    Py_ssize_t tc_grouped_phases(Py_ssize_t cb, Py_ssize_t vl) noexcept nogil
    enum: TC_GROUPED_MAX_PERMUTATIONS
    enum: TC_GROUPED_MAX_CA
    void tc_transpose_f32(Py_ssize_t m, Py_ssize_t n, const float *S, Py_ssize_t lds,
                          float *D, Py_ssize_t ldd, int stream) noexcept nogil
    void tc_transpose_f64(Py_ssize_t m, Py_ssize_t n, const double *S, Py_ssize_t lds,
                          double *D, Py_ssize_t ldd, int stream) noexcept nogil
    void tc_store_fence() noexcept nogil
    void tc_stream_copy(void *dst, const void *src, size_t nbytes) noexcept nogil
    float tc_madd_f32(float a, float x, float y) noexcept nogil
    double tc_madd_f64(double a, double x, double y) noexcept nogil
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


# bfloat16 operands: "float32" widens them (tconv3d._ops) and runs the float32 kernels;
# "avx512_bf16" runs the forward's GEMMs on bfloat16 pairs (tc_brgemm_bf16).
BF16_VARIANTS = ("float32", "avx512_bf16")
cdef int _bf16_variant = 1 if tc_bf16_supported() else 0


def bf16_variant():
    """Name of the bfloat16 path in use ("float32" or "avx512_bf16")."""
    return BF16_VARIANTS[_bf16_variant]


def bf16_variants_supported():
    """The bfloat16 paths this build and this CPU can run."""
    return list(BF16_VARIANTS[:2 if tc_bf16_supported() else 1])


def set_bf16_variant(name):
    """Force a bfloat16 path (tests, benchmarks); "auto" picks the fastest one."""
    global _bf16_variant
    if name != "auto" and name not in BF16_VARIANTS:
        raise ValueError(f"bfloat16 variant must be 'auto' or one of {BF16_VARIANTS}, "
                         f"got {name!r}")
    if name != "auto" and name not in bf16_variants_supported():
        raise ValueError(f"bfloat16 variant {name!r} is not available on this CPU/build; "
                         f"available: {bf16_variants_supported()}")
    _bf16_variant = 1 if name == "auto" and tc_bf16_supported() else \
        (BF16_VARIANTS.index(name) if name != "auto" else 0)


cdef inline void _gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating *A, Py_ssize_t sai, Py_ssize_t sap,
                       const floating *B, Py_ssize_t ldb,
                       floating *C, Py_ssize_t ldc) noexcept nogil:
    """C[i, j] += sum_p A[i*sai + p*sap] * B[p*ldb + j] (see _gemm.h)."""
    if floating is float:
        tc_gemm_f32(m, n, k, A, sai, sap, B, ldb, C, ldc)
    else:
        tc_gemm_f64(m, n, k, A, sai, sap, B, ldb, C, ldc)


cdef inline void _brgemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t nb,
                         const floating **A, Py_ssize_t aoff, Py_ssize_t sai, Py_ssize_t sap,
                         const floating **B, Py_ssize_t boff, Py_ssize_t ldb,
                         floating *C, Py_ssize_t ldc, bint pairs=False,
                         bint half_last=False) noexcept nogil:
    """C[i, j] += sum_b sum_p A[b][aoff + i*sai + p*sap] * B[b][boff + p*ldb + j]: one C
    tile in registers over nb products, the bits of nb _gemm calls (see _gemm.h); with
    `pairs`, A and B hold bfloat16 pairs (tc_brgemm_bf16, float32 only), the last of
    each product's k words a single value with `half_last`."""
    if floating is float:
        if pairs:
            tc_brgemm_bf16(m, n, k, nb, A, aoff, sai, sap, B, boff, ldb, C, ldc, half_last)
            return
        tc_brgemm_f32(m, n, k, nb, A, aoff, sai, sap, B, boff, ldb, C, ldc)
    else:
        tc_brgemm_f64(m, n, k, nb, A, aoff, sai, sap, B, boff, ldb, C, ldc)


# The forward's tap matrices (k x n) are stored in column panels PANEL_BYTES wide
# (pack_panels): panel j0 // width is a contiguous k x width block at offset j0 * k, so a GEMM
# tile reads B rows 128 bytes apart instead of n * itemsize apart (strides of a large
# power of two fall on a few cache sets and thrash L1). With n <= width, or k == 1, this
# is the plain row-major matrix. Only where B lives changes, not the order of any sum.
cdef Py_ssize_t _PANEL_BYTES = 128
cdef Py_ssize_t TAP_BLOCK = 8   # taps per block of pack_panels from PyTorch's layout
PANEL_BYTES = _PANEL_BYTES


def pack_panels(const floating[:, :, :, :, :] kernel, floating[:, :, :, :, ::1] out,
                Py_ssize_t groups, int num_threads):
    """out = the forward's tap matrices of Keras' (kd, kh, kw, F/G, C) kernel (any
    strides): out[td, th, tw, g*a:(g+1)*a] holds tap (td, th, tw)'s (a, b) = (C/G, F/G)
    matrix of group g, element (i, j) = kernel[td, th, tw, j, g*a + i], in column panels.
    Each panel is a transposition (in SIMD blocks) of the kernel's contiguous rows: its
    channels (Keras' layout) or, in PyTorch's (in, out, kd, kh, kw), its taps, a panel
    row then gathering one element from each tap's matrix; with the filters contiguous
    (PyTorch's channels_last_3d weights), its rows are the panel's rows."""
    cdef Py_ssize_t kd = kernel.shape[0], kh = kernel.shape[1], kw = kernel.shape[2]
    cdef Py_ssize_t b = kernel.shape[3], a = kernel.shape[4] // groups
    cdef Py_ssize_t pw = _PANEL_BYTES // sizeof(floating), panels = (b + pw - 1) // pw
    cdef Py_ssize_t taps = kd * kh * kw, tap_size = groups * a * b
    cdef Py_ssize_t s_out = kernel.strides[3] // sizeof(floating)
    cdef Py_ssize_t s_in = kernel.strides[4] // sizeof(floating)
    cdef bint channels_inner = s_in == 1
    cdef bint taps_inner = (not channels_inner and kernel.strides[2] == sizeof(floating)
                            and kernel.strides[1] == kw * sizeof(floating)
                            and kernel.strides[0] == kh * kw * sizeof(floating))
    cdef Py_ssize_t unit, jb, g, t, td, th, tw, j0, width, i, j
    cdef Py_ssize_t t0, nt, tblocks = (taps + TAP_BLOCK - 1) // TAP_BLOCK
    cdef floating *panel
    if kernel.size == 0:
        return
    with nogil:
        if taps_inner:
            # Per (group, panel, block of taps), a width x taps transposition per input
            # channel: consecutive channels fill consecutive rows of the block's tap
            # matrices (whole lines; a channel's rows of every tap at once would be as
            # many lines a tap matrix apart, in one L1 set).
            for unit in prange(groups * panels * tblocks, schedule='static',
                               num_threads=num_threads):
                t0 = unit % tblocks * TAP_BLOCK
                nt = TAP_BLOCK if taps - t0 > TAP_BLOCK else taps - t0
                jb = unit // tblocks % panels
                g = unit // (tblocks * panels)
                j0 = jb * pw
                width = pw if b - j0 > pw else b - j0
                for i in range(g * a, (g + 1) * a):
                    _transpose(width, nt, &kernel[0, 0, 0, j0, i] + t0, s_out,
                               &out[0, 0, 0, 0, 0] + t0 * tap_size + g * a * b + j0 * a
                               + (i - g * a) * width, tap_size)
        else:
            for unit in prange(taps * groups * panels, schedule='static',
                               num_threads=num_threads):
                jb = unit % panels
                g = unit // panels % groups
                t = unit // (panels * groups)
                td = t // (kh * kw)
                th = t // kw % kh
                tw = t % kw
                j0 = jb * pw
                width = pw if b - j0 > pw else b - j0
                panel = &out[td, th, tw, g * a, 0] + j0 * a
                if channels_inner:
                    _transpose(width, a, &kernel[td, th, tw, j0, g * a], s_out, panel, width)
                    continue
                if s_out == 1:   # filters inner (PyTorch's channels_last_3d weights)
                    for i in range(a):
                        memcpy(panel + i * width, &kernel[td, th, tw, j0, g * a + i],
                               width * sizeof(floating))
                    continue
                for i in range(a):   # writes in order; the reads reuse `width` cache lines
                    for j in range(width):
                        panel[i * width + j] = kernel[td, th, tw, j0 + j, g * a + i]


cdef inline void _brgemm_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t nb,
                                const floating **A, Py_ssize_t aoff, Py_ssize_t sai,
                                Py_ssize_t sap, const floating **B, floating *C,
                                Py_ssize_t ldc, bint pairs) noexcept nogil:
    """_brgemm with B[b] a k x n tap matrix in column panels, panel by panel; `pairs` as
    in _brgemm."""
    cdef Py_ssize_t pw = _PANEL_BYTES // sizeof(floating), jb, j0, width
    for jb in range((n + pw - 1) // pw):
        j0 = jb * pw
        width = pw if n - j0 > pw else n - j0
        _brgemm(m, width, k, nb, A, aoff, sai, sap, B, j0 * k, width, C + j0, ldc, pairs)


cdef inline void _gemm_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating **Ar,
                            Py_ssize_t sap, const floating *B, Py_ssize_t ldb,
                            floating **Cr, Py_ssize_t coff=0, bint pairs=False) noexcept nogil:
    """Cr[i][coff + j] += sum_p Ar[i][p*sap] * B[p*ldb + j]: rows by pointer (_gemm.h);
    `pairs` as in _brgemm."""
    if floating is float:
        if pairs:
            tc_gemm_rows_bf16(m, n, k, Ar, sap, B, ldb, Cr, coff)
            return
        tc_gemm_rows_f32(m, n, k, Ar, sap, B, ldb, Cr, coff)
    else:
        tc_gemm_rows_f64(m, n, k, Ar, sap, B, ldb, Cr, coff)


cdef inline void _gemm_rows_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                   const floating **Ar, Py_ssize_t sap, const floating *B,
                                   floating **Cr, bint pairs) noexcept nogil:
    """Cr[i][j] += sum_p Ar[i][p*sap] * B[p, j], rows by pointer (see _gemm.h), B a k x n
    tap matrix in column panels, panel by panel; `pairs` as in _brgemm."""
    cdef Py_ssize_t pw = _PANEL_BYTES // sizeof(floating), jb, j0, width
    for jb in range((n + pw - 1) // pw):
        j0 = jb * pw
        width = pw if n - j0 > pw else n - j0
        _gemm_rows(m, width, k, Ar, sap, B + j0 * k, width, Cr, j0, pairs)


cdef inline void _axpy(Py_ssize_t n, floating alpha, const floating *x, Py_ssize_t incx,
                       floating *y, Py_ssize_t incy) noexcept nogil:
    """y[i*incy] += alpha * x[i*incx] (see _gemm.h)."""
    if floating is float:
        tc_axpy_f32(n, alpha, x, incx, y, incy)
    else:
        tc_axpy_f64(n, alpha, x, incx, y, incy)


cdef inline floating _madd(floating alpha, floating x, floating y) noexcept nogil:
    """alpha * x + y, rounded as _axpy rounds it."""
    if floating is float:
        return tc_madd_f32(alpha, x, y)
    else:
        return tc_madd_f64(alpha, x, y)


cdef inline void _cmadd(Py_ssize_t m, Py_ssize_t n, const floating *A, Py_ssize_t sai,
                        const floating *B, floating *C, Py_ssize_t ldc) noexcept nogil:
    """C[i*ldc + j] += A[i*sai + j] * B[j]: depthwise taps, channels as vectors."""
    if floating is float:
        tc_cmadd_f32(m, n, A, sai, B, C, ldc)
    else:
        tc_cmadd_f64(m, n, A, sai, B, C, ldc)


cdef inline void _cdot(Py_ssize_t m, Py_ssize_t n, const floating *A, Py_ssize_t sai,
                       const floating *X, Py_ssize_t sxi, floating *C) noexcept nogil:
    """C[j] += sum over i in order of A[i*sai + j] * X[i*sxi + j] (see _gemm.h)."""
    if floating is float:
        tc_cdot_f32(m, n, A, sai, X, sxi, C)
    else:
        tc_cdot_f64(m, n, A, sai, X, sxi, C)


cdef inline void _grouped_madd(Py_ssize_t m, Py_ssize_t n, Py_ssize_t ca, Py_ssize_t cb,
                               Py_ssize_t lanes, Py_ssize_t nb, const floating **A,
                               Py_ssize_t aoff, Py_ssize_t sai, const floating **B,
                               floating *C, Py_ssize_t ldc) noexcept nogil:
    """A batch-reduce GEMM of every group at once, ca channels in, cb out, in vectors of
    `lanes` (_group_lanes; see _gemm.h)."""
    if floating is float:
        tc_grouped_f32(m, n, ca, cb, lanes, nb, A, aoff, sai, B, C, ldc)
    else:
        tc_grouped_f64(m, n, ca, cb, lanes, nb, A, aoff, sai, B, C, ldc)


cdef inline void _grouped_dot(Py_ssize_t k, Py_ssize_t n, Py_ssize_t ca, Py_ssize_t cb,
                              Py_ssize_t lanes, Py_ssize_t nb, const floating **A,
                              Py_ssize_t aoff, Py_ssize_t sap, const floating **B,
                              Py_ssize_t boff, Py_ssize_t sbp, floating *C) noexcept nogil:
    """Every group's (ca x cb) kernel-gradient sums at once, in (ca, G, cb), in vectors of
    `lanes` (see _gemm.h)."""
    if floating is float:
        tc_grouped_dot_f32(k, n, ca, cb, lanes, nb, A, aoff, sap, B, boff, sbp, C)
    else:
        tc_grouped_dot_f64(k, n, ca, cb, lanes, nb, A, aoff, sap, B, boff, sbp, C)


cdef inline void _transpose(Py_ssize_t m, Py_ssize_t n, const floating *S, Py_ssize_t lds,
                            floating *D, Py_ssize_t ldd, bint stream=False) noexcept nogil:
    """D[j*ldd + i] = S[i*lds + j], in SIMD blocks (`stream`: see _gemm.h)."""
    if floating is float:
        tc_transpose_f32(m, n, S, lds, D, ldd, stream)
    else:
        tc_transpose_f64(m, n, S, lds, D, ldd, stream)


cdef inline void _fill_rows(floating *c, Py_ssize_t rows, Py_ssize_t ldc, Py_ssize_t n,
                            const floating *value) noexcept nogil:
    """c[b*ldc + j] = value[j] (0 when value is NULL), 0 <= b < rows, 0 <= j < n: the
    starting sums of a tile. Contiguous rows by doubling copies (a call per row would
    cost more than its bytes: 13 % of a k3 s2 forward with bias)."""
    cdef Py_ssize_t b, done = 1, count
    if rows <= 0:
        return
    if value == NULL and ldc == n:
        memset(c, 0, rows * n * sizeof(floating))
    elif n == 1:
        for b in range(rows):
            c[b * ldc] = 0 if value == NULL else value[0]
    elif value == NULL:
        for b in range(rows):
            memset(c + b * ldc, 0, n * sizeof(floating))
    elif ldc == n:
        memcpy(c, value, n * sizeof(floating))
        while done < rows:
            count = done if rows - done > done else rows - done
            memcpy(c + done * n, c, count * n * sizeof(floating))
            done = done + count
    else:
        for b in range(rows):
            memcpy(c + b * ldc, value, n * sizeof(floating))


cdef inline void _store_tile(const floating *acc, Py_ssize_t nb, Py_ssize_t nc,
                             floating *dst, Py_ssize_t s_b, Py_ssize_t s_c) noexcept nogil:
    """dst[b*s_b + c*s_c] = acc[b*nc + c]: a tile of nb voxels x nc channels, accumulated
    apart, into an array of any strides (channels_first: transposed into the channel
    planes, in SIMD blocks when its voxels are contiguous; see _gemm.h)."""
    cdef Py_ssize_t b, c
    if s_b == 1 and nc > 1:
        _transpose(nb, nc, acc, nc, dst, s_c)
    elif nc == 1:  # no per-voxel inner loop (GCC would call memcpy)
        for b in range(nb):
            dst[b * s_b] = acc[b]
    elif s_c <= s_b:  # channels inner: voxel by voxel
        for b in range(nb):
            for c in range(nc):
                dst[b * s_b + c * s_c] = acc[b * nc + c]
    else:
        for c in range(nc):
            for b in range(nb):
                dst[b * s_b + c * s_c] = acc[b * nc + c]


cdef inline void _store_phases(const floating *acc, Py_ssize_t phase_length, Py_ssize_t s,
                               Py_ssize_t nb, floating *dst, Py_ssize_t s_b) noexcept nogil:
    """dst[o*s_b] = acc[(o % s)*phase_length + o // s], 0 <= o < nb: a single channel's
    outputs accumulated phase by phase, back in their order (stride 2 as vectors).
    (Streamed past the caches with non-temporal stores, the rows of upsample_c1 took
    1.6x as long on the Zen 5 VM of the benchmarks.)"""
    cdef Py_ssize_t ph, t, full
    if s == 1 and s_b == 1:
        memcpy(dst, acc, nb * sizeof(floating))
    elif s == 2 and s_b == 1:
        if floating is float:
            tc_interleave2_f32(acc, acc + phase_length, dst, nb // 2)
        else:
            tc_interleave2_f64(acc, acc + phase_length, dst, nb // 2)
        if nb % 2:
            dst[nb - 1] = acc[nb // 2]
    else:   # the first nb - (phase_length - 1) * s phases are full, the others one short
        full = nb - (phase_length - 1) * s
        for ph in range(s if s < nb else nb):
            for t in range(phase_length if ph < full else phase_length - 1):
                dst[(ph + t * s) * s_b] = acc[ph * phase_length + t]


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(TCONV3D_OPENMP)


def default_num_threads():
    """Threads an OpenMP region uses by default now (honours threadpoolctl's limits)."""
    return omp_get_max_threads()


def simd_flags():
    """The SIMD instruction sets this build was compiled for."""
    return tconv3d_simd_flags().decode().split()


# Width-axis runs (voxels accumulated together) are sized so the accumulator stays in L1.
cdef Py_ssize_t ACC_ELEMENTS = 2048
cdef Py_ssize_t MAX_BLOCK = 512
# Kernel-gradient partition: at most this many chunks, and at most this many bytes of
# partial buffers. Fixed numbers (not the thread count) so results are reproducible.
cdef Py_ssize_t MAX_CHUNKS = 64
cdef Py_ssize_t CHUNK_BUFFER_BYTES = 64 * 1024 * 1024
cdef Py_ssize_t MIN_CHUNK_VOXELS = 256
# Elements of the kernel gradient the final reduction over chunks takes at a time.
cdef Py_ssize_t REDUCE_BLOCK = 1024
# The kernel gradient's packed products (_packed_tap_gradient): voxels per pack (their
# g and x panels stay in L2), channels of g per panel (a whole number of GEMM tiles: 8
# of 6 rows, 6 of 8), and the distance between the voxels of g a product reads from
# which packing pays, with g's channels contiguous (measured: 0.75-0.8x the time at 1
# and 2 KiB, slower at 256 bytes).
cdef Py_ssize_t KC_VOXELS = 128
cdef Py_ssize_t PACK_ROWS = 48
cdef Py_ssize_t PACK_STRIDE_BYTES = 1024
# Elements round_bfloat16 and widen_bfloat16 convert at a time.
cdef Py_ssize_t ROUND_BLOCK = 1 << 16
# Voxels and channels per tile of a transposing copy (channels_last): one tile's source
# and destination lines stay in L1.
cdef Py_ssize_t TRANSPOSE_TILE = 32
# The forward's buffered rows (_store_rows): bytes of tiles stored in one burst (in L1
# with the GEMMs' operands), and the output size from which bursts stream past the caches.
cdef Py_ssize_t BURST_BYTES = 32 * 1024
cdef Py_ssize_t STREAM_BYTES = 2 * 1024 * 1024
# The input gradient of a channels_first grad_output (_grad_input_slabs): from this many
# elements between channels, slabs of grad_output planes of up to SLAB_BYTES copied
# channels-last.
cdef Py_ssize_t SLAB_MIN_PLANE = 512
cdef Py_ssize_t SLAB_BYTES = 2 * 1024 * 1024
# The forward of layers with tap matrices of at least this many bytes works in blocks of
# up to MAX_BLOCK_ROWS output rows (_conv_transpose_blocked).
cdef Py_ssize_t BLOCKED_TAP_BYTES = 64 * 1024
cdef Py_ssize_t MAX_BLOCK_ROWS = 64


ctypedef struct Problem:
    # One transposed convolution as the kernels see it, filled only by _problem().
    Py_ssize_t batch, cin, cout  # batch size, input channels and filters of one group
    Py_ssize_t groups       # independent convolutions side by side along the channels
    Py_ssize_t n_in[3]      # input spatial lengths (depth, height, width)
    Py_ssize_t k[3]         # kernel lengths (taps per axis)
    Py_ssize_t s[3]         # strides
    Py_ssize_t d[3]         # dilations
    Py_ssize_t n_out[3]     # output spatial lengths
    Py_ssize_t crop[3]      # left crop of the full-length axis
    Py_ssize_t xs[5]        # element strides of x / grad_input (n, d, h, w, c)
    Py_ssize_t ys[5]        # element strides of y / grad_output (n, d, h, w, c)
    bint bf16_pairs         # the operands hold bfloat16 pairs (tc_brgemm_bf16): the
                            # forward's x and kernel, or the input gradient's g and kernel


cdef Problem _problem(geometry, tuple x_strides, tuple y_strides) except *:
    """The Problem of `geometry` (the Python-side Geometry dataclass, read by field name)
    and the element strides of the logical x-side and y-side arrays.

    Python ints past Py_ssize_t raise OverflowError here, before any kernel runs.
    """
    cdef Problem p
    cdef int a
    p.batch = geometry.batch
    p.groups = geometry.groups
    p.cin = geometry.in_channels // p.groups
    p.cout = geometry.filters // p.groups
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
    p.bf16_pairs = False
    return p


# Which taps join which inputs and outputs, the width axis in runs, and each row's
# taps: by arithmetic, never by scanning all the taps.
include "_taps.pxi"


cdef int _check(int status) except -1:
    if status != 0:
        raise MemoryError("tconv3d: no memory for a thread's workspace")
    return 0


cdef inline const floating *_channels_contiguous(const floating *row, Py_ssize_t n,
                                                 Py_ssize_t c, const Py_ssize_t *strides,
                                                 floating *buf) noexcept nogil:
    """A row of n voxels x c channels (element strides strides[3], strides[4]) with its
    channels contiguous, voxel after voxel: the row itself (voxels strides[3] apart), or
    its copy in `buf` (voxels c apart)."""
    cdef Py_ssize_t v, ch
    if strides[4] == 1:
        return row
    for ch in range(c):
        for v in range(n):
            buf[v * c + ch] = row[v * strides[3] + ch * strides[4]]
    return buf


cdef inline bint _depthwise(const Problem *p) noexcept nogil:
    """One input channel to one filter per group: the kernels then take all the groups
    at once, the channels as vectors (_cmadd, _cdot), instead of group by group."""
    return p.cin == 1 and p.cout == 1 and p.groups > 1


cdef inline Py_ssize_t _group_lanes(const Problem *p, Py_ssize_t itemsize, Py_ssize_t ca,
                                    Py_ssize_t cb, Py_ssize_t channel_stride) noexcept nogil:
    """A few channels per group: ca channels in the GEMMs' operand A (its `channel_stride`
    1) and cb in their results, in several groups. The kernels then take all the groups
    at once (_grouped_madd, _grouped_dot), a vector holding several groups, instead of
    group by group in GEMMs of cb columns; the tap matrices in (ca, G, cb)
    (_swap_groups). Returns the lanes of those vectors: the vector length, or a half or
    a quarter of it where the groups' inputs would not fit in two vectors; 0 for group
    by group (no vector variant, ca too wide, or cb over half a vector: 12 filters per
    group ran slower in vectors of groups than in their own GEMMs)."""
    cdef Py_ssize_t vector = tc_grouped_lanes(itemsize), lanes = vector
    if (vector == 0 or p.groups == 1 or _depthwise(p) or channel_stride != 1
            or p.bf16_pairs or ca > TC_GROUPED_MAX_CA or 2 * cb > vector):
        return 0
    while lanes > cb and lanes * 4 >= vector:
        if _spans_fit(lanes, vector, ca, cb):
            return lanes
        lanes = lanes // 2
    return 0


cdef inline bint _spans_fit(Py_ssize_t lanes, Py_ssize_t vector, Py_ssize_t ca,
                            Py_ssize_t cb) noexcept nogil:
    """Whether a vector of `lanes` outputs, at any of its phases against the groups,
    reads its groups' ca inputs each from at most two vectors, and the phases'
    permutations fit in TC_GROUPED_MAX_PERMUTATIONS."""
    cdef Py_ssize_t phases = tc_grouped_phases(cb, lanes), phase, first
    if phases * ca > TC_GROUPED_MAX_PERMUTATIONS:
        return False
    for phase in range(phases):   # a vector's first lane, within its first group
        first = phase * lanes % cb
        if ((first + lanes - 1) // cb + 1) * ca > 2 * vector:
            return False
    return True


def groups_in_vectors(geometry, Py_ssize_t itemsize, bint forward):
    """Whether the forward (reading x) or the gradients (reading grad_output) of
    `geometry` take all its groups at once (_group_lanes) when the channels they read
    are contiguous."""
    cdef Problem p = _problem(geometry, (0,) * 5, (0,) * 5)
    if forward:
        return _group_lanes(&p, itemsize, p.cin, p.cout, 1) > 0
    return _group_lanes(&p, itemsize, p.cout, p.cin, 1) > 0


cdef inline Py_ssize_t _block_channels(const Problem *p, Py_ssize_t channels,
                                       bint grouped) noexcept nogil:
    """Channels a run accumulates per voxel: every group's when depthwise or grouped."""
    return p.groups * channels if _depthwise(p) or grouped else channels


cdef floating *_channels_outer(const Problem *p, const floating *w, Py_ssize_t a,
                               Py_ssize_t b) except? NULL:
    """A copy of the C-contiguous (kd, kh, kw, G, a, b) `w` as (kd, kh, kw, a, G, b), the
    layout of _grouped_madd's operand B (free it)."""
    cdef Py_ssize_t taps = p.k[0] * p.k[1] * p.k[2], tap = p.groups * a * b
    cdef floating *out = <floating *> malloc(taps * tap * sizeof(floating))
    if out == NULL:
        raise MemoryError("tconv3d: no memory for the kernel's grouped layout")
    _swap_groups(p, w, out, a, b, False)
    return out


cdef void _swap_groups(const Problem *p, const floating *src, floating *dst, Py_ssize_t a,
                       Py_ssize_t b, bint groups_outer) noexcept nogil:
    """dst = src's taps' (G, a, b) matrices as (a, G, b), or back with `groups_outer`."""
    cdef Py_ssize_t g, t, q, grouped_at, swapped_at
    cdef Py_ssize_t taps = p.k[0] * p.k[1] * p.k[2], tap = p.groups * a * b
    for t in range(taps):
        for g in range(p.groups):
            for q in range(a):
                grouped_at = t * tap + (g * a + q) * b
                swapped_at = t * tap + (q * p.groups + g) * b
                memcpy(dst + (grouped_at if groups_outer else swapped_at),
                       src + (swapped_at if groups_outer else grouped_at), b * sizeof(floating))


# ------------------------------------------------------------------ fused activations
#
# The forward applies an element-wise activation to each run of outputs as soon as its
# sums are complete, while it is in cache (no second pass over the output). Codes are
# the positions in FUSED_ACTIVATIONS; the formulas are tconv3d.activations' (Keras').

FUSED_ACTIVATIONS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh",
                     "silu")
# Those whose derivative is a function of the output (activation_grad).
FROM_OUTPUT = ("linear", "relu", "leaky_relu", "sigmoid", "tanh")


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _sigmoid(floating v) noexcept nogil:
    cdef floating e = _exp(-v if v >= 0 else v)   # exp(-|v|): no overflow
    return 1 / (1 + e) if v >= 0 else e / (1 + e)


cdef inline floating _activation(floating v, int act, floating alpha) noexcept nogil:
    cdef floating u
    if act == 1:
        return 0 if v < 0 else v                  # relu (NaN stays NaN)
    if act == 2:
        return v if v > 0 else v * alpha          # leaky_relu
    if act == 3:
        return _sigmoid(v)
    if act == 4:
        return tanhf(v) if floating is float else tanh(v)
    if act == 5:                                  # gelu, exact
        u = v * <floating> 0.7071067811865476
        return <floating> 0.5 * v * (1 + (erff(u) if floating is float else erf(u)))
    if act == 6:                                  # gelu, tanh approximation
        u = <floating> 0.7978845608028654 * (v + <floating> 0.044715 * v * v * v)
        return <floating> 0.5 * v * (1 + (tanhf(u) if floating is float else tanh(u)))
    if act == 7:
        return v * _sigmoid(v)                    # silu
    return v


cdef void _activate(floating *c, Py_ssize_t rows, Py_ssize_t ldc, Py_ssize_t n, int act,
                    floating alpha) noexcept nogil:
    """c[b*ldc + e] = activation(c[b*ldc + e]) for b < rows, e < n."""
    cdef Py_ssize_t b, e
    cdef floating *row
    if act == 0:
        return
    for b in range(rows):
        row = c + b * ldc
        if act == 1:   # the common case as its own loop: vectorised
            for e in range(n):
                row[e] = 0 if row[e] < 0 else row[e]
        else:
            for e in range(n):
                row[e] = _activation(row[e], act, alpha)


def round_bfloat16(const float[::1] src, uint16_t[::1] dst, int num_threads):
    """dst = the bfloat16 bits of src, each rounded once to nearest even (tc_round_bf16:
    ml_dtypes' cast, bit for bit), in blocks of ROUND_BLOCK elements."""
    cdef Py_ssize_t block, n = src.shape[0], first, count
    if n == 0:
        return
    with nogil:
        for block in prange((n + ROUND_BLOCK - 1) // ROUND_BLOCK, schedule='static',
                            num_threads=num_threads):
            first = block * ROUND_BLOCK
            count = ROUND_BLOCK if n - first > ROUND_BLOCK else n - first
            tc_round_bf16(&src[first], 1, &dst[first], count)


def widen_bfloat16(const uint16_t[::1] src, float[::1] dst, int num_threads):
    """dst = the float32 values of the bfloat16 bits src (exact), in blocks of
    ROUND_BLOCK elements."""
    cdef Py_ssize_t block, n = src.shape[0], first, count
    if n == 0:
        return
    with nogil:
        for block in prange((n + ROUND_BLOCK - 1) // ROUND_BLOCK, schedule='static',
                            num_threads=num_threads):
            first = block * ROUND_BLOCK
            count = ROUND_BLOCK if n - first > ROUND_BLOCK else n - first
            tc_widen_bf16(&src[first], &dst[first], count)


def bfloat16_pairs(const uint16_t[:, :, :, :, :] x, uint16_t[:, :, :, :, ::1] out,
                   Py_ssize_t groups, int num_threads):
    """out[..., g*e + i] = x[..., g*c + i] for the c channels of each group (logical
    (N, D, H, W, G*c) x, any strides), e = c rounded up to even, the padding channel 0:
    the halves of tconv3d._bfloat16.bfloat16_pairs' words. Row by row, along x's inner axis."""
    cdef Py_ssize_t nb = x.shape[0], nd = x.shape[1], nh = x.shape[2], nw = x.shape[3]
    cdef Py_ssize_t c = x.shape[4] // groups, e = out.shape[4] // groups
    cdef bint channels_inner = x.strides[4] <= x.strides[3]
    cdef Py_ssize_t row, n, d, h, w, g, i
    with nogil:
        for row in prange(nb * nd * nh, schedule='static', num_threads=num_threads):
            n = row // (nd * nh)
            d = row // nh % nd
            h = row % nh
            for g in range(groups):
                if e != c:
                    for w in range(nw):
                        out[n, d, h, w, g * e + c] = 0
                if channels_inner:
                    for w in range(nw):
                        for i in range(c):
                            out[n, d, h, w, g * e + i] = x[n, d, h, w, g * c + i]
                else:
                    for i in range(c):
                        for w in range(nw):
                            out[n, d, h, w, g * e + i] = x[n, d, h, w, g * c + i]


def bfloat16_row_pairs(const uint16_t[:, :, :, :] w, uint16_t[:, :, :, ::1] out,
                       int num_threads):
    """out[t, g, q, 2*c + h] = w[t, g, 2*q + h, c] (0 past w's rows) for each (rows x
    columns) matrix w[t, g] (any strides): the matrix on pairs of rows, each word two
    bfloat16 of one column (low half the even row), as tc_brgemm_bf16's B."""
    cdef Py_ssize_t taps = w.shape[0], groups = w.shape[1], rows = w.shape[2]
    cdef Py_ssize_t cols = w.shape[3], words = out.shape[2]
    cdef Py_ssize_t unit, t, g, q, c
    with nogil:
        for unit in prange(taps * groups * words, schedule='static', num_threads=num_threads):
            t = unit // (groups * words)
            g = unit // words % groups
            q = unit % words
            for c in range(cols):
                out[t, g, q, 2 * c] = w[t, g, 2 * q, c]
                out[t, g, q, 2 * c + 1] = w[t, g, 2 * q + 1, c] if 2 * q + 1 < rows else 0


def bfloat16_voxel_pairs(const uint16_t[:, :, :, :, :] a, uint16_t[:, :, :, :, :, ::1] out,
                         Py_ssize_t step, int num_threads):
    """out[n, d, h, r, q, 2*c + t] = a[n, d, h, r + (2*q + t)*step, c] (0 past the row),
    r < 2*step: each row's voxels `step` apart in pairs from every phase r, the words
    (low half the first voxel) the kernel gradient's GEMMs reduce over; a's channels
    contiguous (tconv3d._bfloat16.channels_inner), its other strides any."""
    cdef Py_ssize_t nb = a.shape[0], nd = a.shape[1], nh = a.shape[2], nw = a.shape[3]
    cdef Py_ssize_t nc = a.shape[4], phases = out.shape[3], words = out.shape[4]
    cdef Py_ssize_t sw = a.strides[3] // 2, sc = a.strides[4] // 2
    cdef Py_ssize_t row, n, d, h, r, q, c, w0, w1
    cdef const uint16_t *src
    cdef uint16_t *dst
    if a.size == 0:
        return
    with nogil:
        for row in prange(nb * nd * nh, schedule='static', num_threads=num_threads):
            n = row // (nd * nh)
            d = row // nh % nd
            h = row % nh
            src = &a[n, d, h, 0, 0]
            for r in range(phases):
                dst = &out[n, d, h, r, 0, 0]
                for q in range(words):
                    w0 = r + 2 * q * step
                    w1 = w0 + step
                    for c in range(nc):
                        dst[2 * c] = src[w0 * sw + c * sc] if w0 < nw else 0
                        dst[2 * c + 1] = src[w1 * sw + c * sc] if w1 < nw else 0
                    dst = dst + 2 * nc


ctypedef fused element:   # what a copy moves: the working dtypes and bfloat16's bits
    float
    double
    uint16_t


def channels_last(const element[:, :, :, :, :] a, element[:, :, :, :, ::1] out,
                  int num_threads):
    """out = a for a logical (N, D, H, W, C) `a` of any strides: its copy with contiguous
    channels, row by row in parallel; channel-strided rows (channels_first) transposed in
    SIMD blocks when their voxels are contiguous (float, double), else in tiles of
    TRANSPOSE_TILE voxels x channels, each written while in cache (NumPy copies such a
    transposition element by element, several times slower)."""
    cdef Py_ssize_t nb = a.shape[0], nd = a.shape[1], nh = a.shape[2], nw = a.shape[3]
    cdef Py_ssize_t nc = a.shape[4], sw = a.strides[3] // sizeof(element)
    cdef Py_ssize_t sc = a.strides[4] // sizeof(element), tile = TRANSPOSE_TILE
    cdef Py_ssize_t row, n, d, h, w, c, tw, tc, w0, c0, w1, c1
    cdef const element *src
    cdef element *dst
    if a.size == 0:
        return
    with nogil:
        for row in prange(nb * nd * nh, schedule='static', num_threads=num_threads):
            n = row // (nd * nh)
            d = row // nh % nd
            h = row % nh
            src = &a[n, d, h, 0, 0]
            dst = &out[n, d, h, 0, 0]
            if sc == 1 or nc == 1:
                for w in range(nw):
                    for c in range(nc):
                        dst[w * nc + c] = src[w * sw + c * sc]
                continue
            if element is float:   # channel rows of voxels: in SIMD blocks
                if sw == 1:
                    tc_transpose_f32(nc, nw, src, sc, dst, nc, False)
                    continue
            elif element is double:
                if sw == 1:
                    tc_transpose_f64(nc, nw, src, sc, dst, nc, False)
                    continue
            for tw in range((nw + tile - 1) // tile):
                w0 = tw * tile
                w1 = w0 + tile if w0 + tile < nw else nw
                for tc in range((nc + tile - 1) // tile):
                    c0 = tc * tile
                    c1 = c0 + tile if c0 + tile < nc else nc
                    for c in range(c0, c1):
                        for w in range(w0, w1):
                            dst[w * nc + c] = src[w * sw + c * sc]


def transpose(const floating[:, :, :] src, floating[:, :, :] dst, int num_threads):
    """dst[b, j, i] = src[b, i, j]: a batch of matrices with contiguous rows (of any
    stride) transposed, in SIMD blocks; e.g. kernels between PyTorch's (in, out, taps)
    and the taps-first layouts."""
    cdef Py_ssize_t nb = src.shape[0], m = src.shape[1], n = src.shape[2], b
    # Matrices with a side of one line or less (the taps of 2x2x2 kernels, PyTorch's
    # layout) by tiles of 8 x 8, the batch inner: a whole matrix at a time would write (or
    # read) as many short rows a matrix apart, in one L1 set, evicted before the next
    # matrix continues their lines (5x the time); other matrices whole.
    cdef bint tiled = (m if m < n else n) * sizeof(floating) <= 64
    cdef Py_ssize_t tile = 8 if tiled else (m if m > n else n)
    cdef Py_ssize_t mt = (m + tile - 1) // tile, nt = (n + tile - 1) // tile, unit, i0, j0
    if (n > 1 and src.strides[2] != sizeof(floating)) \
            or (m > 1 and dst.strides[2] != sizeof(floating)):
        raise ValueError("tconv3d: transpose needs contiguous rows")
    if src.size == 0:
        return
    with nogil:
        for unit in prange(mt * nt if tiled else 0, schedule='static',
                           num_threads=num_threads):
            i0 = unit // nt * tile
            j0 = unit % nt * tile
            for b in range(nb):
                _transpose(tile if m - i0 > tile else m - i0, tile if n - j0 > tile else n - j0,
                           &src[b, i0, j0], src.strides[1] // sizeof(floating),
                           &dst[b, j0, i0], dst.strides[1] // sizeof(floating))
        for b in prange(0 if tiled else nb, schedule='static', num_threads=num_threads):
            _transpose(m, n, &src[b, 0, 0], src.strides[1] // sizeof(floating),
                       &dst[b, 0, 0], dst.strides[1] // sizeof(floating))


def activation_grad(const floating[::1] g, const floating[::1] y, floating[::1] out,
                    int act, floating alpha, int num_threads):
    """out = g * activation'(z), from the activation's output y = activation(z) (codes of
    FROM_OUTPUT), in one pass over the flat arrays."""
    cdef Py_ssize_t i, n = g.shape[0]
    cdef floating v
    with nogil:
        for i in prange(n, schedule='static', num_threads=num_threads):
            v = y[i]
            if act == 1:
                out[i] = g[i] if v > 0 else 0
            elif act == 2:
                out[i] = g[i] if v > 0 else g[i] * alpha
            elif act == 3:
                out[i] = g[i] * (v * (1 - v))
            elif act == 4:
                out[i] = g[i] * (1 - v * v)
            else:
                out[i] = g[i]


cdef void _store_bf16(const float *acc, Py_ssize_t nb, Py_ssize_t cout, uint16_t *dst,
                      Py_ssize_t s_b, Py_ssize_t s_c) noexcept nogil:
    """dst[b*s_b + c*s_c] = acc[b*cout + c] rounded to bfloat16 (tc_round_bf16), along
    whichever of dst's axes is contiguous."""
    cdef Py_ssize_t b, c
    if s_c == 1 and s_b == cout:
        tc_round_bf16(acc, 1, dst, nb * cout)
    elif s_c == 1:
        for b in range(nb):
            tc_round_bf16(acc + b * cout, 1, dst + b * s_b, cout)
    elif s_b == 1:
        for c in range(cout):
            tc_round_bf16(acc + c, cout, dst + c * s_c, nb)
    else:
        for b in range(nb):
            for c in range(cout):
                tc_round_bf16(acc + b * cout + c, 1, dst + b * s_b + c * s_c, 1)


cdef bint _check_pairs(const Problem *p, bint pairs, size_t itemsize) except -1:
    """`pairs`, if the problem can run on bfloat16 pairs; else ValueError."""
    if pairs and (itemsize != sizeof(float) or not tc_bf16_supported() or _depthwise(p)
                  or (p.cin == 1 and p.cout == 1)):
        raise ValueError("tconv3d: bfloat16 pairs need float32 words, a CPU with "
                         "AVX512_BF16 and a GEMM-shaped problem")
    return pairs


# ----------------------------------------------------------------------------- forward

cdef inline Py_ssize_t _burst_rows(Py_ssize_t row_bytes) noexcept nogil:
    """Output rows whose tiles are stored in one burst: BURST_BYTES of them, at least one."""
    cdef Py_ssize_t n = BURST_BYTES // row_bytes if row_bytes > 0 else 1
    return 1 if n < 1 else n


cdef inline bint _streamed(const Problem *p, size_t itemsize) noexcept nogil:
    """Whether the forward's output is larger than STREAM_BYTES (more than a core's
    caches): stored with non-temporal stores, which write whole lines without reading
    them first."""
    return (p.batch * p.n_out[0] * p.n_out[1] * p.n_out[2] * p.groups * p.cout
            * <Py_ssize_t> itemsize > STREAM_BYTES)


cdef inline bint _buffered_rows(const Problem *p, size_t itemsize) noexcept nogil:
    """Whether the forward accumulates whole output rows in a buffer, stored a block of
    rows at a time (_store_rows): for channel planes (channels_first: voxels contiguous,
    channels not), whose many lines cost several times as much stored run by run between
    GEMMs; and for large outputs with contiguous rows, which the GEMMs would otherwise
    read from memory before writing (non-temporal stores from the buffer do not). Not
    for one channel or depthwise layers, whose loops write y themselves."""
    if _depthwise(p) or (p.cin == 1 and p.cout == 1):
        return False
    if p.ys[4] != 1:
        return p.ys[3] == 1
    return p.ys[3] == p.groups * p.cout and _streamed(p, itemsize)


cdef void _store_rows(const Problem *p, const floating *acc, Py_ssize_t first,
                      Py_ssize_t last, floating *y, Row *r) noexcept nogil:
    """Output rows first <= row < last, accumulated in acc as y's rows with contiguous
    channels would be, copied into y (transposed into its channel planes if it has
    them), rows that follow each other in y as one: with non-temporal stores when
    _streamed."""
    cdef Py_ssize_t ow_n = p.n_out[2], row_elements = ow_n * p.groups * p.cout
    cdef bint stream = _streamed(p, sizeof(floating))
    cdef Py_ssize_t row, end, grp, m
    cdef const floating *src
    cdef floating *dst
    row = first
    while row < last:
        _split_row(r, row, p.n_out)
        dst = y + _row_offset(p.ys, r.n, r.d, r.h)
        end = row + 1
        while end < last:   # the next row starts where this one ends (in every plane)
            _split_row(r, end, p.n_out)
            if y + _row_offset(p.ys, r.n, r.d, r.h) != dst + (end - row) * ow_n * p.ys[3]:
                break
            end = end + 1
        src = acc + (row - first) * row_elements
        m = (end - row) * ow_n
        if p.ys[4] == 1:   # contiguous channels: buffered only when _streamed
            tc_stream_copy(dst, src, m * p.groups * p.cout * sizeof(floating))
        else:
            for grp in range(p.groups):
                _transpose(m, p.cout, src + grp * p.cout, p.groups * p.cout,
                           dst + grp * p.cout * p.ys[4], p.ys[4], stream)
        row = end


cdef int _conv_transpose(const Problem *p,
                         const Phases *ph,      # IN  taps into output rows (depth, height)
                         const Runs *runs,      # IN  the width GEMMs of runs of outputs
                         const floating *x,     # IN  logical (N, D, H, W, G*Cin), strides p.xs
                         const floating *wt,    # IN  (kd, kh, kw, G, Cin, Cout), matrices in panels
                         const floating *bias,  # IN  (G*Cout,) or NULL
                         floating *y,           # OUT logical (N, OD, OH, OW, G*Cout), strides p.ys
                         uint16_t *y16,         # OUT instead of y when not NULL (pairs only):
                                                #     y rounded to bfloat16 (_store_bf16)
                         int act, floating alpha,  # IN  fused activation (_activate)
                         int num_threads) noexcept nogil:
    # Each thread takes whole output rows, and in each row every group in turn (the
    # groups of a row read the same input rows: they share the cache).
    cdef Py_ssize_t cin = p.cin, cout = p.cout, ow_n = p.n_out[2], sw = p.s[2]
    cdef Py_ssize_t rows = p.batch * p.n_out[0] * p.n_out[1]
    cdef Py_ssize_t row, grp, run, o0, nb, b, e, td, th, co, ldc, seg, u, nbat
    cdef Py_ssize_t blk, first, last
    # Where the GEMMs accumulate: in whole rows of acc (laid out as y's rows with
    # contiguous channels), stored a block of rows at a time, when _buffered_rows; else
    # `direct`ly in y when its channels are contiguous; else run by run in acc.
    cdef bint buffered = _buffered_rows(p, sizeof(floating)) and y16 == NULL
    cdef bint direct = (p.ys[4] == 1 and not (cin == 1 and cout == 1) and y16 == NULL
                        and not buffered)
    cdef Py_ssize_t row_elements = ow_n * p.groups * cout if buffered else 0
    cdef Py_ssize_t block = _burst_rows(row_elements * sizeof(floating)) if buffered else 1
    cdef Py_ssize_t blocks = (rows + block - 1) // block
    cdef Py_ssize_t max_batch = p.k[0] * p.k[1]
    cdef Py_ssize_t yoff
    cdef const floating **arows = NULL   # per thread: one segment's products
    cdef const floating **btaps = NULL
    # Depthwise: all groups at once, the channels as vectors (rows of other layouts are
    # copied channel-contiguous into xbuf, and accumulated in acc).
    cdef Py_ssize_t groups = p.groups
    cdef bint depthwise = _depthwise(p)
    # A few channels per group: all groups at once, as one group of `width` channels
    # (wt reordered by _channels_outer).
    cdef Py_ssize_t lanes = _group_lanes(p, sizeof(floating), cin, cout, p.xs[4])
    cdef bint grouped = lanes > 0
    cdef Py_ssize_t width = groups * cout if grouped else cout
    cdef Py_ssize_t acc_channels = _block_channels(p, cout, grouped)
    # One channel: a run's outputs accumulate in acc phase by phase (_store_phases).
    cdef bint single = cin == 1 and cout == 1 and not depthwise
    cdef Py_ssize_t phase_length, filled
    cdef floating tap
    cdef Py_ssize_t xstep = groups if depthwise and p.xs[4] != 1 else p.xs[3]
    cdef Row r
    cdef floating *acc = NULL
    cdef floating *xbuf = NULL
    cdef floating *cbuf
    cdef floating *yp
    cdef const floating *xrow
    cdef const floating *xg
    cdef const floating *wg
    cdef const floating *bg

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    # One channel: where each entry's first output goes in its run's phases (the same
    # for every row: divisions once per call, not per row and tap).
    cdef Py_ssize_t *phase_at = NULL
    if single:
        phase_at = <Py_ssize_t *> _thread_malloc(
            (runs.first[runs.count] + 1) * sizeof(Py_ssize_t), failed_ptr)
        for run in range(runs.count if phase_at != NULL else 0):
            o0 = run * runs.length
            nb = runs.length if ow_n - o0 > runs.length else ow_n - o0
            phase_length = (nb + sw - 1) // sw
            for e in range(runs.first[run], runs.first[run + 1]):
                u = runs.o[e] - o0
                phase_at[e] = (u % sw) * phase_length + u // sw

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        acc = <floating *> _thread_malloc(
            (block * row_elements if buffered
             else runs.length + sw if single else runs.length * acc_channels)
            * sizeof(floating), failed_ptr)
        xbuf = <floating *> _thread_malloc(p.n_in[2] * groups * sizeof(floating), failed_ptr)
        arows = <const floating **> _thread_malloc((2 * max_batch + 1) * sizeof(floating *),
                                                   failed_ptr)
        btaps = arows + max_batch
        r = _thread_row(p, failed_ptr)
        for blk in prange(blocks, schedule='dynamic', chunksize=_grab(blocks, num_threads)):
            if (acc == NULL or xbuf == NULL or arows == NULL or r.j[0] == NULL
                    or (single and phase_at == NULL)):
                continue  # flagged in `failed`: the call raises MemoryError
            first = blk * block
            last = first + block if rows - first > block else rows
            for row in range(first, last):
                _output_row(p, ph, row, &r)
                for run in range(runs.count if depthwise else 0):
                    o0 = run * runs.length
                    nb = runs.length if ow_n - o0 > runs.length else ow_n - o0
                    yp = y + _row_offset(p.ys, r.n, r.d, r.h) + o0 * p.ys[3]
                    cbuf = yp if p.ys[4] == 1 else acc
                    ldc = p.ys[3] if p.ys[4] == 1 else groups
                    _fill_rows(cbuf, nb, ldc, groups, bias)
                    for td in range(r.n_taps[0] if runs.first[run] < runs.first[run + 1] else 0):
                        for th in range(r.n_taps[1]):
                            xrow = _channels_contiguous(
                                x + _row_offset(p.xs, r.n, r.index[0][td], r.index[1][th]),
                                p.n_in[2], groups, p.xs, xbuf)
                            for e in range(runs.first[run], runs.first[run + 1]):
                                _cmadd(runs.hi[e] - runs.lo[e], groups,
                                       xrow + runs.lo[e] * xstep, xstep,
                                       wt + _tap_matrix(p, &r, td, th, runs.j[e]),
                                       cbuf + (runs.o[e] - o0) * ldc, sw * ldc)
                    _activate(cbuf, nb, ldc, groups, act, alpha)
                    if p.ys[4] != 1:
                        _store_tile(acc, nb, groups, yp, p.ys[3], p.ys[4])
                for grp in range(0 if depthwise else 1 if grouped else groups):
                    xg = x + grp * cin * p.xs[4]
                    wg = wt + grp * cin * cout
                    bg = bias
                    if bias != NULL:
                        bg = bias + grp * cout
                    for run in range(runs.count):
                        o0 = run * runs.length
                        nb = runs.length if ow_n - o0 > runs.length else ow_n - o0
                        yoff = (_row_offset(p.ys, r.n, r.d, r.h) + o0 * p.ys[3]
                                + grp * cout * p.ys[4])
                        yp = y + yoff
                        # With contiguous output channels the GEMMs accumulate straight into
                        # y (outputs ldc apart); otherwise into acc, stored afterwards.
                        if direct:
                            cbuf = yp
                            ldc = p.ys[3]
                        elif buffered:
                            cbuf = acc + ((row - first) * row_elements
                                          + o0 * groups * cout + grp * cout)
                            ldc = groups * cout
                        else:
                            cbuf = acc
                            ldc = width
                        if single:
                            # The run's outputs by phase (o % sw): each entry's outputs
                            # o, o + sw, ... are consecutive in acc, as its inputs
                            # lo <= i < hi are in x, so every axpy runs as vectors.
                            # (phases past the run's nb outputs stay empty: a stride
                            # larger than the run fills only nb of them)
                            phase_length = (nb + sw - 1) // sw
                            filled = (sw if sw < nb else nb) * phase_length
                            _fill_rows(acc, filled, 1, 1, bg)
                            for td in range(r.n_taps[0]):
                                for th in range(r.n_taps[1]):
                                    xrow = xg + _row_offset(p.xs, r.n, r.index[0][td],
                                                            r.index[1][th])
                                    for e in range(runs.first[run], runs.first[run + 1]):
                                        tap = wg[_tap_matrix(p, &r, td, th, runs.j[e])]
                                        if runs.hi[e] - runs.lo[e] == 1:
                                            acc[phase_at[e]] = _madd(
                                                tap, xrow[runs.lo[e] * p.xs[3]],
                                                acc[phase_at[e]])
                                            continue
                                        _axpy(runs.hi[e] - runs.lo[e], tap,
                                              xrow + runs.lo[e] * p.xs[3], p.xs[3],
                                              acc + phase_at[e], 1)
                            _activate(acc, filled, 1, 1, act, alpha)
                            _store_phases(acc, phase_length, sw, nb, yp, p.ys[3])
                            continue
                        _fill_rows(cbuf, nb, ldc, width, bg)
                        for e in range(runs.first[run], runs.first[run + 1]):
                            # One batch-reduce GEMM per width entry (outputs o, o + sw, ...
                            # of the run from inputs lo <= i < hi), over the row's (depth,
                            # height) taps: their products in the order of a GEMM each.
                            nbat = 0
                            for td in range(r.n_taps[0]):
                                for th in range(r.n_taps[1]):
                                    arows[nbat] = xg + _row_offset(p.xs, r.n, r.index[0][td],
                                                                   r.index[1][th])
                                    btaps[nbat] = wg + _tap_matrix(p, &r, td, th, runs.j[e])
                                    nbat = nbat + 1
                            if grouped:
                                _grouped_madd(runs.hi[e] - runs.lo[e], width, cin, cout, lanes,
                                              nbat, arows, runs.lo[e] * p.xs[3], p.xs[3], btaps,
                                              cbuf + (runs.o[e] - o0) * ldc, sw * ldc)
                                continue
                            _brgemm_panels(runs.hi[e] - runs.lo[e], cout, cin, nbat, arows,
                                           runs.lo[e] * p.xs[3], p.xs[3], p.xs[4], btaps,
                                           cbuf + (runs.o[e] - o0) * ldc, sw * ldc,
                                           p.bf16_pairs)
                        _activate(cbuf, nb, ldc, width, act, alpha)
                        if direct or buffered:
                            continue
                        if floating is float and y16 != NULL:
                            _store_bf16(acc, nb, cout, y16 + yoff, p.ys[3], p.ys[4])
                        else:
                            _store_tile(acc, nb, width, yp, p.ys[3], p.ys[4])
            if buffered:
                _store_rows(p, acc, first, last, y, &r)
        tc_store_fence()
        free(r.j[0])
        free(arows)
        free(xbuf)
        free(acc)
    free(phase_at)
    return -1 if failed else 0


cdef inline Py_ssize_t _grab(Py_ssize_t units, int num_threads) noexcept nogil:
    """Units a thread takes at a time from a dynamically scheduled loop: about 16 grabs
    per thread, so that the threads rarely meet at the shared counter (one unit per grab
    would make them contend for it once per row) and a slowed core leaves at most a
    sixteenth of the work behind."""
    cdef Py_ssize_t grab = units // (16 * (num_threads if num_threads > 1 else 1))
    return 1 if grab < 1 else grab


cdef inline Py_ssize_t _block_rows(const Problem *p, Py_ssize_t itemsize, Py_ssize_t rows,
                                   int num_threads) noexcept nogil:
    """Rows per block of the weight-heavy loops (_conv_transpose_blocked,
    _grad_input_blocked), or 0 for the row-by-row ones. Which loop runs depends only on
    the problem (a fixed threshold on the bytes of a tap matrix): it sets the order of
    the sums, hence the bits; the block size does not, so it may follow the threads."""
    if _depthwise(p) or (p.cin == 1 and p.cout == 1) \
            or p.cin * p.cout * itemsize < BLOCKED_TAP_BYTES:
        return 0
    cdef Py_ssize_t b = rows // (2 * (num_threads if num_threads > 1 else 1))
    return 1 if b < 1 else (MAX_BLOCK_ROWS if b > MAX_BLOCK_ROWS else b)


cdef inline Py_ssize_t _tap_input(const Problem *p, int a, Py_ssize_t o,
                                   Py_ssize_t j) noexcept nogil:
    """The input that tap j of axis a takes to output o, or -1 (i*s + j*d == o + crop)."""
    cdef Py_ssize_t num = o + p.crop[a] - j * p.d[a], i = num
    if num < 0:
        return -1
    if p.s[a] != 1:
        if num % p.s[a] != 0:
            return -1
        i = num // p.s[a]
    return i if i < p.n_in[a] else -1


cdef inline Py_ssize_t _tap_output(const Problem *p, int a, Py_ssize_t i,
                                    Py_ssize_t j) noexcept nogil:
    """The output that tap j of axis a takes input i to, or -1 (cropped away)."""
    cdef Py_ssize_t o = i * p.s[a] + j * p.d[a] - p.crop[a]
    return o if 0 <= o < p.n_out[a] else -1


cdef inline floating *_block_out(const Problem *p, floating *y, floating *acc, Py_ssize_t rr,
                                 Py_ssize_t run_length, Py_ssize_t o0, Py_ssize_t grp,
                                 const Row *r) noexcept nogil:
    """Where outputs o0... of row r (the rr-th of its block) accumulate: y itself when its
    channels are contiguous (and y is not NULL), else the row's part of acc."""
    if p.ys[4] == 1 and y != NULL:
        return y + _row_offset(p.ys, r.n, r.d, r.h) + o0 * p.ys[3] + grp * p.cout
    return acc + rr * run_length * p.cout


cdef int _conv_transpose_blocked(const Problem *p,
                                 const Runs *runs,      # IN  the width GEMMs of runs
                                 const floating *x,     # IN  as _conv_transpose's
                                 const floating *wt,
                                 const floating *bias,
                                 floating *y,           # OUT as _conv_transpose's
                                 uint16_t *y16,         # OUT as _conv_transpose's
                                 int act, floating alpha,
                                 Py_ssize_t block_rows,
                                 int num_threads) noexcept nogil:
    # Weight-heavy layers (many channels, small volumes): a row's taps need more weights
    # than the cache holds, so _conv_transpose would read them all again for every row.
    # Here each thread takes blocks of output rows and each tap matrix in turn for the
    # whole block: the weights are read once per block. Every output sums its taps in the
    # order depth, height, width (GEMMs of a run as in _conv_transpose).
    cdef Py_ssize_t cin = p.cin, cout = p.cout, ow_n = p.n_out[2], sw = p.s[2]
    cdef Py_ssize_t groups = p.groups, rows = p.batch * p.n_out[0] * p.n_out[1]
    cdef Py_ssize_t blocks = (rows + block_rows - 1) // block_rows
    cdef Py_ssize_t ldc = p.ys[3] if p.ys[4] == 1 and y16 == NULL else cout
    cdef Py_ssize_t yoff
    cdef Py_ssize_t blk, row, first, last, grp, run, o0, nb, b, e, jd, jh, i_d, i_h, co, t, m
    cdef Row r
    cdef floating *acc = NULL
    cdef floating *direct_y = y if y16 == NULL else NULL   # NULL: every block via acc
    cdef const floating **arows = NULL   # per thread: a block's rows of one GEMM
    cdef floating **crows = NULL
    cdef floating *cbuf
    cdef floating *yp
    cdef const floating *xrow
    cdef const floating *bg

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        acc = <floating *> _thread_malloc(block_rows * runs.length * cout * sizeof(floating),
                                          failed_ptr)
        r = _thread_row(p, failed_ptr)   # assigned here: each thread's own Row
        arows = <const floating **> _thread_malloc(
            2 * block_rows * runs.length * sizeof(floating *), failed_ptr)
        crows = <floating **> (arows + block_rows * runs.length)
        for blk in prange(blocks, schedule='dynamic', chunksize=_grab(blocks, num_threads)):
            if acc == NULL or r.j[0] == NULL or arows == NULL:
                continue  # flagged in `failed`: the call raises MemoryError
            first = blk * block_rows
            last = first + block_rows if rows - first > block_rows else rows
            for grp in range(groups):
                bg = bias
                if bias != NULL:
                    bg = bias + grp * cout
                for run in range(runs.count):
                    o0 = run * runs.length
                    nb = runs.length if ow_n - o0 > runs.length else ow_n - o0
                    for row in range(first, last):
                        _split_row(&r, row, p.n_out)
                        cbuf = _block_out(p, direct_y, acc, row - first, runs.length, o0,
                                          grp, &r)
                        _fill_rows(cbuf, nb, ldc, cout, bg)
                    for jd in range(p.k[0] if runs.first[run] < runs.first[run + 1] else 0):
                        for jh in range(p.k[1]):
                            for e in range(runs.first[run], runs.first[run + 1]):
                                # One GEMM over the block's rows that tap (jd, jh, j)
                                # reaches, their voxels gathered by pointer.
                                m = 0
                                for row in range(first, last):
                                    _split_row(&r, row, p.n_out)
                                    i_d = _tap_input(p, 0, r.d, jd)
                                    i_h = _tap_input(p, 1, r.h, jh)
                                    if i_d < 0 or i_h < 0:
                                        continue
                                    xrow = (x + _row_offset(p.xs, r.n, i_d, i_h)
                                            + grp * cin * p.xs[4])
                                    cbuf = _block_out(p, direct_y, acc, row - first,
                                                      runs.length, o0, grp, &r)
                                    for t in range(runs.hi[e] - runs.lo[e]):
                                        arows[m] = xrow + (runs.lo[e] + t) * p.xs[3]
                                        crows[m] = cbuf + (runs.o[e] - o0 + t * sw) * ldc
                                        m = m + 1
                                _gemm_rows_panels(
                                    m, cout, cin, arows, p.xs[4],
                                    wt + ((jd * p.k[1] + jh) * p.k[2] + runs.j[e])
                                    * groups * cin * cout + grp * cin * cout, crows,
                                    p.bf16_pairs)
                    for row in range(first, last):
                        _split_row(&r, row, p.n_out)
                        cbuf = _block_out(p, direct_y, acc, row - first, runs.length, o0,
                                          grp, &r)
                        _activate(cbuf, nb, ldc, cout, act, alpha)
                        yoff = (_row_offset(p.ys, r.n, r.d, r.h) + o0 * p.ys[3]
                                + grp * cout * p.ys[4])
                        if floating is float and y16 != NULL:
                            _store_bf16(cbuf, nb, cout, y16 + yoff, p.ys[3], p.ys[4])
                            continue
                        if p.ys[4] == 1:
                            continue
                        _store_tile(cbuf, nb, cout, y + yoff, p.ys[3], p.ys[4])
        free(r.j[0])
        free(arows)
        free(acc)
    return -1 if failed else 0


def forward(const floating[:, :, :, :, :] x, const floating[:, :, :, :, ::1] wt,
            const floating[::1] bias, floating[:, :, :, :, :] y, geometry,
            tuple x_strides, tuple y_strides, int num_threads, int activation=0,
            double alpha=0.0, bint bf16_pairs=False, uint16_t[:, :, :, :, :] y_bf16=None):
    """y = activation(conv_transpose3d(x, wt, bias)), bias None for none, activation a
    code of FUSED_ACTIVATIONS; see the module comment. With `bf16_pairs` (float32 arrays,
    bf16_variant() "avx512_bf16"), x and wt hold bfloat16 pairs of channels (geometry's
    in_channels counts the pairs) and the problem is not a channel-wise one; then the
    result may go to y_bf16 instead (y None, y_strides its strides), rounded to bfloat16
    as each block of outputs is complete."""
    cdef Problem p = _problem(geometry, x_strides, y_strides)
    p.bf16_pairs = _check_pairs(&p, bf16_pairs, sizeof(floating))
    if (y is None) == (y_bf16 is None) or (y_bf16 is not None and not bf16_pairs):
        raise ValueError("tconv3d: one output, y or (with bfloat16 pairs) y_bf16")
    cdef floating *y_ptr = NULL if y is None else &y[0, 0, 0, 0, 0]
    cdef uint16_t *y16_ptr = NULL if y_bf16 is None else &y_bf16[0, 0, 0, 0, 0]
    cdef Py_ssize_t block_rows = _block_rows(&p, sizeof(floating), p.batch * p.n_out[0]
                                             * p.n_out[1], num_threads)
    cdef const floating *bias_ptr = NULL
    if bias is not None:
        bias_ptr = &bias[0]
    cdef Phases ph
    cdef Runs runs
    cdef int status
    cdef bint grouped
    cdef const floating *wt_ptr = &wt[0, 0, 0, 0, 0]
    cdef floating *wt_grouped = NULL
    cdef Phase *table = <Phase *> malloc((_phase_count(&p) + 1) * sizeof(Phase))
    if table == NULL:
        raise MemoryError("tconv3d: no memory for the stride-phase table")
    try:
        _fill_phases(&p, table, &ph)
        grouped = _group_lanes(&p, sizeof(floating), p.cin, p.cout, p.xs[4]) > 0
        _make_runs(&p, &ph, _block_size(_block_channels(&p, p.cout, grouped)), &runs)
        try:
            if grouped:
                wt_grouped = _channels_outer(&p, &wt[0, 0, 0, 0, 0], p.cin, p.cout)
                wt_ptr = wt_grouped
            if block_rows > 0:   # weight-heavy: blocks of rows, each tap for the block
                with nogil:
                    status = _conv_transpose_blocked(
                        &p, &runs, &x[0, 0, 0, 0, 0], &wt[0, 0, 0, 0, 0], bias_ptr,
                        y_ptr, y16_ptr, activation, <floating> alpha, block_rows,
                        num_threads)
            else:
                with nogil:
                    status = _conv_transpose(&p, &ph, &runs, &x[0, 0, 0, 0, 0], wt_ptr,
                                             bias_ptr, y_ptr, y16_ptr, activation,
                                             <floating> alpha, num_threads)
        finally:
            _free_runs(&runs)
    finally:
        free(table)
        free(wt_grouped)
    _check(status)


# ----------------------------------------------------------------------- grad of input

cdef int _grad_input(const Problem *p,
                      const Runs *runs,     # IN  the width GEMMs of runs of inputs
                      const floating *g,    # IN  logical (N, OD, OH, OW, G*Cout), strides p.ys
                      const floating *w,    # IN  (kd, kh, kw, G, Cout, Cin) C-contiguous
                      floating *gx,         # OUT logical (N, D, H, W, G*Cin), strides p.xs
                      int num_threads) noexcept nogil:
    # Each thread takes whole input rows, and in each row every group in turn.
    cdef Py_ssize_t cin = p.cin, cout = p.cout, iw_n = p.n_in[2]
    cdef Py_ssize_t rows = p.batch * p.n_in[0] * p.n_in[1]
    cdef Py_ssize_t row, grp, run, i0, nb, b, e, td, th, ci, nbat
    cdef const floating **grows = NULL   # per thread: one entry's products
    cdef const floating **wtaps = NULL
    cdef Py_ssize_t gstep = p.s[2] * p.ys[3]  # between the outputs consecutive inputs feed
    # Depthwise: all groups at once, the channels as vectors (rows of other layouts are
    # copied channel-contiguous into gbuf, and accumulated in acc).
    cdef Py_ssize_t groups = p.groups
    cdef bint depthwise = _depthwise(p)
    # A few channels per group: all groups at once, as one group of `width` channels
    # (w reordered by _channels_outer).
    cdef Py_ssize_t lanes = _group_lanes(p, sizeof(floating), cout, cin, p.ys[4])
    cdef bint grouped = lanes > 0
    cdef Py_ssize_t width = groups * cin if grouped else cin
    cdef Py_ssize_t gvox = p.ys[3] if p.ys[4] == 1 else groups  # voxels apart in grow
    cdef Row r
    cdef floating *acc = NULL
    cdef floating *gbuf = NULL
    cdef floating *cbuf
    cdef Py_ssize_t ldc
    cdef const floating *grow
    cdef const floating *gg
    cdef const floating *wg
    cdef floating *ap
    cdef floating *gxp

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        acc = <floating *> _thread_malloc(
            runs.length * _block_channels(p, cin, grouped) * sizeof(floating), failed_ptr)
        gbuf = <floating *> _thread_malloc(p.n_out[2] * groups * sizeof(floating), failed_ptr)
        grows = <const floating **> _thread_malloc(
            (2 * p.k[0] * p.k[1] + 1) * sizeof(floating *), failed_ptr)
        wtaps = grows + p.k[0] * p.k[1]
        r = _thread_row(p, failed_ptr)
        for row in prange(rows, schedule='dynamic', chunksize=_grab(rows, num_threads)):
            if acc == NULL or gbuf == NULL or grows == NULL or r.j[0] == NULL:
                continue  # flagged in `failed`: the call raises MemoryError
            _input_row(p, row, &r)
            for run in range(runs.count if depthwise else 0):
                i0 = run * runs.length
                nb = runs.length if iw_n - i0 > runs.length else iw_n - i0
                gxp = gx + _row_offset(p.xs, r.n, r.d, r.h) + i0 * p.xs[3]
                cbuf = gxp if p.xs[4] == 1 else acc
                ldc = p.xs[3] if p.xs[4] == 1 else groups
                _fill_rows(cbuf, nb, ldc, groups, NULL)
                for td in range(r.n_taps[0] if runs.first[run] < runs.first[run + 1] else 0):
                    for th in range(r.n_taps[1]):
                        grow = _channels_contiguous(
                            g + _row_offset(p.ys, r.n, r.index[0][td], r.index[1][th]),
                            p.n_out[2], groups, p.ys, gbuf)
                        for e in range(runs.first[run], runs.first[run + 1]):
                            _cmadd(runs.hi[e] - runs.lo[e], groups,
                                   grow + runs.o[e] * gvox, p.s[2] * gvox,
                                   w + _tap_matrix(p, &r, td, th, runs.j[e]),
                                   cbuf + (runs.lo[e] - i0) * ldc, ldc)
                if p.xs[4] != 1:
                    _store_tile(acc, nb, groups, gxp, p.xs[3], p.xs[4])
            for grp in range(0 if depthwise else 1 if grouped else groups):
                gg = g + grp * cout * p.ys[4]
                wg = w + grp * cin * cout
                for run in range(runs.count):
                    i0 = run * runs.length
                    nb = runs.length if iw_n - i0 > runs.length else iw_n - i0
                    memset(acc, 0, nb * width * sizeof(floating))
                    for e in range(runs.first[run], runs.first[run + 1]):
                        # Inputs lo <= i < hi of the run from outputs o, o + s, ...: one
                        # batch-reduce GEMM over the row's (depth, height) taps.
                        nbat = 0
                        for td in range(r.n_taps[0]):
                            for th in range(r.n_taps[1]):
                                grows[nbat] = gg + _row_offset(p.ys, r.n, r.index[0][td],
                                                               r.index[1][th])
                                wtaps[nbat] = wg + _tap_matrix(p, &r, td, th, runs.j[e])
                                nbat = nbat + 1
                        if cin == 1 and cout == 1:
                            for b in range(nbat):
                                _axpy(runs.hi[e] - runs.lo[e], wtaps[b][0],
                                      grows[b] + runs.o[e] * p.ys[3], gstep,
                                      acc + (runs.lo[e] - i0), 1)
                        elif grouped:
                            _grouped_madd(runs.hi[e] - runs.lo[e], width, cout, cin, lanes,
                                          nbat, grows, runs.o[e] * p.ys[3], gstep, wtaps,
                                          acc + (runs.lo[e] - i0) * width, width)
                        else:
                            _brgemm(runs.hi[e] - runs.lo[e], cin, cout, nbat, grows,
                                    runs.o[e] * p.ys[3], gstep, p.ys[4], wtaps, 0, cin,
                                    acc + (runs.lo[e] - i0) * cin, cin, p.bf16_pairs)
                    gxp = (gx + _row_offset(p.xs, r.n, r.d, r.h) + i0 * p.xs[3]
                           + grp * cin * p.xs[4])
                    _store_tile(acc, nb, width, gxp, p.xs[3], p.xs[4])
        free(r.j[0])
        free(grows)
        free(gbuf)
        free(acc)
    return -1 if failed else 0


cdef int _grad_input_blocked(const Problem *p,
                             const Runs *runs,     # IN  the width GEMMs of runs of inputs
                             const floating *g,    # IN  as _grad_input's
                             const floating *w,
                             floating *gx,         # OUT as _grad_input's
                             Py_ssize_t block_rows,
                             int num_threads) noexcept nogil:
    # _conv_transpose_blocked's order for the input gradient of weight-heavy layers: each
    # thread takes blocks of input rows and each tap matrix in turn for the whole block,
    # the block's voxels gathered into one GEMM by pointer; every input sums its taps in
    # the order depth, height, width.
    cdef Py_ssize_t cin = p.cin, cout = p.cout, iw_n = p.n_in[2]
    cdef Py_ssize_t groups = p.groups, rows = p.batch * p.n_in[0] * p.n_in[1]
    cdef Py_ssize_t blocks = (rows + block_rows - 1) // block_rows
    cdef Py_ssize_t gstep = p.s[2] * p.ys[3]
    cdef bint contiguous = p.xs[4] == 1
    cdef Py_ssize_t ldc = p.xs[3] if contiguous else cin
    cdef Py_ssize_t blk, row, first, last, grp, run, i0, nb, b, e, jd, jh, od, oh, ci, t, m
    cdef Row r
    cdef floating *acc = NULL
    cdef const floating **arows = NULL   # per thread: a block's rows of one GEMM
    cdef floating **crows = NULL
    cdef floating *cbuf
    cdef floating *gxp
    cdef const floating *grow

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        acc = <floating *> _thread_malloc(block_rows * runs.length * cin * sizeof(floating),
                                          failed_ptr)
        r = _thread_row(p, failed_ptr)   # assigned here: each thread's own Row
        arows = <const floating **> _thread_malloc(
            2 * block_rows * runs.length * sizeof(floating *), failed_ptr)
        crows = <floating **> (arows + block_rows * runs.length)
        for blk in prange(blocks, schedule='dynamic', chunksize=_grab(blocks, num_threads)):
            if acc == NULL or r.j[0] == NULL or arows == NULL:
                continue  # flagged in `failed`: the call raises MemoryError
            first = blk * block_rows
            last = first + block_rows if rows - first > block_rows else rows
            for grp in range(groups):
                for run in range(runs.count):
                    i0 = run * runs.length
                    nb = runs.length if iw_n - i0 > runs.length else iw_n - i0
                    for row in range(first, last):
                        _split_row(&r, row, p.n_in)
                        if contiguous:
                            gxp = (gx + _row_offset(p.xs, r.n, r.d, r.h) + i0 * p.xs[3]
                                   + grp * cin)
                            for b in range(nb):
                                memset(gxp + b * ldc, 0, cin * sizeof(floating))
                        else:
                            memset(acc + (row - first) * runs.length * cin, 0,
                                   nb * cin * sizeof(floating))
                    for jd in range(p.k[0] if runs.first[run] < runs.first[run + 1] else 0):
                        for jh in range(p.k[1]):
                            for e in range(runs.first[run], runs.first[run + 1]):
                                m = 0
                                for row in range(first, last):
                                    _split_row(&r, row, p.n_in)
                                    od = _tap_output(p, 0, r.d, jd)
                                    oh = _tap_output(p, 1, r.h, jh)
                                    if od < 0 or oh < 0:
                                        continue
                                    grow = (g + _row_offset(p.ys, r.n, od, oh)
                                            + grp * cout * p.ys[4])
                                    if contiguous:
                                        cbuf = (gx + _row_offset(p.xs, r.n, r.d, r.h)
                                                + i0 * p.xs[3] + grp * cin)
                                    else:
                                        cbuf = acc + (row - first) * runs.length * cin
                                    for t in range(runs.hi[e] - runs.lo[e]):
                                        arows[m] = grow + runs.o[e] * p.ys[3] + t * gstep
                                        crows[m] = cbuf + (runs.lo[e] - i0 + t) * ldc
                                        m = m + 1
                                _gemm_rows(m, cin, cout, arows, p.ys[4],
                                           w + ((jd * p.k[1] + jh) * p.k[2] + runs.j[e])
                                           * groups * cout * cin + grp * cout * cin, cin,
                                           crows, 0, p.bf16_pairs)
                    for row in range(first if not contiguous else last, last):
                        _split_row(&r, row, p.n_in)
                        gxp = (gx + _row_offset(p.xs, r.n, r.d, r.h) + i0 * p.xs[3]
                               + grp * cin * p.xs[4])
                        _store_tile(acc + (row - first) * runs.length * cin, nb, cin,
                                    gxp, p.xs[3], p.xs[4])
        free(r.j[0])
        free(arows)
        free(acc)
    return -1 if failed else 0


cdef inline bint _slabs(const Problem *p) noexcept nogil:
    """Whether the input gradient reads a channels_first grad_output slab by slab through
    channels-last copies (_grad_input_slabs): its channels a plane apart (SLAB_MIN_PLANE
    elements or more) would put every channel of a GEMM tile in one L1 set."""
    return (p.ys[3] == 1 and p.ys[4] >= SLAB_MIN_PLANE and not _depthwise(p)
            and not (p.cin == 1 and p.cout == 1) and not p.bf16_pairs)


cdef int _grad_input_slabs(const Problem *p, const Runs *runs, const floating *g,
                           const floating *w, floating *gx, int num_threads) noexcept nogil:
    # Input depth planes in slabs: each slab's grad_output planes are copied channels-last
    # into one buffer (in parallel), then the slab runs as a problem of its own, with the
    # same taps summed in the same order as the whole problem (crop and lengths of the
    # depth axis shifted to the slab), so the bits are those of any other layout.
    cdef Py_ssize_t channels = p.groups * p.cout, ow_n = p.n_out[2], oh_n = p.n_out[1]
    cdef Py_ssize_t plane = oh_n * ow_n * channels
    cdef Py_ssize_t s = p.s[0], reach = (p.k[0] - 1) * p.d[0]
    # input planes per slab: as many as SLAB_BYTES of grad_output planes hold, at least one
    cdef Py_ssize_t planes_max = SLAB_BYTES // (plane * sizeof(floating))
    cdef Py_ssize_t per_slab = (planes_max - reach - 1) // s + 1 if planes_max > reach else 1
    cdef Py_ssize_t n, slab, i0, i1, lo, hi, planes, row
    cdef int status = 0
    cdef Problem q = p[0]
    cdef floating *buf
    if per_slab > p.n_in[0]:
        per_slab = p.n_in[0]
    buf = <floating *> malloc(((per_slab - 1) * s + reach + 1) * plane * sizeof(floating))
    if buf == NULL:
        return -1
    q.batch = 1
    q.ys[0] = 0
    q.ys[1] = plane
    q.ys[2] = ow_n * channels
    q.ys[3] = channels
    q.ys[4] = 1
    for n in range(p.batch):
        for slab in range((p.n_in[0] + per_slab - 1) // per_slab):
            i0 = slab * per_slab
            i1 = i0 + per_slab if i0 + per_slab < p.n_in[0] else p.n_in[0]
            # the output planes the slab's inputs reach: full positions i*s + j*d - crop
            lo = i0 * s - p.crop[0]
            hi = (i1 - 1) * s + reach - p.crop[0]
            lo = 0 if lo < 0 else lo
            hi = p.n_out[0] - 1 if hi > p.n_out[0] - 1 else hi
            planes = hi - lo + 1 if hi >= lo else 0
            for row in prange(planes * oh_n, schedule='static', num_threads=num_threads):
                _transpose(channels, ow_n, g + n * p.ys[0] + (lo + row // oh_n) * p.ys[1]
                           + row % oh_n * p.ys[2], p.ys[4], buf + row * ow_n * channels,
                           channels)
            q.n_in[0] = i1 - i0
            q.n_out[0] = planes
            q.crop[0] = p.crop[0] - i0 * s + lo
            status = _grad_input(&q, runs, buf, w, gx + n * p.xs[0] + i0 * p.xs[1],
                                 num_threads)
            if status != 0:
                free(buf)
                return status
    free(buf)
    return 0


def grad_input(const floating[:, :, :, :, :] g, const floating[:, :, :, :, ::1] w,
               floating[:, :, :, :, :] gx, geometry, tuple x_strides,
               tuple y_strides, int num_threads, bint bf16_pairs=False):
    """gx = adjoint of the forward map in x, applied to g. With `bf16_pairs` (as the
    forward's), g and w hold bfloat16 pairs of filters (geometry's filters counts the
    pairs)."""
    cdef Problem p = _problem(geometry, x_strides, y_strides)
    p.bf16_pairs = _check_pairs(&p, bf16_pairs, sizeof(floating))
    cdef Runs runs
    cdef int status
    cdef Py_ssize_t block_rows = _block_rows(&p, sizeof(floating), p.batch * p.n_in[0]
                                             * p.n_in[1], num_threads)
    # grad_output's channels are contiguous, or will be in _grad_input_slabs' copies
    cdef bint grouped = _group_lanes(&p, sizeof(floating), p.cout, p.cin,
                                     1 if _slabs(&p) else p.ys[4]) > 0
    cdef const floating *w_ptr = &w[0, 0, 0, 0, 0]
    cdef floating *w_grouped = NULL
    _make_runs(&p, NULL, _block_size(_block_channels(&p, p.cin, grouped)), &runs)
    try:
        if grouped:
            w_grouped = _channels_outer(&p, w_ptr, p.cout, p.cin)
            w_ptr = w_grouped
        with nogil:
            if block_rows > 0:
                status = _grad_input_blocked(&p, &runs, &g[0, 0, 0, 0, 0], w_ptr,
                                             &gx[0, 0, 0, 0, 0], block_rows, num_threads)
            elif _slabs(&p):
                status = _grad_input_slabs(&p, &runs, &g[0, 0, 0, 0, 0], w_ptr,
                                           &gx[0, 0, 0, 0, 0], num_threads)
            else:
                status = _grad_input(&p, &runs, &g[0, 0, 0, 0, 0], w_ptr,
                                     &gx[0, 0, 0, 0, 0], num_threads)
    finally:
        _free_runs(&runs)
        free(w_grouped)
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


cdef inline Py_ssize_t _pair_word(Py_ssize_t i, Py_ssize_t step,
                                  Py_ssize_t length) noexcept nogil:
    """Where the pair starting at voxel i of a row lies in bfloat16_voxel_pairs' words."""
    return i % (2 * step) * ((length + 2 * step - 1) // (2 * step)) + i // (2 * step)


cdef inline void _packed_tap_gradient(const Problem *p, const Runs *runs, Py_ssize_t e,
                                      Py_ssize_t nlist, const floating **grows,
                                      const floating **xrows, Py_ssize_t grp,
                                      floating *pack, floating *c) noexcept nogil:
    """c (Cout x Cin, rows Cin apart) += the sum over the nlist rows of g^T x for width
    entry e, the rows' voxels packed KC_VOXELS at a time: g's in panels of PACK_ROWS
    channels (a tile's rows contiguous for each voxel) and x's in column panels as the
    forward's tap matrices. One long contraction per panel pair instead of a product
    per row: voxels of g a KiB or more apart fall on a few cache sets, and a row's few
    voxels make short products. The voxels still sum in the order of the rows, as one
    GEMM per row would sum them (the scalar columns, when Cin is not a multiple of the
    narrowest vector, regroup their partial sums per pack instead of per row)."""
    cdef Py_ssize_t cin = p.cin, cout = p.cout, count = runs.hi[e] - runs.lo[e]
    cdef Py_ssize_t total = nlist * count, pw = _PANEL_BYTES // sizeof(floating)
    cdef Py_ssize_t kb, v0, v, kc, q, t, r0, pr, rb, jb, j0, width, ch
    cdef Py_ssize_t row_panels = (cout + PACK_ROWS - 1) // PACK_ROWS
    cdef const floating *gv
    cdef const floating *xv
    cdef floating *bpack
    for kb in range((total + KC_VOXELS - 1) // KC_VOXELS):
        v0 = kb * KC_VOXELS
        kc = total - v0 if total - v0 < KC_VOXELS else KC_VOXELS
        bpack = pack + kc * cout
        for v in range(v0, v0 + kc):
            q = v // count
            t = v - q * count
            gv = (grows[q] + (runs.o[e] + t * p.s[2]) * p.ys[3] + grp * cout * p.ys[4])
            xv = xrows[q] + (runs.lo[e] + t) * p.xs[3] + grp * cin * p.xs[4]
            for rb in range(row_panels):
                r0 = rb * PACK_ROWS
                pr = PACK_ROWS if cout - r0 > PACK_ROWS else cout - r0
                if p.ys[4] == 1:
                    memcpy(pack + r0 * kc + (v - v0) * pr, gv + r0, pr * sizeof(floating))
                else:
                    for ch in range(pr):
                        pack[r0 * kc + (v - v0) * pr + ch] = gv[(r0 + ch) * p.ys[4]]
            for jb in range((cin + pw - 1) // pw):
                j0 = jb * pw
                width = pw if cin - j0 > pw else cin - j0
                memcpy(bpack + j0 * kc + (v - v0) * width, xv + j0,
                       width * sizeof(floating))
        for rb in range(row_panels):
            r0 = rb * PACK_ROWS
            pr = PACK_ROWS if cout - r0 > PACK_ROWS else cout - r0
            for jb in range((cin + pw - 1) // pw):
                j0 = jb * pw
                width = pw if cin - j0 > pw else cin - j0
                _gemm(pr, width, kc, pack + r0 * kc, 1, pr, bpack + j0 * kc, width,
                      c + r0 * cin + j0, cin)


cdef int _grad_kernel(const Problem *p,
                       const Runs *runs,      # IN  the width GEMMs of whole input rows
                       const floating *g,     # IN  logical (N, OD, OH, OW, G*Cout), strides p.ys
                       const floating *x,     # IN  logical (N, D, H, W, G*Cin), strides p.xs
                       floating *partial,     # WORK (chunks, kd, kh, kw, G, Cout, Cin), or
                                              #      gw itself for one chunk
                       Py_ssize_t chunks,
                       floating *gw,          # OUT (kd, kh, kw, G, Cout, Cin) C-contiguous,
                                              #     in (kd, kh, kw, Cout, G, Cin) with `lanes`
                       Py_ssize_t lanes,      # IN  _group_lanes(p, ...) on g's and x's channels
                       int num_threads) noexcept nogil:
    cdef Py_ssize_t cin = p.cin, cout = p.cout
    cdef Py_ssize_t ksize = p.k[0] * p.k[1] * p.k[2] * p.groups * cout * cin
    cdef Py_ssize_t rows = p.batch * p.n_in[0] * p.n_in[1]
    cdef Py_ssize_t entries = runs.first[runs.count]
    cdef Py_ssize_t chunk, row, grp, td, th, e, c, jd, jh, od, oh, nlist, tap, blk, nb
    cdef Py_ssize_t gstep = p.s[2] * p.ys[3]  # between the outputs consecutive inputs feed
    cdef Py_ssize_t chunk_rows = (rows + chunks - 1) // chunks
    cdef Py_ssize_t pairs = 1 if _depthwise(p) else p.k[0] * p.k[1]
    cdef Py_ssize_t task, count
    cdef const floating **grows = NULL    # per thread: the rows of one tap's batch
    cdef const floating **xrows = NULL
    cdef floating *pack = NULL            # per thread: _packed_tap_gradient's voxels
    # (decided on the problem, not on g's strides: every layout gives the same bits)
    cdef bint packed = (not p.bf16_pairs and not _depthwise(p)
                        and _group_lanes(p, sizeof(floating), cout, cin, 1) == 0
                        and p.s[2] * p.groups * cout * sizeof(floating) >= PACK_STRIDE_BYTES)
    # Depthwise: all groups at once, the channels as vectors (x's channels are contiguous,
    # rows of g in other layouts are copied channel-contiguous into gbuf).
    cdef Py_ssize_t groups = p.groups
    cdef bint depthwise = _depthwise(p)
    cdef Py_ssize_t gvox = p.ys[3] if p.ys[4] == 1 else groups  # voxels apart in grow
    cdef floating *gbuf = NULL
    cdef Row r
    cdef floating *buf
    cdef const floating *grow
    cdef const floating *xrow

    cdef int failed = 0
    cdef int *failed_ptr = &failed  # shared: written through a pointer in the region

    memset(&r, 0, sizeof(Row))  # Cython copies r into the region (firstprivate): no garbage
    with parallel(num_threads=num_threads):
        r = _thread_row(p, failed_ptr)
        gbuf = <floating *> _thread_malloc(p.n_out[2] * groups * sizeof(floating), failed_ptr)
        grows = <const floating **> _thread_malloc(2 * chunk_rows * sizeof(floating *),
                                                   failed_ptr)
        xrows = grows + chunk_rows
        if packed:
            pack = <floating *> _thread_malloc(KC_VOXELS * (cin + cout) * sizeof(floating),
                                               failed_ptr)
        # Tasks: each chunk's (depth tap, height tap) pairs, which fill disjoint parts of
        # the partial sums (so a kernel-heavy layer on a small volume, one chunk, still
        # runs on every thread); depthwise, whole chunks.
        for task in prange(chunks * pairs, schedule='dynamic',
                           chunksize=_grab(chunks * pairs, num_threads)):
            if r.j[0] == NULL or gbuf == NULL or grows == NULL or (packed and pack == NULL):
                continue  # flagged in `failed`: the call raises MemoryError
            chunk = task // pairs
            buf = partial + chunk * ksize
            memset(buf + (task % pairs) * (ksize // pairs), 0,
                   (ksize // pairs) * sizeof(floating))
            # One batch-reduce GEMM per width tap over the chunk's rows that reach it:
            # each tap matrix stays in registers over the chunk, and its elements still
            # sum row after row, as one GEMM per row would.
            for jd in range(0 if depthwise or entries == 0 else (task % pairs) // p.k[1],
                            0 if depthwise or entries == 0 else (task % pairs) // p.k[1] + 1):
                for jh in range((task % pairs) % p.k[1], (task % pairs) % p.k[1] + 1):
                    nlist = 0
                    for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
                        _split_row(&r, row, p.n_in)
                        od = _tap_output(p, 0, r.d, jd)
                        oh = _tap_output(p, 1, r.h, jh)
                        if od >= 0 and oh >= 0:
                            grows[nlist] = g + _row_offset(p.ys, r.n, od, oh)
                            xrows[nlist] = x + _row_offset(p.xs, r.n, r.d, r.h)
                            nlist = nlist + 1
                    for e in range(entries if nlist > 0 else 0):
                        tap = ((jd * p.k[1] + jh) * p.k[2] + runs.j[e]) * groups * cout * cin
                        if lanes > 0:
                            _grouped_dot(runs.hi[e] - runs.lo[e], groups * cin, cout, cin,
                                         lanes, nlist, grows, runs.o[e] * p.ys[3], gstep, xrows,
                                         runs.lo[e] * p.xs[3], p.xs[3], buf + tap)
                            continue
                        for grp in range(groups):
                            # (Cout x Cin) += sum over rows of g^T (Cout x k) x (k x Cin),
                            # over the inputs lo <= iw < hi that tap j takes to outputs.
                            if packed:
                                _packed_tap_gradient(p, runs, e, nlist, grows, xrows, grp,
                                                     pack, buf + tap + grp * cout * cin)
                                continue
                            if p.bf16_pairs:   # the voxels in pairs (bfloat16_voxel_pairs)
                                count = runs.hi[e] - runs.lo[e]
                                _brgemm(cout, cin, (count + 1) // 2, nlist, grows,
                                        _pair_word(runs.o[e], p.s[2], p.n_out[2]) * p.ys[3]
                                        + grp * cout * p.ys[4], p.ys[4], p.ys[3], xrows,
                                        _pair_word(runs.lo[e], 1, p.n_in[2]) * p.xs[3]
                                        + grp * cin * p.xs[4], p.xs[3],
                                        buf + tap + grp * cout * cin, cin, True, count % 2)
                                continue
                            _brgemm(cout, cin, runs.hi[e] - runs.lo[e], nlist, grows,
                                    runs.o[e] * p.ys[3] + grp * cout * p.ys[4],
                                    p.ys[4], gstep, xrows,
                                    runs.lo[e] * p.xs[3] + grp * cin * p.xs[4],
                                    p.xs[3], buf + tap + grp * cout * cin, cin)
            for row in range(chunk * rows // chunks,
                             (chunk + 1) * rows // chunks if depthwise else 0):
                _input_row(p, row, &r)
                xrow = x + _row_offset(p.xs, r.n, r.d, r.h)
                for td in range(r.n_taps[0] if entries > 0 else 0):
                    for th in range(r.n_taps[1]):
                        grow = _channels_contiguous(
                            g + _row_offset(p.ys, r.n, r.index[0][td], r.index[1][th]),
                            p.n_out[2], groups, p.ys, gbuf)
                        for e in range(entries):
                            _cdot(runs.hi[e] - runs.lo[e], groups,
                                  grow + runs.o[e] * gvox, p.s[2] * gvox,
                                  xrow + runs.lo[e] * p.xs[3], p.xs[3],
                                  buf + _tap_matrix(p, &r, td, th, runs.j[e]))
        free(r.j[0])
        free(gbuf)
        free(grows)
        free(pack)
    if failed:
        return -1

    # Add the chunks' partial sums in chunk order, whatever thread computed them: a block
    # of elements at a time, chunk after chunk (reading each chunk's block contiguously).
    if chunks == 1:   # partial is gw
        return 0
    for blk in prange((ksize + REDUCE_BLOCK - 1) // REDUCE_BLOCK, schedule='static',
                      num_threads=num_threads):
        e = blk * REDUCE_BLOCK
        nb = ksize - e if ksize - e < REDUCE_BLOCK else REDUCE_BLOCK
        memcpy(gw + e, partial + e, nb * sizeof(floating))
        for c in range(1, chunks):
            _axpy(nb, <floating> 1, partial + c * ksize + e, 1, gw + e, 1)  # exact adds
    return 0


def grad_kernel(const floating[:, :, :, :, :] g, const floating[:, :, :, :, :] x,
                floating[:, :, :, :, ::1] gw, geometry, tuple x_strides,
                tuple y_strides, int num_threads, bint bf16_pairs=False):
    """gw[j, co, ci] = sum over batch and space of g[o(i, j), co] * x[i, ci]. With
    `bf16_pairs` (as the forward's), g and x hold the bfloat16 pairs of voxels of
    bfloat16_voxel_pairs(step=stride) and (step=1), rows (N, D, H, 2*step*words, C)."""
    cdef Problem p = _problem(geometry, x_strides, y_strides)
    p.bf16_pairs = _check_pairs(&p, bf16_pairs, sizeof(floating))
    cdef Py_ssize_t ksize = gw.size
    cdef Py_ssize_t chunks = _num_chunks(p.batch * p.n_in[0] * p.n_in[1],
                                         p.batch * p.n_in[0] * p.n_in[1] * p.n_in[2],
                                         ksize * sizeof(floating))
    cdef Runs runs
    cdef int status
    cdef floating *swapped
    # A few channels per group: every group's tap matrices at once, in (Cout, G, Cin),
    # swapped back at the end
    cdef Py_ssize_t lanes = _group_lanes(&p, sizeof(floating), p.cout, p.cin,
                                         1 if p.ys[4] == 1 and p.xs[4] == 1 else 0)
    # one chunk (small volumes, deep layers' large kernels): its sums are gw's
    cdef floating *partial = &gw[0, 0, 0, 0, 0] if chunks == 1 else <floating *> malloc(
        chunks * ksize * sizeof(floating))
    if partial == NULL:
        raise MemoryError("tconv3d: no memory for the kernel-gradient partial sums")
    try:
        _make_runs(&p, NULL, p.n_in[2], &runs)  # one run: the whole row
        with nogil:
            status = _grad_kernel(&p, &runs, &g[0, 0, 0, 0, 0], &x[0, 0, 0, 0, 0], partial,
                                  chunks, &gw[0, 0, 0, 0, 0], lanes, num_threads)
            _free_runs(&runs)
    finally:
        if chunks > 1:
            free(partial)
    _check(status)
    if lanes > 0:
        swapped = <floating *> malloc(ksize * sizeof(floating))
        if swapped == NULL:
            raise MemoryError("tconv3d: no memory for the kernel gradient's layout")
        memcpy(swapped, &gw[0, 0, 0, 0, 0], ksize * sizeof(floating))
        _swap_groups(&p, swapped, &gw[0, 0, 0, 0, 0], p.cout, p.cin, True)
        free(swapped)


# ------------------------------------------------------------------------ grad of bias

cdef inline Py_ssize_t _row_number_offset(const Py_ssize_t *strides,
                                          const Py_ssize_t *lengths,
                                          Py_ssize_t row) noexcept nogil:
    """Element offset of row number `row` of a logical array (batch, lengths[0],
    lengths[1], ., .) of these element strides. (A local Row: a prange variable written
    only through a pointer would be shared between threads.)"""
    cdef Row r
    _split_row(&r, row, lengths)
    return _row_offset(strides, r.n, r.d, r.h)


cdef inline const floating *_row_start(const floating *a, const Py_ssize_t *strides,
                                       const Py_ssize_t *lengths,
                                       Py_ssize_t row) noexcept nogil:
    """Start of row number `row` of `a` (_row_number_offset)."""
    return a + _row_number_offset(strides, lengths, row)


cdef void _grad_bias(const Problem *p,
                     const floating *g,     # IN  logical (N, OD, OH, OW, Cout), strides p.ys
                     const uint16_t *g16,   # IN  instead of g when not NULL: its bfloat16
                                            #     bits, widened a row at a time (same sums)
                     floating *partial,     # WORK (chunks, OW, Cout), or (chunks, Cout, OW);
                                            #      with g16, then each chunk's widened row
                     Py_ssize_t chunks,
                     floating *gb,          # OUT (Cout,)
                     int num_threads) noexcept nogil:
    # Each chunk adds its rows element-wise into a row-sized accumulator (independent
    # sums: vectorised, no serial dependency chain), reduced over the row only at the end.
    # Every element of the accumulator sums the same values in the same order whatever
    # the layout, so the bits do not depend on it (nor on g16).
    cdef Py_ssize_t cout = p.groups * p.cout  # every channel: groups do not matter here
    cdef Py_ssize_t ow_n = p.n_out[2], width = p.n_out[2] * cout
    cdef Py_ssize_t rows = p.batch * p.n_out[0] * p.n_out[1]
    cdef bint contiguous_rows = p.ys[4] == 1 and p.ys[3] == cout
    # channels_first: each channel's row is contiguous; buffer rows (Cout, OW) then
    cdef bint channel_rows = not contiguous_rows and p.ys[3] == 1
    cdef Py_ssize_t chunk, row, o, co, c
    cdef floating *buf
    cdef floating *wide
    cdef const floating *grow
    cdef const uint16_t *row16
    cdef floating total
    for chunk in prange(chunks, schedule='static', num_threads=num_threads):
        buf = partial + chunk * width
        wide = partial + (chunks + chunk) * width
        memset(buf, 0, width * sizeof(floating))
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            if floating is float and g16 != NULL:   # the row in buf's layout, exactly
                row16 = g16 + _row_number_offset(p.ys, p.n_out, row)
                if channel_rows:
                    for co in range(cout):
                        tc_widen_bf16(row16 + co * p.ys[4], wide + co * ow_n, ow_n)
                elif p.ys[4] == 1:
                    for o in range(ow_n):
                        tc_widen_bf16(row16 + o * p.ys[3], wide + o * cout, cout)
                else:
                    for o in range(ow_n):
                        for co in range(cout):
                            tc_widen_bf16(row16 + o * p.ys[3] + co * p.ys[4],
                                          wide + o * cout + co, 1)
                _axpy(width, <floating> 1, wide, 1, buf, 1)
                continue
            grow = _row_start(g, p.ys, p.n_out, row)
            if contiguous_rows:
                _axpy(width, <floating> 1, grow, 1, buf, 1)
            elif channel_rows:
                for co in range(cout):
                    _axpy(ow_n, <floating> 1, grow + co * p.ys[4], 1, buf + co * ow_n, 1)
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
                total = total + partial[c * width + (co * ow_n + o if channel_rows
                                                     else o * cout + co)]
        gb[co] = total


def grad_bias(const floating[:, :, :, :, :] g, floating[::1] gb, geometry,
              tuple y_strides, int num_threads, const uint16_t[:, :, :, :, :] g_bf16=None):
    """gb[co] = sum over batch and space of g[..., co], reduced in a fixed order; or of
    the bfloat16 g_bf16 (g None, gb float32), the same bits as on its float32 values."""
    cdef Problem p = _problem(geometry, (0, 0, 0, 0, 0), y_strides)  # no x-side array
    cdef Py_ssize_t chunks = _num_chunks(p.batch * p.n_out[0] * p.n_out[1],
                                         p.batch * p.n_out[0] * p.n_out[1] * p.n_out[2],
                                         gb.shape[0] * p.n_out[2] * sizeof(floating))
    if (g is None) == (g_bf16 is None) or (g_bf16 is not None and floating is not float):
        raise ValueError("tconv3d: one of g or (float32 gb) g_bf16")
    cdef const floating *g_ptr = NULL if g is None else &g[0, 0, 0, 0, 0]
    cdef const uint16_t *g16_ptr = NULL if g_bf16 is None else &g_bf16[0, 0, 0, 0, 0]
    cdef floating *partial = <floating *> malloc(
        (1 if g_bf16 is None else 2) * chunks * p.n_out[2] * gb.shape[0] * sizeof(floating))
    if partial == NULL:
        raise MemoryError("tconv3d: no memory for the bias-gradient partial sums")
    try:
        with nogil:
            _grad_bias(&p, g_ptr, g16_ptr, partial, chunks, &gb[0], num_threads)
    finally:
        free(partial)
