// The C++ mirror of tests/test_exact.py and tests/test_errors.py: analytic fields at dyadic points
// asserted with torch::equal in float32 and float64, and the error diagnostics.

#include <ATen/CPUGeneratorImpl.h>
#include <diffops/diffops.h>
#include <diffops/nn.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "expect_error.h"

#include <functional>
#include <string>

namespace {

using torch::Tensor;

const std::vector<double> kP2 = {1.0, 2.0, 0.5, -1.5, -2.0, 0.25, 0.75, 0.0};
const std::vector<double> kP3 = {1.0, 2.0, -0.5, 0.5, -1.5, 2.0, -2.0, 0.25, 1.0, 0.0, 0.75, -1.25};

Tensor points(const std::vector<double>& p, int64_t d, torch::Dtype dtype) {
  return torch::tensor(p, torch::dtype(torch::kFloat64))
      .reshape({-1, d})
      .to(dtype)
      .requires_grad_();
}

Tensor col(const Tensor& x, int64_t i) { return x.select(-1, i); }

// A float64 MLP d -> width -> width -> width -> d of three activations, Tanh around the middle
// one (SiLU or Tanh).
torch::nn::Sequential three_layer_mlp(int64_t d, int64_t width, bool silu_middle) {
  torch::nn::Sequential net(torch::nn::Linear(d, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, width));
  if (silu_middle) net->push_back(torch::nn::SiLU());
  else net->push_back(torch::nn::Tanh());
  net->push_back(torch::nn::Linear(width, width));
  net->push_back(torch::nn::Tanh());
  net->push_back(torch::nn::Linear(width, d));
  net->to(torch::kFloat64);
  return net;
}

// The gradients of sum(got²) and sum(want²) to every parameter agree (float64 round-off); a
// parameter the operator does not see (an output bias) has none on either side.
void expect_same_parameter_gradients(const Tensor& got, const Tensor& want,
                                     const std::vector<Tensor>& params, const std::string& label) {
  auto g_got = torch::autograd::grad({got.pow(2).sum()}, params, {}, true, false, true);
  auto g_want = torch::autograd::grad({want.pow(2).sum()}, params, {}, true, false, true);
  for (size_t k = 0; k < params.size(); ++k) {
    EXPECT_EQ(g_got[k].defined(), g_want[k].defined()) << label << " parameter " << k;
    if (!g_want[k].defined() || !g_got[k].defined()) continue;
    EXPECT_TRUE(torch::allclose(g_got[k], g_want[k], 1e-10, 1e-12)) << label << " parameter " << k;
  }
}

// u = x0² x1 + 3 x1³
Tensor f1(const Tensor& x) { return col(x, 0).pow(2) * col(x, 1) + 3 * col(x, 1).pow(3); }
// F = (x0 x1, x1 x2, x2 x0)
Tensor F3(const Tensor& x) {
  return torch::stack({col(x, 0) * col(x, 1), col(x, 1) * col(x, 2), col(x, 2) * col(x, 0)}, -1);
}
// G = (x1² x2, x0 x2², x0² x1)
Tensor G3(const Tensor& x) {
  return torch::stack({col(x, 1).pow(2) * col(x, 2), col(x, 0) * col(x, 2).pow(2),
                       col(x, 0).pow(2) * col(x, 1)},
                      -1);
}

class Exact : public ::testing::TestWithParam<torch::Dtype> {};

TEST_P(Exact, GradientLaplacianHessianPartials) {
  auto x = points(kP2, 2, GetParam());
  auto u = f1(x);
  auto a = x.detach();
  auto a0 = col(a, 0), a1 = col(a, 1);
  EXPECT_TRUE(torch::equal(diffops::gradient(u, x),
                           torch::stack({2 * a0 * a1, a0.pow(2) + 9 * a1.pow(2)}, -1)));
  EXPECT_TRUE(torch::equal(diffops::laplacian(u, x), 2 * a1 + 18 * a1));
  EXPECT_TRUE(torch::equal(
      diffops::hessian(u, x),
      torch::stack({torch::stack({2 * a1, 2 * a0}, -1), torch::stack({2 * a0, 18 * a1}, -1)}, -2)));
  EXPECT_TRUE(torch::equal(diffops::partial(u, x, 0), 2 * a0 * a1));
  EXPECT_TRUE(torch::equal(diffops::partial(u, x, {1, 1}), 18 * a1));
  EXPECT_TRUE(torch::equal(diffops::partial(u, x, {0, 0, 1}), torch::full_like(a0, 2)));
  EXPECT_TRUE(torch::equal(diffops::partial(u, x, {1, 1, 1, 1}), torch::zeros_like(a0)));
  auto w = torch::tensor({0.5, -2.0}, torch::dtype(GetParam()));
  EXPECT_TRUE(torch::equal(diffops::directional_derivative(u, x, w),
                           0.5 * (2 * a0 * a1) - 2 * (a0.pow(2) + 9 * a1.pow(2))));
}

TEST_P(Exact, VectorCalculus) {
  auto x = points(kP3, 3, GetParam());
  auto a = x.detach();
  auto a0 = col(a, 0), a1 = col(a, 1), a2 = col(a, 2);
  EXPECT_TRUE(torch::equal(diffops::divergence(F3(x), x), a1 + a2 + a0));
  EXPECT_TRUE(torch::equal(diffops::curl(F3(x), x), -torch::stack({a1, a2, a0}, -1)));
  EXPECT_TRUE(torch::equal(diffops::laplacian(G3(x), x), torch::stack({2 * a2, 2 * a0, 2 * a1}, -1)));
  EXPECT_TRUE(torch::equal(diffops::jacobian(x, x), torch::eye(3, a.options()).expand({4, 3, 3})));
  auto z = torch::zeros_like(a0);
  EXPECT_TRUE(torch::equal(diffops::jacobian(F3(x), x),
                           torch::stack({torch::stack({a1, a0, z}, -1), torch::stack({z, a2, a1}, -1),
                                         torch::stack({a2, z, a0}, -1)},
                                        -2)));
  auto w = torch::tensor({1.0, 2.0, -1.0}, torch::dtype(GetParam()));
  EXPECT_TRUE(torch::equal(diffops::directional_derivative(F3(x), x, w),
                           torch::stack({a1 + 2 * a0, 2 * a2 - a1, a2 - a0}, -1)));
  // 2-D curl is a scalar
  auto p = points(kP2, 2, GetParam());
  auto v = torch::stack({-col(p, 1) * col(p, 0), col(p, 0).pow(2)}, -1);
  EXPECT_TRUE(torch::equal(diffops::curl(v, p), 3 * col(p.detach(), 0)));
}

TEST_P(Exact, Identities) {
  auto x = points(kP3, 3, GetParam());
  auto f = col(x, 0).pow(2) * col(x, 1) * col(x, 2) + col(x, 1).pow(3);
  auto zeros3 = torch::zeros({4, 3}, x.options().requires_grad(false));
  EXPECT_TRUE(torch::equal(diffops::curl(diffops::gradient(f, x), x), zeros3));
  EXPECT_TRUE(torch::equal(diffops::divergence(diffops::curl(G3(x), x), x), zeros3.select(-1, 0)));
  auto lap = diffops::laplacian(f, x);
  auto H = diffops::hessian(f, x);
  EXPECT_TRUE(torch::equal(lap, diffops::divergence(diffops::gradient(f, x), x)));
  EXPECT_TRUE(torch::equal(lap, H.diagonal(0, -2, -1).sum(-1)));
}

TEST_P(Exact, ElementwiseDerivatives) {
  auto x = (torch::arange(-7, 8, torch::dtype(GetParam())) / 4).requires_grad_();
  auto a = x.detach();
  auto s = torch::sin(x);
  EXPECT_TRUE(torch::equal(diffops::derivative(s, x), torch::cos(a)));
  EXPECT_TRUE(torch::equal(diffops::derivative(s, x, 2), -torch::sin(a)));
  EXPECT_TRUE(torch::equal(diffops::derivative(s, x, 3), -torch::cos(a)));
  auto c = x.pow(3);
  EXPECT_TRUE(torch::equal(diffops::derivative(c, x), 3 * a.pow(2)));
  EXPECT_TRUE(torch::equal(diffops::derivative(c, x, 2), 6 * a));
  EXPECT_TRUE(torch::equal(diffops::derivative(c, x, 4), torch::zeros_like(a)));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Exact, ::testing::Values(torch::kFloat32, torch::kFloat64),
                         [](const auto& info) {
                           return info.param == torch::kFloat32 ? "f32" : "f64";
                         });

TEST(Graph, CreateGraphOption) {
  auto x = points(kP2, 2, torch::kFloat64);
  auto u = f1(x);
  auto lap = diffops::laplacian(u, x);
  EXPECT_TRUE(lap.requires_grad());
  EXPECT_FALSE(diffops::laplacian(u, x, diffops::Options().create_graph(false)).requires_grad());
  EXPECT_TRUE(torch::equal(diffops::partial(lap, x, 1), torch::full({4}, 20.0, torch::kFloat64)));
}

TEST(Graph, LinearNetworkSecondDerivativesAreZeros) {
  torch::nn::Linear net(3, 2);
  net->to(torch::kFloat64);
  auto x = torch::randn({5, 3}, torch::kFloat64).requires_grad_();
  auto u = net(x);
  EXPECT_TRUE(torch::equal(diffops::laplacian(u, x), torch::zeros({5, 2}, torch::kFloat64)));
  EXPECT_TRUE(torch::equal(diffops::hessian(u, x), torch::zeros({5, 2, 3, 3}, torch::kFloat64)));
  auto g = diffops::gradient(u.select(1, 0), x);
  EXPECT_TRUE(torch::equal(diffops::divergence(g, x), torch::zeros({5}, torch::kFloat64)));
}

// Error diagnostics: (what, call, expected exception kind, message prefix)
struct ErrorCase {
  std::string name;
  std::function<void()> call;
  bool value_error;
  std::string prefix;
};

Tensor px() { return points({1.0, 2.0, 0.5, -1.5}, 2, torch::kFloat64); }
Tensor field(const Tensor& x) { return col(x, 0).pow(2) * col(x, 1); }

std::vector<ErrorCase> error_cases() {
  auto opts = torch::dtype(torch::kFloat64);
  return {
      {"rebuilt", [] { auto x = px(); auto u = field(x);
          diffops::gradient(torch::tensor({u[0].item<double>(), u[1].item<double>()}, torch::kFloat64), x); },
       false, "gradient: u has no grad_fn"},
      {"detached", [] { auto x = px(); diffops::laplacian(field(x).detach(), x); }, false,
       "laplacian: u has no grad_fn"},
      {"no_grad", [] { auto x = px(); Tensor u; { torch::NoGradGuard g; u = field(x); }
          diffops::hessian(u, x); }, false, "hessian: u has no grad_fn"},
      {"slice", [] { auto x = px(); diffops::gradient(field(x), x.slice(1, 0, 1)); }, false,
       "gradient: x is not in the graph of u"},
      {"recreated", [] { auto x = px(); diffops::laplacian(field(x), x.detach().clone().requires_grad_()); },
       false, "laplacian: x is not in the graph of u"},
      {"x_without_grad", [opts] { auto x = torch::ones({2, 3}, opts); diffops::divergence(x * x, x); },
       false, "divergence: x does not require grad"},
      {"inference_mode", [] { auto x = px(); auto u = field(x); c10::InferenceMode guard;
          diffops::laplacian(u, x); }, false, "laplacian: called inside torch.inference_mode()"},
      {"integer_x", [] { diffops::gradient(torch::ones({2}), torch::ones({2, 2}, torch::kInt64)); },
       true, "gradient: x must have a real floating dtype"},
      {"dtype_mismatch", [] { auto x = px(); diffops::laplacian(field(x).to(torch::kFloat32), x); },
       true, "laplacian: dtype mismatch"},
      {"device_mismatch", [] { auto x = px(); diffops::gradient(field(x).to(torch::kMeta), x); },
       true, "gradient: device mismatch"},
      {"batch_mismatch", [] { auto x = px(); diffops::laplacian(field(x).repeat({2}), x); }, true,
       "laplacian: u has shape [4] but x has shape [2, 2]"},
      {"scalar_x", [opts] { auto x = torch::tensor(2.0, opts).requires_grad_(); diffops::gradient(x.pow(3), x); },
       true, "gradient: x is a 0-dim tensor"},
      {"index_range", [] { auto x = px(); diffops::partial(field(x), x, {0, 2}); }, true,
       "partial: index [0, 2] names coordinate 2"},
      {"index_empty", [] { auto x = px(); diffops::partial(field(x), x, at::IntArrayRef{}); }, true,
       "partial: index is empty"},
      {"order_zero", [opts] { auto x = torch::tensor(2.0, opts).requires_grad_();
          diffops::derivative(x.pow(3), x, 0); }, true, "derivative: order must be at least 1"},
      {"curl_d4", [opts] { auto x = torch::ones({2, 4}, opts).requires_grad_(); diffops::curl(x * x, x); },
       true, "curl: defined for d = 2 or d = 3"},
      {"divergence_components", [] { auto x = px();
          diffops::divergence(torch::stack({col(x, 0), col(x, 1), col(x, 0)}, -1), x); },
       true, "divergence: v has shape [2, 3]"},
      {"derivative_shape", [] { auto x = px(); diffops::derivative(field(x), x); }, true,
       "derivative: y has shape [2] but x has shape [2, 2]"},
      {"direction_shape", [opts] { auto x = px(); diffops::directional_derivative(field(x), x, torch::ones({3}, opts)); },
       true, "directional_derivative: direction of shape [3] does not broadcast"},
  };
}

TEST(Methods, LoopIsTheDefaultAndHutchinsonIsExactOnDiagonalJacobians) {
  auto x = torch::randn({6, 4}, torch::kFloat64).requires_grad_();
  auto u = (x.sin() + x.pow(4)).sum(-1);  // separable: diagonal Hessian
  auto v = x.sin() * 3 + x.pow(3);        // elementwise: diagonal Jacobian
  EXPECT_TRUE(torch::equal(diffops::laplacian(u, x, diffops::Options().method("loop")),
                           diffops::laplacian(u, x)));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  auto h = diffops::Options().method("hutchinson").samples(3).generator(gen);
  EXPECT_TRUE(torch::allclose(diffops::laplacian(u, x, h), diffops::laplacian(u, x), 1e-14, 1e-14));
  EXPECT_TRUE(torch::allclose(diffops::divergence(v, x, h), diffops::divergence(v, x), 1e-14, 1e-14));
  // a coupled field: an estimate, reproducible with the same seed
  auto w = torch::stack({x.select(1, 0) * x.select(1, 1), x.select(1, 1) * x.select(1, 2),
                         x.select(1, 2) * x.select(1, 3), x.select(1, 3) * x.select(1, 0)}, -1);
  auto s = [&](uint64_t seed) {
    return diffops::divergence(w, x, diffops::Options().method("hutchinson").generator(
                                         at::make_generator<at::CPUGeneratorImpl>(seed)));
  };
  EXPECT_TRUE(torch::equal(s(5), s(5)));
  EXPECT_FALSE(torch::equal(s(5), diffops::divergence(w, x)));
  auto expect = expect_error<c10::ValueError>;
  expect([&] { diffops::laplacian(u, x, diffops::Options().method("forward")); },
         "laplacian: method must be one of 'auto', 'loop', 'batched', 'hutchinson', got 'forward'");
  expect([&] { diffops::hessian(u, x, diffops::Options().method("hutchinson")); },
         "hessian: method must be one of 'auto', 'loop', 'batched', got 'hutchinson'");
  expect([&] { diffops::partial(u, x, {0, 1}, diffops::Options().method("batched")); },
         "partial: method must be one of 'auto', 'loop', got 'batched'");
  expect([&] { diffops::divergence(v, x, diffops::Options().samples(2)); },
         "divergence: samples and generator are only used by method='hutchinson'");
}

TEST(Methods, BatchedAgreesWithLoopAndExplainCountsThePasses) {
  torch::nn::Sequential net(torch::nn::Linear(3, 16), torch::nn::Tanh(), torch::nn::Linear(16, 3));
  net->to(torch::kFloat64);
  auto x = torch::randn({5, 3}, torch::kFloat64).requires_grad_();
  auto v = net->forward(x);  // a vector field; its components are scalar fields too
  const auto loop = diffops::Options().method("loop"), batched = diffops::Options().method("batched");
  using Op = std::function<Tensor(const Tensor&, const Tensor&, const diffops::Options&)>;
  const std::vector<std::pair<std::string, Op>> ops = {
      {"gradient", [](auto& u, auto& p, auto& o) { return diffops::gradient(u, p, o); }},
      {"jacobian", [](auto& u, auto& p, auto& o) { return diffops::jacobian(u, p, o); }},
      {"curl", [](auto& u, auto& p, auto& o) { return diffops::curl(u, p, o); }},
      {"divergence", [](auto& u, auto& p, auto& o) { return diffops::divergence(u, p, o); }},
      {"laplacian", [](auto& u, auto& p, auto& o) { return diffops::laplacian(u, p, o); }},
      {"hessian", [](auto& u, auto& p, auto& o) { return diffops::hessian(u, p, o); }}};
  for (const auto& [name, op] : ops) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(torch::allclose(op(v, x, batched), op(v, x, loop), 1e-12, 1e-14));
    const auto plan = diffops::explain(name, v, x, batched);
    EXPECT_EQ(plan.method, "batched");
    EXPECT_EQ(diffops::explain(name, v, x).method, "loop");
    const bool second = name == "laplacian" || name == "hessian";
    EXPECT_EQ(plan.passes, second ? 2 * 3 : name == "divergence" ? 1 : 1);
    EXPECT_EQ(plan.products, second ? 3 * (1 + 3) : 3);
    EXPECT_EQ(diffops::explain(name, v, x, loop).passes, plan.products);
  }
}

