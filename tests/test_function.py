"""The function form op(f, x) -> (f(x), D f(x)) for laplacian, hessian, divergence and jacobian: the
C++ forward propagation for MLPs and forward-over-reverse for any callable equal the graph form for
every supported activation (float64 round-off), train the same, and anything else falls back to the
graph form."""

import pytest
import torch

import diffops

ACTIVATIONS = {
    "tanh": torch.nn.Tanh,
    "sin": diffops.Sin,
    "sigmoid": torch.nn.Sigmoid,
    "softplus": torch.nn.Softplus,
    "silu": torch.nn.SiLU,
    "gelu": torch.nn.GELU,
}
CLOSE = dict(rtol=1e-10, atol=1e-12)


def mlp(act, d=3, out=2, width=16, device="cpu"):
    return torch.nn.Sequential(torch.nn.Linear(d, width), act(), torch.nn.Sequential(torch.nn.Linear(width, width), act()),
                               torch.nn.Linear(width, out)).double().to(device)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_laplacian_equals_the_graph_form(name, device):
    net = mlp(ACTIVATIONS[name], device=device)
    x = 3 * torch.randn(4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)  # batch (4, 5)
    value, lap = diffops.laplacian(net, x)
    u = net(x)
    assert value.shape == lap.shape == u.shape == (4, 5, 2)
    torch.testing.assert_close(value, u, **CLOSE)
    torch.testing.assert_close(lap, diffops.laplacian(u, x), **CLOSE)
    assert torch.equal(diffops.laplacian(net, x, method="forward")[1], lap)


@pytest.mark.parametrize("name", ["tanh", "softplus"])
def test_forward_laplacian_trains_like_the_graph_form(name, device):
    net = mlp(ACTIVATIONS[name], d=2, out=1, device=device)
    x = torch.rand(64, 2, dtype=torch.float64, device=device) * 30 - 15  # softplus: both sides of threshold
    params = list(net.parameters())

    value, lap = diffops.laplacian(net, x)  # no requires_grad needed on x
    got = torch.autograd.grad(((lap + 1) ** 2).mean() + value.pow(2).mean(), params)
    xg = x.clone().requires_grad_()
    u = net(xg)
    want = torch.autograd.grad(((diffops.laplacian(u, xg) + 1) ** 2).mean() + u.pow(2).mean(), params,
                               materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **CLOSE)


class Residual(torch.nn.Module):  # not a Sequential: the graph form is used
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(3, 3)

    def forward(self, x):
        return (x + torch.tanh(self.inner(x))).pow(2).sum(-1, keepdim=True)


@pytest.mark.parametrize(
    "model",
    [Residual(), torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Softplus(beta=2), torch.nn.Linear(8, 1)),
     torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(8, 1)),
     torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))],
    ids=["custom", "softplus_beta2", "gelu_tanh", "relu"],
)
def test_other_models_fall_back_to_the_graph_form(model):
    model = model.double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    value, lap = diffops.laplacian(model, x)
    assert torch.equal(value, model(x))
    assert torch.equal(lap, diffops.laplacian(model(x), x))
    with pytest.raises(ValueError, match=r"^laplacian: method='forward' needs f to be a torch\.nn\.Sequential"):
        diffops.laplacian(model, x, method="forward")
    est = diffops.laplacian(model, x, method="hutchinson", samples=2, generator=torch.Generator().manual_seed(0))[1]
    assert est.shape == lap.shape


