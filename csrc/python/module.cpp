// The only code that knows about Python: registers the diffops operators with the dispatcher as
// composite kernels (outputs stay differentiable, errors map to ValueError/RuntimeError, and the
// ops trace under torch.compile) and defines the `diffops._C` module that loads them.

#include <Python.h>
#include <torch/library.h>

#include "diffops/autograd.h"  // the derivative cache's building blocks, for diffops.Derivatives
#include "diffops/diffops.h"

namespace {

// Drops the GIL for the duration of an autograd call when the caller holds it. Eager torch.ops
// calls arrive without it; torch.compile's tracer calls kernels while holding it, and the
// autograd engine refuses to run then.
class GilRelease {
 public:
  GilRelease() : state_(Py_IsInitialized() && PyGILState_Check() ? PyEval_SaveThread() : nullptr) {}
  ~GilRelease() {
    if (state_) PyEval_RestoreThread(state_);
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

diffops::Options opts(bool create_graph, bool check_structure = false) {
  return diffops::Options().create_graph(create_graph).check_structure(check_structure);
}

using T = const at::Tensor&;

at::Tensor gradient(T u, T x, bool cg, bool cs, c10::string_view method) {
  GilRelease g;
  return diffops::gradient(u, x, opts(cg, cs).method(std::string(method)));
}
at::Tensor gradient_coordinates(T u, at::TensorList coordinates, bool cg) {
  GilRelease g;
  return diffops::gradient(u, coordinates, opts(cg));
}
at::Tensor normal_derivative(T u, T x, T normals, bool cg, bool cs) {
  GilRelease g;
  return diffops::normal_derivative(u, x, normals, opts(cg, cs));
}
void derivatives_check(T u, at::TensorList x, bool coordinates) {
  diffops::detail::derivatives_shape(u, x, coordinates);
}
at::Tensor derivatives_row(T base, at::TensorList x, bool coordinates) {
  GilRelease g;
  return diffops::detail::derivatives_row(base, x, coordinates);
}
using OptionalTensors = c10::List<std::optional<at::Tensor>>;
// An MLP's steps from the registered lists (undefined weight and bias for activation steps).
std::vector<diffops::Step> steps_of(const char* name, const OptionalTensors& weights,
                                    const OptionalTensors* biases,
                                    const std::vector<std::string>& kinds) {
  TORCH_CHECK_VALUE(weights.size() == kinds.size() && (!biases || biases->size() == kinds.size()),
                    name, ": weights, biases and kinds must have one entry per step");
  std::vector<diffops::Step> mlp;
  for (size_t k = 0; k < kinds.size(); ++k) {
    std::optional<at::Tensor> w = weights.get(k), b = biases ? biases->get(k) : std::nullopt;
    mlp.push_back({kinds[k], w.value_or(at::Tensor()), b.value_or(at::Tensor())});
  }
  return mlp;
}
std::tuple<at::Tensor, at::Tensor> value_and_derivative(c10::string_view op, T x,
                                                        const OptionalTensors& weights,
                                                        const OptionalTensors& biases,
                                                        std::vector<std::string> kinds,
                                                        std::vector<int64_t> coords) {
  GilRelease g;
  return diffops::value_and_derivative(
      std::string(op), x, steps_of("value_and_derivative", weights, &biases, kinds), coords);
}
int64_t forward_tangents(c10::string_view op, int64_t d, const OptionalTensors& weights,
                         std::vector<std::string> kinds) {
  return diffops::forward_tangents(std::string(op), d,
                                   steps_of("forward_tangents", weights, nullptr, kinds));
}
int64_t forward_products(c10::string_view op, int64_t d, const OptionalTensors& weights,
                         std::vector<std::string> kinds) {
  return diffops::forward_products(std::string(op), d,
                                   steps_of("forward_products", weights, nullptr, kinds));
}
bool forward_is_auto(c10::string_view op, int64_t d, const OptionalTensors& weights,
                     std::vector<std::string> kinds) {
  return diffops::forward_is_auto(std::string(op), d,
                                  steps_of("forward_is_auto", weights, nullptr, kinds));
}
at::Tensor jacobian(T v, T x, bool cg, bool cs, c10::string_view method) {
  GilRelease g;
  return diffops::jacobian(v, x, opts(cg, cs).method(std::string(method)));
}
at::Tensor directional_derivative(T u, T x, T direction, bool cg, bool cs) {
  GilRelease g;
  return diffops::directional_derivative(u, x, direction, opts(cg, cs));
}
diffops::Options trace_opts(bool cg, bool cs, c10::string_view method, int64_t samples,
                           std::optional<at::Generator> generator) {
  return opts(cg, cs).method(std::string(method)).samples(samples).generator(std::move(generator));
}
at::Tensor divergence(T v, T x, bool cg, bool cs, c10::string_view method, int64_t samples,
                      std::optional<at::Generator> generator) {
  GilRelease g;
  return diffops::divergence(v, x, trace_opts(cg, cs, method, samples, std::move(generator)));
}
at::Tensor curl(T v, T x, bool cg, bool cs, c10::string_view method) {
  GilRelease g;
  return diffops::curl(v, x, opts(cg, cs).method(std::string(method)));
}
at::Tensor laplacian(T u, T x, bool cg, bool cs, c10::string_view method, int64_t samples,
                     std::optional<at::Generator> generator) {
  GilRelease g;
  return diffops::laplacian(u, x, trace_opts(cg, cs, method, samples, std::move(generator)));
}
at::Tensor hessian(T u, T x, bool cg, bool cs, c10::string_view method) {
  GilRelease g;
  return diffops::hessian(u, x, opts(cg, cs).method(std::string(method)));
}
std::tuple<std::string, int64_t, int64_t, std::string> explain(c10::string_view op, T u, T x,
                                                                bool cs, c10::string_view method,
                                                                int64_t samples) {
  auto plan = diffops::explain(std::string(op), u, x,
                               opts(true, cs).method(std::string(method)).samples(samples));
  return {plan.method, plan.passes, plan.products, plan.reason};
}
at::Tensor partial(T u, T x, at::IntArrayRef index, bool cg, bool cs) {
  GilRelease g;
  return diffops::partial(u, x, index, opts(cg, cs));
}
at::Tensor derivative(T y, T x, int64_t order, bool cg, bool cs) {
  GilRelease g;
  return diffops::derivative(y, x, order, opts(cg, cs));
}

}  // namespace

// Giving a plain function to m.def registers a CompositeImplicitAutograd kernel.
TORCH_LIBRARY(diffops, m) {
  m.def("gradient(Tensor u, Tensor x, *, bool create_graph=True, bool check_structure=False, "
        "str method=\"auto\") -> Tensor", &gradient);
  m.def("gradient.coordinates(Tensor u, Tensor[] coordinates, *, bool create_graph=True) -> Tensor",
        &gradient_coordinates);
  m.def("normal_derivative(Tensor u, Tensor x, Tensor normals, *, bool create_graph=True, "
        "bool check_structure=False) -> Tensor",
        &normal_derivative);
  // diffops.Derivatives (python/diffops/_derivatives.py): validation and one cached gradient row
  m.def("_derivatives_check(Tensor u, Tensor[] x, bool coordinates) -> ()", &derivatives_check);
  m.def("_derivatives_row(Tensor base, Tensor[] x, bool coordinates) -> Tensor", &derivatives_row);
  // the function form's forward propagation through an MLP (python/diffops/_function.py);
  // undefined weights for activation steps
  m.def("value_and_derivative(str op, Tensor x, Tensor?[] weights, Tensor?[] biases, str[] kinds,"
        " int[] coords=[]) -> (Tensor, Tensor)", &value_and_derivative);
  m.def("forward_tangents(str op, int d, Tensor?[] weights, str[] kinds) -> int", &forward_tangents);
  m.def("forward_products(str op, int d, Tensor?[] weights, str[] kinds) -> int", &forward_products);
  m.def("forward_is_auto(str op, int d, Tensor?[] weights, str[] kinds) -> bool", &forward_is_auto);
  // the forward propagation's CPU memory cache (diffops.empty_cache and friends)
  m.def("cached_bytes() -> int", [] { return diffops::cached_bytes(); });
  m.def("empty_cache() -> ()", [] { diffops::empty_cache(); });
  m.def("cache_limit() -> int", [] { return diffops::cache_limit(); });
  m.def("set_cache_limit(int bytes) -> int", [](int64_t bytes) { return diffops::set_cache_limit(bytes); });
  m.def("jacobian(Tensor v, Tensor x, *, bool create_graph=True, bool check_structure=False, "
        "str method=\"auto\") -> Tensor", &jacobian);
  m.def("directional_derivative(Tensor u, Tensor x, Tensor direction, *, bool create_graph=True, "
        "bool check_structure=False) -> Tensor", &directional_derivative);
  m.def("divergence(Tensor v, Tensor x, *, bool create_graph=True, bool check_structure=False, str method=\"auto\", "
        "int samples=1, Generator? generator=None) -> Tensor", &divergence);
  m.def("curl(Tensor v, Tensor x, *, bool create_graph=True, bool check_structure=False, "
        "str method=\"auto\") -> Tensor", &curl);
  m.def("laplacian(Tensor u, Tensor x, *, bool create_graph=True, bool check_structure=False, str method=\"auto\", "
        "int samples=1, Generator? generator=None) -> Tensor", &laplacian);
  m.def("hessian(Tensor u, Tensor x, *, bool create_graph=True, bool check_structure=False, "
        "str method=\"auto\") -> Tensor", &hessian);
  m.def("explain(str op, Tensor u, Tensor x, *, bool check_structure=False, str method=\"auto\", "
        "int samples=1) -> (str, int, int, str)", &explain);
  m.def("partial(Tensor u, Tensor x, int[] index, *, bool create_graph=True, bool check_structure=False) -> Tensor", &partial);
  m.def("derivative(Tensor y, Tensor x, int order=1, *, bool create_graph=True, "
        "bool check_structure=False) -> Tensor",
        &derivative);
}

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                 "diffops operators; importing it registers torch.ops.diffops.",
                                 -1, nullptr};

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
