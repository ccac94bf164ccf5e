#include "diffops/function.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "diffops/autograd.h"
#include "diffops/divergence.h"
#include "diffops/gradient.h"
#include "diffops/laplacian.h"

namespace diffops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tanh_steps(const at::Tensor& h, bool second);

// σ(h), σ'(h) and, with `second`, σ''(h) (else undefined) of an elementwise activation, from ATen
// ops (differentiable).
std::tuple<at::Tensor, at::Tensor, at::Tensor> activation(const std::string& op,
                                                          const std::string& kind,
                                                          const at::Tensor& h, bool second) {
  at::Tensor d2;
  if (kind == "tanh") return tanh_steps(h, second);
  if (kind == "sin") {
    auto s = at::sin(h);
    if (second) d2 = -s;
    return {s, at::cos(h), d2};
  }
  if (kind == "sigmoid") {
    auto s = at::sigmoid(h);
    auto d1 = s * (1 - s);
    if (second) d2 = d1 * (1 - 2 * s);
    return {s, d1, d2};
  }
  if (kind == "softplus") {  // torch's default: linear above threshold 20
    auto s = at::sigmoid(h);
    auto linear = h > 20;
    if (second) d2 = at::where(linear, at::zeros_like(h), s * (1 - s));
    return {at::softplus(h), at::where(linear, at::ones_like(h), s), d2};
  }
  if (kind == "silu") {
    auto s = at::sigmoid(h);
    if (second) d2 = s * (1 - s) * (2 + h * (1 - 2 * s));
    return {h * s, s * (1 + h * (1 - s)), d2};
  }
  if (kind == "gelu") {
    const double inv_sqrt_2pi = 1.0 / std::sqrt(2.0 * M_PI);
    auto pdf = at::exp(-0.5 * h * h) * inv_sqrt_2pi;
    auto cdf = 0.5 * (1 + at::erf(h * M_SQRT1_2));
    if (second) d2 = pdf * (2 - h * h);
    return {h * cdf, cdf + h * pdf, d2};
  }
  if (kind == "identity") return {h, at::ones_like(h), second ? at::zeros_like(h) : d2};
  TORCH_CHECK_VALUE(false, op, ": unsupported step kind '", kind,
                    "'; supported: linear, tanh, sin, sigmoid, softplus, silu, gelu, identity");
}

}  // namespace

const std::vector<std::string>& forward_laplacian_activations() {
  static const std::vector<std::string> kinds = {"tanh", "sin",  "sigmoid", "softplus",
                                                 "silu", "gelu", "identity"};
  return kinds;
}

namespace {

// Whether the tangents are carried in the reduced basis: the rows of the first layer's Wᵀ span at
// most r = min(d, width) directions, and every operator follows from the tangents in any
// orthonormal basis of them: Δ sums over it, tr(Q C) for the divergence, Q C for the Jacobian,
// Q H_r Qᵀ for the Hessian (see value_and_derivative).
bool reduces(int64_t d, const std::vector<Step>& mlp) {
  return !mlp.empty() && mlp.front().kind == "linear" &&
         mlp.front().weight.defined() && mlp.front().weight.dim() == 2 &&
         mlp.front().weight.size(0) < d;
}

// Blocks of CPU memory kept for the next call. The tangent tensors (N, r, w) are the large ones, a
// few MiB to hundreds; glibc maps a block that large afresh from the kernel and unmaps it when it
// is freed, so every call pays a page fault per 4 KiB page on first touch: 1-2 µs each on a
// virtual machine, a fifth of a training step at d = 8. Blocks come back here when their
// tensors die (after the backward, in training) and the next call of the same shape takes them
// again. A GPU has its own caching allocator; this is for CPU tensors only.
class BlockCache {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes) != 0) {  // out of memory: give the cached blocks back, retry
      clear();
      TORCH_CHECK(posix_memalign(&p, 64, bytes) == 0, "diffops: out of memory allocating ", bytes,
                  " bytes");
    }
    return p;
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= limit_) {
        free_[bytes].push_back(p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, blocks] : free_)
      for (void* p : blocks) std::free(p);
    free_.clear();
    cached_ = 0;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }
  void set_limit(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      if (cached_ <= limit_) return;
    }
    clear();
  }
  size_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  size_t limit_ = size_t{1} << 30;
};

BlockCache& block_cache() {
  static auto* cache = [] {
    // glibc raises its mmap threshold (up to 32 MiB) when it frees a mapped block, so that the
    // next blocks of that size come from its heap. Cached blocks are never freed, which would
    // leave every other tensor from 128 KiB up (ATen's (N, w) tensors of each call) mapped afresh
    // and faulted on each call. One mapped block freed here does what the tangents' frees did
    // before they were cached. Other allocators ignore it.
    auto* block = static_cast<volatile char*>(std::malloc(size_t{16} << 20));
    if (block != nullptr) block[0] = 0;  // a real allocation, not one the compiler may elide
    std::free(const_cast<char*>(block));
    return new BlockCache();  // never destroyed: tensors may outlive static destructors
  }();
  return *cache;
}

// Whether t is an ordinary CPU tensor with memory behind it, which our own blocks and loops may
// serve: not a fake or functional tensor of a tracer (torch.compile runs the kernels on those to
// learn the shapes), not batched by vmap, and no Python dispatch mode active.
bool plain_cpu(const at::Tensor& t) {
  static const c10::DispatchKeySet traced({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                           c10::DispatchKey::Functionalize, c10::DispatchKey::FuncTorchBatched,
                                           c10::DispatchKey::FuncTorchGradWrapper});
  return t.is_cpu() && !t.key_set().has_any(traced) &&
         !c10::impl::tls_local_dispatch_key_set().included_.has_any(traced) &&
         !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

// An uninitialised tensor of `like`'s dtype and device: for an ordinary CPU tensor of 1 MiB and
// more from the block cache, else at::empty.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::Tensor& like) {
  const auto options = like.options();
  const auto bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * like.element_size();
  if (bytes < (size_t{1} << 20) || !plain_cpu(like)) return at::empty(sizes, options);
  void* p = block_cache().take(bytes);
  return at::from_blob(
      p, sizes, [bytes](void* q) { block_cache().give(q, bytes); }, options);
}

// Whether the CPU loops below take these tensors: ordinary CPU tensors (plain_cpu), float or
// double, contiguous, and the same dtype.
bool loops_on_cpu(std::initializer_list<at::Tensor> tensors) {
  const auto dtype = tensors.begin()->scalar_type();
  for (const auto& t : tensors)
    if (!plain_cpu(t) || t.scalar_type() != dtype || !t.is_contiguous() ||
        (dtype != at::kFloat && dtype != at::kDouble))
      return false;
  return true;
}

// at::parallel_for over n points of `entries` tensor entries each, about GRAIN_SIZE entries a task.
template <typename Fn>
void parallel_points(int64_t n, int64_t entries, const Fn& fn) {
  at::parallel_for(0, n, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, entries)),
                   fn);
}

// Σ_i A[n, i, :] ⊙ B[n, i, :] (or B[i, :], shared by every point) into (N, w), for contiguous CPU
// tensors: one pass over A and B per point, the (w,) accumulator in L1. ATen's r in-place
// multiply-adds read and write the whole (N, w) accumulator r times, each over a strided slice;
// this is 2x faster on 2 cores. The sum runs in the same order (i = 0, 1, ...). With `scale`
// (N, w), A is then rewritten in the same pass, A[n, i, :] ← A[n, i, :] ⊙ scale[n, :], plus
// 2 gS[n, :] ⊙ B[n, i, :] with `gS` (the gradient of the squares Σ_i B_i²).
template <typename T, bool Scale, bool Squares>
void tangent_dot_rows(T* A, const T* B, const T* scale, const T* gS, T* out, int64_t n, int64_t r,
                      int64_t w, bool shared) {
  parallel_points(n, r * w, [&](int64_t start, int64_t end) {
    for (int64_t p = start; p < end; ++p) {
      T* __restrict__ ap = A + p * r * w;
      const T* __restrict__ bp = shared ? B : B + p * r * w;
      const T* __restrict__ sp = Scale ? scale + p * w : nullptr;
      const T* __restrict__ gp = Squares ? gS + p * w : nullptr;
      T* __restrict__ op = out + p * w;
      auto rewrite = [&](int64_t k, int64_t l) {  // A's entry k (column l), once read for the dot
        if constexpr (Squares)
          ap[k] = ap[k] * sp[l] + 2 * gp[l] * bp[k];
        else if constexpr (Scale)
          ap[k] *= sp[l];
      };
      for (int64_t l = 0; l < w; ++l) {
        op[l] = ap[l] * bp[l];
        rewrite(l, l);
      }
      for (int64_t i = 1; i < r; ++i) {
        for (int64_t l = 0; l < w; ++l) {
          op[l] += ap[i * w + l] * bp[i * w + l];
          rewrite(i * w + l, l);
        }
      }
    }
  });
}

at::Tensor tangent_dot_cpu(const at::Tensor& A, const at::Tensor& B, const at::Tensor& scale,
                           const at::Tensor& gS) {
  const int64_t n = A.size(0), r = A.size(1), w = A.size(2);
  auto out = at::empty({n, w}, A.options());
  TORCH_INTERNAL_ASSERT(!scale.defined() || A.const_data_ptr() != B.const_data_ptr());
  TORCH_INTERNAL_ASSERT(!gS.defined() || scale.defined());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "tangent_dot_cpu", [&] {
    // A is written only with a scale (then the caller owns it)
    auto* a = const_cast<scalar_t*>(A.const_data_ptr<scalar_t>());
    const auto* b = B.const_data_ptr<scalar_t>();
    auto* o = out.mutable_data_ptr<scalar_t>();
    const bool shared = B.dim() == 2;
    if (gS.defined())
      tangent_dot_rows<scalar_t, true, true>(a, b, scale.const_data_ptr<scalar_t>(),
                                             gS.const_data_ptr<scalar_t>(), o, n, r, w, shared);
    else if (scale.defined())
      tangent_dot_rows<scalar_t, true, false>(a, b, scale.const_data_ptr<scalar_t>(), nullptr, o, n,
                                              r, w, shared);
    else
      tangent_dot_rows<scalar_t, false, false>(a, b, nullptr, nullptr, o, n, r, w, shared);
  });
  return out;
}