TEST(FunctionForm, SequentialAndCallableFormsEqualTheGraphForm) {
  torch::nn::Sequential net(torch::nn::Linear(3, 16), torch::nn::GELU(), torch::nn::Linear(16, 3));
  net->to(torch::kFloat64);
  auto x = torch::randn({6, 3}, torch::kFloat64).requires_grad_();
  auto v = net->forward(x);
  const auto forward = diffops::Options().method("forward");
  auto [v1, div] = diffops::divergence(net, x, forward);
  EXPECT_TRUE(torch::allclose(div, diffops::divergence(v, x), 1e-10, 1e-12));
  EXPECT_EQ(diffops::explain("divergence", net, x).method, "forward");  // auto: forward
  EXPECT_EQ(diffops::explain("jacobian", net, x).method, "forward");    // 3 tangents, 3 outputs
  EXPECT_EQ(diffops::explain("hessian", net, x).method, "forward");     // auto: forward too
  torch::nn::Sequential narrow_out(torch::nn::Linear(3, 16), torch::nn::Tanh(), torch::nn::Linear(16, 1));
  narrow_out->to(torch::kFloat64);
  EXPECT_EQ(diffops::explain("jacobian", narrow_out, x).method, "loop");  // 3 tangents > 1 pass
  EXPECT_EQ(diffops::explain("divergence", net, x, forward).method, "forward");
  auto [v2, jac] = diffops::jacobian(net, x, forward);
  EXPECT_TRUE(torch::allclose(jac, diffops::jacobian(v, x), 1e-10, 1e-12));
  auto [v3, hess] = diffops::hessian(net, x, forward);
  EXPECT_TRUE(torch::allclose(hess, diffops::hessian(v, x), 1e-10, 1e-12));
  EXPECT_EQ(diffops::explain("hessian", net, x, forward).products, 3 + 3);  // + 3 adjoints
  EXPECT_EQ(diffops::explain("laplacian", net, x).method, "forward");

  // any callable: forward-over-reverse, on points that need no requires_grad
  diffops::Function f = [](const Tensor& p) { return p.sin().prod(-1) + p.pow(3).sum(-1); };
  auto plain = x.detach();
  auto fwd_rev = diffops::Options().method("forward-over-reverse");
  auto [u, lap] = diffops::laplacian(f, plain, fwd_rev);
  auto [u_h, h] = diffops::hessian(f, plain, fwd_rev);
  auto ux = f(x);
  EXPECT_TRUE(torch::allclose(u, ux, 1e-14, 1e-14));
  EXPECT_TRUE(torch::allclose(lap, diffops::laplacian(ux, x), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(h, diffops::hessian(ux, x), 1e-12, 1e-12));
  auto [u_one, lap_one] = diffops::laplacian(f, plain.narrow(0, 0, 1), fwd_rev);  // one point
  EXPECT_TRUE(torch::allclose(lap_one, diffops::laplacian(ux, x).narrow(0, 0, 1), 1e-12, 1e-12));
  auto [u_net, lap_net] = diffops::laplacian(net, plain, fwd_rev);  // a Sequential, by request
  EXPECT_TRUE(torch::allclose(lap_net, std::get<1>(diffops::laplacian(net, x)), 1e-10, 1e-12));
  lap_net.pow(2).sum().backward();  // differentiable: reaches the weights
  EXPECT_TRUE(net->parameters()[0].grad().defined());
  auto expect = expect_error<c10::ValueError>;
  expect([&] { diffops::laplacian(f, x, diffops::Options().method("forward")); },
         "laplacian: method 'forward' needs an MLP");
  expect([&] { diffops::divergence(f, x, fwd_rev); },
         "divergence: method 'forward-over-reverse' is for laplacian and hessian");
}

TEST(FunctionForm, AlongSomeCoordinatesOnly) {
  // u(x, t) of 3 inputs: Δ over x = (x0, x1) with t held fixed, the Hessian block of (x2, x0) and
  // a divergence over the last two coordinates; the forward propagation (a Sequential), the
  // callable form and forward-over-reverse against the full graph-form Hessian and Jacobian.
  torch::manual_seed(7);
  torch::nn::Sequential net(torch::nn::Linear(3, 12), torch::nn::Tanh(), torch::nn::Linear(12, 12),
                            torch::nn::SiLU(), torch::nn::Linear(12, 1));
  net->to(torch::kFloat64);
  auto xt = torch::randn({7, 3}, torch::kFloat64).requires_grad_();
  auto u = net->forward(xt);
  auto H = diffops::hessian(u, xt);  // (7, 1, 3, 3)
  auto lap_x = H.select(-1, 0).select(-1, 0) + H.select(-1, 1).select(-1, 1);
  const auto space = diffops::Options().coords({0, 1});
  auto [value, lap] = diffops::laplacian(net, xt, space);
  EXPECT_TRUE(torch::allclose(value, u, 1e-13, 1e-14));
  EXPECT_TRUE(torch::allclose(lap, lap_x, 1e-11, 1e-13));
  EXPECT_EQ(diffops::explain("laplacian", net, xt, space).products, 2 + 1);
  diffops::Function f = [&net](const Tensor& p) { return net->forward(p); };
  EXPECT_TRUE(torch::allclose(std::get<1>(diffops::laplacian(f, xt, space)), lap_x, 1e-11, 1e-13));
  auto fwd_rev = diffops::Options().method("forward-over-reverse").coords({0, 1});
  EXPECT_TRUE(torch::allclose(std::get<1>(diffops::laplacian(f, xt.detach(), fwd_rev)), lap_x, 1e-11, 1e-13));
  auto idx = torch::tensor({2, 0});
  auto block = H.index_select(-1, idx).index_select(-2, idx);
  EXPECT_TRUE(torch::allclose(std::get<1>(diffops::hessian(net, xt, diffops::Options().coords({-1, 0}))),
                              block, 1e-11, 1e-13));
  lap.pow(2).sum().backward();  // trains: the weights get a gradient
  EXPECT_TRUE(net->parameters()[0].grad().defined());

  torch::nn::Sequential field(torch::nn::Linear(3, 8), torch::nn::Tanh(), torch::nn::Linear(8, 2));
  field->to(torch::kFloat64);
  auto v = field->forward(xt);
  auto J = diffops::jacobian(v, xt);  // (7, 2, 3)
  auto div_tail = J.select(1, 0).select(-1, 1) + J.select(1, 1).select(-1, 2);
  EXPECT_TRUE(torch::allclose(std::get<1>(diffops::divergence(field, xt, diffops::Options().coords({1, 2}))),
                              div_tail, 1e-11, 1e-13));
  auto expect = expect_error<c10::ValueError>;
  expect([&] { diffops::laplacian(net, xt, diffops::Options().coords({0, 0})); },
         "laplacian: coords names coordinate 0 twice");
  expect([&] { diffops::laplacian(f, xt, diffops::Options().coords({3})); },
         "laplacian: coords entry 3 is out of range for d = 3 coordinates");
  expect([&] { diffops::laplacian(u, xt, space); }, "laplacian: coords is for the function form");
}

TEST(FunctionForm, ReducedBasisForNarrowFirstLayers) {
  // d = 24 inputs into a first layer of width 6: 6 tangents (R of W₁ᵀ = QR) carry everything.
  torch::manual_seed(2);
  torch::nn::Sequential net(torch::nn::Linear(24, 6), torch::nn::Tanh(), torch::nn::Linear(6, 6),
                            torch::nn::Sigmoid(), torch::nn::Linear(6, 24));
  net->to(torch::kFloat64);
  auto x = torch::randn({5, 24}, torch::kFloat64).requires_grad_();
  auto v = net->forward(x);
  const auto forward = diffops::Options().method("forward");
  for (std::string op : {"laplacian", "divergence", "jacobian", "hessian"}) {
    Tensor got = op == "laplacian"    ? std::get<1>(diffops::laplacian(net, x, forward))
                 : op == "divergence" ? std::get<1>(diffops::divergence(net, x, forward))
                 : op == "jacobian"   ? std::get<1>(diffops::jacobian(net, x, forward))
                                      : std::get<1>(diffops::hessian(net, x, forward));
    Tensor want = op == "laplacian"    ? diffops::laplacian(v, x)
                  : op == "divergence" ? diffops::divergence(v, x)
                  : op == "jacobian"   ? diffops::jacobian(v, x)
                                       : diffops::hessian(v, x);
    EXPECT_TRUE(torch::allclose(got, want, 1e-10, 1e-12)) << op;
    // the weights' gradients through the QR equal the graph form's
    expect_same_parameter_gradients(got, want, net->parameters(), op);
    auto plan = diffops::explain(op, net, x, forward);
    // + 1 second-order sum for the Laplacian, + 24 adjoints (one per component) for the Hessian
    EXPECT_EQ(plan.products, 6 + (op == "laplacian" ? 1 : op == "hessian" ? 24 : 0)) << op;
    EXPECT_NE(plan.reason.find("6 tangents for d = 24"), std::string::npos) << plan.reason;
  }
  expect_error<c10::ValueError>([&] { diffops::laplacian(net, torch::tensor(1.0, torch::kFloat64)); },
                                "laplacian: x must have shape batch + (d,)");
  // a field whose last step is an activation: the tangents go through it too
  torch::nn::Sequential squashed(torch::nn::Linear(24, 6), torch::nn::Tanh(), torch::nn::Linear(6, 24),
                                 torch::nn::Sigmoid());
  squashed->to(torch::kFloat64);
  auto s = squashed->forward(x);
  EXPECT_TRUE(torch::allclose(std::get<1>(diffops::divergence(squashed, x, forward)),
                              diffops::divergence(s, x), 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(std::get<1>(diffops::jacobian(squashed, x, forward)),
                              diffops::jacobian(s, x), 1e-10, 1e-12));
}

TEST(FunctionForm, DivergenceMeetsAdjointsAtEveryDepth) {
  // Tangents forward through the first half of the hidden Linears, adjoints back through the rest:
  // 0 to 4 hidden Linears, the reduced basis (d = 7 into width 4), an activation first.
  for (int linears = 2; linears <= 6; ++linears) {
    for (auto [d, width, first] : {std::tuple{3, 5, false}, std::tuple{7, 4, false}, std::tuple{3, 5, true}}) {
      torch::manual_seed(linears);
      torch::nn::Sequential net;
      if (first) net->push_back(torch::nn::Sigmoid());
      for (int k = 0; k < linears; ++k) {
        net->push_back(torch::nn::Linear(k == 0 ? d : width, k + 1 == linears ? d : width));
        if (k + 1 < linears) {
          if (k % 2) net->push_back(torch::nn::SiLU());
          else net->push_back(torch::nn::Tanh());
        }
      }
      net->to(torch::kFloat64);
      auto x = torch::randn({6, d}, torch::kFloat64).requires_grad_();
      auto [v, div] = diffops::divergence(net, x, diffops::Options().method("forward"));
      auto want = diffops::divergence(net->forward(x), x);
      const auto label = std::to_string(linears) + " linears, d " + std::to_string(d);
      EXPECT_TRUE(torch::allclose(div, want, 1e-10, 1e-12)) << label;
      expect_same_parameter_gradients(div, want, net->parameters(), label);
    }
  }
}

TEST(FunctionForm, CacheReusesBlocksAndChangesNoResult) {
  // The forward propagation's (N, r, w) tangents (4 MiB here) come back to diffops' CPU cache when
  // they die and serve the next call; results are bit for bit those of an uncached call.
  torch::manual_seed(3);
  auto net = three_layer_mlp(8, 64, false);
  auto x = torch::randn({1024, 8}, torch::kFloat64);
  auto step = [&] {
    auto [v, div] = diffops::divergence(net, x);
    auto grads = torch::autograd::grad({div.pow(2).mean()}, net->parameters(), {}, false, false, true);
    grads.insert(grads.begin(), div.detach());
    return grads;
  };
  const auto limit = diffops::cache_limit();
  diffops::empty_cache();
  EXPECT_EQ(diffops::set_cache_limit(0), limit);  // the reference: nothing cached
  const auto want = step();
  EXPECT_EQ(diffops::cached_bytes(), 0);
  diffops::set_cache_limit(limit);
  std::vector<int64_t> sizes;
  for (int k = 0; k < 3; ++k) {
    const auto got = step();
    sizes.push_back(diffops::cached_bytes());
    for (size_t i = 0; i < want.size(); ++i) {  // the last bias has no gradient: undefined on both
      ASSERT_EQ(got[i].defined(), want[i].defined()) << k << " " << i;
      if (want[i].defined()) EXPECT_TRUE(torch::equal(got[i], want[i])) << k << " " << i;
    }
  }
  EXPECT_GE(sizes[0], int64_t{4} << 20);
  EXPECT_EQ(sizes[1], sizes[0]);  // the same blocks taken again and given back
  EXPECT_EQ(sizes[2], sizes[0]);
  diffops::empty_cache();
  EXPECT_EQ(diffops::cached_bytes(), 0);
  expect_error<c10::ValueError>([] { diffops::set_cache_limit(-1); },
                                "set_cache_limit: bytes must be >= 0, got -1");
}

TEST(Structure, CheckStructureCatchesCoupledPoints) {
  torch::manual_seed(0);
  auto x = torch::randn({12, 3}, torch::kFloat64).requires_grad_();
  auto check = diffops::Options().check_structure(true);
  auto independent = (x.sin() * x.select(1, 0).unsqueeze(1)).sum(-1);
  EXPECT_TRUE(torch::equal(diffops::laplacian(independent, x, check), diffops::laplacian(independent, x)));
  auto coupled = independent * independent.mean();  // every point sees the batch mean
  expect_error<c10::ValueError>([&] { diffops::laplacian(coupled, x, check); },
                                "laplacian: check_structure: u[n] depends on points other than x[n]");
  auto t = torch::linspace(-1, 1, 9, torch::kFloat64).requires_grad_();
  EXPECT_THROW(diffops::derivative(torch::cumsum(t, 0), t, 1, check), c10::ValueError);
  EXPECT_TRUE(torch::equal(diffops::derivative(t.sin(), t, 1, check), t.detach().cos()));
}

TEST(FunctionForm, ForwardLaplacianEqualsTheGraphFormAndFallsBack) {
  torch::manual_seed(0);
  torch::nn::Sequential mlp(torch::nn::Linear(3, 16), torch::nn::Tanh(), torch::nn::Linear(16, 16),
                            torch::nn::SiLU(), torch::nn::Linear(16, 2));
  mlp->to(torch::kFloat64);
  ASSERT_TRUE(diffops::mlp_steps(mlp).has_value());
  auto x = torch::randn({7, 3}, torch::kFloat64).requires_grad_();
  auto [u, lap] = diffops::laplacian(mlp, x);
  EXPECT_TRUE(torch::allclose(u, mlp->forward(x), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(lap, diffops::laplacian(mlp->forward(x), x), 1e-10, 1e-12));
  // differentiable: a loss on it reaches the weights
  lap.pow(2).mean().backward();
  EXPECT_TRUE(mlp->parameters()[0].grad().defined());

  torch::nn::Sequential relu(torch::nn::Linear(3, 8), torch::nn::ReLU(), torch::nn::Linear(8, 1));
  relu->to(torch::kFloat64);
  EXPECT_FALSE(diffops::mlp_steps(relu).has_value());
  auto [v, lap_v] = diffops::laplacian(relu, x);  // graph form: zeros a.e. for ReLU
  EXPECT_TRUE(torch::equal(lap_v, diffops::laplacian(relu->forward(x), x)));
}

TEST(FunctionForm, NeedsNoRequiresGradAndWorksUnderNoGrad) {
  // x need not require grad (the graph fallbacks differentiate an alias of it); under NoGradGuard
  // every method gives the same numbers, detached, and the forward propagation scales its tangents
  // in place without changing a bit.
  torch::manual_seed(5);
  auto net = three_layer_mlp(3, 8, true);
  const auto x = torch::randn({6, 3}, torch::kFloat64);
  using Op = std::function<std::tuple<Tensor, Tensor>(const Tensor&, const diffops::Options&)>;
  const std::vector<std::pair<std::string, Op>> ops = {
      {"laplacian", [&](auto& p, auto& o) { return diffops::laplacian(net, p, o); }},
      {"divergence", [&](auto& p, auto& o) { return diffops::divergence(net, p, o); }},
      {"jacobian", [&](auto& p, auto& o) { return diffops::jacobian(net, p, o); }},
      {"hessian", [&](auto& p, auto& o) { return diffops::hessian(net, p, o); }}};
  for (const auto& [name, op] : ops) {
    for (std::string method : {"auto", "forward", "loop", "forward-over-reverse"}) {
      if (method == "forward-over-reverse" && (name == "divergence" || name == "jacobian")) continue;
      const auto options = diffops::Options().method(method);
      auto [u_ref, ref] = op(x.clone().requires_grad_(), options);
      auto [u, got] = op(x, options);
      const auto plan = diffops::explain(name, net, x.clone().requires_grad_(), options);
      for (bool grad : {true, false}) {  // explain describes that call too, in either grad mode
        torch::AutoGradMode mode(grad);
        const auto same = diffops::explain(name, net, x, options);
        EXPECT_EQ(same.method, plan.method) << name << " " << method;
        EXPECT_EQ(same.passes, plan.passes) << name << " " << method;
        EXPECT_EQ(same.products, plan.products) << name << " " << method;
      }
      EXPECT_TRUE(torch::equal(u, u_ref) && torch::equal(got, ref)) << name << " " << method;
      EXPECT_TRUE(got.requires_grad()) << name << " " << method;  // still trains the weights
      Tensor u_ng, got_ng;
      {
        torch::NoGradGuard no_grad;
        std::tie(u_ng, got_ng) = op(x, options);
      }
      EXPECT_TRUE(torch::equal(u_ng, u_ref) && torch::equal(got_ng, ref)) << name << " " << method;
      EXPECT_FALSE(got_ng.requires_grad() || u_ng.requires_grad()) << name << " " << method;
    }
  }
}

TEST(FunctionForm, ForwardPropagationOverSeveralChunksOfPoints) {
  // d = 16 tangents of width 64: the scaled product (the third Linear, for the Laplacian and the
  // Jacobian) takes 256 points a chunk on a CPU, so 600 points run in three chunks, the last
  // partial; values and weight gradients equal the graph form.
  torch::manual_seed(7);
  auto net = three_layer_mlp(16, 64, true);
  auto x = torch::randn({600, 16}, torch::kFloat64).requires_grad_();
  auto v = net->forward(x);
  const auto forward = diffops::Options().method("forward");
  auto lap = std::get<1>(diffops::laplacian(net, x, forward));
  auto jac = std::get<1>(diffops::jacobian(net, x, forward));
  auto div = std::get<1>(diffops::divergence(net, x, forward));
  EXPECT_TRUE(torch::allclose(lap, diffops::laplacian(v, x), 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(jac, diffops::jacobian(v, x), 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(div, diffops::divergence(v, x), 1e-10, 1e-12));
  expect_same_parameter_gradients(lap, diffops::laplacian(v, x), net->parameters(), "laplacian");
  expect_same_parameter_gradients(jac, diffops::jacobian(v, x), net->parameters(), "jacobian");
  expect_same_parameter_gradients(div, diffops::divergence(v, x), net->parameters(), "divergence");
}

TEST(Errors, NameOperatorArgumentAndCause) {
  for (const auto& c : error_cases()) {
    SCOPED_TRACE(c.name);
    try {
      c.call();
      ADD_FAILURE() << "no exception";
    } catch (const c10::ValueError& e) {
      EXPECT_TRUE(c.value_error) << "ValueError for a broken graph: " << e.what_without_backtrace();
      EXPECT_EQ(std::string(e.what_without_backtrace()).rfind(c.prefix, 0), 0u) << e.what_without_backtrace();
    } catch (const c10::Error& e) {
      EXPECT_FALSE(c.value_error) << "c10::Error for a bad argument: " << e.what_without_backtrace();
      EXPECT_EQ(std::string(e.what_without_backtrace()).rfind(c.prefix, 0), 0u) << e.what_without_backtrace();
    }
  }
}

}  // namespace
