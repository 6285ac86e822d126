# The tap arithmetic of tconv3d/_kernels.pyx, included there (textually: it uses the
# Problem struct, the constants and the GEMM wrappers defined before the include).
# One file for the shape of the work (which taps join which inputs and outputs, and
# the GEMMs of a row), the other for the loops that run it.

# ------------------------------------------------------------- taps, by arithmetic
#
# Nothing scans all the taps of an axis: the taps that join an output to inputs, or an
# input to outputs, are enumerated arithmetically, so the work is proportional to the
# multiply-adds performed plus the size of the arrays, for any stride, dilation and
# kernel length. Each output or input still takes the taps of an axis in a fixed order
# (increasing j, as a scan would; the forward's depth and height taps decreasing j).
#
# - From input i the taps form one range: o = i*s + j*d - crop in [0, n_out).
# - Into output o come the taps of o's stride phase, (j*d) % s == (o + crop) % s. With
#   g = gcd(s, d) these are j0, j0 + step, j0 + 2*step, ... (step = s/g), whose inputs
#   go down by shift = d/g from one to the next, for the smallest such tap j0. Outputs
#   o and o + s share the phase, so j0 is found once per call for each o < min(s, n_out)
#   (a Phase), in O(min(k, step) + min(s, n_out)) by _fill_phases.

cdef inline Py_ssize_t _floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """floor(a / b) for b > 0 and a of either sign, dividing non-negative numbers only
    (`cdivision` truncates toward zero). b == 1 (no dilation, unit stride) skips it."""
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
    Phase *of[3]          # of[a][o % s]: the phase of output o on axis a


ctypedef struct TapRange:
    # The taps into one output: j = first + u*step from input i = top - u*shift, for
    # ulo <= u <= uhi (none when uhi < ulo).
    Py_ssize_t first, step, top, shift, ulo, uhi


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
        ph.of[a] = table
        table += count
        for o0 in range(count):
            f = &ph.of[a][o0]
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


cdef inline TapRange _taps_into(const Problem *p, const Phases *ph, int a,
                                Py_ssize_t o) noexcept nogil:
    """The taps of axis `a` feeding output `o`: i*s + j*d == o + crop, 0 <= i < n_in."""
    cdef Py_ssize_t phase = 0, later = o   # o = phase + later*s (no division if s == 1)
    if p.s[a] != 1:
        phase = o % p.s[a]
        later = o // p.s[a]
    cdef const Phase *f = &ph.of[a][phase]
    cdef TapRange t
    t.first = f.first_tap
    t.step = ph.step[a]
    t.top = f.q + later - f.m   # the input of the phase's first tap
    t.shift = ph.shift[a]
    t.ulo = 0
    t.uhi = -1
    if f.taps == 0 or t.top < 0:
        return t
    # Tap u reads input top - u*shift, which must lie in [0, n_in).
    t.uhi = _floor_div(t.top, t.shift)
    if t.uhi > f.taps - 1:
        t.uhi = f.taps - 1
    t.ulo = _ceil_div(t.top - p.n_in[a] + 1, t.shift)
    if t.ulo < 0:
        t.ulo = 0
    return t


cdef inline Py_ssize_t _output_taps(const Problem *p, const Phases *ph, int a, Py_ssize_t o,
                                    Py_ssize_t *tap_j, Py_ssize_t *tap_i) noexcept nogil:
    """Taps (j, i) of axis `a` feeding output `o`, into the lists in decreasing j, i.e.
    increasing input i (the forward then reads its input rows at increasing addresses:
    stride-1 layers run 12-17 % faster than in increasing j); their number."""
    cdef TapRange t = _taps_into(p, ph, a, o)
    cdef Py_ssize_t u
    for u in range(t.ulo, t.uhi + 1):
        tap_j[t.uhi - u] = t.first + u * t.step
        tap_i[t.uhi - u] = t.top - u * t.shift
    return t.uhi - t.ulo + 1 if t.uhi >= t.ulo else 0


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


# ---------------------------------------------------------------------- the width axis
#
# A row is cut along the width into runs of consecutive voxels (outputs in the forward,
# inputs in the gradients), short enough for a run's accumulator to stay in L1. What a
# run takes from the other side is the same in every row: a list of GEMMs, one per
# width tap j and range of inputs lo <= i < hi, whose outputs i*s + j*d - crop are s
# apart. The lists are built once per call (Runs); a row then only runs its GEMMs, in
# increasing j.
#
# A run at least a stride long on the output side (the forward's runs, or the whole
# output axis in the gradients) is reached by every tap between its first and last one,
# with one range of inputs each. Shorter, a tap reaches at most one input; the lists
# then hold each voxel's own taps (one GEMM row each), so that no tap is scanned in vain.

