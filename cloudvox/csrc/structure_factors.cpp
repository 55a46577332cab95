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
//
//   at_batch(m, counts (S,), frac, atoms (S,), W (flat blocks), channels (S,), out_rows, C_out) -> F (C_out, P):
//     at() of many crystals in one call, each crystal's channel rows placed at out_rows in a common layout.
//   half_ball(recip (3, 3), e0, e1, e2, r2) -> m (P, 3) int32: cloudvox.lattice.half_ball's enumeration with
//     the same floating-point operations in the same order (built with -ffp-contract=off: no fused
//     multiply-adds), so that both select the same points: the feature file stores values in this order.
//   half_balls(recips (S, 3, 3), extents (S, 3), r2, cube) -> (m (P, 3) int32, counts (S,) int64): the half balls
//     of many lattices in one call, optionally only their points inside the cube |G_k| <= cube (a prefilter).
//   stored_values(recip, e0, e1, e2, r2, frac (J, 3), W (C, J), sigma, volume, cross) -> (values (C', P) float16,
//     scale): the featurize job's whole per-crystal descriptor: the half ball enumerated row by row, the
//     structure factors of each row's points at once (vectorised over the row), |F_c| (and with cross the
//     cross-spectra with the total) times the Gaussian envelope / volume, divided by the largest |value| and
//     rounded to float16 (round to nearest even, subnormals included, as numpy's astype(float16)).
#include <torch/extension.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
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


// factors_at of S crystals in one call: crystal s has counts[s] points of m, atoms[s] atoms of frac and a (C_s, J_s)
// block of W (flat, one block after the other), whose rows go to rows out_rows[...] of the (C_out, P) output
// (zeros elsewhere); each crystal's values are those factors_at gives it alone
torch::Tensor factors_at_batch(torch::Tensor m, torch::Tensor counts, torch::Tensor frac, torch::Tensor atoms,
                               torch::Tensor W, torch::Tensor channels, torch::Tensor out_rows, int64_t C_out) {
  TORCH_CHECK(m.dim() == 2 && m.size(1) == 3 && m.scalar_type() == torch::kInt32, "m must be (P, 3) int32");
  TORCH_CHECK(frac.dim() == 2 && frac.size(1) == 3 && frac.scalar_type() == torch::kFloat64,
              "frac must be (J, 3) float64");
  TORCH_CHECK(W.dim() == 1 && W.scalar_type() == torch::kFloat64, "W must be flat float64");
  for (const auto* t : {&counts, &atoms, &channels, &out_rows})
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == torch::kInt64, "counts, atoms, channels, out_rows: int64");
  const int64_t S = counts.size(0);
  TORCH_CHECK(atoms.size(0) == S && channels.size(0) == S, "one count, atom count and channel count per crystal");
  m = m.contiguous();
  frac = frac.contiguous();
  W = W.contiguous();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const int64_t* nat = atoms.data_ptr<int64_t>();
  const int64_t* nch = channels.data_ptr<int64_t>();
  const int64_t* rows = out_rows.data_ptr<int64_t>();
  int64_t P = 0, J = 0, WJ = 0, R = 0;
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(cnt[s] >= 0 && nat[s] >= 0 && nch[s] >= 0, "negative count");
    P += cnt[s];
    J += nat[s];
    WJ += nch[s] * nat[s];
    R += nch[s];
  }
  TORCH_CHECK(P == m.size(0) && J == frac.size(0) && WJ == W.size(0) && R == out_rows.size(0),
              "counts, atoms and channels must add up to m, frac, W and out_rows");
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK(rows[r] >= 0 && rows[r] < C_out, "out_rows outside [0, C_out)");
  auto out = torch::zeros({C_out, P}, torch::TensorOptions().dtype(torch::kComplexDouble));
  double* o = reinterpret_cast<double*>(out.data_ptr());
  const int32_t* mp = m.data_ptr<int32_t>();
  const double* fp = frac.data_ptr<double>();
  const double* wp = W.data_ptr<double>();
  std::vector<double> tmp;
  int64_t p0 = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t Ps = cnt[s], Js = nat[s], Cs = nch[s];
    tmp.assign(2 * Cs * Ps, 0.0);
    structure_factors(mp + 3 * p0, Ps, fp, Js, wp, Cs, tmp.data());
    for (int64_t c = 0; c < Cs; ++c)
      std::memcpy(o + 2 * (rows[c] * P + p0), tmp.data() + 2 * c * Ps, 2 * Ps * sizeof(double));
    p0 += Ps;
    fp += 3 * Js;
    wp += Cs * Js;
    rows += Cs;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// the half ball, row by row (cloudvox.lattice.half_ball: keep every operation as written there)
// ---------------------------------------------------------------------------------------------------------
struct Row {
  int32_t m0, m1, a, b;  // kept m2 in [a, b]
};