// Σ_i A[:, i, :] ⊙ B_i of tangents A (N, r, w) and B (N, r, w), or (r, w) shared by every point,
// (N, w), with no (N, r, w) temporary: each fresh multi-MiB tensor costs a page fault per 4 KiB
// page on first touch (glibc maps them afresh), which made (A * B).sum(1) 2-7x slower than this on
// a 2-core CPU. On a CPU (float, double, contiguous) one loop per point (tangent_dot_cpu), else r
// in-place multiply-adds into one (N, w) accumulator. With `scale` (N, w), A (a tensor the caller
// owns, not aliasing B) is then rewritten in place, A ← A ⊙ scale, plus 2 gS ⊙ B with `gS` (the
// gradient of the squares Σ_i B_i²: a Laplacian step's backward), in the same pass on a CPU. Not
// recorded by autograd (TangentDot is its differentiable form).
at::Tensor dot_over_tangents(const at::Tensor& A, const at::Tensor& B,
                             const at::Tensor& scale = at::Tensor(),
                             const at::Tensor& gS = at::Tensor()) {
  at::NoGradGuard no_grad;
  const int64_t axis = B.dim() == 2 ? 0 : 1;
  if (A.size(1) == 0) return at::zeros({A.size(0), A.size(2)}, A.options());
  const bool loops = gS.defined()      ? loops_on_cpu({A, B, scale, gS})
                     : scale.defined() ? loops_on_cpu({A, B, scale})
                                       : loops_on_cpu({A, B});
  if (loops) return tangent_dot_cpu(A, B, scale, gS);
  auto acc = A.select(1, 0) * B.select(axis, 0);
  for (int64_t i = 1; i < A.size(1); ++i) acc.addcmul_(A.select(1, i), B.select(axis, i));
  if (scale.defined()) A.mul_(scale.unsqueeze(1));
  if (gS.defined()) A.add_(B * (2 * gS.unsqueeze(1)));
  return acc;
}

// Rows of points per chunk for the scaled products below: on a CPU about 2^18 tangent entries, so
// a chunk of J ⊙ a (2 MiB in float64) stays in cache and comes from the heap, not from fresh
// pages, while each chunk's product stays large enough for the BLAS (2^18 was the fastest of
// 2^16…2^20 and all-at-once for r·w from 512 to 32768, float32 and float64, on 2 cores); elsewhere
// (a GPU: launches, not caches, are what counts) all points at once.
int64_t chunk_points(const at::Tensor& J) {
  if (!J.is_cpu()) return std::max<int64_t>(1, J.size(0));
  return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, J.size(1) * J.size(2)));
}

// scaled = J ⊙ a and squares = Σ_i J_i² (N, w) in one pass over J per point, for contiguous CPU
// tensors (the Laplacian's squares on the way into the next product: J is read once, not twice).
// The sum runs in tangent_dot_rows' order, so the squares are bit for bit dot_over_tangents(J, J).
void scale_and_square_cpu(const at::Tensor& J, const at::Tensor& a, const at::Tensor& scaled,
                          const at::Tensor& squares) {
  const int64_t n = J.size(0), r = J.size(1), w = J.size(2);
  AT_DISPATCH_FLOATING_TYPES(J.scalar_type(), "scale_and_square_cpu", [&] {
    const auto* j = J.const_data_ptr<scalar_t>();
    const auto* av = a.const_data_ptr<scalar_t>();
    auto* out = scaled.mutable_data_ptr<scalar_t>();
    auto* sq = squares.mutable_data_ptr<scalar_t>();
    parallel_points(n, r * w, [&](int64_t start, int64_t end) {
      for (int64_t p = start; p < end; ++p) {
        const scalar_t* __restrict__ jp = j + p * r * w;
        const scalar_t* __restrict__ ap = av + p * w;
        scalar_t* __restrict__ op = out + p * r * w;
        scalar_t* __restrict__ sp = sq + p * w;
        for (int64_t l = 0; l < w; ++l) {
          sp[l] = jp[l] * jp[l];
          op[l] = jp[l] * ap[l];
        }
        for (int64_t i = 1; i < r; ++i) {
          for (int64_t l = 0; l < w; ++l) {
            sp[l] += jp[i * w + l] * jp[i * w + l];
            op[i * w + l] = jp[i * w + l] * ap[l];
          }
        }
      }
    });
  });
}

// Calls fn(s, e, scaled) for each chunk [s, e) of points, scaled = J[s:e] ⊙ a[s:e] for tangents
// J (N, r, w) and column scales a (N, w): one chunk buffer, reused, no (N, r, w) temporary. With
// `squares` (N, w), also fills it with Σ_i J_i², in the same pass on a CPU.
template <typename Fn>
void for_scaled_chunks(const at::Tensor& J, const at::Tensor& a, Fn fn,
                       const at::Tensor& squares = at::Tensor()) {
  const auto n = J.size(0), step = chunk_points(J);
  auto buffer = at::empty({std::min(n, step), J.size(1), J.size(2)}, J.options());
  const bool loop = squares.defined() && loops_on_cpu({J, a, squares});
  for (int64_t s = 0; s < n; s += step) {
    const auto e = std::min(n, s + step);
    auto scaled = buffer.narrow(0, 0, e - s);
    const auto Jc = J.slice(0, s, e);
    if (loop) {
      scale_and_square_cpu(Jc, a.slice(0, s, e), scaled, squares.slice(0, s, e));
    } else {
      if (squares.defined()) squares.slice(0, s, e).copy_(dot_over_tangents(Jc, Jc));
      at::mul_out(scaled, Jc, a.slice(0, s, e).unsqueeze(1));
    }
    fn(s, e, scaled);
  }
}

// (J ⊙ a) Wᵀ for tangents J (N, r, w), column scales a (N, w), Wt = Wᵀ (w, w'), scaled chunk by
// chunk of points into the product's output. Measured 1.1-2.3x faster than materialising J ⊙ a
// first on 2 cores. With `squares` (N, w), fills it with Σ_i J_i² on the way (for_scaled_chunks).
// Not recorded by autograd (ScaledProduct is).
at::Tensor scaled_product(const at::Tensor& J, const at::Tensor& a, const at::Tensor& Wt,
                          const at::Tensor& squares = at::Tensor()) {
  at::NoGradGuard no_grad;
  const auto n = J.size(0), r = J.size(1), w = J.size(2);
  auto out = cached_empty({n, r, Wt.size(1)}, J);
  auto rows = out.view({n * r, Wt.size(1)});
  for_scaled_chunks(J, a, [&](int64_t s, int64_t e, const at::Tensor& scaled) {
    auto target = rows.slice(0, s * r, e * r);
    at::mm_out(target, scaled.view({-1, w}), Wt);
  }, squares);
  return out;
}

// ((J ⊙ a) as (N·r, w))ᵀ G for G (N, r, w'): the weight gradient of scaled_product, chunked the
// same way. Not recorded by autograd.
at::Tensor scaled_gram(const at::Tensor& J, const at::Tensor& a, const at::Tensor& G) {
  at::NoGradGuard no_grad;
  const auto w = J.size(2);
  auto acc = at::zeros({w, G.size(2)}, J.options());
  for_scaled_chunks(J, a, [&](int64_t s, int64_t e, const at::Tensor& scaled) {
    acc.addmm_(scaled.view({-1, w}).t(), G.slice(0, s, e).reshape({-1, G.size(2)}));
  });
  return acc;
}

// Σ_n g[n, l] A[n, i, l] for g (N, w) and tangents A (N, r, w): the gradient of a factor shared
// by every point, (r, w), summed chunk by chunk of points. Not recorded.
at::Tensor point_sum(const at::Tensor& g, const at::Tensor& A) {
  at::NoGradGuard no_grad;
  auto acc = at::zeros({A.size(1), A.size(2)}, A.options());
  for_scaled_chunks(A, g, [&](int64_t, int64_t, const at::Tensor& scaled) { acc.add_(scaled.sum(0)); });
  return acc;
}

// a ⊙ b (broadcast) of the shape and options of `like`, into a cached block unless autograd
// records (then the plain, differentiable product).
at::Tensor product_like(const at::Tensor& like, const at::Tensor& a, const at::Tensor& b) {
  if (at::GradMode::is_enabled()) return a * b;
  auto out = cached_empty(like.sizes(), like);
  return at::mul_out(out, a, b);
}

bool recorded(std::initializer_list<at::Tensor> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : tensors)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// tanh and its derivatives: t = tanh(h), t1 = 1 - t², and with `second` t2 = -2 t t1, one pass each.
std::tuple<at::Tensor, at::Tensor, at::Tensor> tanh_kernel(const at::Tensor& h, bool second) {
  auto t = at::tanh(h);
  auto d1 = at::addcmul(at::scalar_tensor(1, t.options()), t, t, -1);
  at::Tensor d2;
  if (second) d2 = at::addcmul(at::scalar_tensor(0, t.options()), t, d1, -2);
  return {t, d1, d2};
}

// tanh_kernel as one autograd node: g_h = t1 (g_t - 2 t g_t1 + (4 - 6 t1) g_t2), since the third
// derivative is t1 (6 t² - 2) = t1 (4 - 6 t1). Autograd's graph of the same ops (tanh and two
// addcmul) takes about a dozen elementwise passes over (N, w) for this in a training step; this
// takes two (the divergence: no g_t2) to four (the Laplacian). The backward is built from ATen ops
// on the saved outputs, so it is differentiable again (gradgradcheck passes).
struct TanhSteps : torch::autograd::Function<TanhSteps> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h, bool second) {
    ctx->set_materialize_grads(false);
    auto [t, d1, d2] = tanh_kernel(h, second);
    ctx->save_for_backward({t, d1});
    if (second) return {t, d1, d2};
    return {t, d1};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &t = saved[0], &d1 = saved[1];
    const auto& gt = grads[0];
    const auto& gd1 = grads[1];
    const at::Tensor gd2 = grads.size() > 2 ? grads[2] : at::Tensor();
    if (!gd1.defined() && !gd2.defined())  // only t is used: the plain tanh backward
      return {gt.defined() ? gt * d1 : at::Tensor(), at::Tensor()};
    const bool record = at::GradMode::is_enabled();  // a double backward: out of place only
    // inner = g_t - 2 t g_t1 + (4 - 6 t1) g_t2; g_t itself is never modified in place
    at::Tensor inner = gt;
    if (gd1.defined())  // a fresh tensor from here on
      inner = gt.defined() ? at::addcmul(gt, t, gd1, -2) : t * gd1 * -2;
    if (gd2.defined()) {
      if (record) {
        auto term = gd2 * (4 - 6 * d1);
        inner = inner.defined() ? inner + term : term;
      } else if (gd1.defined()) {
        inner.add_(gd2, 4).addcmul_(gd2, d1, -6);
      } else {  // one out-of-place pass from g_t (no clone of it first)
        inner = (gt.defined() ? at::add(gt, gd2, 4) : gd2 * 4).addcmul_(gd2, d1, -6);
      }
    }
    return {record ? inner * d1 : inner.mul_(d1), at::Tensor()};
  }
};

