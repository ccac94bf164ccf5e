r"""Multi-process PINN training with DistributedDataParallel, and the trap it hides.

DDP all-reduces gradients bucket by bucket, when autograd hooks report every parameter of a bucket
ready. A physics-informed loss can leave a parameter with **no gradient at all**: the residual of a
second-order PDE, ``mean((Δu + f)²)``, does not depend on the network's output bias (a constant
shift has zero Laplacian). With ``find_unused_parameters=False`` (DDP's default) that parameter's
bucket never becomes ready and DDP **skips the all-reduce without an error**: each rank steps with
its own local gradient and the replicas drift apart. (PyTorch only complains at the *next* forward
— "Expected to have finished reduction in the prior iteration" — after one unsynchronised optimiser
step, and not at all if the loop ends first.)

Two checks make it impossible to miss:

* :func:`unused_parameters` — before training, on one process: which parameters the loss does not
  reach.
* :func:`check_synchronized` — after ``backward()`` on every rank (the first step, or every ``k``
  steps): raises when ranks hold different gradients, naming the parameters and the cause.

Fixes: make the loss reach every parameter — a boundary or data term does (almost every PINN has
one) — or pass it through :func:`with_all_parameters`, which adds ``0 · Σ p``: the same value and
gradients, but every parameter receives a (zero) gradient, so every bucket becomes ready.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["check_synchronized", "unused_parameters", "with_all_parameters"]


def unused_parameters(loss: Tensor, module: torch.nn.Module) -> list[str]:
    """Names of ``module``'s trainable parameters that ``loss`` does not depend on.

    One extra backward pass (the graph is retained, so ``loss.backward()`` still works afterwards).

    Example:
        >>> import torch, diffops
        >>> from diffops.distributed import unused_parameters
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x = torch.rand(16, 2, requires_grad=True)
        >>> residual = diffops.laplacian(net(x)[:, 0], x) + 1.0
        >>> unused_parameters(residual.pow(2).mean(), net)   # Δ of a constant shift is zero
        ['2.bias']
        >>> boundary = net(torch.zeros(4, 2)).pow(2).mean()
        >>> unused_parameters(residual.pow(2).mean() + boundary, net)
        []
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not loss.requires_grad:
        return [name for name, _ in named]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return [name for (name, _), g in zip(named, grads) if g is None]


def with_all_parameters(loss: Tensor, module: torch.nn.Module) -> Tensor:
    """``loss + 0 · Σ_p sum(p)`` over ``module``'s trainable parameters: the same value and the same
    gradients, except that parameters the loss did not reach get a zero gradient instead of none.

    That is what DistributedDataParallel needs to all-reduce every bucket under a loss that misses
    a parameter (a residual-only PINN loss misses the output bias). An optimiser sees a zero
    gradient for those parameters (plain SGD and Adam leave them unchanged; decoupled weight decay,
    as in AdamW, still shrinks them).

    Example:
        >>> import torch, diffops
        >>> from diffops.distributed import unused_parameters, with_all_parameters
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x = torch.rand(16, 2, requires_grad=True)
        >>> loss = (diffops.laplacian(net(x)[:, 0], x) + 1.0).pow(2).mean()
        >>> unused_parameters(with_all_parameters(loss, net), net)
        []
        >>> with_all_parameters(loss, net).item() == loss.item()
        True
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return loss
    return loss + 0.0 * torch.stack([p.sum() for p in params]).sum().to(loss.dtype)


def check_synchronized(module: torch.nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Raises :class:`RuntimeError` unless every rank holds the same parameter gradients.

    Call it after ``backward()`` on every rank of ``group`` (it is a collective: two small
    all-reduces of a per-parameter fingerprint, ``(has gradient, sum, sum of squares)``). After
    DistributedDataParallel's all-reduce the gradients are identical on all ranks; any difference
    means DDP skipped it (see the module docstring).
    """
    world = dist.get_world_size(group)
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not named:
        return
    ref = named[0][1]
    rows = []
    for _, p in named:
        if p.grad is None:
            rows.append(torch.zeros(3, dtype=torch.float64, device=ref.device))
        else:
            g = p.grad.detach().to(device=ref.device, dtype=torch.float64)
            rows.append(
                torch.stack(
                    [torch.ones((), dtype=torch.float64, device=ref.device), g.sum(), g.square().sum()]
                )
            )
    local = torch.stack(rows)
    if dist.get_backend(group) == dist.Backend.NCCL and local.device.type != "cuda":
        local = local.cuda()
    high, low = local.clone(), local.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    differ = [name for (name, _), h, l in zip(named, high, low) if not torch.equal(h, l)]
    if not differ:
        return
    missing = [name for (name, _), h in zip(named, high) if h[0] == 0]
    partly = [name for (name, _), h, l in zip(named, high, low) if h[0] != l[0]]
    cause = (
        f"These parameters got no gradient from the loss: {missing}. A physics-informed loss can "
        "miss a parameter entirely (mean((Δu + f)²) does not depend on the output layer's bias), "
        "and DistributedDataParallel then never sees its bucket ready and skips the all-reduce "
        "without an error (find_unused_parameters=True does not help: they are used in the forward "
        "pass). Add a term that depends on them (a boundary or data term), or train on "
        "diffops.distributed.with_all_parameters(loss, model)."
        if missing
        else f"Parameters with a gradient on some ranks only: {partly}."
        if partly
        else "Is the module wrapped in DistributedDataParallel, and did every rank run backward "
        "through the wrapper (not through the inner module)?"
    )
    raise RuntimeError(
        f"check_synchronized: parameter gradients differ across the {world} ranks for "
        f"{len(differ)} of {len(named)} parameters ({', '.join(differ[:4])}"
        f"{', ...' if len(differ) > 4 else ''}): they were not all-reduced, so each rank would step "
        f"with its local gradient. {cause}"
    )
