#pragma once
// The function form for torch::nn models, header-only: it includes torch/nn.h, which the rest of
// diffops does not need. Include it where the model lives:
//   #include <diffops/nn.h>
//   auto [u, lap] = diffops::laplacian(net, x);   // net: torch::nn::Sequential

#include <torch/nn.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "diffops/explain.h"
#include "diffops/function.h"

namespace diffops {

/// The steps of a Sequential of Linear layers and supported activations (Tanh, Sigmoid,
/// Softplus with beta 1 and threshold 20, SiLU, GELU "none", Identity; nested Sequentials), or
/// std::nullopt when the forward Laplacian does not support it.
inline std::optional<std::vector<Step>> mlp_steps(const torch::nn::Sequential& net) {
  std::vector<Step> steps;
  for (const auto& child : net->children()) {
    if (auto seq = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(child)) {
      auto inner = mlp_steps(torch::nn::Sequential(seq));
      if (!inner) return std::nullopt;
      steps.insert(steps.end(), inner->begin(), inner->end());
    } else if (auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(child)) {
      steps.push_back({"linear", lin->weight, lin->options.bias() ? lin->bias : at::Tensor()});
    } else if (std::dynamic_pointer_cast<torch::nn::TanhImpl>(child)) {
      steps.push_back({"tanh"});
    } else if (std::dynamic_pointer_cast<torch::nn::SigmoidImpl>(child)) {
      steps.push_back({"sigmoid"});
    } else if (std::dynamic_pointer_cast<torch::nn::SiLUImpl>(child)) {
      steps.push_back({"silu"});
    } else if (auto gelu = std::dynamic_pointer_cast<torch::nn::GELUImpl>(child)) {
      if (gelu->options.approximate() != "none") return std::nullopt;
      steps.push_back({"gelu"});
    } else if (auto sp = std::dynamic_pointer_cast<torch::nn::SoftplusImpl>(child)) {
      if (sp->options.beta() != 1.0 || sp->options.threshold() != 20.0) return std::nullopt;
      steps.push_back({"softplus"});
    } else if (std::dynamic_pointer_cast<torch::nn::IdentityImpl>(child)) {
      steps.push_back({"identity"});
    } else {
      return std::nullopt;
    }
  }
  return steps;
}

namespace detail {

// d of points batch + (d,); 0 for anything else, which value_and_derivative then names.
inline int64_t input_dim(const at::Tensor& x) {
  return x.defined() && x.dim() >= 1 ? x.size(-1) : 0;
}

// The function form on a Sequential: one forward pass for a supported MLP ("forward", or "auto"
// where forward_is_auto), otherwise the callable form with options (graph form or
// forward-over-reverse).
template <typename Callable>
std::tuple<at::Tensor, at::Tensor> sequential_form(const char* op, torch::nn::Sequential& net,
                                                   const at::Tensor& x, const Options& options,
                                                   Callable callable_form) {
  const auto& method = options.method();
  if (method == "forward" || method == "auto") {
    auto steps = mlp_steps(net);
    const auto& coords = options.coords();
    const int64_t d = coords.empty() ? input_dim(x) : static_cast<int64_t>(coords.size());
    if (steps && (method == "forward" || forward_is_auto(op, d, *steps)))
      return value_and_derivative(op, x, *steps, coords);
    TORCH_CHECK_VALUE(method == "auto", op, ": method 'forward' needs a Sequential of Linear "
                      "layers and Tanh, Sigmoid, Softplus(), SiLU, GELU(), Identity; use 'auto' "
                      "to fall back to the graph form");
  }
  Function f = [&net](const at::Tensor& p) { return net->forward(p); };
  return callable_form(f, x, options);
}

}  // namespace detail

/// Function form on a Sequential: (net(x), D net(x)) for D = laplacian, hessian, divergence,
/// jacobian. A supported MLP takes the forward propagation (value_and_derivative: one pass,
/// differentiable) with method "auto" or "forward"; any other Sequential, or another method,
/// computes as the callable form (function.h) does.
inline std::tuple<at::Tensor, at::Tensor> laplacian(torch::nn::Sequential& net, const at::Tensor& x,
                                                    const Options& options = {}) {
  return detail::sequential_form("laplacian", net, x, options, [](auto& f, auto& p, auto& o) {
    return laplacian(f, p, o);
  });
}
inline std::tuple<at::Tensor, at::Tensor> hessian(torch::nn::Sequential& net, const at::Tensor& x,
                                                  const Options& options = {}) {
  return detail::sequential_form("hessian", net, x, options, [](auto& f, auto& p, auto& o) {
    return hessian(f, p, o);
  });
}
inline std::tuple<at::Tensor, at::Tensor> divergence(torch::nn::Sequential& net,
                                                     const at::Tensor& x,
                                                     const Options& options = {}) {
  return detail::sequential_form("divergence", net, x, options, [](auto& f, auto& p, auto& o) {
    return divergence(f, p, o);
  });
}
inline std::tuple<at::Tensor, at::Tensor> jacobian(torch::nn::Sequential& net, const at::Tensor& x,
                                                   const Options& options = {}) {
  return detail::sequential_form("jacobian", net, x, options, [](auto& f, auto& p, auto& o) {
    return jacobian(f, p, o);
  });
}

/// The plan of the function form on `net` (see diffops::explain): "forward" for a supported MLP
/// under "auto"/"forward" (one pass carrying min(d, w₁) tangents per point, + 1 for laplacian,
/// + m adjoints for hessian; the divergence's tangents meet as many adjoints halfway),
/// otherwise the plan of the graph form on u = net(x).
inline Plan explain(const std::string& op, torch::nn::Sequential& net, const at::Tensor& x,
                    const Options& options = {}) {
  const auto& method = options.method();
  const bool forward_op =
      op == "laplacian" || op == "hessian" || op == "divergence" || op == "jacobian";
  auto steps = forward_op && (method == "forward" || method == "auto") ? mlp_steps(net)
                                                                       : std::nullopt;
  const auto& coords = options.coords();
  const int64_t picked = coords.empty() ? detail::input_dim(x) : static_cast<int64_t>(coords.size());
  if (steps && (method == "forward" || forward_is_auto(op, picked, *steps))) {
    TORCH_CHECK_VALUE(detail::input_dim(x) > 0, op, ": x must have shape batch + (d,)");
    const int64_t d = coordinate_count(op.c_str(), coords, detail::input_dim(x));
    const int64_t tangents = forward_tangents(op, d, *steps);
    std::string reason =
        method == "auto" ? "auto: the model is an MLP diffops propagates forward" : "asked for";
    if (tangents < d)
      reason += "; " + std::to_string(tangents) + " tangents for d = " + std::to_string(d) +
                ": the first layer's width (W1ᵀ = QR)";
    return {"forward", 1, forward_products(op, d, *steps), reason};
  }
  // the field as the function form's fallbacks compute it (x need not require grad), of the
  // coordinates picked when coords is given
  at::AutoGradMode enable_grad(true);
  Function f = [&net](const at::Tensor& p) { return net->forward(p); };
  at::Tensor points = x;
  auto rest = options;
  if (!coords.empty()) {
    std::tie(points, f) = detail::pick_coordinates(op.c_str(), f, x, coords);
    rest.coords({});
  }
  const auto xg = detail::graph_point(points);
  auto u = f(xg);
  if (method == "forward-over-reverse" && (op == "laplacian" || op == "hessian")) {
    const int64_t count = std::max<int64_t>(1, xg.numel() / xg.size(-1));
    const int64_t components = u.numel() / count;
    return {method, 1 + components, components * xg.size(-1), "asked for"};
  }
  return explain(op, u, xg, rest);
}

}  // namespace diffops