def test_forward_laplacian_errors_name_the_step():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))  # float32
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^laplacian: step 0 \(linear\): weight is Float on cpu but x is Double"):
        diffops.laplacian(net, x)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_hessian_jacobian_divergence_equal_the_graph_form(name, device):
    net = mlp(ACTIVATIONS[name], device=device)
    field = mlp(ACTIVATIONS[name], out=3, device=device)  # a vector field in d = 3
    x = 3 * torch.randn(4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    u, v = net(x), field(x)
    for op, model, graph_field, shape in [("hessian", net, u, (4, 5, 2, 3, 3)), ("jacobian", net, u, (4, 5, 2, 3)),
                                          ("divergence", field, v, (4, 5))]:
        operator = getattr(diffops, op)
        value, got = operator(model, x, method="forward")
        assert got.shape == shape and diffops.explain(op, model, x, method="forward").method == "forward"
        # "auto": forward for the divergence and the Hessian; the reverse loop for this Jacobian
        # (3 tangents forward against 2 reverse passes)
        assert diffops.explain(op, model, x).method == ("loop" if op == "jacobian" else "forward")
        torch.testing.assert_close(value, model(x), **CLOSE)
        torch.testing.assert_close(got, operator(graph_field, x), **CLOSE)


@pytest.mark.parametrize("op", ["laplacian", "divergence", "jacobian", "hessian"])
@pytest.mark.parametrize("d,width", [(24, 8), (8, 8), (3, 16)])
def test_forward_in_the_reduced_basis_equals_the_graph_form_and_trains(op, d, width, device):
    """With a first layer narrower than the input (width < d), the tangents are carried as the R of
    W₁ᵀ = QR (width of them, not d): values, gradients to the weights and to x equal the graph
    form's; explain reports the tangents carried."""
    torch.manual_seed(1)
    out = d if op == "divergence" else 2
    net = torch.nn.Sequential(torch.nn.Linear(d, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                              torch.nn.SiLU(), torch.nn.Linear(width, out)).double().to(device)
    x = torch.randn(6, d, dtype=torch.float64, device=device, requires_grad=True)
    operator = getattr(diffops, op)
    value, got = operator(net, x, method="forward")
    want = operator(net(x), x)
    torch.testing.assert_close(got, want, **CLOSE)
    wrt = list(net.parameters()) + [x]
    grads = [torch.autograd.grad(r.pow(2).sum(), wrt, allow_unused=True, materialize_grads=True) for r in (got, want)]
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, **CLOSE)
    tangents = min(d, width)
    extra = {"laplacian": 1, "hessian": out}.get(op, 0)  # the Hessian: one adjoint per output
    plan = diffops.explain(op, net, x, method="forward")
    assert plan.products == tangents + extra
    assert (f"{tangents} tangents for d = {d}" in plan.reason) == (tangents < d)


def test_forward_laplacian_of_models_without_a_first_linear_or_any_activation():
    """An activation first (tangents start as the identity), a purely affine model (Laplacian 0,
    exactly), and two activations in a row."""
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for net in [torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(3, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2)),
                torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Tanh(), torch.nn.Linear(4, 1))]:
        net = net.double()
        for op in ("laplacian", "jacobian", "hessian"):
            operator = getattr(diffops, op)
            torch.testing.assert_close(operator(net, x, method="forward")[1], operator(net(x), x), **CLOSE)
    # fields whose last step is an activation (no trace shortcut for the divergence), with and without
    # the reduced basis (d = 6 into width 4), and of a purely affine field (its trace, exactly)
    for d, width in [(3, 8), (6, 4)]:
        field = torch.nn.Sequential(torch.nn.Linear(d, width), torch.nn.Tanh(), torch.nn.Linear(width, d),
                                    torch.nn.Sigmoid()).double()
        p = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
        for op in ("divergence", "jacobian", "laplacian", "hessian"):
            operator = getattr(diffops, op)
            torch.testing.assert_close(operator(field, p, method="forward")[1], operator(field(p), p), **CLOSE)
    linear = torch.nn.Linear(3, 3).double()
    value, div = diffops.divergence(torch.nn.Sequential(linear), x)
    torch.testing.assert_close(div, linear.weight.trace().expand(5), **CLOSE)
    empty = torch.nn.Sequential()  # the identity map: J = I, divergence d, zero curvature
    assert torch.equal(diffops.jacobian(empty, x, method="forward")[1], torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    assert torch.equal(diffops.divergence(empty, x)[1], torch.full((5,), 3.0, dtype=torch.float64))
    affine = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).double()
    value, lap = diffops.laplacian(affine, x)
    assert torch.equal(value, affine(x)) and torch.equal(lap, torch.zeros(5, 2, dtype=torch.float64))


