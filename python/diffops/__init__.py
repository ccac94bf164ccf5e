"""diffops: differential operators computed exactly with PyTorch autograd.

Every operator follows one convention. ``x`` holds points, shape ``batch + (d,)`` (``batch`` may be
empty: one point). A field ``u`` computed from ``x`` has shape ``batch + comp`` (``comp = ()`` for a
scalar field, ``(m,)`` for a vector field, ...). Points are independent: ``u[n]`` depends on ``x[n]``
only, which is what lets one autograd product serve every point at once. Results keep ``u``'s shape
and append derivative axes; ``create_graph=True`` (the default) keeps them differentiable.

The operators run in C++ (``libdiffops``, usable from C++ through the CMake package at
:data:`cmake_prefix_path`) and are registered as ``torch.ops.diffops.*``.
"""

import os as _os

import torch as _torch

from ._build_info import TORCH_VERSION as _BUILT_WITH
from ._build_info import VERSION as __version__

if _torch.__version__ != _BUILT_WITH:
    raise ImportError(
        f"diffops {__version__} was compiled against torch {_BUILT_WITH} but torch "
        f"{_torch.__version__} is installed; its C++ core calls version-specific LibTorch symbols. "
        "Rebuild it against this torch: pip install --no-build-isolation --force-reinstall <diffops source>"
    )

from . import _C  # noqa: E402,F401  (registers torch.ops.diffops)
from ._cache import cache_limit, cached_bytes, empty_cache, set_cache_limit  # noqa: E402
from ._derivatives import Derivatives  # noqa: E402
from ._function import Plan, Sin  # noqa: E402
from ._ops import (  # noqa: E402
    curl,
    derivative,
    directional_derivative,
    divergence,
    explain,
    gradient,
    hessian,
    jacobian,
    laplacian,
    normal_derivative,
    partial,
)

#: Prefix for CMake's ``find_package(diffops)``, as ``torch.utils.cmake_prefix_path`` is for Torch.
cmake_prefix_path: str = _os.path.join(_os.path.dirname(__file__), "share", "cmake")

__all__ = [
    "Derivatives",
    "Plan",
    "Sin",
    "cache_limit",
    "cached_bytes",
    "cmake_prefix_path",
    "curl",
    "derivative",
    "directional_derivative",
    "divergence",
    "empty_cache",
    "explain",
    "gradient",
    "hessian",
    "jacobian",
    "laplacian",
    "normal_derivative",
    "partial",
    "set_cache_limit",
]
