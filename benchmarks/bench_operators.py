"""Laplacian, divergence and Hessian of an MLP at N points: every diffops strategy and every peer, in
one process on the same weights and points.

Field: 3 tanh layers of width W; u: R^d -> R (laplacian, hessian), v: R^d -> R^d (divergence).

diffops: the function form op(net, x) with method "auto" (the C++ forward propagation for this MLP)
and "forward-over-reverse"; the graph form op(u, x) with "auto" (= "loop") and "batched"; and
"hutchinson" with one probe (an estimate: listed for its cost, excluded from "best").
Peers: a loop of torch.autograd.grad; torch.func vmap(hessian) / vmap(jacrev) and vmap(jvp(grad)) /
vmap(jacfwd); for the Laplacian, jet-for-pytorch's collapsed Taylor mode when it is installed
(`python benchmarks/install_jet.py`: it needs Python >= 3.12 and is made importable on 3.11 there).

eval: the operator alone; train: loss = mean(result²) and backward to the parameters. Median times,
methods run round-robin; the exact methods are checked against each other first. "peak MiB": memory
of one train step above what was in use before it (--memory). Ratios: a method's time over the
best exact diffops strategy's (best by median), eval and train separately, taken round by round of
the round-robin and reported as the median over rounds with (min–max) over rounds: the two times
of a pair were taken seconds apart, so the pair shares the machine's drift. "matmul ms" (--matmul):
the part of one step spent inside matrix products (aten::mm, addmm, bmm, ... self time under
torch.profiler), eval / train: no method can be faster than the products it performs, so a ratio to
a peer is bounded by the peer's time over ours in products alone. "tanh ms": the part spent in
aten::tanh, the model's activations, which every method evaluates (once per layer for the value);
products and tanh together bound a ratio more tightly.

    python benchmarks/bench_operators.py --op laplacian --d 2 3 8 32 128 --points 1024 --dtype float64
"""

import argparse
import statistics

import torch
from torch.func import functional_call, hessian, jacfwd, jacrev, jvp, vmap
from torch.func import grad as fgrad

import diffops
from common import ACTIVATION_OPS, MATMUL_OPS, paired_ratios, peak_memory_mib, profiled_ms, round_times


def mlp(d_in, d_out, width, device, dtype):
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, width), torch.nn.Tanh(),
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, d_out),
    ).to(device, dtype)


def _jet_laplacian(net, x):
    """jet-for-pytorch's collapsed Taylor mode as its own benchmark (exp01) runs it: the Laplacian
    of one datum, captured and simplified (common subexpressions eliminated), vmapped over the
    points. None when jet is not installed (benchmarks/install_jet.py)."""
    try:
        import jet
    except ImportError:
        return None
    lap, _ = jet.capture_graph(jet.laplacian(net, (x[0],), collapsed=True), (x[0],))
    jet.common_subexpression_elimination(lap.graph)
    lap.recompile()
    return vmap(lap)


def strategies(op, net, x):
    """name -> (function returning the result, exact?)"""
    params = dict(net.named_parameters())
    d = x.shape[-1]
    operator = getattr(diffops, op)
    vector = op == "divergence"

    def point(p, q):  # the field at one point, for torch.func
        out = functional_call(net, p, (q.unsqueeze(0),))[0]
        return out if vector else out[0]

    def graph(method):
        def run():
            xg = x.detach().requires_grad_()
            u = net(xg) if vector else net(xg)[:, 0]
            return operator(u, xg, method=method)

        return run

    def function(method):  # the function form needs no requires_grad on x in any method
        def run():
            out = operator(net, x, method=method)[1]
            return out if vector else out[:, 0]

        return run

    def autograd_loop():
        xg = x.detach().requires_grad_()
        out = net(xg)
        if vector:  # one product per diagonal entry
            return sum(torch.autograd.grad(out[:, i].sum(), xg, create_graph=True)[0][:, i] for i in range(d))
        (g,) = torch.autograd.grad(out[:, 0].sum(), xg, create_graph=True)
        rows = [torch.autograd.grad(g[:, i].sum(), xg, create_graph=True)[0] for i in range(d)]
        if op == "hessian":
            return torch.stack(rows, -2)
        return sum(r[:, i] for i, r in enumerate(rows))

    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    methods = {
        f"diffops {op}(net, x), auto": (function("auto"), True),
    }
    if diffops.explain(op, net, x).method != "forward":
        methods[f"diffops {op}(net, x), forward"] = (function("forward"), True)
    if not vector:
        methods["diffops forward-over-reverse"] = (function("forward-over-reverse"), True)
    methods["diffops graph form, auto (loop)"] = (graph("auto"), True)
    methods["diffops graph form, batched"] = (graph("batched"), True)
    if op != "hessian":
        methods["diffops hutchinson, 1 probe (estimate)"] = (graph("hutchinson"), False)
    methods["loop of torch.autograd.grad"] = (autograd_loop, True)
    if op == "laplacian":
        methods["torch.func vmap(hessian).trace"] = (
            lambda: vmap(lambda q: hessian(lambda r: point(params, r))(q).trace())(x), True)

        def jvp_grad():
            g = fgrad(lambda r: point(params, r))
            return vmap(lambda q: vmap(lambda e: jvp(g, (q,), (e,))[1] @ e)(eye).sum())(x)

        methods["torch.func vmap(jvp(grad))"] = (jvp_grad, True)
        jet_laplacian = _jet_laplacian(net, x)
        if jet_laplacian is not None:
            methods["jet-for-pytorch collapsed, vmap"] = (lambda: jet_laplacian(x)[:, 0], True)
    elif op == "hessian":
        methods["torch.func vmap(hessian)"] = (lambda: vmap(hessian(lambda r: point(params, r)))(x), True)
    else:
        methods["torch.func vmap(jacrev).trace"] = (
            lambda: vmap(lambda q: jacrev(lambda r: point(params, r))(q).trace())(x), True)
        methods["torch.func vmap(jacfwd).trace"] = (
            lambda: vmap(lambda q: jacfwd(lambda r: point(params, r))(q).trace())(x), True)
    return methods