std::vector<Row> half_ball_rows(const double* r /* (3, 3) rows b_k */, int64_t e0, int64_t e1, int64_t e2, double r2) {
  std::vector<Row> rows;
  const double* b = r + 6;
  const double bb = b[0] * b[0] + b[1] * b[1] + b[2] * b[2];
  for (int64_t m0 = -e0; m0 <= 0; ++m0)
    for (int64_t m1 = -e1; m1 <= e1; ++m1) {
      if (!(m0 < 0 || m1 <= 0)) continue;
      double u[3];
      for (int k = 0; k < 3; ++k) u[k] = double(m0) * r[k] + double(m1) * r[3 + k];
      const double ub = u[0] * b[0] + u[1] * b[1] + u[2] * b[2];
      const double uu = u[0] * u[0] + u[1] * u[1] + u[2] * u[2];
      const double disc = ub * ub - bb * (uu - r2);
      if (disc < 0) continue;
      const double root = std::sqrt(std::max(disc, 0.0));
      int64_t lo = std::max<int64_t>(int64_t(std::floor((-ub - root) / bb) - 1), -e2);
      int64_t hi = std::min<int64_t>(int64_t(std::ceil((-ub + root) / bb) + 1), e2);
      if (m0 == 0 && m1 == 0) hi = std::min<int64_t>(hi, 0);
      // the first and the last m2 of [lo, hi] that pass the exact test (numpy's min and max of the passing
      // ones), found from both ends: a few tests a row instead of one per point
      const auto inside = [&](int64_t m2) {
        const double q = double(m2);
        return uu + q * (2 * ub + q * bb) <= r2;
      };
      int64_t a = lo, z = hi;
      while (a <= hi && !inside(a)) ++a;
      while (z > a && !inside(z)) --z;
      if (a <= z) rows.push_back(Row{int32_t(m0), int32_t(m1), int32_t(a), int32_t(z)});
    }
  return rows;
}

