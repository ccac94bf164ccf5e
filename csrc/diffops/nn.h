#pragma once
// The function form for torch::nn models, header-only: it includes torch/nn.h, which the rest of
// diffops does not need. Include it where the model lives:
//   #include <diffops/nn.h>
//   auto [u, lap] = diffops::laplacian(net, x);   // net: torch::nn::Sequential

#include <torch/nn.h>

#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "diffops/function.h"
#include "diffops/laplacian.h"

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

/// Function form: (net(x), Δnet(x)), each of shape batch + (m,). A supported MLP takes the forward
/// Laplacian (one pass, differentiable); any other Sequential computes u = net(x) and the graph
/// form with `options` (x must then require grad).
inline std::tuple<at::Tensor, at::Tensor> laplacian(torch::nn::Sequential& net, const at::Tensor& x,
                                                    const Options& options = {}) {
  if (auto steps = mlp_steps(net)) return value_and_laplacian(x, *steps);
  auto u = net->forward(x);
  return {u, laplacian(u, x, options)};
}

}  // namespace diffops
