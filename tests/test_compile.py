"""The ops are composite dispatcher kernels: a PINN step built from them, or from diffops.Derivatives,
compiles with torch.compile(fullgraph=True) on the eager, aot_eager and inductor backends and gives
eager's parameter gradients. (The tracer calls kernels while holding the GIL; the kernels release it
before entering the autograd engine.)"""

import pytest
import torch

import diffops


def operators_step(net, x):
    u = net(x)[:, 0]
    residual = diffops.laplacian(u, x) + diffops.partial(u, x, [0, 1]) + torch.sin(x).prod(-1)
    return residual.pow(2).mean()


def cache_step(net, x):
    d = diffops.Derivatives(net(x)[:, 0], x)
    residual = d.laplacian() + d[0] * d[0, 1] + torch.sin(x).prod(-1)
    boundary = diffops.normal_derivative(net(x)[:, 0], x, torch.tensor([1.0, 0.0], dtype=x.dtype, device=x.device))
    return residual.pow(2).mean() + boundary.pow(2).mean()


def forward_laplacian_step(net, x):
    value, lap = diffops.laplacian(net, x)  # the function form: C++ forward propagation
    residual = lap[:, 0] + value[:, 0] + torch.sin(x).prod(-1)
    return residual.pow(2).mean()


@pytest.mark.parametrize("step", [operators_step, cache_step, forward_laplacian_step], ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compiled_pinn_step_matches_eager(backend, step, device):
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double().to(device)
    x = torch.rand(64, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = list(net.parameters())

    want = torch.autograd.grad(step(net, x), params, materialize_grads=True)
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    for _ in range(2):  # the second call runs the cached compiled code
        got = torch.autograd.grad(compiled(net, x), params, materialize_grads=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(  # d = 24 into width 32: the divergence meets in the trilinear form (MeetCube)
    "op,d", [("laplacian", 4), ("divergence", 4), ("hessian", 4), ("jacobian", 4), ("divergence", 24)])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_function_form_of_a_deep_mlp_matches_eager(op, d, backend, device):
    """The tracer runs the kernels on fake tensors to learn the shapes: the forward propagation's
    CPU block cache (tensors of 1 MiB and more) and its CPU loops must stand aside for those. Three
    hidden layers of width 32 at 2048 points reach both: tangents of (2048, 4, 32) float64 are 2 MiB."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    width = 32
    out = {"laplacian": 1, "divergence": d, "hessian": 1, "jacobian": 2}[op]
    net = torch.nn.Sequential(torch.nn.Linear(d, width), torch.nn.Tanh(), torch.nn.Linear(width, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, out)).double().to(device)
    x = torch.rand(2048, d, dtype=torch.float64, device=device)
    params = list(net.parameters())

    def step(net, x):
        value, derivative = getattr(diffops, op)(net, x, method="forward")
        return derivative.pow(2).mean() + value.pow(2).mean()

    want = torch.autograd.grad(step(net, x), params, materialize_grads=True)
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    got = torch.autograd.grad(compiled(net, x), params, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
