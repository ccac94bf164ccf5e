"""method=: "loop" is the exact default; "batched" agrees with it to float64 round-off and trains the
same; explain() reports the strategy and the reverse passes that really run; "hutchinson" is
reproducible with a seeded generator, exact when the Jacobian is diagonal, and unbiased: the mean of
k probes lies within 5 standard deviations (computed from the exact Hessian/Jacobian) of the exact
trace."""

import pytest
import torch

import diffops


def mlp(d_in, d_out, device):
    return torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Softplus(), torch.nn.Linear(16, d_out)).double().to(device)


def test_loop_and_auto_are_the_exact_default(device):
    x = torch.randn(10, 3, dtype=torch.float64, device=device, requires_grad=True)
    u, v = mlp(3, 1, device)(x)[:, 0], mlp(3, 3, device)(x)
    for method in ("auto", "loop"):
        assert torch.equal(diffops.laplacian(u, x, method=method), diffops.laplacian(u, x))
        assert torch.equal(diffops.divergence(v, x, method=method), diffops.divergence(v, x))


def test_hutchinson_is_reproducible_with_a_generator(device):
    x = torch.randn(10, 3, dtype=torch.float64, device=device, requires_grad=True)
    u = mlp(3, 1, device)(x)[:, 0]
    g = lambda seed: torch.Generator(device=device).manual_seed(seed)  # noqa: E731
    a = diffops.laplacian(u, x, method="hutchinson", samples=3, generator=g(7))
    b = diffops.laplacian(u, x, method="hutchinson", samples=3, generator=g(7))
    c = diffops.laplacian(u, x, method="hutchinson", samples=3, generator=g(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_hutchinson_is_exact_for_a_diagonal_jacobian(device):
    x = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    gen = torch.Generator(device=device).manual_seed(0)
    v = torch.sin(x) * 3 + x**3  # elementwise: J is diagonal
    torch.testing.assert_close(diffops.divergence(v, x, method="hutchinson", generator=gen),
                               diffops.divergence(v, x), rtol=1e-14, atol=1e-14)
    u = (torch.sin(x) + x**4).sum(-1)  # separable: the Hessian is diagonal
    torch.testing.assert_close(diffops.laplacian(u, x, method="hutchinson", generator=gen),
                               diffops.laplacian(u, x), rtol=1e-14, atol=1e-14)


def test_hutchinson_laplacian_is_unbiased(device):
    x = torch.randn(8, 3, dtype=torch.float64, device=device, requires_grad=True)
    u = mlp(3, 1, device)(x)[:, 0]
    H = diffops.hessian(u, x)
    exact = H.diagonal(dim1=-2, dim2=-1).sum(-1)
    k = 4000
    variance = 2 * (H.pow(2).sum((-2, -1)) - H.diagonal(dim1=-2, dim2=-1).pow(2).sum(-1))  # one probe
    estimate = diffops.laplacian(u, x, method="hutchinson", samples=k,
                                 generator=torch.Generator(device=device).manual_seed(1), create_graph=False)
    assert torch.all((estimate - exact).abs() <= 5 * (variance / k).sqrt() + 1e-12)
    assert not torch.equal(estimate, exact)  # it is an estimate


def test_hutchinson_divergence_is_unbiased_and_trains(device):
    net = mlp(3, 3, device)
    x = torch.randn(8, 3, dtype=torch.float64, device=device, requires_grad=True)
    v = net(x)
    J = diffops.jacobian(v, x)
    exact = J.diagonal(dim1=-2, dim2=-1).sum(-1)
    offdiag = J * (1 - torch.eye(3, dtype=J.dtype, device=device))
    variance = (offdiag * (offdiag + offdiag.transpose(-2, -1))).sum((-2, -1))
    k = 4000
    estimate = diffops.divergence(v, x, method="hutchinson", samples=k,
                                  generator=torch.Generator(device=device).manual_seed(2))
    assert torch.all((estimate - exact).abs() <= 5 * (variance / k).sqrt() + 1e-12)
    estimate.sum().backward()  # keeps its graph: a CNF trains on it
    *weights, out_bias = net.parameters()  # a divergence does not depend on the output bias
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights) and out_bias.grad is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="forward"), r"^laplacian: method must be one of 'auto', 'loop', 'batched', 'hutchinson', got 'forward'"),
        (dict(method="hutchinson", samples=0), r"^laplacian: samples must be at least 1, got 0"),
        (dict(samples=4), r"^laplacian: samples and generator are only used by method='hutchinson'"),
        (dict(generator=torch.Generator()), r"^laplacian: samples and generator are only used by method='hutchinson'"),
    ],
)
def test_method_errors(kwargs, message):
    x = torch.randn(4, 2, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        diffops.laplacian(x.pow(2).sum(-1), x, **kwargs)


SCALAR_OPS = ["gradient", "laplacian", "hessian"]
VECTOR_OPS = ["jacobian", "divergence", "curl"]


def fields(device):
    x = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    net, field = mlp(3, 2, device), mlp(3, 3, device)
    return x, net, field, net(x), field(x)


@pytest.mark.parametrize("op", SCALAR_OPS + VECTOR_OPS)
def test_batched_agrees_with_loop_and_trains(op, device):
    x, net, field, u, v = fields(device)
    model, w = (net, u) if op in SCALAR_OPS else (field, v)
    operator = getattr(diffops, op)
    loop, batched = operator(w, x, method="loop"), operator(w, x, method="batched")
    torch.testing.assert_close(batched, loop, rtol=1e-12, atol=1e-14)
    params = list(model.parameters())
    got = torch.autograd.grad(batched.square().sum(), params, retain_graph=True, allow_unused=True,
                              materialize_grads=True)
    want = torch.autograd.grad(loop.square().sum(), params, allow_unused=True, materialize_grads=True)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


class CountPasses(torch.autograd.Function):
    """Identity on x whose backward counts the reverse passes that reach x."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        CountPasses.calls += 1
        return grad


@pytest.mark.parametrize("op", SCALAR_OPS + VECTOR_OPS)
@pytest.mark.parametrize("method", ["auto", "loop", "batched"])
def test_explain_counts_the_passes_that_run(op, method):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    xc = CountPasses.apply(x)
    w = mlp(3, 2, "cpu")(xc) if op in SCALAR_OPS else mlp(3, 3, "cpu")(xc)
    plan = diffops.explain(op, w, x, method=method)
    CountPasses.calls = 0
    getattr(diffops, op)(w, x, method=method)
    assert plan.passes == CountPasses.calls
    assert plan.method == ("loop" if method == "auto" else method)
    c = 2 if op in SCALAR_OPS else 3
    second_order = {"laplacian": c * (1 + 3), "hessian": c * (1 + 3), "divergence": 3}
    assert plan.products == second_order.get(op, c)


def test_explain_hutchinson_and_structure_check():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    u = mlp(4, 1, "cpu")(x)
    assert diffops.explain("laplacian", u, x, method="hutchinson", samples=3)[:3] == ("hutchinson", 4, 4)
    assert diffops.explain("laplacian", u, x, check_structure=True)[:3] == ("loop", 7, 7)
    with pytest.raises(ValueError, match=r"^explain: op must be one of gradient, jacobian"):
        diffops.explain("integral", u, x)
    with pytest.raises(ValueError, match=r"^divergence: v has shape \[5, 1\] and x has shape \[5, 4\]"):
        diffops.explain("divergence", u, x)
    with pytest.raises(ValueError, match=r"^gradient: method must be one of 'auto', 'loop' with separate"):
        diffops.gradient(x[:, :1], (x[:, :1],), method="batched")
