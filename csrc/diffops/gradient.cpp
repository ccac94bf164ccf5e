#include "diffops/gradient.h"

#include <ATen/ATen.h>

#include "diffops/autograd.h"

namespace diffops {

at::Tensor gradient(const at::Tensor& u, const at::Tensor& x, const Options& options) {
  detail::Field f("gradient", u, x);
  const auto method = detail::choose(f, options).method;
  f.check_options(options);
  return f.result(
      detail::jacobian_of(f, options.create_graph(), method == detail::Method::batched));
}

at::Tensor gradient(const at::Tensor& u, at::TensorList coordinates, const Options& options) {
  detail::CoordinateField f("gradient", u, coordinates);
  detail::choose("gradient.coordinates", options, coordinates[0],
                  static_cast<int64_t>(coordinates.size()), f.components);
  TORCH_CHECK_VALUE(!options.check_structure(), "gradient: check_structure is not available with "
                    "separate coordinate tensors; pass the points as one tensor x to check them");
  TORCH_CHECK_VALUE(options.coords().empty(), "gradient: coords is for the function form; with "
                    "separate coordinate tensors pass the ones to differentiate along");
  return f.result(f.gradient(options.create_graph()));
}

at::Tensor jacobian(const at::Tensor& v, const at::Tensor& x, const Options& options) {
  detail::Field f("jacobian", v, x, detail::Layout::pointwise, "v");
  const auto method = detail::choose(f, options).method;
  f.check_options(options);
  return f.result(
      detail::jacobian_of(f, options.create_graph(), method == detail::Method::batched));
}

namespace {

// ∇u · w; `w_name` names the direction argument in errors.
at::Tensor along(const char* op, const char* w_name, const at::Tensor& u, const at::Tensor& x,
                 const at::Tensor& direction, const Options& options) {
  detail::Field f(op, u, x);
  detail::choose(f, options);
  f.check_options(options);
  const auto dir = detail::per_point_vectors(op, w_name, direction, x.sizes(), "x's shape", x, "x");
  const bool keep = f.keep(options.create_graph());
  if (f.components == 1) {
    return f.result((f.vjp_field(f.component_seed(0), keep) * dir).sum(-1).reshape(u.sizes()));
  }
  // J·dir for all components at once: w ↦ Jᵀw is linear in w, and differentiating
  // <Jᵀw, dir> with respect to w gives J·dir (the double-backward JVP).
  auto w = at::zeros(u.sizes(), u.options()).requires_grad_();
  auto jt_w = f.vjp_field(w, /*create_graph=*/true);  // batch + (d,)
  return f.result(detail::vjp_or_zeros(jt_w, w, dir, keep));
}

}  // namespace

at::Tensor directional_derivative(const at::Tensor& u, const at::Tensor& x,
                                  const at::Tensor& direction, const Options& options) {
  return along("directional_derivative", "direction", u, x, direction, options);
}

at::Tensor normal_derivative(const at::Tensor& u, const at::Tensor& x, const at::Tensor& normals,
                             const Options& options) {
  return along("normal_derivative", "normals", u, x, normals, options);
}

}  // namespace diffops
