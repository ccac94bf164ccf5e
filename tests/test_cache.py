"""The forward propagation's CPU memory cache (diffops.cached_bytes, empty_cache, set_cache_limit):
blocks come back when their tensors die and serve the next call of the same shape, never a live
tensor, and change no result."""

import doctest

import pytest
import torch

import diffops
import diffops._cache


@pytest.fixture
def cache():
    """The cache at its default limit and empty, restored afterwards."""
    limit = diffops.cache_limit()
    diffops.empty_cache()
    yield
    diffops.set_cache_limit(limit)
    diffops.empty_cache()


def field(d=8, width=64):
    torch.manual_seed(0)  # tangents (N, 8, 64) in float64: 4 MiB at N = 1024, cached
    return torch.nn.Sequential(torch.nn.Linear(d, width), torch.nn.Tanh(), torch.nn.Linear(width, width), torch.nn.Tanh(),
                               torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, d)).double()


def step(net, x, op):
    """A training step: the operator, a loss on it, the parameters' gradients."""
    value, out = getattr(diffops, op)(net, x)
    out = out if op == "divergence" else out[:, 0]
    grads = torch.autograd.grad(out.pow(2).mean(), list(net.parameters()), materialize_grads=True)
    return out.detach(), grads


@pytest.mark.parametrize("op", ["laplacian", "divergence"])
def test_blocks_are_reused_and_change_no_result(cache, op):
    net = field()
    x = torch.randn(1024, 8, dtype=torch.float64)
    diffops.set_cache_limit(0)  # the reference: nothing cached
    want, want_grads = step(net, x, op)
    assert diffops.cached_bytes() == 0
    diffops.set_cache_limit(1 << 30)
    sizes = []
    for _ in range(3):
        got, grads = step(net, x, op)
        sizes.append(diffops.cached_bytes())
        assert torch.equal(got, want)
        assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
    # the first step fills the cache (a tangent tensor alone is 4 MiB); the next ones take the same
    # blocks again and leave the same set behind
    assert sizes[0] >= 4 << 20 and sizes[1] == sizes[0] and sizes[2] == sizes[0]
    with torch.no_grad():  # eval takes blocks from the cache too, and returns them
        out = getattr(diffops, op)(net, x)[1]
        assert torch.equal(out if op == "divergence" else out[:, 0], want)
    assert diffops.cached_bytes() == sizes[0]


def test_live_tensors_keep_their_blocks(cache):
    """A result whose graph holds tangent tensors keeps them: a second call with other points while
    the first graph is alive takes other blocks, and the first graph's gradients stay right."""
    net = field()
    x1, x2 = torch.randn(2, 1024, 8, dtype=torch.float64)
    _, lap1 = diffops.laplacian(net, x1)  # its graph holds (1024, 8, 64) tangents
    before = lap1.detach().clone()
    _, lap2 = diffops.laplacian(net, x2)
    lap2.sum().backward()  # frees the second graph's blocks into the cache
    del lap2
    held = diffops.cached_bytes()
    assert held > 0
    _, lap3 = diffops.laplacian(net, x2)  # may take those blocks, never the first graph's
    assert torch.equal(lap1.detach(), before)
    params = list(net.parameters())
    got = torch.autograd.grad(lap1.sum(), params, materialize_grads=True)
    diffops.set_cache_limit(0)
    want = torch.autograd.grad(diffops.laplacian(net, x1)[1].sum(), params, materialize_grads=True)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    del lap3


def test_limit_and_empty(cache):
    net = field()
    x = torch.randn(1024, 8, dtype=torch.float64)
    step(net, x, "laplacian")
    cached = diffops.cached_bytes()
    assert cached > 0
    assert diffops.set_cache_limit(cached) == 1 << 30  # the default, returned as the previous limit
    assert diffops.cached_bytes() == cached  # within the new limit: kept
    assert diffops.set_cache_limit(cached - 1) == cached  # over it: freed
    assert diffops.cached_bytes() == 0
    diffops.set_cache_limit(1 << 30)
    step(net, x, "laplacian")
    assert diffops.cached_bytes() == cached
    diffops.empty_cache()
    assert diffops.cached_bytes() == 0
    small = torch.randn(16, 8, dtype=torch.float64)  # tangents of 64 KiB: below 1 MiB, never cached
    step(net, small, "laplacian")
    assert diffops.cached_bytes() == 0
    with pytest.raises(ValueError, match=r"^set_cache_limit: bytes must be >= 0, got -1"):
        diffops.set_cache_limit(-1)


def test_docstring_example(cache):
    result = doctest.testmod(diffops._cache)
    assert result.attempted >= 4 and result.failed == 0


def test_threads_share_the_cache_safely(cache):
    """Training steps on four Python threads at once (the operators release the GIL, so they run
    concurrently in C++), with blocks taken and given back by every thread: every result equals the
    single-threaded one, bit for bit."""
    import concurrent.futures

    net = field()
    xs = list(torch.randn(4, 512, 8, dtype=torch.float64))  # tangents (512, 8, 64): 2 MiB, cached
    want = [step(net, x, "laplacian") for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda x: step(net, x, "laplacian"), xs))
            for (out, grads), (out_w, grads_w) in zip(got, want):
                assert torch.equal(out, out_w)
                assert all(torch.equal(g, w) for g, w in zip(grads, grads_w))
    assert diffops.cached_bytes() > 0
