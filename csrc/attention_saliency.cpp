// CPU kernel of trim_fast.ops.attention_saliency (SPEC section 1): head-summed row entropy,
// column mass and n_i-weighted column mass of softmax(scale * q k^T + mask), plus each row's
// log-sum-exp, without ever forming the n x n attention.
//
// Design (two passes over 64 x 64 score tiles, rows owned by one task):
//   pass 1 (skipped when the caller passes lse): online max / sum-exp per row -> lse_i.
//   pass 2: log p_ij = (s_ij - m_i) - log_sum_i, p_ij = exp(log p_ij) per visible (i, j);
//           H_i -= p_ij * log p_ij            (every term >= 0, no cancellation)
//           col_mass[j] += p_ij, col_weighted[j] += n_i * p_ij.
// Entropy lives in pass 2 because it needs lse: with lse given the whole op is one pass over
// the tiles (half the work), without it the online pass only tracks max and sum-exp.
// Tasks are (sequence, head, 64-query block), so per-head row outputs (lse, entropy; heads summed
// at the end in a fixed order) have one writer; column sums go to
// per-thread double buffers reduced in thread order (bit-reproducible for a fixed thread count).
// Sequences are processed in chunks so those buffers stay O(chunk tokens) per thread.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

// The v8f helpers below are always inlined, so the AVX-vs-SSE argument ABI never matters.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;
constexpr int64_t kChunkTokens = 1 << 16;    // column buffers: 2 doubles x this, per thread

// The hot task bodies are always-inline and instantiated twice: plain (baseline ISA) and with
// AVX2+FMA, picked at run time by CPU features. setup.py does not pass -march=native, so this is
// how wide vectors get used. (target_clones("arch=haswell") would dispatch on the CPU model.)
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define TF_X86_DISPATCH 1
#endif
#define TF_INLINE inline __attribute__((always_inline))

// GCC/Clang vector extensions, not intrinsics: 8 floats, lowered to one AVX register in the
// haswell clone and to two SSE registers (or NEON) elsewhere.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kVec = 8;

