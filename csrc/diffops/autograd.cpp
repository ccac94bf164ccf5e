#include "diffops/autograd.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/LegacyVmapMode.h>
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

void check_input(const char* op, const char* u_name, const at::Tensor& u, const at::Tensor& x,
                 const std::string& x_name) {
  const char* xn = x_name.c_str();
  TORCH_CHECK_VALUE(x.defined(), op, ": ", xn, " is an undefined tensor");
  TORCH_CHECK_VALUE(is_real_floating(x), op, ": ", xn, " must have a real floating dtype, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(u.scalar_type() == x.scalar_type(), op, ": dtype mismatch: ", u_name, " is ",
                    u.scalar_type(), " but ", xn, " is ", x.scalar_type(),
                    "; compute the field in the dtype of its points");
  TORCH_CHECK_VALUE(u.device() == x.device(), op, ": device mismatch: ", u_name, " is on ",
                    u.device(), " but ", xn, " is on ", x.device());
  TORCH_CHECK(!x.is_inference(), op, ": ", xn,
              " is an inference tensor (created under torch.inference_mode()) and can never "
              "require grad; create it outside inference mode");
  TORCH_CHECK(x.requires_grad(), op, ": ", xn,
              " does not require grad, so nothing computed from it has a graph to "
              "differentiate; call ", xn, ".requires_grad_() before computing ", u_name,
              " from it");
}

void check_field(const char* op, const char* u_name, const at::Tensor& u, bool grad_enabled,
                 bool derived) {
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

void check_u(const char* op, const char* u_name, const at::Tensor& u) {
  TORCH_CHECK_VALUE(u.defined(), op, ": ", u_name, " is an undefined tensor");
  TORCH_CHECK_VALUE(is_real_floating(u), op, ": ", u_name,
                    " must have a real floating dtype, got ", u.scalar_type());
  TORCH_CHECK(!c10::InferenceMode::is_enabled(), op,
              ": called inside torch.inference_mode(), where autograd is off; compute ", u_name,
              " and its derivatives outside inference mode");
}

// v^T (d out/d inputs), retaining the graph so the caller's u stays differentiable after the
// call; an undefined tensor for an input out does not depend on. The only call into autograd.
// With `batched`, v holds B seeds stacked on a new leading axis and all B products run in one
// reverse pass: the seeds enter as a batched tensor of torch's legacy vmap, as
// torch.autograd.grad(..., is_grads_batched=True) does, and the results come back as (B,) + shape.
std::vector<at::Tensor> raw_vjp(const at::Tensor& out, const std::vector<at::Tensor>& inputs,
                                const at::Tensor& v, bool create_graph, bool batched = false) {
  if (!batched)
    return torch::autograd::grad({out}, inputs, {v}, /*retain_graph=*/true, create_graph,
                                 /*allow_unused=*/true);
  const int64_t level = at::impl::VmapMode::increment_nesting();
  struct Exit {
    ~Exit() { at::impl::VmapMode::decrement_nesting(); }
  } exit_vmap;
  auto grads = torch::autograd::grad({out}, inputs, {at::_add_batch_dim(v, 0, level)},
                                     /*retain_graph=*/true, create_graph, /*allow_unused=*/true);
  for (auto& g : grads)
    if (g.defined()) g = at::_remove_batch_dim(g, level, v.size(0), 0);
  return grads;
}

at::Tensor raw_vjp(const at::Tensor& out, const at::Tensor& input, const at::Tensor& v,
                   bool create_graph, bool batched = false) {
  return raw_vjp(out, std::vector<at::Tensor>{input}, v, create_graph, batched)[0];
}

// Seed of u's shape selecting scalar component c (of `components` per point) at every point.
at::Tensor one_hot(const at::Tensor& u, int64_t components, int64_t c) {
  if (components == 1) return at::ones(u.sizes(), u.options());
  auto seed = at::zeros(u.sizes(), u.options());
  seed.view({-1, components}).select(1, c).fill_(1);
  return seed;
}

std::string not_in_graph(const char* u_name, const char* x_name) {
  return c10::str(x_name, " is not in the graph of ", u_name, ": ", u_name,
                  " was computed from other tensors. Pass the very tensor ", u_name,
                  " was computed from: a slice (x[:, 0]), view, copy or re-created tensor made "
                  "after computing ",
                  u_name, " is a new node it does not depend on (to differentiate by separate "
                  "coordinates, build x with torch.cat/torch.stack first, or pass each coordinate "
                  "tensor that ",
                  u_name, " was computed from)");
}

}  // namespace

