"""The planner: a memory budget in, the cheapest checkpointing plan that fits out.

For each flavor with declared budgets, the plan is measured (fake tensors for ``seed`` on the
CPU), must fit, must be the cheapest plan that fits, and trains exactly like the model without
checkpointing. The planner's peak prediction is exact on the CPU (MemTracker counts storage
bytes), so it is asserted to the byte there; on CUDA the allocator rounds blocks.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ac_bench.cases import Case
from ac_bench.gradients import mismatches, run_step, twin_models
from ac_bench.planner import InfeasibleBudget, Planner, parse_budget
from ac_bench.plugin.parametrize import device_marks, selected

#: Budgets (whole-step peak) per flavor and attention, in the default run. Chosen to need a
#: mix: eager at 1 GiB checkpoints attention in most blocks and some MLPs; sdpa at 0.75 GiB
#: checkpoints a few MLPs (cheaper per byte than attention with sdpa).
PLAN_BUDGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "seed": (("eager", "1GiB"), ("sdpa", "0.75GiB")),
}
#: More budgets, run with --slow (the README's test command and tox -e gpu run them); those of
#: ``DEEP_PLAN_FLAVORS`` are also marked deep (tox -e cpu runs them, make test does not: about
#: two minutes at ``small``).
DEEP_PLAN_FLAVORS = ("small",)
SLOW_PLAN_BUDGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "seed": (("eager", "1.5GiB"), ("sdpa", "0.5GiB")),
    "small": (("eager", "300MiB"), ("sdpa", "60MiB")),
}
#: Gradients of a plan are checked at this sequence length on the CPU. Short: ``seed`` is
#: bfloat16, whose backward matmuls run at about 1 GFLOP/s on an AVX2 CPU without native
#: bfloat16 (torch 2.13.0: one step 30 s at 256, 8 s at 64). Recomputation's replay does not
#: depend on the length, and the check still compares every gradient bitwise.
CPU_GRADIENT_SEQ_LEN = 64
#: On CUDA the allocator's rounding and workspaces move the peak from the prediction.
CUDA_PREDICTION_TOLERANCE = 0.03


def pytest_generate_tests(metafunc):
    """``plan_budget``: ``(device, flavor, attention, budget)`` for each selected flavor's
    declared budgets, the slow ones marked slow."""
    device, flavors = selected(metafunc.config)
    deep = (pytest.mark.slow, pytest.mark.deep)
    params = [pytest.param((device, f, a, b), id=f"{device}-{f.name}-{a}-{b}", marks=[*device_marks(device), *extra])
              for f in flavors
              for budgets, extra in ((PLAN_BUDGETS, ()),
                                     (SLOW_PLAN_BUDGETS, deep if f.name in DEEP_PLAN_FLAVORS else (pytest.mark.slow,)))
              for a, b in budgets.get(f.name, ())]
    if not params:  # say why rather than pytest's "got empty parameter set"
        declared = sorted({*PLAN_BUDGETS, *SLOW_PLAN_BUDGETS})
        params = [pytest.param(None, id=f"{device}-no-budgets", marks=pytest.mark.skip(
            reason=f"no selected flavor declares planner budgets (PLAN_BUDGETS, SLOW_PLAN_BUDGETS: {', '.join(declared)})"))]
    metafunc.parametrize("plan_budget", params)


@pytest.fixture(scope="session")
def planners(measurements):
    """One Planner per (device, flavor, attention), measuring through the session's cache (so
    the plans' records are in the JSON like every variant's)."""
    made: dict[tuple, Planner] = {}

    def get(device: str, flavor, attention: str) -> Planner:
        key = (device, flavor.name, attention)
        if key not in made:
            made[key] = Planner(flavor, attention, device,
                                measure=lambda variant: measurements.get(Case(device, flavor, variant)))
        return made[key]
    return get


def test_plan_fits_and_is_the_cheapest_that_fits(plan_budget, planners):
    device, flavor, attention, budget = plan_budget
    planner = planners(device, flavor, attention)
    budget_bytes = parse_budget(budget)
    plan = planner.plan(budget_bytes)
    record, chosen = plan.record, plan.chosen
    label = f"{flavor.name} {chosen.name}-{attention} at {budget}"
    assert record.policy_kind == "plan" and record.policy == chosen.name, f"{label}: record of {record.policy}"
    assert record.peak_bytes <= budget_bytes, f"{label}: measured peak {record.peak_bytes:,} B over the budget"
    if device == "cpu":
        assert (record.peak_bytes, record.forward_kept_bytes) == (chosen.predicted_peak_bytes, chosen.kept_bytes), (
            f"{label}: the planner predicted peak {chosen.predicted_peak_bytes:,} B and kept {chosen.kept_bytes:,} B")
        assert record.flops - planner.measure("plan_a0_m0").flops == chosen.recompute_flops, (
            f"{label}: recompute FLOPs differ from the analytic model's {chosen.recompute_flops:,}")
    else:
        assert record.peak_bytes == pytest.approx(chosen.predicted_peak_bytes, rel=CUDA_PREDICTION_TOLERANCE), (
            f"{label}: measured peak {record.peak_bytes:,} B, predicted {chosen.predicted_peak_bytes:,} B")
    # Cheapest: every plan with fewer recompute FLOPs is predicted over the budget, and the one
    # predicted closest to fitting is measured over it too.
    cheaper = [c for c in plan.candidates if c.recompute_flops < chosen.recompute_flops]
    fits = [c.name for c in cheaper if c.predicted_peak_bytes <= budget_bytes and c.name not in plan.rejected_on_measurement]
    assert not fits, f"{label}: cheaper plans predicted to fit and not tried: {fits}"
    if cheaper:
        closest = min(cheaper, key=lambda c: c.predicted_peak_bytes)
        measured = planner.measure(closest.policy).peak_bytes
        assert measured > budget_bytes, (
            f"{label}: {closest.name} recomputes fewer FLOPs ({closest.recompute_flops:,} against "
            f"{chosen.recompute_flops:,}) and measured {measured:,} B, within the budget")


def test_impossible_budget_names_the_smallest_feasible(plan_budget, planners):
    """One byte below the smallest feasible peak: a one-line error naming that peak; at it, a plan."""
    device, flavor, attention, _ = plan_budget
    planner = planners(device, flavor, attention)
    smallest = min(planner.measure(c.policy).peak_bytes for c in planner.candidates()
                   if c.predicted_peak_bytes == min(x.predicted_peak_bytes for x in planner.candidates()))
    with pytest.raises(InfeasibleBudget) as info:
        planner.plan(smallest - 1)
    message = str(info.value)
    assert "\n" not in message and "smallest feasible budget is" in message and f"({smallest} B" in message, (
        f"{flavor.name} {attention}: {message!r} does not name the smallest feasible budget {smallest} B on one line")
    at_smallest = planner.plan(smallest).record
    assert at_smallest.peak_bytes == smallest, (
        f"{flavor.name} {attention}: at the smallest feasible budget {at_smallest.variant} peaks at {at_smallest.peak_bytes:,} B")


def test_plan_trains_like_no_checkpointing(plan_budget, planners):
    """The chosen plan's gradients are bitwise those of the model without checkpointing (with
    dropout, so recomputation must replay the RNG). Estimated flavors run here for real, at a
    shorter sequence on the CPU."""
    device, flavor, attention, budget = plan_budget
    policy = planners(device, flavor, attention).plan(parse_budget(budget)).chosen.policy
    check = flavor if device != "cpu" else dataclasses.replace(flavor, seq_len=min(flavor.seq_len, CPU_GRADIENT_SEQ_LEN))
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        reference, model, x = twin_models(check, attention, policy, device, dropout=0.1)
        problems = mismatches(run_step(reference, x, rng_seed=7), run_step(model, x, rng_seed=7, policy=policy))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert not problems, f"{flavor.name} {policy.name}-{attention} differs from none-{attention}:\n" + "\n".join(problems)