// dot_over_tangents(A, B), differentiable: gA = g ⊙ B, gB = g ⊙ A (summed over the points for a
// shared B). With A and B the same tensor (the squares Σ_i J_i²) the two halves are one, 2 g ⊙ J.
// The backward is built from ATen ops, so it is differentiable again (gradgradcheck passes).
struct TangentDot : torch::autograd::Function<TangentDot> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& A, const at::Tensor& B) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({A, B});
    ctx->saved_data["same"] = A.is_same(B);
    return {dot_over_tangents(A, B)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    auto saved = ctx->get_saved_variables();
    const auto &A = saved[0], &B = saved[1];
    const auto g = grads[0].unsqueeze(1);  // (N, 1, w)
    if (ctx->saved_data["same"].toBool())
      return {ctx->needs_input_grad(0) ? product_like(A, A, 2 * g) : at::Tensor(), at::Tensor()};
    at::Tensor gA, gB;
    if (ctx->needs_input_grad(0)) gA = product_like(A, g, B);
    if (ctx->needs_input_grad(1)) {
      if (B.dim() != 2)
        gB = product_like(B, g, A);
      else  // shared by every point: summed over them
        gB = at::GradMode::is_enabled() ? (g * A).sum(0) : point_sum(grads[0], A);
    }
    return {gA, gB};
  }
};

// scaled_product, differentiable: (J ⊙ a) Wᵀ for tangents J (N, r, w), per-point column scales
// a (N, w) (an activation's σ') and Wt = Wᵀ (w, w'). The scaled tangents are never kept: per layer
// one (N, r, w) tensor less is held for the backward than autograd's mul + matmul would hold, and
// the backward recomputes them chunk by chunk. Differentiable again, as TangentDot.
struct ScaledProduct : torch::autograd::Function<ScaledProduct> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& J, const at::Tensor& a,
                               const at::Tensor& Wt) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({J, a, Wt});
    return {scaled_product(J, a, Wt)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];  // (N, r, w')
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto saved = ctx->get_saved_variables();
    const auto &J = saved[0], &a = saved[1], &Wt = saved[2];
    at::Tensor gJ, ga, gWt;
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      at::Tensor gJa;  // (N, r, w)
      if (at::GradMode::is_enabled()) {
        gJa = at::matmul(g, Wt.t());
      } else {
        gJa = cached_empty(J.sizes(), J);
        auto rows = gJa.view({-1, J.size(2)});
        at::mm_out(rows, g.reshape({-1, g.size(2)}), Wt.t());
      }
      const bool need_J = ctx->needs_input_grad(0), need_a = ctx->needs_input_grad(1);
      if (at::GradMode::is_enabled()) {  // recorded: out of place, gJa is kept
        if (need_a) ga = (gJa * J).sum(1);
        if (need_J) gJ = gJa * a.unsqueeze(1);
      } else if (need_a) {  // ga, and gJ = gJa ⊙ a in place in the same pass
        ga = dot_over_tangents(gJa, J, need_J ? a : at::Tensor());
        if (need_J) gJ = gJa;
      } else if (need_J) {
        gJ = gJa.mul_(a.unsqueeze(1));
      }
    }
    if (ctx->needs_input_grad(2)) {
      if (at::GradMode::is_enabled()) {  // recorded: differentiable ATen ops
        auto Ja = (J * a.unsqueeze(1)).reshape({-1, J.size(2)});
        gWt = at::mm(Ja.t(), g.reshape({-1, g.size(2)}));
      } else {
        gWt = scaled_gram(J, a, g);
      }
    }
    return {gJ, ga, gWt};
  }
};

// a @ P for per-point scales a (N, w) and P (w, k): the first product of tangents shared by every
// point (Tangents::linear), into a cached block. Its backward is the plain one.
at::Tensor shared_product_kernel(const at::Tensor& a, const at::Tensor& P) {
  at::NoGradGuard no_grad;
  auto out = cached_empty({a.size(0), P.size(1)}, a);
  return at::mm_out(out, a, P);
}

struct SharedProduct : torch::autograd::Function<SharedProduct> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& P) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({a, P});
    return {shared_product_kernel(a, P)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor()};
    auto saved = ctx->get_saved_variables();
    const auto &a = saved[0], &P = saved[1];
    return {ctx->needs_input_grad(0) ? at::mm(g, P.t()) : at::Tensor(),
            ctx->needs_input_grad(1) ? at::mm(a.t(), g) : at::Tensor()};
  }
};

// The tangent kernels, through their autograd Functions only where autograd records (the kernels
// alone otherwise: the same numbers, no graph).
std::tuple<at::Tensor, at::Tensor, at::Tensor> tanh_steps(const at::Tensor& h, bool second) {
  if (!recorded({h})) return tanh_kernel(h, second);
  auto out = TanhSteps::apply(h, second);
  return {out[0], out[1], second ? out[2] : at::Tensor()};
}
at::Tensor shared_product(const at::Tensor& a, const at::Tensor& P) {
  return recorded({a, P}) ? SharedProduct::apply(a, P)[0] : shared_product_kernel(a, P);
}
at::Tensor tangent_dot(const at::Tensor& A, const at::Tensor& B) {
  return recorded({A, B}) ? TangentDot::apply(A, B)[0] : dot_over_tangents(A, B);
}
at::Tensor tangent_product(const at::Tensor& J, const at::Tensor& a, const at::Tensor& Wt) {
  return recorded({J, a, Wt}) ? ScaledProduct::apply(J, a, Wt)[0] : scaled_product(J, a, Wt);
}

// The Laplacian's second-order term through an activation: L' = σ'' ⊙ S + σ' ⊙ L, all (N, w), with
// S the tangents' squares and L the term so far (after the Linear). One pass where ATen took two
// and a temporary; its backward g_σ'' = g ⊙ S, g_S = g ⊙ σ'', g_σ' = g ⊙ L, g_L = g ⊙ σ' in one
// pass where autograd's two nodes took four, each a fresh (N, w) tensor (at width 256 and N = 1024
// these passes cost about 1.4 ms per activation and training step). All four of one shape
// (curvature_step); the loop takes contiguous CPU tensors, ATen the rest.
at::Tensor curvature_step_kernel(const at::Tensor& d2, const at::Tensor& S, const at::Tensor& d1,
                                 const at::Tensor& L) {
  at::NoGradGuard no_grad;
  if (!loops_on_cpu({d2, S, d1, L})) return at::addcmul(d2 * S, d1, L);
  auto out = cached_empty(d2.sizes(), d2);
  AT_DISPATCH_FLOATING_TYPES(d2.scalar_type(), "curvature_step_kernel", [&] {
    const scalar_t *a = d2.const_data_ptr<scalar_t>(), *b = S.const_data_ptr<scalar_t>(),
                   *c = d1.const_data_ptr<scalar_t>(), *e = L.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, d2.numel(), at::internal::GRAIN_SIZE, [&](int64_t start, int64_t end) {
      for (int64_t k = start; k < end; ++k) o[k] = a[k] * b[k] + c[k] * e[k];
    });
  });
  return out;
}

// ∂/∂d2 = g S, ∂/∂S = g d2, ∂/∂d1 = g L, ∂/∂L = g d1: each input's gradient takes its partner.
constexpr std::array<int, 4> curvature_partner{1, 0, 3, 2};

// The four gradients of curvature_step_kernel for an incoming g, those `need`ed (d2, S, d1, L):
// out of place in ATen ops where autograd records (create_graph) or the loop cannot take them.
std::array<at::Tensor, 4> curvature_step_backward_kernel(const at::Tensor& g,
                                                         const std::array<at::Tensor, 4>& in,
                                                         const std::array<bool, 4>& need) {
  const auto& partner = curvature_partner;
  std::array<at::Tensor, 4> out;
  const auto gc = g.contiguous();
  if (at::GradMode::is_enabled() || !loops_on_cpu({gc, in[0], in[1], in[2], in[3]})) {
    for (int k = 0; k < 4; ++k)
      if (need[k]) out[k] = g * in[partner[k]];
    return out;
  }
  for (int k = 0; k < 4; ++k)
    if (need[k]) out[k] = cached_empty(gc.sizes(), gc);
  AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "curvature_step_backward_kernel", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    std::array<const scalar_t*, 4> ip{};
    std::array<scalar_t*, 4> op{};
    for (int k = 0; k < 4; ++k) {
      ip[k] = in[k].const_data_ptr<scalar_t>();
      op[k] = need[k] ? out[k].data_ptr<scalar_t>() : nullptr;
    }
    at::parallel_for(0, gc.numel(), at::internal::GRAIN_SIZE, [&](int64_t start, int64_t end) {
      for (int k = 0; k < 4; ++k) {
        if (!need[k]) continue;
        const scalar_t* __restrict__ q = ip[partner[k]];
        scalar_t* __restrict__ o = op[k];
        for (int64_t i = start; i < end; ++i) o[i] = gp[i] * q[i];
      }
    });
  });
  return out;
}

struct CurvatureStep : torch::autograd::Function<CurvatureStep> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& d2, const at::Tensor& S,
                               const at::Tensor& d1, const at::Tensor& L) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({d2, S, d1, L});
    return {curvature_step_kernel(d2, S, d1, L)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    if (!g.defined()) return variable_list(4);
    auto v = ctx->get_saved_variables();
    const std::array<at::Tensor, 4> in{v[0], v[1], v[2], v[3]};
    std::array<bool, 4> need{};
    for (int k = 0; k < 4; ++k) need[k] = ctx->needs_input_grad(k);
    const auto out = curvature_step_backward_kernel(g, in, need);
    return {out[0], out[1], out[2], out[3]};
  }
};

// σ'' ⊙ S + σ' ⊙ L, or σ'' ⊙ S while L is zero (undefined); CurvatureStep where autograd records.
at::Tensor curvature_step(const at::Tensor& d2, const at::Tensor& S, const at::Tensor& d1,
                          const at::Tensor& L) {
  if (!L.defined()) return d2 * S;
  if (S.sizes() != d2.sizes()) return at::addcmul(d2 * S, d1, L);  // a shared core's squares (w,)
  return recorded({d2, S, d1, L}) ? CurvatureStep::apply(d2, S, d1, L)[0]
                                  : curvature_step_kernel(d2, S, d1, L);
}

