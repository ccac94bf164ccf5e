"""The function form laplacian(f, x) -> (f(x), Δf(x)): the C++ forward Laplacian for MLPs equals the
graph form for every supported activation (float64 round-off), trains the same, and anything else
falls back to the graph form."""

import pytest
import torch

import diffops

ACTIVATIONS = {
    "tanh": torch.nn.Tanh,
    "sin": diffops.Sin,
    "sigmoid": torch.nn.Sigmoid,
    "softplus": torch.nn.Softplus,
    "silu": torch.nn.SiLU,
    "gelu": torch.nn.GELU,
}
CLOSE = dict(rtol=1e-10, atol=1e-12)


def mlp(act, d=3, out=2, width=16, device="cpu"):
    return torch.nn.Sequential(torch.nn.Linear(d, width), act(), torch.nn.Sequential(torch.nn.Linear(width, width), act()),
                               torch.nn.Linear(width, out)).double().to(device)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_laplacian_equals_the_graph_form(name, device):
    net = mlp(ACTIVATIONS[name], device=device)
    x = 3 * torch.randn(4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)  # batch (4, 5)
    value, lap = diffops.laplacian(net, x)
    u = net(x)
    assert value.shape == lap.shape == u.shape == (4, 5, 2)
    torch.testing.assert_close(value, u, **CLOSE)
    torch.testing.assert_close(lap, diffops.laplacian(u, x), **CLOSE)
    assert torch.equal(diffops.laplacian(net, x, method="forward")[1], lap)


@pytest.mark.parametrize("name", ["tanh", "softplus"])
def test_forward_laplacian_trains_like_the_graph_form(name, device):
    net = mlp(ACTIVATIONS[name], d=2, out=1, device=device)
    x = torch.rand(64, 2, dtype=torch.float64, device=device) * 30 - 15  # softplus: both sides of threshold
    params = list(net.parameters())

    value, lap = diffops.laplacian(net, x)  # no requires_grad needed on x
    got = torch.autograd.grad(((lap + 1) ** 2).mean() + value.pow(2).mean(), params)
    xg = x.clone().requires_grad_()
    u = net(xg)
    want = torch.autograd.grad(((diffops.laplacian(u, xg) + 1) ** 2).mean() + u.pow(2).mean(), params,
                               materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **CLOSE)


class Residual(torch.nn.Module):  # not a Sequential: the graph form is used
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(3, 3)

    def forward(self, x):
        return (x + torch.tanh(self.inner(x))).pow(2).sum(-1, keepdim=True)


@pytest.mark.parametrize(
    "model",
    [Residual(), torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Softplus(beta=2), torch.nn.Linear(8, 1)),
     torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(8, 1)),
     torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))],
    ids=["custom", "softplus_beta2", "gelu_tanh", "relu"],
)
def test_other_models_fall_back_to_the_graph_form(model):
    model = model.double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    value, lap = diffops.laplacian(model, x)
    assert torch.equal(value, model(x))
    assert torch.equal(lap, diffops.laplacian(model(x), x))
    with pytest.raises(ValueError, match=r"^laplacian: method='forward' needs f to be a torch\.nn\.Sequential"):
        diffops.laplacian(model, x, method="forward")
    est = diffops.laplacian(model, x, method="hutchinson", samples=2, generator=torch.Generator().manual_seed(0))[1]
    assert est.shape == lap.shape


def test_forward_laplacian_errors_name_the_step():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))  # float32
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^value_and_laplacian: step 0 \(linear\): weight is Float on cpu but x is Double"):
        diffops.laplacian(net, x)
