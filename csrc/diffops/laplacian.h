#pragma once
// Second-order operators. Shapes: x is batch + (d,), the field u is batch + comp, points are
// independent (u[n] depends on x[n] only); each scalar component of u is differentiated on its own.

#include <ATen/core/Tensor.h>

#include "diffops/options.h"

namespace diffops {

/// Δu = Σ_i ∂²u/∂x_i², shape u.shape (the vector Laplacian, per component, when comp != ()).
/// Cost: 1 + d reverse products per component; only diagonal entries of the Hessian are kept.
at::Tensor laplacian(const at::Tensor& u, const at::Tensor& x, const Options& options = {});

/// H[..., i, j] = ∂²u/∂x_i∂x_j, shape u.shape + (d, d). Cost: 1 + d reverse products per
/// component (each second product yields a whole row).
at::Tensor hessian(const at::Tensor& u, const at::Tensor& x, const Options& options = {});

}  // namespace diffops
