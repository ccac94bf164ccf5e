// 2-D Poisson PINN as a standalone LibTorch program, like OpenFOAM's pinnFoam without OpenFOAM:
// the same problem as examples/python/poisson.py.
//
//   -Δu = 2π² sin(πx) sin(πy) in (0, 1)²;  u = 0 on x = 0, y = 0, y = 1;  ∂u/∂n = -π sin(πy) on x = 1
//
// Exact solution u = sin(πx) sin(πy). Usage: poisson_pinn [steps=3000] [forward|graph]. Prints the
// loss as it falls and the relative L2 error on a 101 × 101 grid; exits with status 1 unless the
// loss fell to below half its first value (ctest runs a short training this way).
//
// "forward" (default): the function form, diffops::laplacian(net, x) from <diffops/nn.h>, returns
// (u, Δu) in one forward pass through the MLP (the forward Laplacian in C++, differentiable).
// "graph": u = net(x), then diffops::laplacian(u, x) on the finished graph (1 + d reverse passes).

#include <diffops/diffops.h>
#include <diffops/nn.h>
#include <torch/torch.h>

#include "training.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

const double kPi = std::acos(-1.0);

torch::Tensor exact(const torch::Tensor& p) {
  return torch::sin(kPi * p.select(1, 0)) * torch::sin(kPi * p.select(1, 1));
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t steps = argc > 1 ? std::atoll(argv[1]) : 3000;
  const std::string method = argc > 2 ? argv[2] : "forward";
  if (method != "forward" && method != "graph") {
    std::fprintf(stderr, "poisson_pinn: method must be 'forward' or 'graph', got '%s'\n", argv[2]);
    return 2;
  }
  const int64_t points = 2048, width = 32, edge = 256;
  torch::manual_seed(0);

  torch::nn::Sequential net(torch::nn::Linear(2, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, width), torch::nn::Tanh(),
                            torch::nn::Linear(width, 1));
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(2e-3));
  const auto normal = torch::tensor({1.0f, 0.0f});  // outward normal on x = 1

  auto loss_fn = [&] {
    auto x = torch::rand({points, 2});
    torch::Tensor lap;
    if (method == "forward") {
      lap = std::get<1>(diffops::laplacian(net, x)).select(1, 0);  // (u, Δu) in one pass
    } else {
      x.requires_grad_();
      lap = diffops::laplacian(net->forward(x).select(1, 0), x);
    }
    auto residual = -lap - 2 * kPi * kPi * exact(x);

    auto s = torch::rand({edge});
    auto zeros = torch::zeros({edge}), ones = torch::ones({edge});
    auto xd = torch::cat({torch::stack({zeros, s}, 1), torch::stack({s, zeros}, 1),
                          torch::stack({s, ones}, 1)});
    auto xn = torch::stack({ones, s}, 1).requires_grad_();
    auto dirichlet = net->forward(xd).select(1, 0);
    auto neumann = diffops::normal_derivative(net->forward(xn).select(1, 0), xn, normal) +
                   kPi * torch::sin(kPi * s);
    return residual.pow(2).mean() + 10 * (dirichlet.pow(2).mean() + neumann.pow(2).mean());
  };

  const auto [first, last, seconds] = train(opt, loss_fn, steps);

  auto g = torch::linspace(0, 1, 101);
  auto mesh = torch::meshgrid({g, g}, "ij");
  auto grid = torch::stack({mesh[0].reshape(-1), mesh[1].reshape(-1)}, 1);
  torch::NoGradGuard no_grad;
  auto pred = net->forward(grid).select(1, 0), want = exact(grid);
  const double rel_l2 = ((pred - want).norm() / want.norm()).item<double>();
  std::printf("poisson_pinn (%s Laplacian): loss %.3e -> %.3e in %lld steps (%.1f s, %.2f ms/step); "
              "relative L2 error %.2e\n",
              method.c_str(), first, last, static_cast<long long>(steps), seconds,
              1e3 * seconds / static_cast<double>(steps), rel_l2);
  if (!(last < 0.5 * first)) {
    std::fprintf(stderr, "poisson_pinn: the loss did not fall to half its first value\n");
    return 1;
  }
  return 0;
}
