"""A pytest plugin for the self-tests: one variant's training step made slower by a fixed
fraction of its own CPU time (busy work in the calling thread after each step), the kind of
regression ``--benchmark-compare-fail`` exists to catch. Loaded only by name
(``-p tests.plugins.slow_variant``), so it cannot reach a normal run.

``SLOW_VARIANT`` and ``SLOWDOWN`` name the variant and the fraction (default: ``full-sdpa``, 0.20).
"""

import os
import time

from ac_bench import record

VARIANT = os.environ.get("SLOW_VARIANT", "full-sdpa")
SLOWDOWN = float(os.environ.get("SLOWDOWN", "0.20"))

_build_training = record.build_training


class _SlowedTraining:
    """The variant's ``Training`` whose ``step`` busy-waits ``SLOWDOWN`` of its own CPU time."""

    def __init__(self, training) -> None:
        self._training = training

    def __getattr__(self, name):
        return getattr(self._training, name)

    def step(self, *args, **kwargs) -> None:
        start = time.thread_time()
        self._training.step(*args, **kwargs)
        until = time.thread_time() + SLOWDOWN * (time.thread_time() - start)
        while time.thread_time() < until:
            pass


def _build_slowed(flavor, variant, device, policy=None):
    training = _build_training(flavor, variant, device, policy)
    return _SlowedTraining(training) if variant == VARIANT else training


# Before the benchmark modules are imported (-p loads this first), so their
# ``from ac_bench.record import build_training`` gets this one.
record.build_training = _build_slowed
