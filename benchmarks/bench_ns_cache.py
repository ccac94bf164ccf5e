"""What diffops.Derivatives saves on a Navier–Stokes residual.

2-D unsteady incompressible Navier–Stokes, a network (x, y, t) -> (u, v, p):

    u_t + u u_x + v u_y + p_x - ν (u_xx + u_yy)
    v_t + u v_x + v v_y + p_y - ν (v_xx + v_yy)
    u_x + v_y

needs 12 distinct partials. Compared in one process, on the same weights and points:

* ``diffops.Derivatives``: one cache per field, every gradient row taken once (7 products);
* ``diffops, independent calls``: one diffops.partial call per term (16 products);
* ``DeepXDE-style cache``: lazily memoised Jacobian rows and Hessian entries built from them, as
  DeepXDE's ``dde.grad.jacobian`` / ``dde.grad.hessian`` do (re-implemented here from their
  documented behaviour, in plain torch.autograd.grad; 7 products);
* ``autograd.grad, one call per term``: what most PINN code does (16 products).

Reports the median time of the residual alone (eval) and of a training step (residual, loss and
backward to the parameters), methods run round-robin, and the ratio to Derivatives.

    python benchmarks/bench_ns_cache.py [--points 4096] [--dtype float64] [--device cpu]
"""

import argparse
import platform

import torch

import diffops
from common import median_times

NU = 0.01


def by_cache(out, xyt):
    d = diffops.Derivatives(out, xyt)  # index 0: x, 1: y, 2: t; component 0: u, 1: v, 2: p
    u, v = out[:, 0], out[:, 1]
    P = lambda idx, c: d.partial(idx, component=c)  # noqa: E731
    rx = P([2], 0) + u * P([0], 0) + v * P([1], 0) + P([0], 2) - NU * (P([0, 0], 0) + P([1, 1], 0))
    ry = P([2], 1) + u * P([0], 1) + v * P([1], 1) + P([1], 2) - NU * (P([0, 0], 1) + P([1, 1], 1))
    rc = P([0], 0) + P([1], 1)
    return (rx, ry, rc), d.products


def by_independent_calls(out, xyt):
    u, v, p = out[:, 0], out[:, 1], out[:, 2]
    P = lambda f, idx: diffops.partial(f, xyt, idx)  # noqa: E731
    u_x, v_y = P(u, [0]), P(v, [1])
    rx = P(u, [2]) + u * u_x + v * P(u, [1]) + P(p, [0]) - NU * (P(u, [0, 0]) + P(u, [1, 1]))
    ry = P(v, [2]) + u * P(v, [0]) + v * v_y + P(p, [1]) - NU * (P(v, [0, 0]) + P(v, [1, 1]))
    return (rx, ry, u_x + v_y), 16


class DeepXDEStyle:
    """Jacobian rows memoised per (output, input) pair; Hessian entries as Jacobian rows of the
    gradient entries, memoised the same way (how DeepXDE's gradients module caches)."""

    def __init__(self):
        self.rows = {}
        self.products = 0

    def jacobian(self, y, x, i, j):
        key = (id(y), id(x), i)
        if key not in self.rows:
            yi = y[:, i : i + 1] if y.dim() == 2 else y
            self.rows[key] = (yi, torch.autograd.grad(yi, x, torch.ones_like(yi), create_graph=True)[0])
            self.products += 1
        return self.rows[key][1][:, j : j + 1]

    def hessian(self, y, x, component, i, j):
        key = (id(y), id(x), component, "grad", i)
        if key not in self.rows:  # keep the first derivative alive, so its id stays unique
            self.rows[key] = (None, self.jacobian(y, x, component, i))
        return self.jacobian(self.rows[key][1], x, 0, j)


def by_deepxde_style(out, xyt):
    g = DeepXDEStyle()
    J = lambda c, j: g.jacobian(out, xyt, c, j)[:, 0]  # noqa: E731
    H = lambda c, i: g.hessian(out, xyt, c, i, i)[:, 0]  # noqa: E731
    u, v = out[:, 0], out[:, 1]
    rx = J(0, 2) + u * J(0, 0) + v * J(0, 1) + J(2, 0) - NU * (H(0, 0) + H(0, 1))
    ry = J(1, 2) + u * J(1, 0) + v * J(1, 1) + J(2, 1) - NU * (H(1, 0) + H(1, 1))
    return (rx, ry, J(0, 0) + J(1, 1)), g.products


def by_autograd_per_term(out, xyt):
    def d(f, *idx):
        for i in idx:
            f = torch.autograd.grad(f, xyt, torch.ones_like(f), create_graph=True)[0][:, i]
        return f

    u, v, p = out[:, 0], out[:, 1], out[:, 2]
    u_x, v_y = d(u, 0), d(v, 1)
    rx = d(u, 2) + u * u_x + v * d(u, 1) + d(p, 0) - NU * (d(u, 0, 0) + d(u, 1, 1))
    ry = d(v, 2) + u * d(v, 0) + v * v_y + d(p, 1) - NU * (d(v, 0, 0) + d(v, 1, 1))
    return (rx, ry, u_x + v_y), 16


METHODS = {
    "diffops.Derivatives": by_cache,
    "diffops, independent calls": by_independent_calls,
    "DeepXDE-style cache": by_deepxde_style,
    "autograd.grad, one call per term": by_autograd_per_term,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, diffops {diffops.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, width {args.width}, 4 tanh layers")
    print("| dtype | N | method | products | eval ms | train ms | train vs Derivatives |")
    print("|---|---|---|---|---|---|---|")
    for dtype in args.dtype:
        dt = getattr(torch, dtype)
        for n in args.points:
            torch.manual_seed(0)
            w = args.width
            net = torch.nn.Sequential(torch.nn.Linear(3, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.Tanh(),
                                      torch.nn.Linear(w, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.Tanh(),
                                      torch.nn.Linear(w, 3)).to(device, dt)
            xyt = torch.rand(n, 3, dtype=dt, device=device, requires_grad=True)
            reference = None
            evals, trains, products = [], [], []
            for name, method in METHODS.items():
                residuals, count = method(net(xyt), xyt)
                if reference is None:
                    reference = residuals
                for r, ref in zip(residuals, reference):  # every method computes the same residual
                    torch.testing.assert_close(r, ref, rtol=1e-4 if dt == torch.float32 else 1e-10, atol=1e-5)
                products.append(count)

                def evaluate(method=method):
                    method(net(xyt), xyt)

                def train(method=method):
                    residuals, _ = method(net(xyt), xyt)
                    loss = sum(r.pow(2).mean() for r in residuals)
                    net.zero_grad()
                    loss.backward()

                evals.append(evaluate)
                trains.append(train)
            te_all, tt_all = median_times(evals, args.repeats), median_times(trains, args.repeats)
            for name, count, te, tt in zip(METHODS, products, te_all, tt_all):
                print(f"| {dtype} | {n} | {name} | {count} | {te * 1e3:.1f} | {tt * 1e3:.1f} | "
                      f"{tt / tt_all[0]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
