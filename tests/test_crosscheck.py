"""Random MLPs in float64 against torch.func (jacrev, jacfwd, hessian, jvp, vmap): batched and
single-point, scalar and vector fields, and gradcheck/gradgradcheck through every operator."""

import pytest
import torch
from torch.func import functional_call, hessian, jacfwd, jacrev, jvp, vmap

import diffops

ACTS = {"tanh": torch.nn.Tanh(), "sin": None, "softplus": torch.nn.Softplus()}


class Sin(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x)


def mlp(d, m, act, width=16, device="cpu"):
    a = Sin() if act == "sin" else ACTS[act]
    layers = [torch.nn.Linear(d, width), a, torch.nn.Linear(width, width), a, torch.nn.Linear(width, m)]
    return torch.nn.Sequential(*layers).double().to(device)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


PARAMS = [(act, d, m) for act in ACTS for d, m in [(2, 1), (3, 3), (2, 2)]]


@pytest.mark.parametrize("act,d,m", PARAMS, ids=[f"{a}-d{d}-m{m}" for a, d, m in PARAMS])
@pytest.mark.parametrize("single", [False, True], ids=["batch", "point"])
def test_against_torch_func(act, d, m, single, device):
    net = mlp(d, m, act, device=device)
    f = (lambda p: net(p)[..., 0]) if m == 1 else net  # m == 1: a scalar field
    x = torch.randn(d if single else (7, d), dtype=torch.float64, device=device, requires_grad=True)
    u = f(x)
    over = (lambda g: g) if single else vmap  # torch.func's per-point functions, batched

    close(diffops.gradient(u, x), over(jacrev(f))(x))
    close(diffops.jacobian(u, x), over(jacrev(f))(x))
    H = over(hessian(f))(x)  # u.shape + (d, d)
    close(diffops.hessian(u, x), H)
    close(diffops.laplacian(u, x), H.diagonal(dim1=-2, dim2=-1).sum(-1))
    close(diffops.partial(u, x, [0, 1]), H[..., 0, 1])
    third = over(jacfwd(jacrev(jacrev(f))))(x)  # u.shape + (d, d, d)
    close(diffops.partial(u, x, [1, 0, 1]), third[..., 1, 0, 1])
    w = torch.randn(d, dtype=torch.float64, device=device)
    close(diffops.directional_derivative(u, x, w), over(lambda p: jvp(f, (p,), (w,))[1])(x))
    if m == d:
        J = over(jacrev(f))(x)
        close(diffops.divergence(u, x), J.diagonal(dim1=-2, dim2=-1).sum(-1))
        if d == 3:
            want = torch.stack([J[..., 2, 1] - J[..., 1, 2], J[..., 0, 2] - J[..., 2, 0], J[..., 1, 0] - J[..., 0, 1]], -1)
            close(diffops.curl(u, x), want)
        if d == 2:
            close(diffops.curl(u, x), J[..., 1, 0] - J[..., 0, 1])


@pytest.mark.parametrize("act", list(ACTS))
def test_derivative_of_elementwise_network(act, device):
    # an elementwise map built from a scalar MLP applied to every element
    net = mlp(1, 1, act, device=device)
    g = lambda t: net(t.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    x = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    y = g(x)
    d1 = vmap(vmap(torch.func.grad(g)))(x)
    d2 = vmap(vmap(torch.func.grad(torch.func.grad(g))))(x)
    close(diffops.derivative(y, x), d1)
    close(diffops.derivative(y, x, 2), d2)


OPS = {
    "gradient": lambda u, x: diffops.gradient(u, x),
    "jacobian": lambda u, x: diffops.jacobian(u, x),
    "divergence": lambda u, x: diffops.divergence(u, x),
    "curl": lambda u, x: diffops.curl(u, x),
    "laplacian": lambda u, x: diffops.laplacian(u, x),
    "hessian": lambda u, x: diffops.hessian(u, x),
    "partial": lambda u, x: diffops.partial(u, x, [0, 2]),
    "directional": lambda u, x: diffops.directional_derivative(u, x, torch.tensor([1.0, -0.5, 2.0], dtype=x.dtype)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_gradcheck_gradgradcheck(name, device):
    net = mlp(3, 3, "tanh", width=6, device=device)
    x = torch.randn(3, 3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x: OPS[name](net(x), x)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_derivative_gradcheck(device):
    x = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: diffops.derivative(torch.tanh(x) * x, x, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda x: diffops.derivative(torch.tanh(x) * x, x, 2), (x,))


def test_pinn_loss_backpropagates_to_parameters(device):
    # Poisson residual Δu + f = 0: the parameter gradient of mean(residual²) must equal the one
    # from a torch.func formulation of the same loss
    net = mlp(2, 1, "tanh", device=device)
    x = torch.rand(32, 2, dtype=torch.float64, device=device, requires_grad=True)
    f = torch.sin(x.detach()).prod(-1)
    u = net(x)[:, 0]
    loss = (diffops.laplacian(u, x) + f).pow(2).mean()
    # the output bias does not reach a Laplacian: its gradient is legitimately zero
    grads = torch.autograd.grad(loss, list(net.parameters()), materialize_grads=True)

    params = dict(net.named_parameters())

    def loss_fn(p):
        scalar = lambda q: functional_call(net, p, (q,))[0]  # noqa: E731
        lap = vmap(lambda q: hessian(scalar)(q).trace())(x.detach())
        return (lap + f).pow(2).mean()

    want = torch.func.grad(loss_fn)(params)
    for (name, _), g in zip(net.named_parameters(), grads):
        close(g, want[name])