TF_INLINE v8f load8(const float* p) {
    v8f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
TF_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
TF_INLINE v8f splat(float x) { return v8f{} + x; }  // scalar operand: one broadcast
TF_INLINE float hsum(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
TF_INLINE float hmax(v8f v) {
    float m = v[0];
    for (int t = 1; t < kVec; ++t) m = v[t] > m ? v[t] : m;
    return m;
}

struct Problem {
    const float* q = nullptr;
    const float* k = nullptr;
    int64_t heads = 0, kv_heads = 0, dim = 0;
    int64_t q_head_stride = 0, q_tok_stride = 0, k_head_stride = 0, k_tok_stride = 0;
    int64_t lse_head_stride = 0;
    // Per sequence: element offset of token 0 in q / k, length, offset in the [tokens] outputs
    // and in lse, and the span the sequence owns in the token outputs (padded: N).
    std::vector<int64_t> q_base, k_base, len, out_base, out_span, lse_base;
    bool causal = true;
    int64_t window = 0;  // 0: no sliding window
    float scale = 1.f;
};

struct Outputs {
    float* entropy;
    float* col_mass;
    float* col_weighted;
    float* lse;
    // Row shift m_i and log_sum_i = log sum_j exp(s_ij - m_i) (lse = m + log_sum), kept apart so
    // that pass 2 forms s - lse as (s - m) - log_sum: s - m is exact near the maximum, while an
    // fp32 lse rounds at ulp(|lse|), which dominates the entropy of sharp rows with big logits.
    // With a caller's lse: m = lse, log_sum = 0.
    float* row_shift;
    float* row_log_sum;
};

// Keys of row i (0-based in a sequence of length L) form one interval [lo, hi).
TF_INLINE void visible_keys(const Problem& p, int64_t i, int64_t L, int64_t& lo, int64_t& hi) {
    lo = p.window > 0 ? std::max<int64_t>(0, i - p.window + 1) : 0;
    if (p.causal) hi = i + 1;
    else hi = p.window > 0 ? std::min<int64_t>(L, i + p.window) : L;
}

// exp for x <= ~88 (Cephes expf: Cody-Waite reduction, degree-6 polynomial, 2^n via bits),
// branch-free on 8 lanes; ~1 ulp. Below -87.3 it returns ~1e-38 instead of 0: every sum it
// enters is dominated by the row maximum's exp(0) = 1.
TF_INLINE v8f fast_exp8(v8f x) {
    x = x < splat(-87.3f) ? splat(-87.3f) : x;
    x = x > splat(88.3f) ? splat(88.3f) : x;
    const v8f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to int
    v8f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f poly = splat(1.9875691500e-4f);
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    const v8f y = poly * r * r + r + 1.0f;
    const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
    v8f two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return y * two_n;
}

// Lanes c0 .. c0 + 7 inside [a, e)?
TF_INLINE v8i in_range(int c0, int a, int e) {
    const v8i c = v8i{0, 1, 2, 3, 4, 5, 6, 7} + c0;
    return (c >= a) & (c < e);
}

struct Scratch {
    std::vector<float> qblock;   // [kBlockQ, D], pre-scaled, zero rows past the block
    std::vector<float> kt;       // [D, kBlockK], transposed key tile, zero columns past the tile
    std::vector<float> scores;   // [kBlockQ, kBlockK]
    explicit Scratch(int64_t dim)
        : qblock(kBlockQ * dim), kt(dim * kBlockK), scores(kBlockQ * kBlockK) {}
};

TF_INLINE void load_q_block(const Problem& p, int64_t b, int64_t h, int64_t i0, int nq,
                            float* qblock) {
    const int64_t D = p.dim;
    const float* src = p.q + p.q_base[b] + h * p.q_head_stride + i0 * p.q_tok_stride;
    for (int r = 0; r < kBlockQ; ++r) {
        float* dst = qblock + r * D;
        if (r < nq) {
            const float* row = src + r * p.q_tok_stride;
            for (int64_t d = 0; d < D; ++d) dst[d] = row[d] * p.scale;
        } else {
            std::fill(dst, dst + D, 0.f);
        }
    }
}

TF_INLINE void load_k_tile(const Problem& p, int64_t b, int64_t g, int64_t j0, int nk, float* kt) {
    const int64_t D = p.dim;
    const float* src = p.k + p.k_base[b] + g * p.k_head_stride + j0 * p.k_tok_stride;
    for (int c = 0; c < kBlockK; ++c) {
        if (c < nk) {
            const float* row = src + c * p.k_tok_stride;
            for (int64_t d = 0; d < D; ++d) kt[d * kBlockK + c] = row[d];
        } else {
            for (int64_t d = 0; d < D; ++d) kt[d * kBlockK + c] = 0.f;
        }
    }
}

// scores[r, c] = sum_d qblock[r, d] * kt[d, c]: 4 x 16 register tiles (8 accumulators).
TF_INLINE void tile_scores(const float* qblock, const float* kt, int64_t D, float* scores) {
    for (int r0 = 0; r0 < kBlockQ; r0 += 4) {
        const float* q0 = qblock + r0 * D;
        for (int c0 = 0; c0 < kBlockK; c0 += 2 * kVec) {
            v8f acc[4][2] = {};
            for (int64_t d = 0; d < D; ++d) {
                const v8f k_lo = load8(kt + d * kBlockK + c0);
                const v8f k_hi = load8(kt + d * kBlockK + c0 + kVec);
                for (int r = 0; r < 4; ++r) {
                    const v8f qv = splat(q0[r * D + d]);
                    acc[r][0] += qv * k_lo;
                    acc[r][1] += qv * k_hi;
                }
            }
            for (int r = 0; r < 4; ++r) {
                store8(scores + (r0 + r) * kBlockK + c0, acc[r][0]);
                store8(scores + (r0 + r) * kBlockK + c0 + kVec, acc[r][1]);
            }
        }
    }
}

// Key range any row of [i0, i0 + nq) sees: lo and hi are non-decreasing in i.
TF_INLINE void block_keys(const Problem& p, int64_t i0, int nq, int64_t L, int64_t& jlo,
                          int64_t& jhi) {
    int64_t lo, hi;
    visible_keys(p, i0, L, jlo, hi);
    visible_keys(p, i0 + nq - 1, L, lo, jhi);
}

// Pass 1 for one (sequence, head, query block): online max and sum-exp -> lse.
TF_INLINE void row_lse_body(const Problem& p, int64_t b, int64_t h, int64_t i0, Scratch& ws,
                            const Outputs& out) {
    const int64_t L = p.len[b];
    const int nq = static_cast<int>(std::min<int64_t>(kBlockQ, L - i0));
    const int64_t g = h / (p.heads / p.kv_heads);
    load_q_block(p, b, h, i0, nq, ws.qblock.data());
    double row_max[kBlockQ], row_sum[kBlockQ];
    for (int r = 0; r < kBlockQ; ++r) {
        row_max[r] = -std::numeric_limits<double>::infinity();
        row_sum[r] = 0.0;
    }
    int64_t jlo, jhi;
    block_keys(p, i0, nq, L, jlo, jhi);
    for (int64_t j0 = jlo; j0 < jhi; j0 += kBlockK) {
        const int nk = static_cast<int>(std::min<int64_t>(kBlockK, jhi - j0));
        load_k_tile(p, b, g, j0, nk, ws.kt.data());
        tile_scores(ws.qblock.data(), ws.kt.data(), p.dim, ws.scores.data());
        for (int r = 0; r < nq; ++r) {
            int64_t lo, hi;
            visible_keys(p, i0 + r, L, lo, hi);
            const int a = static_cast<int>(std::max<int64_t>(lo, j0) - j0);
            const int e = static_cast<int>(std::min<int64_t>(hi, j0 + nk) - j0);
            if (a >= e) continue;
            const float* s = ws.scores.data() + r * kBlockK;
            const v8f neg_inf = splat(-std::numeric_limits<float>::infinity());
            v8f vmax = neg_inf;
            for (int c0 = 0; c0 < kBlockK; c0 += kVec) {
                const v8f v = in_range(c0, a, e) ? load8(s + c0) : neg_inf;
                vmax = v > vmax ? v : vmax;
            }
            const float tile_max = hmax(vmax);
            if (tile_max > row_max[r]) {
                row_sum[r] *= std::exp(row_max[r] - static_cast<double>(tile_max));
                row_max[r] = tile_max;
            }
            const v8f m = splat(static_cast<float>(row_max[r]));
            v8f vsum = splat(0.f);
            for (int c0 = 0; c0 < kBlockK; c0 += kVec) {
                const v8f pv = fast_exp8(load8(s + c0) - m);
                vsum += in_range(c0, a, e) ? pv : splat(0.f);
            }
            row_sum[r] += hsum(vsum);
        }
    }
    for (int r = 0; r < nq; ++r) {
        const int64_t at = p.lse_base[b] + h * p.lse_head_stride + i0 + r;
        const double log_sum = std::log(row_sum[r]);
        out.lse[at] = static_cast<float>(row_max[r] + log_sum);
        out.row_shift[at] = static_cast<float>(row_max[r]);  // a score: exact in float
        out.row_log_sum[at] = static_cast<float>(log_sum);
    }
}

// Pass 2 for one (sequence, head, query block): per-head entropy of its rows (out.entropy has
// lse's layout), column sums into the thread's buffers (token output position - buf_origin).
TF_INLINE void column_body(const Problem& p, int64_t b, int64_t h, int64_t i0, Scratch& ws,
                           const Outputs& out, double* col_mass_buf, double* col_weighted_buf,
                           int64_t buf_origin) {
    const int64_t L = p.len[b];
    const int nq = static_cast<int>(std::min<int64_t>(kBlockQ, L - i0));
    const int64_t g = h / (p.heads / p.kv_heads);
    load_q_block(p, b, h, i0, nq, ws.qblock.data());
    float shift[kBlockQ], log_sum[kBlockQ], n_vis[kBlockQ];
    double entropy[kBlockQ];
    for (int r = 0; r < nq; ++r) {
        const int64_t at = p.lse_base[b] + h * p.lse_head_stride + i0 + r;
        shift[r] = out.row_shift[at];
        log_sum[r] = out.row_log_sum[at];
        int64_t lo, hi;
        visible_keys(p, i0 + r, L, lo, hi);
        n_vis[r] = static_cast<float>(hi - lo);
        entropy[r] = 0.0;
    }
    int64_t jlo, jhi;
    block_keys(p, i0, nq, L, jlo, jhi);
    double* mass_out = col_mass_buf + (p.out_base[b] - buf_origin);
    double* weighted_out = col_weighted_buf + (p.out_base[b] - buf_origin);
    for (int64_t j0 = jlo; j0 < jhi; j0 += kBlockK) {
        const int nk = static_cast<int>(std::min<int64_t>(kBlockK, jhi - j0));
        load_k_tile(p, b, g, j0, nk, ws.kt.data());
        tile_scores(ws.qblock.data(), ws.kt.data(), p.dim, ws.scores.data());
        v8f col_mass[kBlockK / kVec] = {}, col_weighted[kBlockK / kVec] = {};
        for (int r = 0; r < nq; ++r) {
            int64_t lo, hi;
            visible_keys(p, i0 + r, L, lo, hi);
            const int a = static_cast<int>(std::max<int64_t>(lo, j0) - j0);
            const int e = static_cast<int>(std::min<int64_t>(hi, j0 + nk) - j0);
            if (a >= e) continue;
            const float* s = ws.scores.data() + r * kBlockK;
            const v8f m = splat(shift[r]), ls = splat(log_sum[r]), n_i = splat(n_vis[r]);
            v8f plogp = splat(0.f);
            for (int c0 = 0; c0 < kBlockK; c0 += kVec) {
                const v8f sv = load8(s + c0);
                const v8f log_p = (sv - m) - ls;
                const v8f pv = in_range(c0, a, e) ? fast_exp8(log_p) : splat(0.f);
                plogp -= pv * log_p;
                col_mass[c0 / kVec] += pv;
                col_weighted[c0 / kVec] += n_i * pv;
            }
            entropy[r] += hsum(plogp);
        }
        for (int c = 0; c < nk; ++c) {
            mass_out[j0 + c] += col_mass[c / kVec][c % kVec];
            weighted_out[j0 + c] += col_weighted[c / kVec][c % kVec];
        }
    }
    for (int r = 0; r < nq; ++r) {
        // -p log p summed with rounding can dip a hair below 0 for a one-key row.
        out.entropy[p.lse_base[b] + h * p.lse_head_stride + i0 + r] =
            static_cast<float>(std::max(entropy[r], 0.0));
    }
}

using RowTaskFn = void (*)(const Problem&, int64_t, int64_t, int64_t, Scratch&, const Outputs&);
using ColumnTaskFn = void (*)(const Problem&, int64_t, int64_t, int64_t, Scratch&, const Outputs&,
                              double*, double*, int64_t);

void row_lse_plain(const Problem& p, int64_t b, int64_t h, int64_t i0, Scratch& ws,
                   const Outputs& out) {
    row_lse_body(p, b, h, i0, ws, out);
}
void column_plain(const Problem& p, int64_t b, int64_t h, int64_t i0, Scratch& ws,
                  const Outputs& out, double* mass, double* weighted, int64_t origin) {
    column_body(p, b, h, i0, ws, out, mass, weighted, origin);
}
#ifdef TF_X86_DISPATCH
__attribute__((target("avx2,fma"))) void row_lse_avx2(const Problem& p, int64_t b, int64_t h,
                                                      int64_t i0, Scratch& ws, const Outputs& out) {
    row_lse_body(p, b, h, i0, ws, out);
}
__attribute__((target("avx2,fma"))) void column_avx2(const Problem& p, int64_t b, int64_t h,
                                                     int64_t i0, Scratch& ws, const Outputs& out,
                                                     double* mass, double* weighted,
                                                     int64_t origin) {
    column_body(p, b, h, i0, ws, out, mass, weighted, origin);
}
#endif

std::atomic<bool> g_allow_avx2{true};  // tests switch it off to cover the baseline path

bool use_avx2() {
#ifdef TF_X86_DISPATCH
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return ok && g_allow_avx2.load();
#else
    return false;
#endif
}

struct Task {
    int64_t b, h, i0;
};

// Runs both passes. out.entropy here is per head, laid out like lse; the caller sums heads.
void run(const Problem& p, const Outputs& out, bool have_lse, int num_threads) {
    const int64_t nseq = static_cast<int64_t>(p.len.size());
    const int threads = std::max(1, num_threads);
    RowTaskFn row_lse_task = row_lse_plain;
    ColumnTaskFn column_task = column_plain;
#ifdef TF_X86_DISPATCH
    if (use_avx2()) {
        row_lse_task = row_lse_avx2;
        column_task = column_avx2;
    }
#endif
    std::vector<double> col_buf;
    int64_t s0 = 0;
    while (s0 < nseq) {
        // A chunk of whole sequences, ~kChunkTokens output positions (at least one sequence).
        int64_t s1 = s0, span = 0;
        while (s1 < nseq && (s1 == s0 || span + p.out_span[s1] <= kChunkTokens)) {
            span += p.out_span[s1];
            ++s1;
        }
        const int64_t origin = p.out_base[s0];
        const int64_t width = p.out_base[s1 - 1] + p.out_span[s1 - 1] - origin;
        std::vector<Task> tasks;
        for (int64_t b = s0; b < s1; ++b)
            for (int64_t h = 0; h < p.heads; ++h)
                for (int64_t i0 = 0; i0 < p.len[b]; i0 += kBlockQ) tasks.push_back({b, h, i0});
        const int64_t ntasks = static_cast<int64_t>(tasks.size());
        col_buf.assign(static_cast<size_t>(threads) * 2 * width, 0.0);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
        {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            Scratch ws(p.dim);
            double* mass_buf = col_buf.data() + static_cast<size_t>(tid) * 2 * width;
            double* weighted_buf = mass_buf + width;
            if (!have_lse) {
#ifdef _OPENMP
#pragma omp for schedule(static, 1)
#endif
                for (int64_t t = 0; t < ntasks; ++t)
                    row_lse_task(p, tasks[t].b, tasks[t].h, tasks[t].i0, ws, out);
            }  // the implicit barrier: every lse is written before pass 2 reads it
#ifdef _OPENMP
#pragma omp for schedule(static, 1)
#endif
            for (int64_t t = 0; t < ntasks; ++t)
                column_task(p, tasks[t].b, tasks[t].h, tasks[t].i0, ws, out, mass_buf,
                            weighted_buf, origin);
        }
        // Fixed-order reduction of the per-thread column sums.
        for (int64_t x = 0; x < width; ++x) {
            double mass = 0.0, weighted = 0.0;
            for (int t = 0; t < threads; ++t) {
                mass += col_buf[static_cast<size_t>(t) * 2 * width + x];
                weighted += col_buf[static_cast<size_t>(t) * 2 * width + width + x];
            }
            out.col_mass[origin + x] = static_cast<float>(mass);
            out.col_weighted[origin + x] = static_cast<float>(weighted);
        }
        s0 = s1;
    }
}

}  // namespace

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument("attention_saliency (cpu): " + message);
}

