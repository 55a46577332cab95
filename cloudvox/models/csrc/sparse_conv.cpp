// Sparse first layer of VoxelNet on CPU: a 3D convolution over each sample's occupied voxels, scattered into a
// per-sample buffer that stays in cache, followed by the max-pool in the same pass; and its weight gradient.
//
// Python binding: cloudvox.models._sparse_conv (built by setup.py), used by cloudvox.models.voxelnet.
//   occupied(x (B, c, n), valid (B, c) bool) -> [voxel (M,) int64, values (M, c), offsets (B + 1,) int64]:
//           the voxels where any valid channel is non-zero (NaN counts), sorted by sample then voxel; invalid
//           channels read as 0
//   forward(values (M, c), voxel (M,) int64, offsets (B + 1,) int64, w (B, k^3, c, O), in_shape, kernel, padding,
//           pool) -> [out (B, D'', H'', W'', O), argmax (B, D'', H'', W'', O) int32 (empty if pool == 1)]
//   weight_grad(grad (B, D'', H'', W'', O), argmax, values, voxel, offsets, w, in_shape, kernel, padding, pool)
//           -> (B, k^3, c, O)
// values are the occupied voxels (flat index voxel = (z H + y) W + x of a D x H x W input) sorted by sample
// (sample b owns rows offsets[b] .. offsets[b + 1]); w are each sample's weights for its c channels; the conv
// output voxel of input p and kernel offset d is q = p + padding - d (stride 1, zero padding, cross-correlation
// like torch.nn.functional.conv3d). pool P > 1: max over non-overlapping P^3 windows (MaxPool3d(P), floor
// mode), first maximum in (z, y, x) order, NaN propagating, as PyTorch; argmax holds the position in the window.
// Outputs are channels-last. Parallel over samples (ATen's thread pool); every sample writes only its own rows.
// The per-sample loops are compiled for several x86-64 levels (AVX-512, AVX2, baseline), picked at load time.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CLOUDVOX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLOUDVOX_CLONES
#endif
#define CLOUDVOX_INLINE inline __attribute__((always_inline))

namespace {

struct Geometry {
  int64_t D, H, W;     // input voxels
  int64_t kd, kh, kw;  // kernel
  int64_t pd, ph, pw;  // zero padding
  int64_t P;           // max-pool window (1: none)
  int64_t Do, Ho, Wo;  // conv output
  int64_t Dp, Hp, Wp;  // pooled output
  int64_t c, O, k3;    // channels per sample, output channels, kernel volume