// the half balls of S lattices at once, concatenated, with the counts per lattice; cube > 0 keeps only the
// points with every |G_k| <= cube (a prefilter: the caller applies its exact test to what is left)
std::tuple<torch::Tensor, torch::Tensor> half_balls(torch::Tensor recips, torch::Tensor extents, double r2,
                                                    double cube) {
  TORCH_CHECK(recips.dim() == 3 && recips.size(1) == 3 && recips.size(2) == 3 &&
              recips.scalar_type() == torch::kFloat64, "recips must be (S, 3, 3) float64");
  TORCH_CHECK(extents.dim() == 2 && extents.size(0) == recips.size(0) && extents.size(1) == 3 &&
              extents.scalar_type() == torch::kInt64, "extents must be (S, 3) int64");
  recips = recips.contiguous();
  extents = extents.contiguous();
  const int64_t S = recips.size(0);
  const double* R = recips.data_ptr<double>();
  const int64_t* E = extents.data_ptr<int64_t>();
  auto counts = torch::zeros({S}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* cnt = counts.data_ptr<int64_t>();
  std::vector<int32_t> m;
  for (int64_t s = 0; s < S; ++s) {
    const double* r = R + 9 * s;
    TORCH_CHECK(E[3 * s] >= 0 && E[3 * s + 1] >= 0 && E[3 * s + 2] >= 0, "extents must be >= 0");
    const auto rows = half_ball_rows(r, E[3 * s], E[3 * s + 1], E[3 * s + 2], r2);
    const size_t before = m.size();
    for (const auto& w : rows) {
      int64_t a = w.a, z = w.b;
      if (cube > 0) {
        // |u_k + m2 b_k| <= cube bounds m2 to an interval per axis: test only their intersection, widened by one
        // on each side (the exact test below decides)
        for (int k = 0; k < 3 && a <= z; ++k) {
          const double bk = r[6 + k];
          if (bk == 0) continue;
          const double uk = double(w.m0) * r[k] + double(w.m1) * r[3 + k];
          const double x = std::clamp((-cube - uk) / bk, -1e9, 1e9), y = std::clamp((cube - uk) / bk, -1e9, 1e9);
          a = std::max<int64_t>(a, int64_t(std::floor(std::min(x, y))) - 1);
          z = std::min<int64_t>(z, int64_t(std::ceil(std::max(x, y))) + 1);
        }
      }
      for (int64_t m2 = a; m2 <= z; ++m2) {
        if (cube > 0) {
          bool inside = true;
          for (int k = 0; k < 3 && inside; ++k)
            inside = std::abs(double(w.m0) * r[k] + double(w.m1) * r[3 + k] + double(m2) * r[6 + k]) <= cube;
          if (!inside) continue;
        }
        m.push_back(w.m0);
        m.push_back(w.m1);
        m.push_back(int32_t(m2));
      }
    }
    cnt[s] = int64_t(m.size() - before) / 3;
  }
  auto out = torch::empty({int64_t(m.size() / 3), 3}, torch::TensorOptions().dtype(torch::kInt32));
  if (!m.empty()) std::memcpy(out.data_ptr<int32_t>(), m.data(), m.size() * sizeof(int32_t));
  return std::make_tuple(out, counts);
}

torch::Tensor half_ball(torch::Tensor recip, int64_t e0, int64_t e1, int64_t e2, double r2) {
  TORCH_CHECK(recip.dim() == 2 && recip.size(0) == 3 && recip.size(1) == 3 && recip.scalar_type() == torch::kFloat64,
              "recip must be (3, 3) float64");
  TORCH_CHECK(e0 >= 0 && e1 >= 0 && e2 >= 0, "extents must be >= 0");
  recip = recip.contiguous();
  const auto rows = half_ball_rows(recip.data_ptr<double>(), e0, e1, e2, r2);
  int64_t P = 0;
  for (const auto& w : rows) P += int64_t(w.b) - w.a + 1;
  auto out = torch::empty({P, 3}, torch::TensorOptions().dtype(torch::kInt32));
  int32_t* m = out.data_ptr<int32_t>();
  for (const auto& w : rows)
    for (int32_t m2 = w.a; m2 <= w.b; ++m2) {
      *m++ = w.m0;
      *m++ = w.m1;
      *m++ = m2;
    }
  return out;
}

CLOUDVOX_CLONES
void row_factors(const double* __restrict ar, const double* __restrict ai, const double* __restrict t2r,
                 const double* __restrict t2i, int64_t J, int64_t n2, int64_t v0, int64_t L, const double* __restrict W,
                 const int64_t* __restrict only, int64_t C, bool total, double* __restrict accr,
                 double* __restrict acci, double* __restrict pr, double* __restrict pi) {
  // acc[c][t] = sum_j W[c, j] (a_j * T2[j][v0 + t]) for t < L; with total, row C sums all atoms. only[j]: the one
  // channel of atom j whose weight is 1 (the others 0), or -1: then every channel's weight multiplies. Each
  // element sees the same operations either way (w * p == p for w = 1): one pass per atom instead of two.
  const int64_t rows = C + (total ? 1 : 0);
  std::fill(accr, accr + rows * L, 0.0);
  std::fill(acci, acci + rows * L, 0.0);
  double* tr_ = accr + C * L;
  double* ti_ = acci + C * L;
  for (int64_t j = 0; j < J; ++j) {
    const double xr = ar[j], xi = ai[j];
    const double* tr = t2r + j * n2 + v0;
    const double* ti = t2i + j * n2 + v0;
    const int64_t c1 = only[j];
    if (c1 >= 0 && j + 3 < J && only[j + 1] == c1 && only[j + 2] == c1 && only[j + 3] == c1) {
      // four atoms of one channel in a row (atoms of an element are usually listed together): their four
      // additions to each element in atom order, held in registers between them
      const double xr1 = ar[j + 1], xi1 = ai[j + 1], xr2 = ar[j + 2], xi2 = ai[j + 2], xr3 = ar[j + 3],
                   xi3 = ai[j + 3];
      const double *tr1 = tr + n2, *ti1 = ti + n2, *tr2 = tr + 2 * n2, *ti2 = ti + 2 * n2, *tr3 = tr + 3 * n2,
                   *ti3 = ti + 3 * n2;
      double* sr = accr + c1 * L;
      double* si = acci + c1 * L;
      for (int64_t t = 0; t < L; ++t) {
        const double re0 = xr * tr[t] - xi * ti[t], im0 = xr * ti[t] + xi * tr[t];
        const double re1 = xr1 * tr1[t] - xi1 * ti1[t], im1 = xr1 * ti1[t] + xi1 * tr1[t];
        const double re2 = xr2 * tr2[t] - xi2 * ti2[t], im2 = xr2 * ti2[t] + xi2 * tr2[t];
        const double re3 = xr3 * tr3[t] - xi3 * ti3[t], im3 = xr3 * ti3[t] + xi3 * tr3[t];
        sr[t] = (((sr[t] + re0) + re1) + re2) + re3;
        si[t] = (((si[t] + im0) + im1) + im2) + im3;
        if (total) {
          tr_[t] = (((tr_[t] + re0) + re1) + re2) + re3;
          ti_[t] = (((ti_[t] + im0) + im1) + im2) + im3;
        }
      }
      j += 3;
      continue;
    }
    if (c1 >= 0) {
      double* sr = accr + c1 * L;
      double* si = acci + c1 * L;
      if (total) {
        for (int64_t t = 0; t < L; ++t) {
          const double re = xr * tr[t] - xi * ti[t], im = xr * ti[t] + xi * tr[t];
          sr[t] += re;
          si[t] += im;
          tr_[t] += re;
          ti_[t] += im;
        }
      } else {
        for (int64_t t = 0; t < L; ++t) {
          sr[t] += xr * tr[t] - xi * ti[t];
          si[t] += xr * ti[t] + xi * tr[t];
        }
      }
      continue;
    }
    for (int64_t t = 0; t < L; ++t) {
      pr[t] = xr * tr[t] - xi * ti[t];
      pi[t] = xr * ti[t] + xi * tr[t];
    }
    for (int64_t c = 0; c < C; ++c) {
      const double w = W[c * J + j];
      if (w == 0.0) continue;
      double* sr = accr + c * L;
      double* si = acci + c * L;
      for (int64_t t = 0; t < L; ++t) {
        sr[t] += w * pr[t];
        si[t] += w * pi[t];
      }
    }
    if (total) {
      for (int64_t t = 0; t < L; ++t) {
        tr_[t] += pr[t];
        ti_[t] += pi[t];
      }
    }
  }
}

// the IEEE half bits of v[k] / denom for k < n: round to nearest even, subnormals included, |x| < 65504 (values
// here are in [-1, 1]); branch-free, so that it vectorises
CLOUDVOX_CLONES
void halves(const double* __restrict v, double denom, int64_t n, uint16_t* __restrict o) {
  const double magic = 6755399441055744.0;  // 1.5 2^52: (y + magic) - magic rounds 0 <= y < 2^51 to nearest even
  for (int64_t k = 0; k < n; ++k) {
    const double x = v[k] / denom;
    uint64_t bits;
    std::memcpy(&bits, &x, 8);
    const uint64_t sign = (bits >> 48) & 0x8000u;
    const int64_t e = int64_t((bits >> 52) & 0x7ff) - 1023;  // |x| = 1.f 2^e
    // the half's step is 2^(e - 10) for a normal half (e >= -14), 2^-24 below: y = |x| / step, exactly
    const int64_t s = e >= -14 ? 10 - e : 24;
    const uint64_t scale_bits = uint64_t(1023 + s) << 52;
    double scale;
    std::memcpy(&scale, &scale_bits, 8);
    const uint64_t abs_bits = bits & ~(uint64_t(1) << 63);
    double y;
    std::memcpy(&y, &abs_bits, 8);
    const int64_t q = int64_t((y * scale + magic) - magic);  // in [1024, 2048] (normal) or [0, 1024]
    // a normal: the exponent field plus the 10 fraction bits (q = 2048 carries into the exponent, as it should)
    o[k] = uint16_t(sign | uint64_t(e < -14 ? q : ((e + 15) << 10) + q - 1024));
  }
}

// one crystal's stored values: appends its (Cout, P) float16 bits, relative to the largest modulus, to out;
// returns that modulus (the scale)
double crystal_values(const double* r, int64_t e0, int64_t e1, int64_t e2, double r2, const double* f, int64_t J,
                      const double* w, int64_t C, double sigma, double volume, bool cross, std::vector<uint16_t>& out) {
  TORCH_CHECK(e0 >= 0 && e1 >= 0 && e2 >= 0, "extents must be >= 0");
  const int64_t Cout = cross ? 2 * C : C;
  const auto rows = half_ball_rows(r, e0, e1, e2, r2);
  int64_t P = 0, Lmax = 0;
  for (const auto& x : rows) {
    P += int64_t(x.b) - x.a + 1;
    Lmax = std::max<int64_t>(Lmax, int64_t(x.b) - x.a + 1);
  }
  // phase tables exp(-2 pi i v f_jk) for v in [-e_k, e_k]: axes 0, 1 as [v][j], axis 2 as [j][v] (rows run over m2)
  const int64_t n0 = e0 + 1, n1 = 2 * e1 + 1, n2 = 2 * e2 + 1;
  std::vector<double> t0r(n0 * J), t0i(n0 * J), t1r(n1 * J), t1i(n1 * J), t2r(J * n2), t2i(J * n2);
  for (int64_t j = 0; j < J; ++j) {
    for (int64_t v = 0; v < n0; ++v) {
      const double angle = -2.0 * M_PI * double(v - e0) * f[3 * j];
      t0r[v * J + j] = std::cos(angle);
      t0i[v * J + j] = std::sin(angle);
    }
    for (int64_t v = 0; v < n1; ++v) {
      const double angle = -2.0 * M_PI * double(v - e1) * f[3 * j + 1];
      t1r[v * J + j] = std::cos(angle);
      t1i[v * J + j] = std::sin(angle);
    }
    for (int64_t v = 0; v < n2; ++v) {
      const double angle = -2.0 * M_PI * double(v - e2) * f[3 * j + 2];
      t2r[j * n2 + v] = std::cos(angle);
      t2i[j * n2 + v] = std::sin(angle);
    }
  }
  const int64_t accrows = C + (cross ? 1 : 0);
  std::vector<double> ar(J), ai(J), pr(Lmax), pi(Lmax), accr(accrows * Lmax), acci(accrows * Lmax);
  std::vector<double> envs(Lmax), factors(Lmax);
  std::vector<int64_t> only(J, -1);  // atom j's one channel of weight 1 (all others 0), else -1
  for (int64_t j = 0; j < J; ++j) {
    int64_t c1 = -1, nonzero = 0;
    for (int64_t c = 0; c < C; ++c)
      if (w[c * J + j] != 0.0) {
        ++nonzero;
        c1 = c;
      }
    if (nonzero == 1 && w[c1 * J + j] == 1.0) only[j] = c1;
  }
  std::vector<double> vals(Cout * P);
  const double half_s2 = sigma * sigma / 2, natoms = double(J);
  const double bb = r[6] * r[6] + r[7] * r[7] + r[8] * r[8], kappa = std::exp(-2 * half_s2 * bb);
  const bool direct_env = half_s2 * 4 * r2 > 300;  // recurrence factors stay far inside double's range
  double top = 0.0;
  int64_t p0 = 0;
  for (const auto& x : rows) {
    const int64_t L = int64_t(x.b) - x.a + 1;
    const double* r0 = &t0r[(x.m0 + e0) * J];
    const double* i0 = &t0i[(x.m0 + e0) * J];
    const double* r1 = &t1r[(x.m1 + e1) * J];
    const double* i1 = &t1i[(x.m1 + e1) * J];
    for (int64_t j = 0; j < J; ++j) {
      ar[j] = r0[j] * r1[j] - i0[j] * i1[j];
      ai[j] = r0[j] * i1[j] + i0[j] * r1[j];
    }
    row_factors(ar.data(), ai.data(), t2r.data(), t2i.data(), J, n2, x.a + e2, L, w, only.data(), C, cross,
                accr.data(), acci.data(), pr.data(), pi.data());
    double u[3];
    for (int k = 0; k < 3; ++k) u[k] = double(x.m0) * r[k] + double(x.m1) * r[3 + k];
    // the envelope along the row: exp(-s |u + q b|^2) is Gaussian in q, so env(q + 1) = env(q) rho(q) and
    // rho(q + 1) = rho(q) kappa (three exponentials a row; direct where the exponents could leave double's range)
    const double ub = u[0] * r[6] + u[1] * r[7] + u[2] * r[8];
    const double q0 = double(x.a);
    const double g0 = (u[0] + q0 * r[6]) * (u[0] + q0 * r[6]) + (u[1] + q0 * r[7]) * (u[1] + q0 * r[7]) +
                      (u[2] + q0 * r[8]) * (u[2] + q0 * r[8]);
    double env = std::exp(-half_s2 * g0);
    double rho = std::exp(-half_s2 * (2 * ub + (2 * q0 + 1) * bb));
    for (int64_t t = 0; t < L; ++t) {
      if (direct_env) {
        const double q = double(x.a + t);
        const double h0 = u[0] + q * r[6], h1 = u[1] + q * r[7], h2 = u[2] + q * r[8];
        env = std::exp(-half_s2 * (h0 * h0 + h1 * h1 + h2 * h2));
      } else if (t > 0) {
        env *= rho;
        rho *= kappa;
      }
      envs[t] = env;
      factors[t] = env / volume;
    }
    // then channel by channel along the row (the same operations per value, in loops that vectorise)
    for (int64_t c = 0; c < C; ++c) {
      const double* re = &accr[c * L];
      const double* im = &acci[c * L];
      double* out = &vals[c * P + p0];
      for (int64_t t = 0; t < L; ++t) out[t] = std::sqrt(re[t] * re[t] + im[t] * im[t]) * factors[t];
      if (cross) {
        const double* tr = &accr[C * L];
        const double* ti = &acci[C * L];
        double* xo = &vals[(C + c) * P + p0];
        for (int64_t t = 0; t < L; ++t) xo[t] = (re[t] * tr[t] + im[t] * ti[t]) * (envs[t] / natoms) * factors[t];
      }
    }
    p0 += L;
  }
  for (int64_t k = 0; k < Cout * P; ++k) top = std::max(top, std::abs(vals[k]));  // the largest modulus
  const size_t at = out.size();
  out.resize(at + size_t(Cout * P));
  halves(vals.data(), top > 0 ? top : 1.0, Cout * P, out.data() + at);
  return top;
}

// the stored values (cloudvox.descriptors.ReciprocalVoxelizer.stored_values) of S crystals in one call: recips (S, 3, 3), extents (S, 3), the atoms' frac (sum J, 3) with atoms
// (S,), the weights (sum C J,) flat with channels (S,), volumes (S,); returns the values (sum Cout P,) float16
// concatenated crystal by crystal, the points per crystal (S,) and the scales (S,)
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> stored_values_many(
    torch::Tensor recips, torch::Tensor extents, double r2, torch::Tensor frac, torch::Tensor atoms, torch::Tensor W,
    torch::Tensor channels, double sigma, torch::Tensor volumes, bool cross) {
  const int64_t S = recips.size(0);
  TORCH_CHECK(recips.dim() == 3 && recips.size(1) == 3 && recips.size(2) == 3 &&
              recips.scalar_type() == torch::kFloat64, "recips must be (S, 3, 3) float64");
  TORCH_CHECK(extents.dim() == 2 && extents.size(0) == S && extents.size(1) == 3 &&
              extents.scalar_type() == torch::kInt64, "extents must be (S, 3) int64");
  TORCH_CHECK(frac.dim() == 2 && frac.size(1) == 3 && frac.scalar_type() == torch::kFloat64,
              "frac must be (N, 3) float64");
  TORCH_CHECK(atoms.dim() == 1 && atoms.size(0) == S && atoms.scalar_type() == torch::kInt64,
              "atoms must be (S,) int64");
  TORCH_CHECK(channels.dim() == 1 && channels.size(0) == S && channels.scalar_type() == torch::kInt64,
              "channels must be (S,) int64");
  TORCH_CHECK(W.dim() == 1 && W.scalar_type() == torch::kFloat64, "W must be flat float64");
  TORCH_CHECK(volumes.dim() == 1 && volumes.size(0) == S && volumes.scalar_type() == torch::kFloat64,
              "volumes must be (S,) float64");
  recips = recips.contiguous();
  extents = extents.contiguous();
  frac = frac.contiguous();
  W = W.contiguous();
  const double* R = recips.data_ptr<double>();
  const int64_t* E = extents.data_ptr<int64_t>();
  const double* F = frac.data_ptr<double>();
  const double* w = W.data_ptr<double>();
  const int64_t* J = atoms.contiguous().data_ptr<int64_t>();
  const int64_t* C = channels.contiguous().data_ptr<int64_t>();
  const double* V = volumes.contiguous().data_ptr<double>();
  auto points = torch::empty({S}, torch::TensorOptions().dtype(torch::kInt64));
  auto tops = torch::empty({S}, torch::TensorOptions().dtype(torch::kFloat64));
  int64_t* pts = points.data_ptr<int64_t>();
  double* top = tops.data_ptr<double>();
  std::vector<uint16_t> bits;
  int64_t fa = 0, wa = 0;
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(fa + J[s] <= frac.size(0) && wa + C[s] * J[s] <= W.size(0), "atoms or channels do not add up");
    const size_t before = bits.size();
    top[s] = crystal_values(R + 9 * s, E[3 * s], E[3 * s + 1], E[3 * s + 2], r2, F + 3 * fa, J[s], w + wa, C[s],
                            sigma, V[s], cross, bits);
    const int64_t Cout = cross ? 2 * C[s] : C[s];
    pts[s] = Cout ? int64_t(bits.size() - before) / Cout : 0;
    fa += J[s];
    wa += C[s] * J[s];
  }
  auto out = torch::empty({int64_t(bits.size())}, torch::TensorOptions().dtype(torch::kHalf));
  if (!bits.empty()) std::memcpy(out.data_ptr(), bits.data(), bits.size() * sizeof(uint16_t));
  return std::make_tuple(out, points, tops);
}