std::string shape_of(const py::array& a) {
    std::string s = "[";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
    return s + "]";
}

// Shared tail of both layouts: lse in, run, heads summed out.
py::tuple compute(Problem& p, const py::object& lse_in, std::vector<py::ssize_t> lse_shape,
                  std::vector<py::ssize_t> token_shape, int num_threads) {
    FloatArray lse(lse_shape);
    FloatArray entropy(token_shape), col_mass(token_shape), col_weighted(token_shape);
    const bool have_lse = !lse_in.is_none();
    FloatArray given;
    if (have_lse) {
        given = lse_in.cast<FloatArray>();
        require(given.ndim() == static_cast<py::ssize_t>(lse_shape.size()) &&
                    std::equal(lse_shape.begin(), lse_shape.end(), given.shape()),
                "lse has shape " + shape_of(given) + ", expected " + shape_of(lse));
    }
    std::vector<float> entropy_heads(static_cast<size_t>(lse.size()), 0.f);
    std::vector<float> row_shift(static_cast<size_t>(lse.size()), 0.f);
    std::vector<float> row_log_sum(static_cast<size_t>(lse.size()), 0.f);
    float* lse_out = lse.mutable_data();
    float* entropy_out = entropy.mutable_data();
    float* mass_out = col_mass.mutable_data();
    float* weighted_out = col_weighted.mutable_data();
    const float* given_data = have_lse ? given.data() : nullptr;
    const int64_t nseq = static_cast<int64_t>(p.len.size());
    {
        py::gil_scoped_release release;
        std::fill(lse_out, lse_out + lse.size(), -std::numeric_limits<float>::infinity());
        std::fill(entropy_out, entropy_out + entropy.size(), 0.f);
        std::fill(mass_out, mass_out + col_mass.size(), 0.f);
        std::fill(weighted_out, weighted_out + col_weighted.size(), 0.f);
        if (have_lse) {
            for (int64_t b = 0; b < nseq; ++b)
                for (int64_t h = 0; h < p.heads; ++h) {
                    const int64_t at = p.lse_base[b] + h * p.lse_head_stride;
                    std::copy(given_data + at, given_data + at + p.len[b], lse_out + at);
                    std::copy(given_data + at, given_data + at + p.len[b], row_shift.data() + at);
                }
        }
        Outputs out{entropy_heads.data(), mass_out, weighted_out, lse_out, row_shift.data(),
                    row_log_sum.data()};
        run(p, out, have_lse, num_threads);
        for (int64_t b = 0; b < nseq; ++b)
            for (int64_t h = 0; h < p.heads; ++h) {
                const float* src = entropy_heads.data() + p.lse_base[b] + h * p.lse_head_stride;
                float* dst = entropy_out + p.out_base[b];
                for (int64_t i = 0; i < p.len[b]; ++i) dst[i] += src[i];
            }
    }
    return py::make_tuple(entropy, col_mass, col_weighted, lse);
}

