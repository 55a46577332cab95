// Structure factors of one crystal at a list of Miller indices: the featurize job's inner loop.
//
// Python binding: cloudvox._structure_factors (built by setup.py), used by cloudvox.descriptors.
//   at(m (P, 3) int32, frac (J, 3) float64, W (C, J) float64) -> F (C, P) complex128,
//     F[c, p] = sum_j W[c, j] exp(-2 pi i m_p . f_j)
// The phase of atom j factorises over the axes, exp(-2 pi i m_k f_jk): one table per axis over the range of
// m_k present (J sin/cos per integer), and the points come in runs of equal (m0, m1) (a ball enumerated row
// by row), so each point costs one complex product per atom and C dot products over atoms (for element
// channels, one weight per atom: atoms grouped by channel, one sum over each group).
// Single-threaded: the featurize job runs one MPI rank per core.
#include <torch/extension.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CLOUDVOX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLOUDVOX_CLONES
#endif

namespace {

CLOUDVOX_CLONES
void structure_factors(const int32_t* m, int64_t P, const double* frac, int64_t J, const double* W, int64_t C,
                       double* out /* (C, P) interleaved re, im */) {
  int32_t lo[3] = {INT32_MAX, INT32_MAX, INT32_MAX}, hi[3] = {INT32_MIN, INT32_MIN, INT32_MIN};
  for (int64_t p = 0; p < P; ++p)
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::min(lo[k], m[3 * p + k]);
      hi[k] = std::max(hi[k], m[3 * p + k]);
    }
  // tables [v - lo][j] of exp(-2 pi i v f_jk), per axis
  std::vector<double> tr[3], ti[3];
  for (int k = 0; k < 3; ++k) {
    const int64_t n = P ? int64_t(hi[k]) - lo[k] + 1 : 0;
    tr[k].resize(n * J);
    ti[k].resize(n * J);
    for (int64_t v = 0; v < n; ++v)
      for (int64_t j = 0; j < J; ++j) {
        const double angle = -2.0 * M_PI * double(lo[k] + v) * frac[3 * j + k];
        tr[k][v * J + j] = std::cos(angle);
        ti[k][v * J + j] = std::sin(angle);
      }
  }
  // One non-zero weight per atom (element channels): atoms grouped by channel, so that each channel's sum runs
  // over a contiguous range (vectorised); otherwise dense dot products over atoms.
  bool one_hot = true;
  std::vector<int64_t> channel_of(J, -1);
  for (int64_t j = 0; j < J && one_hot; ++j)
    for (int64_t c = 0; c < C; ++c)
      if (W[c * J + j] != 0.0) {
        if (channel_of[j] >= 0) one_hot = false;
        channel_of[j] = c;
      }
  std::vector<int64_t> order(J), bounds(C + 1, 0);
  std::vector<double> weight(J, 0.0);
  if (one_hot) {
    for (int64_t j = 0; j < J; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return channel_of[a] < channel_of[b]; });
    for (int64_t j = 0; j < J; ++j) {
      if (channel_of[j] >= 0) bounds[channel_of[j] + 1]++;
    }
    for (int64_t c = 0; c < C; ++c) bounds[c + 1] += bounds[c];
    // permute the tables' atom axis and the weights into channel order (atoms with no weight go last, unused)
    for (int k = 0; k < 3; ++k) {
      const int64_t n = int64_t(tr[k].size()) / std::max<int64_t>(J, 1);
      std::vector<double> r(tr[k].size()), i(ti[k].size());
      for (int64_t v = 0; v < n; ++v)
        for (int64_t j = 0; j < J; ++j) {
          r[v * J + j] = tr[k][v * J + order[j]];
          i[v * J + j] = ti[k][v * J + order[j]];
        }
      tr[k].swap(r);
      ti[k].swap(i);
    }
    for (int64_t j = 0; j < J; ++j) weight[j] = channel_of[order[j]] >= 0 ? W[channel_of[order[j]] * J + order[j]] : 0.0;
  }
  std::vector<double> ar(J), ai(J), pr(J), pi(J), sr(C), si(C);
  int32_t prev0 = INT32_MIN, prev1 = INT32_MIN;
  for (int64_t p = 0; p < P; ++p) {
    const int32_t m0 = m[3 * p], m1 = m[3 * p + 1], m2 = m[3 * p + 2];
    if (m0 != prev0 || m1 != prev1) {  // a new row: the (m0, m1) part of every atom's phase
      const double* r0 = &tr[0][(m0 - lo[0]) * J];
      const double* i0 = &ti[0][(m0 - lo[0]) * J];
      const double* r1 = &tr[1][(m1 - lo[1]) * J];
      const double* i1 = &ti[1][(m1 - lo[1]) * J];
      for (int64_t j = 0; j < J; ++j) {
        ar[j] = r0[j] * r1[j] - i0[j] * i1[j];
        ai[j] = r0[j] * i1[j] + i0[j] * r1[j];
      }
      prev0 = m0;
      prev1 = m1;
    }
    const double* r2 = &tr[2][(m2 - lo[2]) * J];
    const double* i2 = &ti[2][(m2 - lo[2]) * J];
    for (int64_t j = 0; j < J; ++j) {
      pr[j] = ar[j] * r2[j] - ai[j] * i2[j];
      pi[j] = ar[j] * i2[j] + ai[j] * r2[j];
    }
    if (one_hot) {
      for (int64_t c = 0; c < C; ++c) {
        double a = 0.0, b = 0.0;
        for (int64_t j = bounds[c]; j < bounds[c + 1]; ++j) {
          a += weight[j] * pr[j];
          b += weight[j] * pi[j];
        }
        sr[c] = a;
        si[c] = b;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const double* w = W + c * J;
        double a = 0.0, b = 0.0;
        for (int64_t j = 0; j < J; ++j) {
          a += w[j] * pr[j];
          b += w[j] * pi[j];
        }
        sr[c] = a;
        si[c] = b;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      out[2 * (c * P + p)] = sr[c];
      out[2 * (c * P + p) + 1] = si[c];
    }
  }
}

torch::Tensor factors_at(torch::Tensor m, torch::Tensor frac, torch::Tensor W) {
  TORCH_CHECK(m.dim() == 2 && m.size(1) == 3 && m.scalar_type() == torch::kInt32, "m must be (P, 3) int32");
  TORCH_CHECK(frac.dim() == 2 && frac.size(1) == 3 && frac.scalar_type() == torch::kFloat64,
              "frac must be (J, 3) float64");
  TORCH_CHECK(W.dim() == 2 && W.size(1) == frac.size(0) && W.scalar_type() == torch::kFloat64,
              "W must be (C, J) float64");
  TORCH_CHECK(!m.is_cuda() && !frac.is_cuda() && !W.is_cuda(), "CPU tensors only");
  m = m.contiguous();
  frac = frac.contiguous();
  W = W.contiguous();
  const int64_t P = m.size(0), J = frac.size(0), C = W.size(0);
  auto out = torch::empty({C, P}, torch::TensorOptions().dtype(torch::kComplexDouble));
  structure_factors(m.data_ptr<int32_t>(), P, frac.data_ptr<double>(), J, W.data_ptr<double>(), C,
                    reinterpret_cast<double*>(out.data_ptr()));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("at", &factors_at, "F[c, p] = sum_j W[c, j] exp(-2 pi i m_p . f_j): m (P, 3) int32, frac (J, 3), W (C, J)");
}
