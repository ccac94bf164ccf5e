r"""The derivative cache for PDE residuals: the Python face of C++ ``diffops::Derivatives``.

Both classes share their validation and their one autograd step (``torch.ops.diffops._derivatives_row``,
the C++ code behind ``diffops::Derivatives``); this file only mirrors the bookkeeping, line for line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_ops = torch.ops.diffops


class Derivatives:
    r"""Every partial derivative of one field, each computed once and reused.

    A PDE residual needs many partials of the same ``u`` (Navier–Stokes: :math:`u_t, u_x, u_y,
    u_{xx}, u_{yy}` for each velocity component and :math:`p_x, p_y`). Independent calls recompute
    shared prefixes. Here one autograd product differentiates one derivative of one scalar component
    by **every** coordinate at once (a full gradient row), and the row is kept: it supplies all
    partials one order up. Mixed partials reuse their prefix (:math:`\partial^2 u/\partial x_0
    \partial x_1` reuses :math:`\partial u/\partial x_0`), the Laplacian and Hessian reuse the
    gradient, and indices are sorted (mixed partials commute for twice continuously
    differentiable fields, e.g. MLPs with smooth activations), so ``d[1, 0]`` after ``d[0, 1]`` is
    free.

    Cost: one product per (component, sorted multi-index prefix) first asked for; ``products`` counts
    them. With nothing cached, a partial of order ``k`` of one component costs ``k`` products, the
    gradient 1, the Laplacian or Hessian ``1 + d``, a divergence ``d`` per vector field.

    Results keep their graph whatever the grad mode (higher derivatives may be asked later, and a
    loss built from them trains the network). Build one cache per field per training step: it holds
    the graphs until it is dropped.

    Args:
        u: field of shape ``batch + comp`` computed from the points.
        x: points of shape ``batch + (d,)``; or the coordinates as separate tensors ``(x, y, t)``,
            each of shape ``batch + (1,)`` or ``batch``, index ``k`` naming the ``k``-th of them.

    Raises:
        ValueError: shapes, dtypes or devices do not fit; an index or component is out of range.
        RuntimeError: ``u`` is not connected to the points by a graph (as every diffops operator).

    Example:
        >>> import torch, diffops
        >>> x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
        >>> u = x[:, 0] ** 3 * x[:, 1]
        >>> d = diffops.Derivatives(u, x)
        >>> d[0].tolist(), d.products                     # ∂u/∂x0 = 3 x0² x1: one product
        ([6.0, -0.75], 1)
        >>> d[0, 1].tolist(), d.products                  # 3 x0²: one more, reusing ∂u/∂x0
        ([3.0, 0.75], 2)
        >>> d[1, 0].tolist(), d.products                  # the same partial: free
        ([3.0, 0.75], 2)
        >>> torch.equal(d.laplacian(), diffops.laplacian(u, x)), d.products
        (True, 3)
        >>> s = torch.tensor([[1.0], [0.5]], requires_grad=True)  # separate coordinates
        >>> t = torch.tensor([[2.0], [-1.0]], requires_grad=True)
        >>> diffops.Derivatives(s ** 3 * t, (s, t)).partial([0, 0]).tolist()   # 6 s t, shape (2, 1)
        [[12.0], [-3.0]]
    """

    def __init__(self, u: Tensor, x: Tensor | Sequence[Tensor]) -> None:
        self._coordinates = not isinstance(x, Tensor)
        self._inputs = list(x) if self._coordinates else [x]
        _ops._derivatives_check(u, self._inputs, self._coordinates)
        self.field = u
        if self._coordinates:
            shape = self._inputs[0].shape
            npoint = len(shape) - 1 if len(shape) and shape[-1] == 1 else len(shape)
            self.dim = len(self._inputs)
        else:
            npoint = x.dim() - 1
            self.dim = x.shape[-1]
        self._batch = tuple(u.shape[:npoint])
        self._comp = tuple(u.shape[npoint:])
        self.components = 1
        for c in self._comp:
            self.components *= c
        self.products = 0
        self._rows: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    def _component_values(self, c: int) -> Tensor:
        return self.field.reshape(self._batch + (self.components,))[..., c]

    def _row(self, c: int, prefix: tuple[int, ...]) -> Tensor:
        key = (c, prefix)
        row = self._rows.get(key)
        if row is None:
            with torch.enable_grad():  # rows feed higher derivatives: graphs even under no_grad
                base = self._component_values(c) if not prefix else self._row(c, prefix[:-1])[..., prefix[-1]]
                row = _ops._derivatives_row(base, self._inputs, self._coordinates)
            self.products += 1
            self._rows[key] = row
        return row

    def _check_index(self, index: int | Sequence[int]) -> tuple[int, ...]:
        idx = (index,) if isinstance(index, int) else tuple(index)
        if not idx:
            raise ValueError("Derivatives: index is empty; name at least one coordinate")
        for i in idx:
            if not 0 <= i < self.dim:
                raise ValueError(
                    f"Derivatives: index {list(idx)} names coordinate {i}, out of range for "
                    f"d = {self.dim} coordinates"
                )
        return tuple(sorted(idx))  # mixed partials commute

    def _per_component(self, component: int | None, of_c, tail: tuple[int, ...]) -> Tensor:
        if component is not None:
            if not 0 <= component < self.components:
                raise ValueError(
                    f"Derivatives: component {component} is out of range: u has {self.components} "
                    f"scalar components per point (comp = {list(self._comp)})"
                )
            return of_c(component)
        parts = [of_c(c) for c in range(self.components)]
        return torch.stack(parts, len(self._batch)).reshape(self._batch + self._comp + tail)

    def partial(self, index: int | Sequence[int], component: int | None = None) -> Tensor:
        r""":math:`\partial^k u / \partial x_{i_1} \cdots \partial x_{i_k}` for ``index = (i_1, …, i_k)``.

        Shape ``u.shape``, or ``batch`` for one ``component`` (a flat index into ``comp``).
        """
        idx = self._check_index(index)
        return self._per_component(component, lambda c: self._row(c, idx[:-1])[..., idx[-1]], ())

    def __getitem__(self, index: int | tuple[int, ...]) -> Tensor:
        """``d[i, j, ...]`` is ``d.partial((i, j, ...))`` for all components."""
        return self.partial(index)

    def gradient(self, component: int | None = None) -> Tensor:
        """∇u: shape ``u.shape + (d,)`` (``batch + (d,)`` for one component)."""
        return self._per_component(component, lambda c: self._row(c, ()), (self.dim,))

    def hessian(self, component: int | None = None) -> Tensor:
        """Hessian: shape ``u.shape + (d, d)`` (``batch + (d, d)`` for one component)."""
        of_c = lambda c: torch.stack([self._row(c, (i,)) for i in range(self.dim)], -2)  # noqa: E731
        return self._per_component(component, of_c, (self.dim, self.dim))

    def laplacian(self, component: int | None = None) -> Tensor:
        """Δu: shape ``u.shape`` (``batch`` for one component)."""

        def of_c(c: int) -> Tensor:
            total = self._row(c, (0,))[..., 0]
            for i in range(1, self.dim):
                total = total + self._row(c, (i,))[..., i]
            return total

        return self._per_component(component, of_c, ())

    def divergence(self) -> Tensor:
        """∇·u of a vector field (``comp``'s last axis holds its ``d`` components): ``u.shape[:-1]``."""
        if not self._comp or self._comp[-1] != self.dim:
            raise ValueError(
                f"Derivatives: divergence needs a vector field whose last axis holds its d = "
                f"{self.dim} components, but u has shape {list(self.field.shape)} at "
                f"{len(self._batch)} point axes"
            )
        parts = []
        for c in range(0, self.components, self.dim):
            total = self._row(c, ())[..., 0]
            for i in range(1, self.dim):
                total = total + self._row(c + i, ())[..., i]
            parts.append(total)
        return torch.stack(parts, len(self._batch)).reshape(self._batch + self._comp[:-1])

    def normal_derivative(self, normals: Tensor, component: int | None = None) -> Tensor:
        """∂u/∂n = ∇u·n, normals of shape ``batch + (d,)`` or broadcastable: shape ``u.shape``."""
        shape = self._batch + (self.dim,)
        if normals.dtype != self.field.dtype:
            raise ValueError(
                f"Derivatives: dtype mismatch: normals is {normals.dtype} but u is {self.field.dtype}"
            )
        if normals.device != self.field.device:
            raise ValueError(
                f"Derivatives: device mismatch: normals is on {normals.device} but u is on "
                f"{self.field.device}"
            )
        fits = normals.dim() <= len(shape) and all(
            a in (b, 1) for a, b in zip(reversed(normals.shape), reversed(shape))
        )
        if not fits:
            raise ValueError(
                f"Derivatives: normals of shape {list(normals.shape)} does not broadcast to the "
                f"points' shape {list(shape)} (one normal per point)"
            )
        n = normals.expand(shape)
        return self._per_component(component, lambda c: (self._row(c, ()) * n).sum(-1), ())

    def __repr__(self) -> str:
        return (
            f"Derivatives(field shape {list(self.field.shape)}, d={self.dim}, "
            f"{len(self._rows)} rows cached, {self.products} products)"
        )
