"""Memory that grows from step to step: a variant stepped several times, every byte counted.

One measured step cannot see a leak: a wrapper that keeps a reference to each step's output
(the shape of pytorch #80151) or a reference cycle through an autograd Function, which
reference counting never frees (pytorch #84413), adds the same bytes in every step, and a
step's figures start from whatever was already there. ``measure_growth`` builds the variant, starts its memory
probe before the first step, so that everything any step leaves alive is counted, and records
the bytes allocated after each step and the peak of each step; ``StepSeries.problems`` says, by
name and in bytes per step, where they still change after the warm-up.

The cyclic collector is paused while the steps run (one full collection before the first). A
training loop never forces a collection between steps; the collector runs when Python's own
object counts say so, which have nothing to do with tensor bytes, so what a cycle holds stays
allocated for as long as that takes: on a GPU that is how #84413 ran out of memory. The
self-tests' planted cycle (two leaking blocks at ``tiny``, 4,096 B each per step) grew by
+8,192 B per step with the collector paused, by +8,192, +4,096, +4,096 B with it running as
usual, and by +4,096 B per step with a collection forced before each step (as the single-step
measurement runs, ``ac_bench.record.reset_collector``): how much of a cycle shows would depend
on when the collector happens to run. Paused, every byte that only the collector would free (or
that it cannot) shows as growth, the same in every run, and a step whose tensors are all freed
by reference counting (every variant of the suite) does not move by a byte.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ac_bench.cases import Case
from ac_bench.models import Flavor, Policy, parse_variant, variant_id
from ac_bench.probes.device import CudaAllocatorProbe
from ac_bench.probes.memory import MemTrackerProbe
from ac_bench.probes.timing import timing_threads
from ac_bench.record import build_training, is_estimate

#: Steps per growth measurement: the first is the warm-up (it creates gradients and optimizer
#: state, so its figures differ by design); the figures of the others must all be equal.
GROWTH_STEPS = 4
WARMUP_STEPS = 1


@dataclass(frozen=True)
class StepSeries:
    """One variant stepped ``len(allocated_after)`` times under one memory probe.

    ``allocated_after``: bytes allocated after each step, counted from before the first step
    (parameters, optimizer state, the input and anything a step left alive); ``step_peaks``: the
    peak allocation of each step, in bytes; the first ``warmup`` steps are not compared."""

    case_id: str
    memory_method: str
    allocated_after: tuple[int, ...]
    step_peaks: tuple[int, ...]
    warmup: int = WARMUP_STEPS

    def growth(self, figures: tuple[int, ...]) -> list[int]:
        """Bytes gained from each step after the warm-up to the next (one entry per step pair)."""
        steady = figures[self.warmup:]
        return [b - a for a, b in zip(steady, steady[1:])]

    def problems(self) -> list[str]:
        """One line per figure that still changes after the warm-up, naming the variant, the
        bytes of each step and the bytes gained per step; empty where memory is steady."""
        lines = []
        for label, figures in (("allocated after each step", self.allocated_after),
                               ("peak of each step", self.step_peaks)):
            moved = self.growth(figures)
            if any(moved):
                lines.append(f"{self.case_id}: memory grows from step to step ({self.memory_method}): {label} "
                             f"{', '.join(f'{b:,}' for b in figures)} B, "
                             f"{', '.join(f'{d:+,}' for d in moved)} B per step after {self.warmup} warm-up "
                             f"step{'s' if self.warmup != 1 else ''}")
        if lines:
            lines.append(f"{self.case_id}: each step leaves tensors alive: a reference kept to an output or "
                         f"activation, or a reference cycle, which reference counting never frees (the cyclic "
                         f"collector is paused here: in training it runs when Python's object counts say so)")
        return lines


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """One full collection, then the cyclic collector off until the block ends (restored to
    what it was): garbage that only the collector frees stays allocated inside."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def measure_growth(flavor: Flavor, variant: str, device: str | torch.device, steps: int = GROWTH_STEPS,
                   policy: Policy | None = None) -> StepSeries:
    """Build the variant alone on ``device`` and take ``steps`` training steps under one memory
    probe entered before the first, with the cyclic collector paused (module docstring): the
    CUDA allocator's statistics on CUDA (``ac_bench.probes.device``), MemTracker on real CPU
    tensors, or on fake tensors for a flavor estimated on the CPU. ``policy``, if given,
    replaces the one the variant names (a self-test's planted policy). A compiled variant takes
    its compiling step first, outside the probe. Torch's intra-op threads are fixed to one on
    the CPU (``timing_threads``): the bytes do not depend on it, and on a loaded 2-core machine
    two threads made a ``tiny`` step 10 times slower. Raises ValueError for fewer than
    ``WARMUP_STEPS + 2`` steps (nothing to compare), and what the step raises
    (``torch.OutOfMemoryError`` on CUDA)."""
    if steps < WARMUP_STEPS + 2:
        raise ValueError(f"measure_growth needs at least {WARMUP_STEPS + 2} steps "
                         f"({WARMUP_STEPS} warm-up and two to compare), got {steps}")
    device = torch.device(device)
    fake = is_estimate(flavor, device)
    _, attention = parse_variant(variant)
    after, peaks = [], []
    with FakeTensorMode() if fake else contextlib.nullcontext(), timing_threads(device):
        # The allocator probe must exist before anything of this variant does.
        cuda_probe = CudaAllocatorProbe(device) if device.type == "cuda" else None
        training = build_training(flavor, variant, device, policy)
        if training.policy.compiles:
            training.step()  # compiles, outside the probe (as ac_bench.record.measure_step)
        probe = cuda_probe or MemTrackerProbe(device, training.model, training.optimizer, training.x, fake=fake)
        with collector_paused():
            for _ in range(steps):
                with probe.phase() as phase:
                    training.step()
                after.append(probe.current())
                peaks.append(phase.peak_bytes)
        name = variant_id(training.policy, attention)
    return StepSeries(Case(device.type, flavor, name).id, probe.method, tuple(after), tuple(peaks))