// cloudvox.descriptors._bin_points, cartesian: the voxels of concatenated sets of points and the sums of their values
// there, with the floating-point operations of cloudvox.descriptors.voxel_index and the summation order of numpy's
// bincount (each set's own points, then its mirror points -G, in order; float64 sums from 0, then float32)
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> bin_cartesian(torch::Tensor G, torch::Tensor amp,
                                                                      torch::Tensor sizes, torch::Tensor mirror,
                                                                      int64_t n, double shift, double width,
                                                                      bool distinct) {
  TORCH_CHECK(G.dim() == 2 && G.size(1) == 3 && G.scalar_type() == torch::kFloat64, "G must be (P, 3) float64");
  TORCH_CHECK(amp.dim() == 2 && amp.size(1) == G.size(0) && amp.scalar_type() == torch::kFloat32,
              "amp must be (C, P) float32");
  TORCH_CHECK(sizes.dim() == 1 && sizes.scalar_type() == torch::kInt64, "sizes must be (S,) int64");
  TORCH_CHECK(mirror.dim() == 1 && mirror.size(0) == G.size(0) && mirror.scalar_type() == torch::kBool,
              "mirror must be (P,) bool");
  TORCH_CHECK(n >= 1 && n <= 1290, "n must be in [1, 1290]");
  G = G.contiguous();
  amp = amp.contiguous();
  sizes = sizes.contiguous();
  mirror = mirror.contiguous();
  const double* g = G.data_ptr<double>();
  const float* a = amp.data_ptr<float>();
  const int64_t* sz = sizes.data_ptr<int64_t>();
  const bool* mir = mirror.data_ptr<bool>();
  const int64_t P = G.size(0), C = amp.size(0), S = sizes.size(0);
  const double nd = double(n);
  const auto voxel = [&](double x0, double x1, double x2) -> int64_t {
    const double i0 = std::floor((x0 + shift) / width), i1 = std::floor((x1 + shift) / width),
                 i2 = std::floor((x2 + shift) / width);
    if (!(i0 >= 0 && i0 < nd && i1 >= 0 && i1 < nd && i2 >= 0 && i2 < nd)) return -1;
    return int64_t((i0 * nd + i1) * nd + i2);
  };
  auto bounds = torch::zeros({S + 1}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* bnd = bounds.data_ptr<int64_t>();
  std::vector<int32_t> local;
  std::vector<double> sums;  // [k][c]
  std::vector<uint32_t> key, src, key2, src2;
  std::vector<uint32_t> count(256);
  int digits = 1;  // 8-bit digits of the largest voxel index
  while (digits < 4 && (uint64_t(n) * n * n - 1) >> (8 * digits)) ++digits;
  int64_t start = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t k = sz[s];
    TORCH_CHECK(k >= 0 && start + k <= P, "sizes do not add up to the points");
    key.clear();
    src.clear();
    for (int64_t p = start; p < start + k; ++p) {
      const int64_t v = voxel(g[3 * p], g[3 * p + 1], g[3 * p + 2]);
      if (v >= 0) {
        key.push_back(uint32_t(v));
        src.push_back(uint32_t(p));
      }
    }
    for (int64_t p = start; p < start + k; ++p)
      if (mir[p]) {
        const int64_t v = voxel(-g[3 * p], -g[3 * p + 1], -g[3 * p + 2]);
        if (v >= 0) {
          key.push_back(uint32_t(v));
          src.push_back(uint32_t(p));
        }
      }
    // a stable sort by voxel (least significant byte first): equal voxels keep the points' order
    const size_t m = key.size();
    key2.resize(m);
    src2.resize(m);
    for (int pass = 0; pass < digits; ++pass) {
      const int sh = 8 * pass;
      std::fill(count.begin(), count.end(), 0);
      for (size_t i = 0; i < m; ++i) ++count[(key[i] >> sh) & 0xff];
      uint32_t total = 0;
      for (auto& c : count) {
        const uint32_t t = c;
        c = total;
        total += t;
      }
      for (size_t i = 0; i < m; ++i) {
        const uint32_t d = count[(key[i] >> sh) & 0xff]++;
        key2[d] = key[i];
        src2[d] = src[i];
      }
      key.swap(key2);
      src.swap(src2);
    }
    const size_t before = local.size();
    for (size_t i = 0; i < m;) {
      size_t j = i;
      const size_t row = sums.size();
      sums.resize(row + C, 0.0);
      if (distinct) {
        for (int64_t c = 0; c < C; ++c) sums[row + c] = double(a[c * P + src[i]]);
        j = i + 1;
      } else {
        for (; j < m && key[j] == key[i]; ++j)
          for (int64_t c = 0; c < C; ++c) sums[row + c] += double(a[c * P + src[j]]);
      }
      local.push_back(int32_t(key[i]));
      i = j;
    }
    bnd[s + 1] = bnd[s] + int64_t(local.size() - before);
    start += k;
  }
  TORCH_CHECK(start == P, "sizes do not add up to the points");
  const int64_t K = int64_t(local.size());
  auto index = torch::empty({K}, torch::TensorOptions().dtype(torch::kInt32));
  if (K) std::memcpy(index.data_ptr<int32_t>(), local.data(), K * sizeof(int32_t));
  auto values = torch::empty({C, K}, torch::TensorOptions().dtype(torch::kFloat32));
  float* out = values.data_ptr<float>();
  for (int64_t q = 0; q < K; ++q)
    for (int64_t c = 0; c < C; ++c) out[c * K + q] = float(sums[q * C + c]);
  return std::make_tuple(index, values, bounds);
}

