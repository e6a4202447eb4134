"""The deterministic gate: memory figures and FLOPs against this device's committed baselines."""

from __future__ import annotations

import pytest

from ac_bench.cases import COMPILE_BUDGETS, COMPILE_FLAVOR, Case
from ac_bench.models import ATTENTIONS, budget_name, get_flavor
from ac_bench.plugin.session import gate_record

#: The gate alone: `pytest bench/ -m gate` (what scripts/gpu-check runs against committed baselines).
pytestmark = pytest.mark.gate


def test_figures_match_baseline(case, measurements, baseline_gate, update_baselines):
    """Fails when a memory figure or the FLOPs move beyond tolerance, in either direction."""
    gate_record(measurements.get(case), baseline_gate, update_baselines)


@pytest.mark.parametrize("variant", [f"{budget_name(b)}-{a}" for b in COMPILE_BUDGETS for a in ATTENTIONS],
                         ids=lambda v: f"{COMPILE_FLAVOR}-{v}")
def test_compile_budget_figures_match_baseline(session_device, suite_models, variant, measurements, baseline_gate,
                                               update_baselines):
    """torch.compile's budget sweep (test_compile_budget.py) against the baselines: what
    the min-cut partitioner keeps at each B is what a torch upgrade changes."""
    gate_record(measurements.get(Case(session_device, get_flavor(COMPILE_FLAVOR), variant)), baseline_gate,
          update_baselines)

