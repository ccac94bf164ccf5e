// The C++ mirror of tests/test_derivatives.py: diffops::Derivatives gives every partial exactly
// (analytic values at dyadic points, float32 and float64), pays for each gradient row once, and
// gradient by separate coordinates / normal_derivative behave as in Python.

#include <diffops/diffops.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "expect_error.h"

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

using torch::Tensor;
using Index = std::vector<int64_t>;

const std::vector<double> kP = {1.0, 2.0, -0.5, 0.5, -1.5, 2.0, -2.0, 0.25, 1.0, 0.75, 0.0, -1.25};

// u = x0² x1 + 3 x1³ x2 + x0 x2²
Tensor field(const Tensor& x0, const Tensor& x1, const Tensor& x2) {
  return x0.pow(2) * x1 + 3 * x1.pow(3) * x2 + x0 * x2.pow(2);
}

std::map<Index, Tensor> analytic(const Tensor& a) {
  auto x0 = a.select(-1, 0), x1 = a.select(-1, 1), x2 = a.select(-1, 2);
  auto one = torch::ones_like(x0);
  return {
      {{0}, 2 * x0 * x1 + x2.pow(2)}, {{1}, x0.pow(2) + 9 * x1.pow(2) * x2},
      {{2}, 3 * x1.pow(3) + 2 * x0 * x2}, {{0, 0}, 2 * x1}, {{0, 1}, 2 * x0}, {{0, 2}, 2 * x2},
      {{1, 1}, 18 * x1 * x2}, {{1, 2}, 9 * x1.pow(2)}, {{2, 2}, 2 * x0}, {{0, 0, 1}, 2 * one},
      {{0, 2, 2}, 2 * one}, {{1, 1, 2}, 18 * x1}, {{1, 1, 1}, 18 * x2}, {{0, 0, 0}, 0 * one},
  };
}

Tensor dyadic(torch::Dtype dtype) {
  return torch::tensor(kP, torch::kFloat64).reshape({4, 3}).to(dtype);
}

class Cache : public ::testing::TestWithParam<torch::Dtype> {};

TEST_P(Cache, EveryPartialIsExactWithPointsAndSeparateCoordinates) {
  auto a = dyadic(GetParam());
  auto want = analytic(a);
  auto x = a.clone().requires_grad_();
  std::vector<Tensor> cs;
  for (int64_t i = 0; i < 3; ++i) cs.push_back(a.select(1, i).unsqueeze(1).clone().requires_grad_());

  diffops::Derivatives by_points(field(x.select(-1, 0), x.select(-1, 1), x.select(-1, 2)), x);
  diffops::Derivatives by_columns(field(cs[0], cs[1], cs[2]), cs);  // (N, 1) each
  for (auto& [index, value] : want) {
    SCOPED_TRACE(::testing::PrintToString(index));
    EXPECT_TRUE(torch::equal(by_points.partial(index), value));
    EXPECT_TRUE(torch::equal(by_columns.partial(index).reshape(-1), value));
  }
  EXPECT_TRUE(torch::equal(by_points.partial({2, 1, 1}), by_points.partial({1, 1, 2})));
  EXPECT_TRUE(torch::equal(by_points.laplacian(), want[{0, 0}] + want[{1, 1}] + want[{2, 2}]));
  EXPECT_TRUE(torch::equal(by_columns.laplacian().reshape(-1), by_points.laplacian()));
  auto H = by_points.hessian();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 3; ++j)
      EXPECT_TRUE(torch::equal(H.select(-2, i).select(-1, j), want[{std::min(i, j), std::max(i, j)}]));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Cache, ::testing::Values(torch::kFloat32, torch::kFloat64),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(CacheCost, EachGradientRowIsPaidOnce) {  // the same table as the Python test
  auto x = dyadic(torch::kFloat64).requires_grad_();
  diffops::Derivatives d(field(x.select(-1, 0), x.select(-1, 1), x.select(-1, 2)), x);
  const std::vector<std::pair<std::function<void()>, int64_t>> steps = {
      {[&] { d.partial({0}); }, 1},       {[&] { d.partial({2}); }, 1},
      {[&] { d.gradient(); }, 1},         {[&] { d.partial({0, 1}); }, 2},
      {[&] { d.partial({1, 0}); }, 2},    {[&] { d.partial({0, 0}); }, 2},
      {[&] { d.laplacian(); }, 4},        {[&] { d.hessian(); }, 4},
      {[&] { d.partial({0, 1, 2}); }, 5}, {[&] { d.partial({2, 0, 1}); }, 5},
      {[&] { d.partial({1, 1, 1}); }, 6},
  };
  for (size_t k = 0; k < steps.size(); ++k) {
    steps[k].first();
    EXPECT_EQ(d.products(), steps[k].second) << "step " << k;
  }
}