// The shared product matrix P[j, (i, l)] = C[j, i] Wt[j, l], (w, r·w'), of a shared core C = coreᵀ
// (w, r) and the next Linear's Wt (w, w'): row j of P is the outer product of C's and Wt's rows j.
// Its backward takes both gradients in one pass over gP, row by row:
//   gC[j, i] = Σ_l gP[j, i, l] Wt[j, l],   gWt[j, l] = Σ_i gP[j, i, l] C[j, i],
// where autograd's broadcast product took two products of P's size and two sums (at width 256 and
// r = 8, 1.7 ms per training step for a 4 MiB P). The loops take float and double CPU tensors of
// any strides; ATen the rest.
at::Tensor outer_rows_kernel(const at::Tensor& C, const at::Tensor& Wt) {
  at::NoGradGuard no_grad;
  const auto w = C.size(0), r = C.size(1), out = Wt.size(1);
  if (!loops_on_cpu({C}) || !plain_cpu(Wt) || Wt.scalar_type() != C.scalar_type())
    return (C.unsqueeze(2) * Wt.unsqueeze(1)).reshape({w, r * out});
  auto P = cached_empty({w, r * out}, C);
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "outer_rows_kernel", [&] {
    const scalar_t *c = C.const_data_ptr<scalar_t>(), *wt = Wt.const_data_ptr<scalar_t>();
    const auto s0 = Wt.stride(0), s1 = Wt.stride(1);
    scalar_t* p = P.data_ptr<scalar_t>();
    parallel_points(w, r * out, [&](int64_t start, int64_t end) {
      for (int64_t j = start; j < end; ++j)
        for (int64_t i = 0; i < r; ++i) {
          const scalar_t cji = c[j * r + i];
          scalar_t* __restrict__ row = p + (j * r + i) * out;
          for (int64_t l = 0; l < out; ++l) row[l] = cji * wt[j * s0 + l * s1];
        }
    });
  });
  return P;
}

struct OuterRows : torch::autograd::Function<OuterRows> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& C, const at::Tensor& Wt) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({C, Wt});
    return {outer_rows_kernel(C, Wt)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor()};
    auto v = ctx->get_saved_variables();
    const auto &C = v[0], &Wt = v[1];
    const auto w = C.size(0), r = C.size(1), out = Wt.size(1);
    const bool needC = ctx->needs_input_grad(0), needW = ctx->needs_input_grad(1);
    const auto g3 = g.reshape({w, r, out});
    if (at::GradMode::is_enabled() || !loops_on_cpu({C, g3}) || !plain_cpu(Wt) ||
        Wt.scalar_type() != C.scalar_type()) {  // recorded (create_graph) or not ours: ATen
      return {needC ? (g3 * Wt.unsqueeze(1)).sum(2) : at::Tensor(),
              needW ? (g3 * C.unsqueeze(2)).sum(1) : at::Tensor()};
    }
    at::Tensor gC = needC ? at::empty({w, r}, C.options()) : at::Tensor();
    at::Tensor gW = needW ? at::empty({w, out}, C.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "outer_rows_backward", [&] {
      const scalar_t *gp = g3.const_data_ptr<scalar_t>(), *c = C.const_data_ptr<scalar_t>(),
                     *wt = Wt.const_data_ptr<scalar_t>();
      const auto s0 = Wt.stride(0), s1 = Wt.stride(1);
      scalar_t* gc = needC ? gC.data_ptr<scalar_t>() : nullptr;
      scalar_t* gw = needW ? gW.data_ptr<scalar_t>() : nullptr;
      parallel_points(w, r * out, [&](int64_t start, int64_t end) {
        std::vector<scalar_t> wrow(out);
        for (int64_t j = start; j < end; ++j) {
          for (int64_t l = 0; l < out; ++l) wrow[l] = wt[j * s0 + l * s1];
          scalar_t* __restrict__ gwj = needW ? gw + j * out : nullptr;
          if (needW) std::fill(gwj, gwj + out, scalar_t(0));
          for (int64_t i = 0; i < r; ++i) {
            const scalar_t* __restrict__ row = gp + (j * r + i) * out;
            if (needC) {
              scalar_t acc = 0;
              for (int64_t l = 0; l < out; ++l) acc += row[l] * wrow[l];
              gc[j * r + i] = acc;
            }
            if (needW) {
              const scalar_t cji = c[j * r + i];
              for (int64_t l = 0; l < out; ++l) gwj[l] += row[l] * cji;
            }
          }
        }
      });
    });
    return {gC, gW};
  }
};

at::Tensor outer_rows(const at::Tensor& C, const at::Tensor& Wt) {
  return recorded({C, Wt}) ? OuterRows::apply(C, Wt)[0] : outer_rows_kernel(C, Wt);
}

// One Laplacian step of batched tangents J (N, r, w) through an activation with σ' = a (N, w) and
// on through the next Linear (Wt = Wᵀ): the squares S = Σ_i J_i² (N, w) and the next tangents
// (J ⊙ a) Wᵀ (ScaledProduct), as one autograd node, so that the backward takes J's gradient from
// both in one pass, ∂/∂J = (g Wt ⊙ a) + 2 g_S ⊙ J, with ga in the same pass (dot_over_tangents):
// autograd's two nodes took four passes over (N, r, w) for it and a fifth to add the two halves.
// The recorded backward (create_graph) is ATen ops, differentiable again.
std::pair<at::Tensor, at::Tensor> squares_and_product_kernel(const at::Tensor& J, const at::Tensor& a,
                                                             const at::Tensor& Wt) {
  auto S = at::empty({J.size(0), J.size(2)}, J.options());
  auto Jn = scaled_product(J, a, Wt, S);
  return {S, Jn};
}

struct SquaresAndProduct : torch::autograd::Function<SquaresAndProduct> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& J, const at::Tensor& a,
                               const at::Tensor& Wt) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({J, a, Wt});
    auto [S, Jn] = squares_and_product_kernel(J, a, Wt);
    return {S, Jn};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto &gS = grads[0], &gN = grads[1];  // (N, w), (N, r, w')
    auto saved = ctx->get_saved_variables();
    const auto &J = saved[0], &a = saved[1], &Wt = saved[2];
    const bool need_J = ctx->needs_input_grad(0), need_a = ctx->needs_input_grad(1);
    at::Tensor gJ, ga, gWt;
    if (at::GradMode::is_enabled()) {  // recorded: out of place
      if (gN.defined()) {
        auto gJa = at::matmul(gN, Wt.t());
        if (need_a) ga = (gJa * J).sum(1);
        if (need_J) gJ = gJa * a.unsqueeze(1);
        if (ctx->needs_input_grad(2))
          gWt = at::mm((J * a.unsqueeze(1)).reshape({-1, J.size(2)}).t(), gN.reshape({-1, gN.size(2)}));
      }
      if (gS.defined() && need_J) {
        auto term = 2 * gS.unsqueeze(1) * J;
        gJ = gJ.defined() ? gJ + term : term;
      }
      return {gJ, ga, gWt};
    }
    if (!gN.defined()) {  // only the squares are used
      if (gS.defined() && need_J) gJ = product_like(J, J, 2 * gS.unsqueeze(1));
      return {gJ, ga, gWt};
    }
    if (need_J || need_a) {
      auto gJa = cached_empty(J.sizes(), J);  // ∂/∂(J ⊙ a), then ∂/∂J in place
      auto rows = gJa.view({-1, J.size(2)});
      at::mm_out(rows, gN.reshape({-1, gN.size(2)}), Wt.t());
      auto dot = dot_over_tangents(gJa, J, a, gS);  // ga, and gJa ← gJa ⊙ a + 2 gS ⊙ J
      if (need_a) ga = dot;
      if (need_J) gJ = gJa;
    }
    if (ctx->needs_input_grad(2)) gWt = scaled_gram(J, a, gN);
    return {gJ, ga, gWt};
  }
};

// (Σ_i J_i², (J ⊙ a) Wᵀ) for batched tangents J: SquaresAndProduct where autograd records.
std::pair<at::Tensor, at::Tensor> squares_and_product(const at::Tensor& J, const at::Tensor& a,
                                                      const at::Tensor& Wt) {
  if (!recorded({J, a, Wt})) return squares_and_product_kernel(J, a, Wt);
  auto out = SquaresAndProduct::apply(J, a, Wt);
  return {out[0], out[1]};
}

// The divergence's meeting trace when the adjoint side is still deferred: with tangents K
// (N, r, w) (a core, or a_K @ P_K formed here) and the adjoints L = b @ P (b (N, w_in),
// P (w_in, r·w)) never formed,
//   t[n] = Σ_{i,l} K[n, i, l] s[n, l] L[n, i, l] = Σ_m b[n, m] G[n, m],   G = (K ⊙ s) Pᵀ,
// one (N, r·w) @ (r·w, w_in) product in place of forming L (the same arithmetic) and tracing
// K ⊙ L: no second (N, r, w) tensor is written and read back, and the trace is a product. s (N, w)
// is the pending σ' between them (undefined: 1). Returns t and, with `keep`, K (formed), E = K ⊙ s
// and G for the backward. Not recorded (MeetTrace is its differentiable form).
struct MeetInputs {
  at::Tensor K0, K1;  // K: the core (N, r, w) and no K1, or K0 @ K1 with K0 (N, w_in), K1 (w_in, r·w)
  at::Tensor b, P;    // the deferred adjoints b @ P
  at::Tensor s;       // (N, w) or undefined
  int64_t r = 0;
  int64_t n() const { return b.size(0); }
  int64_t w() const { return P.size(1) / r; }
  // K, (N, r·w): formed (into a cached block) when deferred.
  at::Tensor K() const {
    return K1.defined() ? shared_product_kernel(K0, K1) : K0.reshape({n(), -1});
  }
  // K ⊙ s, (N, r·w); in place into K when `in_place` (K a temporary).
  at::Tensor scaled(const at::Tensor& K, bool in_place) const {
    if (!s.defined()) return K;
    auto K3 = K.view({n(), r, w()});
    const auto s3 = s.unsqueeze(1);
    if (in_place) return K3.mul_(s3).view({n(), -1});
    auto out = cached_empty(K.sizes(), K);
    auto out3 = out.view({n(), r, w()});
    at::mul_out(out3, K3, s3);
    return out;
  }
};

std::array<at::Tensor, 4> meet_kernel(const MeetInputs& in, bool keep) {
  at::NoGradGuard no_grad;
  auto K = in.K();
  auto E = in.scaled(K, !keep && in.K1.defined());
  auto G = at::mm(E, in.P.t());  // (N, w_in)
  auto t = (keep ? G * in.b : G.mul_(in.b)).sum(-1);
  if (!keep) return {t};
  return {t, K, E, G};
}

// The gradients of the trace for an incoming g (N,), with gG = g b:
//   gb = g G,   gP = gGᵀ (K ⊙ s),   gE = gG P (N, r·w),   gs = Σ_i gE ⊙ K,   gK = gE ⊙ s,
// and for a deferred K: gK0 = gK K1ᵀ, gK1 = K0ᵀ gK. `need`: K0, K1, b, P, s. Not recorded.
std::array<at::Tensor, 5> meet_backward_kernel(const MeetInputs& in, const at::Tensor& K,
                                               const at::Tensor& E, const at::Tensor& G,
                                               const at::Tensor& g,
                                               const std::array<bool, 5>& need) {
  at::NoGradGuard no_grad;
  std::array<at::Tensor, 5> out;
  const auto g1 = g.unsqueeze(1);
  if (need[2]) out[2] = G * g1;
  if (!need[0] && !need[1] && !need[3] && !need[4]) return out;
  const auto gG = in.b * g1;  // (N, w_in)
  if (need[3]) out[3] = at::mm(gG.t(), E);
  if (!need[0] && !need[1] && !need[4]) return out;
  auto gE = shared_product_kernel(gG, in.P);  // (N, r·w)
  const auto gE3 = gE.view({in.n(), in.r, in.w()});
  const bool gK = need[0] || need[1];
  if (need[4])  // gs, and gK = gE ⊙ s in the same pass
    out[4] = dot_over_tangents(gE3, K.view({in.n(), in.r, in.w()}), gK ? in.s : at::Tensor());
  else if (gK && in.s.defined())
    gE3.mul_(in.s.unsqueeze(1));
  if (!gK) return out;
  if (!in.K1.defined()) {
    if (need[0]) out[0] = gE3;
  } else {
    if (need[0]) out[0] = at::mm(gE, in.K1.t());
    if (need[1]) out[1] = at::mm(in.K0.t(), gE);
  }
  return out;
}

