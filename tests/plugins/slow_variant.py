"""A pytest plugin for the self-tests: one variant's training step made slower by a fixed
fraction of its own CPU time (busy work in the calling thread after each step), the kind of
regression ``--benchmark-compare-fail`` exists to catch. Loaded only by name
(``-p tests.plugins.slow_variant``), so it cannot reach a normal run.

``SLOW_VARIANT`` and ``SLOWDOWN`` name the variant and the fraction (default: ``full-sdpa``, 0.20).
"""

import os
import time

import bench.test_speed as speed

VARIANT = os.environ.get("SLOW_VARIANT", "full-sdpa")
SLOWDOWN = float(os.environ.get("SLOWDOWN", "0.20"))

_step_fn = speed._step_fn


def _slowed(step):
    def run() -> None:
        start = time.thread_time()
        step()
        until = time.thread_time() + SLOWDOWN * (time.thread_time() - start)
        while time.thread_time() < until:
            pass
    return run


def _slow_step_fn(case, mark=None):
    step = _step_fn(case, mark=mark)
    return _slowed(step) if case.variant == VARIANT else step


speed._step_fn = _slow_step_fn
