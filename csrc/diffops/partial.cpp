#include "diffops/partial.h"

#include <ATen/ATen.h>

#include "diffops/autograd.h"

namespace diffops {

at::Tensor partial(const at::Tensor& u, const at::Tensor& x, at::IntArrayRef index,
                   const Options& options) {
  detail::Field f("partial", u, x);
  TORCH_CHECK_VALUE(!index.empty(), "partial: index is empty; name at least one coordinate");
  for (auto i : index)
    TORCH_CHECK_VALUE(0 <= i && i < f.d, "partial: index ", index, " names coordinate ", i,
                      ", out of range for d = ", f.d, " coordinates (x has shape ", x.sizes(), ")");
  const auto order = static_cast<int64_t>(index.size());
  detail::choose(f, options, order);
  f.check_options(options);
  const bool keep = f.keep(options.create_graph());
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < f.components; ++c) {
    auto cur = f.vjp_field(f.component_seed(c), order == 1 ? keep : true).select(-1, index[0]);
    for (int64_t k = 1; k < order; ++k)  // cur: batch, one value per point
      cur = f.vjp(cur, at::ones_like(cur), k + 1 == order ? keep : true).select(-1, index[k]);
    parts.push_back(cur);
  }
  return f.result(f.stack(parts, f.comp));
}

at::Tensor partial(const at::Tensor& u, const at::Tensor& x, int64_t index,
                   const Options& options) {
  return partial(u, x, at::IntArrayRef(index), options);
}

at::Tensor derivative(const at::Tensor& y, const at::Tensor& x, int64_t order,
                      const Options& options) {
  detail::Field f("derivative", y, x, detail::Layout::elementwise, "y");
  detail::check_positive("derivative", order, "order");
  detail::choose(f, options, order);
  f.check_options(options);
  const bool keep = f.keep(options.create_graph());
  auto cur = f.vjp_field(at::ones_like(y), order == 1 ? keep : true);
  for (int64_t k = 2; k <= order; ++k) cur = f.vjp(cur, at::ones_like(cur), k == order ? keep : true);
  return f.result(cur);
}

}  // namespace diffops