// meet_kernel, differentiable. Inputs: K0, K1 (none: K0 is the core), b, P, s (none: 1); r the
// number of tangents. Absent inputs are optional (autograd takes no undefined tensor as an input)
// and have no edge, so needs_input_grad counts the present ones only. The recorded backward
// (create_graph) is the same formulas in out-of-place ATen ops, differentiable again.
struct MeetTrace : torch::autograd::Function<MeetTrace> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& K0,
                               const std::optional<at::Tensor>& K1, const at::Tensor& b,
                               const at::Tensor& P, const std::optional<at::Tensor>& s, int64_t r) {
    ctx->set_materialize_grads(false);
    MeetInputs in{K0, K1.value_or(at::Tensor()), b, P, s.value_or(at::Tensor()), r};
    auto [t, K, E, G] = meet_kernel(in, true);
    ctx->save_for_backward({in.K0, in.K1, b, P, in.s, K, E, G});
    ctx->saved_data["r"] = r;
    return {t};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    if (!g.defined()) return variable_list(6);
    auto v = ctx->get_saved_variables();
    const MeetInputs in{v[0], v[1], v[2], v[3], v[4], ctx->saved_data["r"].toInt()};
    std::array<bool, 5> need{};
    for (size_t k = 0, edge = 0; k < need.size(); ++k)
      need[k] = v[k].defined() && ctx->needs_input_grad(edge++);
    std::array<at::Tensor, 5> out;
    if (at::GradMode::is_enabled()) {  // recorded: out of place, from the inputs (not the saved K, G)
      const auto n = in.n(), r = in.r, w = in.w();
      const auto K = in.K1.defined() ? at::mm(in.K0, in.K1) : in.K0.reshape({n, -1});
      const auto E = in.s.defined() ? (K.view({n, r, w}) * in.s.unsqueeze(1)).reshape({n, -1}) : K;
      const auto g1 = g.unsqueeze(1);
      if (need[2]) out[2] = at::mm(E, in.P.t()) * g1;
      const auto gG = in.b * g1;
      if (need[3]) out[3] = at::mm(gG.t(), E);
      if (need[0] || need[1] || need[4]) {
        const auto gE = at::mm(gG, in.P).view({n, r, w});
        if (need[4]) out[4] = (gE * K.view({n, r, w})).sum(1);
        const auto gK = in.s.defined() ? gE * in.s.unsqueeze(1) : gE;
        if (!in.K1.defined()) {
          if (need[0]) out[0] = gK;
        } else {
          if (need[0]) out[0] = at::mm(gK.reshape({n, -1}), in.K1.t());
          if (need[1]) out[1] = at::mm(in.K0.t(), gK.reshape({n, -1}));
        }
      }
    } else {
      out = meet_backward_kernel(in, v[5], v[6], v[7], g, need);
    }
    return {out[0], out[1], out[2], out[3], out[4], at::Tensor()};
  }
};

// The divergence's meeting trace when both sides are still deferred, tangents K = a @ A and
// adjoints L = b @ P (a (N, wj), A (wj, r·wl), b (N, wm), P (wm, r·wl)), with s (N, wl) between:
//   t[n] = Σ_{i,l} (a A)[n, (i, l)] s[n, l] (b P)[n, (i, l)] = Σ_{j,m,l} a[n, j] b[n, m] s[n, l] C[j, m, l],
//   C[j, m, l] = Σ_i A[j, (i, l)] P[m, (i, l)],
// a trilinear form with a tensor C shared by every point (meet_cube_tensor). Its value per point is
// one (N, wj) @ (wj, wm·wl) product X = a C and one pass, t = Σ_m b_m Σ_l X_{m,l} s_l: wj·wm·wl
// multiply-adds per point, whatever the number r of tangents, where MeetTrace takes r·wl·(wj + wm)
// (fewer when r < wj·wm / (wj + wm), half the width for equal widths). The backward takes two
// products of the same size (MeetTrace: four of its own), gb and gs come from the pass's by-products
// u = X s and y = bᵀX, and X is not kept.

// C[j, m, l] = M[j, m] Ua[j, l] Ub[m, l] as (wj, wm·wl): the trilinear form's tensor (MeetCube)
// from its factors, one pass (ATen's broadcast products took two, and several in the backward).
at::Tensor cube_tensor_kernel(const at::Tensor& M, const at::Tensor& Ua, const at::Tensor& Ub) {
  at::NoGradGuard no_grad;
  const auto wj = M.size(0), wm = M.size(1), wl = Ua.size(1);
  const auto ua = Ua.contiguous(), ub = Ub.contiguous();  // Wᵀ is a transposed view
  if (!loops_on_cpu({M, ua, ub}))
    return (M.unsqueeze(2) * Ua.unsqueeze(1) * Ub.unsqueeze(0)).view({wj, wm * wl});
  auto C = cached_empty({wj, wm * wl}, M);
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "cube_tensor_kernel", [&] {
    const scalar_t *mv = M.const_data_ptr<scalar_t>(), *av = ua.const_data_ptr<scalar_t>(),
                   *bv = ub.const_data_ptr<scalar_t>();
    scalar_t* cv = C.mutable_data_ptr<scalar_t>();
    parallel_points(wj, wm * wl, [&](int64_t start, int64_t end) {
      for (int64_t j = start; j < end; ++j)
        for (int64_t m = 0; m < wm; ++m) {
          const scalar_t c = mv[j * wm + m];
          const scalar_t* __restrict__ aj = av + j * wl;
          const scalar_t* __restrict__ bm = bv + m * wl;
          scalar_t* __restrict__ row = cv + (j * wm + m) * wl;
          for (int64_t l = 0; l < wl; ++l) row[l] = c * aj[l] * bm[l];  // ATen's order
        }
    });
  });
  return C;
}

// cube_tensor_kernel, differentiable: gM[j, m] = Σ_l g Ua Ub, gUa[j, l] = Σ_m g M Ub,
// gUb[m, l] = Σ_j g M Ua, two passes over g on a CPU (by rows j, then by m); ATen ops when
// recorded (create_graph), differentiable again.
struct CubeTensor : torch::autograd::Function<CubeTensor> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& M, const at::Tensor& Ua,
                               const at::Tensor& Ub) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({M, Ua, Ub});
    return {cube_tensor_kernel(M, Ua, Ub)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    if (!g.defined()) return variable_list(3);
    auto v = ctx->get_saved_variables();
    const auto &M = v[0], &Ua = v[1], &Ub = v[2];
    const auto wj = M.size(0), wm = M.size(1), wl = Ua.size(1);
    const bool needM = ctx->needs_input_grad(0), needA = ctx->needs_input_grad(1),
               needB = ctx->needs_input_grad(2);
    const auto g3 = g.reshape({wj, wm, wl});
    const auto ua = Ua.contiguous(), ub = Ub.contiguous();
    if (at::GradMode::is_enabled() || !loops_on_cpu({M, ua, ub, g3})) {
      const auto ga = g3 * Ua.unsqueeze(1);  // g Ua
      const auto gb = g3 * Ub.unsqueeze(0);  // g Ub
      return {needM ? (ga * Ub.unsqueeze(0)).sum(2) : at::Tensor(),
              needA ? (gb * M.unsqueeze(2)).sum(1) : at::Tensor(),
              needB ? (ga * M.unsqueeze(2)).sum(0) : at::Tensor()};
    }
    at::Tensor gM = needM ? at::empty({wj, wm}, M.options()) : at::Tensor();
    at::Tensor gA = needA ? at::zeros({wj, wl}, M.options()) : at::Tensor();
    at::Tensor gB = needB ? at::zeros({wm, wl}, M.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "cube_tensor_backward", [&] {
      constexpr int kLanes = 8;
      const scalar_t *gv = g3.const_data_ptr<scalar_t>(), *mv = M.const_data_ptr<scalar_t>(),
                     *av = ua.const_data_ptr<scalar_t>(), *bv = ub.const_data_ptr<scalar_t>();
      if (needM || needA)
        parallel_points(wj, wm * wl, [&](int64_t start, int64_t end) {
          for (int64_t j = start; j < end; ++j) {
            const scalar_t* __restrict__ aj = av + j * wl;
            scalar_t* __restrict__ gaj = needA ? gA.mutable_data_ptr<scalar_t>() + j * wl : nullptr;
            for (int64_t m = 0; m < wm; ++m) {
              const scalar_t* __restrict__ row = gv + (j * wm + m) * wl;
              const scalar_t* __restrict__ bm = bv + m * wl;
              const scalar_t c = mv[j * wm + m];
              if (needM) {
                scalar_t acc[kLanes] = {};
                int64_t l = 0;
                for (; l + kLanes <= wl; l += kLanes)
                  for (int q = 0; q < kLanes; ++q) acc[q] += row[l + q] * aj[l + q] * bm[l + q];
                for (; l < wl; ++l) acc[0] += row[l] * aj[l] * bm[l];
                scalar_t sum = 0;
                for (int q = 0; q < kLanes; ++q) sum += acc[q];
                gM.mutable_data_ptr<scalar_t>()[j * wm + m] = sum;
              }
              if (needA)
                for (int64_t l = 0; l < wl; ++l) gaj[l] += row[l] * c * bm[l];
            }
          }
        });
      if (needB)
        parallel_points(wm, wj * wl, [&](int64_t start, int64_t end) {
          for (int64_t m = start; m < end; ++m) {
            scalar_t* __restrict__ gbm = gB.mutable_data_ptr<scalar_t>() + m * wl;
            for (int64_t j = 0; j < wj; ++j) {
              const scalar_t* __restrict__ row = gv + (j * wm + m) * wl;
              const scalar_t* __restrict__ aj = av + j * wl;
              const scalar_t c = mv[j * wm + m];
              for (int64_t l = 0; l < wl; ++l) gbm[l] += row[l] * c * aj[l];
            }
          }
        });
    });
    return {gM, gA, gB};
  }
};

