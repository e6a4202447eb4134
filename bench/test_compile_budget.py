"""torch.compile's activation memory budget (``budget_B``): what the min-cut partitioner keeps
as B shrinks, and whether the compiled model still trains exactly.

Compilation is the cost here (3 to 10 s per budget at ``tiny`` on the CPU; 45 to 65 s at
``small``), so the default run compiles at ``tiny`` whatever ``--flavor`` selects; the sweep at
the selected flavors is marked slow (``--slow``: the README's test command, ``tox -e gpu`` and
the nightly job). On the CPU the backend is ``aot_eager_decomp_partition`` (the partitioner
without code generation), on CUDA inductor; the record names it.
"""

from __future__ import annotations

import pytest

from ac_bench.cases import COMPILE_BUDGETS, COMPILE_FLAVOR, Case
from ac_bench.gradients import mismatches, run_step, twin_models
from ac_bench.models import budget_name, get_flavor, get_policy

#: The default run's flavor and sweep are ac_bench.cases' COMPILE_FLAVOR and COMPILE_BUDGETS (the
#: gate in test_baselines.py reads them too); the slow sweep (selected flavors) uses SLOW_BUDGETS.
BUDGETS = COMPILE_BUDGETS
SLOW_BUDGETS = (1.0, 0.5, 0.0)
#: Budgets whose gradients are compared against the same model compiled at B = 1.0 in the
#: default run; the rest of the sweep's with --slow.
GRADIENT_BUDGETS = (0.3, 0.0)
SLOW_GRADIENT_BUDGETS = tuple(b for b in BUDGETS if b not in GRADIENT_BUDGETS + (1.0,))


def _records(measurements, device, flavor, attention, budgets):
    return {b: measurements.get(Case(device, flavor, f"{budget_name(b)}-{attention}")) for b in budgets}


def _check_monotonic(records: dict, label: str) -> None:
    order = sorted(records, reverse=True)  # 1.0 first
    for metric in ("forward_kept_bytes", "saved_bytes"):
        values = [getattr(records[b], metric) for b in order]
        grew = [f"B={hi} keeps {getattr(records[hi], metric):,} B, B={lo} keeps {getattr(records[lo], metric):,} B"
                for hi, lo in zip(order, order[1:]) if getattr(records[lo], metric) > getattr(records[hi], metric)]
        assert not grew, f"{label}: {metric} grew as the budget shrank: " + "; ".join(grew)
        assert values[-1] < values[0], f"{label}: {metric} did not move over the sweep ({values})"


