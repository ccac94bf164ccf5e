// 2-D heat equation PINN as a standalone LibTorch program: a space-time network u(x, y, t) whose
// residual needs the Laplacian over space only, t held fixed (Options::coords).
//
//   u_t = Δu in (0, 1)² × (0, T);  u = 0 on the boundary;  u(x, y, 0) = sin(πx) sin(πy)
//
// Exact solution u = exp(-2π² t) sin(πx) sin(πy), T = 0.1; the network takes (x, y, τ = t / T), so
// u_t = u_τ / T. Usage: heat_pinn [steps=6000]. Prints
// the loss as it falls and the relative L2 error on a 41 × 41 × 11 grid; exits with status 1
// unless the loss fell to below half its first value (ctest runs a short training this way).
//
// diffops::laplacian(net, xt, Options().coords({0, 1})) returns (u, Δₓu) from one forward pass
// through the MLP carrying 2 tangents (x, y), not 3; diffops::jacobian(net, xt,
// Options().coords({2})) gives u_t the same way. Both are differentiable: the loss trains net.

#include <diffops/diffops.h>
#include <diffops/nn.h>
#include <torch/torch.h>

#include "training.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace {

const double kPi = std::acos(-1.0);
const double kT = 0.1;

// columns x, y, τ = t / T of points (N, 3): the network sees time scaled to [0, 1]
torch::Tensor exact(const torch::Tensor& p) {
  return torch::exp(-2 * kPi * kPi * kT * p.select(1, 2)) * torch::sin(kPi * p.select(1, 0)) *
         torch::sin(kPi * p.select(1, 1));
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t steps = argc > 1 ? std::atoll(argv[1]) : 6000;
  const int64_t points = 2048, width = 32, edge = 256;
  torch::manual_seed(0);

  torch::nn::Sequential net(torch::nn::Linear(3, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, 1));
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(2e-3));
  const auto space = diffops::Options().coords({0, 1});
  const auto time = diffops::Options().coords({2});

  auto loss_fn = [&] {
    auto xt = torch::rand({points, 3});  // (x, y, τ)
    auto lap = std::get<1>(diffops::laplacian(net, xt, space)).select(1, 0);           // Δₓu
    auto u_tau = std::get<1>(diffops::jacobian(net, xt, time)).select(1, 0).select(1, 0);  // ∂u/∂τ
    auto residual = u_tau / kT - lap;

    auto s = torch::rand({edge}), r = torch::rand({edge});
    auto zeros = torch::zeros({edge}), ones = torch::ones({edge});
    auto wall = torch::cat({torch::stack({zeros, s, r}, 1), torch::stack({ones, s, r}, 1),
                            torch::stack({s, zeros, r}, 1), torch::stack({s, ones, r}, 1)});
    auto start = torch::stack({torch::rand({edge}), torch::rand({edge}), zeros}, 1);
    auto boundary = net->forward(wall).select(1, 0);
    auto initial = net->forward(start).select(1, 0) - exact(start);
    return residual.pow(2).mean() + 10 * (boundary.pow(2).mean() + initial.pow(2).mean());
  };

  const auto [first, last, seconds] = train(opt, loss_fn, steps);

  auto g = torch::linspace(0, 1, 41), gt = torch::linspace(0, 1, 11);
  auto mesh = torch::meshgrid({g, g, gt}, "ij");
  auto grid = torch::stack({mesh[0].reshape(-1), mesh[1].reshape(-1), mesh[2].reshape(-1)}, 1);
  torch::NoGradGuard no_grad;
  auto pred = net->forward(grid).select(1, 0), want = exact(grid);
  const double rel_l2 = ((pred - want).norm() / want.norm()).item<double>();
  std::printf("heat_pinn (Laplacian over x, y; t held fixed): loss %.3e -> %.3e in %lld steps "
              "(%.1f s, %.2f ms/step); relative L2 error %.2e\n",
              first, last, static_cast<long long>(steps), seconds,
              1e3 * seconds / static_cast<double>(steps), rel_l2);
  if (!(last < 0.5 * first)) {
    std::fprintf(stderr, "heat_pinn: the loss did not fall to half its first value\n");
    return 1;
  }
  return 0;
}