// cloudvox.structure.find_overlap of a crystal: the first pair i <= j (i < j without images), in numpy's triu
// order, closer than cutoff (Angstrom) over the periodic images that can come that close; (-1, -1, 0) if none
std::tuple<int64_t, int64_t, double> first_overlap(torch::Tensor frac, torch::Tensor lattice, double cutoff) {
  TORCH_CHECK(frac.dim() == 2 && frac.size(1) == 3 && frac.scalar_type() == torch::kFloat64,
              "frac must be (n, 3) float64");
  TORCH_CHECK(lattice.dim() == 2 && lattice.size(0) == 3 && lattice.size(1) == 3 &&
              lattice.scalar_type() == torch::kFloat64, "lattice must be (3, 3) float64");
  frac = frac.contiguous();
  lattice = lattice.contiguous();
  const double* f = frac.data_ptr<double>();
  const double* L = lattice.data_ptr<double>();
  const int64_t n = frac.size(0);
  const double cutoff2 = cutoff * cutoff;
  // images: with fractional differences wrapped into [-1/2, 1/2], image n can only come closer than the cutoff if
  // |n_k| <= 1/2 + cutoff |b_k| / (2 pi), |b_k| / (2 pi) the norm of column k of the inverse (cofactors / det;
  // a hair of slack: an image too many changes nothing)
  const double det = L[0] * (L[4] * L[8] - L[5] * L[7]) - L[1] * (L[3] * L[8] - L[5] * L[6]) +
                     L[2] * (L[3] * L[7] - L[4] * L[6]);
  int64_t e[3];
  for (int k = 0; k < 3; ++k) {
    const int a = (k + 1) % 3, b = (k + 2) % 3;  // column k of the inverse: the cross product of rows a and b
    const double c0 = L[3 * a + 1] * L[3 * b + 2] - L[3 * a + 2] * L[3 * b + 1];
    const double c1 = L[3 * a + 2] * L[3 * b + 0] - L[3 * a + 0] * L[3 * b + 2];
    const double c2 = L[3 * a + 0] * L[3 * b + 1] - L[3 * a + 1] * L[3 * b + 0];
    const double norm = std::sqrt(c0 * c0 + c1 * c1 + c2 * c2) / std::abs(det);
    TORCH_CHECK(std::isfinite(norm) && cutoff * norm < 1e3, "the lattice is degenerate (its planes nearly touch)");
    e[k] = int64_t(std::floor(0.5 + cutoff * norm * (1 + 1e-9)));
  }
  const bool images = e[0] > 0 || e[1] > 0 || e[2] > 0;
  std::vector<double> shifts;  // the images' Cartesian shifts, n0 slowest (numpy's meshgrid, "ij")
  if (images) {
    for (int64_t a = -e[0]; a <= e[0]; ++a)
      for (int64_t b = -e[1]; b <= e[1]; ++b)
        for (int64_t c = -e[2]; c <= e[2]; ++c)
          for (int k = 0; k < 3; ++k) shifts.push_back(double(a) * L[k] + double(b) * L[3 + k] + double(c) * L[6 + k]);
  }
  const int64_t K = int64_t(shifts.size() / 3);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = images ? i : i + 1; j < n; ++j) {
      double g[3];
      for (int k = 0; k < 3; ++k) {
        g[k] = f[3 * j + k] - f[3 * i + k];
        g[k] -= std::nearbyint(g[k]);  // numpy's round: half to even
      }
      double d[3];
      for (int k = 0; k < 3; ++k) d[k] = g[0] * L[k] + g[1] * L[3 + k] + g[2] * L[6 + k];
      if (!images) {
        const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        if (r2 < cutoff2) return std::make_tuple(i, j, std::sqrt(r2));
        continue;
      }
      double best = INFINITY;
      for (int64_t q = 0; q < K; ++q) {
        const double x = d[0] + shifts[3 * q], y = d[1] + shifts[3 * q + 1], z = d[2] + shifts[3 * q + 2];
        double r2 = x * x + y * y + z * z;
        if (i == j && r2 == 0) r2 = INFINITY;  // an atom is not its own neighbour
        best = std::min(best, r2);
      }
      if (best < cutoff2) return std::make_tuple(i, j, std::sqrt(best));
    }
  return std::make_tuple(int64_t(-1), int64_t(-1), 0.0);
}