void set_common(Problem& p, const FloatArray& q, const FloatArray& k, bool causal, double scale,
                int64_t window) {
    require(window >= 0, "window must be >= 0 (0: none), got " + std::to_string(window));
    p.q = q.data();
    p.k = k.data();
    p.causal = causal;
    p.scale = static_cast<float>(scale);
    p.window = window;
}

// q [B, H, N, D], k [B, H_kv, N, D], seq_lens [B] (right padding).
py::tuple saliency_padded(const FloatArray& q, const FloatArray& k, const IndexArray& seq_lens,
                          bool causal, double scale, int64_t window, const py::object& lse,
                          int num_threads) {
    require(q.ndim() == 4 && k.ndim() == 4,
            "q and k must be [B, H, N, D]; got q " + shape_of(q) + ", k " + shape_of(k));
    const int64_t B = q.shape(0), H = q.shape(1), N = q.shape(2), D = q.shape(3);
    const int64_t Hkv = k.shape(1);
    require(k.shape(0) == B && k.shape(2) == N && k.shape(3) == D,
            "k " + shape_of(k) + " does not match q " + shape_of(q) + " in batch, length or head dim");
    require(Hkv > 0 && H % Hkv == 0, "query heads (" + std::to_string(H) +
                                         ") must be a multiple of key/value heads (" +
                                         std::to_string(Hkv) + ")");
    require(seq_lens.ndim() == 1 && seq_lens.shape(0) == B,
            "seq_lens must be [" + std::to_string(B) + "], got " + shape_of(seq_lens));
    Problem p;
    set_common(p, q, k, causal, scale, window);
    p.heads = H;
    p.kv_heads = Hkv;
    p.dim = D;
    p.q_head_stride = N * D;
    p.q_tok_stride = D;
    p.k_head_stride = N * D;
    p.k_tok_stride = D;
    p.lse_head_stride = N;
    const int64_t* lens = seq_lens.data();
    for (int64_t b = 0; b < B; ++b) {
        require(lens[b] >= 0 && lens[b] <= N, "seq_lens[" + std::to_string(b) + "] = " +
                                                  std::to_string(lens[b]) + " is out of range [0, " +
                                                  std::to_string(N) + "]");
        p.q_base.push_back(b * H * N * D);
        p.k_base.push_back(b * Hkv * N * D);
        p.len.push_back(lens[b]);
        p.out_base.push_back(b * N);
        p.out_span.push_back(N);
        p.lse_base.push_back(b * H * N);
    }
    return compute(p, lse, {B, H, N}, {B, N}, num_threads);
}

