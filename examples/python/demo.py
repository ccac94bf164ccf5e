"""diffops demo: the seed examples and a tour of every operator, each checked exactly.

Run: python examples/python/demo.py   (exits non-zero if any check fails)
"""

import time

import torch

import diffops


def check(label, ok):
    print(f"  {'ok ' if ok else 'FAIL'} {label}")
    if not ok:
        raise SystemExit(f"check failed: {label}")


def seeds():
    print("== Seeds: exact derivatives with autograd ==")
    x = torch.zeros(1, requires_grad=True)
    s = torch.sin(x)
    check("sin'(0) - cos(0) == 0", (diffops.derivative(s, x) - torch.cos(x)).abs().item() == 0)
    check("sin''(0) - (-sin(0)) == 0", (diffops.derivative(s, x, 2) + torch.sin(x)).abs().item() == 0)

    x = torch.full((1,), 1.0, requires_grad=True)
    y = torch.full((1,), 2.0, requires_grad=True)
    f = (x + y) * (y + 3)
    check("f = (x+y)(y+3) at (1,2): df/dx == 5", diffops.partial(f, x, 0).item() == 5)
    check("                          df/dy == 8", diffops.partial(f, y, 0).item() == 8)

    x = torch.ones(3, requires_grad=True)
    f = torch.dot(x, x)
    g = diffops.gradient(f, x)
    check("f = x.x: grad f == 2x", torch.equal(g, 2 * x.detach()))
    # J_g = 2I is diagonal, so ONE product with ones gives its diagonal; the identity route (one
    # product per coordinate) is what divergence does, and is right for any Jacobian.
    check("div grad f == 6 with v = ones (J diagonal)", diffops.derivative(g, x).sum().item() == 6)
    check("div grad f == 6 with the identity", diffops.divergence(g, x).item() == 6)

    print("  y = sin(x) on x = [0, 0.001, ..., 1]: per-element y', y''")
    x = torch.linspace(0, 1, 1001, dtype=torch.float64, requires_grad=True)
    y = torch.sin(x)
    t0 = time.perf_counter()
    d1, d2 = diffops.derivative(y, x), diffops.derivative(y, x, 2)
    t_ones = time.perf_counter() - t0
    t0 = time.perf_counter()
    J = diffops.jacobian(y, x)  # x as one point with d = 1001: the full Jacobian, 1001 products
    d1_identity = J.diagonal()
    t_identity = time.perf_counter() - t0
    check("y' == cos(x), y'' == -sin(x) exactly", torch.equal(d1, torch.cos(x.detach())) and torch.equal(d2, -torch.sin(x.detach())))
    check("identity route gives the same y'", torch.equal(d1_identity, d1))
    print(f"     ones vector: {t_ones * 1e3:8.2f} ms for y' and y'' (2 products)")
    print(f"     identity:    {t_identity * 1e3:8.2f} ms for y' alone (1001 products; grows with n)")

    x = torch.arange(4.0, requires_grad=True)
    check("y = 2 x.x: grad y == 4x", torch.equal(diffops.gradient(2 * torch.dot(x, x), x), 4 * x.detach()))
    check("y = x*x elementwise: y' == 2x (ones vector)", torch.equal(diffops.derivative(x * x, x), 2 * x.detach()))
    u = (x * x).detach()
    check("z = x*u, u = (x*x).detach(): dz/dx == u", torch.equal(diffops.derivative(x * u, x), u))

    a = torch.tensor(0.7, requires_grad=True)
    b = a * 2
    while b.norm() < 1000:
        b = b * 2
    c = b if b.sum() > 0 else 100 * b
    check("through while/if: dc/da == c/a", diffops.derivative(c, a).item() == (c / a).item())

    x = torch.tensor(2.0, requires_grad=True)
    check("(x^3)'' at x = 2 == 12", diffops.derivative(x**3, x, 2).item() == 12)

    a = torch.tensor([2.0, 3.0], requires_grad=True)
    b = torch.tensor([6.0, 4.0], requires_grad=True)
    Q = 3 * a**3 - b**2
    v = torch.tensor([1.5, 1.9])
    dQda, dQdb = diffops.derivative(Q, a), diffops.derivative(Q, b)  # 9a², -2b (before backward frees the graph)
    Q.backward(gradient=v)
    # backward gives the VJP v^T J; with J = diag(9a²) that is 9a² * v, not 9a²
    check("Q.backward(v): a.grad == 9a² * v", torch.equal(a.grad, dQda * v))
    check("             b.grad == -2b * v", torch.equal(b.grad, dQdb * v))

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y1, y2 = 2 * x[0] ** 2 + x[1], 3 * x[0] + 4 * x[1] ** 3
    try:
        diffops.jacobian(torch.tensor([y1.item(), y2.item()]), x)
        check("torch.tensor([y1, y2]) is reported", False)
    except RuntimeError as e:
        print(f"  ok  torch.tensor([y1, y2]) is reported:\n       {str(e)[:110]}...")
    check("torch.stack([y1, y2]) keeps the graph: J == [[4, 1], [3, 48]]",
          diffops.jacobian(torch.stack([y1, y2]), x).tolist() == [[4.0, 1.0], [3.0, 48.0]])


