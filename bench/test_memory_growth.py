"""Memory growth: every variant, stepped four times, allocates the same after every step and
peaks at the same bytes in every step once the warm-up step is done.

The probe counts from before the first step, so what any step leaves alive counts, and the
cyclic collector is paused while the steps run, so a reference cycle that only it would free
shows too (``ac_bench.growth`` says why). This holds for every family, with or without
baselines: nothing here is compared with a committed figure. The default run checks each
selected family's cheapest flavor (``tiny``, ``llama-small``); ``--slow`` adds every selected
flavor (``ac_bench.cases.growth_flavors``). ``tests/test_memory_growth.py`` plants both faults.
"""

from __future__ import annotations

from ac_bench.growth import measure_growth


def test_memory_does_not_grow_after_warmup(growth_case):
    """Allocated bytes after each step and the peak of each step equal after the warm-up."""
    series = measure_growth(growth_case.flavor, growth_case.variant, growth_case.device)
    assert series.case_id == growth_case.id, series.case_id
    problems = series.problems()
    assert not problems, "\n".join(problems)
