"""Shared by the benchmark scripts: medians of functions run round-robin, and peak memory."""

import ctypes
import gc
import math
import statistics
import time

import torch

import diffops


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


SHORT_CALL_S = 1e-3  # a call shorter than this is timed several at a time (round_times) ...
MIN_TIMING_S = 2e-3  # ... k calls in a row, k·(its time) >= this
WARM_S = 2e-2  # before a timed call, untimed calls of the same method for about this long ...
MAX_WARM_CALLS = 3  # ... at most this many (at least one)


def round_times(fns, repeats, budget_s=None):
    """Seconds of each call of each function, one list per function, run round-robin after one
    warm-up each (no order bias): entry r of every list comes from round r, so two functions' times
    in the same round were taken seconds apart and can be compared pairwise (see paired_ratios).
    CUDA work is synchronised before each clock read. With `budget_s`, a function whose warm-up
    shows that `repeats` runs would exceed the budget runs fewer rounds (at least one). A function
    whose second call took under SHORT_CALL_S (a one-point problem) is called k times back to back
    in each round, k·(that time) ≥ MIN_TIMING_S, and the entry is the mean: a single call of 0.2 ms
    right after another method's is timed with cold caches and one clock read, and its rounds
    scattered by ±50%; k calls in a row are the latency a loop of such calls sees.

    In each round a function's timed call follows untimed calls of its own, as in a training loop:
    one, or up to MAX_WARM_CALLS while they take under WARM_S together. Timed right after another
    method's call, it found the caches (this VM's L3 is shared and large) full of that method's
    data: the forward divergence at d = 32, 5.7 ms on its own, took 7.9 ms right after
    vmap(jacrev), which penalised the method with the smaller footprint. One untimed call does not
    undo all of it: after another method's allocations (500 blocks of 512 KiB, say) the same call
    took 6.1 ms after one untimed call, 5.75 after three and 5.6 after ten (5.5 in a loop of its
    own), with no page faults in the timed call."""
    reps, calls, warms = [], [], []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        _sync()
        warm = time.perf_counter() - t0
        reps.append(repeats if budget_s is None else max(1, min(repeats, int(budget_s / max(warm, 1e-9)))))
        if warm < 1.0:  # a first call may pay one-time costs: the second one decides
            t0 = time.perf_counter()
            fn()
            _sync()
            second = time.perf_counter() - t0
            calls.append(math.ceil(MIN_TIMING_S / max(second, 1e-9)) if second < SHORT_CALL_S else 1)
            warms.append(max(1, min(MAX_WARM_CALLS, math.ceil(WARM_S / max(second, 1e-9)))))
        else:
            calls.append(1)
            warms.append(1)
    times = [[] for _ in fns]
    for r in range(repeats):
        for fn, ts, n, k, w in zip(fns, times, reps, calls, warms):
            if r >= n:
                continue
            for _ in range(w):  # untimed: the timed call finds the caches as its own calls left them
                fn()
            _sync()
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            _sync()
            ts.append((time.perf_counter() - t0) / k)
    return times


def median_times(fns, repeats, budget_s=None):
    """Median seconds of each function (round_times)."""
    return [statistics.median(ts) for ts in round_times(fns, repeats, budget_s)]


def paired_ratios(times, ref):
    """Ratios times[r] / ref[r] of two functions' round_times, round by round over the rounds both
    ran: on a machine whose speed drifts over minutes (a shared VM) a pair from one round shares
    the drift, which the ratio of two medians does not cancel. Returns (median, min, max)."""
    ratios = sorted(t / b for t, b in zip(times, ref))
    return statistics.median(ratios), ratios[0], ratios[-1]


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def peak_memory_mib(fn, device):
    """Peak memory of one call of `fn` above what was in use before it, in MiB: CUDA's allocator
    peak on a GPU; on CPU the process's peak resident set (Linux VmHWM, reset through
    /proc/self/clear_refs after returning freed heap to the system with malloc_trim). diffops' CPU
    cache is emptied first, so that the blocks a call takes from it count as that call's memory."""
    gc.collect()
    diffops.empty_cache()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


# The ATen matrix products (BLAS / cuBLAS calls); a batched or vmapped product lands in one of them.
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm",
              "aten::mv", "aten::addmv", "aten::addmv_", "aten::dot", "aten::vdot", "aten::addr"}


# The activation of the benchmark's model: every method evaluates it on (N, w) once per layer.
ACTIVATION_OPS = {"aten::tanh"}


def profiled_ms(fn, device, *op_sets, repeats=5):
    """Milliseconds per call of `fn` spent inside each set of ATen ops in `op_sets` (one figure per
    set): their self time under torch.profiler (on CUDA their kernels' device time), after one
    warm-up call, from one profiled run of `repeats` calls."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        _sync()
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    return [sum(getattr(e, field) for e in events if e.key in ops) / repeats / 1e3 for ops in op_sets]
