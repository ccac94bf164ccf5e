r"""The diffops operators: thin typed wrappers over ``torch.ops.diffops``.

Shapes: ``x`` is ``batch + (d,)``; a field ``u`` is ``batch + comp``. Points are independent:
``u[n]`` may depend on ``x[n]`` only (no BatchNorm in train mode, attention across points or other
coupling), which is what lets one product serve every point. Each docstring gives the cost in
autograd products (reverse-mode vector-Jacobian products), independent of the number of points.

Every operator also takes ``check_structure=False``. With ``True`` it first verifies the structure
it relies on — ``u[n]`` depends on ``x[n]`` only (for :func:`derivative`: ``y[i]`` on ``x[i]`` only) —
with the ones-seeded product and one product seeded with random per-point weights (two extra
products and a device synchronisation, so not inside ``torch.compile``), and raises
:class:`ValueError` naming the coupling: BatchNorm in training mode, attention across points,
FNO-style mixing.

Errors: bad arguments raise :class:`ValueError`; a broken graph (``u`` rebuilt with
``torch.tensor([...])``, ``x`` not requiring grad, ``x`` not in ``u``'s graph, no-grad or inference
mode) raises :class:`RuntimeError`; messages start with the operator's name. A derivative that is
legitimately zero (the second derivative of a linear map) comes back as zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._function import Plan, checked_coords, function_form, function_plan, graph_point, pick_coordinates

# The graph form's answer to coords (diffops::detail::Field::check_options): its x is already the
# tensor u was computed from.
_GRAPH_COORDS = (
    "{op}: coords is for the function form ({op}(f, x)); in the graph form pass the tensor of those "
    "coordinates as x (a leaf of its own that u is computed from)"
)

_ops = torch.ops.diffops


def gradient(
    u: Tensor,
    x: Tensor | Sequence[Tensor],
    *,
    create_graph: bool = True,
    check_structure: bool = False,
    method: str = "auto",
) -> Tensor:
    r"""Gradient :math:`\nabla u` of a field, per component.

    .. math:: \text{result}[n, c, j] = \frac{\partial u_c(x_n)}{\partial x_{n,j}}

    Not to be confused with :func:`torch.gradient`, which estimates derivatives of sampled values by
    finite differences; this is the exact derivative of the computation that produced ``u``.

    Args:
        u: field of shape ``batch + comp`` computed from ``x``; ``u[n]`` depends on ``x[n]`` only.
        x: points of shape ``batch + (d,)`` with ``requires_grad=True``; or the coordinates as
            separate tensors ``(x, y, t)``, each of shape ``batch + (1,)`` or ``batch`` (as many PINN
            codes hold them), ``d`` being their number.
        create_graph: keep the result differentiable (to train on it or differentiate again).
        method: ``"auto"`` (``"loop"``), ``"loop"`` (one product per component) or ``"batched"`` (one tensor ``x`` only) (the
            same seeds stacked through one reverse pass, as ``autograd.grad(is_grads_batched=True)``).

    Returns:
        Tensor of shape ``u.shape + (d,)``. Cost: one product per scalar component of ``u``, whatever
        ``d`` (with separate coordinates too: one product returns the derivatives by all of them).

    Raises:
        ValueError: shapes, dtypes or devices of ``u`` and ``x`` do not fit.
        RuntimeError: ``u`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
        >>> u = x[:, 0] ** 2 * x[:, 1]          # u = x0² x1
        >>> diffops.gradient(u, x).tolist()      # (2 x0 x1, x0²)
        [[4.0, 1.0], [-6.0, 9.0]]
        >>> f = lambda p: p[0] ** 2 * p[1]
        >>> torch.equal(diffops.gradient(u, x), torch.func.vmap(torch.func.grad(f))(x))
        True
        >>> s = torch.tensor([[1.0], [3.0]], requires_grad=True)   # separate coordinates
        >>> t = torch.tensor([[2.0], [-1.0]], requires_grad=True)
        >>> diffops.gradient(s ** 2 * t, (s, t)).tolist()          # shape (2, 1, 2)
        [[[4.0, 1.0]], [[-6.0, 9.0]]]
    """
    if isinstance(x, Tensor):
        return _ops.gradient(u, x, create_graph=create_graph, check_structure=check_structure, method=method)
    if method not in ("auto", "loop"):
        raise ValueError(f"gradient: method must be one of 'auto', 'loop' with separate coordinates, got {method!r}")
    if check_structure:
        raise ValueError(
            "gradient: check_structure is not available with separate coordinate tensors; "
            "pass the points as one tensor x to check them"
        )
    return _ops.gradient.coordinates(u, list(x), create_graph=create_graph)


def jacobian(
    v: Tensor | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    create_graph: bool = True,
    check_structure: bool = False,
    method: str = "auto",
    coords: Sequence[int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Jacobian of a field: :math:`J_{ij} = \partial v_i / \partial x_j` at every point.

    **Function form**: ``jacobian(f, x)`` returns ``(f(x), J)``; for a supported MLP (see
    :func:`laplacian`) ``method="forward"`` carries ``min(d, w₁)`` tangents forward with the value.
    ``"auto"`` takes it when that is no more than the ``m`` outputs (the reverse loop's passes),
    else the reverse loop.

    Args:
        v: field of shape ``batch + comp`` computed from ``x``; ``v[n]`` depends on ``x[n]`` only.
            Or the model ``f`` itself (function form).
        x: points of shape ``batch + (d,)`` with ``requires_grad=True`` (not needed in the function form).
        create_graph: keep the result differentiable.
        method: ``"auto"`` (``"loop"``; in the function form ``"forward"`` where it pays, see above),
            ``"loop"`` (one product per component), ``"batched"`` (the same seeds stacked through
            one reverse pass, as ``autograd.grad(is_grads_batched=True)``) or ``"forward"``
            (function form).
        coords: function form only: the coordinates of ``x`` to differentiate along, in order (the
            Jacobian's columns ``∂v_i/∂x_{coords[k]}``); the others are held fixed. ``None``: all.

    Returns:
        Tensor of shape ``v.shape + (d,)`` with ``J[..., i, j] = ∂v_i/∂x_j``. Cost: one product per
        scalar component of ``v`` (each yields a whole row).

    Raises:
        ValueError: shapes, dtypes or devices of ``v`` and ``x`` do not fit.
        RuntimeError: ``v`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> v = torch.stack([x[:, 0] * x[:, 1], x[:, 0] + 3 * x[:, 1]], dim=-1)
        >>> diffops.jacobian(v, x).tolist()      # [[x1, x0], [1, 3]]
        [[[2.0, 1.0], [1.0, 3.0]]]
        >>> f = lambda p: torch.stack([p[0] * p[1], p[0] + 3 * p[1]])
        >>> torch.equal(diffops.jacobian(v, x), torch.func.vmap(torch.func.jacrev(f))(x))
        True
    """
    if callable(v) and not isinstance(v, Tensor):
        return function_form("jacobian", jacobian, v, x, method, coords, create_graph=create_graph, check_structure=check_structure)
    if coords is not None:
        raise ValueError(_GRAPH_COORDS.format(op="jacobian"))
    return _ops.jacobian(v, x, create_graph=create_graph, check_structure=check_structure, method=method)


def directional_derivative(
    u: Tensor, x: Tensor, direction: Tensor, *, create_graph: bool = True, check_structure: bool = False
) -> Tensor:
    r"""Directional derivative :math:`\nabla u \cdot w` per component (``w`` is not normalised).

    Args:
        u: field of shape ``batch + comp`` computed from ``x``; ``u[n]`` depends on ``x[n]`` only.
        x: points of shape ``batch + (d,)`` with ``requires_grad=True``.
        direction: ``w``, broadcastable to ``x``'s shape (one direction for all points, or one per
            point, e.g. boundary normals).
        create_graph: keep the result differentiable.

    Returns:
        Tensor of shape ``u.shape``. Cost: one product for a scalar field; two (a double-backward
        Jacobian-vector product) for a field with any number of components.

    Raises:
        ValueError: shapes, dtypes or devices do not fit, or ``direction`` does not broadcast.
        RuntimeError: ``u`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> u = x[:, 0] ** 2 * x[:, 1]           # ∇u = (2 x0 x1, x0²) = (4, 1)
        >>> diffops.directional_derivative(u, x, torch.tensor([0.5, 2.0])).tolist()
        [4.0]
    """
    return _ops.directional_derivative(
        u, x, direction, create_graph=create_graph, check_structure=check_structure
    )


def normal_derivative(
    u: Tensor, x: Tensor, normals: Tensor, *, create_graph: bool = True, check_structure: bool = False
) -> Tensor:
    r"""Normal derivative :math:`\partial u / \partial n = \nabla u \cdot n` at boundary points.

    The Neumann and Robin boundary terms of a PINN: ``normals[n]`` is the outward unit normal at
    boundary point ``x[n]``. It is used as given (pass unit vectors; nothing is normalised, so the
    call stays free of data-dependent checks and compiles).

    Args:
        u: field of shape ``batch + comp`` computed from ``x``; ``u[n]`` depends on ``x[n]`` only.
        x: boundary points of shape ``batch + (d,)`` with ``requires_grad=True``.
        normals: shape ``batch + (d,)`` (one per point), or broadcastable to it (``(d,)``: one
            normal for a whole flat wall).
        create_graph: keep the result differentiable.

    Returns:
        Tensor of shape ``u.shape``. Cost: one product for a scalar field, two for a vector field.

    Raises:
        ValueError: ``normals`` does not broadcast to ``x``, or shapes, dtypes, devices do not fit.
        RuntimeError: ``u`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 0.5], [0.0, 0.25]], requires_grad=True)  # on x0 = 1 and x0 = 0
        >>> n = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])                      # outward normals
        >>> u = x[:, 0] ** 2 * x[:, 1] + x[:, 0]                             # ∂u/∂x0 = 2 x0 x1 + 1
        >>> diffops.normal_derivative(u, x, n).tolist()
        [2.0, -1.0]
    """
    return _ops.normal_derivative(u, x, normals, create_graph=create_graph, check_structure=check_structure)


def divergence(
    v: Tensor | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    create_graph: bool = True,
    check_structure: bool = False,
    method: str = "auto",
    samples: int = 1,
    generator: torch.Generator | None = None,
    coords: Sequence[int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Divergence :math:`\nabla\cdot v = \sum_i \partial v_i / \partial x_i` of a vector field.

    **Function form**: ``divergence(f, x)`` returns ``(f(x), ∇·f(x))``; for a supported MLP (see
    :func:`laplacian`) ``"auto"`` (or ``"forward"``) carries ``r = min(d, w₁)`` tangents forward
    through the first half of the hidden layers and as many adjoints back through the rest, and
    takes the trace where they meet (with two hidden layers and more tangents than half the width,
    as a trilinear form whose cost per point is ``w³`` whatever ``d``) — measured 2.0–16.2× faster
    in training than the reverse loop at ``d = 8…128``, float64, width 64 (docs/benchmarks.md).

    Args:
        v: vector field of shape ``batch + comp' + (d,)`` computed from ``x``; ``v[n]`` depends on
            ``x[n]`` only. Leading component axes ``comp'`` hold several vector fields. Or the model
            ``f`` itself (function form).
        x: points of shape ``batch + (d,)`` with ``requires_grad=True`` (not needed in the function form).
        create_graph: keep the result differentiable.
        method: ``"auto"`` (``"forward"`` for a supported model in the function form, else ``"loop"``),
            ``"loop"`` (exact, one product per diagonal entry), ``"batched"`` (exact: the ``d``
            seeds through one reverse pass), ``"forward"`` (function form) or ``"hutchinson"``: the
            unbiased estimate :math:`\frac1k\sum_s \varepsilon_s^\top J \varepsilon_s` with ``k = samples``
            Rademacher probes (entries ±1), one product each. Variance of one probe at a point:
            :math:`\sum_{i\ne j} J_{ij}(J_{ij} + J_{ji})`, divided by ``k``; exact when ``J`` is
            diagonal. For high ``d`` in training (continuous normalizing flows), not for evaluation.
        samples: number of probes for ``"hutchinson"``.
        generator: random source of the probes (on ``x``'s device), for reproducible estimates.
        coords: function form only: the coordinates of ``x`` to differentiate along, in order:
            :math:`\sum_k \partial v_k / \partial x_{coords[k]}`, so ``v`` has ``len(coords)`` components
            (a CNF field ``f(cat(t, z))`` takes ``coords=range(1, d + 1)``); the others are held fixed.

    Returns:
        Tensor of shape ``v.shape[:-1]``. Cost: ``d`` products per vector field, each contributing
        one diagonal Jacobian entry (the Jacobian is never stored); ``samples`` with
        ``"hutchinson"``.

    Raises:
        ValueError: ``v.shape[-1] != d``, shapes, dtypes or devices do not fit, an unknown
            ``method``, or ``samples``/``generator`` without ``method="hutchinson"``.
        RuntimeError: ``v`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> v = x * x                             # ∇·v = 2 (x0 + x1 + x2)
        >>> diffops.divergence(v, x).tolist()
        [12.0]
        >>> f = lambda p: p * p
        >>> torch.func.vmap(lambda p: torch.func.jacrev(f)(p).trace())(x).tolist()
        [12.0]
    """
    if callable(v) and not isinstance(v, Tensor):
        options = dict(create_graph=create_graph, check_structure=check_structure, samples=samples, generator=generator)
        return function_form("divergence", divergence, v, x, method, coords, **options)
    if coords is not None:
        raise ValueError(_GRAPH_COORDS.format(op="divergence"))
    return _ops.divergence(
        v,
        x,
        create_graph=create_graph,
        check_structure=check_structure,
        method=method,
        samples=samples,
        generator=generator,
    )


