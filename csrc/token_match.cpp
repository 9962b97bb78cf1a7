// Fused token matching + pooling on the CPU (SPEC 3): for each example, one pass over its
// tokens that normalises each matched hidden state, takes its cosine with the fingerprint of
// its class (a gather), or the precomputed fallback score, and reduces to the weighted sum,
// weight sum, max and counts. OpenMP over examples; fp32 dot products, fp64 per-example sums.
//
// Token state in `rows`: >= 0 matched (bank row), -1 fallback score, <= -2 not scored.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using LongArray = py::array_t<int64_t, py::array::c_style>;

py::tuple token_match_pool(FloatArray hidden, LongArray rows, FloatArray fallback,
                           FloatArray weights, FloatArray vectors) {
    if (hidden.ndim() != 3) throw std::invalid_argument("token_match_pool: hidden must be [B, N, d]");
    if (rows.ndim() != 2 || fallback.ndim() != 2 || weights.ndim() != 2)
        throw std::invalid_argument("token_match_pool: rows, fallback and weights must be [B, N]");
    if (vectors.ndim() != 2) throw std::invalid_argument("token_match_pool: vectors must be [C, d]");
    const int64_t B = hidden.shape(0), N = hidden.shape(1), D = hidden.shape(2);
    const int64_t C = vectors.shape(0);
    for (auto* a : {static_cast<py::array*>(&rows), static_cast<py::array*>(&fallback),
                    static_cast<py::array*>(&weights)}) {
        if (a->shape(0) != B || a->shape(1) != N)
            throw std::invalid_argument("token_match_pool: rows/fallback/weights must match hidden's [B, N]");
    }
    if (vectors.shape(1) != D)
        throw std::invalid_argument("token_match_pool: vectors and hidden differ in d");

    py::array_t<double> sum_ws(B), sum_w(B);
    py::array_t<float> max_s(B);
    py::array_t<int64_t> n_scored(B), n_matched(B);

    const float* h = hidden.data();
    const int64_t* r = rows.data();
    const float* fb = fallback.data();
    const float* w = weights.data();
    const float* f = vectors.data();
    double* o_sws = sum_ws.mutable_data();
    double* o_sw = sum_w.mutable_data();
    float* o_max = max_s.mutable_data();
    int64_t* o_ns = n_scored.mutable_data();
    int64_t* o_nm = n_matched.mutable_data();
    int64_t n_bad = 0, n_out_of_range = 0;

    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : n_bad, n_out_of_range)
        for (int64_t b = 0; b < B; ++b) {
            double sws = 0.0, sw = 0.0;
            float mx = -std::numeric_limits<float>::infinity();
            int64_t ns = 0, nm = 0;
            for (int64_t j = 0; j < N; ++j) {
                const int64_t t = b * N + j;
                const int64_t row = r[t];
                if (row <= -2) continue;
                float s;
                if (row >= 0) {
                    if (row >= C) { ++n_out_of_range; continue; }
                    const float* hv = h + t * D;
                    const float* fv = f + row * D;
                    float dot = 0.f, ss = 0.f;
#pragma omp simd reduction(+ : dot, ss)
                    for (int64_t k = 0; k < D; ++k) {
                        dot += hv[k] * fv[k];
                        ss += hv[k] * hv[k];
                    }
                    if (!(ss > 0.f) || !std::isfinite(ss) || !std::isfinite(dot)) { ++n_bad; continue; }
                    s = dot / std::sqrt(ss);
                    ++nm;
                } else {
                    s = fb[t];
                }
                ++ns;
                sws += static_cast<double>(w[t]) * static_cast<double>(s);
                sw += static_cast<double>(w[t]);
                if (s > mx) mx = s;
            }
            o_sws[b] = sws;
            o_sw[b] = sw;
            o_max[b] = mx;
            o_ns[b] = ns;
            o_nm[b] = nm;
        }
    }
    if (n_out_of_range > 0)
        throw std::invalid_argument("token_match_pool: " + std::to_string(n_out_of_range) +
                                    " token row(s) point past the bank's " + std::to_string(C) + " classes");
    return py::make_tuple(sum_ws, sum_w, max_s, n_scored, n_matched, n_bad);
}

}  // namespace

void register_token_match(py::module_& m) {
    m.def("token_match_pool", &token_match_pool, py::arg("hidden"), py::arg("rows"),
          py::arg("fallback"), py::arg("weights"), py::arg("vectors"),
          "Fused cosine-to-fingerprint + per-example pooling; returns (sum_ws, sum_w, max, "
          "n_scored, n_matched, n_bad) where n_bad counts NaN/Inf/zero hidden rows.");
}
