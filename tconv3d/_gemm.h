/* Register-blocked GEMM micro-kernels with runtime SIMD dispatch.
 *
 *     C[i][j] += sum_p A[i*sai + p*sap] * B[p*ldb + j]     (0 <= i < m, 0 <= j < n, 0 <= p < k)
 *
 * and its batch-reduce form (brgemm), one C tile held in registers over nb products:
 *
 *     C[i][j] += sum_b sum_p A[b][aoff + i*sai + p*sap] * B[b][boff + p*ldb + j]
 *
 * which sums, for each element, exactly as nb successive GEMM calls would (batch by batch,
 * p in order): the same bits, without storing and reloading C between the products; and a
 * form whose rows are given by pointers (Ar[i], Cr[i]: rows gathered from anywhere),
 * summing as m one-row GEMMs would.
 *
 * A is read element by element (broadcast), so its strides are free: the same routine
 * serves the forward pass (A = input voxels x channels), the input gradient (A = output
 * gradient) and the kernel gradient (A = transposed output gradient). B and C have unit
 * column stride and are read as vectors.
 *
 * Every output element is summed over p in order, whatever the tile path, so results
 * depend only on the shapes and the selected variant, never on the thread count or the
 * strides. The rounding of each multiply-add is fixed too (TC_MADD): left to the
 * compiler, GCC fuses a*b + c into one FMA in some versions of a loop and not in others
 * (it versions loops on unit strides and vectorises the products alone), so the bits
 * would follow the memory layout.
 *
 * The body is written once with GCC/Clang vector extensions and stamped out per ISA with
 * a `target` attribute: the default build runs on any x86-64 (SSE2) and reaches AVX2 or
 * AVX-512 speed on CPUs that have them, chosen at import (or forced for tests).
 */
#ifndef TCONV3D_GEMM_H
#define TCONV3D_GEMM_H

#include <math.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && !defined(TCONV3D_NO_VECTOR_EXT)
#define TC_VECTOR_EXT 1
#endif
#if defined(TC_VECTOR_EXT) && (defined(__x86_64__) || defined(__i386__)) \
    && !defined(__APPLE__) && !defined(TCONV3D_NO_DISPATCH)
#define TC_X86_DISPATCH 1
#endif

typedef void (*tc_gemm_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const float *, Py_ssize_t,
                              Py_ssize_t, const float *, Py_ssize_t, float *, Py_ssize_t);
typedef void (*tc_gemm_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const double *, Py_ssize_t,
                              Py_ssize_t, const double *, Py_ssize_t, double *, Py_ssize_t);
typedef void (*tc_brgemm_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                const float *const *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                const float *const *, Py_ssize_t, Py_ssize_t, float *,
                                Py_ssize_t);
typedef void (*tc_gemm_rows_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const float *const *,
                                   Py_ssize_t, const float *, Py_ssize_t, float *const *,
                                   Py_ssize_t);
typedef void (*tc_gemm_rows_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const double *const *,
                                   Py_ssize_t, const double *, Py_ssize_t, double *const *,
                                   Py_ssize_t);
typedef void (*tc_brgemm_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                const double *const *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                const double *const *, Py_ssize_t, Py_ssize_t, double *,
                                Py_ssize_t);
#define TC_CHANNELWISE_TYPES(T, S)                                                       \
typedef void (*tc_axpy_##S##_t)(Py_ssize_t, T, const T *, Py_ssize_t, T *, Py_ssize_t);  \
typedef void (*tc_cmadd_##S##_t)(Py_ssize_t, Py_ssize_t, const T *, Py_ssize_t, const T *, \
                                 T *, Py_ssize_t);                                      \
typedef void (*tc_cdot_##S##_t)(Py_ssize_t, Py_ssize_t, const T *, Py_ssize_t, const T *, \
                                Py_ssize_t, T *);
TC_CHANNELWISE_TYPES(float, f32)
TC_CHANNELWISE_TYPES(double, f64)

/* c + a*b with a rounding fixed per variant. TC_FUSED(T) variants round once (an FMA
 * instruction, as the vector tiles' contracted `c += a * b` do); TC_UNFUSED(T) variants
 * round the product and the sum, and are used only where the target has no FMA, so the
 * compiler cannot contract them either. */
#define TC_FUSED_float(a, b, c) fmaf((a), (b), (c))
#define TC_FUSED_double(a, b, c) fma((a), (b), (c))
#define TC_UNFUSED_float(a, b, c) ((c) + (a) * (b))
#define TC_UNFUSED_double(a, b, c) ((c) + (a) * (b))
#define TC_FUSED(T) TC_FUSED_##T
#define TC_UNFUSED(T) TC_UNFUSED_##T
/* The baseline build's rounding: fused where the compile-time target has FMA (e.g.
 * AArch64, or CFLAGS with -mfma), so that it never depends on what the compiler did. */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__FP_FAST_FMA)
#define TC_BASE_MADD TC_FUSED
#else
#define TC_BASE_MADD TC_UNFUSED
#endif

/* Columns left over after the vector tiles (n % VL), and the scalar fallback. Four
 * partial sums (p mod 4), added in a fixed order, break the dependency chain of a long
 * contraction (single-channel kernel gradients) without depending on anything but k.
 * MADD is TC_FUSED or TC_UNFUSED; A_ROW (row ii of product bt of A), B_COL (column jj
 * of product bt of B) and C_AT (element ii, jj of C) say where the operands are. */
#define TC_SCALAR_COLUMNS(T, j0, MADD, NB, A_ROW, B_COL, C_AT)                          \
    for (Py_ssize_t jj = (j0); jj < n; jj++) {                                          \
        for (Py_ssize_t ii = 0; ii < m; ii++)                                           \
        for (Py_ssize_t bt = 0; bt < (NB); bt++) {                                      \
            const T *a = (A_ROW);                                                       \
            const T *b = (B_COL);                                                       \
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                           \
            Py_ssize_t p = 0;                                                           \
            for (; p + 4 <= k; p += 4) {                                                \
                s0 = MADD(T)(a[p * sap], b[p * ldb], s0);                               \
                s1 = MADD(T)(a[(p + 1) * sap], b[(p + 1) * ldb], s1);                   \
                s2 = MADD(T)(a[(p + 2) * sap], b[(p + 2) * ldb], s2);                   \
                s3 = MADD(T)(a[(p + 3) * sap], b[(p + 3) * ldb], s3);                   \
            }                                                                           \
            for (; p < k; p++)                                                          \
                s0 = MADD(T)(a[p * sap], b[p * ldb], s0);                               \
            C_AT += (s0 + s1) + (s2 + s3);                                              \
        }                                                                               \
    }
/* The operands of the batch-reduce form (C[i][j] += sum_b sum_p A[b][...] B[b][...]). */
#define TC_BR_A_ROW A[bt] + aoff + ii * sai
#define TC_BR_B_COL B[bt] + boff + jj
#define TC_BR_C_AT C[ii * ldc + jj]

#ifdef TC_VECTOR_EXT

/* One tile of ROWS rows x NV vectors of L lanes, accumulators held in registers over the
 * k loop. */
