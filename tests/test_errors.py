"""Bad input gets a clear error naming the operator, the argument and the cause; a broken graph is
never answered with silent zeros, and a legitimately zero derivative is never an error."""

import re

import pytest
import torch

import diffops


def points(requires_grad=True, dtype=torch.float64):
    return torch.tensor([[1.0, 2.0], [0.5, -1.5]], dtype=dtype, requires_grad=requires_grad)


def field(x):
    return x[:, 0] ** 2 * x[:, 1]


def rebuilt():  # the seed's mistake: components re-assembled with torch.tensor lose the graph
    x = points()
    y1, y2 = field(x)
    return torch.tensor([y1.item(), y2.item()], dtype=torch.float64), x


def detached():
    x = points()
    return field(x).detach(), x


def under_no_grad():
    x = points()
    with torch.no_grad():
        u = field(x)
    return u, x


def slice_after():  # x[:, :1] made after u: a new node u does not depend on
    x = points()
    return field(x), x[:, :1]


def recreated():
    x = points()
    return field(x), x.detach().clone().requires_grad_()


def x_without_grad():
    x = points(requires_grad=False)
    return field(x), x


def other_leaf():
    x, w = points(), points()
    return field(w), x


def integer_x():
    return torch.ones(2), torch.ones(2, 2, dtype=torch.int64)


def dtype_mismatch():
    x = points()
    return field(x).float(), x


def device_mismatch():
    x = points()
    return field(x).to("meta"), x


def batch_mismatch():
    x = points()
    return field(x).repeat(2), x


def scalar_x():
    x = torch.tensor(2.0, requires_grad=True)
    return x**3, x


def vec3():
    x = torch.ones(2, 3, requires_grad=True, dtype=torch.float64)
    return x * x, x


def vec4():
    x = torch.ones(2, 4, requires_grad=True, dtype=torch.float64)
    return x * x, x


def wrong_components():
    x = points()
    return torch.stack([x[:, 0], x[:, 1], x[:, 0]], -1), x


D = diffops
# (id, call, exception, message pattern)
ERRORS = [
    ("rebuilt-with-torch.tensor", lambda: D.gradient(*rebuilt()), RuntimeError, r"^gradient: u has no grad_fn.*torch\.tensor"),
    ("detached", lambda: D.laplacian(*detached()), RuntimeError, r"^laplacian: u has no grad_fn.*\.detach\(\)"),
    ("computed-under-no_grad", lambda: D.hessian(*under_no_grad()), RuntimeError, r"^hessian: u has no grad_fn.*no_grad"),
    ("slice-not-in-graph", lambda: D.gradient(*slice_after()), RuntimeError, r"^gradient: x is not in the graph of u.*slice"),
    ("recreated-x", lambda: D.laplacian(*recreated()), RuntimeError, r"^laplacian: x is not in the graph of u"),
    ("other-leaf", lambda: D.partial(*other_leaf(), [0, 1]), RuntimeError, r"^partial: x is not in the graph of u"),
    ("x-without-grad", lambda: D.divergence(*vec3()[:1], torch.ones(2, 3, dtype=torch.float64)), RuntimeError,
     r"^divergence: x does not require grad.*requires_grad_\(\)"),
    ("x-without-grad-field", lambda: D.gradient(*x_without_grad()), RuntimeError, r"^gradient: x does not require grad"),
    ("integer-x", lambda: D.gradient(*integer_x()), ValueError, r"^gradient: x must have a real floating dtype"),
    ("dtype-mismatch", lambda: D.laplacian(*dtype_mismatch()), ValueError, r"^laplacian: dtype mismatch: u is Float but x is Double"),
    ("device-mismatch", lambda: D.gradient(*device_mismatch()), ValueError, r"^gradient: device mismatch: u is on meta but x is on cpu"),
    ("batch-mismatch", lambda: D.laplacian(*batch_mismatch()), ValueError, r"^laplacian: u has shape \[4\] but x has shape \[2, 2\]"),
    ("0-dim-x", lambda: D.gradient(*scalar_x()), ValueError, r"^gradient: x is a 0-dim tensor.*derivative"),
    ("index-out-of-range", lambda: D.partial(field(points()), points(), [0, 2]), ValueError, r"^partial: index \[0, 2\] names coordinate 2, out of range for d = 2"),
    ("negative-index", lambda: D.partial(*vec3()[:1], vec3()[1], -1), ValueError, r"^partial: "),
    ("empty-index", lambda: D.partial(*detached()[:0], field(points()), points(), []), ValueError, r"^partial: index is empty"),
    ("order-zero", lambda: D.derivative(*scalar_x(), 0), ValueError, r"^derivative: order must be at least 1, got 0"),
    ("curl-d4", lambda: D.curl(*vec4()), ValueError, r"^curl: defined for d = 2 or d = 3"),
    ("divergence-components", lambda: D.divergence(*wrong_components()), ValueError, r"^divergence: v has shape \[2, 3\] and x has shape \[2, 2\]"),
    ("curl-components", lambda: D.curl(field(points()), points()), ValueError, r"^curl: v has shape \[2\]"),
    ("derivative-shape", lambda: D.derivative(field(points()), points()), ValueError, r"^derivative: y has shape \[2\] but x has shape \[2, 2\].*elementwise"),
    ("direction-shape", lambda: D.directional_derivative(field(points()), points(), torch.ones(3, dtype=torch.float64)), ValueError,
     r"^directional_derivative: direction of shape \[3\] does not broadcast"),
    ("direction-dtype", lambda: D.directional_derivative(field(points()), points(), torch.ones(2)), ValueError,
     r"^directional_derivative: dtype mismatch: direction is Float"),
]


