#include "diffops/autograd.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <array>
#include <mutex>
#include <unordered_map>

namespace diffops::detail {
namespace {

bool is_real_floating(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

// Tensors diffops returned, with the x they were differentiated by, held weakly: an entry dies
// with its tensor and expired entries are swept as the table grows.
class DerivedRegistry {
 public:
  void add(const at::Tensor& r, const at::Tensor& x) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (table_.size() >= sweep_at_) {
      for (auto it = table_.begin(); it != table_.end();)
        it = it->second.result.expired() ? table_.erase(it) : std::next(it);
      sweep_at_ = 2 * table_.size() + 64;
    }
    // Views of r resolve _base() to r's own base when r is a view (a reshape): remember both.
    for (const at::TensorBase* t : self_and_base(r))
      table_.insert_or_assign(t->unsafeGetTensorImpl(),
                              Entry{Weak(t->getIntrusivePtr()), Weak(x.getIntrusivePtr())});
  }
  // Whether u, or the tensor u is a view of, was returned by diffops as a derivative by x.
  bool contains(const at::Tensor& u, const at::Tensor& x) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const at::TensorBase* t : self_and_base(u)) {
      auto it = table_.find(t->unsafeGetTensorImpl());
      if (it != table_.end() && it->second.result.lock().get() == t->unsafeGetTensorImpl())
        return it->second.x.lock().get() == x.unsafeGetTensorImpl();
    }
    return false;
  }

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl>;
  static std::array<const at::TensorBase*, 2> self_and_base(const at::TensorBase& t) {
    return {&t, t.is_view() ? &t._base() : &t};
  }
  struct Entry {
    Weak result, x;
  };
  std::mutex mutex_;
  std::unordered_map<const c10::TensorImpl*, Entry> table_;
  size_t sweep_at_ = 64;
};

DerivedRegistry& derived_registry() {
  static DerivedRegistry registry;
  return registry;
}

void check_tensors(const char* op, const char* u_name, const at::Tensor& u, const at::Tensor& x,
                   bool grad_enabled, bool derived) {
  TORCH_CHECK_VALUE(u.defined(), op, ": ", u_name, " is an undefined tensor");
  TORCH_CHECK_VALUE(x.defined(), op, ": x is an undefined tensor");
  TORCH_CHECK_VALUE(is_real_floating(x), op, ": x must have a real floating dtype, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(is_real_floating(u), op, ": ", u_name,
                    " must have a real floating dtype, got ", u.scalar_type());
  TORCH_CHECK_VALUE(u.scalar_type() == x.scalar_type(), op, ": dtype mismatch: ", u_name, " is ",
                    u.scalar_type(), " but x is ", x.scalar_type(),
                    "; compute the field in the dtype of its points");
  TORCH_CHECK_VALUE(u.device() == x.device(), op, ": device mismatch: ", u_name, " is on ",
                    u.device(), " but x is on ", x.device());

  TORCH_CHECK(!c10::InferenceMode::is_enabled(), op,
              ": called inside torch.inference_mode(), where autograd is off; compute ", u_name,
              " and its derivatives outside inference mode");
  TORCH_CHECK(!x.is_inference(), op,
              ": x is an inference tensor (created under torch.inference_mode()) and can never "
              "require grad; create x outside inference mode");
  TORCH_CHECK(x.requires_grad(), op,
              ": x does not require grad, so nothing computed from it has a graph to "
              "differentiate; call x.requires_grad_() before computing ",
              u_name, " from x");
  if (!u.requires_grad() && !derived) {
    TORCH_CHECK(!u.is_inference(), op, ": ", u_name,
                " was computed under torch.inference_mode() and has no graph; compute it with "
                "autograd enabled");
    TORCH_CHECK(grad_enabled, op, ": ", u_name,
                " has no grad_fn and gradients are disabled here: it was computed under "
                "torch.no_grad(); compute it with gradients enabled");
    TORCH_CHECK(false, op, ": ", u_name,
                " has no grad_fn, so it is cut off from x: it was rebuilt with torch.tensor([...]) "
                "or from .item()/.tolist() values, taken through .detach(), or computed under "
                "torch.no_grad()/torch.inference_mode(); assemble components with torch.stack or "
                "torch.cat and compute ",
                u_name, " from x with autograd enabled");
  }
}

// v^T (d out/dx), retaining the graph so the caller's u stays differentiable after the call.
at::Tensor raw_vjp(const at::Tensor& out, const at::Tensor& input, const at::Tensor& v,
                   bool create_graph) {
  return torch::autograd::grad({out}, {input}, {v}, /*retain_graph=*/true, create_graph,
                               /*allow_unused=*/true)[0];
}

}  // namespace