def tour():
    print("== Tour: every operator on u = x0² x1 + 3 x1³ and F = (x0 x1, x1 x2, x2 x0) ==")
    x = torch.tensor([[1.0, 2.0], [0.5, -1.5]], requires_grad=True)  # 2 points, d = 2
    x0, x1 = x.detach().unbind(-1)
    u = x[:, 0] ** 2 * x[:, 1] + 3 * x[:, 1] ** 3
    check("gradient  == (2 x0 x1, x0² + 9 x1²)", torch.equal(diffops.gradient(u, x), torch.stack([2 * x0 * x1, x0**2 + 9 * x1**2], -1)))
    check("laplacian == 20 x1", torch.equal(diffops.laplacian(u, x), 20 * x1))
    check("hessian   == [[2 x1, 2 x0], [2 x0, 18 x1]]",
          torch.equal(diffops.hessian(u, x), torch.stack([torch.stack([2 * x1, 2 * x0], -1), torch.stack([2 * x0, 18 * x1], -1)], -2)))
    check("partial [0, 0, 1] == 2", torch.equal(diffops.partial(u, x, [0, 0, 1]), torch.full((2,), 2.0)))
    w = torch.tensor([0.5, -2.0])
    check("directional_derivative(w) == ∇u·w",
          torch.equal(diffops.directional_derivative(u, x, w), 0.5 * 2 * x0 * x1 - 2 * (x0**2 + 9 * x1**2)))

    p = torch.tensor([[1.0, 2.0, -0.5], [0.5, -1.5, 2.0]], requires_grad=True)  # d = 3
    q0, q1, q2 = p.detach().unbind(-1)
    F = torch.stack([p[:, 0] * p[:, 1], p[:, 1] * p[:, 2], p[:, 2] * p[:, 0]], -1)
    check("divergence F == x0 + x1 + x2", torch.equal(diffops.divergence(F, p), q1 + q2 + q0))
    check("curl F == -(x1, x2, x0)", torch.equal(diffops.curl(F, p), -torch.stack([q1, q2, q0], -1)))
    check("jacobian(x -> x) == I", torch.equal(diffops.jacobian(p, p), torch.eye(3).expand(2, 3, 3)))
    f = p[:, 0] ** 2 * p[:, 1] * p[:, 2]
    check("curl grad f == 0", torch.equal(diffops.curl(diffops.gradient(f, p), p), torch.zeros(2, 3)))
    check("div curl F == 0", torch.equal(diffops.divergence(diffops.curl(F, p), p), torch.zeros(2)))
    H = diffops.hessian(f, p)
    check("laplacian f == div grad f == tr H",
          torch.equal(diffops.laplacian(f, p), diffops.divergence(diffops.gradient(f, p), p))
          and torch.equal(diffops.laplacian(f, p), H[:, 0, 0] + H[:, 1, 1] + H[:, 2, 2]))
    net = torch.nn.Linear(3, 1)
    check("Laplacian of a linear network: zeros, not an error",
          torch.equal(diffops.laplacian(net(p)[:, 0], p), torch.zeros(2)))


if __name__ == "__main__":
    seeds()
    tour()
    print("All checks passed.")