torch::Tensor half_from_double(torch::Tensor x) {  // exposed for the tests of the rounding
  TORCH_CHECK(x.scalar_type() == torch::kFloat64, "float64 input");
  x = x.contiguous();
  auto out = torch::empty(x.sizes(), torch::TensorOptions().dtype(torch::kHalf));
  const double* in = x.data_ptr<double>();
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  halves(in, 1.0, x.numel(), o);  // (x / 1 == x)
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("at", &factors_at, "F[c, p] = sum_j W[c, j] exp(-2 pi i m_p . f_j): m (P, 3) int32, frac (J, 3), W (C, J)");
  mod.def("at_batch", &factors_at_batch, "F (C_out, P) complex128 of many crystals: m, counts, frac, atoms, W (flat "
          "blocks), channels, out_rows, C_out");
  mod.def("half_ball", &half_ball, "m (P, 3) int32 of cloudvox.lattice.half_ball: recip (3, 3), e0, e1, e2, r2");
  mod.def("half_balls", &half_balls, "(m (P, 3) int32, counts (S,) int64): the half balls of recips (S, 3, 3), "
          "extents (S, 3) int64, r2, concatenated; cube > 0: only points with every |G_k| <= cube");
  mod.def("bin_cartesian", &bin_cartesian, "(index (K,) int32, values (C, K) float32, bounds (S + 1,) int64): "
          "cartesian voxels of sets of points G (P, 3) float64 with values amp (C, P) float32, sizes (S,), mirror (P,) "
          "bool, n, shift, width, distinct");
  mod.def("first_overlap", &first_overlap, "(i, j, distance) of the first pair of a crystal's atoms closer than "
          "cutoff over the periodic images, or (-1, -1, 0): frac (n, 3), lattice (3, 3) rows, cutoff (Angstrom)");
  mod.def("stored_values_many", &stored_values_many,
          "(values flat float16, points (S,), scales (S,)) of S crystals: recips, extents, r2, frac, atoms, W (flat), "
          "channels, sigma, volumes, cross");
  mod.def("half_from_double", &half_from_double, "float64 -> float16, round to nearest even");
}
