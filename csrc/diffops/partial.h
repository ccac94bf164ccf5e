#pragma once
// Partial derivatives of any order. `partial` differentiates a field u (batch + comp) of points x
// (batch + (d,)); `derivative` differentiates an elementwise map y = g(x). Points (elements) are
// independent, which is what lets one product serve all of them.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "diffops/options.h"

namespace diffops {

/// ∂^k u / ∂x_{i1} … ∂x_{ik} for the multi-index index = {i1, …, ik} (e.g. {0, 0, 1} is
/// ∂³u/∂x0²∂x1), shape u.shape. Cost: k reverse products per component.
at::Tensor partial(const at::Tensor& u, const at::Tensor& x, at::IntArrayRef index,
                   const Options& options = {});
/// ∂u/∂x_i, shape u.shape.
at::Tensor partial(const at::Tensor& u, const at::Tensor& x, int64_t index,
                   const Options& options = {});

/// g^(order)(x) per element for an elementwise map y = g(x) (y.shape == x.shape), shape x.shape.
/// Cost: ONE reverse product per order, seeded with ones: the Jacobian of an elementwise map is
/// diagonal, so ones select its diagonal ("know your Jacobian"). Wrong for maps that couple
/// elements: use gradient/jacobian there.
at::Tensor derivative(const at::Tensor& y, const at::Tensor& x, int64_t order = 1,
                      const Options& options = {});

}  // namespace diffops
