#pragma once
// A derivative cache for one field, for PDE residuals that need many partials of the same u:
// every partial is computed once, mixed partials reuse their lower-order prefix, and the
// Laplacian, Hessian and divergence reuse the gradient rows already taken.
//
//   diffops::Derivatives d(u, x);          // or Derivatives(u, {x, y, t})
//   auto u_x = d.partial({0});             // one product: the whole row ∂u/∂x_j, j = 0..d-1
//   auto u_xy = d.partial({0, 1});          // one more product, reusing ∂u/∂x0
//   auto u_yx = d.partial({1, 0});          // free: mixed partials commute, cached as {0, 1}
//   auto lap = d.laplacian();              // d - 1 more products (the row of ∂u/∂x0 exists)
//
// Each product differentiates ONE derivative of ONE scalar component with respect to every
// coordinate at once (a full gradient row), so it fills the cache for all partials one order up.
// Mixed partials are taken as symmetric (Schwarz: u twice continuously differentiable, as an MLP
// with smooth activations is): an index is sorted before lookup.
//
// Results keep their graph (so higher derivatives can be taken later and a loss built from them
// trains the network), whatever the grad mode at the call. Like every diffops operator, errors
// name the argument and the cause; a cached derivative that no longer depends on the coordinates
// (a linear network's second derivative) differentiates to zeros.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <utility>
#include <vector>

namespace diffops {

class Derivatives {
 public:
  /// u: field of shape batch + comp computed from points x of shape batch + (d,).
  Derivatives(at::Tensor u, at::Tensor x);
  /// u computed from separate coordinate tensors (x, y, t each of shape batch + (1,) or batch);
  /// index k names coordinates[k].
  Derivatives(at::Tensor u, std::vector<at::Tensor> coordinates);

  /// ∂^k u/∂x_{i1}…∂x_{ik} for index = {i1, …, ik}: shape u.shape, or batch for one `component`
  /// (a flat index into comp). Cost: at most one product per component and missing prefix.
  at::Tensor partial(at::IntArrayRef index, std::optional<int64_t> component = std::nullopt);
  /// ∇u, shape u.shape + (d,) (batch + (d,) for one component).
  at::Tensor gradient(std::optional<int64_t> component = std::nullopt);
  /// Hessian, shape u.shape + (d, d) (batch + (d, d) for one component).
  at::Tensor hessian(std::optional<int64_t> component = std::nullopt);
  /// Δu, shape u.shape (batch for one component): 1 + d products per component when nothing is
  /// cached yet.
  at::Tensor laplacian(std::optional<int64_t> component = std::nullopt);
  /// ∇·u for a vector field (comp's last axis holds d components), shape u.shape[:-1].
  at::Tensor divergence();
  /// ∂u/∂n = ∇u · n with normals of shape batch + (d,) (or broadcastable), shape u.shape.
  at::Tensor normal_derivative(const at::Tensor& normals,
                               std::optional<int64_t> component = std::nullopt);

  /// Reverse products taken so far (each one returned a full gradient row).
  int64_t products() const { return products_; }
  /// Number of coordinates d.
  int64_t dim() const { return d_; }
  /// Scalar components of u per point (prod(comp)).
  int64_t components() const { return components_; }
  const at::Tensor& field() const { return u_; }

 private:
  // ∂/∂(all coordinates) of ∂^prefix u_c: batch + (d,), computed once.
  const at::Tensor& row(int64_t c, std::vector<int64_t> prefix);
  at::Tensor component_values(int64_t c) const;  // batch
  at::Tensor per_component(std::optional<int64_t> component,
                           const std::function<at::Tensor(int64_t)>& of_c,
                           std::vector<int64_t> tail);
  std::vector<int64_t> check_index(at::IntArrayRef index) const;
  int64_t check_component(int64_t component) const;

  void init();

  at::Tensor u_;
  std::vector<at::Tensor> inputs_;  // {x} (points, batch + (d,)) or the separate coordinates
  bool coordinates_;
  std::vector<int64_t> batch_, comp_;
  int64_t d_ = 0, components_ = 1, products_ = 0;
  std::map<std::pair<int64_t, std::vector<int64_t>>, at::Tensor> rows_;
};

}  // namespace diffops
