"""The code in docs/pde.md runs and means what the guide says."""

import pathlib
import re

import torch

import diffops

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "pde.md"


def python_block(containing):
    """The one Python block of the guide that contains `containing`."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if containing in b]
    assert len(blocks) == 1, (containing, len(blocks))
    return blocks[0]


def test_navier_stokes_residual_from_the_guide():
    scope = {}
    exec(python_block("def residuals"), scope)  # defines net and residuals(xyt)
    xyt = torch.rand(64, 3, requires_grad=True)
    mx, my, cont = scope["residuals"](xyt)  # asserts 7 products inside

    out = scope["net"](xyt)
    u, v, p = out.unbind(1)
    P = lambda f, *i: diffops.partial(f, xyt, list(i))  # noqa: E731
    nu = scope["nu"]
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mx, P(u, 2) + u * P(u, 0) + v * P(u, 1) + P(p, 0) - nu * (P(u, 0, 0) + P(u, 1, 1)), **close)
    torch.testing.assert_close(my, P(v, 2) + u * P(v, 0) + v * P(v, 1) + P(p, 1) - nu * (P(v, 0, 0) + P(v, 1, 1)), **close)
    torch.testing.assert_close(cont, P(u, 0) + P(v, 1), **close)


def test_separate_coordinates_snippet_from_the_guide():
    scope = {"torch": torch, "diffops": diffops, "N": 32, "net": torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))}
    exec(python_block("u_t = d.partial([2], component=0)"), scope)
    assert scope["u_t"].shape == (32,)
    x, y, t = scope["x"], scope["y"], scope["t"]
    pts = torch.cat([x, y, t], 1).detach().requires_grad_()
    want = diffops.partial(scope["net"](pts)[:, 0], pts, [2])
    torch.testing.assert_close(scope["u_t"], want, rtol=1e-5, atol=1e-6)


def test_space_time_snippet_from_the_guide():
    """coords: the heat-equation residual u_t − ν Δₓu from two function-form calls, against
    torch.func's Hessian and gradient of u(x, y, t)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 1)).double()
    scope = {"torch": torch, "diffops": diffops, "net": net, "nu": 0.3, "xyt": torch.rand(20, 3, dtype=torch.float64)}
    exec(python_block("coords=[0, 1]"), scope)
    field = lambda q: net(q)[0]  # noqa: E731
    H = torch.func.vmap(torch.func.hessian(field))(scope["xyt"])
    g = torch.func.vmap(torch.func.grad(field))(scope["xyt"])
    want = g[:, 2] - 0.3 * (H[:, 0, 0] + H[:, 1, 1])
    torch.testing.assert_close(scope["residual"][:, 0], want, rtol=1e-11, atol=1e-12)
