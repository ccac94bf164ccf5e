#pragma once
// The function form: operators that see the model, not just its finished graph, and return the
// field's value with its derivative, (u, Du), so that a PDE residual needs one call.
//
// For a multilayer perceptron (Linear layers and elementwise activations) the derivatives are
// propagated forward with the value (the "forward Laplacian", i.e. collapsed Taylor mode): each
// layer carries h, J = ∂h/∂x (d tangents) and, as asked, L = Δh or the Hessian H, for all d
// coordinates at once,
//   Linear:      h ← W h + b,   J ← J Wᵀ,       L ← L Wᵀ,                        H ← H Wᵀ
//   activation:  h ← σ(h),      J ← σ'(h) J,    L ← σ'(h) L + σ''(h) Σ_i J_i²,   H ← σ'(h) H + σ''(h) J ⊗ J
// so one pass replaces the 1 + d reverse products of the graph form. Built from ATen ops: the
// result is differentiable, a PINN loss on it trains the weights. <diffops/nn.h> applies it to
// torch::nn::Sequential models; any callable gets the graph form or forward-over-reverse.
//
// Know your Jacobian: after the first layer J = W₁ᵀ (d × w₁) is the same for every point, so it is
// kept once (not N times), and the first activation's scale folds into the next product. When the
// first layer is narrower than the input (w₁ < d), W₁ᵀ = Q R (reduced QR, Q with orthonormal
// columns) and the tangents are carried as R's w₁ rows instead of d: Σ_i J_i² (the Laplacian) and
// tr(J) = tr(Q · core) (the divergence) do not depend on the basis, and the Jacobian is Q · core at
// the end. Tangents are dropped after the last activation when only L is wanted.

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "diffops/options.h"

