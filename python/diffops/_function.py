r"""The function form: ``laplacian(f, x)``, ``hessian(f, x)``, ``divergence(f, x)``,
``jacobian(f, x)`` see the model, not only its graph, and return ``(f(x), D f(x))``.

For an MLP — ``torch.nn.Sequential`` (nested ones too) of ``Linear`` layers and elementwise
activations (``Tanh``, :class:`Sin`, ``Sigmoid``, ``Softplus`` with its defaults, ``SiLU``, ``GELU``
exact, ``Identity``) — the derivatives are propagated forward with the value in C++
(``diffops::value_and_derivative``: the forward Laplacian / collapsed Taylor mode), one pass instead
of ``1 + d`` reverse products. Any other callable takes the graph form (``u = f(x)`` then the
operator) or, with ``method="forward-over-reverse"``, forward-mode tangents through a reverse pass
(``diffops::forward_over_reverse`` in C++; mirrored here because ``f`` is a Python callable).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

_ops = torch.ops.diffops

_FORWARD_OPS = ("jacobian", "divergence", "laplacian", "hessian")


def _columns(steps: list) -> tuple[list, list, list]:
    """An MLP's steps as the registered ops take them: kinds, weights, biases."""
    kinds, weights, biases = zip(*steps) if steps else ((), (), ())
    return list(kinds), list(weights), list(biases)


def _forward_is_auto(op: str, x: Tensor, steps: list, coords: list[int] | None = None) -> bool:
    """Whether "auto" takes the forward propagation: diffops::forward_is_auto's rule — Laplacian,
    divergence and Hessian always, the Jacobian when it carries no more tangents than it has outputs
    (benchmarks/bench_operators.py). Mirrored in Python because torch.compile cannot trace an op
    that returns a bool; tests/test_function.py checks the two agree."""
    if op in ("laplacian", "divergence", "hessian"):
        return True
    if op != "jacobian" or not isinstance(x, Tensor) or x.dim() == 0:
        return False
    d = x.shape[-1] if coords is None else len(coords)
    linears = [weight for kind, weight, _ in steps if kind == "linear" and weight is not None and weight.dim() == 2]
    outputs = linears[-1].shape[0] if linears else d
    first = steps[0] if steps else None
    reduced = first is not None and first[0] == "linear" and first[1] is not None and first[1].dim() == 2
    tangents = min(d, first[1].shape[0]) if reduced else d
    return tangents <= outputs


class Sin(torch.nn.Module):
    """``sin`` as a module (SIREN-style and PINN networks), recognised by the forward propagation."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


class Plan(NamedTuple):
    """What an operator call does (:func:`diffops.explain`), as ``diffops::Plan`` in C++."""

    #: the strategy that runs: ``"loop"``, ``"batched"``, ``"hutchinson"``, ``"forward"``,
    #: ``"forward-over-reverse"``
    method: str
    #: autograd engine runs (reverse passes); passes through the model for ``"forward"``
    passes: int
    #: vectors multiplied by a Jacobian: seeds of vector-Jacobian products; for ``"forward"`` the
    #: tangents carried per point besides the value
    products: int
    #: the rule ``"auto"`` applied, or ``"asked for"``
    reason: str


def _kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Tanh):
        return "tanh"
    if isinstance(module, Sin):
        return "sin"
    if isinstance(module, torch.nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, torch.nn.Softplus) and module.beta == 1 and module.threshold == 20:
        return "softplus"
    if isinstance(module, torch.nn.SiLU):
        return "silu"
    if isinstance(module, torch.nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, torch.nn.Identity):
        return "identity"
    return None


def mlp_steps(f: Callable) -> list[tuple[str, Tensor | None, Tensor | None]] | None:
    """``f``'s steps ``(kind, weight, bias)`` when the forward propagation supports it, else None."""
    if not isinstance(f, torch.nn.Sequential):
        return None
    steps: list[tuple[str, Tensor | None, Tensor | None]] = []
    for module in f:
        if isinstance(module, torch.nn.Sequential):
            inner = mlp_steps(module)
            if inner is None:
                return None
            steps += inner
        elif type(module) is torch.nn.Linear:
            steps.append(("linear", module.weight, module.bias))
        else:
            kind = _kind(module)
            if kind is None:
                return None
            steps.append((kind, None, None))
    return steps