// q [T, H, D], k [T, H_kv, D], cu_seqlens [B + 1] (packed sequences, flash-attention varlen).
py::tuple saliency_varlen(const FloatArray& q, const FloatArray& k, const IndexArray& cu_seqlens,
                          bool causal, double scale, int64_t window, const py::object& lse,
                          int num_threads) {
    require(q.ndim() == 3 && k.ndim() == 3,
            "q and k must be [total, H, D]; got q " + shape_of(q) + ", k " + shape_of(k));
    const int64_t T = q.shape(0), H = q.shape(1), D = q.shape(2);
    const int64_t Hkv = k.shape(1);
    require(k.shape(0) == T && k.shape(2) == D,
            "k " + shape_of(k) + " does not match q " + shape_of(q) + " in tokens or head dim");
    require(Hkv > 0 && H % Hkv == 0, "query heads (" + std::to_string(H) +
                                         ") must be a multiple of key/value heads (" +
                                         std::to_string(Hkv) + ")");
    require(cu_seqlens.ndim() == 1 && cu_seqlens.shape(0) >= 1,
            "cu_seqlens must be [B + 1], got " + shape_of(cu_seqlens));
    const int64_t* cu = cu_seqlens.data();
    const int64_t B = cu_seqlens.shape(0) - 1;
    require(cu[0] == 0 && cu[B] == T, "cu_seqlens must start at 0 and end at total tokens (" +
                                          std::to_string(T) + ")");
    Problem p;
    set_common(p, q, k, causal, scale, window);
    p.heads = H;
    p.kv_heads = Hkv;
    p.dim = D;
    p.q_head_stride = D;
    p.q_tok_stride = H * D;
    p.k_head_stride = D;
    p.k_tok_stride = Hkv * D;
    p.lse_head_stride = T;
    for (int64_t b = 0; b < B; ++b) {
        require(cu[b + 1] >= cu[b], "cu_seqlens must never decrease (at index " +
                                        std::to_string(b + 1) + ")");
        p.q_base.push_back(cu[b] * H * D);
        p.k_base.push_back(cu[b] * Hkv * D);
        p.len.push_back(cu[b + 1] - cu[b]);
        p.out_base.push_back(cu[b]);
        p.out_span.push_back(cu[b + 1] - cu[b]);
        p.lse_base.push_back(cu[b]);
    }
    return compute(p, lse, {H, T}, {T}, num_threads);
}

}  // namespace

void register_attention_saliency(py::module_& m) {
    m.def("attention_saliency_padded", &saliency_padded, py::arg("q"), py::arg("k"),
          py::arg("seq_lens"), py::arg("causal"), py::arg("scale"), py::arg("window"),
          py::arg("lse"), py::arg("num_threads"),
          "(row_entropy [B, N], col_mass [B, N], col_mass_weighted [B, N], lse [B, H, N]) of "
          "softmax(scale * q k^T + mask), heads summed; fp32 numpy in and out; window 0 = none.");
    m.def("attention_saliency_varlen", &saliency_varlen, py::arg("q"), py::arg("k"),
          py::arg("cu_seqlens"), py::arg("causal"), py::arg("scale"), py::arg("window"),
          py::arg("lse"), py::arg("num_threads"),
          "Packed twin: q [T, H, D], cu_seqlens [B + 1] -> ([T], [T], [T], lse [H, T]).");
    m.def(
        "_attention_saliency_allow_avx2",
        [](bool allow) {
            const bool was = g_allow_avx2.exchange(allow);
            return py::make_tuple(was, use_avx2());
        },
        py::arg("allow"),
        "Testing hook: allow (True) or forbid the AVX2 path; returns (previous setting, in use).");
}
