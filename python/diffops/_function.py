r"""The function form of the Laplacian: ``laplacian(f, x)`` sees the model, not only its graph.

For an MLP — ``torch.nn.Sequential`` (nested ones too) of ``Linear`` layers and elementwise
activations (``Tanh``, :class:`Sin`, ``Sigmoid``, ``Softplus`` with its defaults, ``SiLU``, ``GELU``
exact, ``Identity``) — the Laplacian is propagated forward with the value in C++
(``diffops::value_and_laplacian``: the forward Laplacian / collapsed Taylor mode), one pass instead
of ``1 + d`` reverse products. Anything else falls back to the graph form: ``u = f(x)`` then
:func:`diffops.laplacian`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_ops = torch.ops.diffops


class Sin(torch.nn.Module):
    """``sin`` as a module (SIREN-style and PINN networks), recognised by the forward Laplacian."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


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
    """``f``'s steps ``(kind, weight, bias)`` when the forward Laplacian supports it, else None."""
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


def function_laplacian(f: Callable[[Tensor], Tensor], x: Tensor, method: str, **graph_options) -> tuple[Tensor, Tensor]:
    steps = mlp_steps(f) if method in ("auto", "forward") else None
    if steps is None:
        if method == "forward":
            raise ValueError(
                "laplacian: method='forward' needs f to be a torch.nn.Sequential of Linear layers and "
                "supported activations (Tanh, diffops.Sin, Sigmoid, Softplus(), SiLU, GELU(), Identity); "
                f"got {type(f).__name__}. Use method='auto' to fall back to the graph form"
            )
        from ._ops import laplacian

        u = f(x)
        return u, laplacian(u, x, method="loop" if method == "auto" else method, **graph_options)
    kinds, weights, biases = zip(*steps)
    return _ops.value_and_laplacian(x, list(weights), list(biases), list(kinds))