// C (wj, wm·wl) from the factors of A[j, (i, l)] = Fa[j, i] Ua[j, l] and P[m, (i, l)] = Fb[m, i]
// Ub[m, l] (outer_rows): C[j, m, l] = (Fa Fbᵀ)[j, m] Ua[j, l] Ub[m, l], a (wj, r) @ (r, wm) product
// and one pass (CubeTensor).
at::Tensor meet_cube_tensor(const at::Tensor& Fa, const at::Tensor& Ua, const at::Tensor& Fb,
                            const at::Tensor& Ub) {
  const auto M = at::mm(Fa, Fb.t());  // (wj, wm)
  return recorded({M, Ua, Ub}) ? CubeTensor::apply(M, Ua, Ub)[0] : cube_tensor_kernel(M, Ua, Ub);
}

// t (N,), u (N, wm) = Σ_l X[n, m, l] s[n, l] and y (N, wl) = Σ_m b[n, m] X[n, m, l] for X = a C:
// one pass over X per point after the product, X into a cached block. Not recorded.
std::array<at::Tensor, 3> meet_cube_kernel(const at::Tensor& a, const at::Tensor& b,
                                           const at::Tensor& s, const at::Tensor& C) {
  at::NoGradGuard no_grad;
  const auto n = a.size(0), wm = b.size(1), wl = s.size(1);
  auto X = cached_empty({n, wm * wl}, a);
  at::mm_out(X, a, C);
  if (!loops_on_cpu({X, b, s})) {
    const auto X3 = X.view({n, wm, wl});
    auto u = at::bmm(X3, s.unsqueeze(2)).squeeze(2);
    return {(b * u).sum(-1), u, at::bmm(b.unsqueeze(1), X3).squeeze(1)};
  }
  auto t = at::empty({n}, a.options());
  auto u = at::empty({n, wm}, a.options());
  auto y = at::empty({n, wl}, a.options());
  constexpr int kLanes = 8;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "meet_cube_kernel", [&] {
    const auto* x = X.const_data_ptr<scalar_t>();
    const auto* bv = b.const_data_ptr<scalar_t>();
    const auto* sv = s.const_data_ptr<scalar_t>();
    auto* tv = t.mutable_data_ptr<scalar_t>();
    auto* uv = u.mutable_data_ptr<scalar_t>();
    auto* yv = y.mutable_data_ptr<scalar_t>();
    parallel_points(n, wm * wl, [&](int64_t start, int64_t end) {
      for (int64_t p = start; p < end; ++p) {
        const scalar_t* __restrict__ xp = x + p * wm * wl;
        const scalar_t* __restrict__ bp = bv + p * wm;
        const scalar_t* __restrict__ sp = sv + p * wl;
        scalar_t* __restrict__ up = uv + p * wm;
        scalar_t* __restrict__ yp = yv + p * wl;
        for (int64_t l = 0; l < wl; ++l) yp[l] = 0;
        scalar_t total = 0;
        for (int64_t m = 0; m < wm; ++m) {
          const scalar_t* __restrict__ row = xp + m * wl;
          const scalar_t bm = bp[m];
          // the dot in kLanes partial sums (independent chains the compiler vectorises), the
          // axpy alongside
          scalar_t acc[kLanes] = {};
          int64_t l = 0;
          for (; l + kLanes <= wl; l += kLanes) {
            for (int q = 0; q < kLanes; ++q) {
              acc[q] += row[l + q] * sp[l + q];
              yp[l + q] += bm * row[l + q];
            }
          }
          for (; l < wl; ++l) {
            acc[0] += row[l] * sp[l];
            yp[l] += bm * row[l];
          }
          scalar_t dot = 0;
          for (int q = 0; q < kLanes; ++q) dot += acc[q];
          up[m] = dot;
          total += bm * dot;
        }
        tv[p] = total;
      }
    });
  });
  return {t, u, y};
}

// The gradients for an incoming g (N,): ga = V Cᵀ and gC = aᵀ V with V[n, (m, l)] = g b s (an
// outer product per point, into a cached block), gb = g u, gs = g y. `need`: a, b, s, C. Not
// recorded.
std::array<at::Tensor, 4> meet_cube_backward_kernel(const at::Tensor& a, const at::Tensor& b,
                                                    const at::Tensor& s, const at::Tensor& C,
                                                    const at::Tensor& u, const at::Tensor& y,
                                                    const at::Tensor& g,
                                                    const std::array<bool, 4>& need) {
  at::NoGradGuard no_grad;
  std::array<at::Tensor, 4> out;
  const auto g1 = g.unsqueeze(1);
  if (need[1]) out[1] = u * g1;
  if (need[2]) out[2] = y * g1;
  if (!need[0] && !need[3]) return out;
  const auto n = a.size(0), wm = b.size(1), wl = s.size(1);
  auto V = cached_empty({n, wm * wl}, a);
  auto V3 = V.view({n, wm, wl});
  at::mul_out(V3, (b * g1).unsqueeze(2), s.unsqueeze(1));
  if (need[0]) out[0] = at::mm(V, C.t());
  if (need[3]) out[3] = at::mm(a.t(), V);
  return out;
}

// meet_cube_kernel, differentiable (inputs a, b, s, C). The recorded backward (create_graph) is
// the same formulas in out-of-place ATen ops from the inputs, differentiable again.
struct MeetCube : torch::autograd::Function<MeetCube> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                               const at::Tensor& s, const at::Tensor& C) {
    ctx->set_materialize_grads(false);
    auto [t, u, y] = meet_cube_kernel(a, b, s, C);
    ctx->save_for_backward({a, b, s, C, u, y});
    return {t};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = grads[0];
    if (!g.defined()) return variable_list(4);
    auto v = ctx->get_saved_variables();
    const auto &a = v[0], &b = v[1], &s = v[2], &C = v[3];
    std::array<bool, 4> need{};
    for (size_t k = 0; k < need.size(); ++k) need[k] = ctx->needs_input_grad(k);
    std::array<at::Tensor, 4> out;
    if (at::GradMode::is_enabled()) {  // recorded: out of place, from the inputs
      const auto n = a.size(0), wm = b.size(1), wl = s.size(1);
      const auto g1 = g.unsqueeze(1);
      if (need[1] || need[2]) {
        const auto X3 = at::mm(a, C).view({n, wm, wl});
        if (need[1]) out[1] = at::bmm(X3, s.unsqueeze(2)).squeeze(2) * g1;
        if (need[2]) out[2] = at::bmm(b.unsqueeze(1), X3).squeeze(1) * g1;
      }
      if (need[0] || need[3]) {
        const auto V = ((b * g1).unsqueeze(2) * s.unsqueeze(1)).reshape({n, -1});
        if (need[0]) out[0] = at::mm(V, C.t());
        if (need[3]) out[3] = at::mm(a.t(), V);
      }
    } else {
      out = meet_cube_backward_kernel(a, b, s, C, v[4], v[5], g, need);
    }
    return {out[0], out[1], out[2], out[3]};
  }
};

at::Tensor meet_cube(const at::Tensor& a, const at::Tensor& Fa, const at::Tensor& Ua,
                     const at::Tensor& b, const at::Tensor& Fb, const at::Tensor& Ub,
                     const at::Tensor& s) {
  const auto C = meet_cube_tensor(Fa, Ua, Fb, Ub);
  const auto scale = s.defined() ? s : at::ones({a.size(0), Ua.size(1)}, a.options());
  if (recorded({a, b, scale, C})) return MeetCube::apply(a, b, scale, C)[0];
  return meet_cube_kernel(a, b, scale, C)[0];
}

// The tangents of every point: J = Q · core · diag(scale), where the core is `shared` (r, w), the
// same for all points, or `batched` (N, r, w); scale (N, w) is a pending per-point column scale
// (the activations' σ' since the last Linear; undefined: none), applied inside the next product.
// Q (d, r) has orthonormal columns, or is undefined (the identity, r = d).
struct Tangents {
  at::Tensor core;   // (r, w) or (N, r, w); undefined while deferred
  at::Tensor scale;  // (N, w) or undefined
  at::Tensor Q;      // (d, r) or undefined
  bool shared = true;
  // With `defer` (the divergence), the product that makes a shared core batched is kept as
  // core = left @ right, (N, w) @ (w, r·w'), and formed only where it is used: meet_trace takes
  // the adjoints' through a product instead (MeetTrace), every other use forms it (form()).
  bool defer = false;
  // right = P[j, (i, l)] = factor[j, i] Wᵀ[j, l] (outer_rows), built when first asked for (the
  // trilinear meeting trace, MeetCube, takes the two factors instead).
  at::Tensor left, factor, factor_Wt;
  int64_t rows = 0;  // r, while deferred
  at::Tensor right_;

  bool deferred() const { return factor.defined(); }
  const at::Tensor& right() {
    if (!right_.defined()) right_ = outer_rows(factor, factor_Wt);
    return right_;
  }
  void form(int64_t n) {
    if (!deferred()) return;
    core = shared_product(left, right()).view({n, rows, factor_Wt.size(1)});
    left = factor = factor_Wt = right_ = at::Tensor();
  }

