"""The benchmark scripts run (tiny sizes, one repeat): each checks every exact method against the
others before timing, so a run is also a cross-check of the strategies and peers; the table rows
come out for every method."""

import pathlib
import re
import subprocess
import sys
import time

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def common():
    """benchmarks/common.py as a module (the scripts import it from their own folder)."""
    sys.path.insert(0, str(BENCH))
    try:
        import common as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def bench(*args):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=BENCH)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("op", ["laplacian", "divergence", "hessian"])
def test_bench_operators_cross_checks_and_reports_every_method(op):
    text = bench("bench_operators.py", "--op", op, "--d", "3", "--points", "8", "--width", "8", "--repeats", "1",
                 "--memory")
    rows = [line for line in text.splitlines() if re.match(r"\| 3 \| ", line)]
    names = {row.split(" | ")[1] for row in rows}
    assert f"diffops {op}(net, x), auto" in names and "diffops graph form, auto (loop)" in names
    assert "loop of torch.autograd.grad" in names and any(name.startswith("torch.func") for name in names)
    # every row: eval ms, train ms, peak MiB, two ratios; the best diffops strategy's ratio is 1.00×
    for row in rows:
        cells = row.strip("|").split("|")
        assert len(cells) == 7 and all(float(c.strip().rstrip("×")) >= 0 for c in cells[2:])
    assert any(row.rstrip().endswith("| 1.00× |") for row in rows)


def test_bench_operators_pairs_ratios_round_by_round():
    # three rounds: the ratio cells carry the median and the (min–max) over rounds
    text = bench("bench_operators.py", "--op", "divergence", "--d", "2", "--points", "8", "--width", "8",
                 "--repeats", "3", "--skip", "batched", "forward-over")
    rows = [line for line in text.splitlines() if line.startswith("| 2 | ")]
    spread = re.compile(r"^(\d+\.\d\d)× \((\d+\.\d\d)–(\d+\.\d\d)\)$")
    cells = [cell.strip() for row in rows for cell in row.strip("|").split("|")[4:]]
    ranged = [spread.match(cell) for cell in cells if cell != "1.00×"]
    assert ranged and all(ranged), cells
    assert all(float(m[2]) <= float(m[1]) <= float(m[3]) for m in ranged)


def test_paired_ratios_and_round_times():
    c = common()
    paired_ratios, round_times = c.paired_ratios, c.round_times
    # round by round: 2/1, 4/2, 9/3 -> median 2, min 2, max 3 (the ratio of the medians would be 2)
    assert paired_ratios([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == (2.0, 2.0, 3.0)
    # rounds one of the two did not run are left out
    assert paired_ratios([3.0], [1.0, 5.0]) == (3.0, 3.0, 3.0)
    calls = []

    def slow():  # over SHORT_CALL_S: timed one call at a time
        calls.append("s")
        time.sleep(1.5 * c.SHORT_CALL_S)

    def fast():  # microseconds: timed k calls at a time, k·(its time) >= MIN_TIMING_S
        calls.append("f")

    def long():  # 0.6 WARM_S: two untimed calls take WARM_S
        calls.append("l")
        time.sleep(0.6 * c.WARM_S)

    times = round_times([slow, fast], repeats=3)
    assert [len(ts) for ts in times] == [3, 3] and all(t >= 0 for ts in times for t in ts)
    # a warm-up and a second call each (the second one decides k and the untimed calls), then
    # round-robin; in each round a method's timed calls follow untimed calls of its own: as many as
    # take WARM_S, between 1 and MAX_WARM_CALLS (the slow one's 1.5 ms and the fast one's µs: the most)
    assert calls[:4] == ["s", "s", "f", "f"]
    warm = c.MAX_WARM_CALLS
    assert 1.5 * c.SHORT_CALL_S * warm < c.WARM_S
    k = (len(calls) - 4) // 3 - warm - (warm + 1)
    assert k >= 2
    assert calls[4:] == (["s"] * (warm + 1) + ["f"] * (warm + k)) * 3
    calls.clear()
    round_times([long], repeats=2)
    assert calls == ["l"] * 2 + ["l"] * (2 + 1) * 2
    assert max(times[1]) < min(times[0])  # the fast entries are means of k calls, not their sum


def test_bench_operators_reports_time_in_products_and_tanh():
    text = bench("bench_operators.py", "--op", "laplacian", "--d", "2", "--points", "64", "--width", "16",
                 "--repeats", "1", "--skip", "batched", "forward-over", "jet", "--matmul")
    assert "| matmul ms | tanh ms |" in text
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| 2 | ")]
    for cells in rows:  # d, method, eval, train, matmul eval / train, tanh eval / train, two ratios
        assert len(cells) == 8
        assert all(len(cell.split(" / ")) == 2 and min(map(float, cell.split(" / "))) >= 0 for cell in cells[4:6])
    matmul = {cells[1].strip(): [float(v) for v in cells[4].split(" / ")] for cells in rows}
    assert all(v > 0 for v in matmul["loop of torch.autograd.grad"])  # a Linear layer is a product


def test_profiled_ms_counts_each_set_of_ops_apart():
    import torch

    c = common()
    ACTIVATION_OPS, MATMUL_OPS, profiled_ms = c.ACTIVATION_OPS, c.MATMUL_OPS, c.profiled_ms

    a = torch.randn(256, 256)
    cpu = torch.device("cpu")
    products, tanh = profiled_ms(lambda: a @ a, cpu, MATMUL_OPS, ACTIVATION_OPS)
    assert products > 0 and tanh == 0
    products, tanh = profiled_ms(lambda: torch.tanh(a), cpu, MATMUL_OPS, ACTIVATION_OPS)
    assert products == 0 and tanh > 0
    assert profiled_ms(lambda: torch.tanh(a @ a), cpu, MATMUL_OPS | ACTIVATION_OPS)[0] > 0


def test_bench_elementwise_runs():
    text = bench("bench_elementwise.py", "--n", "200", "--identity-max", "200", "--repeats", "1")
    assert re.search(r"^\| 200 \| diffops\.derivative \(ones\) \|", text, re.M)
    assert re.search(r"^\| 200 \| .*\(identity\) \|", text, re.M)