  Geometry(const torch::Tensor& w, at::IntArrayRef in_shape, at::IntArrayRef kernel, at::IntArrayRef padding,
           int64_t pool) {
    TORCH_CHECK(w.dim() == 4, "w must be (B, k^3, c, O)");
    TORCH_CHECK(in_shape.size() == 3 && kernel.size() == 3 && padding.size() == 3, "3D geometry expected");
    TORCH_CHECK(pool >= 1, "pool must be >= 1");
    D = in_shape[0]; H = in_shape[1]; W = in_shape[2];
    kd = kernel[0]; kh = kernel[1]; kw = kernel[2];
    pd = padding[0]; ph = padding[1]; pw = padding[2];
    P = pool;
    Do = D + 2 * pd - kd + 1; Ho = H + 2 * ph - kh + 1; Wo = W + 2 * pw - kw + 1;
    TORCH_CHECK(Do > 0 && Ho > 0 && Wo > 0, "the kernel is larger than the padded input");
    Dp = Do / P; Hp = Ho / P; Wp = Wo / P;
    k3 = w.size(1); c = w.size(2); O = w.size(3);
    TORCH_CHECK(k3 == kd * kh * kw, "w must be (B, k^3, c, O)");
  }
  int64_t conv_voxels() const { return Do * Ho * Wo; }
  int64_t pooled_voxels() const { return Dp * Hp * Wp; }
};

// Calls f(d, q) for every kernel offset d whose output voxel q = p + padding - d lies in [0, lim) per axis.
template <typename F>
CLOUDVOX_INLINE void for_each_target(const Geometry& g, int64_t p, int64_t Dl, int64_t Hl, int64_t Wl, F&& f) {
  const int64_t HW = g.H * g.W, z = p / HW, y = (p / g.W) % g.H, x = p % g.W;
  for (int64_t dz = 0; dz < g.kd; ++dz) {
    const int64_t qz = z + g.pd - dz;
    if (qz < 0 || qz >= Dl) continue;
    for (int64_t dy = 0; dy < g.kh; ++dy) {
      const int64_t qy = y + g.ph - dy;
      if (qy < 0 || qy >= Hl) continue;
      for (int64_t dx = 0; dx < g.kw; ++dx) {
        const int64_t qx = x + g.pw - dx;
        if (qx < 0 || qx >= Wl) continue;
        f((dz * g.kh + dy) * g.kw + dx, qz, qy, qx);
      }
    }
  }
}

// Sample b's conv output into buf (Do Ho Wo, O), then (P > 1) its max-pool into out/argmax.
template <typename T>
CLOUDVOX_INLINE void forward_sample_impl(const Geometry& g, int64_t b, const T* __restrict values,
                                         const int64_t* __restrict voxel, const int64_t* __restrict offsets,
                                         const T* __restrict w, T* __restrict buf, T* __restrict out,
                                         int32_t* __restrict argmax, T* __restrict best, int32_t* __restrict arg) {
  const int64_t O = g.O, c = g.c;
  for (int64_t i = 0; i < g.conv_voxels() * O; ++i) buf[i] = T(0);
  for (int64_t m = offsets[b]; m < offsets[b + 1]; ++m) {
    const T* __restrict v = values + m * c;
    for_each_target(g, voxel[m], g.Do, g.Ho, g.Wo, [&](int64_t d, int64_t qz, int64_t qy, int64_t qx) {
      T* __restrict o = buf + ((qz * g.Ho + qy) * g.Wo + qx) * O;
      const T* __restrict wd = w + (b * g.k3 + d) * c * O;
      for (int64_t ci = 0; ci < c; ++ci) {
        const T a = v[ci];
        const T* __restrict wc = wd + ci * O;
#pragma omp simd
        for (int64_t k = 0; k < O; ++k) o[k] += a * wc[k];
      }
    });
  }
  if (g.P == 1) return;
  const int64_t P = g.P;
  T* __restrict ob = out + b * g.pooled_voxels() * O;
  int32_t* __restrict ab = argmax + b * g.pooled_voxels() * O;
  for (int64_t pz = 0; pz < g.Dp; ++pz)
    for (int64_t py = 0; py < g.Hp; ++py)
      for (int64_t px = 0; px < g.Wp; ++px) {
        for (int64_t k = 0; k < O; ++k) { best[k] = -__builtin_inf(); arg[k] = 0; }
        int32_t a = 0;
        for (int64_t az = 0; az < P; ++az)
          for (int64_t ay = 0; ay < P; ++ay)
            for (int64_t ax = 0; ax < P; ++ax, ++a) {
              const T* __restrict s = buf + (((pz * P + az) * g.Ho + py * P + ay) * g.Wo + px * P + ax) * O;
#pragma omp simd
              for (int64_t k = 0; k < O; ++k) {
                const T v = s[k];
                const bool take = (v > best[k]) | (v != v);  // the first maximum; NaN wins, as in PyTorch
                best[k] = take ? v : best[k];
                arg[k] = take ? a : arg[k];
              }
            }
        const int64_t j = ((pz * g.Hp + py) * g.Wp + px) * O;
        for (int64_t k = 0; k < O; ++k) { ob[j + k] = best[k]; ab[j + k] = arg[k]; }
      }
}

// Sample b's weight gradient gw[b] (k^3, c, O) += values^T (gradient at the conv output voxels each row feeds).
// With P > 1, the conv-output gradient at q is grad[window(q)] where q is the window's argmax, else 0;
// win/pos map each output coordinate to its window and to its position term in the window.
template <typename T>
CLOUDVOX_INLINE void weight_grad_sample_impl(const Geometry& g, int64_t b, const T* __restrict grad,
                                             const int32_t* __restrict argmax, const T* __restrict values,
                                             const int64_t* __restrict voxel, const int64_t* __restrict offsets,
                                             T* __restrict gw, const int64_t* __restrict win,
                                             const int32_t* __restrict pos, T* __restrict row) {
  const int64_t O = g.O, c = g.c, P = g.P;
  const int64_t n = P > 1 ? g.pooled_voxels() : g.conv_voxels();
  const T* __restrict gb = grad + b * n * O;
  const int32_t* __restrict ab = P > 1 ? argmax + b * n * O : nullptr;
  T* __restrict gwb = gw + b * g.k3 * c * O;
  // per-axis tables: win[axis][q] = q / P, pos[axis][q] = its term of the position in the window
  const int64_t *wz = win, *wy = win + g.Do, *wx = win + g.Do + g.Ho;
  const int32_t *sz = pos, *sy = pos + g.Do, *sx = pos + g.Do + g.Ho;
  const int64_t Dl = P > 1 ? g.Dp * P : g.Do, Hl = P > 1 ? g.Hp * P : g.Ho, Wl = P > 1 ? g.Wp * P : g.Wo;
  for (int64_t m = offsets[b]; m < offsets[b + 1]; ++m) {
    const T* __restrict v = values + m * c;
    for_each_target(g, voxel[m], Dl, Hl, Wl, [&](int64_t d, int64_t qz, int64_t qy, int64_t qx) {
      const T* __restrict s;
      if (P > 1) {
        const int64_t j = ((wz[qz] * g.Hp + wy[qy]) * g.Wp + wx[qx]) * O;
        const int32_t a = sz[qz] + sy[qy] + sx[qx];
        const int32_t* __restrict aw = ab + j;
        const T* __restrict gj = gb + j;
#pragma omp simd
        for (int64_t k = 0; k < O; ++k) row[k] = aw[k] == a ? gj[k] : T(0);
        s = row;
      } else {
        s = gb + ((qz * g.Ho + qy) * g.Wo + qx) * O;
      }
      T* __restrict wd = gwb + d * c * O;
      for (int64_t ci = 0; ci < c; ++ci) {
        const T a = v[ci];
        T* __restrict wc = wd + ci * O;
#pragma omp simd
        for (int64_t k = 0; k < O; ++k) wc[k] += a * s[k];
      }
    });
  }
}

// Occupancy of sample b: mask[p] = 1 where any valid channel of x[b] (c, n) is non-zero; returns the count.
template <typename T>
CLOUDVOX_INLINE int64_t occupancy_sample_impl(const T* __restrict x, const bool* __restrict valid, int64_t b, int64_t c,
                                              int64_t n, uint8_t* __restrict mask) {
  for (int64_t p = 0; p < n; ++p) mask[p] = 0;
  for (int64_t j = 0; j < c; ++j) {
    if (!valid[b * c + j]) continue;
    const T* __restrict xj = x + (b * c + j) * n;
#pragma omp simd
    for (int64_t p = 0; p < n; ++p) mask[p] |= static_cast<uint8_t>(xj[p] != T(0));
  }
  int64_t count = 0;
#pragma omp simd reduction(+ : count)
  for (int64_t p = 0; p < n; ++p) count += mask[p];
  return count;
}

// Entry points compiled once per x86-64 level (target_clones): one call per sample, so the dispatch is free.
#define CLOUDVOX_SAMPLE_KERNELS(T)                                                                                 \
  CLOUDVOX_CLONES void forward_sample(const Geometry& g, int64_t b, const T* values, const int64_t* voxel,       \
                                      const int64_t* offsets, const T* w, T* buf, T* out, int32_t* argmax,      \
                                      T* best, int32_t* arg) {                                                  \
    forward_sample_impl<T>(g, b, values, voxel, offsets, w, buf, out, argmax, best, arg);                       \
  }                                                                                                             \
  CLOUDVOX_CLONES void weight_grad_sample(const Geometry& g, int64_t b, const T* grad, const int32_t* argmax,    \
                                          const T* values, const int64_t* voxel, const int64_t* offsets, T* gw, \
                                          const int64_t* win, const int32_t* pos, T* row) {                     \
    weight_grad_sample_impl<T>(g, b, grad, argmax, values, voxel, offsets, gw, win, pos, row);                  \
  }                                                                                                             \
  CLOUDVOX_CLONES int64_t occupancy_sample(const T* x, const bool* valid, int64_t b, int64_t c, int64_t n,      \
                                           uint8_t* mask) {                                                     \
    return occupancy_sample_impl<T>(x, valid, b, c, n, mask);                                                   \
  }
CLOUDVOX_SAMPLE_KERNELS(float)
CLOUDVOX_SAMPLE_KERNELS(double)
#undef CLOUDVOX_SAMPLE_KERNELS

void check_inputs(const torch::Tensor& values, const torch::Tensor& voxel, const torch::Tensor& offsets,
                  const torch::Tensor& w, const Geometry& g) {
  TORCH_CHECK(values.device().is_cpu() && w.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(values.dim() == 2 && values.size(1) == g.c, "values must be (M, c)");
  TORCH_CHECK(values.scalar_type() == w.scalar_type(), "values and w must have one dtype");
  TORCH_CHECK(voxel.scalar_type() == torch::kInt64 && offsets.scalar_type() == torch::kInt64, "int64 indices expected");
  TORCH_CHECK(voxel.numel() == values.size(0), "one voxel index per row of values");
  TORCH_CHECK(offsets.numel() == w.size(0) + 1, "offsets must be (B + 1,)");
  // the loops trust these: check them once (a few microseconds) rather than write out of bounds
  TORCH_CHECK(offsets[0].item<int64_t>() == 0 && offsets[-1].item<int64_t>() == values.size(0) &&
                  (offsets.numel() < 2 || bool((offsets.diff() >= 0).all().item<bool>())),
              "offsets must rise from 0 to M");
  TORCH_CHECK(voxel.numel() == 0 || (voxel.min().item<int64_t>() >= 0 && voxel.max().item<int64_t>() < g.D * g.H * g.W),
              "voxel indices outside the D x H x W input");
  TORCH_CHECK(g.P * g.P * g.P < (int64_t(1) << 31), "pool window too large");
}

}  // namespace

std::vector<torch::Tensor> forward(torch::Tensor values, torch::Tensor voxel, torch::Tensor offsets, torch::Tensor w,
                                   std::vector<int64_t> in_shape, std::vector<int64_t> kernel,
                                   std::vector<int64_t> padding, int64_t pool) {
  const Geometry g(w, in_shape, kernel, padding, pool);
  check_inputs(values, voxel, offsets, w, g);
  values = values.contiguous(); voxel = voxel.contiguous(); offsets = offsets.contiguous(); w = w.contiguous();
  const int64_t B = w.size(0), O = g.O;
  auto out = pool > 1 ? torch::empty({B, g.Dp, g.Hp, g.Wp, O}, values.options())
                      : torch::empty({B, g.Do, g.Ho, g.Wo, O}, values.options());
  auto argmax = torch::empty({pool > 1 ? B : 0, g.Dp, g.Hp, g.Wp, O}, values.options().dtype(torch::kInt32));
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cloudvox_sparse_conv_forward", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    const int64_t* vox = voxel.data_ptr<int64_t>();
    const int64_t* off = offsets.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int32_t* ap = pool > 1 ? argmax.data_ptr<int32_t>() : nullptr;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> scratch(pool > 1 ? g.conv_voxels() * O : 0), best(O);
      std::vector<int32_t> arg(O);
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* buf = pool > 1 ? scratch.data() : op + b * g.conv_voxels() * O;
        forward_sample(g, b, v, vox, off, wp, buf, op, ap, best.data(), arg.data());
      }
    });
  });
  return {out, argmax};
}