@pytest.fixture
def device(session_device, suite_models) -> str:
    """The session's device; the sweep at COMPILE_FLAVOR runs only where the suite's own models do."""
    return session_device


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_kept_bytes_shrink_with_the_budget(device, attention, measurements):
    """Over B = 1.0 ... 0.0, bytes kept for backward never grow as B shrinks, and B = 0 keeps
    less than B = 1. The records say what ran: compile_budget, B and the backend."""
    flavor = get_flavor(COMPILE_FLAVOR)
    records = _records(measurements, device, flavor, attention, BUDGETS)
    for b, r in records.items():
        assert (r.policy_kind, r.policy_params["budget"]) == ("compile_budget", b), f"{r.variant}: {r.policy_params}"
        assert r.policy_params["backend"] == get_policy(budget_name(b)).backend_for(device), (
            f"{r.variant}: recorded backend {r.policy_params['backend']!r}")
        assert r.saved_bytes == r.forward_kept_bytes or device == "cuda", (
            f"{r.variant}: saved_tensors_hooks saw {r.saved_bytes:,} B, the tracker {r.forward_kept_bytes:,} B")
    _check_monotonic(records, f"{flavor.name} {attention}")
    # Recomputing costs FLOPs: B = 0 recomputes more than B = 1.
    assert records[0.0].flops > records[1.0].flops, (
        f"{flavor.name} {attention}: B=0 recomputes no more FLOPs ({records[0.0].flops:,}) than B=1 ({records[1.0].flops:,})")


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.parametrize("attention", ["sdpa"])
def test_kept_bytes_shrink_with_the_budget_at_selected_flavors(flavor_on_device, attention, measurements):
    """The sweep at the selected flavors. On the CPU only where they are estimated on fake
    tensors (seed: ~17 s per budget); a real CPU compile of ``small`` takes about a minute per
    budget, beyond the test command's time budget."""
    device, flavor = flavor_on_device
    if device == "cpu" and flavor.cpu_mode != "estimate":
        pytest.skip(f"{flavor.name} is measured for real on the CPU, where one compile takes about a minute; "
                    f"the sweep runs at the estimated flavors (seed) and on CUDA")
    _check_monotonic(_records(measurements, device, flavor, attention, SLOW_BUDGETS), f"{flavor.name} {attention}")


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no_dropout", "dropout"])
@pytest.mark.parametrize("budget", [*GRADIENT_BUDGETS,
                                    *(pytest.param(b, marks=pytest.mark.slow) for b in SLOW_GRADIENT_BUDGETS)])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_gradients_equal_to_budget_one(device, attention, budget, dropout):
    """The model compiled at B against the same model compiled at B = 1.0: the partitioner only
    changes what is saved and what is recomputed, so loss, output and every gradient are
    bitwise equal; with dropout, recomputation must not draw new masks."""
    flavor = get_flavor(COMPILE_FLAVOR)
    reference_policy, policy = get_policy(budget_name(1.0)), get_policy(budget_name(budget))
    # Two compiled models alive at once: apply() resets Dynamo, so the reference recompiles
    # (at its own budget, patched by its forward context) when it runs.
    reference, model, x = twin_models(flavor, attention, policy, device, dropout=dropout,
                                      reference_policy=reference_policy)
    expected = run_step(reference, x, rng_seed=1234, policy=reference_policy)
    actual = run_step(model, x, rng_seed=1234, policy=policy)
    problems = mismatches(expected, actual)
    assert not problems, (f"{flavor.name} {policy.name}-{attention} (dropout {dropout}) differs from "
                          f"{reference_policy.name}-{attention}:\n" + "\n".join(problems))
    if dropout:
        assert not run_step(reference, x, rng_seed=4321, policy=reference_policy).output.equal(expected.output), (
            f"{policy.name}-{attention}: dropout {dropout} drew the same masks for two seeds")


def test_recompute_flops_cannot_see_shows_in_backward_ops(device, measurements):
    """``budget_0.99`` against ``budget_1.0`` at COMPILE_FLAVOR, sdpa: the partitioner keeps less
    and recomputes only ops without FLOPs (matmul FLOPs identical), which the ops of backward
    count and the bytes its non-matmul ops read and write measure (tiny: 400,896 B more). On CUDA
    inductor fuses the recomputed ops into its own kernels, which no dispatch mode sees, so the
    comparison is asserted with the CPU's non-fusing backend only."""
    if device != "cpu":
        pytest.skip("inductor (CUDA) fuses recomputed elementwise ops into generated kernels, which dispatch no "
                    "aten op: the ops of backward are compared with the CPU's aot_eager_decomp_partition backend")
    flavor = get_flavor(COMPILE_FLAVOR)
    high, low = (measurements.get(Case(device, flavor, f"{budget_name(b)}-sdpa")) for b in (1.0, 0.99))
    figures = {r.variant: (r.forward_kept_bytes, r.flops, r.backward_ops, r.backward_nonmatmul_bytes) for r in (high, low)}
    assert low.flops == high.flops, f"{flavor.name}: (kept bytes, FLOPs, backward ops, non-matmul bytes) {figures}"
    assert low.forward_kept_bytes < high.forward_kept_bytes, f"{flavor.name}: {figures}"
    assert low.backward_ops > high.backward_ops, f"{flavor.name}: the recompute does not show in backward ops: {figures}"
    assert low.backward_nonmatmul_bytes > high.backward_nonmatmul_bytes, (
        f"{flavor.name}: the recompute does not show in the bytes of backward's non-matmul ops: {figures}")
