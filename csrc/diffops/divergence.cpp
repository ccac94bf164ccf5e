#include "diffops/divergence.h"

#include <ATen/ATen.h>

#include "diffops/autograd.h"

namespace diffops {

at::Tensor divergence(const at::Tensor& v, const at::Tensor& x, const Options& options) {
  detail::Field f("divergence", v, x, detail::Layout::pointwise, "v");
  auto outer = detail::vector_field_comp(f);
  const auto method = detail::choose(f, options).method;
  f.check_options(options);
  const bool keep = f.keep(options.create_graph());
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < f.components; c += f.d) {
    at::Tensor sum;  // batch
    if (method == detail::Method::hutchinson) {
      // εᵀJε: seed this vector field's components with ε, dot the product with ε
      for (int64_t s = 0; s < options.samples(); ++s) {
        auto eps = detail::rademacher(x, options.generator());  // batch + (d,)
        auto seed = at::zeros(v.sizes(), v.options());
        seed.view({-1, f.components}).narrow(1, c, f.d).copy_(eps.reshape({-1, f.d}));
        auto term = (f.vjp_field(seed, keep) * eps).sum(-1);
        sum = sum.defined() ? sum + term : term;
      }
      sum = sum / static_cast<double>(options.samples());
    } else if (method == detail::Method::batched) {  // the d rows in one pass, keep the diagonal
      auto rows = f.vjp_field_batched(f.component_seeds(c, f.d), keep);  // (d,) + batch + (d,)
      sum = rows.diagonal(0, 0, -1).sum(-1);
    } else {  // the diagonal, one entry per product
      for (int64_t i = 0; i < f.d; ++i) {
        auto term = f.vjp_field(f.component_seed(c + i), keep).select(-1, i);
        sum = sum.defined() ? sum + term : term;
      }
    }
    parts.push_back(sum);
  }
  return f.result(f.stack(parts, outer));
}

at::Tensor curl(const at::Tensor& v, const at::Tensor& x, const Options& options) {
  detail::Field f("curl", v, x, detail::Layout::pointwise, "v");
  TORCH_CHECK_VALUE(f.d == 2 || f.d == 3, "curl: defined for d = 2 or d = 3 coordinates, but x "
                    "has shape ", x.sizes(), " (d = ", f.d, ")");
  detail::vector_field_comp(f);
  const auto method = detail::choose(f, options).method;
  f.check_options(options);
  // batch + comp' + (d, d)
  auto J = detail::jacobian_of(f, options.create_graph(), method == detail::Method::batched);
  auto dj = [&](int64_t i, int64_t j) { return J.select(-2, i).select(-1, j); };  // ∂v_i/∂x_j
  if (f.d == 2) return f.result(dj(1, 0) - dj(0, 1));
  return f.result(
      at::stack({dj(2, 1) - dj(1, 2), dj(0, 2) - dj(2, 0), dj(1, 0) - dj(0, 1)}, -1));
}

}  // namespace diffops
