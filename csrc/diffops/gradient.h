#pragma once
// First-order operators. Shapes: x is batch + (d,), the field u is batch + comp, and points are
// independent (u[n] depends on x[n] only), which is what lets one product serve every point.

#include <ATen/core/Tensor.h>

#include "diffops/options.h"

namespace diffops {

/// ∇u per component: result[..., j] = ∂u/∂x_j, shape u.shape + (d,). Cost: one reverse product
/// per scalar component of u (prod(comp)), independent of the number of points.
at::Tensor gradient(const at::Tensor& u, const at::Tensor& x, const Options& options = {});

/// Jacobian of a field: J[..., i, j] = ∂v_i/∂x_j, shape v.shape + (d,). Same cost as gradient,
/// of which it is the vector-field reading.
at::Tensor jacobian(const at::Tensor& v, const at::Tensor& x, const Options& options = {});

/// ∇u · direction per component (not normalised), shape u.shape; `direction` broadcasts against
/// x. Cost: one reverse product for a scalar field; two (a double-backward Jacobian-vector
/// product) for a field with several components, whatever their number.
at::Tensor directional_derivative(const at::Tensor& u, const at::Tensor& x,
                                  const at::Tensor& direction, const Options& options = {});

}  // namespace diffops