def ratio_cell(rounds, k, best):
    """Method k's time over method `best`'s, paired round by round: the median, with (min–max) over
    rounds when there are more than two."""
    if k == best:
        return "1.00×"
    mid, lo, hi = paired_ratios(rounds[k], rounds[best])
    return f"{mid:.2f}× ({lo:.2f}–{hi:.2f})" if len(rounds[k]) > 2 else f"{mid:.2f}×"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--op", choices=["laplacian", "divergence", "hessian"], default="laplacian")
    ap.add_argument("--d", type=int, nargs="+", default=[2, 3, 8, 32, 128])
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per method and row before fewer repeats")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory of a train step")
    ap.add_argument("--matmul", action="store_true",
                    help="also measure the time inside matrix products and inside tanh (eval / train, torch.profiler)")
    ap.add_argument("--skip", nargs="*", default=[], help="skip methods whose name contains one of these")
    args = ap.parse_args()
    dt, device = getattr(torch, args.dtype), torch.device(args.device)
    jet = "not installed"
    try:
        from importlib.metadata import version

        jet = version("jet-for-pytorch")
    except Exception:
        pass
    print(f"# {args.op}: torch {torch.__version__}, jet-for-pytorch {jet}, {torch.get_num_threads()} threads, device {device}, "
          f"{args.dtype}, N={args.points}, 3 tanh layers of width {args.width}")
    print("| d | method | eval ms | train ms |" + (" peak MiB |" if args.memory else "")
          + (" matmul ms | tanh ms |" if args.matmul else "") + " eval / best diffops | train / best diffops |")
    print("|---|---|---|---|" + ("---|" if args.memory else "") + ("---|---|" if args.matmul else "") + "---|---|")
    for d in args.d:
        torch.manual_seed(0)
        net = mlp(d, d if args.op == "divergence" else 1, args.width, device, dt)
        x = torch.randn(args.points, d, dtype=dt, device=device)
        fns = {k: v for k, v in strategies(args.op, net, x).items() if not any(s in k for s in args.skip)}
        ref = next(fn for name, (fn, exact) in fns.items() if exact)()  # checked against the first exact method
        tol = dict(rtol=1e-4, atol=1e-4) if dt == torch.float32 else dict(rtol=1e-9, atol=1e-10)
        for name, (fn, exact) in fns.items():
            if exact:
                torch.testing.assert_close(fn(), ref, **tol, msg=lambda m: f"{name}: {m}")

        def trainer(fn):
            def step():
                net.zero_grad()
                fn().pow(2).mean().backward()

            return step

        calls = [fn for fn, _ in fns.values()]
        eval_rounds = round_times(calls, args.repeats, args.budget)
        train_rounds = round_times([trainer(f) for f in calls], args.repeats, args.budget)
        evals = [statistics.median(ts) for ts in eval_rounds]
        trains = [statistics.median(ts) for ts in train_rounds]
        mems = [peak_memory_mib(trainer(f), device) for f in calls] if args.memory else None
        # per method: [matmul, tanh] ms in eval, then in train, each pair from one profiled run
        mms = [[profiled_ms(g, device, MATMUL_OPS, ACTIVATION_OPS) for g in (f, trainer(f))]
               for f in calls] if args.matmul else None
        exact = [name.startswith("diffops") and ex for name, (_, ex) in fns.items()]
        # the best exact diffops strategy by median; every ratio is paired round by round with it
        best_eval = min((t, k) for k, (t, ex) in enumerate(zip(evals, exact)) if ex)[1]
        best = min((t, k) for k, (t, ex) in enumerate(zip(trains, exact)) if ex)[1]
        for k, (name, te, tt) in enumerate(zip(fns, evals, trains)):
            extra = f" {mems[k]:.0f} |" if mems else ""
            if mms:
                (mm_eval, tanh_eval), (mm_train, tanh_train) = mms[k]
                extra += f" {mm_eval:.1f} / {mm_train:.1f} | {tanh_eval:.2f} / {tanh_train:.2f} |"
            print(f"| {d} | {name} | {te * 1e3:.2f} | {tt * 1e3:.2f} |{extra} {ratio_cell(eval_rounds, k, best_eval)} | "
                  f"{ratio_cell(train_rounds, k, best)} |", flush=True)


if __name__ == "__main__":
    main()
