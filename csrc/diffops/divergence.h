#pragma once
// Vector-calculus operators on vector fields v of shape batch + comp' + (d,), with x of shape
// batch + (d,) and independent points (v[n] depends on x[n] only). Leading component axes comp'
// hold several vector fields, each differentiated on its own.

#include <ATen/core/Tensor.h>

#include "diffops/options.h"

namespace diffops {

/// ∇·v = Σ_i ∂v_i/∂x_i, shape v.shape[:-1]; requires v.shape[-1] == d. Cost: d reverse
/// products per vector field, each contributing one diagonal entry (the Jacobian is never stored).
at::Tensor divergence(const at::Tensor& v, const at::Tensor& x, const Options& options = {});

/// ∇×v. d = 3: (∂₁v₂ − ∂₂v₁, ∂₂v₀ − ∂₀v₂, ∂₀v₁ − ∂₁v₀), shape v.shape. d = 2: the scalar
/// ∂₀v₁ − ∂₁v₀, shape v.shape[:-1]. Cost: d reverse products per vector field.
at::Tensor curl(const at::Tensor& v, const at::Tensor& x, const Options& options = {});

}  // namespace diffops