#define TC_TILE(V, T, ROWS, NV, L)                                                      \
    do {                                                                                \
        V c[ROWS][NV];                                                                  \
        for (int r = 0; r < (ROWS); r++)                                                \
            for (int v = 0; v < (NV); v++)                                              \
                c[r][v] = *(const V *)(C + (i + r) * ldc + j + v * (L));                \
        for (Py_ssize_t bt = 0; bt < nb; bt++) {                                        \
            const T *a = A[bt] + aoff + i * sai;                                        \
            const T *bp = B[bt] + boff + j;                                             \
            for (Py_ssize_t p = 0; p < k; p++) {                                        \
                V b[NV];                                                                \
                for (int v = 0; v < (NV); v++)                                          \
                    b[v] = *(const V *)(bp + p * ldb + v * (L));                        \
                for (int r = 0; r < (ROWS); r++) {                                      \
                    T av = a[r * sai + p * sap];                                        \
                    for (int v = 0; v < (NV); v++)                                      \
                        c[r][v] += av * b[v];                                           \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (int r = 0; r < (ROWS); r++)                                                \
            for (int v = 0; v < (NV); v++)                                              \
                *(V *)(C + (i + r) * ldc + j + v * (L)) = c[r][v];                      \
    } while (0)

/* TC_TILE over rows given by pointers: row r of the tile reads A from Ar[i + r] and
 * accumulates into Cr[i + r] + coff (rows gathered from anywhere, e.g. several output
 * rows). */
#define TC_TILE_ROWS(V, T, ROWS, NV, L)                                                 \
    do {                                                                                \
        const T *a[ROWS];                                                               \
        T *cr[ROWS];                                                                    \
        for (int r = 0; r < (ROWS); r++) {                                              \
            a[r] = Ar[i + r];                                                           \
            cr[r] = Cr[i + r] + coff + j;                                               \
        }                                                                               \
        V c[ROWS][NV];                                                                  \
        for (int r = 0; r < (ROWS); r++)                                                \
            for (int v = 0; v < (NV); v++)                                              \
                c[r][v] = *(const V *)(cr[r] + v * (L));                                \
        const T *bp = B + j;                                                            \
        for (Py_ssize_t p = 0; p < k; p++) {                                            \
            V b[NV];                                                                    \
            for (int v = 0; v < (NV); v++)                                              \
                b[v] = *(const V *)(bp + p * ldb + v * (L));                            \
            for (int r = 0; r < (ROWS); r++) {                                          \
                T av = a[r][p * sap];                                                   \
                for (int v = 0; v < (NV); v++)                                          \
                    c[r][v] += av * b[v];                                               \
            }                                                                           \
        }                                                                               \
        for (int r = 0; r < (ROWS); r++)                                                \
            for (int v = 0; v < (NV); v++)                                              \
                *(V *)(cr[r] + v * (L)) = c[r][v];                                      \
    } while (0)

/* All m rows of a column block, in as few tiles as MR-row tiles would take, their rows
 * shared out evenly (32 rows with MR = 6: 6 6 5 5 5 5; 8 rows: 4 4). A short last tile
 * (1 to 3 rows) would hold too few accumulators to hide the FMA latency and run at a
 * fraction of the speed. TILE(V, T, ROWS, NV, L) runs one tile of ROWS rows at row i;
 * ROWS must be a constant, hence the cases, up to 8 (every MR is 6 or 8). */
#define TC_TILE_CASE(TILE, V, T, NV, L, MR, N)                                          \
    case N: if ((N) <= (MR)) TILE(V, T, N, NV, L); break;
#define TC_ROW_TILES(TILE, V, T, NV, L, MR)                                             \
    {                                                                                   \
        const Py_ssize_t tiles = (m + (MR) - 1) / (MR);                                 \
        i = 0;                                                                          \
        for (Py_ssize_t t = 0; t < tiles; t++) {                                        \
            Py_ssize_t rows = m / tiles + (t < m % tiles);                              \
            switch (rows) {                                                             \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 1)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 2)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 3)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 4)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 5)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 6)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 7)                                  \
                TC_TILE_CASE(TILE, V, T, NV, L, MR, 8)                                  \
            }                                                                           \
            i += rows;                                                                  \
        }                                                                               \
    }

/* Bytes of the narrower vectors that take the columns left after the full-width ones
 * (half, then quarter width, at least 16 bytes): with AVX-512, 8 or 4 float channels (a
 * grouped convolution's) still run as vectors instead of the scalar loop. */
#define TC_NARROW(VBYTES, D) ((VBYTES) / (D) >= 16 ? (VBYTES) / (D) : 16)