Field::Field(const char* op_, const at::Tensor& u_, const at::Tensor& x_, Layout layout,
             const char* u_name_)
    : op(op_), u_name(u_name_), u(u_), x(x_), grad_enabled_at_call_(c10::GradMode::is_enabled()) {
  // A derivative diffops computed by this x may have lost its graph legitimately (a constant).
  derived_ = u.defined() && x.defined() && derived_registry().contains(u, x);
  check_tensors(op, u_name, u, x, grad_enabled_at_call_, derived_);
  if (layout == Layout::elementwise) {
    TORCH_CHECK_VALUE(u.sizes() == x.sizes(), op, ": ", u_name, " has shape ",
                      u.sizes(), " but x has shape ", x.sizes(), "; ", op,
                      " is for elementwise maps ", u_name, " = g(x) with ", u_name,
                      ".shape == x.shape (use gradient or jacobian for other maps)");
    batch = x.sizes().vec();
    return;  // d = 1, comp = (), one component per point
  }
  TORCH_CHECK_VALUE(x.dim() >= 1, op,
                    ": x is a 0-dim tensor; x must have shape batch + (d,), its last axis "
                    "holding the coordinates of each point (for an elementwise map of a scalar, "
                    "use derivative)");
  d = x.size(-1);
  TORCH_CHECK_VALUE(d >= 1, op, ": x has shape ", x.sizes(),
                    ", with no coordinates on its last axis");
  const auto nb = x.dim() - 1;
  const bool leading_match =
      u.dim() >= nb && u.sizes().slice(0, nb) == x.sizes().slice(0, nb);
  TORCH_CHECK_VALUE(leading_match, op, ": ", u_name, " has shape ", u.sizes(),
                    " but x has shape ", x.sizes(), ": ", u_name,
                    "'s leading axes must equal x's batch axes ",
                    x.sizes().slice(0, nb), " (", u_name,
                    "[n] is the field at point x[n]; for a single point pass x of shape (d,))");
  batch = x.sizes().slice(0, nb).vec();
  comp = u.sizes().slice(nb).vec();
  for (auto c : comp) components *= c;
}

at::Tensor Field::vjp_field(const at::Tensor& v, bool create_graph) const {
  if (derived_) return vjp(u, v, create_graph);
  auto g = raw_vjp(u, x, v, create_graph);
  TORCH_CHECK(g.defined(), op, ": x is not in the graph of ", u_name, ": ", u_name,
              " was computed from other tensors. Pass the very tensor ", u_name,
              " was computed from: a slice (x[:, 0]), view, copy or re-created tensor made "
              "after computing ",
              u_name, " is a new node it does not depend on (to differentiate by separate "
              "coordinates, build x with torch.cat/torch.stack first, or pass each coordinate "
              "tensor that ",
              u_name, " was computed from)");
  return g;
}

at::Tensor Field::vjp(const at::Tensor& out, const at::Tensor& v, bool create_graph) const {
  return vjp_or_zeros(out, x, v, create_graph);
}

at::Tensor vjp_or_zeros(const at::Tensor& out, const at::Tensor& input, const at::Tensor& v,
                        bool create_graph) {
  if (!out.requires_grad()) return at::zeros_like(input);
  auto g = raw_vjp(out, input, v, create_graph);
  return g.defined() ? g : at::zeros_like(input);
}

at::Tensor Field::result(at::Tensor r) const {
  derived_registry().add(r, x);
  return r;
}

at::Tensor Field::component_seed(int64_t c) const {
  if (components == 1) return at::ones(u.sizes(), u.options());
  auto seed = at::zeros(u.sizes(), u.options());
  seed.view({-1, components}).select(1, c).fill_(1);
  return seed;
}

at::Tensor Field::coordinate_seed(int64_t i) const {
  auto seed = at::zeros(x.sizes(), x.options());
  seed.select(-1, i).fill_(1);
  return seed;
}

at::Tensor Field::stack(const std::vector<at::Tensor>& parts,
                        std::vector<int64_t> after_batch) const {
  std::vector<int64_t> shape = batch;
  shape.insert(shape.end(), after_batch.begin(), after_batch.end());
  if (parts.empty()) return at::zeros(shape, u.options());
  return at::stack(parts, static_cast<int64_t>(batch.size())).reshape(shape);
}

std::vector<int64_t> Field::comp_and(std::initializer_list<int64_t> tail) const {
  std::vector<int64_t> out = comp;
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

// Row c of the Jacobian at every point comes from one product seeded with component c.
at::Tensor jacobian_of(const Field& f, bool create_graph) {
  std::vector<at::Tensor> rows;
  rows.reserve(f.components);
  for (int64_t c = 0; c < f.components; ++c)
    rows.push_back(f.vjp_field(f.component_seed(c), f.keep(create_graph)));  // batch + (d,)
  return f.stack(rows, f.comp_and({f.d}));
}

void check_positive(const char* op, int64_t value, const char* what) {
  TORCH_CHECK_VALUE(value >= 1, op, ": ", what, " must be at least 1, got ", value);
}

}  // namespace diffops::detail
