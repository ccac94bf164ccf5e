"""Exact results: analytic fields with closed-form derivatives, asserted with torch.equal.

Points are dyadic and coefficients small integers, so every polynomial value and derivative is a
float that both float32 and float64 represent exactly: any correct sequence of products must give
the analytic value to the last bit. sin/cos/exp appear where autograd's backward formula is the
analytic one (sin' = cos, cos' = -sin, exp' = exp), so the same floats come out.
"""

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import diffops

P2 = [[1.0, 2.0], [0.5, -1.5], [-2.0, 0.25], [0.75, 0.0]]
P3 = [[1.0, 2.0, -0.5], [0.5, -1.5, 2.0], [-2.0, 0.25, 1.0], [0.0, 0.75, -1.25]]


def cols(x):
    return x.unbind(-1)


@dataclass
class Case:
    name: str
    op: Callable  # (u, x) -> result
    points: list
    field: Callable  # x -> u
    expected: Callable  # x (detached) -> analytic result
    extra: dict = field(default_factory=dict)


def f1(x):  # x0² x1 + 3 x1³
    x0, x1 = cols(x)
    return x0**2 * x1 + 3 * x1**3


def f3(x):  # x0² x1 x2 + x1³
    x0, x1, x2 = cols(x)
    return x0**2 * x1 * x2 + x1**3


def F3(x):  # (x0 x1, x1 x2, x2 x0)
    x0, x1, x2 = cols(x)
    return torch.stack([x0 * x1, x1 * x2, x2 * x0], -1)


def G3(x):  # (x1² x2, x0 x2², x0² x1)
    x0, x1, x2 = cols(x)
    return torch.stack([x1**2 * x2, x0 * x2**2, x0**2 * x1], -1)


def trig(x):  # sin(x0) x1 + cos(x1)
    x0, x1 = cols(x)
    return torch.sin(x0) * x1 + torch.cos(x1)


def zero(x):
    return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)