@pytest.mark.parametrize("op", ["laplacian", "hessian"])
@pytest.mark.parametrize("model", ["mlp", "custom"])
def test_forward_over_reverse_equals_the_graph_form_and_trains(op, model, device):
    net = mlp(torch.nn.Tanh, d=3, out=2, device=device) if model == "mlp" else Residual().double().to(device)
    operator = getattr(diffops, op)
    x = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=True)
    value, got = operator(net, x, method="forward-over-reverse")
    u = net(x)
    want = operator(u, x)
    torch.testing.assert_close(value, u, **CLOSE)
    torch.testing.assert_close(got, want, **CLOSE)
    params = list(net.parameters())
    grads = torch.autograd.grad(got.square().sum() + value.sum(), params)
    expected = torch.autograd.grad(want.square().sum() + u.sum(), params, materialize_grads=True)
    for g, w in zip(grads, expected):
        torch.testing.assert_close(g, w, **CLOSE)
    x_plain = x.detach()  # forward-over-reverse needs no requires_grad on x
    torch.testing.assert_close(operator(net, x_plain, method="forward-over-reverse")[1], want.detach(), **CLOSE)
    one = x_plain[:1]  # a single point: the d stacked copies must not alias
    torch.testing.assert_close(operator(net, one, method="forward-over-reverse")[1], want.detach()[:1], **CLOSE)


def test_forward_over_reverse_of_a_linear_map_is_exactly_zero():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    value, hess = diffops.hessian(lambda p: p @ w, x, method="forward-over-reverse")
    assert torch.equal(value, x @ w) and torch.equal(hess, torch.zeros(5, 2, 2, 2, dtype=torch.float64))


def test_function_form_errors():
    x = torch.randn(4, 3, dtype=torch.float64)
    net = mlp(torch.nn.Tanh, out=2)
    with pytest.raises(ValueError, match=r"^divergence: the model maps d = 3 coordinates to 2 components"):
        diffops.divergence(net, x, method="forward")
    with pytest.raises(ValueError, match=r"^jacobian: method 'forward-over-reverse' is for laplacian and hessian"):
        diffops.jacobian(net, x, method="forward-over-reverse")
    with pytest.raises(ValueError, match=r"^laplacian: f must map points of shape \(P, d\) to a floating field"):
        diffops.laplacian(lambda p: p.sum(), x, method="forward-over-reverse")
    with pytest.raises(RuntimeError, match=r"^laplacian: f's output has no graph to x"):
        diffops.laplacian(lambda p: p.detach().sum(-1), x, method="forward-over-reverse")
    with pytest.raises(ValueError, match=r"^hessian: method='forward' needs f to be a torch\.nn\.Sequential"):
        diffops.hessian(Residual().double(), x, method="forward")


@pytest.mark.parametrize("linears", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("d,width,first", [(3, 5, "linear"), (2, 5, "linear"), (7, 4, "linear"), (3, 5, "activation")])
def test_forward_divergence_meets_adjoints_at_every_depth(linears, d, width, first, device):
    """The forward divergence carries tangents through the first half of the hidden Linear steps and
    adjoints (from the last Linear down) through the rest, and takes tr(B F) where they meet: for 0 to
    4 hidden Linear steps, with the reduced basis (d = 7 into width 4) and with an activation first,
    with two hidden Linears both ways of meeting (d = 3 into width 5 and the reduced basis: the
    trilinear form; d = 2: the products),
    the divergence and its gradients to the weights and to x equal the graph form's; the second
    derivatives too (gradgradcheck on the deepest)."""
    torch.manual_seed(linears)
    layers = [torch.nn.Sigmoid()] if first == "activation" else []
    sizes = [d] + [width] * (linears - 1) + [d]
    acts = [torch.nn.Tanh, torch.nn.SiLU, diffops.Sin]
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if k + 2 < len(sizes):
            layers.append(acts[k % len(acts)]())
    net = torch.nn.Sequential(*layers).double().to(device)
    x = torch.randn(6, d, dtype=torch.float64, device=device, requires_grad=True)
    value, got = diffops.divergence(net, x, method="forward")
    want = diffops.divergence(net(x), x)
    torch.testing.assert_close(got, want, **CLOSE)
    torch.testing.assert_close(value, net(x), **CLOSE)
    wrt = list(net.parameters()) + [x]
    grads = [torch.autograd.grad(r.sin().sum(), wrt, materialize_grads=True) for r in (got, want)]
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, **CLOSE)
    if linears == 6 and first == "linear" and x.is_cpu:
        module = ForwardOperator("divergence", net)
        names = [name for name, _ in module.named_parameters()]

        def forward(x, *params):
            return torch.func.functional_call(module, dict(zip(names, params)), (x,))

        inputs = (x.detach()[:3].requires_grad_(), *[p.detach().clone().requires_grad_() for p in net.parameters()])
        assert torch.autograd.gradgradcheck(forward, inputs)


