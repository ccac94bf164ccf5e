#include "diffops/function.h"

#include <ATen/ATen.h>

#include <cmath>

namespace diffops {
namespace {

constexpr const char* kOp = "value_and_laplacian";

// σ(h), σ'(h), σ''(h) of an elementwise activation, from ATen ops (differentiable).
std::tuple<at::Tensor, at::Tensor, at::Tensor> activation(const std::string& kind,
                                                          const at::Tensor& h) {
  if (kind == "tanh") {
    auto t = at::tanh(h);
    auto d1 = 1 - t * t;
    return {t, d1, -2 * t * d1};
  }
  if (kind == "sin") return {at::sin(h), at::cos(h), -at::sin(h)};
  if (kind == "sigmoid") {
    auto s = at::sigmoid(h);
    auto d1 = s * (1 - s);
    return {s, d1, d1 * (1 - 2 * s)};
  }
  if (kind == "softplus") {  // torch's default: linear above threshold 20
    auto s = at::sigmoid(h);
    auto linear = h > 20;
    return {at::softplus(h), at::where(linear, at::ones_like(h), s),
            at::where(linear, at::zeros_like(h), s * (1 - s))};
  }
  if (kind == "silu") {
    auto s = at::sigmoid(h);
    return {h * s, s * (1 + h * (1 - s)), s * (1 - s) * (2 + h * (1 - 2 * s))};
  }
  if (kind == "gelu") {
    const double inv_sqrt_2pi = 1.0 / std::sqrt(2.0 * M_PI);
    auto pdf = at::exp(-0.5 * h * h) * inv_sqrt_2pi;
    auto cdf = 0.5 * (1 + at::erf(h * M_SQRT1_2));
    return {h * cdf, cdf + h * pdf, pdf * (2 - h * h)};
  }
  if (kind == "identity") return {h, at::ones_like(h), at::zeros_like(h)};
  TORCH_CHECK_VALUE(false, kOp, ": unsupported step kind '", kind,
                    "'; supported: linear, tanh, sin, sigmoid, softplus, silu, gelu, identity");
}

}  // namespace

const std::vector<std::string>& forward_laplacian_activations() {
  static const std::vector<std::string> kinds = {"tanh", "sin",  "sigmoid", "softplus",
                                                 "silu", "gelu", "identity"};
  return kinds;
}

std::tuple<at::Tensor, at::Tensor> value_and_laplacian(const at::Tensor& x,
                                                       const std::vector<Step>& mlp) {
  TORCH_CHECK_VALUE(x.defined() && at::isFloatingType(x.scalar_type()), kOp,
                    ": x must be a floating tensor");
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp, ": x must have shape batch + (d,)");
  const auto d = x.size(-1);
  auto batch = x.sizes().slice(0, x.dim() - 1).vec();
  auto h = x.reshape({-1, d});                                        // (N, d)
  auto J = at::eye(d, x.options()).expand({h.size(0), d, d});          // (N, d coords, width)
  auto L = at::zeros_like(h);                                         // (N, width)
  for (size_t k = 0; k < mlp.size(); ++k) {
    const auto& step = mlp[k];
    if (step.kind == "linear") {
      TORCH_CHECK_VALUE(step.weight.defined() && step.weight.dim() == 2 &&
                            step.weight.size(1) == h.size(-1),
                        kOp, ": step ", k, " (linear) needs a weight of shape (out, ", h.size(-1),
                        "), got ", step.weight.defined() ? step.weight.sizes() : at::IntArrayRef{});
      TORCH_CHECK_VALUE(step.weight.scalar_type() == x.scalar_type() &&
                            step.weight.device() == x.device(),
                        kOp, ": step ", k, " (linear): weight is ", step.weight.scalar_type(),
                        " on ", step.weight.device(), " but x is ", x.scalar_type(), " on ",
                        x.device());
      auto Wt = step.weight.t();
      h = step.bias.defined() ? at::addmm(step.bias, h, Wt) : at::mm(h, Wt);
      J = at::matmul(J, Wt);
      L = at::mm(L, Wt);
    } else {
      auto [s, d1, d2] = activation(step.kind, h);
      L = d1 * L + d2 * (J * J).sum(1);
      J = d1.unsqueeze(1) * J;
      h = s;
    }
  }
  batch.push_back(h.size(-1));
  return {h.reshape(batch), L.reshape(batch)};
}

}  // namespace diffops