torch::Tensor weight_grad(torch::Tensor grad, torch::Tensor argmax, torch::Tensor values, torch::Tensor voxel,
                          torch::Tensor offsets, torch::Tensor w, std::vector<int64_t> in_shape,
                          std::vector<int64_t> kernel, std::vector<int64_t> padding, int64_t pool) {
  const Geometry g(w, in_shape, kernel, padding, pool);
  check_inputs(values, voxel, offsets, w, g);
  const int64_t B = w.size(0), O = g.O;
  const int64_t n = pool > 1 ? g.pooled_voxels() : g.conv_voxels();
  TORCH_CHECK(grad.numel() == B * n * O, "grad must be the (channels-last) shape of the forward output");
  TORCH_CHECK(pool == 1 || argmax.numel() == grad.numel(), "argmax must come from the forward");
  grad = grad.contiguous(); argmax = argmax.contiguous();
  values = values.contiguous(); voxel = voxel.contiguous(); offsets = offsets.contiguous();
  auto gw = torch::zeros_like(w, at::MemoryFormat::Contiguous);
  std::vector<int64_t> win(g.Do + g.Ho + g.Wo);
  std::vector<int32_t> pos(g.Do + g.Ho + g.Wo);
  const int64_t sizes[3] = {g.Do, g.Ho, g.Wo}, scale[3] = {pool * pool, pool, 1};
  for (int axis = 0, i = 0; axis < 3; ++axis)
    for (int64_t q = 0; q < sizes[axis]; ++q, ++i) { win[i] = q / pool; pos[i] = int32_t((q % pool) * scale[axis]); }
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cloudvox_sparse_conv_weight_grad", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const int32_t* ap = pool > 1 ? argmax.data_ptr<int32_t>() : nullptr;
    const scalar_t* v = values.data_ptr<scalar_t>();
    const int64_t* vox = voxel.data_ptr<int64_t>();
    const int64_t* off = offsets.data_ptr<int64_t>();
    scalar_t* gwp = gw.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> row(O);
      for (int64_t b = b0; b < b1; ++b)
        weight_grad_sample(g, b, gp, ap, v, vox, off, gwp, win.data(), pos.data(), row.data());
    });
  });
  return gw;
}