ctypedef struct Runs:
    # The GEMMs of each run, filled only by _make_runs(); entry e is tap j[e] taking
    # inputs lo[e] <= i < hi[e] to outputs o[e] + (i - lo[e])*s.
    Py_ssize_t length     # voxels per run (the last one may be shorter)
    Py_ssize_t count      # runs
    Py_ssize_t *first     # run r's entries are first[r] <= e < first[r + 1]
    Py_ssize_t *j
    Py_ssize_t *lo
    Py_ssize_t *hi
    Py_ssize_t *o


cdef inline Py_ssize_t _entry(Runs *runs, Py_ssize_t e, Py_ssize_t j, Py_ssize_t lo,
                              Py_ssize_t hi, Py_ssize_t o) noexcept nogil:
    """Write entry e (unless only counting: runs.j NULL); the next entry's number."""
    if runs.j != NULL:
        runs.j[e] = j
        runs.lo[e] = lo
        runs.hi[e] = hi
        runs.o[e] = o
    return e + 1


cdef Py_ssize_t _output_run(const Problem *p, const Phases *ph, Py_ssize_t oa,
                            Py_ssize_t ob, Runs *runs, Py_ssize_t e) noexcept nogil:
    """The forward's entries for outputs [oa, ob) of a row, from entry e; the next e."""
    cdef Py_ssize_t s = p.s[2], d = p.d[2], crop = p.crop[2], n_in = p.n_in[2]
    cdef Py_ssize_t j, jlo, jhi, lo, hi, o, u
    cdef TapRange t
    if ob - oa >= s:
        jlo = _ceil_div(oa + crop - (n_in - 1) * s, d)
        jhi = _floor_div(ob - 1 + crop, d)
        for j in range(0 if jlo < 0 else jlo, jhi + 1 if jhi < p.k[2] else p.k[2]):
            lo = _ceil_div(oa + crop - j * d, s)
            hi = _floor_div(ob - 1 + crop - j * d, s) + 1
            lo = 0 if lo < 0 else lo
            hi = n_in if hi > n_in else hi
            e = _entry(runs, e, j, lo, hi, lo * s + j * d - crop)
    else:
        for o in range(oa, ob):
            t = _taps_into(p, ph, 2, o)
            for u in range(t.ulo, t.uhi + 1):
                e = _entry(runs, e, t.first + u * t.step, t.top - u * t.shift,
                           t.top - u * t.shift + 1, o)
    return e


cdef Py_ssize_t _input_run(const Problem *p, Py_ssize_t ia, Py_ssize_t ib, Runs *runs,
                           Py_ssize_t e) noexcept nogil:
    """The gradients' entries for inputs [ia, ib) of a row, from entry e; the next e."""
    cdef Py_ssize_t s = p.s[2], d = p.d[2], crop = p.crop[2], n_out = p.n_out[2]
    cdef Py_ssize_t j, jlo, jhi, lo, hi, i
    if n_out >= s:
        jlo = _ceil_div(crop - (ib - 1) * s, d)
        jhi = _floor_div(n_out - 1 + crop - ia * s, d)
        for j in range(0 if jlo < 0 else jlo, jhi + 1 if jhi < p.k[2] else p.k[2]):
            lo = _ceil_div(crop - j * d, s)
            hi = _floor_div(n_out - 1 + crop - j * d, s) + 1
            lo = ia if lo < ia else lo
            hi = ib if hi > ib else hi
            e = _entry(runs, e, j, lo, hi, lo * s + j * d - crop)
    else:
        for i in range(ia, ib):
            jlo = _ceil_div(crop - i * s, d)
            jhi = _floor_div(n_out - 1 + crop - i * s, d)
            for j in range(0 if jlo < 0 else jlo, jhi + 1 if jhi < p.k[2] else p.k[2]):
                e = _entry(runs, e, j, i, i + 1, i * s + j * d - crop)
    return e


cdef Py_ssize_t _fill_runs(const Problem *p, const Phases *ph, Runs *runs) noexcept nogil:
    """runs.first and, unless runs.j is NULL, the entries; the number of entries. The
    forward's runs (ph not NULL) are of outputs, the gradients' of inputs."""
    cdef Py_ssize_t r, start, end, e = 0
    cdef Py_ssize_t n = p.n_out[2] if ph != NULL else p.n_in[2]
    for r in range(runs.count):
        runs.first[r] = e
        start = r * runs.length
        end = start + runs.length if n - start > runs.length else n
        if ph != NULL:
            e = _output_run(p, ph, start, end, runs, e)
        else:
            e = _input_run(p, start, end, runs, e)
    runs.first[runs.count] = e
    return e


