#include "diffops/laplacian.h"

#include <ATen/ATen.h>

#include "diffops/autograd.h"

namespace diffops {

at::Tensor laplacian(const at::Tensor& u, const at::Tensor& x, const Options& options) {
  detail::Field f("laplacian", u, x);
  const auto method = detail::choose(f, options).method;
  f.check_options(options);
  const bool keep = f.keep(options.create_graph());
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < f.components; ++c) {
    auto g = f.vjp_field(f.component_seed(c), /*create_graph=*/true);  // batch + (d,)
    at::Tensor sum;                                                     // batch
    if (method == detail::Method::hutchinson) {  // εᵀHε = ε · (Hε), one product per probe
      for (int64_t s = 0; s < options.samples(); ++s) {
        auto eps = detail::rademacher(x, options.generator());
        auto term = (f.vjp(g, eps, keep) * eps).sum(-1);
        sum = sum.defined() ? sum + term : term;
      }
      sum = sum / static_cast<double>(options.samples());
    } else if (method == detail::Method::batched) {  // the d rows in one pass, keep the diagonal
      sum = f.vjp_batched(g, f.coordinate_seeds(), keep).diagonal(0, 0, -1).sum(-1);
    } else {  // the diagonal, one entry per product
      for (int64_t i = 0; i < f.d; ++i) {
        auto term = f.vjp(g, f.coordinate_seed(i), keep).select(-1, i);
        sum = sum.defined() ? sum + term : term;
      }
    }
    parts.push_back(sum);
  }
  return f.result(f.stack(parts, f.comp));
}

at::Tensor hessian(const at::Tensor& u, const at::Tensor& x, const Options& options) {
  detail::Field f("hessian", u, x);
  const auto method = detail::choose(f, options).method;
  f.check_options(options);
  const bool keep = f.keep(options.create_graph());
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < f.components; ++c) {
    auto g = f.vjp_field(f.component_seed(c), /*create_graph=*/true);  // batch + (d,)
    if (method == detail::Method::batched) {  // (d,) + batch + (d,) -> batch + (d, d)
      parts.push_back(f.vjp_batched(g, f.coordinate_seeds(), keep).movedim(0, -2));
      continue;
    }
    std::vector<at::Tensor> rows;
    for (int64_t i = 0; i < f.d; ++i) rows.push_back(f.vjp(g, f.coordinate_seed(i), keep));
    parts.push_back(at::stack(rows, -2));  // batch + (d, d)
  }
  return f.result(f.stack(parts, f.comp_and({f.d, f.d})));
}

}  // namespace diffops
