"""Every worked example of the three seed documents (shared/seeds), through diffops, asserted exactly."""

import doctest

import pytest
import torch

import diffops
import diffops._derivatives
import diffops._ops


def test_sin_first_and_second_derivative_at_zero():
    x = torch.zeros(1, requires_grad=True)
    s = torch.sin(x)
    assert (diffops.derivative(s, x) - torch.cos(x)).abs().item() == 0
    assert (diffops.derivative(s, x, 2) - -torch.sin(x)).abs().item() == 0


def test_partials_of_x_plus_y_times_y_plus_3():
    x = torch.full((1,), 1.0, requires_grad=True)
    y = torch.full((1,), 2.0, requires_grad=True)
    f = (x + y) * (y + 3)
    assert diffops.partial(f, x, 0).item() == 5
    assert diffops.partial(f, y, 0).item() == 8
    # the same with both coordinates in one tensor of points
    p = torch.tensor([[1.0, 2.0]], requires_grad=True)
    g = (p[:, 0] + p[:, 1]) * (p[:, 1] + 3)
    assert diffops.gradient(g, p).tolist() == [[5.0, 8.0]]


def test_div_grad_of_x_dot_x_with_ones_and_with_identity():
    x = torch.ones(3, requires_grad=True)
    f = torch.dot(x, x)
    g = diffops.gradient(f, x)
    assert torch.equal(g, 2 * x.detach())
    # ones-vector route: valid only because J_g = 2 I is diagonal
    assert diffops.derivative(g, x).sum().item() == 6
    # identity route, valid for any Jacobian: d products, one diagonal entry each
    assert diffops.divergence(g, x).item() == 6
    assert diffops.laplacian(f, x).item() == 6
    # where the Jacobian is not diagonal the ones route picks up off-diagonal terms
    h = torch.stack([x[0] * x[1], x[1], x[2]])  # J = [[x1, x0, 0], [0, 1, 0], [0, 0, 1]]
    assert diffops.divergence(h, x).item() == 3
    assert diffops.derivative(h, x).sum().item() == 4  # wrong: includes ∂h0/∂x1


def test_elementwise_sin_ones_route_equals_identity_route():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64, requires_grad=True)
    y = torch.sin(x)
    d1 = diffops.derivative(y, x)  # ONE product
    d2 = diffops.derivative(y, x, 2)
    assert torch.equal(d1, torch.cos(x.detach()))
    assert torch.equal(d2, -torch.sin(x.detach()))
    # identity route: the full 1001 x 1001 Jacobian (1001 products), then its diagonal
    J = diffops.jacobian(y, x)
    assert torch.equal(J.diagonal(), d1)
    assert torch.count_nonzero(J - torch.diag(J.diagonal())) == 0


def test_tutorial_two_x_dot_x_and_elementwise_square():
    x = torch.arange(4.0, requires_grad=True)
    y = 2 * torch.dot(x, x)
    assert torch.equal(diffops.gradient(y, x), 4 * x.detach())
    sq = x * x
    assert torch.equal(diffops.derivative(sq, x), 2 * x.detach())
    # backward with a ones vector gives the same numbers
    sq.backward(gradient=torch.ones(len(sq)))
    assert torch.equal(x.grad, 2 * x.detach())


def test_tutorial_detach():
    x = torch.arange(4.0, requires_grad=True)
    u = (x * x).detach()
    z = x * u
    assert torch.equal(diffops.derivative(z, x), u)  # u is a constant: dz/dx = u, not 3x²
    assert torch.equal(diffops.derivative(x * x, x), 2 * x.detach())


def control_flow(a):
    b = a * 2
    while b.norm() < 1000:
        b = b * 2
    if b.sum() > 0:
        c = b
    else:
        c = 100 * b
    return c


@pytest.mark.parametrize("a0", [0.7, -0.375, 1e-3], ids=["positive", "negative", "small"])
def test_tutorial_control_flow(a0):
    a = torch.tensor(a0, requires_grad=True)
    d = control_flow(a)
    assert diffops.derivative(d, a).item() == (d / a).item()


def test_tutorial_second_derivative_of_cube():
    x = torch.tensor(2.0, requires_grad=True)
    y = x**3
    assert diffops.derivative(y, x).item() == 12
    assert diffops.derivative(y, x, 2).item() == 12


def test_intro_external_gradient_and_accumulation():
    a = torch.tensor([2.0, 3.0], requires_grad=True)
    b = torch.tensor([6.0, 4.0], requires_grad=True)
    Q = 3 * a**3 - b**2
    v = torch.tensor([1.5, 1.9])
    dQda, dQdb = diffops.derivative(Q, a), diffops.derivative(Q, b)
    assert torch.equal(dQda, 9 * a.detach() ** 2) and torch.equal(dQdb, -2 * b.detach())
    Q.backward(gradient=v, retain_graph=True)
    # backward computes the VJP vᵀJ = v ⊙ (9a²): comparing with 9a² alone fails (the post's confusion)
    assert torch.equal(a.grad, 9 * a.detach() ** 2 * v) and torch.equal(b.grad, -2 * b.detach() * v)
    assert not torch.equal(a.grad, 9 * a.detach() ** 2)
    # .grad accumulates: a second backward adds the same VJP again
    Q.backward(gradient=v)
    assert torch.equal(a.grad, 2 * (9 * a.detach() ** 2 * v))


def test_intro_rebuilt_tensor_loses_graph_and_stack_keeps_it():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y1 = 2 * x[0] ** 2 + x[1]
    y2 = 3 * x[0] + 4 * x[1] ** 3
    y = torch.tensor([y1.item(), y2.item()])
    with pytest.raises(RuntimeError, match=r"^jacobian: v has no grad_fn.*torch\.tensor"):
        diffops.jacobian(y, x)
    J = diffops.jacobian(torch.stack([y1, y2]), x)
    assert J.tolist() == [[4.0, 1.0], [3.0, 48.0]]  # [[4 x0, 1], [3, 12 x1²]]


@pytest.mark.parametrize("module", [diffops._ops, diffops._derivatives], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0