@pytest.mark.parametrize("d", [24, 10, 6])  # 20 tangents of width 20: the trilinear form; 10 (the tie), 6: products
def test_forward_divergence_both_ways_of_meeting_equal_torch_func(d, device):
    """Three hidden layers of width 20 at 64 points: the tangents and the adjoints both stay deferred
    (a (N, w) @ (w, r·w) product each, never formed). With more than w/2 = 10 tangents they meet in
    the trilinear form Σ a_j b_m s_l C[j, m, l] (C++ MeetCube), otherwise by the adjoints' product
    (MeetTrace). Either way the divergence, the value and the gradients of a loss to the weights
    and to x equal torch.func's vmap(jacrev) trace to round-off, in float64."""
    torch.manual_seed(d)
    w = 20  # the CPU loop's 8-wide blocks and its tail
    net = torch.nn.Sequential(torch.nn.Linear(d, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.SiLU(),
                              torch.nn.Linear(w, w), torch.nn.Tanh(), torch.nn.Linear(w, d)).double().to(device)
    x = torch.randn(64, d, dtype=torch.float64, device=device, requires_grad=True)
    params = dict(net.named_parameters())

    def reference(p):
        jac = torch.func.jacrev(lambda q: torch.func.functional_call(net, p, (q,)))
        return torch.func.vmap(lambda q: jac(q).trace())(x)

    value, got = diffops.divergence(net, x)
    want = reference(params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, net(x), **CLOSE)
    wrt = [x, *params.values()]
    for g, w_ in zip(torch.autograd.grad((got.sin() * value[:, 0]).sum(), wrt),
                     torch.autograd.grad((want.sin() * net(x)[:, 0]).sum(), wrt)):
        torch.testing.assert_close(g, w_, rtol=1e-11, atol=1e-12)


class ForwardOperator(torch.nn.Module):  # lets functional_call swap the MLP's weights
    def __init__(self, op, net):
        super().__init__()
        self.op, self.net = op, net

    def forward(self, x):
        return getattr(diffops, self.op)(self.net, x, method="forward")[1]


GRADCHECK_NETS = {  # d, layers: plain, two activations in a row (a pending scale), reduced basis
    # the divergence's two deferred sides meet in the trilinear form (C++ MeetCube: 3 tangents,
    # widths 5, 5·5 < 3·(5 + 5) multiply-adds) from 5 points on
    "plain": (3, lambda: [torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.Tanh(),
                          torch.nn.Linear(5, 5), torch.nn.SiLU(), torch.nn.Linear(5, 3)]),
    "stacked activations": (3, lambda: [torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4), torch.nn.Sigmoid(),
                                        torch.nn.GELU(), torch.nn.Linear(4, 3)]),
    "reduced basis": (5, lambda: [torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                  torch.nn.Linear(4, 4), torch.nn.Softplus(), torch.nn.Linear(4, 5)]),
    # 2 tangents, widths 5: the deferred sides meet by products (MeetTrace, 5·5 > 2·(5 + 5))
    "few tangents": (2, lambda: [torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.Sigmoid(),
                                 torch.nn.Linear(5, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)]),
    # one tanh whose σ' scales nothing: its backward gets g_t and g_t″ without g_t′ (the Laplacian)
    "one hidden layer": (3, lambda: [torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)]),
    # the divergence meets formed tangents (two hidden Linears) and deferred adjoints (one)
    "three hidden Linears": (3, lambda: [torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4), torch.nn.SiLU(),
                                         torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4), torch.nn.Sigmoid(),
                                         torch.nn.Linear(4, 3)]),
}


