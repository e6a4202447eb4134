"""Timers that can be gated: the device's own notion of time for one training step.

On CUDA pytest-benchmark's default timer (``time.perf_counter``) returns while kernels are
still queued, which is how notebooks report a checkpointed model as faster than the same
model without checkpointing: ``device_synchronized_timer`` waits for the device first.

On the CPU wall time measures the machine's load as much as the step (on the shared 2-core
development machine its interquartile range was a fifth to a third of the median), so the
step is timed in the CPU time of the one thread that runs it, with torch's intra-op threads
fixed to ``CPU_TIMING_THREADS`` for the timing and restored after (``timing_threads``): the
memory measurements and correctness checks run with the process's own thread count. Wall
time is kept beside it (``WallClock``). The README's "Timing" section has the measurements
(``scripts/cpu_timing_stability.py``).

The suite installs ``timer_name(device)`` as pytest-benchmark's timer (``--benchmark-timer``),
unless the user chose another.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from ac_bench.probes.device import synchronize

CUDA_TIMER_NAME = "ac_bench.probes.timing.device_synchronized_timer"
CPU_TIMER_NAME = "ac_bench.probes.timing.cpu_thread_timer"

#: torch's intra-op threads while a CPU step is timed. With one thread, the step's work is
#: the calling thread's (CPU autograd runs the backward on the calling thread too), so its
#: thread CPU time is the whole step's.
CPU_TIMING_THREADS = 1


def device_synchronized_timer() -> float:
    """``time.perf_counter()`` after every queued CUDA kernel has finished."""
    synchronize()
    return time.perf_counter()


def cpu_thread_timer() -> float:
    """CPU seconds of the calling thread (``time.thread_time``): not advanced while the
    thread waits for a core that another process holds."""
    return time.thread_time()


def is_cpu(device: str | torch.device) -> bool:
    return torch.device(device).type == "cpu"


def timer_name(device: str | torch.device) -> str:
    """The importable name pytest-benchmark's ``--benchmark-timer`` gets for ``device``."""
    return CPU_TIMER_NAME if is_cpu(device) else CUDA_TIMER_NAME


def timer_for(device: str | torch.device) -> Callable[[], float]:
    """The timer of ``device`` itself (the function ``timer_name`` names)."""
    return cpu_thread_timer if is_cpu(device) else device_synchronized_timer


def clock_description(device: str | torch.device) -> str:
    """What the timer measures, as recorded beside each timing."""
    return "thread_time" if is_cpu(device) else "wall_synchronized"


@contextlib.contextmanager
def timing_threads(device: str | torch.device, threads: int = CPU_TIMING_THREADS) -> Iterator[int]:
    """On the CPU, torch's intra-op thread count fixed to ``threads`` inside, restored on exit
    (memory and gradient tests run with the process's own count); yields the count in use."""
    before = torch.get_num_threads()
    if not is_cpu(device):
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def quartile_spread(values: list[float]) -> dict[str, float]:
    """Median and interquartile range (``statistics.quantiles``, exclusive method)."""
    median = statistics.median(values)
    if len(values) < 2:
        return {"median": median, "iqr": 0.0}
    q1, _, q3 = statistics.quantiles(values, n=4)
    return {"median": median, "iqr": q3 - q1}


class WallClock:
    """Wraps a step and keeps the wall seconds of each call, beside whatever timer the caller
    (pytest-benchmark) uses, so that the record carries both."""

    def __init__(self, step: Callable[[], None]) -> None:
        self.step = step
        self.seconds: list[float] = []

    def __call__(self) -> None:
        start = device_synchronized_timer()
        self.step()
        self.seconds.append(device_synchronized_timer() - start)

    def summary(self, last: int) -> dict[str, float]:
        """Median and IQR of the wall seconds of the last ``last`` calls (the timed rounds)."""
        return quartile_spread(self.seconds[-last:])


def interleaved_times(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 2,
                      timer: Callable[[], float] = device_synchronized_timer) -> dict[str, list[float]]:
    """Seconds of each call of each step by ``timer``, calling them in turn (A B A B ...) so
    that drift in the machine's speed hits every step alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = timer()
            step()
            times[name].append(timer() - start)
    return times


def interleaved_medians(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 2,
                        timer: Callable[[], float] = device_synchronized_timer) -> dict[str, float]:
    """Median seconds per call of each step (``interleaved_times``)."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(steps, rounds, warmup, timer).items()}


def band_reached(median_deviation: float, round_deviations: list[float], band: tuple[float, float]) -> bool:
    """Whether a timing ratio's deviation (``time ratio / FLOP ratio - 1``) reaches ``band``
    (low, high): the deviation of the medians, or that of any one round, inside it. Load on a
    shared machine spreads the rounds (each times the two steps next to each other); a quiet
    machine's rounds are close, so it is held to the band, and a step whose every round is
    outside the band fails under any load."""
    low, high = band
    return any(low <= d <= high for d in (median_deviation, *round_deviations))