def _forward_over_reverse(op: str, f: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """(f(x), H), H of shape batch + comp + (d, d): d stacked copies of the points, copy k carrying
    the tangent e_k; one reverse pass per component gives ∇u with tangent H e_k."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"{op}: x must be a floating tensor of shape batch + (d,)")
    grad_at_call = torch.is_grad_enabled()
    d = x.shape[-1]
    points = x.reshape(-1, d)
    n = points.shape[0]
    with torch.enable_grad(), fwAD.dual_level():
        stacked = points.unsqueeze(0).expand(d, n, d).reshape(d * n, d).contiguous()  # n = 1: no aliasing
        if not stacked.requires_grad:
            stacked = stacked.detach().requires_grad_()
        tangents = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, n, d).reshape(d * n, d).contiguous()
        dual = fwAD.make_dual(stacked, tangents)
        u = f(dual)
        if not isinstance(u, Tensor) or not u.is_floating_point() or u.dim() < 1 or u.shape[0] != d * n:
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(
                f"{op}: f must map points of shape (P, d) to a floating field of shape (P,) + comp; "
                f"called on {d * n} stacked points, it returned {got}"
            )
        if not u.requires_grad:
            raise RuntimeError(
                f"{op}: f's output has no graph to x: it was computed from other tensors, detached, "
                "or under torch.no_grad()"
            )
        comp = tuple(u.shape[1:])
        flat = u.reshape(d * n, -1)
        columns = []
        for c in range(flat.shape[1]):
            seed = torch.zeros_like(flat)
            seed[:, c] = 1
            (g,) = torch.autograd.grad(u, dual, seed.reshape(u.shape), retain_graph=True, create_graph=True)
            tangent = fwAD.unpack_dual(g).tangent
            columns.append(
                torch.zeros(n, d, d, dtype=x.dtype, device=x.device)
                if tangent is None
                else tangent.view(d, n, d).permute(1, 2, 0)
            )
        value = fwAD.unpack_dual(u).primal[:n]
    batch = tuple(x.shape[:-1])
    value = value.reshape(batch + comp)
    hess = torch.stack(columns, 1).reshape(batch + comp + (d, d))
    if not grad_at_call:
        return value.detach(), hess.detach()
    return value, hess if create_graph else hess.detach()


def checked_coords(op: str, coords, x: Tensor) -> list[int] | None:
    """``coords`` as a list of ints, validated as diffops::coordinate_count does (same messages):
    distinct entries in ``[-d, d)``; None stays None."""
    if coords is None:
        return None
    if isinstance(coords, Tensor):
        coords = coords.tolist()
    try:  # ints, or integer scalars (numpy's), but not bools
        if isinstance(coords, (str, bytes)) or any(isinstance(c, bool) for c in coords):
            raise TypeError
        coords = [operator.index(c) for c in coords]
    except TypeError:
        raise ValueError(f"{op}: coords must be a sequence of ints (coordinate indices of x); got {coords!r}") from None
    if not coords:
        raise ValueError(f"{op}: coords is empty; pass None to differentiate along every coordinate")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ValueError(f"{op}: x must have shape batch + (d,)")
    d = x.shape[-1]
    seen = set()
    for c in coords:
        if not -d <= c < d:
            raise ValueError(f"{op}: coords entry {c} is out of range for d = {d} coordinates")
        i = c % d
        if i in seen:
            raise ValueError(f"{op}: coords names coordinate {i} twice")
        seen.add(i)
    return coords


def pick_coordinates(f: Callable[[Tensor], Tensor], x: Tensor, coords: list[int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(xs, f_xs) for the function form's ``coords`` (diffops::detail::pick_coordinates): the picked
    columns of x as the points, and f of them with x's other columns held fixed (p may stack
    copies of the points, as forward-over-reverse does)."""
    d = x.shape[-1]
    picked = torch.tensor([c % d for c in coords], dtype=torch.long, device=x.device)
    base = x.reshape(-1, d)

    def f_xs(p: Tensor) -> Tensor:
        flat = p.reshape(-1, p.shape[-1])
        copies = flat.shape[0] // max(1, base.shape[0])
        full = (base if copies == 1 else base.repeat(copies, 1)).index_copy(-1, picked, flat)
        return f(full.reshape(*p.shape[:-1], d))

    return x.index_select(-1, picked), f_xs


def graph_point(x: Tensor) -> Tensor:
    """x as the function form's graph fallbacks differentiate it (diffops::detail::graph_point): a
    floating x that does not require grad becomes a detached alias that does (its caller wants no
    derivative to x); anything else (x requiring grad, an inference tensor, a bad x for the
    operator to name) is returned as is."""
    alias = isinstance(x, Tensor) and x.is_floating_point() and not x.requires_grad and not x.is_inference()
    return x.detach().requires_grad_() if alias else x


def function_form(
    op: str,
    graph: Callable[..., Tensor],
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str,
    coords=None,
    **graph_options,
) -> tuple[Tensor, Tensor]:
    """``(f(x), op(f(x), x))`` by the strategy ``method`` names; ``graph`` is the graph-form operator.
    With ``coords``, along those coordinates of x only (the others held fixed)."""
    coords = checked_coords(op, coords, x)
    if method in ("forward", "auto"):
        steps = mlp_steps(f) if op in _FORWARD_OPS else None
        if steps is not None and (method == "forward" or _forward_is_auto(op, x, steps, coords)):
            kinds, weights, biases = _columns(steps)
            return _ops.value_and_derivative(op, x, weights, biases, kinds, coords or [])
        if method == "forward":
            raise ValueError(
                f"{op}: method='forward' needs f to be a torch.nn.Sequential of Linear layers and "
                "supported activations (Tanh, diffops.Sin, Sigmoid, Softplus(), SiLU, GELU(), Identity); "
                f"got {type(f).__name__}. Use method='auto' to fall back to the graph form"
            )
    if coords is not None:  # f of the picked coordinates, the others held fixed
        xs, f_xs = pick_coordinates(f, x, coords)
        return function_form(op, graph, f_xs, xs, method, **graph_options)
    if method == "forward-over-reverse":
        if op not in ("laplacian", "hessian"):
            raise ValueError(f"{op}: method 'forward-over-reverse' is for laplacian and hessian; got it for {op}")
        if graph_options.get("samples", 1) != 1 or graph_options.get("generator") is not None or graph_options.get("check_structure"):
            raise ValueError(
                f"{op}: samples, generator and check_structure are not used by method 'forward-over-reverse'"
            )
        u, hess = _forward_over_reverse(op, f, x, graph_options.get("create_graph", True))
        return (u, hess) if op == "hessian" else (u, hess.diagonal(0, -2, -1).sum(-1))
    # The graph form differentiates f's graph to x (graph_point), built under no_grad too, the
    # results then detached: the callable form works in every grad mode, as the forward
    # propagation does.
    grad_at_call = torch.is_grad_enabled()
    xg = graph_point(x)
    with torch.enable_grad():
        u = f(xg)
        derivative = graph(u, xg, method=method, **graph_options)
    if not grad_at_call:
        return u.detach(), derivative.detach()
    return u, derivative


def function_plan(
    op: str, f: Callable[[Tensor], Tensor], x: Tensor, method: str, coords: list[int] | None = None
) -> Plan | None:
    """The function form's own plans ("forward", "forward-over-reverse"); None: the graph form's.
    ``coords``: checked_coords' list, or None."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise ValueError(f"{op}: x must have shape batch + (d,)")
    d = x.shape[-1] if coords is None else len(coords)
    steps = mlp_steps(f) if op in _FORWARD_OPS and method in ("forward", "auto") else None
    if steps is not None and (method == "forward" or _forward_is_auto(op, x, steps, coords)):
        kinds, weights, _ = _columns(steps)
        tangents = _ops.forward_tangents(op, d, weights, kinds)
        reason = "auto: the model is an MLP diffops propagates forward" if method == "auto" else "asked for"
        if tangents < d:
            reason += f"; {tangents} tangents for d = {d}: the first layer's width (W1ᵀ = QR)"
        return Plan("forward", 1, _ops.forward_products(op, d, weights, kinds), reason)
    if method == "forward-over-reverse" and op in ("laplacian", "hessian"):
        components = 1
        with torch.no_grad():
            for size in f(x).shape[x.dim() - 1 :]:
                components *= size
        return Plan("forward-over-reverse", 1 + components, components * d, "asked for")
    return None
