"""diffops.Derivatives (the derivative cache), gradient by separate coordinates and the normal
derivative: exact against analytic partials, equal to the independent operators, and each partial
paid for once (``products`` counts the autograd products)."""

import pytest
import torch

import diffops

DTYPES = [torch.float32, torch.float64]
# dyadic points: every analytic value below is exact in float32 and float64
P = [[1.0, 2.0, -0.5], [0.5, -1.5, 2.0], [-2.0, 0.25, 1.0], [0.75, 0.0, -1.25]]


def field(x0, x1, x2):  # u = x0² x1 + 3 x1³ x2 + x0 x2²
    return x0**2 * x1 + 3 * x1**3 * x2 + x0 * x2**2


def analytic(a):
    """Every partial of `field` up to order 3, keyed by sorted multi-index."""
    x0, x1, x2 = a.unbind(-1)
    z, one = torch.zeros_like(x0), torch.ones_like(x0)
    return {
        (0,): 2 * x0 * x1 + x2**2,
        (1,): x0**2 + 9 * x1**2 * x2,
        (2,): 3 * x1**3 + 2 * x0 * x2,
        (0, 0): 2 * x1,
        (0, 1): 2 * x0,
        (0, 2): 2 * x2,
        (1, 1): 18 * x1 * x2,
        (1, 2): 9 * x1**2,
        (2, 2): 2 * x0,
        (0, 0, 1): 2 * one,
        (0, 2, 2): 2 * one,
        (1, 1, 2): 18 * x1,
        (1, 1, 1): 18 * x2,
        (0, 0, 0): z,
    }


def make(layout, dtype):
    """u from points (N, 3), or from separate coordinates of shape (N, 1) or (N,)."""
    a = torch.tensor(P, dtype=dtype)
    if layout == "points":
        x = a.clone().requires_grad_()
        return field(*x.unbind(-1)), x, a
    shape = (-1, 1) if layout == "columns" else (-1,)
    cs = [a[:, i].reshape(shape).clone().requires_grad_() for i in range(3)]
    return field(*cs), cs, a


LAYOUTS = ["points", "columns", "vectors"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_partial_is_exact(layout, dtype):
    u, x, a = make(layout, dtype)
    d = diffops.Derivatives(u, x)
    for index, want in analytic(a).items():
        got = d.partial(index)
        assert got.shape == u.shape
        assert torch.equal(got.reshape(-1), want), index
    # Schwarz: every ordering of an index is the same cached partial
    assert torch.equal(d[2, 1, 1], d[1, 1, 2]) and torch.equal(d[1, 0], d[0, 1])
    w = analytic(a)
    assert torch.equal(d.gradient().reshape(4, 3), torch.stack([w[(0,)], w[(1,)], w[(2,)]], -1))
    assert torch.equal(d.laplacian().reshape(-1), w[(0, 0)] + w[(1, 1)] + w[(2, 2)])
    H = d.hessian().reshape(4, 3, 3)
    for i in range(3):
        for j in range(3):
            assert torch.equal(H[:, i, j], w[tuple(sorted((i, j)))])


def test_each_gradient_row_is_paid_once():
    u, x, _ = make("points", torch.float64)
    d = diffops.Derivatives(u, x)
    steps = [  # (request, products after it)
        (lambda: d[0], 1),  # ∂u/∂x_j for every j in one product
        (lambda: d[2], 1),
        (lambda: d.gradient(), 1),
        (lambda: d[0, 1], 2),  # the row of ∂u/∂x0
        (lambda: d[1, 0], 2),  # same partial
        (lambda: d[0, 0], 2),  # same row
        (lambda: d.laplacian(), 4),  # rows of ∂u/∂x1 and ∂u/∂x2
        (lambda: d.hessian(), 4),
        (lambda: d[0, 1, 2], 5),  # row of ∂²u/∂x0∂x1
        (lambda: d[2, 0, 1], 5),
        (lambda: d.partial([1, 1, 1]), 6),
    ]
    for request, products in steps:
        request()
        assert d.products == products


def test_matches_the_independent_operators_on_an_mlp(device):
    net = torch.nn.Sequential(torch.nn.Linear(3, 24), torch.nn.Tanh(), torch.nn.Linear(24, 24),
                              torch.nn.Softplus(), torch.nn.Linear(24, 2)).double().to(device)
    x = torch.randn(32, 3, dtype=torch.float64, device=device, requires_grad=True)
    u = net(x)
    d = diffops.Derivatives(u, x)
    close = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.gradient(), diffops.gradient(u, x), **close)
    torch.testing.assert_close(d.laplacian(), diffops.laplacian(u, x), **close)
    torch.testing.assert_close(d.hessian(), diffops.hessian(u, x), **close)
    for index in ([0], [2, 1], [0, 0, 1], [1, 2, 2, 0]):
        torch.testing.assert_close(d.partial(index), diffops.partial(u, x, index), **close)
    for c in range(2):
        torch.testing.assert_close(d.partial([1, 2], component=c), diffops.partial(u[:, c], x, [1, 2]), **close)
        torch.testing.assert_close(d.laplacian(component=c), diffops.laplacian(u[:, c], x), **close)
    v = net(x).repeat(1, 2)[:, :3] * x.sin()  # a vector field in 3-D
    dv = diffops.Derivatives(v, x)
    torch.testing.assert_close(dv.divergence(), diffops.divergence(v, x), **close)
    assert dv.products == 3
    n = torch.nn.functional.normalize(torch.randn(32, 3, dtype=torch.float64, device=device), dim=-1)
    torch.testing.assert_close(dv.normal_derivative(n), diffops.normal_derivative(v, x, n), **close)
    assert dv.products == 3  # the divergence already took every first-order row


