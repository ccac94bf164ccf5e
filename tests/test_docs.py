"""The code in docs/pde.md runs and means what the guide says."""

import pathlib
import re

import torch

import diffops

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "pde.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_navier_stokes_residual_from_the_guide():
    scope = {}
    exec(python_blocks()[0], scope)  # defines net and residuals(xyt)
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
    exec(python_blocks()[1], scope)
    assert scope["u_t"].shape == (32,)
    x, y, t = scope["x"], scope["y"], scope["t"]
    pts = torch.cat([x, y, t], 1).detach().requires_grad_()
    want = diffops.partial(scope["net"](pts)[:, 0], pts, [2])
    torch.testing.assert_close(scope["u_t"], want, rtol=1e-5, atol=1e-6)
