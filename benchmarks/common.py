"""Shared by the benchmark scripts: medians of functions run round-robin."""

import statistics
import time

import torch


def median_times(fns, repeats):
    """Median seconds of each function, run round-robin after one warm-up each (no order bias);
    CUDA work is synchronised before each clock read."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]