cdef int _make_runs(const Problem *p, const Phases *ph, Py_ssize_t length,
                    Runs *runs) except -1:
    """Build the Runs of `length` voxels (see _fill_runs); _free_runs frees them."""
    cdef Py_ssize_t n = p.n_out[2] if ph != NULL else p.n_in[2], entries
    memset(runs, 0, sizeof(Runs))
    runs.length = length
    runs.count = (n + length - 1) // length
    runs.first = <Py_ssize_t *> malloc((runs.count + 1) * sizeof(Py_ssize_t))
    if runs.first == NULL:
        raise MemoryError("tconv3d: no memory for the width-tap lists")
    with nogil:
        entries = _fill_runs(p, ph, runs)  # counting: runs.j is NULL
    runs.j = <Py_ssize_t *> malloc((4 * entries + 1) * sizeof(Py_ssize_t))
    if runs.j == NULL:
        free(runs.first)
        runs.first = NULL
        raise MemoryError("tconv3d: no memory for the width-tap lists")
    runs.lo = runs.j + entries
    runs.hi = runs.lo + entries
    runs.o = runs.hi + entries
    with nogil:
        _fill_runs(p, ph, runs)
    return 0


cdef void _free_runs(Runs *runs) noexcept nogil:
    free(runs.j)
    free(runs.first)


cdef inline Py_ssize_t _block_size(Py_ssize_t channels) noexcept nogil:
    cdef Py_ssize_t b = ACC_ELEMENTS // channels
    return 1 if b < 1 else (MAX_BLOCK if b > MAX_BLOCK else b)


# ------------------------------------------------------------------ rows and their taps
#
# The forward walks the rows (batch, depth, height) of the output, the gradients those
# of the input; along a row's width they work in runs. What a row needs from the other
# side of the convolution is given by its depth and height taps, found once per row
# into lists that each thread allocates once.

ctypedef struct Row:
    Py_ssize_t n, d, h       # the row: batch index, depth, height
    Py_ssize_t n_taps[2]     # number of its taps on depth (0) and height (1)
    Py_ssize_t *j[2]         # those taps' kernel indices
    Py_ssize_t *index[2]     # and the depth or height they join the row with on the
                             # other side: inputs of an output row, outputs of an input row


cdef inline void *_thread_malloc(size_t size, int *failed) noexcept nogil:
    """malloc for a thread's workspace, flagging a failure in the shared `failed`."""
    cdef void *ptr = malloc(size)
    if ptr == NULL:
        failed[0] = 1
    return ptr


cdef inline Row _thread_row(const Problem *p, int *failed) noexcept nogil:
    """A thread's Row: its four tap lists in one allocation (j[0] NULL if none)."""
    cdef Row r
    cdef Py_ssize_t *lists = <Py_ssize_t *> _thread_malloc(
        2 * (p.k[0] + p.k[1]) * sizeof(Py_ssize_t), failed)
    memset(&r, 0, sizeof(Row))
    if lists != NULL:
        r.j[0] = lists
        r.index[0] = lists + p.k[0]
        r.j[1] = lists + 2 * p.k[0]
        r.index[1] = lists + 2 * p.k[0] + p.k[1]
    return r


cdef inline void _split_row(Row *r, Py_ssize_t row, const Py_ssize_t *lengths) noexcept nogil:
    """Position of row number `row` among (batch, lengths[0], lengths[1]) rows. (Two
    divisions, none by a length of 1: on long thin volumes they are most of a row.)"""
    cdef Py_ssize_t rest = row
    r.h = 0
    if lengths[1] != 1:
        r.h = rest % lengths[1]
        rest = rest // lengths[1]
    r.d = rest
    r.n = 0
    if rest >= lengths[0]:
        r.d = rest % lengths[0]
        r.n = rest // lengths[0]


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
    """Element offset of the first group's channel matrix (Cin x Cout or Cout x Cin) of
    kernel tap (r.j[0][td], r.j[1][th], jw) in a C-contiguous (kd, kh, kw, G, ., .)
    kernel (group g's matrix follows at g * Cin * Cout)."""
    return ((r.j[0][td] * p.k[1] + r.j[1][th]) * p.k[2] + jw) * p.groups * p.cin * p.cout