#define TC_DEFINE_GEMM(NAME, T, VBYTES, MR, MADD, ATTR)                                 \
typedef T NAME##_vec __attribute__((vector_size(VBYTES), aligned(sizeof(T))));         \
typedef T NAME##_v2 __attribute__((vector_size(TC_NARROW(VBYTES, 2)), aligned(sizeof(T)))); \
typedef T NAME##_v4 __attribute__((vector_size(TC_NARROW(VBYTES, 4)), aligned(sizeof(T)))); \
ATTR static void NAME##_br(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t nb,    \
                          const T *const *A, Py_ssize_t aoff, Py_ssize_t sai,          \
                          Py_ssize_t sap, const T *const *B, Py_ssize_t boff,          \
                          Py_ssize_t ldb, T *C, Py_ssize_t ldc)                        \
{                                                                                       \
    enum { VL = (VBYTES) / sizeof(T), VL2 = TC_NARROW(VBYTES, 2) / sizeof(T),          \
           VL4 = TC_NARROW(VBYTES, 4) / sizeof(T) };                                    \
    Py_ssize_t i, j = 0;                                                                \
    for (; j + 2 * VL <= n; j += 2 * VL) {                                              \
        TC_ROW_TILES(TC_TILE, NAME##_vec, T, 2, VL, MR)                                 \
    }                                                                                   \
    for (; j + VL <= n; j += VL) {                                                      \
        TC_ROW_TILES(TC_TILE, NAME##_vec, T, 1, VL, MR)                                 \
    }                                                                                   \
    for (; VL2 < VL && j + VL2 <= n; j += VL2) {                                        \
        TC_ROW_TILES(TC_TILE, NAME##_v2, T, 1, VL2, MR)                                 \
    }                                                                                   \
    for (; VL4 < VL2 && j + VL4 <= n; j += VL4) {                                       \
        TC_ROW_TILES(TC_TILE, NAME##_v4, T, 1, VL4, MR)                                 \
    }                                                                                   \
    TC_SCALAR_COLUMNS(T, j, MADD, nb, TC_BR_A_ROW, TC_BR_B_COL, TC_BR_C_AT)             \
}                                                                                       \
ATTR static void NAME(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,                        \
                      const T *A, Py_ssize_t sai, Py_ssize_t sap,                      \
                      const T *B, Py_ssize_t ldb, T *C, Py_ssize_t ldc)                \
{                                                                                       \
    NAME##_br(m, n, k, 1, &A, 0, sai, sap, &B, 0, ldb, C, ldc);                          \
}                                                                                       \
ATTR static void NAME##_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,                 \
                             const T *const *Ar, Py_ssize_t sap, const T *B,           \
                             Py_ssize_t ldb, T *const *Cr, Py_ssize_t coff)            \
{                                                                                       \
    enum { VL = (VBYTES) / sizeof(T), VL2 = TC_NARROW(VBYTES, 2) / sizeof(T),          \
           VL4 = TC_NARROW(VBYTES, 4) / sizeof(T) };                                    \
    Py_ssize_t i, j = 0;                                                                \
    for (; j + 2 * VL <= n; j += 2 * VL) {                                              \
        TC_ROW_TILES(TC_TILE_ROWS, NAME##_vec, T, 2, VL, MR)                            \
    }                                                                                   \
    for (; j + VL <= n; j += VL) {                                                      \
        TC_ROW_TILES(TC_TILE_ROWS, NAME##_vec, T, 1, VL, MR)                            \
    }                                                                                   \
    for (; VL2 < VL && j + VL2 <= n; j += VL2) {                                        \
        TC_ROW_TILES(TC_TILE_ROWS, NAME##_v2, T, 1, VL2, MR)                            \
    }                                                                                   \
    for (; VL4 < VL2 && j + VL4 <= n; j += VL4) {                                       \
        TC_ROW_TILES(TC_TILE_ROWS, NAME##_v4, T, 1, VL4, MR)                            \
    }                                                                                   \
    TC_SCALAR_COLUMNS(T, j, MADD, 1, Ar[ii], B + jj, Cr[ii][coff + jj])                 \
}

TC_DEFINE_GEMM(tc_gemm_f32_base, float, 16, 6, TC_BASE_MADD, )
TC_DEFINE_GEMM(tc_gemm_f64_base, double, 16, 6, TC_BASE_MADD, )
#ifdef TC_X86_DISPATCH
TC_DEFINE_GEMM(tc_gemm_f32_avx2, float, 32, 6, TC_FUSED, __attribute__((target("avx2,fma"))))
TC_DEFINE_GEMM(tc_gemm_f64_avx2, double, 32, 6, TC_FUSED, __attribute__((target("avx2,fma"))))
TC_DEFINE_GEMM(tc_gemm_f32_avx512, float, 64, 8, TC_FUSED,
               __attribute__((target("avx512f,fma"))))
TC_DEFINE_GEMM(tc_gemm_f64_avx512, double, 64, 8, TC_FUSED,
               __attribute__((target("avx512f,fma"))))
#endif

#else  /* no vector extensions (e.g. MSVC): plain loops, left to the compiler */

#define TC_DEFINE_SCALAR_GEMM(NAME, T)                                                  \
static void NAME##_br(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t nb,          \
                      const T *const *A, Py_ssize_t aoff, Py_ssize_t sai, Py_ssize_t sap, \
                      const T *const *B, Py_ssize_t boff, Py_ssize_t ldb, T *C,         \
                      Py_ssize_t ldc)                                                   \
{ TC_SCALAR_COLUMNS(T, 0, TC_BASE_MADD, nb, TC_BR_A_ROW, TC_BR_B_COL, TC_BR_C_AT) }      \
static void NAME(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const T *A, Py_ssize_t sai,   \
                 Py_ssize_t sap, const T *B, Py_ssize_t ldb, T *C, Py_ssize_t ldc)       \
{ NAME##_br(m, n, k, 1, &A, 0, sai, sap, &B, 0, ldb, C, ldc); }                          \
static void NAME##_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const T *const *Ar,    \
                        Py_ssize_t sap, const T *B, Py_ssize_t ldb, T *const *Cr,        \
                        Py_ssize_t coff)                                                 \
{ for (Py_ssize_t ii = 0; ii < m; ii++)                                                \
      NAME(1, n, k, Ar[ii], 0, sap, B, ldb, Cr[ii] + coff, 0); }
TC_DEFINE_SCALAR_GEMM(tc_gemm_f32_base, float)
TC_DEFINE_SCALAR_GEMM(tc_gemm_f64_base, double)
#endif

/* Channel-wise kernels, the single-channel and depthwise cases where a GEMM tile would be
 * 1 x 1 (each sums in the order of its loops, one MADD per product, like the GEMM):
 *   axpy:   y[i*incy] += alpha * x[i*incx]                       (one channel, a row)
 *   cmadd:  C[i*ldc + j] += A[i*sai + j] * B[j]                   (per-channel weights B)
 *   cdot:   C[j] += sum_i A[i*sai + j] * X[i*sxi + j], i in order  (per-channel reduction)
 * with unit stride over the channels j, which run as vectors. */
#define TC_DEFINE_CHANNELWISE(S, SUFFIX, T, VBYTES, MADD, ATTR)                          \
typedef T tc_cw_##S##SUFFIX##_vec __attribute__((vector_size(VBYTES), aligned(sizeof(T)))); \
ATTR static void tc_axpy_##S##SUFFIX(Py_ssize_t n, T alpha, const T *x, Py_ssize_t incx, \
                                     T *y, Py_ssize_t incy)                             \
{                                                                                       \
    typedef tc_cw_##S##SUFFIX##_vec V;                                                  \
    enum { VL = (VBYTES) / sizeof(T) };                                                 \
    Py_ssize_t i = 0;                                                                   \
    if (incx == 1 && incy == 1) {                                                       \
        V a = alpha - (V){0};                                                           \
        for (; i + VL <= n; i += VL)                                                    \
            *(V *)(y + i) = *(const V *)(y + i) + a * *(const V *)(x + i);              \
    }                                                                                   \
    for (; i < n; i++)                                                                  \
        y[i * incy] = MADD(T)(alpha, x[i * incx], y[i * incy]);                         \
}                                                                                       \
ATTR static void tc_cmadd_##S##SUFFIX(Py_ssize_t m, Py_ssize_t n, const T *A,           \
                                      Py_ssize_t sai, const T *B, T *C, Py_ssize_t ldc) \
{                                                                                       \
    typedef tc_cw_##S##SUFFIX##_vec V;                                                  \
    enum { VL = (VBYTES) / sizeof(T) };                                                 \
    for (Py_ssize_t i = 0; i < m; i++) {                                                \
        const T *a = A + i * sai;                                                       \
        T *c = C + i * ldc;                                                             \
        Py_ssize_t j = 0;                                                               \
        for (; j + VL <= n; j += VL)                                                    \
            *(V *)(c + j) = *(const V *)(c + j) + *(const V *)(a + j) * *(const V *)(B + j); \
        for (; j < n; j++)                                                              \
            c[j] = MADD(T)(a[j], B[j], c[j]);                                           \
    }                                                                                   \
}                                                                                       \
ATTR static void tc_cdot_##S##SUFFIX(Py_ssize_t m, Py_ssize_t n, const T *A,            \
                                     Py_ssize_t sai, const T *X, Py_ssize_t sxi, T *C)  \
{                                                                                       \
    typedef tc_cw_##S##SUFFIX##_vec V;                                                  \
    enum { VL = (VBYTES) / sizeof(T) };                                                 \
    Py_ssize_t j = 0;                                                                   \
    for (; j + VL <= n; j += VL) {                                                      \
        V c = *(const V *)(C + j);                                                      \
        for (Py_ssize_t i = 0; i < m; i++)                                              \
            c += *(const V *)(A + i * sai + j) * *(const V *)(X + i * sxi + j);         \
        *(V *)(C + j) = c;                                                              \
    }                                                                                   \
    for (; j < n; j++) {                                                                \
        T c = C[j];                                                                     \
        for (Py_ssize_t i = 0; i < m; i++)                                              \
            c = MADD(T)(A[i * sai + j], X[i * sxi + j], c);                             \
        C[j] = c;                                                                       \
    }                                                                                   \
}

#ifdef TC_VECTOR_EXT
TC_DEFINE_CHANNELWISE(f32, _base, float, 16, TC_BASE_MADD, )
TC_DEFINE_CHANNELWISE(f64, _base, double, 16, TC_BASE_MADD, )
#ifdef TC_X86_DISPATCH
TC_DEFINE_CHANNELWISE(f32, _avx2, float, 32, TC_FUSED, __attribute__((target("avx2,fma"))))
TC_DEFINE_CHANNELWISE(f64, _avx2, double, 32, TC_FUSED, __attribute__((target("avx2,fma"))))
TC_DEFINE_CHANNELWISE(f32, _avx512, float, 64, TC_FUSED,
                      __attribute__((target("avx512f,fma"))))
TC_DEFINE_CHANNELWISE(f64, _avx512, double, 64, TC_FUSED,
                      __attribute__((target("avx512f,fma"))))
#endif
#else  /* no vector extensions: the scalar loops only */
#define TC_DEFINE_SCALAR_CHANNELWISE(S, T)                                               \
static void tc_axpy_##S##_base(Py_ssize_t n, T alpha, const T *x, Py_ssize_t incx, T *y, \
                               Py_ssize_t incy)                                         \
{ for (Py_ssize_t i = 0; i < n; i++) y[i * incy] = TC_BASE_MADD(T)(alpha, x[i * incx], y[i * incy]); } \
static void tc_cmadd_##S##_base(Py_ssize_t m, Py_ssize_t n, const T *A, Py_ssize_t sai,  \
                                const T *B, T *C, Py_ssize_t ldc)                       \
{ for (Py_ssize_t i = 0; i < m; i++) for (Py_ssize_t j = 0; j < n; j++)                 \
      C[i * ldc + j] = TC_BASE_MADD(T)(A[i * sai + j], B[j], C[i * ldc + j]); }         \
static void tc_cdot_##S##_base(Py_ssize_t m, Py_ssize_t n, const T *A, Py_ssize_t sai,   \
                               const T *X, Py_ssize_t sxi, T *C)                        \
{ for (Py_ssize_t j = 0; j < n; j++) for (Py_ssize_t i = 0; i < m; i++)                 \
      C[j] = TC_BASE_MADD(T)(A[i * sai + j], X[i * sxi + j], C[j]); }
TC_DEFINE_SCALAR_CHANNELWISE(f32, float)
TC_DEFINE_SCALAR_CHANNELWISE(f64, double)
#endif

/* y[2t] = a[t], y[2t + 1] = b[t], 0 <= t < n: the two phases of a stride-2 row back in
 * order (a plain loop the compiler turns into unpacking vector stores). */
#define TC_DEFINE_INTERLEAVE2(S, T)                                                      \
static void tc_interleave2_##S(const T *a, const T *b, T *y, Py_ssize_t n)               \
{                                                                                       \
    for (Py_ssize_t t = 0; t < n; t++) {                                                \
        y[2 * t] = a[t];                                                                \
        y[2 * t + 1] = b[t];                                                            \
    }                                                                                   \
}
TC_DEFINE_INTERLEAVE2(f32, float)
TC_DEFINE_INTERLEAVE2(f64, double)

/* bfloat16 pairs (AVX512_BF16). The float32 brgemm's shapes and calling convention, k
 * counting pairs, but A and B hold 32-bit words of two bfloat16 values of consecutive p
 * (low half: the even one), B "VNNI"-ordered (word (q, j) = B[2q][j], B[2q+1][j]); C is
 * float32 (tc_brgemm_bf16's half_last: the last word of each product holds one value,
 * in its low half). vdpbf16ps adds both exact products of a pair to C, each rounded to
 * nearest even (the instruction's rule, whatever MXCSR says), bfloat16 denormals read
 * as zero and denormal results flushed. Column tails use masked vectors: every column
 * gets the same instruction, so results depend only on the problem (never on the tile
 * path or the thread count). The words arrive as `float *` so that the callers' loops,
 * written for float32, move them unchanged; only these kernels read them as pairs. */
typedef void (*tc_gemm_rows_bf16_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const float *const *,
                                    Py_ssize_t, const float *, Py_ssize_t, float *const *,
                                    Py_ssize_t);
#ifdef TC_X86_DISPATCH
#include <immintrin.h>
#define TC_BF16_ATTR __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16")))

/* One p of a tile: c += A's words of p x B's row p. LOW: only the low halves (an odd
 * count of values ends in a half word: the other half, zero or not, must not reach C,
 * since 0 x inf is NaN). */
