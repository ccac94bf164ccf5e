"""1-D viscous Burgers PINN with separate coordinate tensors and diffops.Derivatives.

    u_t + u u_x - ν u_xx = 0,   x ∈ [-1, 1], t ∈ [0, 1], ν = 0.01/π
    u(x, 0) = -sin(πx),  u(±1, t) = 0

The residual needs u_t, u_x and u_xx of one field: Derivatives(u, (x, t)) takes them in 2 autograd
products (one row gives u_x and u_t, the second row gives u_xx), where independent calls take 3.
The reference solution is the exact Cole–Hopf representation, integrated numerically. Prints the
relative L2 error on a 256 × 100 grid and writes burgers.png (solution, reference, error).

    python examples/python/burgers.py               # full run (README figures)
    python examples/python/burgers.py --steps 50    # smoke run
"""

import argparse
import math
import pathlib
import time

import torch
from tqdm import tqdm

import diffops

NU = 0.01 / math.pi


def reference(x, t, n=2001, chunk=2048):
    """Cole–Hopf: u = -∫ sin(π(x-η)) φ(x-η) G(η) dη / ∫ φ(x-η) G(η) dη, φ(y) = exp(-cos(πy)/(2πν)),
    G the heat kernel of variance 2νt; trapezoidal rule in z = η / sqrt(4νt) on [-8, 8] (float64)."""
    x, t = x.double().reshape(-1), t.double().reshape(-1)
    out = -torch.sin(math.pi * x)  # t = 0
    z = torch.linspace(-8, 8, n, dtype=torch.float64)
    late = (t > 0).nonzero()[:, 0]
    for rows in late.split(chunk):
        y = x[rows, None] - torch.sqrt(4 * NU * t[rows, None]) * z      # (rows, n)
        log_w = -torch.cos(math.pi * y) / (2 * math.pi * NU) - z**2
        w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
        out[rows] = -torch.trapezoid(torch.sin(math.pi * y) * w, z, dim=1) / torch.trapezoid(w, z, dim=1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5000, help="Adam steps")
    ap.add_argument("--lbfgs", type=int, default=1500, help="L-BFGS iterations after Adam")
    ap.add_argument("--points", type=int, default=4000, help="collocation points")
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--out", default=".", help="folder for burgers.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    dtype = torch.float64

    layers = [torch.nn.Linear(2, args.width), torch.nn.Tanh()]
    for _ in range(4):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(args.width, 1)).to(dtype)

    # separate coordinate columns (N, 1), as many PINN codes keep them
    x = (2 * torch.rand(args.points, 1, dtype=dtype) - 1).requires_grad_()
    t = torch.rand(args.points, 1, dtype=dtype).requires_grad_()
    x0 = torch.linspace(-1, 1, 256, dtype=dtype).reshape(-1, 1)
    tb = torch.rand(200, 1, dtype=dtype)
    initial = torch.cat([x0, torch.zeros_like(x0)], 1), -torch.sin(math.pi * x0[:, 0])
    walls = torch.cat([torch.cat([-torch.ones_like(tb), tb], 1), torch.cat([torch.ones_like(tb), tb], 1)])

    def loss_fn():
        u = net(torch.cat([x, t], 1))            # (N, 1)
        d = diffops.Derivatives(u, (x, t))       # index 0: x, index 1: t
        residual = d[1] + u * d[0] - NU * d[0, 0]
        return (residual.pow(2).mean() + (net(initial[0])[:, 0] - initial[1]).pow(2).mean()
                + net(walls).pow(2).mean())

    start = time.perf_counter()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = None
    bar = tqdm(range(args.steps), desc="burgers adam", mininterval=1.0)
    for _ in bar:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        bar.set_postfix(loss=f"{loss.item():.3e}", refresh=False)
    if args.lbfgs:
        lbfgs = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=args.lbfgs, history_size=50,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        bar = tqdm(desc="burgers lbfgs (loss evaluations)", mininterval=1.0)

        def closure():
            lbfgs.zero_grad()
            value = loss_fn()
            value.backward()
            bar.update()
            bar.set_postfix(loss=f"{value.item():.3e}", refresh=False)
            return value

        lbfgs.step(closure)
        bar.close()
        loss = loss_fn()
    seconds = time.perf_counter() - start

    xs, ts = torch.linspace(-1, 1, 256, dtype=dtype), torch.linspace(0, 1, 100, dtype=dtype)
    X, T = torch.meshgrid(xs, ts, indexing="ij")
    with torch.no_grad():
        pred = net(torch.stack([X.reshape(-1), T.reshape(-1)], 1))[:, 0]
    want = reference(X.reshape(-1), T.reshape(-1))
    rel_l2 = ((pred - want).norm() / want.norm()).item()
    print(f"burgers: loss {first:.3e} -> {loss.item():.3e} after {args.steps} Adam steps and "
          f"{args.lbfgs} L-BFGS iterations ({seconds:.1f} s); relative L2 error {rel_l2:.2e}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, values, title in zip(axes, [pred, want, (pred - want).abs()],
                                 ["PINN u(t, x)", "reference (Cole–Hopf)", f"|error| (rel. L2 {rel_l2:.1e})"]):
        im = ax.imshow(values.reshape(256, 100), origin="lower", aspect="auto", extent=(0, 1, -1, 1),
                       cmap="coolwarm")
        ax.set_title(title)
        ax.set_ylabel("x")
        fig.colorbar(im, ax=ax)
    axes[-1].set_xlabel("t")
    fig.tight_layout()
    out = pathlib.Path(args.out) / "burgers.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
