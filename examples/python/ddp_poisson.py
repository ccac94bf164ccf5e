"""The Poisson PINN on several processes with DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node=2 examples/python/ddp_poisson.py            # CPU: gloo
    torchrun --nproc_per_node=8 examples/python/ddp_poisson.py --steps 2000  # one GPU per rank: NCCL

Each rank draws its own collocation points (a different stream per rank), so the global batch is
nproc × --points; DDP averages the gradients. After the first backward, every rank calls
diffops.distributed.check_synchronized, which raises if DDP skipped its all-reduce. Try
--residual-only: that loss does not reach the output layer's bias, DDP silently skips the
all-reduce (even with find_unused_parameters=True), and the check stops the run on step 0 instead
of letting the replicas drift apart. --with-all-parameters repairs it.
"""

import argparse
import math
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import diffops
from diffops.distributed import check_synchronized, with_all_parameters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--points", type=int, default=1024, help="interior points per rank and step")
    ap.add_argument("--residual-only", action="store_true", help="drop the boundary term (the DDP trap)")
    ap.add_argument("--with-all-parameters", action="store_true", help="repair a residual-only loss")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                              torch.nn.Tanh(), torch.nn.Linear(32, 1)).to(device)
    model = DistributedDataParallel(net)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    points = torch.Generator(device=device).manual_seed(1000 + rank)  # this rank's share

    def exact(p):
        return torch.sin(math.pi * p[:, 0]) * torch.sin(math.pi * p[:, 1])

    for step in range(args.steps):
        x = torch.rand(args.points, 2, device=device, generator=points, requires_grad=True)
        residual = diffops.laplacian(model(x)[:, 0], x) + 2 * math.pi**2 * exact(x)
        loss = residual.pow(2).mean()
        if not args.residual_only:
            s = torch.rand(2, args.points // 4, device=device, generator=points)
            side = (torch.rand(2, args.points // 4, device=device, generator=points) < 0.5).to(s.dtype)
            edge = torch.cat([torch.stack([s[0], side[0]], 1), torch.stack([side[1], s[1]], 1)])  # u = 0
            loss = loss + 10 * model(edge).pow(2).mean()
        if args.with_all_parameters:
            loss = with_all_parameters(loss, model)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            check_synchronized(model)  # raises on every rank if DDP skipped the all-reduce
        opt.step()
        if rank == 0 and (step % max(1, args.steps // 10) == 0 or step + 1 == args.steps):
            print(f"step {step:5d}  loss {loss.item():.4e}  (rank 0 of {world})", flush=True)

    if rank == 0:
        g = torch.linspace(0, 1, 101, device=device)
        grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            pred, want = net(grid)[:, 0], exact(grid)
        print(f"ddp_poisson: {world} processes; relative L2 error {((pred - want).norm() / want.norm()).item():.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
