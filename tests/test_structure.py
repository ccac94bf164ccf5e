"""check_structure=True: one random probe product verifies the structure the operators rely on
(point independence; a diagonal Jacobian for `derivative`) and raises a clear error when a model
couples points — BatchNorm in training mode, attention across points, cumulative sums."""

import pytest
import torch

import diffops


def mlp(device, batchnorm=False):
    layers = [torch.nn.Linear(3, 16)] + ([torch.nn.BatchNorm1d(16)] if batchnorm else []) + [
        torch.nn.Tanh(), torch.nn.Linear(16, 3)]
    return torch.nn.Sequential(*layers).double().to(device)


def points(device, n=12):
    return torch.randn(n, 3, dtype=torch.float64, device=device, requires_grad=True)


OPS = {
    "gradient": lambda u, x, **kw: diffops.gradient(u[:, 0], x, **kw),
    "jacobian": lambda u, x, **kw: diffops.jacobian(u, x, **kw),
    "divergence": lambda u, x, **kw: diffops.divergence(u, x, **kw),
    "curl": lambda u, x, **kw: diffops.curl(u, x, **kw),
    "laplacian": lambda u, x, **kw: diffops.laplacian(u, x, **kw),
    "hessian": lambda u, x, **kw: diffops.hessian(u[:, 1], x, **kw),
    "partial": lambda u, x, **kw: diffops.partial(u, x, [0, 2], **kw),
    "directional_derivative": lambda u, x, **kw: diffops.directional_derivative(u, x, x.detach(), **kw),
    "normal_derivative": lambda u, x, **kw: diffops.normal_derivative(u[:, 2], x, x.detach(), **kw),
}


@pytest.mark.parametrize("op", OPS)
def test_independent_points_pass_and_give_the_same_result(op, device):
    net, x = mlp(device), points(device)
    u = net(x)
    assert torch.equal(OPS[op](u, x, check_structure=True), OPS[op](u, x))


@pytest.mark.parametrize("op", OPS)
def test_batchnorm_in_training_mode_is_caught(op, device):
    net, x = mlp(device, batchnorm=True), points(device)
    with pytest.raises(ValueError, match=rf"^{op}: check_structure: [uv]\[n\] depends on points other than x\[n\].*"
                                         r"BatchNorm in training mode.*model\.eval\(\)"):
        OPS[op](net(x), x, check_structure=True)
    net.eval()  # statistics frozen: points are independent again
    OPS[op](net(x), x, check_structure=True)


def test_attention_across_points_is_caught(device):
    x = points(device)
    attention = torch.softmax(x @ x.T, dim=-1) @ x  # every point attends to every other
    with pytest.raises(ValueError, match=r"^laplacian: check_structure: u\[n\] depends on points other than x\[n\]"):
        diffops.laplacian(attention.sum(-1), x, check_structure=True)


@pytest.mark.parametrize("coupled", [lambda x: torch.cumsum(x, 0), lambda x: x * x.sum(), lambda x: x.flip(0) * x])
def test_derivative_requires_a_diagonal_jacobian(coupled, device):
    x = torch.linspace(-1, 1, 9, dtype=torch.float64, device=device, requires_grad=True)
    with pytest.raises(ValueError, match=r"^derivative: check_structure: y\[i\] depends on elements of x other than "
                                         r"x\[i\]: the Jacobian is not diagonal"):
        diffops.derivative(coupled(x), x, check_structure=True)
    y = torch.sin(x) * x
    assert torch.equal(diffops.derivative(y, x, 2, check_structure=True), diffops.derivative(y, x, 2))


def test_legitimately_zero_and_rng_untouched(device):
    lin = torch.nn.Linear(3, 1).double().to(device)
    x = points(device)
    g = diffops.gradient(lin(x)[:, 0], x)
    state = torch.get_rng_state()
    assert torch.equal(diffops.divergence(g, x, check_structure=True), torch.zeros(12, dtype=torch.float64, device=device))
    assert torch.equal(torch.get_rng_state(), state)  # the probe uses its own stream


def test_not_with_separate_coordinates():
    a, b = torch.rand(4, 1, requires_grad=True), torch.rand(4, 1, requires_grad=True)
    with pytest.raises(ValueError, match=r"^gradient: check_structure is not available with separate coordinate"):
        diffops.gradient(a * b, (a, b), check_structure=True)