def curl(
    v: Tensor, x: Tensor, *, create_graph: bool = True, check_structure: bool = False, method: str = "auto"
) -> Tensor:
    r"""Curl :math:`\nabla\times v` of a vector field in 3-D, or its scalar form in 2-D.

    .. math::
        d=3:\ (\partial_1 v_2 - \partial_2 v_1,\ \partial_2 v_0 - \partial_0 v_2,\
        \partial_0 v_1 - \partial_1 v_0), \qquad d=2:\ \partial_0 v_1 - \partial_1 v_0

    Args:
        v: vector field of shape ``batch + comp' + (d,)``, ``d`` in {2, 3}; ``v[n]`` depends on
            ``x[n]`` only.
        x: points of shape ``batch + (d,)`` with ``requires_grad=True``.
        create_graph: keep the result differentiable.
        method: ``"auto"`` (``"loop"``), ``"loop"`` (one product per component) or ``"batched"`` (the
            same seeds stacked through one reverse pass, as ``autograd.grad(is_grads_batched=True)``).

    Returns:
        Tensor of shape ``v.shape`` for ``d = 3``, ``v.shape[:-1]`` for ``d = 2``.
        Cost: ``d`` products per vector field.

    Raises:
        ValueError: ``d`` not in {2, 3}, ``v.shape[-1] != d``, or shapes, dtypes, devices do not fit.
        RuntimeError: ``v`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> v = torch.stack([-x[:, 1], x[:, 0]], dim=-1)  # rigid rotation: curl = 2
        >>> diffops.curl(v, x).tolist()
        [2.0]
    """
    return _ops.curl(v, x, create_graph=create_graph, check_structure=check_structure, method=method)