# The shared first-layer tangents become per-point tangents in one of two ways (C++
# Tangents::linear): with fewer points than the Linear's input units, the core scaled per point and
# multiplied; with as many or more, one (N, w) @ (w, r·w') product against a shared P. The
# GRADCHECK_NETS are 3 to 5 units wide: 2 points take the first way everywhere, 6 the second.
POINTS = {"fewer points than units": 2, "more points than units": 6}


@pytest.mark.parametrize("op", ["laplacian", "divergence", "jacobian", "hessian"])
@pytest.mark.parametrize("net_name", GRADCHECK_NETS)
@pytest.mark.parametrize("points", POINTS)
def test_forward_propagation_passes_gradcheck_and_gradgradcheck(op, net_name, points):
    """The hand-written backwards of the tangents' products (C++ TangentDot: the squares and the
    divergence's trace; ScaledProduct: a pending σ' scale inside the next Linear) and the Hessian's
    adjoint pass are checked against finite differences, and so are their own derivatives
    (second-order training)."""
    torch.manual_seed(0)
    d, layers = GRADCHECK_NETS[net_name]
    module = ForwardOperator(op, torch.nn.Sequential(*layers()).double())
    names = [name for name, _ in module.named_parameters()]
    x = torch.randn(POINTS[points], d, dtype=torch.float64, requires_grad=True)

    def forward(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    inputs = (x, *[p.detach().clone().requires_grad_() for p in module.parameters()])
    assert torch.autograd.gradcheck(forward, inputs)
    assert torch.autograd.gradgradcheck(forward, inputs)


@pytest.mark.parametrize("op", ["laplacian", "divergence", "jacobian", "hessian"])
@pytest.mark.parametrize("net_name", GRADCHECK_NETS)
@pytest.mark.parametrize("points", POINTS)
def test_recorded_backward_equals_the_plain_one(op, net_name, points):
    """The hand-written backwards (tanh's derivatives, TangentDot, ScaledProduct, SharedProduct) have
    a plain branch (no graph: in place, cached blocks) and a recorded one (create_graph: out of place
    ATen ops, differentiated again by gradgradcheck). gradgradcheck only checks the recorded branch
    against itself, so here it must give the plain branch's gradients."""
    torch.manual_seed(1)
    d, layers = GRADCHECK_NETS[net_name]
    net = torch.nn.Sequential(*layers()).double()
    x = torch.randn(POINTS[points], d, dtype=torch.float64, requires_grad=True)
    wrt = [x, *net.parameters()]
    grads = []
    for create_graph in (False, True):
        out = getattr(diffops, op)(net, x, method="forward")[1]
        grads.append(torch.autograd.grad(out.sin().sum(), wrt, create_graph=create_graph, materialize_grads=True))
    assert grads[1][0].requires_grad and not grads[0][0].requires_grad
    for plain, recorded in zip(*grads):
        torch.testing.assert_close(recorded, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("net_name", GRADCHECK_NETS)
def test_a_residual_of_the_value_and_the_laplacian_trains_like_torch_func(net_name):
    """A PDE residual uses the value u and Δu from one call, so tanh's node gets g_t and g_t″ (and
    g_t′ where σ' scales tangents onward); its gradients, plain and recorded, match torch.func."""
    torch.manual_seed(2)
    d, layers = GRADCHECK_NETS[net_name]
    net = torch.nn.Sequential(*layers()).double()
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    wrt = [x, *net.parameters()]

    def reference(params):
        def field(z):
            return torch.func.functional_call(net, params, (z,))

        lap = torch.func.vmap(lambda z: torch.func.hessian(field)(z).diagonal(dim1=-2, dim2=-1).sum(-1))(x)
        return field(x) + lap

    want = torch.autograd.grad(reference(dict(net.named_parameters())).sin().sum(), wrt, materialize_grads=True)
    for create_graph in (False, True):
        u, lap = diffops.laplacian(net, x, method="forward")
        got = torch.autograd.grad((u + lap).sin().sum(), wrt, create_graph=create_graph, materialize_grads=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_the_python_auto_rule_mirrors_the_cpp_one():
    """function_form decides "auto" in Python (torch.compile cannot trace an op returning a bool);
    it must agree with diffops::forward_is_auto on every operator and shape of model."""
    from diffops._function import _forward_is_auto, mlp_steps

    def net(d, widths, first="linear"):
        layers = [torch.nn.Tanh()] if first != "linear" else []
        for a, b in zip([d] + widths, widths):
            layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
        return torch.nn.Sequential(*layers[:-1])

    cases = [(3, [16, 2]), (3, [16, 3]), (3, [16, 8]), (24, [8, 8, 24]), (24, [8, 4]), (24, [30, 4]), (2, [2])]
    for d, widths in cases:
        for first in ("linear", "activation"):
            steps = mlp_steps(net(d, widths, first))
            kinds, weights, _ = zip(*steps)
            x = torch.randn(2, d)
            for op in ("laplacian", "divergence", "jacobian", "hessian"):
                want = torch.ops.diffops.forward_is_auto(op, d, list(weights), list(kinds))
                assert _forward_is_auto(op, x, steps) == want, (op, d, widths, first)
    assert not _forward_is_auto("jacobian", torch.randn(4, 3), mlp_steps(net(3, [16, 2])))  # 3 tangents > 2 outputs
    assert _forward_is_auto("jacobian", torch.randn(4, 3), mlp_steps(net(3, [16, 3])))


def test_function_form_names_a_point_tensor_without_a_coordinate_axis():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    scalar = torch.tensor(1.0, dtype=torch.float64)
    for call in (lambda: diffops.laplacian(net, scalar), lambda: diffops.divergence(net, scalar),
                 lambda: diffops.explain("laplacian", net, scalar)):
        with pytest.raises(ValueError, match=r"^(laplacian|divergence): x must have shape batch \+ \(d,\)"):
            call()


FUNCTION_FORM_CASES = [  # (op, output width, method): the forward propagation and every fallback
    ("laplacian", 2, "auto"), ("laplacian", 2, "loop"), ("laplacian", 2, "batched"),
    ("laplacian", 2, "forward-over-reverse"), ("divergence", 3, "auto"), ("divergence", 3, "loop"),
    ("jacobian", 2, "auto"), ("jacobian", 4, "auto"), ("hessian", 1, "auto"), ("hessian", 1, "forward"),
    ("hessian", 1, "forward-over-reverse"),
]


@pytest.mark.parametrize("op,out,method", FUNCTION_FORM_CASES)
def test_function_form_needs_no_requires_grad_and_works_under_no_grad(op, out, method):
    """x need not require grad in the function form (the graph fallbacks differentiate an alias of
    it), and under no_grad every method returns the same numbers, detached; the forward propagation
    then updates its tangents in place, which must not change a bit."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.SiLU(),
                              torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, out)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    operator = getattr(diffops, op)
    u_ref, ref = operator(net, x.clone().requires_grad_(), method=method)
    u, got = operator(net, x, method=method)  # x without requires_grad
    plan = diffops.explain(op, net, x.clone().requires_grad_(), method=method)
    assert diffops.explain(op, net, x, method=method) == plan  # explain describes that call too
    with torch.no_grad():
        assert diffops.explain(op, net, x, method=method) == plan
    assert torch.equal(u, u_ref) and torch.equal(got, ref)
    assert got.requires_grad and not x.requires_grad  # still trains the weights
    (g_ref,) = torch.autograd.grad(ref.pow(2).sum(), net[0].weight)
    (g,) = torch.autograd.grad(got.pow(2).sum(), net[0].weight)
    assert torch.equal(g, g_ref)
    with torch.no_grad():
        u_ng, got_ng = operator(net, x, method=method)
        _, got_ng_x = operator(net, x.clone().requires_grad_(), method=method)
    assert torch.equal(u_ng, u_ref) and torch.equal(got_ng, ref) and torch.equal(got_ng_x, ref)
    assert not got_ng.requires_grad and not u_ng.requires_grad and not got_ng_x.requires_grad


@pytest.mark.parametrize("points", [300, 40, 8])  # more and fewer points than the 32 units (POINTS)
@pytest.mark.parametrize("d,hidden", [(5, 3), (40, 2)])  # (40, 2): the divergence's trilinear form
def test_forward_propagation_unrecorded_path_is_bitwise_the_recorded_one(points, d, hidden):
    """Without anything to differentiate, the forward propagation skips its autograd Functions
    (TangentDot, ScaledProduct, MeetCube) and calls their kernels directly; under no_grad, inference_mode and with frozen weights the numbers
    must not change a bit, through several layers."""
    torch.manual_seed(6)
    layers = [torch.nn.Linear(d, 32), torch.nn.GELU()]
    for act in (torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.SiLU)[:hidden]:
        layers += [torch.nn.Linear(32, 32), act()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(32, d)).double()
    x = torch.randn(points, d, dtype=torch.float64)
    for op in ("laplacian", "divergence", "jacobian", "hessian"):
        operator = getattr(diffops, op)
        _, recorded = operator(net, x, method="forward")
        with torch.no_grad():
            _, in_place = operator(net, x, method="forward")
        with torch.inference_mode():
            _, inference = operator(net, x, method="forward")
        net.requires_grad_(False)
        _, frozen = operator(net, x, method="forward")  # grad mode on, nothing requires grad
        net.requires_grad_(True)
        assert torch.equal(in_place, recorded) and torch.equal(inference, recorded), op
        assert torch.equal(frozen, recorded), op
        torch.testing.assert_close(recorded, operator(net(x.requires_grad_()), x), **CLOSE)
        x = x.detach()


@pytest.mark.parametrize("op", ["laplacian", "divergence", "jacobian", "hessian"])
def test_forward_propagation_over_several_chunks_of_points_equals_the_graph_form(op):
    """On a CPU the scaled products run chunk by chunk of points (about 2^18 tangent entries each):
    with d = 16 tangents of width 64 that is 256 points a chunk, so 600 points take three chunks,
    the last one partial. Values and the weights' gradients equal the graph form's."""
    torch.manual_seed(7)
    d = 16
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, d if op != "hessian" else 1)).double()
    x = torch.randn(600, d, dtype=torch.float64, requires_grad=True)
    operator = getattr(diffops, op)
    _, got = operator(net, x, method="forward")
    want = operator(net(x), x)
    torch.testing.assert_close(got, want, **CLOSE)
    params = list(net.parameters())
    grads = [torch.autograd.grad(r.pow(2).sum(), params, allow_unused=True, materialize_grads=True) for r in (got, want)]
    for g, w in zip(*grads):  # the last bias does not enter the derivative: zeros on both sides
        torch.testing.assert_close(g, w, **CLOSE)
    with torch.no_grad():
        assert torch.equal(operator(net, x, method="forward")[1], got)


def _along(op, full, coords):
    """The reference for op along `coords` from torch.func's full Hessian (laplacian, hessian) or
    Jacobian (jacobian, divergence) of shape (N, comp..., d[, d])."""
    idx = torch.tensor([c % full.shape[-1] for c in coords])
    if op == "laplacian":
        return full[..., idx, idx].sum(-1)
    if op == "hessian":
        return full.index_select(-1, idx).index_select(-2, idx)
    if op == "jacobian":
        return full.index_select(-1, idx)
    return full[:, torch.arange(len(coords)), idx].sum(-1)


@pytest.mark.parametrize("coords", [[0, 1], [3, 0], [-1]])
@pytest.mark.parametrize(  # forward-over-reverse is for laplacian and hessian
    "op,path", [(op, path) for op in ("laplacian", "divergence", "jacobian", "hessian")
                for path in ("forward", "callable", "forward-over-reverse")
                if path != "forward-over-reverse" or op in ("laplacian", "hessian")])
def test_function_form_along_some_coordinates_equals_torch_func(op, path, coords):
    """coords= differentiates along some coordinates of x with the others held fixed (u(x, t) with
    Δ over x; a CNF field f(t, z) with its divergence over z), in any order: the forward
    propagation (the first Linear's tangents are the rows of Wᵀ for those coordinates), the
    callable form and forward-over-reverse equal torch.func's full Hessian or Jacobian restricted
    to them, and so do the gradients of a loss on the result to the weights and to x."""
    torch.manual_seed(len(coords) + coords[0])
    d = 4
    out = len(coords) if op == "divergence" else 2
    net = torch.nn.Sequential(torch.nn.Linear(d, 10), torch.nn.Tanh(), torch.nn.Linear(10, 10), torch.nn.SiLU(),
                              torch.nn.Linear(10, 10), torch.nn.Tanh(), torch.nn.Linear(10, out)).double()
    x = torch.randn(12, d, dtype=torch.float64, requires_grad=True)
    params = dict(net.named_parameters())

    def reference(p):
        field = lambda q: torch.func.functional_call(net, p, (q,))  # noqa: E731
        second = op in ("laplacian", "hessian")
        full = torch.func.vmap(torch.func.hessian(field) if second else torch.func.jacrev(field))(x)
        return _along(op, full, coords)

    f = net if path == "forward" else (lambda p: net(p))
    method = "forward-over-reverse" if path == "forward-over-reverse" else "auto"
    assert path != "forward" or diffops.explain(op, net, x, coords=coords).method == "forward"
    value, got = getattr(diffops, op)(f, x, coords=coords, method=method)
    want = reference(params)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(value, net(x), **CLOSE)
    wrt = [x, *params.values()]
    grads = [torch.autograd.grad(r.sin().sum(), wrt, materialize_grads=True) for r in (got, want)]
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_function_form_coords_errors():
    """Bad coords name the argument and the cause, the same in the forward propagation (C++) and
    the callable form (Python); the graph form, whose x is already the tensor u came from, points to
    the separate leaf instead."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for f in (net, lambda p: net(p)):
        with pytest.raises(ValueError, match=r"^laplacian: coords names coordinate 2 twice"):
            diffops.laplacian(f, x, coords=[2, -1])
        with pytest.raises(ValueError, match=r"^hessian: coords entry 3 is out of range for d = 3 coordinates"):
            diffops.hessian(f, x, coords=[0, 3])
        with pytest.raises(ValueError, match=r"^jacobian: coords must be a sequence of ints"):
            diffops.jacobian(f, x, coords=[0.5])
        with pytest.raises(ValueError, match=r"^jacobian: coords must be a sequence of ints"):
            diffops.jacobian(f, x, coords=[True, 0])
        # any sequence of integers names the same coordinates: a range, a tensor, negatives
        want = diffops.laplacian(f, x, coords=[0, 2])[1]
        for same in (range(0, 3, 2), torch.tensor([0, 2]), [0, -1]):
            assert torch.equal(diffops.laplacian(f, x, coords=same)[1], want)
        with pytest.raises(ValueError, match=r"^laplacian: coords is empty; pass None"):
            diffops.laplacian(f, x, coords=[])
        with pytest.raises(ValueError, match=r"^divergence: the model maps d = 2 coordinates to 1 components"):
            diffops.divergence(net, x, coords=[0, 1])
    with pytest.raises(ValueError, match=r"^laplacian: coords is for the function form \(laplacian\(f, x\)\); in the graph form"):
        diffops.laplacian(net(x), x, coords=[0])
    with pytest.raises(ValueError, match=r"^explain: |^laplacian: coords names"):
        diffops.explain("laplacian", net, x, coords=[1, 1])
