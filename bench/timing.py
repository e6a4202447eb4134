"""Timing that is physically meaningful: the timer waits for the device.

pytest-benchmark's default timer (``time.perf_counter``) returns while CUDA kernels are still
queued, which is how notebooks report a checkpointed model as faster than the same model
without checkpointing. The suite installs ``device_synchronized_timer`` as pytest-benchmark's
timer (``--benchmark-timer``), unless the user chose another.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench.device import synchronize

TIMER_NAME = "bench.timing.device_synchronized_timer"


def device_synchronized_timer() -> float:
    """``time.perf_counter()`` after every queued CUDA kernel has finished."""
    synchronize()
    return time.perf_counter()


def interleaved_medians(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each step, calling them in turn (A B A B ...) so that
    drift in the machine's speed hits every step alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = device_synchronized_timer()
            step()
            times[name].append(device_synchronized_timer() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
