#pragma once
// What an operator call does and what it costs, before running it: the strategy behind
// Options::method ("auto" resolved) and the number of reverse passes and products it takes.
//   auto plan = diffops::explain("laplacian", u, x);   // plan.method == "loop", plan.passes == 1 + d

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "diffops/options.h"

namespace diffops {

struct Plan {
  /// The strategy that runs: "loop", "batched" or "hutchinson" ("forward" in the function form).
  std::string method;
  /// Autograd engine runs (reverse passes); for "forward", passes through the model.
  int64_t passes = 0;
  /// Vectors multiplied by a Jacobian: seeds of vector–Jacobian products (one row of J or of the
  /// Hessian each); for "forward", the tangent vectors carried per point besides the value.
  int64_t products = 0;
  /// Why this strategy: the rule "auto" applied, or that the caller asked for it.
  std::string reason;
};

/// The plan of `op`(u, x, options) for op in gradient, jacobian, curl, directional_derivative,
/// normal_derivative, divergence, laplacian, hessian. Validates u, x and options as the operator
/// does (the same errors); computes no derivative.
Plan explain(const std::string& op, const at::Tensor& u, const at::Tensor& x,
             const Options& options = {});

}  // namespace diffops