std::vector<torch::Tensor> occupied(torch::Tensor x, torch::Tensor valid) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3, "x must be a CPU tensor (B, c, n)");
  TORCH_CHECK(valid.scalar_type() == torch::kBool && valid.sizes() == x.sizes().slice(0, 2), "valid must be (B, c) bool");
  x = x.contiguous(); valid = valid.contiguous();
  const int64_t B = x.size(0), c = x.size(1), n = x.size(2);
  auto offsets = torch::zeros({B + 1}, x.options().dtype(torch::kInt64));
  int64_t* off = offsets.data_ptr<int64_t>();
  auto mask = torch::empty({B, n}, x.options().dtype(torch::kUInt8));  // each sample's occupancy, kept for pass 2
  uint8_t* mp = mask.data_ptr<uint8_t>();
  const bool* vp = valid.data_ptr<bool>();
  torch::Tensor voxel, values;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cloudvox_occupied", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) off[b + 1] = occupancy_sample(xp, vp, b, c, n, mp + b * n);
    });
    for (int64_t b = 0; b < B; ++b) off[b + 1] += off[b];
    voxel = torch::empty({off[B]}, offsets.options());
    values = torch::empty({off[B], c}, x.options());
    int64_t* vox = voxel.data_ptr<int64_t>();
    scalar_t* val = values.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t i = off[b];
        const uint8_t* mb = mp + b * n;
        for (int64_t p = 0; p < n; ++p) {
          if (!mb[p]) continue;
          vox[i] = p;
          for (int64_t j = 0; j < c; ++j) val[i * c + j] = vp[b * c + j] ? xp[(b * c + j) * n + p] : scalar_t(0);
          ++i;
        }
      }
    });
  });
  return {voxel, values, offsets};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cloudvox: sparse first convolution (+ max-pool) of VoxelNet on CPU";
  m.def("forward", &forward, "sparse conv (+ max-pool) forward");
  m.def("weight_grad", &weight_grad, "weight gradient of the sparse conv (+ max-pool)");
  m.def("occupied", &occupied, "occupied voxels of compact per-sample channels");
}