  // Through an activation with a = σ'(h): with `squares`, returns Σ_i J_i² per point and unit,
  // (N, w), or (w,) for a shared core without scale (invariant under Q); with `keep`, sets
  // J ← J diag(a) (pending, no pass over the tangents).
  at::Tensor activation(const at::Tensor& a, bool keep, bool squares) {
    at::Tensor sums;
    if (squares) {
      form(a.size(0));
      if (shared)
        sums = (core * core).sum(0);
      else
        sums = tangent_dot(core, core);
      if (scale.defined()) sums = scale * scale * sums;
    }
    if (keep) scale = scale.defined() ? scale * a : a;
    return sums;
  }
  // J ← J Wᵀ. A shared core with a pending scale a becomes batched in one product:
  // (core · diag(a_n) · Wᵀ)[i, l] = Σ_j a_n[j] core[i, j] Wᵀ[j, l], i.e. a (N, w) @ P (w, r·w').
  void linear(const at::Tensor& Wt, int64_t n) {
    form(n);
    const auto r = core.size(-2), out = Wt.size(1);
    if (!shared) {
      core = scale.defined() ? tangent_product(core, scale, Wt) : at::matmul(core, Wt);
    } else if (!scale.defined()) {
      core = at::mm(core, Wt);
    } else if (n < Wt.size(0)) {
      // Fewer points than units: P below costs more to build (w·r·w' entries, and its gradient as
      // many) than scaling the core per point (N·r·w) and one (N·r, w) @ (w, w') product, the same
      // multiply-adds. One point's divergence training step at d = 8, width 64: 0.77 -> 0.40 ms.
      core = at::mm(batched(n).reshape({-1, Wt.size(0)}), Wt).view({n, r, out});
      shared = false;
    } else {
      // P[j, (i, l)] = core[i, j] Wᵀ[j, l], (w, r·w') (outer_rows, from coreᵀ as rows: a copy of
      // this (w, r) matrix where core.t() is a transposed view, as for the adjoints)
      if (defer) {
        left = scale;
        factor = core.t().contiguous();
        factor_Wt = Wt;
        rows = r;
        core = at::Tensor();
      } else {
        core = shared_product(scale, outer_rows(core.t().contiguous(), Wt)).view({n, r, out});
      }
      shared = false;
    }
    scale = at::Tensor();
  }
  // Σ_l c[n, j, l] T[n, i, l] T[n, k, l] for T = core · diag(scale), c (N, m, w): the curvature
  // term T diag(c_j) Tᵀ of every point and output component, (N, m, r, r). A shared core takes one
  // (N·m, w) @ (w, r·r) product.
  at::Tensor curvature(const at::Tensor& c, int64_t n) const {
    TORCH_INTERNAL_ASSERT(!deferred(), "curvature of deferred tangents");
    const auto r = core.size(-2), w = core.size(-1), m = c.size(1);
    const auto cs = scale.defined() ? c * (scale * scale).unsqueeze(1) : c;  // (N, m, w)
    if (shared) {
      auto P = (core.t().unsqueeze(2) * core.t().unsqueeze(1)).view({w, r * r});
      return at::mm(cs.reshape({-1, w}), P).view({n, m, r, r});
    }
    return at::matmul(core.unsqueeze(1) * cs.unsqueeze(2), core.transpose(1, 2).unsqueeze(1));
  }
  // The tangents of every point, Q omitted: core · diag(scale), (N, r, w).
  at::Tensor batched(int64_t n) {
    form(n);
    if (!shared) return scale.defined() ? core * scale.unsqueeze(1) : core;
    if (scale.defined()) return scale.unsqueeze(1) * core.unsqueeze(0);
    return core.unsqueeze(0).expand({n, core.size(0), core.size(1)});
  }
};

// Whether two deferred sides meet in the trilinear form (MeetCube: wj·wm·wl multiply-adds per
// point, forward and each of its two backward products) rather than by MeetTrace's products
// (r·wl·(wj + wm) each): when that is fewer, r > w/2 for equal widths. At the tie (r = w/2) the
// products were faster on a 2-core Xeon (float64, N = 1024, w = 64, d = 32: eval 5.9 against
// 7.1 ms, training even); at d = 128 (r = 64) the form is 1.7x faster in eval and 2x in training.
bool meet_by_cube(int64_t wj, int64_t wm, int64_t r) { return wj * wm < r * (wj + wm); }

// Σ_{i,l} F[n, i, l] B[n, i, l] per point (N,) for F = F.core · diag(F.scale) and
// B = B.core · diag(B.scale) in the same basis: tr(B_k F_k), the divergence where the tangents
// coming forward meet the adjoints going back (value_and_derivative), with no product formed.
// When both sides are batched over the points and one is still deferred, MeetTrace never forms
// that one; when both are, MeetCube forms neither where it takes fewer products (meet_by_cube).
at::Tensor meet_trace(Tangents& F, Tangents& B, int64_t n) {
  const auto scale = !F.scale.defined() ? B.scale
                     : B.scale.defined() ? F.scale * B.scale
                                         : F.scale;
  if (!F.shared && !B.shared && (F.deferred() || B.deferred())) {
    // the deferred side is traced by its product, the other one formed (MeetTrace)
    auto& L = B.deferred() ? B : F;
    auto& K = B.deferred() ? F : B;
    const auto r = L.rows;
    if (K.deferred() && meet_by_cube(K.left.size(1), L.left.size(1), r))
      return meet_cube(K.left, K.factor, K.factor_Wt, L.left, L.factor, L.factor_Wt, scale);
    MeetInputs in{K.deferred() ? K.left : K.core, K.deferred() ? K.right() : at::Tensor(),
                  L.left, L.right(), scale, r};
    if (recorded({in.K0, in.K1, in.b, in.P, in.s})) {
      auto opt = [](const at::Tensor& t) { return t.defined() ? std::optional(t) : std::nullopt; };
      return MeetTrace::apply(in.K0, opt(in.K1), in.b, in.P, opt(in.s), r)[0];
    }
    return meet_kernel(in, false)[0];
  }
  F.form(n);
  B.form(n);
  if (F.shared && B.shared) {
    auto c = (F.core * B.core).sum(0);  // (w,)
    return scale.defined() ? at::mv(scale, c) : c.sum().expand({n});
  }
  auto c = F.shared ? tangent_dot(B.core, F.core) : tangent_dot(F.core, B.core);  // (N, w)
  return scale.defined() ? (c * scale).sum(-1) : c.sum(-1);
}

// The divergence's meeting point: tr(∂v/∂x) = tr(B_k F_k) at any step k, with F_k the tangents
// after the first k steps and B_k the adjoints of the steps from k on. Both ends are shared by
// every point (the first Linear's Wᵀ, the last Linear's W), so each side's first product against
// a per-point σ' is one (N, w) @ (w, r·w) GEMM; splitting the hidden Linear steps between the two
// sides gives two of those where tangents alone would take one and a (N·r, w) @ (w, w) product,
// whose backward (a weight gradient over N·r rows) is the slow shape on a CPU. Returns the first
// step the adjoints take (a Linear), or mlp.size() (no adjoints: the last step is not a Linear,
// or there is one Linear only).
size_t meet_point(const std::vector<Step>& mlp) {
  std::vector<size_t> lin;
  for (size_t k = 0; k < mlp.size(); ++k)
    if (mlp[k].kind == "linear") lin.push_back(k);
  if (lin.size() < 2 || lin.back() + 1 != mlp.size()) return mlp.size();
  const auto hidden = lin.size() - 2;  // Linear steps between the first and the last
  return lin[1 + (hidden + 1) / 2];
}

}  // namespace

int64_t forward_tangents(const std::string& op, int64_t d, const std::vector<Step>& mlp) {
  (void)op;  // the same for every operator
  return reduces(d, mlp) ? mlp.front().weight.size(0) : d;
}

namespace {

// The output width m: the last Linear's, or d.
int64_t outputs(int64_t d, const std::vector<Step>& mlp) {
  int64_t m = d;
  for (const auto& step : mlp)
    if (step.kind == "linear" && step.weight.defined() && step.weight.dim() == 2)
      m = step.weight.size(0);
  return m;
}

}  // namespace

int64_t forward_products(const std::string& op, int64_t d, const std::vector<Step>& mlp) {
  const int64_t extra = op == "laplacian" ? 1 : op == "hessian" ? outputs(d, mlp) : 0;
  return forward_tangents(op, d, mlp) + extra;
}

bool forward_is_auto(const std::string& op, int64_t d, const std::vector<Step>& mlp) {
  if (op == "laplacian" || op == "divergence" || op == "hessian") return true;
  if (op != "jacobian") return false;
  return forward_tangents(op, d, mlp) <= outputs(d, mlp);
}

int64_t coordinate_count(const char* op, const std::vector<int64_t>& coords, int64_t d) {
  if (coords.empty()) return d;
  std::vector<bool> seen(static_cast<size_t>(std::max<int64_t>(d, 0)), false);
  for (auto c : coords) {
    TORCH_CHECK_VALUE(c >= -d && c < d, op, ": coords entry ", c, " is out of range for d = ", d,
                      " coordinates");
    const auto i = static_cast<size_t>(c < 0 ? c + d : c);
    TORCH_CHECK_VALUE(!seen[i], op, ": coords names coordinate ", i, " twice");
    seen[i] = true;
  }
  return static_cast<int64_t>(coords.size());
}