Field::Field(const char* op_, const at::Tensor& u_, const at::Tensor& x_, Layout layout,
             const char* u_name_)
    : op(op_), u_name(u_name_), u(u_), x(x_), grad_enabled_at_call_(c10::GradMode::is_enabled()) {
  // A derivative diffops computed by this x may have lost its graph legitimately (a constant).
  check_u(op, u_name, u);
  check_input(op, u_name, u, x, "x");
  derived_ = derived_registry().contains(u, x);
  check_field(op, u_name, u, grad_enabled_at_call_, derived_);
  if (layout == Layout::elementwise) {
    elementwise_ = true;
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
  TORCH_CHECK(g.defined(), op, ": ", not_in_graph(u_name, "x"));
  return g;
}

at::Tensor Field::vjp(const at::Tensor& out, const at::Tensor& v, bool create_graph) const {
  return vjp_or_zeros(out, x, v, create_graph);
}

at::Tensor Field::vjp_field_batched(const at::Tensor& seeds, bool create_graph) const {
  if (derived_) return vjp_batched(u, seeds, create_graph);
  auto g = raw_vjp(u, x, seeds, create_graph, /*batched=*/true);
  TORCH_CHECK(g.defined(), op, ": ", not_in_graph(u_name, "x"));
  return g;
}

at::Tensor Field::vjp_batched(const at::Tensor& out, const at::Tensor& seeds,
                              bool create_graph) const {
  std::vector<int64_t> shape{seeds.size(0)};
  shape.insert(shape.end(), x.sizes().begin(), x.sizes().end());
  if (!out.requires_grad()) return at::zeros(shape, x.options());
  auto g = raw_vjp(out, x, seeds, create_graph, /*batched=*/true);
  return g.defined() ? g : at::zeros(shape, x.options());
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

void Field::check_options(const Options& options) const {
  TORCH_CHECK_VALUE(options.coords().empty(), op, ": coords is for the function form (", op,
                    "(f, x)); in the graph form pass the tensor of those coordinates as x (a "
                    "leaf of its own that u is computed from)");
  check_structure(options.check_structure());
}

void Field::check_structure(bool enabled) const {
  if (!enabled) return;
  if (!u.requires_grad()) return;  // a derived constant: nothing to couple
  // Random per-point weights in [0.5, 1.5), from a fixed local stream (the caller's RNG is untouched).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20261123);
  auto r = (at::rand(batch, gen, x.options().device(at::kCPU)) + 0.5).to(x.device());
  std::vector<int64_t> per_point = batch;  // r broadcast over u's component axes
  per_point.resize(batch.size() + comp.size(), 1);
  auto seed = component_seed(0);
  auto g = vjp_field(seed, false);                         // Jᵀ·1 (component 0)
  auto h = vjp_field(seed * r.view(per_point), false);     // Jᵀ·(r ⊙ 1)
  auto expected = elementwise_ ? g * r : g * r.unsqueeze(-1);
  const double eps = x.scalar_type() == at::kDouble ? 2.2e-16 : 1.2e-7;
  const double scale = g.abs().max().item<double>();
  const double coupling = (h - expected).abs().max().item<double>();
  TORCH_CHECK_VALUE(coupling <= 1000 * eps * scale + 1e-30, op, ": check_structure: ", u_name,
                    elementwise_ ? "[i] depends on elements of x other than x[i]: the Jacobian is "
                                   "not diagonal, so one ones-seeded product does not give the "
                                   "per-element derivatives (use gradient or jacobian)"
                                 : "[n] depends on points other than x[n]: the Jacobian is not "
                                   "block-diagonal over points (BatchNorm in training mode, "
                                   "attention or mixing across points), so one product per "
                                   "component does not give per-point derivatives (call "
                                   "model.eval() or compute point by point with torch.func.vmap)",
                    "; coupling ", coupling, " against derivatives of size ", scale);
}

at::Tensor Field::component_seed(int64_t c) const { return one_hot(u, components, c); }

at::Tensor Field::component_seeds(int64_t c0, int64_t n) const {
  std::vector<int64_t> shape{n};
  shape.insert(shape.end(), u.sizes().begin(), u.sizes().end());
  auto seeds = at::zeros(shape, u.options());
  auto flat = seeds.view({n, -1, components});
  for (int64_t k = 0; k < n; ++k) flat.select(0, k).select(1, c0 + k).fill_(1);
  return seeds;
}

at::Tensor Field::coordinate_seeds() const {
  std::vector<int64_t> shape{d};
  shape.insert(shape.end(), x.sizes().begin(), x.sizes().end());
  auto seeds = at::zeros(shape, x.options());
  auto flat = seeds.view({d, -1, d});
  for (int64_t i = 0; i < d; ++i) flat.select(0, i).select(1, i).fill_(1);
  return seeds;
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
at::Tensor jacobian_of(const Field& f, bool create_graph, bool batched) {
  const bool keep = f.keep(create_graph);
  if (batched) {  // all rows in one pass: (C,) + batch + (d,) -> batch + (C, d)
    auto rows = f.vjp_field_batched(f.component_seeds(0, f.components), keep);
    return f.stack(rows.unbind(0), f.comp_and({f.d}));
  }
  std::vector<at::Tensor> rows;
  rows.reserve(f.components);
  for (int64_t c = 0; c < f.components; ++c)
    rows.push_back(f.vjp_field(f.component_seed(c), keep));  // batch + (d,)
  return f.stack(rows, f.comp_and({f.d}));
}

CoordinateField::CoordinateField(const char* op_, const at::Tensor& u_,
                                 at::TensorList coordinates_, const char* u_name_)
    : op(op_),
      u_name(u_name_),
      u(u_),
      coordinates(coordinates_.vec()),
      grad_enabled_at_call_(c10::GradMode::is_enabled()) {
  check_u(op, u_name, u);
  TORCH_CHECK_VALUE(!coordinates.empty(), op, ": coordinates is empty; pass the tensors the field "
                    "was computed from, e.g. (x, y, t)");
  for (size_t k = 0; k < coordinates.size(); ++k)
    check_input(op, u_name, u, coordinates[k], c10::str("coordinates[", k, "]"));
  derived_ = derived_registry().contains(u, coordinates[0]);
  check_field(op, u_name, u, grad_enabled_at_call_, derived_);

  const auto shape = coordinates[0].sizes();
  for (size_t k = 1; k < coordinates.size(); ++k)
    TORCH_CHECK_VALUE(coordinates[k].sizes() == shape, op, ": coordinates[", k, "] has shape ",
                      coordinates[k].sizes(), " but coordinates[0] has shape ", shape,
                      "; every coordinate tensor holds one value per point");
  // (N, 1) columns or (N,) vectors: one value per point either way.
  const bool column = !shape.empty() && shape.back() == 1;
  batch = (column ? shape.slice(0, shape.size() - 1) : shape).vec();
  const auto nb = static_cast<int64_t>(batch.size());
  TORCH_CHECK_VALUE(u.dim() >= nb && u.sizes().slice(0, nb) == at::IntArrayRef(batch), op, ": ",
                    u_name, " has shape ", u.sizes(), " but the coordinates have shape ", shape,
                    ": ", u_name, "'s leading axes must equal the points' axes ",
                    at::IntArrayRef(batch), " (", u_name, "[n] is the field at point n)");
  comp = u.sizes().slice(nb).vec();
  for (auto c : comp) components *= c;
}

at::Tensor CoordinateField::gradient(bool create_graph) const {
  const auto k = static_cast<int64_t>(coordinates.size());
  std::vector<at::Tensor> rows;
  for (int64_t c = 0; c < components; ++c) {
    auto grads = u.requires_grad()  // a derived constant has no graph: all derivatives vanish
                     ? raw_vjp(u, coordinates, one_hot(u, components, c), keep(create_graph))
                     : std::vector<at::Tensor>(k);
    std::vector<at::Tensor> cols;
    for (int64_t i = 0; i < k; ++i) {
      if (!grads[i].defined()) {
        TORCH_CHECK(derived_, op, ": ",
                    not_in_graph(u_name, c10::str("coordinates[", i, "]").c_str()));
        grads[i] = at::zeros(coordinates[i].sizes(), coordinates[i].options());
      }
      cols.push_back(grads[i].reshape(batch));
    }
    rows.push_back(at::stack(cols, -1));  // batch + (k,)
  }
  std::vector<int64_t> shape = batch;
  shape.insert(shape.end(), comp.begin(), comp.end());
  shape.push_back(k);
  return at::stack(rows, static_cast<int64_t>(batch.size())).reshape(shape);
}

at::Tensor CoordinateField::result(at::Tensor r) const {
  derived_registry().add(r, coordinates[0]);
  return r;
}

at::Tensor per_point_vectors(const char* op, const char* w_name, const at::Tensor& w,
                             at::IntArrayRef points, const char* points_name,
                             const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(w.defined(), op, ": ", w_name, " is an undefined tensor");
  TORCH_CHECK_VALUE(w.scalar_type() == like.scalar_type(), op, ": dtype mismatch: ", w_name,
                    " is ", w.scalar_type(), " but ", like_name, " is ", like.scalar_type());
  TORCH_CHECK_VALUE(w.device() == like.device(), op, ": device mismatch: ", w_name, " is on ",
                    w.device(), " but ", like_name, " is on ", like.device());
  const auto n = static_cast<int64_t>(points.size());
  bool broadcastable = w.dim() <= n;
  for (int64_t k = 1; broadcastable && k <= w.dim(); ++k)
    broadcastable = w.size(-k) == points[n - k] || w.size(-k) == 1;
  TORCH_CHECK_VALUE(broadcastable, op, ": ", w_name, " of shape ", w.sizes(),
                    " does not broadcast to ", points_name, " ", points,
                    " (one vector per point, or one for all)");
  return w.expand(points);
}

std::vector<int64_t> vector_field_comp(const Field& f) {
  TORCH_CHECK_VALUE(!f.comp.empty() && f.comp.back() == f.d, f.op, ": v has shape ",
                    f.u.sizes(), " and x has shape ", f.x.sizes(), ": v's last axis must hold the ",
                    f.d, " components of a vector field in d = ", f.d, " dimensions");
  return {f.comp.begin(), f.comp.end() - 1};
}

void check_positive(const char* op, int64_t value, const char* what) {
  TORCH_CHECK_VALUE(value >= 1, op, ": ", what, " must be at least 1, got ", value);
}

std::tuple<at::Tensor, at::Tensor> forward_over_reverse(
    const char* op, const std::function<at::Tensor(const at::Tensor&)>& f, const at::Tensor& x,
    bool create_graph) {
  TORCH_CHECK_VALUE(x.defined() && is_real_floating(x), op,
                    ": x must be a tensor with a real floating dtype");
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape batch + (d,)");
  TORCH_CHECK(!c10::InferenceMode::is_enabled(), op,
              ": called inside torch.inference_mode(), where autograd is off");
  const bool grad_at_call = c10::GradMode::is_enabled();
  c10::AutoGradMode enable(true);
  const auto d = x.size(-1);
  const auto points = x.reshape({-1, d});
  const auto n = points.size(0);
  auto stacked = points.unsqueeze(0).expand({d, n, d}).reshape({d * n, d}).contiguous();
  if (!stacked.requires_grad()) stacked = stacked.detach().requires_grad_();
  auto tangents =
      at::eye(d, x.options()).unsqueeze(1).expand({d, n, d}).reshape({d * n, d}).contiguous();

  namespace fwd = torch::autograd::forward_ad;
  const auto level = fwd::enter_dual_level();
  struct Exit {
    uint64_t level;
    ~Exit() { fwd::exit_dual_level(level); }
  } exit_level{level};
  const auto dual = at::_make_dual(stacked, tangents, static_cast<int64_t>(level));
  const auto u = f(dual);
  TORCH_CHECK_VALUE(u.defined() && is_real_floating(u) && u.dim() >= 1 && u.size(0) == d * n, op,
                    ": f must map points of shape (P, d) to a floating field of shape (P,) + comp; "
                    "called on ", d * n, " stacked points, it returned ",
                    u.defined() ? u.sizes() : at::IntArrayRef{});
  TORCH_CHECK(u.requires_grad(), op, ": f's output has no graph to x: it was computed from other "
              "tensors, detached, or under torch.no_grad()");
  auto comp = u.sizes().slice(1).vec();
  int64_t components = 1;
  for (auto c : comp) components *= c;
  std::vector<at::Tensor> columns;  // per component: (n, d, d)
  for (int64_t c = 0; c < components; ++c) {
    auto g = raw_vjp(u, dual, one_hot(u, components, c), /*create_graph=*/true);
    TORCH_CHECK(g.defined(), op, ": f's output does not depend on its input");
    auto tangent = std::get<1>(at::_unpack_dual(g, static_cast<int64_t>(level)));
    columns.push_back(tangent.defined() ? tangent.view({d, n, d}).permute({1, 2, 0})
                                        : at::zeros({n, d, d}, x.options()));  // f is linear
  }
  auto value = std::get<0>(at::_unpack_dual(u, static_cast<int64_t>(level))).narrow(0, 0, n);
  auto batch = x.sizes().slice(0, x.dim() - 1).vec();
  auto shape = batch;
  shape.insert(shape.end(), comp.begin(), comp.end());
  value = value.reshape(shape);
  shape.push_back(d);
  shape.push_back(d);
  auto H = at::stack(columns, 1).reshape(shape);
  if (!grad_at_call) return {value.detach(), H.detach()};
  return {value, create_graph ? H : H.detach()};
}

at::Tensor rademacher(const at::Tensor& x, const std::optional<at::Generator>& generator) {
  return at::randint(0, 2, x.sizes(), generator, x.options()).mul_(2).sub_(1);
}

}  // namespace diffops::detail
