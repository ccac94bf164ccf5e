"""The CPU memory cache of the forward propagation (``diffops::cached_bytes`` and friends in C++).

The function form's tangent tensors, shape ``(N, r, w)``, are its large ones. When they die (after
the backward, in training) their blocks of 1 MiB and more are kept for the next call of the same
shape instead of going back to the C library, which maps blocks that large afresh and unmaps them:
every call would pay a page fault per 4 KiB page on first touch (1-2 µs each on a virtual machine,
a fifth of a training step at d = 8). Blocks in use are never shared. At most
:func:`cache_limit` bytes are kept (1 GiB unless set). Tensors on a GPU use the device's own caching
allocator and are not affected.

    >>> import torch, diffops
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
    ...                           torch.nn.Tanh(), torch.nn.Linear(64, 1)).double()
    >>> u, lap = diffops.laplacian(net, torch.randn(4096, 3, dtype=torch.float64))  # (4096, 3, 64) tangents
    >>> del u, lap
    >>> diffops.cached_bytes() > 0
    True
    >>> diffops.empty_cache(); diffops.cached_bytes()
    0
"""

import torch

_ops = torch.ops.diffops


def cached_bytes() -> int:
    """The bytes the cache holds now, in blocks that no tensor uses."""
    return _ops.cached_bytes()


def empty_cache() -> None:
    """Frees every cached block, as ``torch.cuda.empty_cache`` does for a GPU."""
    _ops.empty_cache()


def cache_limit() -> int:
    """The most bytes the cache keeps."""
    return _ops.cache_limit()


def set_cache_limit(bytes: int) -> int:
    """Sets the most bytes the cache keeps (``0``: keep none, free each block as its tensor dies) and
    frees the cached blocks if they are over it. Returns the previous limit."""
    return _ops.set_cache_limit(bytes)