#define TC_BF16_STEP(ROWS, NV, P, LOW)                                                  \
    do {                                                                                \
        const __m512i keep = _mm512_set1_epi32((LOW) ? 0xFFFF : -1);                    \
        __m512bh b[NV];                                                                 \
        for (int v = 0; v < (NV); v++)                                                  \
            b[v] = (__m512bh)_mm512_and_si512(keep, _mm512_castps_si512(                \
                _mm512_maskz_loadu_ps(mask[v], bp + (P) * ldb + 16 * v)));              \
        for (int r = 0; r < (ROWS); r++) {                                              \
            __m512bh av = (__m512bh)_mm512_and_si512(keep, _mm512_castps_si512(         \
                _mm512_set1_ps(a[r][(P) * sap])));                                      \
            for (int v = 0; v < (NV); v++)                                              \
                c[r][v] = _mm512_dpbf16_ps(c[r][v], av, b[v]);                          \
        }                                                                               \
    } while (0)

/* ROWS x NV tile (NV vectors of 16 columns, lanes past the matrix masked off); rows past
 * VALID repeat the last valid one and are not stored. A_ROW(bt, r) and C_ROW(r) give
 * where row r of the tile reads A (product bt) and accumulates; with half_last, the
 * last word of each product holds one value (its low half). */
#define TC_BF16_TILE(ROWS, NV, VALID, NB, A_ROW, C_ROW)                                 \
    do {                                                                                \
        const Py_ssize_t valid = (VALID);                                               \
        Py_ssize_t row[ROWS];                                                           \
        for (int r = 0; r < (ROWS); r++)                                                \
            row[r] = r < valid ? r : valid - 1;                                         \
        __m512 c[ROWS][NV];                                                             \
        for (int r = 0; r < (ROWS); r++)                                                \
            for (int v = 0; v < (NV); v++)                                              \
                c[r][v] = _mm512_maskz_loadu_ps(mask[v], C_ROW(row[r]) + j + 16 * v);   \
        for (Py_ssize_t bt = 0; bt < (NB); bt++) {                                      \
            const float *a[ROWS];                                                       \
            for (int r = 0; r < (ROWS); r++)                                            \
                a[r] = A_ROW(bt, row[r]);                                               \
            const float *bp = B[bt] + boff + j;                                         \
            for (Py_ssize_t p = 0; p < k - half_last; p++)                              \
                TC_BF16_STEP(ROWS, NV, p, 0);                                           \
            if (half_last)                                                              \
                TC_BF16_STEP(ROWS, NV, k - 1, 1);                                       \
        }                                                                               \
        for (int r = 0; r < (ROWS); r++)                                                \
            if (r < valid)                                                              \
                for (int v = 0; v < (NV); v++)                                          \
                    _mm512_mask_storeu_ps(C_ROW(r) + j + 16 * v, mask[v], c[r][v]);     \
    } while (0)

/* All of C: 32 columns at a time (16 when fewer are left), rows in tiles of 8 (a partial
 * one for more than 4 left), then 4, 2, 1. */
#define TC_BF16_COLUMNS(NB, A_ROW, C_ROW)                                               \
    for (Py_ssize_t j = 0; j < n; j += 32) {                                            \
        const Py_ssize_t w = n - j < 32 ? n - j : 32;                                   \
        const __mmask16 mask[2] = {                                                     \
            (__mmask16)(w >= 16 ? 0xFFFFu : (1u << w) - 1),                             \
            (__mmask16)(w >= 32 ? 0xFFFFu : w > 16 ? (1u << (w - 16)) - 1 : 0u)};       \
        Py_ssize_t i = 0;                                                               \
        if (w > 16) {                                                                   \
            for (; i + 8 <= m; i += 8) TC_BF16_TILE(8, 2, 8, NB, A_ROW, C_ROW);         \
            if (m - i > 4) { TC_BF16_TILE(8, 2, m - i, NB, A_ROW, C_ROW); i = m; }      \
            if (m - i >= 4) { TC_BF16_TILE(4, 2, 4, NB, A_ROW, C_ROW); i += 4; }        \
            if (m - i >= 2) { TC_BF16_TILE(2, 2, 2, NB, A_ROW, C_ROW); i += 2; }        \
            if (m - i >= 1) { TC_BF16_TILE(1, 2, 1, NB, A_ROW, C_ROW); i += 1; }        \
        } else {                                                                        \
            for (; i + 8 <= m; i += 8) TC_BF16_TILE(8, 1, 8, NB, A_ROW, C_ROW);         \
            if (m - i > 4) { TC_BF16_TILE(8, 1, m - i, NB, A_ROW, C_ROW); i = m; }      \
            if (m - i >= 4) { TC_BF16_TILE(4, 1, 4, NB, A_ROW, C_ROW); i += 4; }        \
            if (m - i >= 2) { TC_BF16_TILE(2, 1, 2, NB, A_ROW, C_ROW); i += 2; }        \
            if (m - i >= 1) { TC_BF16_TILE(1, 1, 1, NB, A_ROW, C_ROW); i += 1; }        \
        }                                                                               \
    }

#define TC_BF16_BR_A(bt, r) (A[bt] + aoff + (i + (r)) * sai)
#define TC_BF16_BR_C(r) (C + (i + (r)) * ldc)
TC_BF16_ATTR static void tc_brgemm_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                        Py_ssize_t nb, const float *const *A,
                                        Py_ssize_t aoff, Py_ssize_t sai, Py_ssize_t sap,
                                        const float *const *B, Py_ssize_t boff,
                                        Py_ssize_t ldb, float *C, Py_ssize_t ldc,
                                        int half_last)
{
    TC_BF16_COLUMNS(nb, TC_BF16_BR_A, TC_BF16_BR_C)
}

#define TC_BF16_ROWS_A(bt, r) (Ar[i + (r)])
#define TC_BF16_ROWS_C(r) (Cr[i + (r)] + coff)
TC_BF16_ATTR static void tc_gemm_rows_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                           const float *const *Ar, Py_ssize_t sap,
                                           const float *B0, Py_ssize_t ldb,
                                           float *const *Cr, Py_ssize_t coff)
{
    const float *const *B = &B0;
    const Py_ssize_t boff = 0;
    const int half_last = 0;
    TC_BF16_COLUMNS(1, TC_BF16_ROWS_A, TC_BF16_ROWS_C)
}
#endif

/* Whether this build and CPU have the bfloat16-pair kernels. */
static int tc_bf16_supported(void)
{
#ifdef TC_X86_DISPATCH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}
#ifndef TC_X86_DISPATCH   /* never called: tc_bf16_supported() is 0 */
static void tc_brgemm_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t nb,
                           const float *const *A, Py_ssize_t aoff, Py_ssize_t sai,
                           Py_ssize_t sap, const float *const *B, Py_ssize_t boff,
                           Py_ssize_t ldb, float *C, Py_ssize_t ldc, int half_last) {}
static void tc_gemm_rows_bf16(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                              const float *const *Ar, Py_ssize_t sap, const float *B0,
                              Py_ssize_t ldb, float *const *Cr, Py_ssize_t coff) {}
#endif

/* float32 -> bfloat16 bits, rounded to nearest even (ties to even, overflow to infinity,
 * subnormals kept), NaN as the quiet NaN of its sign: ml_dtypes' cast, bit for bit.
 * Branch-free so that the compiler vectorises it; src elements `stride` apart. */
#define TC_ROUND_BF16_BODY                                                              \
    for (Py_ssize_t i = 0; i < n; i++) {                                                \
        unsigned int u;                                                                 \
        memcpy(&u, src + i * stride, 4);                                                \
        unsigned int rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                  \
        unsigned int nan = ((u >> 16) & 0x8000u) | 0x7fc0u;                            \
        dst[i] = (unsigned short)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);    \
    }
#define TC_DEFINE_ROUND_BF16(SUFFIX, ATTR)                                              \
ATTR static void tc_round_bf16##SUFFIX(const float *src, Py_ssize_t stride,            \
                                       unsigned short *dst, Py_ssize_t n)              \
{ TC_ROUND_BF16_BODY }
TC_DEFINE_ROUND_BF16(_base, )
#ifdef TC_X86_DISPATCH   /* the same integer steps, in the selected variant's vectors */
TC_DEFINE_ROUND_BF16(_avx2, __attribute__((target("avx2,fma"))))
/* AVX-512F written out (the compiler's own vectors of the loop above stayed 256 bits
 * wide): 16 words per step, narrowed by vpmovdw. */
__attribute__((target("avx512f,fma")))
static void tc_round_bf16_avx512(const float *src, Py_ssize_t stride, unsigned short *dst,
                                 Py_ssize_t n)
{
    Py_ssize_t i = 0;
    if (stride == 1) {
        const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
        const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
        const __m512i inf = _mm512_set1_epi32(0x7f800000);
        const __m512i sign = _mm512_set1_epi32(0x8000), quiet = _mm512_set1_epi32(0x7fc0);
        for (; i + 16 <= n; i += 16) {
            __m512i u = _mm512_loadu_si512((const void *)(src + i));
            __m512i high = _mm512_srli_epi32(u, 16);
            __m512i rounded = _mm512_srli_epi32(
                _mm512_add_epi32(_mm512_add_epi32(u, half), _mm512_and_si512(high, one)), 16);
            __m512i nan = _mm512_or_si512(_mm512_and_si512(high, sign), quiet);
            __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, magnitude), inf);
            _mm256_storeu_si256((__m256i *)(dst + i),
                                _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded,
                                                                              nan)));
        }
    }
    src += i * stride;
    dst += i;
    n -= i;
    TC_ROUND_BF16_BODY
}
#endif