def laplacian(
    u: Tensor | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    create_graph: bool = True,
    check_structure: bool = False,
    method: str = "auto",
    samples: int = 1,
    generator: torch.Generator | None = None,
    coords: Sequence[int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Laplacian :math:`\Delta u = \sum_i \partial^2 u / \partial x_i^2`, per component.

    For a vector field (``comp != ()``) this is the vector Laplacian, component by component.

    **Function form**: ``laplacian(f, x)`` with a callable ``f`` (an ``nn.Module``) returns
    ``(f(x), Δf(x))``, so a PDE residual needs one call. For a ``torch.nn.Sequential`` of ``Linear``
    layers and elementwise activations (``Tanh``, :class:`diffops.Sin`, ``Sigmoid``, ``Softplus()``,
    ``SiLU``, ``GELU()``, ``Identity``) ``method="auto"`` (or ``"forward"``) propagates the Laplacian
    forward with the value in C++ — one pass carrying ``r = min(d, w₁)`` tangents per point (``w₁``:
    the first layer's width; with ``w₁ < d``, ``W₁ᵀ = QR`` and the ``w₁`` rows of ``R`` stand for the
    ``d`` coordinates, since ``Δ`` sums over an orthonormal basis), no reverse products,
    differentiable for training. Anything else falls back to ``u = f(x)`` and the graph form below
    (``method="forward"`` then raises instead).

    Args:
        u: field of shape ``batch + comp`` computed from ``x``; ``u[n]`` depends on ``x[n]`` only.
            Or the model ``f`` itself (function form).
        x: points of shape ``batch + (d,)`` with ``requires_grad=True`` (the function form needs no
            ``requires_grad``, and works under ``torch.no_grad()`` too, returning detached results).
        create_graph: keep the result differentiable (a PINN loss on it trains the network).
        method: ``"auto"`` (``"loop"``; ``"forward"`` for a supported model in the function form),
            ``"loop"`` (exact, one product per diagonal entry), ``"batched"`` (exact: the ``d``
            second products through one reverse pass), ``"forward"`` (function form),
            ``"forward-over-reverse"`` (function form, any ``f`` that supports forward-mode AD: the
            points stacked ``d`` times carrying tangents ``e_k``, one reverse pass through ``f``
            gives the Hessian columns) or ``"hutchinson"``: the
            unbiased estimate :math:`\frac1k\sum_s \varepsilon_s^\top H \varepsilon_s` with ``k = samples``
            Rademacher probes, one product each after the gradient. Variance of one probe at a point:
            :math:`2\sum_{i\ne j} H_{ij}^2`, divided by ``k``.
        samples: number of probes for ``"hutchinson"``.
        generator: random source of the probes (on ``x``'s device), for reproducible estimates.
        coords: function form only: the coordinates of ``x`` to differentiate along, the others held
            fixed (``u(x, t)``: ``coords=[0, 1]`` gives :math:`\Delta_x u`). Entries distinct, in
            ``[-d, d)``; ``None``: all. The graph form takes those coordinates as a leaf ``x`` of their own.

    Returns:
        Tensor of shape ``u.shape``. Cost: ``1 + d`` products per component; the Hessian is never
        built, each second product contributes one diagonal entry. ``1 + samples`` with
        ``"hutchinson"``.

    Raises:
        ValueError: shapes, dtypes or devices of ``u`` and ``x`` do not fit, an unknown ``method``,
            or ``samples``/``generator`` without ``method="hutchinson"``.
        RuntimeError: ``u`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
        >>> u = x[:, 0] ** 2 * x[:, 1]           # Δu = 2 x1
        >>> diffops.laplacian(u, x).tolist()
        [4.0, -2.0]
        >>> f = lambda p: p[0] ** 2 * p[1]
        >>> torch.func.vmap(lambda p: torch.func.hessian(f)(p).trace())(x).tolist()
        [4.0, -2.0]
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        >>> p = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
        >>> value, lap = diffops.laplacian(net, p)          # forward Laplacian, shapes (5, 1)
        >>> torch.allclose(lap, diffops.laplacian(net(p), p), rtol=1e-12, atol=1e-14)
        True
        >>> heat = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        >>> xt = torch.rand(5, 3, dtype=torch.float64)      # (x0, x1, t): Δ over x, t held fixed
        >>> u, lap_x = diffops.laplacian(heat, xt, coords=[0, 1])
        >>> H = torch.func.vmap(torch.func.hessian(lambda q: heat(q)[0]))(xt)
        >>> torch.allclose(lap_x[:, 0], H[:, 0, 0] + H[:, 1, 1], rtol=1e-12, atol=1e-14)
        True
    """
    if callable(u) and not isinstance(u, Tensor):
        options = dict(create_graph=create_graph, check_structure=check_structure, samples=samples, generator=generator)
        return function_form("laplacian", laplacian, u, x, method, coords, **options)
    if coords is not None:
        raise ValueError(_GRAPH_COORDS.format(op="laplacian"))
    return _ops.laplacian(
        u,
        x,
        create_graph=create_graph,
        check_structure=check_structure,
        method=method,
        samples=samples,
        generator=generator,
    )


def hessian(
    u: Tensor | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    create_graph: bool = True,
    check_structure: bool = False,
    method: str = "auto",
    coords: Sequence[int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Hessian :math:`H_{ij} = \partial^2 u / \partial x_i \partial x_j`, per component.

    **Function form**: ``hessian(f, x)`` returns ``(f(x), H)``; for a supported MLP (see
    :func:`laplacian`) ``"auto"`` takes ``method="forward"``: the tangents ``∂z/∂x`` of every
    activation's input go forward with the value (``min(d, w₁)`` of them), the adjoints
    ``∂u/∂σ`` (one per component) come back, and
    :math:`H = \sum_{\text{units}} (\partial u/\partial\sigma)\, \sigma''\,
    (\partial z/\partial x)(\partial z/\partial x)^\top` (the Linear steps are affine). No
    second-order reverse pass; about 2× faster than the loop here (docs/benchmarks.md).

    Args:
        u: field of shape ``batch + comp`` computed from ``x``; ``u[n]`` depends on ``x[n]`` only.
            Or the model ``f`` itself (function form).
        x: points of shape ``batch + (d,)`` with ``requires_grad=True`` (not needed in the function form).
        create_graph: keep the result differentiable.
        method: ``"auto"`` (``"loop"``; ``"forward"`` for a supported model in the function form),
            ``"loop"``, ``"batched"`` (the ``d`` second products through one reverse pass),
            ``"forward"`` or ``"forward-over-reverse"`` (function form, see :func:`laplacian`).
        coords: function form only: the coordinates of ``x`` to differentiate along, in order (the
            ``len(coords)²`` block of the Hessian); the others are held fixed. ``None``: all.

    Returns:
        Tensor of shape ``u.shape + (d, d)``. Cost: ``1 + d`` products per component.

    Raises:
        ValueError: shapes, dtypes or devices of ``u`` and ``x`` do not fit.
        RuntimeError: ``u`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> u = x[:, 0] ** 2 * x[:, 1]           # H = [[2 x1, 2 x0], [2 x0, 0]]
        >>> diffops.hessian(u, x).tolist()
        [[[4.0, 2.0], [2.0, 0.0]]]
        >>> f = lambda p: p[0] ** 2 * p[1]
        >>> torch.equal(diffops.hessian(u, x), torch.func.vmap(torch.func.hessian(f))(x))
        True
    """
    if callable(u) and not isinstance(u, Tensor):
        return function_form("hessian", hessian, u, x, method, coords, create_graph=create_graph, check_structure=check_structure)
    if coords is not None:
        raise ValueError(_GRAPH_COORDS.format(op="hessian"))
    return _ops.hessian(u, x, create_graph=create_graph, check_structure=check_structure, method=method)


def partial(
    u: Tensor,
    x: Tensor,
    index: int | Sequence[int],
    *,
    create_graph: bool = True,
    check_structure: bool = False,
) -> Tensor:
    r"""Partial derivative of any order, given by a multi-index.

    .. math:: \text{index} = (i_1, \dots, i_k):\quad
        \frac{\partial^k u}{\partial x_{i_1} \cdots \partial x_{i_k}}

    e.g. ``index=[0, 0, 1]`` is :math:`\partial^3 u / \partial x_0^2 \partial x_1`; ``index=1`` is
    :math:`\partial u / \partial x_1`.

    Args:
        u: field of shape ``batch + comp`` computed from ``x``; ``u[n]`` depends on ``x[n]`` only.
        x: points of shape ``batch + (d,)`` with ``requires_grad=True``.
        index: one coordinate or a sequence of coordinates in ``[0, d)``, differentiated in order.
        create_graph: keep the result differentiable.

    Returns:
        Tensor of shape ``u.shape``. Cost: ``k`` products per component.

    Raises:
        ValueError: empty or out-of-range index, or shapes, dtypes, devices do not fit.
        RuntimeError: ``u`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> u = x[:, 0] ** 3 * x[:, 1] ** 2      # ∂³u/∂x0²∂x1 = 12 x0 x1
        >>> diffops.partial(u, x, [0, 0, 1]).tolist()
        [24.0]
    """
    idx = [index] if isinstance(index, int) else list(index)
    return _ops.partial(u, x, idx, create_graph=create_graph, check_structure=check_structure)


def derivative(
    y: Tensor, x: Tensor, order: int = 1, *, create_graph: bool = True, check_structure: bool = False
) -> Tensor:
    r"""Per-element derivative :math:`g^{(n)}(x)` of an elementwise map :math:`y = g(x)`.

    The Jacobian of an elementwise map is diagonal, so ONE product seeded with ones returns its
    whole diagonal, i.e. every per-element derivative at once ("know your Jacobian"); each further
    order costs one more product. This is only valid when ``y[i]`` depends on ``x[i]`` alone: for
    maps that couple elements use :func:`gradient` or :func:`jacobian`.

    Args:
        y: ``g(x)`` computed elementwise, same shape as ``x``.
        x: tensor of any shape with ``requires_grad=True``.
        order: ``n >= 1``.
        create_graph: keep the result differentiable.
        check_structure: first verify with one random probe product that the Jacobian is diagonal
            (``y[i]`` depends on ``x[i]`` only); raises :class:`ValueError` otherwise.

    Returns:
        Tensor of shape ``x.shape``. Cost: ``order`` products.

    Raises:
        ValueError: ``y.shape != x.shape``, ``order < 1``, or dtypes, devices do not fit.
        RuntimeError: ``y`` is not connected to ``x`` by a graph.

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
        >>> y = x ** 3
        >>> diffops.derivative(y, x).tolist(), diffops.derivative(y, x, 2).tolist()
        ([0.0, 3.0, 12.0], [0.0, 6.0, 12.0])
        >>> torch.func.vmap(torch.func.grad(torch.func.grad(lambda t: t ** 3)))(x).tolist()
        [0.0, 6.0, 12.0]
    """
    return _ops.derivative(y, x, order, create_graph=create_graph, check_structure=check_structure)


def explain(
    op: str,
    u: Tensor | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    method: str = "auto",
    samples: int = 1,
    check_structure: bool = False,
    coords: Sequence[int] | None = None,
) -> Plan:
    r"""What ``op(u, x, method=...)`` does and costs, before running it (``diffops::explain`` in C++).

    ``op`` is one of ``"gradient"``, ``"jacobian"``, ``"curl"``, ``"directional_derivative"``,
    ``"normal_derivative"``, ``"divergence"``, ``"laplacian"``, ``"hessian"``; ``u`` the field, or
    the model ``f`` for the function form. Validates like the operator (same errors) and computes no
    derivative.

    Returns:
        :class:`Plan` ``(method, passes, products, reason)``: the strategy ``"auto"`` resolves to,
        the reverse passes (autograd engine runs; passes through the model for ``"forward"``), the
        products (vector-Jacobian seeds; tangents carried per point for ``"forward"``) and why.

    Example:
        >>> import torch, diffops
        >>> x = torch.rand(16, 3, dtype=torch.float64, requires_grad=True)
        >>> u = (x ** 3).sum(-1)
        >>> diffops.explain("laplacian", u, x)[:3]             # 1 + d products, one pass each
        ('loop', 4, 4)
        >>> diffops.explain("laplacian", u, x, method="batched")[:3]
        ('batched', 2, 4)
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        >>> diffops.explain("laplacian", net, x)[:3]           # one pass carrying d + 1 vectors
        ('forward', 1, 4)
        >>> wide = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        >>> diffops.explain("laplacian", wide, torch.rand(16, 32, dtype=torch.float64))[:3]  # min(d, 8) + 1
        ('forward', 1, 9)
    """
    if callable(u) and not isinstance(u, Tensor):
        coords = checked_coords(op, coords, x)
        plan = function_plan(op, u, x, method, coords)
        if plan is not None:
            return plan
        if coords is not None:  # the picked coordinates, the others held fixed
            x, u = pick_coordinates(u, x, coords)
        with torch.enable_grad():  # the field as the function form's fallbacks compute it
            x = graph_point(x)
            u = u(x)
    elif coords is not None:
        raise ValueError(_GRAPH_COORDS.format(op=op))
    return Plan(*_ops.explain(op, u, x, check_structure=check_structure, method=method, samples=samples))
