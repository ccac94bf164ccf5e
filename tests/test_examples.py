"""The Python examples run from a fresh checkout: the demo passes its own checks, each PINN / CNF
example trains (short runs: the loss falls, the plot is written), and the torchrun example runs on
two processes, stops on the DDP trap and runs once repaired."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "python"


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_demo_runs():
    out = run(EXAMPLES / "demo.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and out.stdout.rstrip().endswith("All checks passed.")


@pytest.mark.parametrize(
    "script, args",
    [
        ("poisson.py", ["--steps", "60", "--lbfgs", "5"]),
        ("burgers.py", ["--steps", "40", "--lbfgs", "5", "--points", "500"]),
    ],
)
def test_pinn_example_trains_and_plots(script, args, tmp_path):
    out = run(EXAMPLES / script, *args, "--out", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    first, last = map(float, re.search(r"loss (\S+) -> (\S+) after", out.stdout).groups())
    assert last < first
    assert re.search(r"relative L2 error \d\.\d\de[-+]\d\d", out.stdout)
    assert (tmp_path / script.replace(".py", ".png")).stat().st_size > 10_000


def test_cnf_example_compares_exact_and_hutchinson(tmp_path):
    out = run(EXAMPLES / "cnf.py", "--steps", "5", "--batch", "64", "--euler", "2", "--out", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    nll = dict(re.findall(r"cnf +([\w-]+): .* test NLL \(exact divergence\) (-?\d+\.\d+)", out.stdout))
    assert set(nll) == {"exact", "exact-graph", "hutchinson"}, out.stdout
    # the function form along z and the graph form train the same flow on the same batches
    assert abs(float(nll["exact"]) - float(nll["exact-graph"])) < 2e-3, nll
    assert re.search(r"^\s+128\s", out.stdout, re.M)  # the estimator table reaches d = 128
    assert (tmp_path / "cnf.png").stat().st_size > 10_000


def torchrun(*args):
    return run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               EXAMPLES / "ddp_poisson.py", *args)


def test_torchrun_example_trains_on_two_processes():
    out = torchrun("--steps", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ddp_poisson: 2 processes; relative L2 error" in out.stdout


def test_torchrun_example_stops_on_the_ddp_trap_and_runs_repaired():
    out = torchrun("--steps", "3", "--residual-only")
    assert out.returncode != 0
    assert "check_synchronized: parameter gradients differ across the 2 ranks" in out.stderr
    assert "module.4.bias" in out.stderr
    out = torchrun("--steps", "3", "--residual-only", "--with-all-parameters")
    assert out.returncode == 0, out.stdout + out.stderr
