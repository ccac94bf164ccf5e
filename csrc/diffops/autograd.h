#pragma once
// The one place where diffops calls torch::autograd::grad, with the argument checks and the
// diagnostics every operator shares. Internal: not installed with the public headers.

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <tuple>
#include <vector>

#include "diffops/explain.h"
#include "diffops/options.h"

namespace diffops::detail {

// How u's axes relate to x's.
enum class Layout {
  // x: batch + (d,), u: batch + comp. u[n] is a field evaluated at point x[n].
  pointwise,
  // u.shape == x.shape, u = g(x) elementwise: every element of x is a point with d = 1.
  elementwise,
};

// A field u computed from x, validated once per operator call. While it lives, autograd is enabled
// (the products and the bookkeeping between them must record graphs even under torch.no_grad()).
// Bad arguments raise c10::ValueError (Python ValueError); a broken graph raises c10::Error
// (Python RuntimeError). Every message starts with the operator's name.
class Field {
 public:
  Field(const char* op, const at::Tensor& u, const at::Tensor& x,
        Layout layout = Layout::pointwise, const char* u_name = "u");

  // v^T (du/dx) for a v of u's shape: a product on the caller's tensor, which must depend on x.
  at::Tensor vjp_field(const at::Tensor& v, bool create_graph) const;
  // v^T (d out/dx) for a tensor that diffops derived from u. An `out` that does not depend on x
  // is a legitimately zero derivative (a linear map's second derivative): zeros, not an error.
  at::Tensor vjp(const at::Tensor& out, const at::Tensor& v, bool create_graph) const;
  // The batched forms: `seeds` stacks B seeds on a new leading axis, (B,) + u.shape (or
  // + out.shape); all B products run in one reverse pass and return (B,) + x.shape.
  at::Tensor vjp_field_batched(const at::Tensor& seeds, bool create_graph) const;
  at::Tensor vjp_batched(const at::Tensor& out, const at::Tensor& seeds, bool create_graph) const;

  // With `enabled`: raises c10::ValueError unless u[n] depends on x[n] only (elementwise layout: u[i]
  // on x[i] only), tested with the ones-seeded product of component 0 and one product seeded with
  // random per-point weights r: block-diagonal structure means the second is r times the first.
  void check_structure(bool enabled) const;
  // The graph form's options: check_structure as above; coords (the function form's) raises.
  void check_options(const Options& options) const;

  // Seed of u's shape selecting scalar component c (flat index into comp) at every point.
  at::Tensor component_seed(int64_t c) const;
  // Seed of x's shape selecting coordinate i at every point.
  at::Tensor coordinate_seed(int64_t i) const;
  // component_seed(c0 + k) for k < n, stacked: (n,) + u.shape.
  at::Tensor component_seeds(int64_t c0, int64_t n) const;
  // coordinate_seed(i) for every i < d, stacked: (d,) + x.shape.
  at::Tensor coordinate_seeds() const;
  // Stacks per-point results (each batch + something) along a new axis after the batch axes and
  // reshapes to batch + after_batch; zeros of that shape when `parts` is empty.
  at::Tensor stack(const std::vector<at::Tensor>& parts, std::vector<int64_t> after_batch) const;
  // comp + tail, the usual `after_batch` of a per-component result.
  std::vector<int64_t> comp_and(std::initializer_list<int64_t> tail) const;
  // Every operator returns through here: remembers (weakly) that `r` is a derivative of a field
  // with respect to x, so that a later call on r — divergence(gradient(u, x), x) — knows that an r
  // cut off from x is a legitimately zero derivative (of a linear map), not a broken graph.
  at::Tensor result(at::Tensor r) const;
  // create_graph for the products that produce the result: the caller's wish, unless the caller
  // runs with gradients disabled (then, as for every torch op under no_grad, no graph is kept).
  bool keep(bool create_graph) const { return create_graph && grad_enabled_at_call_; }

  const char* op;
  const char* u_name;
  at::Tensor u, x;
  std::vector<int64_t> batch, comp;
  int64_t d = 1;           // coordinates per point
  int64_t components = 1;  // scalar components of u per point: prod(comp)

 private:
  bool grad_enabled_at_call_;
  bool elementwise_ = false;
  bool derived_ = false;  // u is a derivative diffops computed with respect to this x
  c10::AutoGradMode grad_guard_{true};
};

// A field u of points whose coordinates are held as separate tensors (x, y, t, each of shape
// batch + (1,) or batch, as many PINN codes keep them), validated like Field. The derived-result
// registry keys these fields by their first coordinate.
class CoordinateField {
 public:
  CoordinateField(const char* op, const at::Tensor& u, at::TensorList coordinates,
                  const char* u_name = "u");

