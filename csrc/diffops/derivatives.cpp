#include "diffops/derivatives.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "diffops/autograd.h"

namespace diffops {
namespace {
constexpr const char* kOp = "Derivatives";
}  // namespace

namespace detail {

FieldShape derivatives_shape(const at::Tensor& u, at::TensorList x, bool coordinates) {
  if (coordinates) {
    CoordinateField f(kOp, u, x);
    return {f.batch, f.comp, static_cast<int64_t>(x.size()), f.components};
  }
  TORCH_CHECK_VALUE(x.size() == 1, kOp, ": expected one tensor of points, got ", x.size());
  Field f(kOp, u, x[0]);
  return {f.batch, f.comp, f.d, f.components};
}

at::Tensor derivatives_row(const at::Tensor& base, at::TensorList x, bool coordinates) {
  c10::AutoGradMode enable(true);  // rows keep their graph even under the caller's no_grad
  if (coordinates) {
    CoordinateField f(kOp, base, x);
    return f.result(f.gradient(/*create_graph=*/true));
  }
  Field f(kOp, base, x[0]);
  return f.result(jacobian_of(f, /*create_graph=*/true, /*batched=*/false));
}

}  // namespace detail

Derivatives::Derivatives(at::Tensor u, at::Tensor x)
    : u_(std::move(u)), inputs_{std::move(x)}, coordinates_(false) {
  init();
}

Derivatives::Derivatives(at::Tensor u, std::vector<at::Tensor> coordinates)
    : u_(std::move(u)), inputs_(std::move(coordinates)), coordinates_(true) {
  init();
}

void Derivatives::init() {
  auto s = detail::derivatives_shape(u_, inputs_, coordinates_);
  batch_ = std::move(s.batch);
  comp_ = std::move(s.comp);
  d_ = s.d;
  components_ = s.components;
}

at::Tensor Derivatives::component_values(int64_t c) const {
  std::vector<int64_t> flat = batch_;
  flat.push_back(components_);
  return u_.reshape(flat).select(-1, c);  // batch
}

const at::Tensor& Derivatives::row(int64_t c, std::vector<int64_t> prefix) {
  auto key = std::make_pair(c, prefix);
  auto it = rows_.find(key);
  if (it != rows_.end()) return it->second;
  c10::AutoGradMode enable(true);  // rows feed higher derivatives: graphs even under no_grad
  at::Tensor base;                 // ∂^prefix u_c, batch
  if (prefix.empty()) {
    base = component_values(c);
  } else {
    const int64_t last = prefix.back();
    prefix.pop_back();
    base = row(c, prefix).select(-1, last);
  }
  auto r = detail::derivatives_row(base, inputs_, coordinates_);  // batch + (d,)
  ++products_;
  return rows_.emplace(std::move(key), std::move(r)).first->second;
}

std::vector<int64_t> Derivatives::check_index(at::IntArrayRef index) const {
  TORCH_CHECK_VALUE(!index.empty(), kOp, ": index is empty; name at least one coordinate");
  for (auto i : index)
    TORCH_CHECK_VALUE(0 <= i && i < d_, kOp, ": index ", index, " names coordinate ", i,
                      ", out of range for d = ", d_, " coordinates");
  std::vector<int64_t> sorted = index.vec();
  std::sort(sorted.begin(), sorted.end());  // mixed partials commute
  return sorted;
}

int64_t Derivatives::check_component(int64_t component) const {
  TORCH_CHECK_VALUE(0 <= component && component < components_, kOp, ": component ", component,
                    " is out of range: u has ", components_,
                    " scalar components per point (comp = ", at::IntArrayRef(comp_), ")");
  return component;
}

at::Tensor Derivatives::per_component(std::optional<int64_t> component,
                                      const std::function<at::Tensor(int64_t)>& of_c,
                                      std::vector<int64_t> tail) {
  if (component) return of_c(check_component(*component));
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < components_; ++c) parts.push_back(of_c(c));
  std::vector<int64_t> shape = batch_;
  shape.insert(shape.end(), comp_.begin(), comp_.end());
  shape.insert(shape.end(), tail.begin(), tail.end());
  return at::stack(parts, static_cast<int64_t>(batch_.size())).reshape(shape);
}

at::Tensor Derivatives::partial(at::IntArrayRef index, std::optional<int64_t> component) {
  auto prefix = check_index(index);
  const int64_t last = prefix.back();
  prefix.pop_back();
  return per_component(component, [&](int64_t c) { return row(c, prefix).select(-1, last); }, {});
}

at::Tensor Derivatives::gradient(std::optional<int64_t> component) {
  return per_component(component, [&](int64_t c) { return row(c, {}); }, {d_});
}

at::Tensor Derivatives::hessian(std::optional<int64_t> component) {
  auto of_c = [&](int64_t c) {
    std::vector<at::Tensor> rows;
    for (int64_t i = 0; i < d_; ++i) rows.push_back(row(c, {i}));
    return at::stack(rows, -2);  // batch + (d, d)
  };
  return per_component(component, of_c, {d_, d_});
}

at::Tensor Derivatives::laplacian(std::optional<int64_t> component) {
  auto of_c = [&](int64_t c) {
    at::Tensor sum;
    for (int64_t i = 0; i < d_; ++i) {
      auto term = row(c, {i}).select(-1, i);
      sum = sum.defined() ? sum + term : term;
    }
    return sum;
  };
  return per_component(component, of_c, {});
}

at::Tensor Derivatives::divergence() {
  TORCH_CHECK_VALUE(!comp_.empty() && comp_.back() == d_, kOp, ": divergence needs a vector "
                    "field whose last axis holds its d = ", d_, " components, but u has shape ",
                    u_.sizes(), " at ", at::IntArrayRef(batch_).size(), " point axes");
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < components_; c += d_) {
    at::Tensor sum;
    for (int64_t i = 0; i < d_; ++i) {
      auto term = row(c + i, {}).select(-1, i);
      sum = sum.defined() ? sum + term : term;
    }
    parts.push_back(sum);
  }
  std::vector<int64_t> shape = batch_;
  shape.insert(shape.end(), comp_.begin(), comp_.end() - 1);
  return at::stack(parts, static_cast<int64_t>(batch_.size())).reshape(shape);
}

at::Tensor Derivatives::normal_derivative(const at::Tensor& normals,
                                          std::optional<int64_t> component) {
  std::vector<int64_t> shape = batch_;
  shape.push_back(d_);
  const auto n =
      detail::per_point_vectors(kOp, "normals", normals, shape, "the points' shape", u_, "u");
  return per_component(component, [&](int64_t c) { return (row(c, {}) * n).sum(-1); }, {});
}

}  // namespace diffops
