"""Speed: the whole training step per variant, timed with the device's own timer.

On the CPU the timer is the CPU time of the one thread that runs the step, with torch's
intra-op threads fixed (``ac_bench.probes.timing``), wall time kept beside it in ``extra_info["timing"]``;
on CUDA a device-synchronized wall clock. Timed flavors are a documented choice: on the CPU
only the flavors measured for real (``small``; ``seed`` would take minutes per step on 2 cores
and is estimated instead); on CUDA every selected flavor (``seed`` by default).
"""

from __future__ import annotations

import functools
import statistics

import pytest

from ac_bench.cases import Case
from ac_bench.models import ATTENTIONS, family_of
from ac_bench.probes.device import PhaseClock
from ac_bench.probes.timing import (
    WallClock,
    band_reached,
    clock_description,
    interleaved_times,
    timer_for,
    timing_threads,
)
from ac_bench.record import build_training

pytestmark = [pytest.mark.real_tensors, pytest.mark.timing]

WARMUP_ROUNDS = 2


def _step_fn(case: Case, mark=None):
    """The variant's training step, ready to call (``mark``: a ``PhaseClock``'s, or None)."""
    return functools.partial(build_training(case.flavor, case.variant, case.device).step, mark=mark)


def test_training_step(benchmark, case, measurements, request):
    """zero_grad, forward, loss, backward, optimizer step; variants of a flavor grouped.

    Beside pytest-benchmark's own statistics, ``extra_info["timing"]`` keeps what the timer
    measures (``clock``), the thread count, the wall time of the timed rounds and the median of
    each phase (forward, backward with any recomputation, optimizer step; CUDA events on CUDA,
    the CPU timer on the CPU): the report's recompute time is backward(policy) - backward(none)."""
    record = measurements.get(case)  # measured first, alone, before this model exists
    benchmark.group = f"{case.device}-{case.flavor.name}"
    benchmark.extra_info.update(record.as_dict())
    phases = PhaseClock(case.device, timer_for(case.device))
    step = WallClock(_step_fn(case, mark=phases.mark))
    rounds = request.config.getoption("benchmark_min_rounds")  # --benchmark-min-rounds, default 5
    with timing_threads(case.device) as threads:
        benchmark.pedantic(step, rounds=rounds, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    benchmark.extra_info["timing"] = {
        "clock": clock_description(case.device), "threads": threads, "wall_s": step.summary(rounds),
        "phases_s": {phase: statistics.median(ts) for phase, ts in phases.seconds(rounds).items()}}


#: The measurements behind the CPU ratio gate (``scripts/cpu_timing_stability.py``, AMD EPYC,
#: torch 2.13.0, one thread, 2026-11-28, both cores loaded by other work, README "Timing on
#: the CPU"): per policy and attention, the mean over 5 to 9 blocks of 5 interleaved steps of
#: the deviation ``time ratio / FLOP ratio - 1`` in percent, and the pooled standard deviation
#: of one block's deviation about its policy's mean (48 blocks). With sdpa FLOPs predict time
#: (means within 1.2%); with eager attention time exceeds them by what recomputing the
#: heads x seq x seq softmax costs beyond matmuls (none for mlp, most for attn).
CPU_RATIO_MEASURED: dict[str, dict[tuple[str, str], float]] = {"small": {
    ("full", "eager"): 6.14, ("full", "sdpa"): 0.67,
    ("attn", "eager"): 8.12, ("attn", "sdpa"): 0.10,
    ("mlp", "eager"): -0.64, ("mlp", "sdpa"): 1.20,
    ("every_other", "eager"): 4.72, ("every_other", "sdpa"): -0.06,
}}
CPU_RATIO_BLOCK_SD = 1.08
#: How many standard deviations of one block the band leaves on either side.
CPU_RATIO_SDS = 4


def cpu_ratio_band(measured_percent: float) -> tuple[float, float]:
    """The deviation band asserted: from "FLOPs predict time exactly" (0) to the measured mean,
    whichever order, widened by ``CPU_RATIO_SDS`` block standard deviations on both sides (so a
    quieter machine, where the eager softmax's extra cost may shrink, still passes)."""
    margin = CPU_RATIO_SDS * CPU_RATIO_BLOCK_SD
    return (min(0.0, measured_percent) - margin) / 100, (max(0.0, measured_percent) + margin) / 100


CPU_RATIO_BANDS: dict[str, dict[tuple[str, str], tuple[float, float]]] = {
    flavor: {key: cpu_ratio_band(mean) for key, mean in measured.items()}
    for flavor, measured in CPU_RATIO_MEASURED.items()}
RATIO_POLICIES: tuple[str, ...] = tuple(dict.fromkeys(p for bands in CPU_RATIO_BANDS.values() for p, _ in bands))
RATIO_ROUNDS = 5
#: How many times the policies are timed before a band none of their rounds reaches fails.
RATIO_ATTEMPTS = 2


@pytest.fixture(scope="module")
def time_ratios(measurements):
    """Per (device, flavor, attention): for every gated policy, time(policy)/time(none) in the
    device's timer, as the ratio of the medians and as the ratio within each round (the policy's
    step and none's run next to each other in every round), interleaved in one process
    (measured once per ``attempt``, asserted per policy)."""
    cache: dict[tuple, dict[str, tuple[float, list[float]]]] = {}

    def get(device: str, flavor, attention: str, policies: tuple[str, ...],
            attempt: int = 1) -> dict[str, tuple[float, list[float]]]:
        key = (device, flavor.name, attention, attempt)
        if key not in cache:
            variants = {p: Case(device, flavor, f"{p}-{attention}") for p in ("none", *policies)}
            for c in variants.values():
                measurements.get(c)  # memory first, alone, before these models exist
            with timing_threads(device):
                times = interleaved_times({p: _step_fn(c) for p, c in variants.items()}, rounds=RATIO_ROUNDS,
                                          warmup=WARMUP_ROUNDS, timer=timer_for(device))
            none = times["none"]
            cache[key] = {p: (statistics.median(times[p]) / statistics.median(none),
                              [t / n for t, n in zip(times[p], none, strict=True)]) for p in policies}
        return cache[key]

    return get


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("policy", RATIO_POLICIES)
def test_time_ratio_against_flops(flavor_on_device, policy, attention, measurements, time_ratios, request):
    """time(policy)/time(none), interleaved in one process, against FLOPs(policy)/FLOPs(none).

    On the CPU, in thread CPU time, the deviation ``time ratio / FLOP ratio - 1`` must reach
    the policy's band, derived from measurements (``CPU_RATIO_MEASURED``, ``cpu_ratio_band``):
    full-sdpa [-4.3%, +5.0%], full-eager [-4.3%, +10.5%], and so on. Machine load moves one
    thread's CPU time too (a shared core's caches; under a load average of 2 to 4 on 2 cores
    deviations of -17% to +15% were seen against these bands), and it moves the rounds apart:
    the test passes when the band holds the deviation of the medians or of any one round (each
    round times the policy's step and none's next to each other), so that a quiet machine is
    held to the band and a loaded one to what its own rounds can tell. Where none does, the
    policies are timed once more (``RATIO_ATTEMPTS``: a CI run on a Zen 3 VM, 2026-12-01, saw
    rounds from -22% to +38% for one policy and none inside a band 9 points wide) and any round
    of either measurement counts. A policy whose every round of both is outside the band fails,
    under any load. Skipped under ``--benchmark-skip``, the
    correctness-only run, like every timed step. On CUDA
    recomputation is asserted not to be free for ``full`` (time ratio >= 1); the FLOP ratio is
    no bound there: on the H200 the seed step (22 ms) is bound by kernel launches and memory
    traffic, and full took 2.12x none's time for a FLOP ratio of 1.25."""
    if request.config.getoption("benchmark_skip"):
        pytest.skip("--benchmark-skip: a correctness-only run times no step")
    device, flavor = flavor_on_device
    family = family_of(flavor)
    if attention not in family.attentions:
        pytest.skip(f"{flavor.name}: family {family.name!r} has no {attention} attention "
                    f"(it declares {', '.join(family.attentions)})")
    time_ratio, round_ratios = time_ratios(device, flavor, attention, RATIO_POLICIES)[policy]
    flop_ratio = (measurements.get(Case(device, flavor, f"{policy}-{attention}")).flops
                  / measurements.get(Case(device, flavor, f"none-{attention}")).flops)
    measurements.note_time_ratio(f"{device}-{flavor.name}-{policy}-{attention}", time_ratio, flop_ratio)
    deviation = time_ratio / flop_ratio - 1
    message = (f"{policy}-{attention}: time({policy})/time(none) = {time_ratio:.3f}, FLOP ratio {flop_ratio:.3f}, "
               f"deviation {deviation:+.1%}")
    if device == "cuda":
        if policy == "full":
            assert time_ratio >= 1.0, message
        return
    band = CPU_RATIO_BANDS.get(flavor.name, {}).get((policy, attention))
    if band is None:
        return  # measured at `small` only; at `tiny` the step is Python overhead, not FLOPs
    low, high = band
    rounds = [r / flop_ratio - 1 for r in round_ratios]
    medians = [deviation]
    for attempt in range(2, RATIO_ATTEMPTS + 1):
        if band_reached(medians[-1], rounds, band):
            break
        again, again_rounds = time_ratios(device, flavor, attention, RATIO_POLICIES, attempt=attempt)[policy]
        medians.append(again / flop_ratio - 1)
        rounds += [r / flop_ratio - 1 for r in again_rounds]
    assert any(band_reached(m, rounds, band) for m in medians), (
        f"{message} (rounds {', '.join(f'{d:+.1%}' for d in rounds)} in {len(medians)} measurements, medians "
        f"{', '.join(f'{m:+.1%}' for m in medians)}), every one outside the measured band [{low:+.1%}, {high:+.1%}]")