def test_separate_coordinates_equal_the_stacked_points(device):
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double().to(device)
    xs, ys, ts = (torch.rand(20, 1, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3))
    u = net(torch.cat([xs, ys, ts], dim=1))
    assert diffops.gradient(u, (xs, ys, ts)).shape == (20, 1, 3)
    d = diffops.Derivatives(u, (xs, ys, ts))
    pts = torch.cat([xs, ys, ts], dim=1).detach().requires_grad_()
    ref = diffops.Derivatives(net(pts), pts)
    for index in ([2], [0, 0], [1, 1], [0, 1, 2]):
        torch.testing.assert_close(d.partial(index), ref.partial(index), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.laplacian(), ref.laplacian(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diffops.gradient(u, [xs, ys, ts]), diffops.gradient(net(pts), pts),
                               rtol=1e-12, atol=1e-12)


def test_a_pinn_loss_from_the_cache_trains_like_the_operators(device):
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double().to(device)
    x = torch.rand(64, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = list(net.parameters())

    u = net(x)[:, 0]
    d = diffops.Derivatives(u, x)
    loss = (d.laplacian() + d[0] * d[0, 1] - 1).pow(2).mean()
    got = torch.autograd.grad(loss, params, materialize_grads=True)

    u = net(x)[:, 0]
    loss = (diffops.laplacian(u, x) + diffops.partial(u, x, 0) * diffops.partial(u, x, [0, 1]) - 1).pow(2).mean()
    want = torch.autograd.grad(loss, params, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-13)


def test_linear_field_has_zero_second_derivatives_and_no_grad_is_honoured():
    lin = torch.nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    d = diffops.Derivatives(lin(x)[:, 0], x)
    assert torch.equal(d[0], lin.weight[0, 0].expand(5).detach())
    assert torch.equal(d[0, 1], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(d[0, 1, 2], torch.zeros(5, dtype=torch.float64))
    # the cache keeps graphs under no_grad, so higher derivatives stay right
    u, x, a = make("points", torch.float64)
    with torch.no_grad():
        d = diffops.Derivatives(u, x)
        assert torch.equal(d[0], analytic(a)[(0,)])
        assert torch.equal(d[0, 1, 1], torch.zeros(4, dtype=torch.float64))
        assert torch.equal(d[1, 1, 2], analytic(a)[(1, 1, 2)])


def test_normal_derivative_operator():
    x = torch.tensor([[1.0, 0.5], [0.0, 0.25], [0.5, 1.0]], requires_grad=True)
    n = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    u = x[:, 0] ** 2 * x[:, 1] + x[:, 0]
    a = x.detach()
    want = torch.stack([2 * a[:, 0] * a[:, 1] + 1, a[:, 0] ** 2], -1)
    assert torch.equal(diffops.normal_derivative(u, x, n), (want * n).sum(-1))
    wall = torch.tensor([0.0, 1.0])  # one normal for a whole wall
    assert torch.equal(diffops.normal_derivative(u, x, wall), a[:, 0] ** 2)
    assert torch.equal(diffops.Derivatives(u, x).normal_derivative(n), (want * n).sum(-1))


def broken_coordinates():
    xs, ys = torch.rand(4, 1, requires_grad=True), torch.rand(4, 1, requires_grad=True)
    return xs * ys, (xs, ys.detach().clone().requires_grad_())


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: diffops.Derivatives(torch.ones(3), torch.ones(3, 2)), RuntimeError,
         r"^Derivatives: x does not require grad"),
        (lambda: diffops.Derivatives(torch.ones(3), torch.ones(3, 2, requires_grad=True)), RuntimeError,
         r"^Derivatives: u has no grad_fn, so it is cut off from x"),
        (lambda: diffops.Derivatives(torch.ones(4, requires_grad=True) * 2, torch.ones(3, 2, requires_grad=True)),
         ValueError, r"^Derivatives: u has shape \[4\] but x has shape \[3, 2\]"),
        (lambda: diffops.Derivatives(*make("points", torch.float64)[:2]).partial([0, 3]), ValueError,
         r"^Derivatives: index \[0, 3\] names coordinate 3, out of range for d = 3"),
        (lambda: diffops.Derivatives(*make("points", torch.float64)[:2]).partial([]), ValueError,
         r"^Derivatives: index is empty"),
        (lambda: diffops.Derivatives(*make("points", torch.float64)[:2]).laplacian(component=1), ValueError,
         r"^Derivatives: component 1 is out of range: u has 1 scalar components"),
        (lambda: diffops.Derivatives(*make("points", torch.float64)[:2]).divergence(), ValueError,
         r"^Derivatives: divergence needs a vector field"),
        (lambda: diffops.Derivatives(*make("points", torch.float64)[:2]).normal_derivative(torch.ones(4, 2, dtype=torch.float64)),
         ValueError, r"^Derivatives: normals of shape \[4, 2\] does not broadcast to the points' shape \[4, 3\]"),
        (lambda: diffops.Derivatives(*broken_coordinates())[0], RuntimeError,
         r"^Derivatives: coordinates\[1\] is not in the graph of u"),
        (lambda: diffops.gradient(*broken_coordinates()), RuntimeError,
         r"^gradient: coordinates\[1\] is not in the graph of u"),
        (lambda: diffops.gradient(torch.ones(4, requires_grad=True) * 2, (torch.rand(4, 1, requires_grad=True), torch.rand(3, 1, requires_grad=True))),
         ValueError, r"^gradient: coordinates\[1\] has shape \[3, 1\] but coordinates\[0\] has shape \[4, 1\]"),
        (lambda: diffops.gradient(torch.ones(4, requires_grad=True) * 2, (torch.rand(4, 1, requires_grad=True), torch.rand(4, 1))),
         RuntimeError, r"^gradient: coordinates\[1\] does not require grad"),
        (lambda: diffops.gradient(torch.ones(4, requires_grad=True) * 2, ()), ValueError,
         r"^gradient: coordinates is empty"),
        (lambda: diffops.normal_derivative(*make("points", torch.float64)[:2], torch.ones(2, dtype=torch.float64)),
         ValueError, r"^normal_derivative: normals of shape \[2\] does not broadcast to x's shape \[4, 3\]"),
    ],
)
def test_errors_name_the_argument_and_the_cause(call, error, message):
    with pytest.raises(error, match=message):
        call()
