"""2-D Poisson PINN on the unit square, with a Neumann side: diffops.laplacian(net, x) in the residual
(the function form: the forward Laplacian through the MLP, one pass) and diffops.normal_derivative
in the boundary loss.

    -Δu = 2π² sin(πx) sin(πy)   in (0, 1)²
     u = 0                      on x = 0, y = 0, y = 1     (Dirichlet)
     ∂u/∂n = -π sin(πy)         on x = 1                   (Neumann, outward normal (1, 0))

Exact solution u = sin(πx) sin(πy). Prints the relative L2 error on a 101 × 101 grid and writes
poisson.png (PINN solution, exact solution, pointwise error).

    python examples/python/poisson.py               # full run (README figures)
    python examples/python/poisson.py --steps 50    # smoke run
"""

import argparse
import math
import pathlib
import time

import torch
from tqdm import tqdm

import diffops


def exact(p):
    return torch.sin(math.pi * p[:, 0]) * torch.sin(math.pi * p[:, 1])


def boundary_points(n, dtype):
    s = torch.rand(n, dtype=dtype)
    zeros, ones = torch.zeros(n, dtype=dtype), torch.ones(n, dtype=dtype)
    dirichlet = torch.cat([torch.stack([zeros, s], 1), torch.stack([s, zeros], 1), torch.stack([s, ones], 1)])
    neumann = torch.stack([ones, s], 1)  # the side x = 1
    return dirichlet, neumann


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4000, help="Adam steps (fresh points each step)")
    ap.add_argument("--lbfgs", type=int, default=500, help="L-BFGS iterations after Adam (fixed points)")
    ap.add_argument("--points", type=int, default=2048, help="interior collocation points per step")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--out", default=".", help="folder for poisson.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    dtype = torch.float32

    net = torch.nn.Sequential(
        torch.nn.Linear(2, args.width), torch.nn.Tanh(),
        torch.nn.Linear(args.width, args.width), torch.nn.Tanh(),
        torch.nn.Linear(args.width, args.width), torch.nn.Tanh(),
        torch.nn.Linear(args.width, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    normal = torch.tensor([1.0, 0.0], dtype=dtype)  # outward normal on x = 1, for every point there

    def loss_fn(fixed=None):
        x, xd, xn = fixed or (torch.rand(args.points, 2, dtype=dtype), *boundary_points(256, dtype))
        xn = xn.detach().requires_grad_()
        _, lap = diffops.laplacian(net, x)  # function form: (u, Δu) in one forward pass through the MLP
        residual = -lap[:, 0] - 2 * math.pi**2 * exact(x)
        dirichlet = net(xd)[:, 0]
        neumann = diffops.normal_derivative(net(xn)[:, 0], xn, normal) + math.pi * torch.sin(math.pi * xn[:, 1])
        return residual.pow(2).mean() + 10 * (dirichlet.pow(2).mean() + neumann.pow(2).mean())

    start = time.perf_counter()
    first = None
    bar = tqdm(range(args.steps), desc="poisson", mininterval=1.0)
    for _ in bar:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
        first = loss.item() if first is None else first
        bar.set_postfix(loss=f"{loss.item():.3e}", refresh=False)
    if args.lbfgs:
        fixed = (torch.rand(4 * args.points, 2, dtype=dtype), *boundary_points(1024, dtype))
        lbfgs = torch.optim.LBFGS(net.parameters(), max_iter=args.lbfgs, history_size=50,
                                  tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")
        bar = tqdm(desc="poisson lbfgs (loss evaluations)", mininterval=1.0)

        def closure():
            lbfgs.zero_grad()
            value = loss_fn(fixed)
            value.backward()
            bar.update()
            bar.set_postfix(loss=f"{value.item():.3e}", refresh=False)
            return value

        lbfgs.step(closure)
        bar.close()
        loss = loss_fn(fixed)
    seconds = time.perf_counter() - start

    g = torch.linspace(0, 1, 101, dtype=dtype)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        pred, want = net(grid)[:, 0], exact(grid)
    rel_l2 = ((pred - want).norm() / want.norm()).item()
    print(f"poisson: loss {first:.3e} -> {loss.item():.3e} after {args.steps} Adam steps and {args.lbfgs} "
          f"L-BFGS iterations ({seconds:.1f} s); relative L2 error {rel_l2:.2e}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, values, title in zip(axes, [pred, want, (pred - want).abs()],
                                 ["PINN u", "exact sin(πx) sin(πy)", f"|error| (rel. L2 {rel_l2:.1e})"]):
        im = ax.imshow(values.reshape(101, 101).T, origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    out = pathlib.Path(args.out) / "poisson.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
