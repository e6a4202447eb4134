"""The MILP planner over per-block plans (``ac_bench.milp``): a budget in, the plan with the fewest
recompute FLOPs out, measured.

For each flavor with declared budgets the solver's plan is measured (fake tensors for ``seed``
on the CPU), must fit, must be what the model predicted to the byte and the FLOP on the CPU,
must recompute no more than the ``plan_aA_mM`` planner's plan at the same budget (whose space
it contains), and is gated against the baselines like every variant, its predicted peak
(``predicted_peak_bytes``) with it: a torch that moves the measured peak away from the model
fails the gate on any device, naming both. Brute-force optimality
at ``tiny`` and ``small`` is ``tests/test_milp.py``.
"""

from __future__ import annotations

import pytest

from ac_bench.cases import Case
from ac_bench.planner import Planner, parse_budget
from ac_bench.plugin.parametrize import device_marks, selected
from ac_bench.plugin.session import gate_record

pulp = pytest.importorskip("pulp", reason="the MILP planner needs PuLP: pip install 'ac-bench[milp]'")

#: Budgets (whole-step peak) per flavor, in the default run: sdpa at seed, where per-op saving
#: and whole layers beat whole sublayers most: at 0.75 GiB the plan recomputes no matmul (the
#: plan_aA_mM planner 34.4 GFLOP), at 0.45 GiB it mixes whole layers and selective regions.
#: With --slow (make test runs them; about 30 s, which pytest bench/'s 8 minutes cannot spare).
MILP_BUDGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "seed": (("sdpa", "0.75GiB"), ("sdpa", "0.45GiB")),
}
#: More, with --slow and deep (small's plans are measured on real tensors by tests/test_milp.py).
SLOW_MILP_BUDGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "seed": (("eager", "1GiB"), ("eager", "0.75GiB")),
}


def pytest_generate_tests(metafunc):
    """``milp_budget``: ``(device, flavor, attention, budget)`` per selected flavor's budgets."""
    device, flavors = selected(metafunc.config)
    params = [pytest.param((device, f, a, b), id=f"{device}-{f.name}-{a}-{b}", marks=[*device_marks(device), *extra])
              for f in flavors
              for budgets, extra in ((MILP_BUDGETS, (pytest.mark.slow,)),
                                     (SLOW_MILP_BUDGETS, (pytest.mark.slow, pytest.mark.deep)))
              for a, b in budgets.get(f.name, ())]
    if not params:
        declared = sorted({*MILP_BUDGETS, *SLOW_MILP_BUDGETS})
        params = [pytest.param(None, id=f"{device}-no-budgets", marks=pytest.mark.skip(
            reason=f"no selected flavor declares MILP budgets (MILP_BUDGETS, SLOW_MILP_BUDGETS: {', '.join(declared)})"))]
    metafunc.parametrize("milp_budget", params)


@pytest.fixture(scope="session")
def block_planners(measurements):
    """One BlockPlanner per (device, flavor, attention), measuring through the session's cache."""
    from ac_bench.milp import BlockPlanner
    made: dict[tuple, BlockPlanner] = {}

    def get(device: str, flavor, attention: str) -> BlockPlanner:
        key = (device, flavor.name, attention)
        if key not in made:
            made[key] = BlockPlanner(flavor, attention, device,
                                     measure=lambda variant: measurements.get(Case(device, flavor, variant)))
        return made[key]
    return get


class _ThisTestsGate:
    """The session's baseline gate, whose accept command selects this test (a plan's variant
    is chosen while the test runs, so ``-k VARIANT`` would select nothing)."""

    def __init__(self, gate, selector: str) -> None:
        self._gate, self._selector = gate, selector

    def __getattr__(self, name: str):
        return getattr(self._gate, name)

    def accept_command(self, record) -> str:
        return self._gate.accept_command(record).rsplit(" -k ", 1)[0].replace("pytest bench/", "pytest bench/test_milp.py") + (
            f" -k {self._selector}")


def test_milp_plan_fits_as_predicted(milp_budget, block_planners, measurements, baseline_gate, update_baselines):
    device, flavor, attention, budget = milp_budget
    planner = block_planners(device, flavor, attention)
    budget_bytes = parse_budget(budget)
    plan = planner.plan(budget_bytes)
    r, p = plan.record, plan.solution.prediction
    measurements.amend(Case(device, flavor, f"{plan.policy.name}-{attention}"), r)  # the JSON's record has the prediction
    label = f"{flavor.name} {plan.policy.name}-{attention} at {budget}"
    assert (r.policy_kind, r.policy) == ("blocks", plan.policy.name), f"{label}: record of {r.policy_kind} {r.policy}"
    assert r.predicted_peak_bytes == p.peak_bytes, f"{label}: the record predicts {r.predicted_peak_bytes}, the solution {p.peak_bytes:,}"
    assert r.peak_bytes <= budget_bytes, f"{label}: measured peak {r.peak_bytes:,} B over the budget"
    assert plan.solution.gap == 0.0, f"{label}: CBC did not prove the plan optimal within its time limit"
    if device == "cpu":
        assert (r.peak_bytes, r.forward_kept_bytes, r.flops - plan.none.flops) == (
            p.peak_bytes, p.kept_bytes, p.recompute_flops), (
            f"{label}: measured peak {r.peak_bytes:,} B, kept {r.forward_kept_bytes:,} B, recompute "
            f"{r.flops - plan.none.flops:,} FLOPs; predicted {p.peak_bytes:,}, {p.kept_bytes:,}, {p.recompute_flops:,}")
    # The plan_aA_mM planner's space (whole sublayers, first blocks) is inside this one.
    prefix = Planner(flavor, attention, device, measure=lambda v: measurements.get(Case(device, flavor, v)))
    chosen = prefix.choose(budget_bytes)
    if chosen is not None:
        assert p.recompute_flops <= chosen.recompute_flops, (
            f"{label}: recomputes {p.recompute_flops:,} FLOPs, the plan_aA_mM planner's {chosen.name} "
            f"{chosen.recompute_flops:,} at the same budget")
    gate_record(r, _ThisTestsGate(baseline_gate, f"{device}-{flavor.name}-{attention}-{budget}"), update_baselines)
