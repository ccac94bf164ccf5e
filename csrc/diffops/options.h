#pragma once
// Options shared by every diffops operator, in LibTorch's builder style:
//   diffops::laplacian(u, x, diffops::Options().create_graph(false));
//   diffops::divergence(v, x, diffops::Options().method("hutchinson").samples(4).generator(gen));

#include <ATen/core/Generator.h>
#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace diffops {

struct Options {
  /// Keep the graph of the result so it can be differentiated again or trained on
  /// (a PINN loss built from it back-propagates to the network's parameters).
  /// With false the result is a plain tensor and intermediate graphs are freed early.
  TORCH_ARG(bool, create_graph) = true;
  /// The strategy (diffops::explain shows the one a call takes and its cost):
  ///   "auto"       the default: "loop" (the fastest exact strategy in every CPU benchmark)
  ///   "loop"       exact: one reverse pass per seed (per component; per coordinate for the
  ///                second products of laplacian and hessian, per diagonal entry of divergence)
  ///   "batched"    exact: the same seeds stacked and pushed through one reverse pass (torch's
  ///                legacy vmap, as autograd.grad(is_grads_batched=True)); fewer, larger kernels.
  ///                gradient, jacobian, curl, divergence, laplacian, hessian.
  ///   "hutchinson" divergence and laplacian: the unbiased estimate (1/k) Σ_s ε_sᵀ J ε_s with
  ///                k = samples Rademacher probes ε_s (entries ±1), one product each. Variance of
  ///                one probe per point: Σ_{i≠j} J_ij (J_ij + J_ji) (2 Σ_{i≠j} H_ij² for a
  ///                Hessian), divided by k.
  /// Every other operator accepts "auto" and "loop".
  TORCH_ARG(std::string, method) = "auto";
  /// Verify, before computing, that the map really has the structure the operator relies on:
  /// u[n] depends on x[n] only (a block-diagonal Jacobian over points; for `derivative`, a
  /// diagonal one). Costs two extra products (the ones-seeded one and one random probe per point)
  /// and a device synchronisation; raises c10::ValueError naming the coupling otherwise (BatchNorm
  /// in train mode, attention across points, FNO-style mixing). Not for torch.compile'd code.
  TORCH_ARG(bool, check_structure) = false;
  /// Number of probes for "hutchinson".
  TORCH_ARG(int64_t, samples) = 1;
  /// Random source for "hutchinson" probes (on x's device); the default generator when unset.
  TORCH_ARG(std::optional<at::Generator>, generator) = std::nullopt;
  /// Function form only (laplacian, divergence, hessian, jacobian of a model f): the coordinates
  /// of x the operator differentiates along, in order; empty: all d. f still sees every
  /// coordinate, the others (time t of u(x, t), a CNF's t in f(cat(t, z))) are held fixed:
  ///   laplacian    Σ_{i ∈ coords} ∂²u/∂x_i²
  ///   divergence   Σ_k ∂v_k/∂x_{coords[k]}     (v needs coords.size() components)
  ///   jacobian     ∂u_i/∂x_{coords[k]}, comp + (coords.size(),)
  ///   hessian      ∂²u/∂x_{coords[k]}∂x_{coords[l]}, comp + (coords.size(), coords.size())
  /// Entries are distinct, in [-d, d) (negative counts from the end). The graph form takes the
  /// tensor of those coordinates as x instead (a separate leaf), and raises if coords is given.
  TORCH_ARG(std::vector<int64_t>, coords) = {};
};

}  // namespace diffops
