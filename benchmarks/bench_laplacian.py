"""Laplacian of an MLP u: R^d -> R at N points, every strategy in one process on the same weights.

* diffops graph form, method="loop"        (1 + d reverse products through u's graph)
* diffops function form, laplacian(net, x) (C++ forward Laplacian: one pass, no reverse products)
* diffops graph form, method="hutchinson"  (1 + 1 products; an estimate, listed for its cost)
* loop of torch.autograd.grad              (gradient, then one grad per coordinate)
* torch.func: vmap(hessian).trace, and vmap(jvp(grad)) over the d basis vectors

eval: the Laplacian alone; train: loss = mean(Δu²) and backward to the parameters. Median times,
methods run round-robin; ratio = time / the diffops function form's time.

    python benchmarks/bench_laplacian.py [--d 2 8 32 128] [--points 1024] [--dtype float64] [--device cpu]
"""

import argparse

import torch
from torch.func import functional_call, grad, hessian, jvp, vmap

import diffops
from common import median_times


def strategies(net, x):
    params = dict(net.named_parameters())
    d = x.shape[-1]

    def scalar(p, point):  # u(point) for torch.func
        return functional_call(net, p, (point.unsqueeze(0),))[0, 0]

    def graph_loop():
        xg = x.detach().requires_grad_()
        return diffops.laplacian(net(xg)[:, 0], xg, method="loop")

    def function_form():
        return diffops.laplacian(net, x)[1][:, 0]

    def hutchinson():
        xg = x.detach().requires_grad_()
        return diffops.laplacian(net(xg)[:, 0], xg, method="hutchinson")

    def autograd_loop():
        xg = x.detach().requires_grad_()
        u = net(xg)[:, 0]
        (g,) = torch.autograd.grad(u, xg, torch.ones_like(u), create_graph=True)
        total = 0
        for i in range(d):
            (h,) = torch.autograd.grad(g[:, i], xg, torch.ones_like(u), create_graph=True)
            total = total + h[:, i]
        return total

    def func_hessian():
        return vmap(lambda pt: hessian(lambda q: scalar(params, q))(pt).trace())(x)

    eye = torch.eye(d, dtype=x.dtype, device=x.device)

    def func_jvp_grad():
        g = grad(lambda q: scalar(params, q))

        def one(pt):
            return vmap(lambda e: jvp(g, (pt,), (e,))[1] @ e)(eye).sum()

        return vmap(one)(x)

    return {
        "diffops function form (forward Laplacian)": function_form,
        "diffops graph form, loop": graph_loop,
        "diffops graph form, hutchinson (1 probe)": hutchinson,
        "loop of torch.autograd.grad": autograd_loop,
        "torch.func vmap(hessian).trace": func_hessian,
        "torch.func vmap(jvp(grad))": func_jvp_grad,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, nargs="+", default=[2, 8, 32, 128])
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    dt, device = getattr(torch, args.dtype), torch.device(args.device)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}, "
          f"N={args.points}, 3 tanh layers of width {args.width}")
    print("| d | method | eval ms | train ms | train / function form |")
    print("|---|---|---|---|---|")
    for d in args.d:
        torch.manual_seed(0)
        w = args.width
        net = torch.nn.Sequential(torch.nn.Linear(d, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.Tanh(),
                                  torch.nn.Linear(w, w), torch.nn.Tanh(), torch.nn.Linear(w, 1)).to(device, dt)
        x = torch.randn(args.points, d, dtype=dt, device=device)
        fns = strategies(net, x)
        ref = fns["diffops graph form, loop"]()
        for name, fn in fns.items():
            if "hutchinson" not in name:
                torch.testing.assert_close(fn(), ref, rtol=1e-4 if dt == torch.float32 else 1e-9, atol=1e-5)

        def trainer(fn):
            def step():
                net.zero_grad()
                fn().pow(2).mean().backward()

            return step

        evals = median_times(list(fns.values()), args.repeats)
        trains = median_times([trainer(f) for f in fns.values()], args.repeats)
        for name, te, tt in zip(fns, evals, trains):
            print(f"| {d} | {name} | {te * 1e3:.2f} | {tt * 1e3:.2f} | {tt / trains[0]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
