"""The timing seam: the CPU timer counts the thread's CPU time, the thread count is fixed for
the timing and restored after, each phase of a step is timed, wall time is kept beside."""

from __future__ import annotations

import time

import torch

from ac_bench.models import get_flavor
from ac_bench.probes.device import PHASES, PhaseClock
from ac_bench.probes.timing import (
    CPU_TIMING_THREADS,
    WallClock,
    cpu_thread_timer,
    interleaved_times,
    timer_for,
    timer_name,
    timing_threads,
)
from ac_bench.record import build_training


def test_the_cpu_timer_does_not_count_waiting():
    start_cpu, start_wall = cpu_thread_timer(), time.perf_counter()
    time.sleep(0.2)
    assert cpu_thread_timer() - start_cpu < 0.05 <= time.perf_counter() - start_wall - 0.15


def test_timer_per_device():
    assert timer_for("cpu") is cpu_thread_timer and timer_name("cpu") == "ac_bench.probes.timing.cpu_thread_timer"
    assert timer_name("cuda") == "ac_bench.probes.timing.device_synchronized_timer"


def test_the_thread_count_is_fixed_for_the_timing_and_restored_after():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with timing_threads("cpu") as threads:
            assert threads == torch.get_num_threads() == CPU_TIMING_THREADS
        assert torch.get_num_threads() == 2
        try:
            with timing_threads("cpu"):
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        assert torch.get_num_threads() == 2
        with timing_threads("cuda") as threads:  # not the CPU's timing: left alone
            assert threads == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_each_phase_of_a_step_is_timed_and_wall_time_kept():
    training = build_training(get_flavor("tiny"), "full-sdpa", "cpu")
    clock = PhaseClock("cpu", cpu_thread_timer)
    step = WallClock(lambda: training.step(mark=clock.mark))
    times = interleaved_times({"step": step}, rounds=3, warmup=1, timer=cpu_thread_timer)["step"]
    phases = clock.seconds(last=3)
    assert list(phases) == list(PHASES) and all(len(ts) == 3 and min(ts) > 0 for ts in phases.values())
    # The phases are inside the step, as the timer measured it.
    assert all(sum(phases[p][i] for p in PHASES) <= times[i] for i in range(3))
    assert len(step.seconds) == 4 and step.summary(3)["median"] > 0
