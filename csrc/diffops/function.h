#pragma once
// The function form: operators that see the model, not just its finished graph. For a
// multilayer perceptron (Linear layers and elementwise activations) the Laplacian is propagated
// forward with the value (the "forward Laplacian", i.e. collapsed Taylor mode): each layer carries
// (h, ∂h/∂x, Δh) for all d coordinates at once,
//   Linear:      h ← W h + b,      J ← J Wᵀ,      L ← L Wᵀ
//   activation:  h ← σ(h),         J ← σ'(h) J,    L ← σ'(h) L + σ''(h) Σ_i J_i²
// so one pass replaces the 1 + d reverse products of the graph form. Built from ATen ops: the
// result is differentiable, a PINN loss on it trains the weights.

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>
#include <vector>

namespace diffops {

/// One step of an MLP: kind "linear" (weight (out, in), optional bias (out,)) or an elementwise
/// activation: "tanh", "sin", "sigmoid", "softplus" (beta 1, threshold 20, as torch's default),
/// "silu", "gelu" (exact, erf form), "identity".
struct Step {
  std::string kind;
  at::Tensor weight{};
  at::Tensor bias{};
};

/// Activation kinds the forward Laplacian supports.
const std::vector<std::string>& forward_laplacian_activations();

/// (u, Δu) for u = mlp(x) with x of shape batch + (d,): u has shape batch + (m,) (m = the last
/// layer's width), Δu the same shape (per output component). Cost: one forward pass carrying a
/// (d × width) Jacobian per point, no reverse products.
std::tuple<at::Tensor, at::Tensor> value_and_laplacian(const at::Tensor& x,
                                                       const std::vector<Step>& mlp);

}  // namespace diffops