namespace {

// The validated coords (coordinate_count) as an index tensor on x's device, negatives counted
// from the end; undefined when coords is empty (every coordinate).
at::Tensor coordinate_index(const std::vector<int64_t>& coords, const at::Tensor& x) {
  if (coords.empty()) return at::Tensor();
  const auto d = x.size(-1);
  std::vector<int64_t> rows;
  for (auto c : coords) rows.push_back(c < 0 ? c + d : c);
  return at::tensor(rows, x.options().dtype(at::kLong));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> value_and_derivative(const std::string& op_name,
                                                        const at::Tensor& x,
                                                        const std::vector<Step>& mlp,
                                                        const std::vector<int64_t>& coords) {
  const char* op = op_name.c_str();
  const bool lap = op_name == "laplacian", hess = op_name == "hessian";
  TORCH_CHECK_VALUE(lap || hess || op_name == "jacobian" || op_name == "divergence",
                    "value_and_derivative: op must be one of jacobian, divergence, laplacian, "
                    "hessian; got '", op_name, "'");
  TORCH_CHECK_VALUE(x.defined() && at::isFloatingType(x.scalar_type()), op,
                    ": x must be a floating tensor");
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape batch + (d,)");
  const auto d_in = x.size(-1);
  // the coordinates differentiated along: all (d = d_in), or coords (their rows of Wᵀ, or of I)
  const auto d = coordinate_count(op, coords, d_in);
  const auto picked = coordinate_index(coords, x);
  auto batch = x.sizes().slice(0, x.dim() - 1).vec();
  auto h = x.reshape({-1, d_in});                                      // (N, width)
  const auto n = h.size(0);
  // The Laplacian and the Hessian need the tangents only up to the last activation.
  size_t needed = mlp.size();
  if (lap || hess) {
    needed = 0;
    for (size_t k = 0; k < mlp.size(); ++k)
      if (mlp[k].kind != "linear") needed = k + 1;
  }
  const bool reduce = reduces(d, mlp);
  Tangents J;  // J = I (d, d) until the first Linear sets Wᵀ; materialised only if an activation comes first
  J.defer = op_name == "divergence";
  if (mlp.empty() || mlp.front().kind != "linear") {
    J.core = at::eye(d_in, x.options());
    if (picked.defined()) J.core = J.core.index_select(0, picked);
  }
  at::Tensor L;  // (N, width), undefined while zero
  // the Hessian: per activation, the tangents before it and σ', σ'' (an adjoint pass follows)
  struct Curvature {
    Tangents J;
    at::Tensor d1, d2;
  };
  std::vector<Curvature> curvatures;
  // The divergence: tangents forward through the steps before `meet`, adjoints back through the
  // rest (meet_point), which need the σ' of the activations there.
  const size_t meet = op_name == "divergence" ? meet_point(mlp) : mlp.size();
  std::vector<at::Tensor> slopes(mlp.size());
  // The Laplacian's batched tangents go through an activation and the next Linear as one step
  // (SquaresAndProduct), taken at the Linear once its weight is checked: the activation's σ', σ''.
  at::Tensor step_d1, step_d2;
  for (size_t k = 0; k < mlp.size(); ++k) {
    const auto& step = mlp[k];
    if (step.kind == "linear") {
      TORCH_CHECK_VALUE(step.weight.defined() && step.weight.dim() == 2 &&
                            step.weight.size(1) == h.size(-1),
                        op, ": step ", k, " (linear) needs a weight of shape (out, ", h.size(-1),
                        "), got ", step.weight.defined() ? step.weight.sizes() : at::IntArrayRef{});
      TORCH_CHECK_VALUE(step.weight.scalar_type() == x.scalar_type() &&
                            step.weight.device() == x.device(),
                        op, ": step ", k, " (linear): weight is ", step.weight.scalar_type(),
                        " on ", step.weight.device(), " but x is ", x.scalar_type(), " on ",
                        x.device());
      auto Wt = step.weight.t();
      h = step.bias.defined() ? at::addmm(step.bias, h, Wt) : at::mm(h, Wt);
      const bool stepped = step_d1.defined();
      if (stepped) {  // the activation before, and the tangents through this Linear
        at::Tensor squares;
        std::tie(squares, J.core) = squares_and_product(J.core, step_d1, Wt);
        L = curvature_step(step_d2, squares, step_d1, L);
        step_d1 = step_d2 = at::Tensor();
      }
      if (L.defined()) L = at::mm(L, Wt);
      if (k >= needed || k >= meet) continue;
      if (k == 0) {
        // J = Wᵀ (d, w) (the rows of the coordinates picked). With w < d, Wᵀ = Q R (reduced
        // QR): carry R's w rows instead of d.
        const auto rows = picked.defined() ? Wt.index_select(0, picked) : Wt;
        if (reduce) {
          auto [Q, R] = at::linalg_qr(rows, "reduced");
          J.core = R;
          J.Q = Q;
        } else {
          J.core = rows;
        }
      } else if (!stepped) {
        J.linear(Wt, n);
      }
    } else {
      auto [s, d1, d2] = activation(op_name, step.kind, h, lap || hess);
      if (k >= meet) {
        slopes[k] = d1;
        h = s;
        continue;
      }
      if (hess) curvatures.push_back({J, d1, d2});
      // the Laplacian and the Hessian use the tangents up to the last activation; the Jacobian
      // and the divergence use them after the last step, too
      const bool keep = (lap || hess) ? k + 1 < needed : true;
      if (lap && keep && !J.shared && !J.deferred() && !J.scale.defined() && k + 1 < mlp.size() &&
          mlp[k + 1].kind == "linear") {  // taken with the next Linear (SquaresAndProduct)
        step_d1 = d1;
        step_d2 = d2;
        h = s;
        continue;
      }
      auto squares = J.activation(d1, keep, lap);
      if (lap) L = curvature_step(d2, squares, d1, L);
      h = s;
    }
  }
  const auto m = h.size(-1);
  auto shape = [&](std::initializer_list<int64_t> tail) {
    auto out = batch;
    out.insert(out.end(), tail.begin(), tail.end());
    return out;
  };
  auto value = h.reshape(shape({m}));
  if (lap) {
    if (!L.defined()) L = at::zeros_like(h);  // no activation: an affine map
    return {value, L.reshape(shape({m}))};
  }
  if (hess) {
    // ∂²u_j/∂x² = Σ over activation units of (∂u_j/∂σ) σ'' (∂z/∂x)(∂z/∂x)ᵀ (the Linear steps are
    // affine): the tangents ∂z/∂x came forward, the adjoints A = ∂u/∂σ (m per point) go back,
    // one (N, m, w) product per step.
    at::Tensor A = at::eye(m, x.options());  // (m, w) shared, or (N, m, w)
    at::Tensor Hr;                           // (N, m, r, r), undefined while zero
    size_t c = curvatures.size();
    for (size_t k = mlp.size(); k-- > 0 && c > 0;) {
      const auto& step = mlp[k];
      if (step.kind == "linear") {
        A = at::matmul(A, step.weight);
        continue;
      }
      const auto& cur = curvatures[--c];
      const auto Ab = A.dim() == 2 ? A.unsqueeze(0) : A;
      auto term = cur.J.curvature(Ab * cur.d2.unsqueeze(1), n);
      Hr = Hr.defined() ? Hr + term : term;
      if (c > 0) A = Ab * cur.d1.unsqueeze(1);
    }
    at::Tensor H;
    if (!Hr.defined())
      H = at::zeros({n, m, d, d}, h.options());  // no activation: an affine map
    else
      H = J.Q.defined() ? at::matmul(at::matmul(J.Q, Hr), J.Q.t()) : Hr;  // Q H_r Qᵀ
    return {value, H.reshape(shape({m, d, d}))};
  }
  if (op_name == "jacobian") {
    auto core = J.batched(n);                                   // (N, r, m)
    auto full = J.Q.defined() ? at::matmul(J.Q, core) : core;  // (N, d, m)
    return {value, full.transpose(1, 2).reshape(shape({m, d}))};
  }
  TORCH_CHECK_VALUE(m == d, op, ": the model maps d = ", d, " coordinates to ", m,
                    " components; the divergence needs a vector field with d components");
  if (meet < mlp.size()) {
    // Adjoints in the tangents' basis, Qᵀ B_k = core · diag(scale) (r, w_k): from Qᵀ W at the
    // last Linear down to `meet`, through the same Tangents steps (B ← B diag(σ'), B ← B W).
    Tangents B;
    B.defer = true;
    for (size_t k = mlp.size(); k-- > meet;) {
      const auto& step = mlp[k];
      if (step.kind != "linear")
        B.activation(slopes[k], true, false);
      else if (k + 1 < mlp.size())
        B.linear(step.weight, n);
      else
        B.core = J.Q.defined() ? at::mm(J.Q.t(), step.weight) : step.weight;
    }
    return {value, meet_trace(J, B, n).reshape(batch)};
  }
  auto core = J.batched(n);  // (N, r, m)
  if (!J.Q.defined()) return {value, core.diagonal(0, 1, 2).sum(-1).reshape(batch)};
  // tr(Q C) = Σ_{i,k} C[i, k] Q[k, i]: one (N, r·d) @ (r·d) product.
  auto Qt = J.Q.t().reshape({-1});
  return {value, at::mv(core.reshape({n, -1}), Qt).reshape(batch)};
}

int64_t cached_bytes() { return static_cast<int64_t>(block_cache().cached()); }

void empty_cache() { block_cache().clear(); }

int64_t cache_limit() { return static_cast<int64_t>(block_cache().limit()); }

int64_t set_cache_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "set_cache_limit: bytes must be >= 0, got ", bytes);
  const auto previous = cache_limit();
  block_cache().set_limit(static_cast<size_t>(bytes));
  return previous;
}

at::Tensor detail::graph_point(const at::Tensor& x) {
  const bool alias = x.defined() && at::isFloatingType(x.scalar_type()) && !x.requires_grad() &&
                     !x.is_inference();
  return alias ? x.detach().requires_grad_() : x;
}

std::pair<at::Tensor, Function> detail::pick_coordinates(const char* op, const Function& f,
                                                         const at::Tensor& x,
                                                         const std::vector<int64_t>& coords) {
  TORCH_CHECK_VALUE(x.defined() && x.dim() >= 1, op, ": x must have shape batch + (d,)");
  const auto d_in = x.size(-1);
  coordinate_count(op, coords, d_in);
  const auto picked = coordinate_index(coords, x);
  const auto base = x.reshape({-1, d_in});
  Function inner = [f, base, picked, d_in](const at::Tensor& p) {
    const auto flat = p.reshape({-1, p.size(-1)});
    const auto copies = flat.size(0) / std::max<int64_t>(1, base.size(0));
    const auto full = (copies == 1 ? base : base.repeat({copies, 1})).index_copy(-1, picked, flat);
    auto shape = p.sizes().vec();
    shape.back() = d_in;
    return f(full.reshape(shape));
  };
  return {x.index_select(-1, picked), inner};
}

namespace {

// The function form on u = f(x), or forward-over-reverse; `graph` is the graph-form operator.
template <typename Graph>
std::tuple<at::Tensor, at::Tensor> function_form(const char* op, const Function& f,
                                                 const at::Tensor& x, const Options& options,
                                                 bool second_order, Graph graph) {
  TORCH_CHECK_VALUE(static_cast<bool>(f), op, ": f is an empty function");
  if (!options.coords().empty()) {  // f of the picked coordinates, the others held fixed
    auto [xs, f_xs] = detail::pick_coordinates(op, f, x, options.coords());
    auto rest = options;
    rest.coords({});
    return function_form(op, f_xs, xs, rest, second_order, graph);
  }
  const auto& method = options.method();
  TORCH_CHECK_VALUE(method != "forward", op, ": method 'forward' needs an MLP whose layers diffops "
                    "can read: pass a torch::nn::Sequential (#include <diffops/nn.h>)");
  if (method == "forward-over-reverse") {
    TORCH_CHECK_VALUE(second_order, op, ": method 'forward-over-reverse' is for laplacian and "
                      "hessian; got it for ", op);
    TORCH_CHECK_VALUE(options.samples() == 1 && !options.generator().has_value() &&
                          !options.check_structure(),
                      op, ": samples, generator and check_structure are not used by method "
                      "'forward-over-reverse'");
    auto [u, H] = detail::forward_over_reverse(op, f, x, options.create_graph());
    if (std::string_view(op) == "hessian") return {u, H};
    return {u, H.diagonal(0, -2, -1).sum(-1)};
  }
  // The graph form differentiates f's graph to x (detail::graph_point), built under no_grad too,
  // the results then detached: the callable form works in every grad mode, as the forward
  // propagation does.
  const bool grad_at_call = at::GradMode::is_enabled();
  at::AutoGradMode enable_grad(true);
  const auto xg = detail::graph_point(x);
  auto u = f(xg);
  auto derivative = graph(u, xg, options);
  if (!grad_at_call) return {u.detach(), derivative.detach()};
  return {u, derivative};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> laplacian(const Function& f, const at::Tensor& x,
                                             const Options& options) {
  return function_form("laplacian", f, x, options, true,
                       [](auto& u, auto& x_, auto& o) { return laplacian(u, x_, o); });
}

std::tuple<at::Tensor, at::Tensor> hessian(const Function& f, const at::Tensor& x,
                                           const Options& options) {
  return function_form("hessian", f, x, options, true,
                       [](auto& u, auto& x_, auto& o) { return hessian(u, x_, o); });
}

std::tuple<at::Tensor, at::Tensor> divergence(const Function& f, const at::Tensor& x,
                                              const Options& options) {
  return function_form("divergence", f, x, options, false,
                       [](auto& u, auto& x_, auto& o) { return divergence(u, x_, o); });
}

std::tuple<at::Tensor, at::Tensor> jacobian(const Function& f, const at::Tensor& x,
                                            const Options& options) {
  return function_form("jacobian", f, x, options, false,
                       [](auto& u, auto& x_, auto& o) { return jacobian(u, x_, o); });
}

}  // namespace diffops