@pytest.mark.parametrize("call,exc,pattern", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error(call, exc, pattern):
    with pytest.raises(exc) as info:
        call()
    assert re.search(pattern, str(info.value), re.S), str(info.value)
    assert "\n" not in str(info.value).strip(), "one line, no C++ backtrace"


def test_inference_mode_call():
    x = points()
    u = field(x)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"^laplacian: called inside torch\.inference_mode\(\)"):
            diffops.laplacian(u, x)


def test_inference_tensor_x():
    with torch.inference_mode():
        x = torch.ones(2, 2)
    with pytest.raises(RuntimeError, match=r"^gradient: x is an inference tensor"):
        diffops.gradient(x * 2, x)


def test_called_under_no_grad_with_no_graph_says_so():
    x = points()
    with torch.no_grad():
        u = field(x)
        with pytest.raises(RuntimeError, match=r"^gradient: u has no grad_fn and gradients are disabled here"):
            diffops.gradient(u, x)


def test_errors_are_value_error_subclass_only_for_arguments():
    # ValueError for arguments, RuntimeError (and not ValueError) for graphs: callers can tell them apart
    with pytest.raises(RuntimeError) as info:
        diffops.gradient(*rebuilt())
    assert not isinstance(info.value, ValueError)


# --- legitimately zero derivatives: zeros of the right shape, dtype and device, never an error
def test_second_derivative_of_linear_network_is_zeros(device):
    net = torch.nn.Linear(3, 2).double().to(device)
    x = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    u = net(x)  # [5, 2]
    for result, shape in [
        (diffops.laplacian(u, x), (5, 2)),
        (diffops.hessian(u, x), (5, 2, 3, 3)),
        (diffops.partial(u, x, [0, 2]), (5, 2)),
        (diffops.divergence(diffops.gradient(u[:, 0], x), x), (5,)),
    ]:
        assert result.shape == shape and result.dtype == torch.float64 and result.device == x.device
        assert torch.equal(result, torch.zeros(shape, dtype=torch.float64, device=device))
    assert torch.equal(diffops.derivative(3 * x, x, 2), torch.zeros_like(x))


def test_component_independent_of_x_is_zero_not_error():
    x = points()
    w = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    v = torch.stack([w * torch.ones_like(x[:, 0]), x[:, 0] * x[:, 1]], -1)  # v0 depends on w only
    J = diffops.jacobian(v, x)
    assert torch.equal(J[:, 0], torch.zeros(2, 2, dtype=torch.float64))
    assert torch.equal(J[:, 1], x.detach().flip(-1))


def test_chained_operators_on_linear_maps_give_zeros():
    # the first derivative of a linear map no longer depends on x; differentiating it again by the
    # same x is a legitimately zero derivative (pytorch#32304), also through a view of it
    net = torch.nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g = diffops.gradient(net(x)[:, 0], x)  # depends on the weights only
    assert torch.equal(diffops.divergence(g, x), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(diffops.partial(g[:, 1], x, 2), torch.zeros(4, dtype=torch.float64))
    c = diffops.gradient(3 * x.sum(-1), x)  # no parameters: a constant without grad_fn
    assert not c.requires_grad
    assert torch.equal(diffops.jacobian(c, x), torch.zeros(4, 3, 3, dtype=torch.float64))
    assert torch.equal(diffops.derivative(diffops.derivative(3 * x, x), x), torch.zeros_like(x))


def test_derivative_by_another_x_is_still_an_error():
    net = torch.nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g = diffops.gradient(net(x)[:, 0], x)
    other = x.detach().clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"^divergence: x is not in the graph of v"):
        diffops.divergence(g, other)
