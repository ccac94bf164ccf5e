#include "diffops/function.h"

#include <ATen/ATen.h>

#include <cmath>

#include "diffops/autograd.h"
#include "diffops/divergence.h"
#include "diffops/gradient.h"
#include "diffops/laplacian.h"

namespace diffops {
namespace {

// σ(h), σ'(h), σ''(h) of an elementwise activation, from ATen ops (differentiable).
std::tuple<at::Tensor, at::Tensor, at::Tensor> activation(const std::string& op,
                                                          const std::string& kind,
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
  TORCH_CHECK_VALUE(false, op, ": unsupported step kind '", kind,
                    "'; supported: linear, tanh, sin, sigmoid, softplus, silu, gelu, identity");
}

}  // namespace

const std::vector<std::string>& forward_laplacian_activations() {
  static const std::vector<std::string> kinds = {"tanh", "sin",  "sigmoid", "softplus",
                                                 "silu", "gelu", "identity"};
  return kinds;
}

std::tuple<at::Tensor, at::Tensor> value_and_derivative(const std::string& op_name,
                                                        const at::Tensor& x,
                                                        const std::vector<Step>& mlp) {
  const char* op = op_name.c_str();
  const bool lap = op_name == "laplacian", hess = op_name == "hessian";
  TORCH_CHECK_VALUE(lap || hess || op_name == "jacobian" || op_name == "divergence",
                    "value_and_derivative: op must be one of jacobian, divergence, laplacian, "
                    "hessian; got '", op_name, "'");
  TORCH_CHECK_VALUE(x.defined() && at::isFloatingType(x.scalar_type()), op,
                    ": x must be a floating tensor");
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape batch + (d,)");
  const auto d = x.size(-1);
  auto batch = x.sizes().slice(0, x.dim() - 1).vec();
  auto h = x.reshape({-1, d});                                         // (N, width)
  const auto n = h.size(0);
  at::Tensor J = at::eye(d, x.options()).expand({n, d, d});            // (N, d, width)
  at::Tensor L = lap ? at::zeros_like(h) : at::Tensor();               // (N, width)
  at::Tensor H = hess ? at::zeros({n, d, d, d}, x.options()) : at::Tensor();  // (N, d, d, width)
  for (size_t k = 0; k < mlp.size(); ++k) {
    const auto& step = mlp[k];
    if (step.kind == "linear") {
      TORCH_CHECK_VALUE(step.weight.defined() && step.weight.dim() == 2 &&
                            step.weight.size(1) == h.size(-1),
                        op, ": step ", k, " (linear) needs a weight of shape (out, ", h.size(-1),
                        "), got ", step.weight.defined() ? step.weight.sizes() : at::IntArrayRef{});
      TORCH_CHECK_VALUE(step.weight.scalar_type() == x.scalar_type() &&
                            step.weight.device() == x.device(),
                        op, ": step ", k, " (linear): weight is ", step.weight.scalar_type(),
                        " on ", step.weight.device(), " but x is ", x.scalar_type(), " on ",
                        x.device());
      auto Wt = step.weight.t();
      h = step.bias.defined() ? at::addmm(step.bias, h, Wt) : at::mm(h, Wt);
      J = at::matmul(J, Wt);
      if (lap) L = at::mm(L, Wt);
      if (hess) H = at::matmul(H, Wt);
    } else {
      auto [s, d1, d2] = activation(op_name, step.kind, h);
      if (lap) L = d1 * L + d2 * (J * J).sum(1);
      if (hess) H = d1.unsqueeze(1).unsqueeze(1) * H +
                    d2.unsqueeze(1).unsqueeze(1) * J.unsqueeze(2) * J.unsqueeze(1);
      J = d1.unsqueeze(1) * J;
      h = s;
    }
  }
  const auto m = h.size(-1);
  auto shape = [&](std::initializer_list<int64_t> tail) {
    auto out = batch;
    out.insert(out.end(), tail.begin(), tail.end());
    return out;
  };
  auto value = h.reshape(shape({m}));
  if (lap) return {value, L.reshape(shape({m}))};
  if (hess) return {value, H.permute({0, 3, 1, 2}).reshape(shape({m, d, d}))};
  if (op_name == "jacobian") return {value, J.transpose(1, 2).reshape(shape({m, d}))};
  TORCH_CHECK_VALUE(m == d, op, ": the model maps d = ", d, " coordinates to ", m,
                    " components; the divergence needs a vector field with d components");
  return {value, J.diagonal(0, 1, 2).sum(-1).reshape(batch)};
}

namespace {

// The function form on u = f(x), or forward-over-reverse; `graph` is the graph-form operator.
template <typename Graph>
std::tuple<at::Tensor, at::Tensor> function_form(const char* op, const Function& f,
                                                 const at::Tensor& x, const Options& options,
                                                 bool second_order, Graph graph) {
  TORCH_CHECK_VALUE(static_cast<bool>(f), op, ": f is an empty function");
  const auto& method = options.method();
  TORCH_CHECK_VALUE(method != "forward", op, ": method 'forward' needs an MLP whose layers diffops "
                    "can read: pass a torch::nn::Sequential (#include <diffops/nn.h>)");
  if (method == "forward-over-reverse") {
    TORCH_CHECK_VALUE(second_order, op, ": method 'forward-over-reverse' is for laplacian and "
                      "hessian; got it for ", op);
    TORCH_CHECK_VALUE(options.samples() == 1 && !options.generator().has_value() &&
                          !options.check_structure(),
                      op, ": samples, generator and check_structure are not used by method "
                      "'forward-over-reverse'");
    auto [u, H] = detail::forward_over_reverse(op, f, x, options.create_graph());
    if (std::string_view(op) == "hessian") return {u, H};
    return {u, H.diagonal(0, -2, -1).sum(-1)};
  }
  auto u = f(x);
  return {u, graph(u, x, options)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> laplacian(const Function& f, const at::Tensor& x,
                                             const Options& options) {
  return function_form("laplacian", f, x, options, true,
                       [](auto& u, auto& x_, auto& o) { return laplacian(u, x_, o); });
}

std::tuple<at::Tensor, at::Tensor> hessian(const Function& f, const at::Tensor& x,
                                           const Options& options) {
  return function_form("hessian", f, x, options, true,
                       [](auto& u, auto& x_, auto& o) { return hessian(u, x_, o); });
}

std::tuple<at::Tensor, at::Tensor> divergence(const Function& f, const at::Tensor& x,
                                              const Options& options) {
  return function_form("divergence", f, x, options, false,
                       [](auto& u, auto& x_, auto& o) { return divergence(u, x_, o); });
}

std::tuple<at::Tensor, at::Tensor> jacobian(const Function& f, const at::Tensor& x,
                                            const Options& options) {
  return function_form("jacobian", f, x, options, false,
                       [](auto& u, auto& x_, auto& o) { return jacobian(u, x_, o); });
}

}  // namespace diffops