/* bfloat16 bits -> float32, exactly (the 16 bits become the high half). */
static void tc_widen_bf16(const unsigned short *src, float *dst, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned int u = (unsigned int)src[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* Transposing copy D[j*ldd + i] = S[i*lds + j] (0 <= i < m, 0 <= j < n): tiles of voxels
 * x channels into the channel planes of a channels_first array. The vector variants move
 * 8 x 8 (float) or 4 x 4 (double) blocks through AVX registers; a remainder of columns or
 * planes is one more block overlapping the previous one (the same values written twice),
 * so only a tile narrower than a block goes element by element. With `stream` (a caller
 * storing many tiles in a burst, see tc_store_fence) the whole 64-byte lines of each
 * plane's row are written with non-temporal stores, which do not read a line they
 * overwrite; the rest of the row with ordinary stores (a line taking both would be
 * written back in parts). A copy: every variant and store gives the same bits. */
#define TC_DEFINE_TRANSPOSE_BASE(SUFFIX, T)                                             \
static void tc_transpose_##SUFFIX##_base(Py_ssize_t m, Py_ssize_t n, const T *S,         \
                                         Py_ssize_t lds, T *D, Py_ssize_t ldd, int stream) \
{                                                                                       \
    (void)stream;                                                                       \
    for (Py_ssize_t j = 0; j < n; j++)                                                  \
        for (Py_ssize_t i = 0; i < m; i++)                                              \
            D[j * ldd + i] = S[i * lds + j];                                            \
}
TC_DEFINE_TRANSPOSE_BASE(f32, float)
TC_DEFINE_TRANSPOSE_BASE(f64, double)
#ifdef TC_X86_DISPATCH
/* The transposed rows of the 8 x 8 float block at row i, column j of S: R[q] holds
 * column j + q, rows i...i + 7. */
__attribute__((target("avx2")))
static inline void tc_block_f32(const float *S, Py_ssize_t lds, Py_ssize_t i, Py_ssize_t j,
                                __m256 R[8])
{
    __m256 r[8], t[8], u[8];
    for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(S + (i + q) * lds + j);
    for (int q = 0; q < 8; q += 2) {
        t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
    }
    for (int q = 0; q < 8; q += 4) {
        u[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
        u[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
        u[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
        u[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        R[q] = _mm256_permute2f128_ps(u[q], u[q + 4], 0x20);
        R[q + 4] = _mm256_permute2f128_ps(u[q], u[q + 4], 0x31);
    }
}
/* The same for a 4 x 4 double block. */
__attribute__((target("avx2")))
static inline void tc_block_f64(const double *S, Py_ssize_t lds, Py_ssize_t i, Py_ssize_t j,
                                __m256d R[4])
{
    __m256d r[4], t[4];
    for (int q = 0; q < 4; q++) r[q] = _mm256_loadu_pd(S + (i + q) * lds + j);
    t[0] = _mm256_unpacklo_pd(r[0], r[1]);
    t[1] = _mm256_unpackhi_pd(r[0], r[1]);
    t[2] = _mm256_unpacklo_pd(r[2], r[3]);
    t[3] = _mm256_unpackhi_pd(r[2], r[3]);
    R[0] = _mm256_permute2f128_pd(t[0], t[2], 0x20);
    R[1] = _mm256_permute2f128_pd(t[1], t[3], 0x20);
    R[2] = _mm256_permute2f128_pd(t[0], t[2], 0x31);
    R[3] = _mm256_permute2f128_pd(t[1], t[3], 0x31);
}
/* One block stored with ordinary stores (V: __m256 or __m256d, KIND: ps or pd). */
#define TC_STORE_BLOCK(SUFFIX, V, KIND, L, i)                                           \
    do {                                                                                \
        V R_[L];                                                                        \
        tc_block_##SUFFIX(S, lds, (i), j, R_);                                          \
        for (int q = 0; q < (L); q++)                                                   \
            _mm256_storeu_##KIND(D + (j + q) * ldd + (i), R_[q]);                        \
    } while (0)
/* Two blocks side by side, whose rows fill one 64-byte line of each plane, streamed line
 * by line: a line's two halves go out together, so that it leaves the core whole (a line
 * left half-written while the other planes are written is flushed in parts, each a
 * read-modify-write of memory). */
#define TC_STREAM_LINE(SUFFIX, V, KIND, L, i)                                           \
    do {                                                                                \
        V R0_[L], R1_[L];                                                               \
        tc_block_##SUFFIX(S, lds, (i), j, R0_);                                         \
        tc_block_##SUFFIX(S, lds, (i) + (L), j, R1_);                                   \
        for (int q = 0; q < (L); q++) {                                                 \
            _mm256_stream_##KIND(D + (j + q) * ldd + (i), R0_[q]);                       \
            _mm256_stream_##KIND(D + (j + q) * ldd + (i) + (L), R1_[q]);                 \
        }                                                                               \
    } while (0)
#define TC_LINE 64
/* Columns lo <= i < hi of planes j...j+L-1 in blocks, the last one overlapping when
 * (hi - lo) % L; element by element when narrower than a block. */
#define TC_BLOCKS(SUFFIX, V, KIND, L, lo, hi)                                           \
    do {                                                                                \
        Py_ssize_t i_ = (lo);                                                           \
        if ((hi) - (lo) < (L)) {                                                        \
            for (; i_ < (hi); i_++)                                                     \
                for (Py_ssize_t q = 0; q < (L); q++)                                    \
                    D[(j + q) * ldd + i_] = S[i_ * lds + j + q];                        \
            break;                                                                      \
        }                                                                               \
        for (; i_ + (L) <= (hi); i_ += (L)) TC_STORE_BLOCK(SUFFIX, V, KIND, L, i_);     \
        if (i_ < (hi)) TC_STORE_BLOCK(SUFFIX, V, KIND, L, (hi) - (L));                  \
    } while (0)
#define TC_DEFINE_TRANSPOSE(SUFFIX, T, V, KIND, L)                                      \
__attribute__((target("avx2")))                                                         \
static void tc_transpose_##SUFFIX##_avx2(Py_ssize_t m, Py_ssize_t n, const T *S,         \
                                         Py_ssize_t lds, T *D, Py_ssize_t ldd, int stream) \
{                                                                                       \
    /* Whole lines a <= i < b (the same in every plane when ldd is a multiple of one), */ \
    /* each two blocks wide. */                                                         \
    Py_ssize_t per_line = TC_LINE / sizeof(T), a = 0, b = 0;                            \
    if (n < (L)) { tc_transpose_##SUFFIX##_base(m, n, S, lds, D, ldd, 0); return; }     \
    if (stream && (ldd * sizeof(T)) % TC_LINE == 0 && (size_t)D % sizeof(T) == 0) {     \
        a = (Py_ssize_t)(((TC_LINE - (size_t)D % TC_LINE) % TC_LINE) / sizeof(T));      \
        b = a < m ? a + (m - a) / per_line * per_line : a;                              \
        if (b == a) a = b = 0;                                                          \
    }                                                                                   \
    for (Py_ssize_t jb = 0; jb < n; jb += (L)) {                                        \
        Py_ssize_t j = jb + (L) <= n ? jb : n - (L);                                    \
        if (b > a) {                                                                    \
            TC_BLOCKS(SUFFIX, V, KIND, L, 0, a);                                        \
            for (Py_ssize_t i = a; i < b; i += 2 * (L))                                 \
                TC_STREAM_LINE(SUFFIX, V, KIND, L, i);                                  \
            TC_BLOCKS(SUFFIX, V, KIND, L, b, m);                                        \
        } else {                                                                        \
            TC_BLOCKS(SUFFIX, V, KIND, L, 0, m);                                        \
        }                                                                               \
    }                                                                                   \
}
TC_DEFINE_TRANSPOSE(f32, float, __m256, ps, 8)
TC_DEFINE_TRANSPOSE(f64, double, __m256d, pd, 4)
#define tc_transpose_f32_avx512 tc_transpose_f32_avx2
#define tc_transpose_f64_avx512 tc_transpose_f64_avx2
#endif

#define TC_GROUPED_MAX_PERMUTATIONS 64   /* phases * ca (tc_grouped_phases) */
#define TC_GROUPED_MAX_CA 16
/* Phases of a vector of VL lanes against groups of cb lanes: cb / gcd(cb, VL). */
static inline Py_ssize_t tc_grouped_phases(Py_ssize_t cb, Py_ssize_t vl)
{
    Py_ssize_t a = cb, b = vl;
    while (b) { Py_ssize_t t = a % b; a = b; b = t; }
    return cb / a;
}

/* Grouped channels: G groups of ca input and cb output channels each (cb < L, not both
 * 1), where each group's GEMM would be cb columns wide. All the groups at once, the
 * channels as vectors of L lanes (L = VL, or VL/2, VL/4 where ca is large):
 *     C[i*ldc + j] += sum_b sum_q A[b][aoff + i*sai + (j / cb)*ca + q] * B[b][q*n + j]
 * for 0 <= i < m and 0 <= j < n = G*cb. A vector of L outputs starting at j (a multiple
 * of L) holds the groups j/cb to (j+L-1)/cb; their ca channels each are a span of A of
 * one vector, or of two (loaded under a mask where a vector reaches past the span, so
 * nothing past it is read; plainly where none does), and a lane takes its group's
 * channel q from it by an in-register permutation. Where cb does not divide L, a vector
 * starts at one of cb/gcd(cb, L) phases j % cb of its first group, each with its own
 * permutations and masks (tc_grouped_phases). Vectors of fewer than VL lanes, and the
 * last one where L does not divide n, are partial: their lanes of C and B are read and
 * written under masks. Each element is summed in the order of its group's batch-reduce
 * GEMM (b, then q), one FMA per product. Only the vector variants have it:
 * tc_grouped_lanes() is VL. */
#ifdef TC_X86_DISPATCH
/* Masks of the 32-bit lanes of the first and the second vector of a span of SPAN
 * elements (a double is two lanes). */
#define TC_SPAN_MASKS(SPAN, M0, M1)                                                     \
    for (int u = 0; u < VL * W; u++) {                                                  \
        M0[u] = u < W * (SPAN) ? -1 : 0;                                                \
        M1[u] = u + VL * W < W * (SPAN) ? -1 : 0;                                       \
    }
/* Declares V, VL, the phases, `two` (some span is over a vector), `whole` (no loaded
 * vector reaches past its span), each phase's load masks m0/m1 and permutations
 * idx[phase * ca + q] (in 32-bit lanes; the sign bit marks
 * lanes of the second vector, as AVX2's blend reads it; the permutations ignore it), the
 * mask kl of a vector's L lanes; the partial last vector's start tail_at (n when there
 * is none), the mask kc of its lanes and t0/t1 of its span. */
#define TC_GROUPED_SETUP(TYPE, VBYTES)                                                  \
    typedef TYPE T;                                                                     \
    typedef T V __attribute__((vector_size(VBYTES), aligned(sizeof(T))));              \
    typedef int I __attribute__((vector_size(VBYTES)));                                 \
    enum { VL = (VBYTES) / sizeof(T), W = sizeof(T) / sizeof(int) };                    \
    const Py_ssize_t phases = tc_grouped_phases(cb, L), tail_at = n - n % L;            \
    int two = 0;                                                                        \
    Py_ssize_t least = 2 * VL;   /* the shortest span */                                \
    I idx[TC_GROUPED_MAX_PERMUTATIONS], m0[VL], m1[VL], t0, t1, kc, kl, unused;         \
    TC_SPAN_MASKS((n / cb - tail_at / cb) * ca, t0, t1)                                 \
    TC_SPAN_MASKS(n % L, kc, unused)                                                    \
    TC_SPAN_MASKS(L, kl, unused)                                                        \
    (void)unused;                                                                       \
    for (Py_ssize_t ph = 0; ph < phases; ph++) {                                        \
        const Py_ssize_t r = ph * L % cb, span = ((r + L - 1) / cb + 1) * ca;           \
        two |= span > VL;                                                               \
        least = span < least ? span : least;                                            \
        TC_SPAN_MASKS(span, m0[ph], m1[ph])                                             \
        for (Py_ssize_t q = 0; q < ca; q++)                                             \
            for (int u = 0; u < VL * W; u++) {                                          \
                unsigned lane = (unsigned)(W * ((r + u / W) / cb * ca + q) + u % W);    \
                idx[ph * ca + q][u] = (int)(lane < VL * W ? lane : lane | 0x80000000u); \
            }                                                                           \
    }                                                                                   \
    /* every whole vector's loads of A lie in its span: plain loads (masked ones cost  \
     * these kernels up to 2x on Zen 5) */                                              \
    const int whole = least >= (two ? 2 : 1) * VL;
/* The masks of the vector at J, of phase PH: of its span (K0, K1) and of its lanes (KP),
 * in the variant's MASK form (AVX-512's mask registers: converted once, not per load). */
#define TC_VECTOR_MASKS(J, PH, K0, K1, KP)                                              \
    do {                                                                                \
        K0 = TO_MASK((J) == tail_at ? t0 : m0[PH]);                                     \
        K1 = TO_MASK((J) == tail_at ? t1 : m1[PH]);                                     \
        KP = TO_MASK((J) == tail_at ? kc : kl);                                         \
    } while (0)
#define TC_PICK1(x0, x1, index) PERMUTE(x0, index)
#define TC_PICK2(x0, x1, index) PERMUTE2(x0, x1, index)
/* A vector of C or B: whole, or a partial one's lanes (PART, mask kp). */
#define TC_LOAD_LANES(p, PART) ((PART) ? (V)LOAD_MASKED(p, kp) : *(const V *)(p))
#define TC_STORE_LANES(p, v, PART)                                                      \
    do {                                                                                \
        if (PART) STORE_MASKED(p, kp, v);                                               \
        else *(V *)(p) = (v);                                                           \
    } while (0)
#define TC_LOAD_SPAN(p, mask, WHOLE) ((WHOLE) ? *(const V *)(p) : (V)LOAD_MASKED(p, mask))
#define TC_GROUPED_TILE(ROWS, TWO, PICK, PART, WHOLE)                                   \
    do {                                                                                \
        V acc[ROWS], x0[ROWS], x1[ROWS];                                                \
        for (int r = 0; r < (ROWS); r++)                                                \
            acc[r] = TC_LOAD_LANES(C + (i + r) * ldc + j, PART);                        \
        for (Py_ssize_t bt = 0; bt < nb; bt++) {                                        \
            const T *a = A[bt] + aoff + i * sai + aj;                                   \
            const T *b = B[bt] + j;                                                     \
            for (int r = 0; r < (ROWS); r++) {                                          \
                x0[r] = TC_LOAD_SPAN(a + r * sai, k0, WHOLE);                           \
                x1[r] = (TWO) ? TC_LOAD_SPAN(a + r * sai + VL, k1, WHOLE) : x0[r];      \
            }                                                                           \
            (void)x1;   /* read only by PERMUTE2 */                                     \
            for (Py_ssize_t q = 0; q < ca; q++) {                                       \
                V w = TC_LOAD_LANES(b + q * n, PART);                                   \
                for (int r = 0; r < (ROWS); r++)                                        \
                    acc[r] += (V)PICK(x0[r], x1[r], ix[q]) * w;                         \
            }                                                                           \
        }                                                                               \
        for (int r = 0; r < (ROWS); r++)                                                \
            TC_STORE_LANES(C + (i + r) * ldc + j, acc[r], PART);                        \
    } while (0)
/* Tiles of MR rows, then of 4 (a remainder of 7 rows as single rows, one dependency
 * chain each, had taken a quarter of a k4 s2 forward's time), then single rows. */
#define TC_GROUPED_ROWS(MR, PART, WHOLE)                                                \
    if (two) {                                                                          \
        for (; i + (MR) <= m; i += (MR)) TC_GROUPED_TILE(MR, 1, TC_PICK2, PART, WHOLE);\
        for (; i + 4 <= m; i += 4) TC_GROUPED_TILE(4, 1, TC_PICK2, PART, WHOLE);       \
        for (; i < m; i++) TC_GROUPED_TILE(1, 1, TC_PICK2, PART, WHOLE);                \
    } else {                                                                            \
        for (; i + (MR) <= m; i += (MR)) TC_GROUPED_TILE(MR, 0, TC_PICK1, PART, WHOLE);\
        for (; i + 4 <= m; i += 4) TC_GROUPED_TILE(4, 0, TC_PICK1, PART, WHOLE);       \
        for (; i < m; i++) TC_GROUPED_TILE(1, 0, TC_PICK1, PART, WHOLE);                \
    }
#define TC_DEFINE_GROUPED(S, SUFFIX, TYPE, VBYTES, MR, ATTR)                            \
ATTR static void tc_grouped_##S##SUFFIX(Py_ssize_t m, Py_ssize_t n, Py_ssize_t ca,      \
                                        Py_ssize_t cb, Py_ssize_t L, Py_ssize_t nb,     \
                                        const TYPE *const *A, Py_ssize_t aoff,          \
                                        Py_ssize_t sai, const TYPE *const *B, TYPE *C,  \
                                        Py_ssize_t ldc)                                 \
{                                                                                       \
    TC_GROUPED_SETUP(TYPE, VBYTES)                                                      \
    for (Py_ssize_t j = 0; j < n; j += L) {                                             \
        const Py_ssize_t ph = j / L % phases;                                           \
        const I *ix = idx + ph * ca;                                                    \
        const Py_ssize_t aj = j / cb * ca;   /* the span's start: no division per tile */ \
        MASK k0, k1, kp;                                                                \
        Py_ssize_t i = 0;                                                               \
        TC_VECTOR_MASKS(j, ph, k0, k1, kp);                                             \
        if (j == tail_at || L < VL) {                                                   \
            TC_GROUPED_ROWS(MR, 1, 0)                                                   \
        } else if (whole) {                                                             \
            TC_GROUPED_ROWS(MR, 0, 1)                                                   \
        } else {                                                                        \
            TC_GROUPED_ROWS(MR, 0, 0)                                                   \
        }                                                                               \
    }                                                                                   \
}
/* The kernel gradient's counterpart, each tap's (ca x cb) matrix of every group at once:
 *     C[q*n + j] += sum_b sum_p A[b][aoff + p*sap + (j / cb)*ca + q] * B[b][boff + p*sbp + j]
 * (q < ca, j < n = G*cb; C holds group g's element (q, i) at q*n + g*cb + i), summed in
 * the order of each group's GEMM (b, then p), one FMA per product. The ca accumulators
 * of a vector are ca dependency chains: two vectors of channels go side by side where
 * the registers allow, and ca is a constant of the common instantiations (CQ, in
 * registers; DIM the accumulators' room). PART: partial vectors, one at a time (NJ 1),
 * to the end. */
#define TC_GROUPED_DOT(CQ, DIM, NJ, TWO, PICK, PART, WHOLE)                             \
    for (; (PART) ? j < n : j + (NJ) * L <= n; j += (NJ) * L) {                         \
        V acc[NJ][DIM];                                                                 \
        const T *au[NJ];                                                                \
        Py_ssize_t aj[NJ];   /* the spans' starts: no division per batch entry */        \
        const I *iu[NJ];                                                                \
        MASK k0[NJ], k1[NJ], kp;   /* kp: PART has one vector (NJ 1) */                 \
        for (int u = 0; u < (NJ); u++) {                                                \
            const Py_ssize_t ph = (j / L + u) % phases;                                 \
            iu[u] = idx + ph * ca;                                                      \
            aj[u] = (j + u * L) / cb * ca;                                              \
            TC_VECTOR_MASKS(j + u * L, ph, k0[u], k1[u], kp);                           \
            for (int q = 0; q < (CQ); q++)                                              \
                acc[u][q] = TC_LOAD_LANES(C + q * n + j + u * L, PART);                 \
        }                                                                               \
        for (Py_ssize_t bt = 0; bt < nb; bt++) {                                        \
            const T *b = B[bt] + boff + j;                                              \
            for (int u = 0; u < (NJ); u++)                                              \
                au[u] = A[bt] + aoff + aj[u];                                           \
            for (Py_ssize_t p = 0; p < k; p++)                                          \
                for (int u = 0; u < (NJ); u++) {                                        \
                    const T *ap = au[u] + p * sap;                                      \
                    V g0 = TC_LOAD_SPAN(ap, k0[u], WHOLE);                              \
                    V g1 = (TWO) ? TC_LOAD_SPAN(ap + VL, k1[u], WHOLE) : g0;            \
                    V x = TC_LOAD_LANES(b + p * sbp + u * L, PART);                     \
                    (void)g1;   /* read only by PERMUTE2 */                             \
                    for (int q = 0; q < (CQ); q++)                                      \
                        acc[u][q] += (V)PICK(g0, g1, iu[u][q]) * x;                     \
                }                                                                       \
        }                                                                               \
        for (int u = 0; u < (NJ); u++)                                                  \
            for (int q = 0; q < (CQ); q++)                                              \
                TC_STORE_LANES(C + q * n + j + u * L, acc[u][q], PART);                 \
    }
#define TC_GROUPED_DOT_ALL(CQ, DIM, NJ, TWO, PICK)                                      \
    if (L == VL && whole) {                                                             \
        TC_GROUPED_DOT(CQ, DIM, NJ, TWO, PICK, 0, 1)                                    \
        TC_GROUPED_DOT(CQ, DIM, 1, TWO, PICK, 0, 1)                                     \
    } else if (L == VL) {                                                               \
        TC_GROUPED_DOT(CQ, DIM, NJ, TWO, PICK, 0, 0)                                    \
        TC_GROUPED_DOT(CQ, DIM, 1, TWO, PICK, 0, 0)                                     \
    }                                                                                   \
    TC_GROUPED_DOT(CQ, DIM, 1, TWO, PICK, 1, 0)
#define TC_GROUPED_DOT_CA(CQ, DIM, NJ)                                                  \
    if (two) { TC_GROUPED_DOT_ALL(CQ, DIM, NJ, 1, TC_PICK2) }                          \
    else { TC_GROUPED_DOT_ALL(CQ, DIM, NJ, 0, TC_PICK1) }
#define TC_DEFINE_GROUPED_DOT(S, SUFFIX, TYPE, VBYTES, ATTR)                            \
ATTR static void tc_grouped_dot_##S##SUFFIX(Py_ssize_t k, Py_ssize_t n, Py_ssize_t ca,  \
                                            Py_ssize_t cb, Py_ssize_t L, Py_ssize_t nb, \
                                            const TYPE *const *A, Py_ssize_t aoff,      \
                                            Py_ssize_t sap, const TYPE *const *B,       \
                                            Py_ssize_t boff, Py_ssize_t sbp, TYPE *C)   \
{                                                                                       \
    TC_GROUPED_SETUP(TYPE, VBYTES)                                                      \
    /* two vectors of 8 accumulators side by side only in AVX-512's 32 registers */    \
    enum { NJ8 = VL >= 16 ? 2 : 1 };                                                    \
    Py_ssize_t j = 0;                                                                   \
    if (ca == 1) { TC_GROUPED_DOT_CA(1, 1, 2) }                                         \
    else if (ca == 2) { TC_GROUPED_DOT_CA(2, 2, 2) }                                    \
    else if (ca == 4) { TC_GROUPED_DOT_CA(4, 4, 2) }                                    \
    else if (ca == 8) { TC_GROUPED_DOT_CA(8, 8, NJ8) }                                  \
    else { TC_GROUPED_DOT_CA(ca, TC_GROUPED_MAX_CA, 1) }                                \
}
#define PERMUTE(x, index) _mm256_permutevar8x32_ps((__m256)(x), (__m256i)(index))
#define PERMUTE2(x0, x1, index)                                                         \
    _mm256_blendv_ps(PERMUTE(x0, index), PERMUTE(x1, index), (__m256)(index))
#define MASK __m256i
#define TO_MASK(v) ((__m256i)(v))
#define LOAD_MASKED(p, mask) _mm256_maskload_ps((const float *)(p), (mask))
#define STORE_MASKED(p, mask, v)                                                        \
    _mm256_maskstore_ps((float *)(p), (mask), (__m256)(v))
TC_DEFINE_GROUPED(f32, _avx2, float, 32, 4, __attribute__((target("avx2,fma"))))
TC_DEFINE_GROUPED(f64, _avx2, double, 32, 4, __attribute__((target("avx2,fma"))))
TC_DEFINE_GROUPED_DOT(f32, _avx2, float, 32, __attribute__((target("avx2,fma"))))
TC_DEFINE_GROUPED_DOT(f64, _avx2, double, 32, __attribute__((target("avx2,fma"))))
#undef PERMUTE
#undef PERMUTE2
#undef LOAD_MASKED
#undef STORE_MASKED
#undef MASK
#undef TO_MASK
#define PERMUTE(x, index) _mm512_permutexvar_ps((__m512i)(index), (__m512)(x))
#define PERMUTE2(x0, x1, index)                                                         \
    _mm512_permutex2var_ps((__m512)(x0), (__m512i)(index), (__m512)(x1))
#define MASK __mmask16
#define TO_MASK(v) _mm512_test_epi32_mask((__m512i)(v), (__m512i)(v))
#define LOAD_MASKED(p, mask) _mm512_maskz_loadu_ps((mask), (const void *)(p))
#define STORE_MASKED(p, mask, v) _mm512_mask_storeu_ps((void *)(p), (mask), (__m512)(v))
TC_DEFINE_GROUPED(f32, _avx512, float, 64, 8, __attribute__((target("avx512f,fma"))))
TC_DEFINE_GROUPED(f64, _avx512, double, 64, 8, __attribute__((target("avx512f,fma"))))
TC_DEFINE_GROUPED_DOT(f32, _avx512, float, 64, __attribute__((target("avx512f,fma"))))
TC_DEFINE_GROUPED_DOT(f64, _avx512, double, 64, __attribute__((target("avx512f,fma"))))
#undef PERMUTE
#undef PERMUTE2
#undef LOAD_MASKED
#undef STORE_MASKED
#undef MASK
#undef TO_MASK
#endif
typedef void (*tc_grouped_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                 Py_ssize_t, Py_ssize_t, const float *const *, Py_ssize_t,
                                 Py_ssize_t, const float *const *, float *, Py_ssize_t);
typedef void (*tc_grouped_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                 Py_ssize_t, Py_ssize_t, const double *const *, Py_ssize_t,
                                 Py_ssize_t, const double *const *, double *, Py_ssize_t);
typedef void (*tc_grouped_dot_f32_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                     Py_ssize_t, Py_ssize_t, const float *const *,
                                     Py_ssize_t, Py_ssize_t, const float *const *,
                                     Py_ssize_t, Py_ssize_t, float *);
typedef void (*tc_grouped_dot_f64_t)(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                     Py_ssize_t, Py_ssize_t, const double *const *,
                                     Py_ssize_t, Py_ssize_t, const double *const *,
                                     Py_ssize_t, Py_ssize_t, double *);
/* dst[0:bytes] = src[0:bytes]: the whole 64-byte lines of dst with non-temporal stores,
 * which write a line without reading it first (for outputs larger than the caches, whose
 * lines would be evicted unread anyway), the partial lines at either end with ordinary
 * ones. A copy: the same bits as memcpy. See tc_store_fence. */
static inline void tc_stream_copy(void *dst, const void *src, size_t bytes)
{
#ifdef TC_X86_DISPATCH
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (TC_LINE - (size_t)d % TC_LINE) % TC_LINE;
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    for (d += head, s += head, bytes -= head; bytes >= TC_LINE;
         d += TC_LINE, s += TC_LINE, bytes -= TC_LINE)
        for (int q = 0; q < TC_LINE; q += 16)   /* SSE2: every x86-64 CPU */
            _mm_stream_si128((__m128i *)(d + q), _mm_loadu_si128((const __m128i *)(s + q)));
    memcpy(d, s, bytes);
#else
    memcpy(dst, src, bytes);
#endif
}

/* Orders a thread's non-temporal stores before what follows (the end of its work). */
static inline void tc_store_fence(void)
{
#ifdef TC_X86_DISPATCH
    _mm_sfence();
#endif
}

/* Variants: 0 = baseline, 1 = AVX2+FMA, 2 = AVX-512 (named in _kernels.pyx, SIMD_VARIANTS). */
static tc_gemm_f32_t tc_gemm_f32 = tc_gemm_f32_base;
static tc_gemm_f64_t tc_gemm_f64 = tc_gemm_f64_base;
static tc_brgemm_f32_t tc_brgemm_f32 = tc_gemm_f32_base_br;
static tc_brgemm_f64_t tc_brgemm_f64 = tc_gemm_f64_base_br;
static tc_gemm_rows_f32_t tc_gemm_rows_f32 = tc_gemm_f32_base_rows;
static tc_gemm_rows_f64_t tc_gemm_rows_f64 = tc_gemm_f64_base_rows;
static tc_axpy_f32_t tc_axpy_f32 = tc_axpy_f32_base;
static tc_axpy_f64_t tc_axpy_f64 = tc_axpy_f64_base;
static tc_cmadd_f32_t tc_cmadd_f32 = tc_cmadd_f32_base;
static tc_cmadd_f64_t tc_cmadd_f64 = tc_cmadd_f64_base;
static tc_cdot_f32_t tc_cdot_f32 = tc_cdot_f32_base;
static tc_cdot_f64_t tc_cdot_f64 = tc_cdot_f64_base;
static void (*tc_round_bf16)(const float *, Py_ssize_t, unsigned short *, Py_ssize_t) =
    tc_round_bf16_base;
static void (*tc_transpose_f32)(Py_ssize_t, Py_ssize_t, const float *, Py_ssize_t, float *,
                                Py_ssize_t, int) = tc_transpose_f32_base;
static void (*tc_transpose_f64)(Py_ssize_t, Py_ssize_t, const double *, Py_ssize_t, double *,
                                Py_ssize_t, int) = tc_transpose_f64_base;
static tc_grouped_f32_t tc_grouped_f32 = NULL;   /* none in the baseline */
static tc_grouped_f64_t tc_grouped_f64 = NULL;
static tc_grouped_dot_f32_t tc_grouped_dot_f32 = NULL;
static tc_grouped_dot_f64_t tc_grouped_dot_f64 = NULL;
static int tc_variant = 0;

/* One element of the selected variant's tc_axpy: alpha * x + y, rounded as it rounds
 * (fused from AVX2 on), without a call through the pointer (which costs more than the
 * arithmetic when a stride larger than the input makes every axpy one element long). */
#ifdef TC_X86_DISPATCH
__attribute__((target("fma"))) static float tc_fused_f32(float a, float x, float y)
{
    return fmaf(a, x, y);
}
__attribute__((target("fma"))) static double tc_fused_f64(double a, double x, double y)
{
    return fma(a, x, y);
}
#endif
static inline float tc_madd_f32(float a, float x, float y)
{
#ifdef TC_X86_DISPATCH
    if (tc_variant > 0) return tc_fused_f32(a, x, y);
#endif
    return TC_BASE_MADD(float)(a, x, y);
}
static inline double tc_madd_f64(double a, double x, double y)
{
#ifdef TC_X86_DISPATCH
    if (tc_variant > 0) return tc_fused_f64(a, x, y);
#endif
    return TC_BASE_MADD(double)(a, x, y);
}

/* Lanes of tc_grouped_* for elements of `itemsize` bytes in the selected variant; 0 when
 * it has none (the baseline). */
static inline Py_ssize_t tc_grouped_lanes(size_t itemsize)
{
    return tc_variant == 2 ? 64 / itemsize : tc_variant == 1 ? 32 / itemsize : 0;
}

#define TC_SELECT(SUFFIX)                                                               \
    do {                                                                                \
        tc_gemm_f32 = tc_gemm_f32##SUFFIX; tc_gemm_f64 = tc_gemm_f64##SUFFIX;           \
        tc_brgemm_f32 = tc_gemm_f32##SUFFIX##_br;                                       \
        tc_brgemm_f64 = tc_gemm_f64##SUFFIX##_br;                                       \
        tc_gemm_rows_f32 = tc_gemm_f32##SUFFIX##_rows;                                  \
        tc_gemm_rows_f64 = tc_gemm_f64##SUFFIX##_rows;                                  \
        tc_axpy_f32 = tc_axpy_f32##SUFFIX; tc_axpy_f64 = tc_axpy_f64##SUFFIX;           \
        tc_cmadd_f32 = tc_cmadd_f32##SUFFIX; tc_cmadd_f64 = tc_cmadd_f64##SUFFIX;       \
        tc_cdot_f32 = tc_cdot_f32##SUFFIX; tc_cdot_f64 = tc_cdot_f64##SUFFIX;           \
        tc_round_bf16 = tc_round_bf16##SUFFIX;                                          \
        tc_transpose_f32 = tc_transpose_f32##SUFFIX;                                    \
        tc_transpose_f64 = tc_transpose_f64##SUFFIX;                                    \
    } while (0)

static int tc_variant_supported(int variant)
{
    if (variant == 0) return 1;
#ifdef TC_X86_DISPATCH
    __builtin_cpu_init();
    if (variant == 1)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (variant == 2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

/* Select a variant; returns 0 when this CPU or build does not have it. */
static int tc_select_variant(int variant)
{
    if (variant < 0 || variant > 2 || !tc_variant_supported(variant)) return 0;
    tc_variant = variant;
    TC_SELECT(_base);
#ifdef TC_X86_DISPATCH
    tc_grouped_f32 = NULL; tc_grouped_f64 = NULL;
    tc_grouped_dot_f32 = NULL; tc_grouped_dot_f64 = NULL;
    if (variant == 1) {
        TC_SELECT(_avx2);
        tc_grouped_f32 = tc_grouped_f32_avx2; tc_grouped_f64 = tc_grouped_f64_avx2;
        tc_grouped_dot_f32 = tc_grouped_dot_f32_avx2;
        tc_grouped_dot_f64 = tc_grouped_dot_f64_avx2;
    }
    if (variant == 2) {
        TC_SELECT(_avx512);
        tc_grouped_f32 = tc_grouped_f32_avx512; tc_grouped_f64 = tc_grouped_f64_avx512;
        tc_grouped_dot_f32 = tc_grouped_dot_f32_avx512;
        tc_grouped_dot_f64 = tc_grouped_dot_f64_avx512;
    }
#endif
    return 1;
}

static int tc_best_variant(void)
{
    for (int v = 2; v > 0; v--)
        if (tc_variant_supported(v)) return v;
    return 0;
}

#endif /* TCONV3D_GEMM_H */