TEST(CacheCost, MatchesTheOperatorsOnAVectorField) {
  torch::manual_seed(0);
  auto net = torch::nn::Sequential(torch::nn::Linear(3, 16), torch::nn::Tanh(), torch::nn::Linear(16, 3));
  net->to(torch::kFloat64);
  auto x = torch::randn({8, 3}, torch::kFloat64).requires_grad_();
  auto v = net->forward(x);
  diffops::Derivatives d(v, x);
  EXPECT_TRUE(torch::allclose(d.divergence(), diffops::divergence(v, x), 1e-12, 1e-12));
  EXPECT_EQ(d.products(), 3);
  EXPECT_TRUE(torch::allclose(d.laplacian(), diffops::laplacian(v, x), 1e-12, 1e-12));
  EXPECT_EQ(d.products(), 12);  // + d rows per component
  EXPECT_TRUE(torch::allclose(d.partial({0, 2}, 1), diffops::partial(v.select(1, 1), x, {0, 2}), 1e-12, 1e-12));
  auto n = torch::nn::functional::normalize(torch::randn({8, 3}, torch::kFloat64),
                                            torch::nn::functional::NormalizeFuncOptions().dim(-1));
  EXPECT_TRUE(torch::allclose(d.normal_derivative(n), diffops::normal_derivative(v, x, n), 1e-12, 1e-12));
  EXPECT_EQ(d.products(), 12);
}

TEST(CacheGraph, LinearFieldAndNoGrad) {
  auto lin = torch::nn::Linear(3, 1);
  lin->to(torch::kFloat64);
  auto x = torch::randn({5, 3}, torch::kFloat64).requires_grad_();
  diffops::Derivatives d(lin->forward(x).select(1, 0), x);
  EXPECT_TRUE(torch::equal(d.partial({0, 1}), torch::zeros({5}, torch::kFloat64)));
  EXPECT_TRUE(torch::equal(d.partial({0, 1, 2}), torch::zeros({5}, torch::kFloat64)));

  auto p = dyadic(torch::kFloat64).requires_grad_();
  auto u = field(p.select(-1, 0), p.select(-1, 1), p.select(-1, 2));
  torch::NoGradGuard no_grad;  // the cache keeps its graphs: higher derivatives stay right
  diffops::Derivatives c(u, p);
  auto want = analytic(p.detach());
  EXPECT_TRUE(torch::equal(c.partial({0}), want[{0}]));
  EXPECT_TRUE(torch::equal(c.partial({1, 1, 2}), want[{1, 1, 2}]));
}

TEST(CacheErrors, NameTheArgumentAndTheCause) {
  auto expect = expect_error<c10::Error>;
  auto x = dyadic(torch::kFloat64).requires_grad_();
  auto u = [&] { return field(x.select(-1, 0), x.select(-1, 1), x.select(-1, 2)); };
  expect([&] { diffops::Derivatives(torch::ones({4}), torch::ones({4, 3})); },
         "Derivatives: x does not require grad");
  expect([&] { diffops::Derivatives(u().detach(), x); }, "Derivatives: u has no grad_fn");
  expect([&] { diffops::Derivatives(u(), x).partial({0, 3}); },
         "Derivatives: index [0, 3] names coordinate 3");
  expect([&] { diffops::Derivatives(u(), x).laplacian(1); }, "Derivatives: component 1 is out of range");
  expect([&] { diffops::Derivatives(u(), x).divergence(); }, "Derivatives: divergence needs a vector field");
  auto a = torch::rand({4, 1}).requires_grad_(), b = torch::rand({4, 1}).requires_grad_();
  auto other = b.detach().clone().requires_grad_();
  expect([&] { diffops::Derivatives(a * b, std::vector<Tensor>{a, other}).partial({0}); },
         "Derivatives: coordinates[1] is not in the graph of u");
  expect([&] { diffops::gradient(a * b, {a, other}); }, "gradient: coordinates[1] is not in the graph of u");
  expect([&] { diffops::normal_derivative(u(), x, torch::ones({2}, torch::kFloat64)); },
         "normal_derivative: normals of shape [2] does not broadcast");
}

TEST(SeparateCoordinates, GradientEqualsStackedPoints) {
  auto a = torch::rand({6, 1}, torch::kFloat64).requires_grad_();
  auto b = torch::rand({6, 1}, torch::kFloat64).requires_grad_();
  auto g = diffops::gradient(a.pow(2) * b.sin(), {a, b});  // (6, 1, 2)
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{6, 1, 2}));
  EXPECT_TRUE(torch::equal(g.select(-1, 0), 2 * a.detach() * b.detach().sin()));
  EXPECT_TRUE(torch::equal(g.select(-1, 1), a.detach().pow(2) * b.detach().cos()));
}

}  // namespace