D = diffops
CASES = [
    # --- gradient, scalar and vector fields, several batch layouts
    Case("gradient/poly", D.gradient, P2, f1,
         lambda x: torch.stack([2 * x[:, 0] * x[:, 1], x[:, 0] ** 2 + 9 * x[:, 1] ** 2], -1)),
    Case("gradient/trig", D.gradient, P2, trig,
         lambda x: torch.stack([torch.cos(x[:, 0]) * x[:, 1], torch.sin(x[:, 0]) - torch.sin(x[:, 1])], -1)),
    Case("gradient/exp", D.gradient, P2, lambda x: torch.exp(x[:, 0]) * x[:, 1] ** 2,
         lambda x: torch.stack([x[:, 1] ** 2 * torch.exp(x[:, 0]), 2 * x[:, 1] * torch.exp(x[:, 0])], -1)),
    Case("gradient/one-point", D.gradient, [1.5, -0.5, 2.0], lambda x: (x * x).sum(), lambda x: 2 * x),
    Case("gradient/column-field(N,1)", D.gradient, P2, lambda x: f1(x)[:, None],
         lambda x: torch.stack([2 * x[:, 0] * x[:, 1], x[:, 0] ** 2 + 9 * x[:, 1] ** 2], -1)[:, None, :]),
    Case("gradient/2d-batch", D.gradient, [P2, P2[::-1]], lambda x: x[..., 0] * x[..., 1],
         lambda x: x.flip(-1)),
    Case("gradient/vector", D.gradient, P3, F3,
         lambda x: torch.stack([torch.stack([x[:, 1], x[:, 0], 0 * x[:, 0]], -1),
                                torch.stack([0 * x[:, 0], x[:, 2], x[:, 1]], -1),
                                torch.stack([x[:, 2], 0 * x[:, 0], x[:, 0]], -1)], -2)),
    # --- jacobian
    Case("jacobian/identity", D.jacobian, P3, lambda x: x,
         lambda x: torch.eye(3, dtype=x.dtype).expand(4, 3, 3)),
    Case("jacobian/identity-times-one", D.jacobian, P2, lambda x: x * 1.0,
         lambda x: torch.eye(2, dtype=x.dtype).expand(4, 2, 2)),
    Case("jacobian/F3", D.jacobian, P3, F3,
         lambda x: torch.stack([torch.stack([x[:, 1], x[:, 0], 0 * x[:, 0]], -1),
                                torch.stack([0 * x[:, 0], x[:, 2], x[:, 1]], -1),
                                torch.stack([x[:, 2], 0 * x[:, 0], x[:, 0]], -1)], -2)),
    Case("jacobian/scalar-is-gradient", D.jacobian, P2, f1,
         lambda x: torch.stack([2 * x[:, 0] * x[:, 1], x[:, 0] ** 2 + 9 * x[:, 1] ** 2], -1)),
    Case("jacobian/one-point-2x3", D.jacobian, [1.0, -2.0, 0.5],
         lambda x: torch.stack([x[0] * x[1] * x[2], x[0] + 2 * x[2]]),
         lambda x: torch.tensor([[x[1] * x[2], x[0] * x[2], x[0] * x[1]], [1.0, 0.0, 2.0]], dtype=x.dtype)),
    # --- divergence
    Case("divergence/F3", D.divergence, P3, F3, lambda x: x[:, 1] + x[:, 2] + x[:, 0]),
    Case("divergence/x*x", D.divergence, P3, lambda x: x * x, lambda x: 2 * x[:, 0] + 2 * x[:, 1] + 2 * x[:, 2]),
    Case("divergence/G3-solenoidal", D.divergence, P3, G3, lambda x: 0 * x[:, 0]),
    Case("divergence/2d", D.divergence, P2, lambda x: torch.stack([x[:, 0] ** 3, x[:, 0] * x[:, 1]], -1),
         lambda x: 3 * x[:, 0] ** 2 + x[:, 0]),
    Case("divergence/two-fields", D.divergence, P2,
         lambda x: torch.stack([x, x**2], -2), lambda x: torch.stack([2 + 0 * x[:, 0], 2 * x[:, 0] + 2 * x[:, 1]], -1)),
    # --- curl
    Case("curl/F3", D.curl, P3, F3, lambda x: -torch.stack([x[:, 1], x[:, 2], x[:, 0]], -1)),
    Case("curl/G3", D.curl, P3, G3,
         lambda x: torch.stack([x[:, 0] ** 2 - 2 * x[:, 0] * x[:, 2], x[:, 1] ** 2 - 2 * x[:, 0] * x[:, 1],
                                x[:, 2] ** 2 - 2 * x[:, 1] * x[:, 2]], -1)),
    Case("curl/2d-rotation", D.curl, P2, lambda x: torch.stack([-x[:, 1], x[:, 0]], -1), lambda x: 2 + 0 * x[:, 0]),
    Case("curl/2d-poly", D.curl, P2, lambda x: torch.stack([-x[:, 1] * x[:, 0], x[:, 0] ** 2], -1),
         lambda x: 3 * x[:, 0]),
    # --- laplacian
    Case("laplacian/poly", D.laplacian, P2, f1, lambda x: 2 * x[:, 1] + 18 * x[:, 1]),
    Case("laplacian/poly3", D.laplacian, P3, f3, lambda x: 2 * x[:, 1] * x[:, 2] + 6 * x[:, 1]),
    Case("laplacian/trig", D.laplacian, P2, trig, lambda x: -torch.sin(x[:, 0]) * x[:, 1] - torch.cos(x[:, 1])),
    Case("laplacian/vector", D.laplacian, P3, G3,
         lambda x: torch.stack([2 * x[:, 2], 2 * x[:, 0], 2 * x[:, 1]], -1)),
    Case("laplacian/harmonic", D.laplacian, P2, lambda x: x[:, 0] ** 2 - x[:, 1] ** 2, lambda x: 0 * x[:, 0]),
    Case("laplacian/linear-is-zero", D.laplacian, P3, lambda x: 3 * x[:, 0] - x[:, 2], zero),
    Case("laplacian/one-point-x.x", D.laplacian, [1.0, 1.0, 1.0], lambda x: torch.dot(x, x),
         lambda x: torch.tensor(6.0, dtype=x.dtype)),
    # --- hessian
    Case("hessian/poly", D.hessian, P2, f1,
         lambda x: torch.stack([torch.stack([2 * x[:, 1], 2 * x[:, 0]], -1),
                                torch.stack([2 * x[:, 0], 18 * x[:, 1]], -1)], -2)),
    Case("hessian/trig", D.hessian, P2, trig,
         lambda x: torch.stack([torch.stack([-torch.sin(x[:, 0]) * x[:, 1], torch.cos(x[:, 0])], -1),
                                torch.stack([torch.cos(x[:, 0]), -torch.cos(x[:, 1])], -1)], -2)),
    Case("hessian/vector-F3", D.hessian, P3, F3,
         lambda x: torch.tensor([[[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
                                 [[0, 0, 1], [0, 0, 0], [1, 0, 0]]], dtype=x.dtype).expand(4, 3, 3, 3)),
    Case("hessian/linear-is-zero", D.hessian, P2, lambda x: x[:, 0] + x[:, 1],
         lambda x: torch.zeros(4, 2, 2, dtype=x.dtype)),
    # --- partial (any order)
    Case("partial/0", D.partial, P2, f1, lambda x: 2 * x[:, 0] * x[:, 1], {"index": 0}),
    Case("partial/1", D.partial, P2, f1, lambda x: x[:, 0] ** 2 + 9 * x[:, 1] ** 2, {"index": [1]}),
    Case("partial/11", D.partial, P2, f1, lambda x: 18 * x[:, 1], {"index": [1, 1]}),
    Case("partial/01", D.partial, P2, f1, lambda x: 2 * x[:, 0], {"index": [0, 1]}),
    Case("partial/10", D.partial, P2, f1, lambda x: 2 * x[:, 0], {"index": [1, 0]}),
    Case("partial/001", D.partial, P2, f1, lambda x: 2 + 0 * x[:, 0], {"index": [0, 0, 1]}),
    Case("partial/1111-zero", D.partial, P2, f1, zero, {"index": [1, 1, 1, 1]}),
    Case("partial/012", D.partial, P3, f3, lambda x: 2 * x[:, 0], {"index": [0, 1, 2]}),
    Case("partial/trig-000", D.partial, P2, trig, lambda x: -torch.cos(x[:, 0]) * x[:, 1], {"index": [0, 0, 0]}),
    Case("partial/vector", D.partial, P3, G3,
         lambda x: torch.stack([0 * x[:, 0], 0 * x[:, 0], 2 * x[:, 0]], -1), {"index": [0, 1]}),
    # --- directional derivative
    Case("directional/poly", D.directional_derivative, P2, f1,
         lambda x: 0.5 * (2 * x[:, 0] * x[:, 1]) - 2 * (x[:, 0] ** 2 + 9 * x[:, 1] ** 2),
         {"direction": [0.5, -2.0]}),
    Case("directional/per-point", D.directional_derivative, P2, f1,
         lambda x: x[:, 1] * (2 * x[:, 0] * x[:, 1]) + x[:, 0] * (x[:, 0] ** 2 + 9 * x[:, 1] ** 2),
         {"direction": "flip"}),
    Case("directional/vector", D.directional_derivative, P3, F3,
         lambda x: torch.stack([x[:, 1] + 2 * x[:, 0], 2 * x[:, 2] - x[:, 1], x[:, 2] - x[:, 0]], -1),
         {"direction": [1.0, 2.0, -1.0]}),
]


def run_case(case: Case, dtype):
    x = torch.tensor(case.points, dtype=dtype, requires_grad=True)
    u = case.field(x)
    kwargs = dict(case.extra)
    if "direction" in kwargs:
        d = kwargs.pop("direction")
        direction = x.detach().flip(-1) if d == "flip" else torch.tensor(d, dtype=dtype)
        return case.op(u, x, direction), x
    return case.op(u, x, **kwargs), x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exact(case, dtype):
    got, x = run_case(case, dtype)
    want = case.expected(x.detach())
    assert got.dtype == dtype and got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(got, want), (got, want)


# --- derivative: per-element derivatives of elementwise maps, one ones-vector product per order
ELEMENTWISE = [
    ("cube", lambda x: x**3, [lambda x: 3 * x**2, lambda x: 6 * x, lambda x: 6 + 0 * x, lambda x: 0 * x]),
    ("sin", torch.sin, [torch.cos, lambda x: -torch.sin(x), lambda x: -torch.cos(x), torch.sin]),
    ("exp", torch.exp, [torch.exp, torch.exp, torch.exp]),
    ("x*x", lambda x: x * x, [lambda x: 2 * x, lambda x: 2 + 0 * x, lambda x: 0 * x]),
    ("linear", lambda x: 3 * x - 1, [lambda x: 3 + 0 * x, lambda x: 0 * x]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(), (7,), (3, 5)], ids=["0d", "1d", "2d"])
@pytest.mark.parametrize("name,g,derivs", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_derivative_exact(name, g, derivs, shape, dtype):
    x = (torch.arange(-7, 8, dtype=dtype)[: max(1, torch.Size(shape).numel())] / 4).reshape(shape)
    x.requires_grad_()
    y = g(x)
    for order, want in enumerate(derivs, start=1):
        got = diffops.derivative(y, x, order)
        assert torch.equal(got, want(x.detach())), (order, got)


# --- identities
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_curl_of_gradient_is_zero(dtype):
    x = torch.tensor(P3, dtype=dtype, requires_grad=True)
    assert torch.equal(diffops.curl(diffops.gradient(f3(x), x), x), torch.zeros(4, 3, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_divergence_of_curl_is_zero(dtype):
    x = torch.tensor(P3, dtype=dtype, requires_grad=True)
    assert torch.equal(diffops.divergence(diffops.curl(G3(x), x), x), torch.zeros(4, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", [f3, lambda x: torch.sin(x[:, 0]) * x[:, 1] * x[:, 2]], ids=["poly", "trig"])
def test_laplacian_is_divergence_of_gradient_is_trace_of_hessian(fn, dtype):
    x = torch.tensor(P3, dtype=dtype, requires_grad=True)
    u = fn(x)
    lap = diffops.laplacian(u, x)
    assert torch.equal(lap, diffops.divergence(diffops.gradient(u, x), x))
    H = diffops.hessian(u, x)
    assert torch.equal(lap, H[:, 0, 0] + H[:, 1, 1] + H[:, 2, 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_hessian_is_jacobian_of_gradient_and_partials(dtype):
    x = torch.tensor(P3, dtype=dtype, requires_grad=True)
    u = f3(x)
    H = diffops.hessian(u, x)
    assert torch.equal(H, diffops.jacobian(diffops.gradient(u, x), x))
    for i in range(3):
        for j in range(3):
            assert torch.equal(H[:, i, j], diffops.partial(u, x, [i, j]))


def test_results_keep_graph_by_default_and_drop_it_on_request():
    x = torch.tensor(P2, dtype=torch.float64, requires_grad=True)
    u = f1(x)
    assert diffops.laplacian(u, x).requires_grad
    assert not diffops.laplacian(u, x, create_graph=False).requires_grad
    # differentiating again gives the next derivative: ∂/∂x1 of Δu = 20
    lap = diffops.laplacian(u, x)
    assert torch.equal(diffops.partial(lap, x, 1), torch.full((4,), 20.0, dtype=torch.float64))
    # u's graph survives the calls
    assert torch.equal(diffops.gradient(u, x)[:, 0], 2 * x.detach()[:, 0] * x.detach()[:, 1])


def test_no_grad_around_the_call_still_differentiates_but_keeps_no_graph():
    x = torch.tensor(P2, dtype=torch.float64, requires_grad=True)
    u = f1(x)
    with torch.no_grad():
        lap = diffops.laplacian(u, x)
        p = diffops.partial(u, x, [1, 1])
    assert torch.equal(lap, 20 * x.detach()[:, 1]) and not lap.requires_grad
    assert torch.equal(p, 18 * x.detach()[:, 1]) and not p.requires_grad


def test_empty_batch():
    x = torch.zeros(0, 3, requires_grad=True)
    u = (x**2).sum(-1)
    assert diffops.laplacian(u, x).shape == (0,)
    assert diffops.hessian(u, x).shape == (0, 3, 3)