namespace diffops {

/// One step of an MLP: kind "linear" (weight (out, in), optional bias (out,)) or an elementwise
/// activation: "tanh", "sin", "sigmoid", "softplus" (beta 1, threshold 20, as torch's default),
/// "silu", "gelu" (exact, erf form), "identity".
struct Step {
  std::string kind;
  at::Tensor weight{};
  at::Tensor bias{};
};

/// Activation kinds the forward propagation supports.
const std::vector<std::string>& forward_laplacian_activations();

/// (u, D u) for u = mlp(x), x of shape batch + (d,), u of shape batch + (m,) (m: the last layer's
/// width), in one forward pass ("forward" in diffops::explain). `op` picks D:
///   "jacobian"   ∂u_i/∂x_j, batch + (m, d)         (carries d tangents per point)
///   "divergence" Σ_i ∂u_i/∂x_i, batch; needs m = d  (d tangents forward through the first half
///                of the hidden Linears, d adjoints back from the last Linear through the rest,
///                tr(B F) where they meet: both ends are shared by every point; the adjoints'
///                first product, B = b P, is never formed: tr(B F) = Σ b ⊙ ((F ⊙ σ') Pᵀ); when
///                neither side is formed (three hidden layers, N ≥ w) and the tangents outnumber
///                half the width, a trilinear form Σ a_j b_m σ'_l C[j, m, l] with C shared:
///                w³ multiply-adds per point instead of 2 r w²)
///   "laplacian"  Δu_i, batch + (m,)                 (d tangents + 1 collapsed second order)
///   "hessian"    ∂²u_i/∂x_j∂x_k, batch + (m, d, d)  (d tangents forward, m adjoints back:
///                H_i = Σ over activation units of (∂u_i/∂σ) σ'' (∂z/∂x)(∂z/∂x)ᵀ)
/// With a first Linear of width w₁ < d the d tangents are carried as the w₁ rows of R in W₁ᵀ = QR
/// (forward_tangents). Differentiable (create_graph semantics): the result trains the weights.
/// `coords` (Options::coords): the coordinates of x to differentiate along, in order (the first
/// Linear's tangents are the rows of Wᵀ for those coordinates; the others only enter the value);
/// empty: all d. Every "d" above is then coords.size().
std::tuple<at::Tensor, at::Tensor> value_and_derivative(const std::string& op,
                                                        const at::Tensor& x,
                                                        const std::vector<Step>& mlp,
                                                        const std::vector<int64_t>& coords = {});

/// The number of coordinates an operator with Options::coords differentiates along: coords.size(),
/// or d when empty. Raises c10::ValueError naming `op` unless the entries are distinct and in
/// [-d, d).
int64_t coordinate_count(const char* op, const std::vector<int64_t>& coords, int64_t d);

/// How many tangent vectors per point value_and_derivative carries for op: min(d, w₁) for an MLP
/// whose first step is a Linear of width w₁, else d.
int64_t forward_tangents(const std::string& op, int64_t d, const std::vector<Step>& mlp);

/// The vector products per point value_and_derivative takes for op: forward_tangents, + 1 for the
/// Laplacian (its second-order sum), + m for the Hessian (one adjoint per output component).
int64_t forward_products(const std::string& op, int64_t d, const std::vector<Step>& mlp);

/// Whether method "auto" takes value_and_derivative for op on this MLP with d inputs: for the
/// Laplacian, the divergence and the Hessian always (the fastest exact strategy at every d
/// measured, benchmarks/bench_operators.py); for the Jacobian when it carries no more tangents
/// than the reverse loop takes passes (forward_tangents ≤ m outputs).
bool forward_is_auto(const std::string& op, int64_t d, const std::vector<Step>& mlp);

/// The CPU memory cache of the forward propagation. Its tangent tensors (N, r, w) are the large
/// ones; when they die (after the backward, in training) their blocks (1 MiB and more) are kept
/// for the next call of the same shape instead of going back to the C library, which maps blocks
/// that large afresh and unmaps them, so that every call would pay a page fault per 4 KiB page on
/// first touch (1-2 µs each on a virtual machine: a fifth of a training step at d = 8). Blocks in use
/// are never shared. At most cache_limit() bytes are kept (1 GiB unless set); GPU tensors use
/// their device's own caching allocator.
/// The bytes cached now, in blocks no tensor uses.
int64_t cached_bytes();
/// Frees every cached block (as torch.cuda.empty_cache does for a GPU).
void empty_cache();
/// The most bytes the cache keeps.
int64_t cache_limit();
/// Sets the most bytes the cache keeps (0: keep none, free blocks as their tensors die); frees the
/// cached blocks if they are over it. Returns the previous limit.
int64_t set_cache_limit(int64_t bytes);

namespace detail {
/// The function form's Options::coords for any callable: the picked coordinates of x, xs
/// (batch + (coords.size(),)), as the points, and f_xs(p) = f(x with its coords columns replaced
/// by p) (p may stack copies of the points: forward-over-reverse). Validates coords (naming op).
std::pair<at::Tensor, std::function<at::Tensor(const at::Tensor&)>> pick_coordinates(
    const char* op, const std::function<at::Tensor(const at::Tensor&)>& f, const at::Tensor& x,
    const std::vector<int64_t>& coords);
/// x as the function form's graph fallbacks differentiate it: a floating x that does not require
/// grad becomes a detached alias that does (its caller wants no derivative to x); anything else
/// (x requiring grad, an inference tensor, a bad x for the operator to name) is returned as is.
at::Tensor graph_point(const at::Tensor& x);
}  // namespace detail

/// A field as a function of the points: batch + (d,) -> batch + comp.
using Function = std::function<at::Tensor(const at::Tensor&)>;

/// Function form for any callable f: (f(x), D f(x)) with D the operator of the same name.
/// Options::method as for the graph form ("auto", "loop", "batched", "hutchinson"), computed
/// on u = f(x), plus for laplacian and hessian
/// "forward-over-reverse": x's d coordinate directions become forward-mode tangents of d stacked
/// copies of the points (points are independent), and one reverse pass through f on those dual
/// points gives Hessian columns; exact, needs f to support forward-mode AD.
/// x need not require grad (the function form differentiates an alias of it then), and every
/// method works under NoGradGuard too, returning detached results (not under InferenceMode).
std::tuple<at::Tensor, at::Tensor> laplacian(const Function& f, const at::Tensor& x,
                                             const Options& options = {});
std::tuple<at::Tensor, at::Tensor> hessian(const Function& f, const at::Tensor& x,
                                           const Options& options = {});
std::tuple<at::Tensor, at::Tensor> divergence(const Function& f, const at::Tensor& x,
                                              const Options& options = {});
std::tuple<at::Tensor, at::Tensor> jacobian(const Function& f, const at::Tensor& x,
                                            const Options& options = {});

}  // namespace diffops
