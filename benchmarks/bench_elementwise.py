"""The seed's elementwise case: y = sin(x) on n elements, y' and y''. An elementwise map has a
diagonal Jacobian, so one product seeded with ones gives every y'_i at once ("know your Jacobian");
the identity route forms the n x n Jacobian (n products, or torch.func's vmap over them) and keeps
its diagonal.

* diffops.derivative(y, x, order)        (one ones-seeded product per order)
* torch.autograd.grad with a ones vector (the same product, by hand)
* identity route: torch.func jacrev diagonal (n <= --identity-max: n products, n² memory),
  and for y' at n <= 1000 a loop of n torch.autograd.grad calls

    python benchmarks/bench_elementwise.py [--n 1000 10000 100000 1000000] [--dtype float64]
"""

import argparse

import torch
from torch.func import jacrev, vmap

import diffops
from common import median_times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--identity-max", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=20.0)
    args = ap.parse_args()
    dt, device = getattr(torch, args.dtype), torch.device(args.device)
    print(f"# y = sin(x): torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}")
    print("| n | method | y' ms | y'' ms | y'' / diffops |")
    print("|---|---|---|---|---|")
    for n in args.n:
        x = torch.linspace(-3, 3, n, dtype=dt, device=device).requires_grad_()

        def diffops_order(k):
            return lambda: diffops.derivative(torch.sin(x), x, k)

        def ones_order(k):
            def run():
                y = torch.sin(x)
                for _ in range(k):
                    (y,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
                return y

            return run

        def jacrev_order(k):
            def run():
                f = torch.sin
                for _ in range(k):
                    f = (lambda g: lambda z: torch.diagonal(jacrev(g)(z)))(f)
                return f(x.detach())

            return run

        def loop_first():  # y' only: nesting it for y'' keeps n graphs of n-sized zeros alive
            y = torch.sin(x)
            return torch.stack([torch.autograd.grad(y[i], x, retain_graph=True)[0][i] for i in range(n)])

        methods = {"diffops.derivative (ones)": diffops_order, "autograd.grad, ones vector": ones_order}
        if n <= args.identity_max:
            methods["torch.func jacrev diagonal (identity)"] = jacrev_order
        for k, want in ((1, torch.cos(x)), (2, -torch.sin(x))):
            for name, make in methods.items():
                torch.testing.assert_close(make(k)(), want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
        first = median_times([make(1) for make in methods.values()], args.repeats, args.budget)
        second = median_times([make(2) for make in methods.values()], args.repeats, args.budget)
        for name, t1, t2 in zip(methods, first, second):
            print(f"| {n} | {name} | {t1 * 1e3:.3f} | {t2 * 1e3:.3f} | {t2 / second[0]:.1f}× |", flush=True)
        if n <= 1000:  # the identity route by hand: n products for y'
            torch.testing.assert_close(loop_first(), torch.cos(x), rtol=1e-12, atol=1e-12)
            (t1,) = median_times([loop_first], args.repeats, args.budget)
            print(f"| {n} | loop of n autograd.grad, y' only (identity) | {t1 * 1e3:.3f} | — | — |", flush=True)


if __name__ == "__main__":
    main()
