// The seed examples in C++: exact derivatives with LibTorch autograd through diffops.
// Every result is checked; the program exits with status 1 on the first failed check.

#include <diffops/diffops.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <iostream>

namespace {

void check(const char* what, bool ok) {
  std::cout << (ok ? "  ok   " : "  FAIL ") << what << "\n";
  if (!ok) std::exit(1);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main() {
  std::cout << "== sin'(x), sin''(x) at x = 0\n";
  {
    auto x = torch::zeros({1}, torch::requires_grad());
    auto sinx = torch::sin(x);
    check("sin'(0) - cos(0) == 0", (diffops::derivative(sinx, x) - torch::cos(x)).abs().item<double>() == 0);
    check("sin''(0) + sin(0) == 0", (diffops::derivative(sinx, x, 2) + torch::sin(x)).abs().item<double>() == 0);
  }

  std::cout << "== f(x, y) = (x + y)(y + 3) at (1, 2)\n";
  {
    auto x = torch::full({1}, 1.0, torch::requires_grad());
    auto y = torch::full({1}, 2.0, torch::requires_grad());
    auto f = (x + y) * (y + 3);
    check("df/dx == y + 3 == 5", diffops::partial(f, x, 0).item<double>() == 5);
    check("df/dy == 2y + x + 3 == 8", diffops::partial(f, y, 0).item<double>() == 8);
  }

  std::cout << "== f = x.x, x = ones(3): gradient and div(grad f), two ways\n";
  {
    auto x = torch::ones({3}, torch::requires_grad());
    auto f = torch::dot(x, x);
    auto g = diffops::gradient(f, x);
    check("grad f == 2x", torch::equal(g, 2 * x.detach()));
    // J_g = 2I is diagonal: one product with v = ones returns its diagonal. Only valid because J_g
    // is diagonal; otherwise ones would also pick up the off-diagonal entries.
    check("div grad f == 6 with v = ones", diffops::derivative(g, x).sum().item<double>() == 6);
    // The general route: one product per coordinate (the identity's columns), diagonal entries only.
    check("div grad f == 6 with the identity", diffops::divergence(g, x).item<double>() == 6);
    check("laplacian f == 6", diffops::laplacian(f, x).item<double>() == 6);
  }

  std::cout << "== y_i = sin(x_i), x = [0, 0.001, ..., 1]: y', y'' per element\n";
  {
    auto x = torch::linspace(0, 1, 1001, torch::kFloat64).requires_grad_();
    auto y = torch::sin(x);
    auto t0 = std::chrono::steady_clock::now();
    auto d1 = diffops::derivative(y, x);     // ONE product with ones
    auto d2 = diffops::derivative(y, x, 2);  // one more
    const double t_ones = ms_since(t0);
    t0 = std::chrono::steady_clock::now();
    auto d1_identity = diffops::jacobian(y, x).diagonal();  // 1001 products: the full Jacobian
    const double t_identity = ms_since(t0);
    check("y' == cos(x), y'' == -sin(x), exactly",
          torch::equal(d1, torch::cos(x.detach())) && torch::equal(d2, -torch::sin(x.detach())));
    check("identity route gives the same y'", torch::equal(d1_identity, d1));
    std::cout << "       ones vector: " << t_ones << " ms for y' and y'' (2 products)\n"
              << "       identity:    " << t_identity << " ms for y' alone (1001 products; grows with n)\n";
  }

  std::cout << "== tutorial: y = 2 x.x, elementwise x*x, detach, control flow, (x^3)''\n";
  {
    auto x = torch::arange(4.0).requires_grad_();
    check("grad(2 x.x) == 4x", torch::equal(diffops::gradient(2 * torch::dot(x, x), x), 4 * x.detach()));
    check("(x*x)' == 2x with v = ones", torch::equal(diffops::derivative(x * x, x), 2 * x.detach()));
    auto u = (x * x).detach();
    check("z = x*u, u detached: dz/dx == u", torch::equal(diffops::derivative(x * u, x), u));

    auto a = torch::tensor(0.7, torch::requires_grad());
    auto b = a * 2;
    while (b.norm().item<double>() < 1000) b = b * 2;
    auto c = b.sum().item<double>() > 0 ? b : 100 * b;
    check("through while/if: dc/da == c/a", diffops::derivative(c, a).item<float>() == (c / a).item<float>());

    auto t = torch::tensor(2.0, torch::requires_grad());
    check("(x^3)'' at 2 == 12", diffops::derivative(t.pow(3), t, 2).item<double>() == 12);
  }

  std::cout << "== Q = 3a^3 - b^2 with an external gradient v\n";
  {
    auto a = torch::tensor({2.0, 3.0}, torch::requires_grad());
    auto b = torch::tensor({6.0, 4.0}, torch::requires_grad());
    auto Q = 3 * a.pow(3) - b.pow(2);
    auto v = torch::tensor({1.5, 1.9});
    auto dQda = diffops::derivative(Q, a), dQdb = diffops::derivative(Q, b);  // 9a², -2b
    Q.backward(v, /*retain_graph=*/true);
    // backward computes the VJP vᵀJ = v ⊙ 9a², so a.grad != 9a² (the post's surprise) ...
    check("a.grad == 9a^2 * v", torch::equal(a.grad(), dQda * v));
    check("b.grad == -2b * v", torch::equal(b.grad(), dQdb * v));
    // ... and .grad accumulates over calls
    Q.backward(v);
    check("a second backward doubles a.grad", torch::equal(a.grad(), 2 * dQda * v));
  }

  std::cout << "== rebuilding y from values loses the graph\n";
  {
    auto x = torch::tensor({1.0, 2.0}, torch::requires_grad());
    auto y1 = 2 * x[0].pow(2) + x[1];
    auto y2 = 3 * x[0] + 4 * x[1].pow(3);
    auto rebuilt = torch::tensor({y1.item<float>(), y2.item<float>()});
    try {
      diffops::jacobian(rebuilt, x);
      check("rebuilt tensor is reported", false);
    } catch (const c10::Error& e) {
      std::cout << "  ok   rebuilt tensor is reported:\n         "
                << std::string(e.what_without_backtrace()).substr(0, 100) << "...\n";
    }
    auto J = diffops::jacobian(torch::stack({y1, y2}), x);
    check("torch::stack keeps it: J == [[4, 1], [3, 48]]",
          torch::equal(J, torch::tensor({{4.0, 1.0}, {3.0, 48.0}})));
  }

  std::cout << "All checks passed.\n";
  return 0;
}
