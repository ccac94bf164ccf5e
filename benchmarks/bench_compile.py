"""torch.compile on a PINN training step built from diffops operators: time per step per backend.

The step: u = MLP(x), residual = Δu + ∂²u/∂x0∂x1 + f, loss = mean(residual²) (the compiled region,
fullgraph=True), then the gradients of the parameters (what an optimiser needs). The parameter
gradients are checked against eager before timing; the timed step is forward + backward.

    python benchmarks/bench_compile.py [--points 4096] [--width 64] [--dtype float32] [--device cpu]
"""

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time

# A fresh inductor cache, so that "compile s" is a compile and not a load from an earlier run's
# on-disk cache (2 s against 14 s here). Set TORCHINDUCTOR_CACHE_DIR to measure a warm one.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffops-bench-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402 (after the cache directory is set)

import diffops


def pinn_loss(net, x):  # the compiled region: forward, derivatives, residual, loss
    u = net(x)[:, 0]
    residual = diffops.laplacian(u, x) + diffops.partial(u, x, [0, 1]) + torch.sin(x).prod(-1)
    return residual.pow(2).mean()


def step(loss_fn, net, x):  # backward to the parameters (through the compiled graph's backward)
    return torch.autograd.grad(loss_fn(net, x), list(net.parameters()), materialize_grads=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--d", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    dt, device, w = getattr(torch, args.dtype), torch.device(args.device), args.width
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(args.d, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.Tanh(),
                              torch.nn.Linear(w, w), torch.nn.Tanh(), torch.nn.Linear(w, 1)).to(device, dt)
    x = torch.rand(args.points, args.d, dtype=dt, device=device, requires_grad=True)
    want = step(pinn_loss, net, x)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}, "
          f"N={args.points}, d={args.d}, width {w}, 3 tanh layers")
    print("| backend | compile s | step ms | speed-up vs eager |")
    print("|---|---|---|---|")
    base = None
    for backend in ["none (eager)", "eager", "aot_eager", "inductor"]:
        torch._dynamo.reset()
        loss_fn = pinn_loss if backend.startswith("none") else torch.compile(pinn_loss, backend=backend, fullgraph=True)
        t0 = time.perf_counter()
        got = step(loss_fn, net, x)
        compile_s = time.perf_counter() - t0
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-3 if dt == torch.float32 else 1e-9, atol=1e-5)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(loss_fn, net, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        per_step = statistics.median(times)
        base = base or per_step
        print(f"| {backend} | {compile_s:.1f} | {per_step * 1e3:.2f} | {base / per_step:.2f}× |")


if __name__ == "__main__":
    main()
