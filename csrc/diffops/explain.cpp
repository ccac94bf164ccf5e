#include "diffops/explain.h"

#include <ATen/ATen.h>

#include <array>
#include <string_view>

#include "diffops/autograd.h"

namespace diffops {
namespace detail {
namespace {

// The strategies each operator offers besides "loop" (the default, one product per seed).
struct Offer {
  std::string_view op;
  bool batched;
  bool hutchinson;
};
constexpr std::array<Offer, 11> kOffers{{
    {"gradient", true, false},
    {"jacobian", true, false},
    {"curl", true, false},
    {"divergence", true, true},
    {"laplacian", true, true},
    {"hessian", true, false},
    {"directional_derivative", false, false},
    {"normal_derivative", false, false},
    {"partial", false, false},
    {"derivative", false, false},
    {"gradient.coordinates", false, false},
}};

const Offer& offer_of(std::string_view op) {
  for (const auto& o : kOffers)
    if (o.op == op) return o;
  TORCH_CHECK_VALUE(false, "explain: op must be one of gradient, jacobian, curl, "
                    "directional_derivative, normal_derivative, divergence, laplacian, hessian; "
                    "got '", op, "'");
}

// (passes, products) of `method` for op on a field with C scalar components in d coordinates.
std::pair<int64_t, int64_t> cost(std::string_view op, Method method, int64_t d, int64_t C,
                                 int64_t k, int64_t order) {
  const bool loop = method == Method::loop;
  if (op == "gradient" || op == "jacobian" || op == "curl" || op == "gradient.coordinates")
    return {loop ? C : 1, C};
  if (op == "directional_derivative" || op == "normal_derivative")  // J·w by double backward
    return C == 1 ? std::pair<int64_t, int64_t>{1, 1} : std::pair<int64_t, int64_t>{2, 2};
  if (op == "divergence") {
    const int64_t fields = C / d;
    if (method == Method::hutchinson) return {fields * k, fields * k};
    return {loop ? fields * d : fields, fields * d};
  }
  if (op == "laplacian" || op == "hessian") {
    if (method == Method::hutchinson) return {C * (1 + k), C * (1 + k)};
    return {loop ? C * (1 + d) : 2 * C, C * (1 + d)};
  }
  if (op == "derivative") return {order, order};
  return {C * order, C * order};  // partial: `order` nested products per component
}

}  // namespace

Choice choose(const char* op, const Options& options, const at::Tensor& x, int64_t d,
              int64_t components, int64_t order) {
  const auto& offer = offer_of(op);
  const std::string_view name = offer.op.substr(0, offer.op.find('.'));  // as the caller knows it
  const auto& m = options.method();
  const bool known = m == "auto" || m == "loop" || (m == "batched" && offer.batched) ||
                     (m == "hutchinson" && offer.hutchinson);
  TORCH_CHECK_VALUE(known, name, ": method must be one of 'auto', 'loop'",
                    offer.batched ? ", 'batched'" : "", offer.hutchinson ? ", 'hutchinson'" : "",
                    ", got '", m, "'");
  if (m == "hutchinson") {
    check_positive(offer.op.data(), options.samples(), "samples");
    if (options.generator().has_value())
      TORCH_CHECK_VALUE(options.generator()->device().type() == x.device().type(), name,
                        ": generator is on ", options.generator()->device(), " but x is on ",
                        x.device(), "; the probes are drawn on x's device");
  } else {
    TORCH_CHECK_VALUE(options.samples() == 1 && !options.generator().has_value(), name,
                      ": samples and generator are only used by method='hutchinson' (method is '",
                      m, "')");
  }
  Choice choice{Method::loop, {}};
  if (m == "batched") choice.method = Method::batched;
  if (m == "hutchinson") choice.method = Method::hutchinson;
  if (m == "auto") {
    choice.plan.reason =
        offer.batched ? "auto: 'loop'; 'batched' was never faster in the CPU benchmarks "
                        "(benchmarks/bench_operators.py, docs/benchmarks.md)"
                      : "auto: 'loop', the only exact strategy for this operator";
  } else {
    choice.plan.reason = "asked for";
  }
  static constexpr std::array<const char*, 3> names{"loop", "batched", "hutchinson"};
  choice.plan.method = names[static_cast<size_t>(choice.method)];
  auto [passes, products] = cost(op, choice.method, d, components, options.samples(), order);
  if (options.check_structure()) {  // the ones-seeded product and one random probe
    passes += 2;
    products += 2;
  }
  choice.plan.passes = passes;
  choice.plan.products = products;
  return choice;
}

}  // namespace detail

Plan explain(const std::string& op, const at::Tensor& u, const at::Tensor& x,
             const Options& options) {
  detail::offer_of(op);
  const bool vector_field = op == "divergence" || op == "curl";
  detail::Field f(op.c_str(), u, x, detail::Layout::pointwise, vector_field ? "v" : "u");
  if (vector_field) detail::vector_field_comp(f);
  return detail::choose(f, options).plan;
}

}  // namespace diffops
