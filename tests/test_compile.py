"""The ops are composite dispatcher kernels: they trace under torch.compile(fullgraph=True) and the
compiled PINN step gives eager's parameter gradients. (The tracer calls kernels while holding the
GIL; the kernels release it before entering the autograd engine.)"""

import pytest
import torch

import diffops


def pinn_step(net, x):
    u = net(x)[:, 0]
    residual = diffops.laplacian(u, x) + diffops.partial(u, x, [0, 1]) + torch.sin(x).prod(-1)
    return residual.pow(2).mean()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_pinn_step_matches_eager(backend, device):
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double().to(device)
    x = torch.rand(64, 2, dtype=torch.float64, device=device, requires_grad=True)
    params = list(net.parameters())

    want = torch.autograd.grad(pinn_step(net, x), params, materialize_grads=True)
    compiled = torch.compile(pinn_step, backend=backend, fullgraph=True)
    got = torch.autograd.grad(compiled(net, x), params, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