  // ∂u/∂(coordinates) per component, shape batch + comp + (k,): one product per component, each
  // returning the derivatives by every coordinate. A coordinate u does not depend on is an error
  // for the caller's field and a legitimately zero derivative for a diffops result.
  at::Tensor gradient(bool create_graph) const;
  at::Tensor result(at::Tensor r) const;
  bool keep(bool create_graph) const { return create_graph && grad_enabled_at_call_; }

  const char* op;
  const char* u_name;
  at::Tensor u;
  std::vector<at::Tensor> coordinates;
  std::vector<int64_t> batch, comp;
  int64_t components = 1;

 private:
  bool grad_enabled_at_call_;
  bool derived_ = false;
  c10::AutoGradMode grad_guard_{true};
};

// The derivative cache's building blocks, shared by diffops::Derivatives and the Python class of
// the same name (defined in derivatives.cpp). `x` is {points} or, with `coordinates`, the
// separate coordinate tensors.
struct FieldShape {
  std::vector<int64_t> batch, comp;
  int64_t d = 0, components = 1;
};
// Validates u against x as the cache's constructor does.
FieldShape derivatives_shape(const at::Tensor& u, at::TensorList x, bool coordinates);
// ∂base/∂(every coordinate), batch + (d,), for a scalar-per-point base (u's component or one of its
// cached derivatives): one product, always keeping the graph.
at::Tensor derivatives_row(const at::Tensor& base, at::TensorList x, bool coordinates);

// v^T (d out/d input) for any input (diffops' own auxiliary tensors); zeros of input's shape when
// out does not depend on it.
at::Tensor vjp_or_zeros(const at::Tensor& out, const at::Tensor& input, const at::Tensor& v,
                        bool create_graph);

// The Jacobian J[..., i, j] = ∂u_i/∂x_j of f's field, shape batch + comp + (d,): one product per
// component, or all of them in one batched pass. Shared by jacobian, gradient and curl.
at::Tensor jacobian_of(const Field& f, bool create_graph, bool batched);

// For divergence and curl: checks that v's last axis holds the d components of a vector field;
// returns the shape of the other component axes, comp'.
std::vector<int64_t> vector_field_comp(const Field& f);

// Validates `w` (named `w_name`): vectors for points of shape `points` (batch + (d,), described as
// `points_name` in errors), one per point
// or broadcastable to them, in the dtype and on the device of `like` (named `like_name`); returns
// w expanded to `points`. Shared by the directional and normal derivatives and the cache.
at::Tensor per_point_vectors(const char* op, const char* w_name, const at::Tensor& w,
                             at::IntArrayRef points, const char* points_name,
                             const at::Tensor& like, const char* like_name);

// Raises c10::ValueError unless `value` >= 1; `what` names the argument.
void check_positive(const char* op, int64_t value, const char* what);

// The strategies behind Options::method, resolved from "auto" (defined in explain.cpp).
enum class Method { loop, batched, hutchinson };
struct Choice {
  Method method;
  Plan plan;  // what diffops::explain reports for this call
};
// Validates options.method for `op` (and the options only "hutchinson" uses) and resolves "auto"
// for a field with `components` scalar components per point in d coordinates. `order` is the
// number of nested products (partial, derivative).
Choice choose(const char* op, const Options& options, const at::Tensor& x, int64_t d,
              int64_t components, int64_t order = 1);
inline Choice choose(const Field& f, const Options& options, int64_t order = 1) {
  return choose(f.op, options, f.x, f.d, f.components, order);
}

// Forward-over-reverse for the function form: (f(x), H) with H of shape batch + comp + (d, d).
// x's points are stacked d times (d·N points: f must treat points independently), copy k carrying
// the forward-mode tangent e_k; one reverse pass per component of f on those dual points returns
// ∇u with tangent H e_k, column k of the Hessian.
std::tuple<at::Tensor, at::Tensor> forward_over_reverse(
    const char* op, const std::function<at::Tensor(const at::Tensor&)>& f, const at::Tensor& x,
    bool create_graph);

// Rademacher probe (entries ±1) of x's shape, dtype and device.
at::Tensor rademacher(const at::Tensor& x, const std::optional<at::Generator>& generator);

}  // namespace diffops::detail
