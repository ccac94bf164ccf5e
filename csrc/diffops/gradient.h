#pragma once
// First-order operators. Shapes: x is batch + (d,), the field u is batch + comp, and points are
// independent (u[n] depends on x[n] only), which is what lets one product serve every point.

#include <ATen/core/Tensor.h>

#include "diffops/options.h"

namespace diffops {

/// ∇u per component: result[..., j] = ∂u/∂x_j, shape u.shape + (d,). Cost: one reverse product
/// per scalar component of u (prod(comp)), independent of the number of points.
at::Tensor gradient(const at::Tensor& u, const at::Tensor& x, const Options& options = {});

/// ∇u by coordinates held as separate tensors, e.g. gradient(u, {x, y, t}) with x, y, t of
/// shape batch + (1,) (or batch) and u computed from them: result[..., k] = ∂u/∂coordinates[k],
/// shape u.shape + (number of coordinates,). Cost: one reverse product per scalar component,
/// whatever the number of coordinates.
at::Tensor gradient(const at::Tensor& u, at::TensorList coordinates, const Options& options = {});

/// Jacobian of a field: J[..., i, j] = ∂v_i/∂x_j, shape v.shape + (d,). Same cost as gradient,
/// of which it is the vector-field reading.
at::Tensor jacobian(const at::Tensor& v, const at::Tensor& x, const Options& options = {});

/// ∇u · direction per component (not normalised), shape u.shape; `direction` broadcasts against
/// x. Cost: one reverse product for a scalar field; two (a double-backward Jacobian-vector
/// product) for a field with several components, whatever their number.
at::Tensor directional_derivative(const at::Tensor& u, const at::Tensor& x,
                                  const at::Tensor& direction, const Options& options = {});

/// ∂u/∂n = ∇u · n per component at boundary points x with normals n (shape x.shape, one per
/// point, or broadcastable to it: one normal for a whole flat wall), shape u.shape. n is used as
/// given: pass unit normals. Cost: as directional_derivative.
at::Tensor normal_derivative(const at::Tensor& u, const at::Tensor& x, const at::Tensor& normals,
                             const Options& options = {});

}  // namespace diffops
