"""Multi-process PINN training: two DDP processes (gloo, loopback) give the gradients of one process
on the full batch, and the residual-only trap (DDP silently skipping its all-reduce because the
output bias gets no gradient) is detected by diffops.distributed.check_synchronized."""

import doctest

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import diffops
import diffops.distributed
from diffops.distributed import check_synchronized, unused_parameters

WORLD = 2
N = 32  # collocation points, split evenly across ranks


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def points():
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, 2, dtype=torch.float64, generator=g), torch.rand(8, 2, dtype=torch.float64, generator=g)


def loss_fn(net, x, xb, boundary, all_parameters=False):
    x = x.clone().requires_grad_()
    residual = diffops.laplacian(net(x)[:, 0], x) + torch.sin(x).prod(-1)
    loss = residual.pow(2).mean()
    if boundary:  # the boundary term reaches the output bias
        loss = loss + net(xb).pow(2).mean()
    return diffops.distributed.with_all_parameters(loss, net) if all_parameters else loss


SCENARIOS = {  # name: (boundary term, with_all_parameters, DDP options)
    "residual_and_boundary": (True, False, {}),
    "residual_only": (False, False, {}),
    "residual_only_find_unused": (False, False, {"find_unused_parameters": True}),
    "residual_only_static_graph": (False, False, {"static_graph": True}),
    "residual_only_with_all_parameters": (False, True, {}),
}


def worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x, xb = points()
    share = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    out = {}
    for name, (boundary, all_parameters, options) in SCENARIOS.items():
        net = make_net()
        ddp = torch.nn.parallel.DistributedDataParallel(net, **options)
        loss_fn(ddp, x[share], xb[share.start // 4 : share.stop // 4], boundary, all_parameters).backward()
        try:
            check_synchronized(ddp)
            error = None
        except RuntimeError as e:
            error = str(e)
        # plain lists cross the process boundary (exact for float64); shared tensors would not
        # outlive this process
        out[name] = ([None if p.grad is None else p.grad.tolist() for p in net.parameters()], error)
    results.put((rank, out))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init_file = tmp_path_factory.mktemp("ddp") / "init"
    procs = [ctx.Process(target=worker, args=(r, str(init_file), results)) for r in range(WORLD)]
    for p in procs:
        p.start()
    out = dict(results.get(timeout=300) for _ in procs)
    to_tensor = lambda g: None if g is None else torch.tensor(g, dtype=torch.float64)  # noqa: E731
    out = {r: {k: ([to_tensor(g) for g in gs], e) for k, (gs, e) in v.items()} for r, v in out.items()}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def full_batch_grads(boundary, all_parameters=False):
    net = make_net()
    x, xb = points()
    loss_fn(net, x, xb, boundary, all_parameters).backward()
    return [p.grad for p in net.parameters()]


def test_two_processes_average_to_the_full_batch_gradient(ddp_results):
    want = full_batch_grads(boundary=True)
    for rank in range(WORLD):
        grads, error = ddp_results[rank]["residual_and_boundary"]
        assert error is None
        for g, w in zip(grads, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scenario", ["residual_only", "residual_only_find_unused", "residual_only_static_graph"])
def test_residual_only_loss_skips_the_all_reduce_and_is_detected(ddp_results, scenario):
    grads = [ddp_results[r][scenario][0] for r in range(WORLD)]
    # the trap is real, with DDP's default, find_unused_parameters and static_graph alike: no error
    # from DDP, the output bias has no gradient, and the ranks' gradients disagree
    assert grads[0][3] is None and grads[1][3] is None
    assert not torch.equal(grads[0][0], grads[1][0])
    for rank in range(WORLD):
        error = ddp_results[rank][scenario][1]
        assert error is not None and error.startswith("check_synchronized: parameter gradients differ across the 2 ranks")
        assert "['module.2.bias']" in error and "with_all_parameters" in error


def test_with_all_parameters_restores_the_average(ddp_results):
    want = full_batch_grads(boundary=False, all_parameters=True)
    assert torch.equal(want[3], torch.zeros(1, dtype=torch.float64))
    for rank in range(WORLD):
        grads, error = ddp_results[rank]["residual_only_with_all_parameters"]
        assert error is None
        for g, w in zip(grads, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_unused_parameters_names_the_output_bias():
    net = make_net()
    x, xb = points()
    assert unused_parameters(loss_fn(net, x, xb, boundary=False), net) == ["2.bias"]
    loss = loss_fn(net, x, xb, boundary=True)
    assert unused_parameters(loss, net) == []
    loss.backward()  # the graph is still there


def test_docstring_examples():
    result = doctest.testmod(diffops.distributed)
    assert result.attempted >= 8 and result.failed == 0
