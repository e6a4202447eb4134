"""The MILP planner (``ac_bench.milp``) is exact: at ``tiny`` and ``small`` its answer equals
brute-force enumeration of every per-block plan at many budgets; its peak model
(``ac_bench.blockplan``) equals real measurement on plans it was not calibrated on; plan names
parse back; bad input is one line.

The figures are measured on fake tensors (exact on the CPU, no compute), ``none`` included; the
budgets are spread over every distinct predicted peak, from one byte below the smallest.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import pytest

from ac_bench.blockplan import brute_force, every_plan, measure_figures, regions
from ac_bench.models import BlockPlanAC, get_flavor, get_policy
from ac_bench.outputs import gib_at_least
from ac_bench.record import measure_variant
from tests.helpers import needs_pulp, tiny_seq128

#: At ``tiny`` itself every plan peaks alike: the brute force and the MILP agree trivially.
TINY_128 = tiny_seq128()
FLAVORS = {"tiny": get_flavor("tiny"), "tiny_seq128": TINY_128, "small": get_flavor("small"),
           "small_depth6": dataclasses.replace(get_flavor("small"), depth=6)}
BUDGETS_PER_CASE = 12


@functools.cache
def figures(flavor_id: str, attention: str):
    flavor = FLAVORS[flavor_id]
    estimated = dataclasses.replace(flavor, cpu_mode="estimate")
    return measure_figures(flavor, attention, "cpu", measure=lambda variant: measure_variant(estimated, variant, "cpu"))


# tiny itself is the trivial case (the optimizer step sets every peak): deep, for make test's 20 minutes.
@pytest.mark.parametrize("flavor_id,attention", [pytest.param("tiny", "eager", marks=pytest.mark.deep),
                                                  ("tiny_seq128", "eager"), ("tiny_seq128", "sdpa"),
                                                  pytest.param("small", "eager", marks=pytest.mark.deep),
                                                  pytest.param("small", "sdpa", marks=pytest.mark.deep)])
def test_milp_equals_brute_force(flavor_id, attention):
    needs_pulp()
    from ac_bench.milp import NothingFits, solve
    fig = figures(flavor_id, attention)
    peaks = sorted({fig.predict(b).peak_bytes for b in every_plan(fig)})
    if flavor_id == "tiny":
        assert len(peaks) == 1, f"tiny: {len(peaks)} distinct peaks; the optimizer step was expected to set every one"
    else:
        assert len(peaks) > 50, f"{flavor_id}: only {len(peaks)} distinct predicted peaks"
    step = max(1, len(peaks) // BUDGETS_PER_CASE)
    budgets = sorted({*peaks[::step], peaks[-1]})
    with pytest.raises(NothingFits) as info:
        solve(fig, peaks[0] - 1)
    named = gib_at_least(peaks[0], 3)
    assert "\n" not in str(info.value) and f"smallest feasible budget is {named} GiB ({peaks[0]} B" in str(
        info.value), f"{flavor_id} {attention}: {info.value}"
    assert int(float(named) * 2 ** 30) >= peaks[0], f"{named} GiB, pasted back as --budget-gib, is below {peaks[0]} B"
    for budget in budgets:
        expected_blocks, expected = brute_force(fig, budget)
        got = solve(fig, budget)
        label = f"{flavor_id} {attention} at {budget:,} B"
        assert got.gap == 0.0, f"{label}: not proven optimal"
        assert (got.prediction.recompute_flops, sum(map(regions, got.blocks))) == (
            expected.recompute_flops, sum(map(regions, expected_blocks))), (
            f"{label}: the MILP chose {BlockPlanAC.of(got.blocks).name} ({got.prediction.recompute_flops:,} FLOPs), "
            f"the brute force {BlockPlanAC.of(expected_blocks).name} ({expected.recompute_flops:,} FLOPs)")
        assert got.prediction.peak_bytes <= budget, f"{label}: the MILP's plan is predicted at {got.prediction.peak_bytes:,} B"


@pytest.mark.parametrize("flavor_id,attention", [pytest.param("small_depth6", "sdpa", marks=pytest.mark.deep),
                                                  ("tiny_seq128", "eager")])
def test_prediction_equals_real_measurement(flavor_id, attention):
    """Real tensors, plans the figures were not measured on (small at 6 blocks, the figures at
    4): the MILP's plans at two budgets and a mixed plan, to the byte and the FLOP."""
    needs_pulp()
    from ac_bench.milp import solve
    flavor, fig = FLAVORS[flavor_id], figures(flavor_id, attention)
    peaks = sorted({fig.predict(b).peak_bytes for b in every_plan(fig)})
    plans = {solve(fig, peaks[k * (len(peaks) - 1) // 3]).blocks for k in (1, 2)}
    plans.add(tuple(fig.space[(3 * i + 7) % len(fig.space)] for i in range(fig.depth)))
    none = measure_variant(flavor, f"none-{attention}", "cpu")
    for blocks in sorted(plans):
        policy, p = BlockPlanAC.of(blocks), fig.predict(blocks)
        r = measure_variant(flavor, f"{policy.name}-{attention}", "cpu")
        assert (r.peak_bytes, r.forward_kept_bytes, r.flops - none.flops) == (p.peak_bytes, p.kept_bytes, p.recompute_flops), (
            f"{flavor_id} {policy.name}-{attention}: measured peak {r.peak_bytes:,} B, kept {r.forward_kept_bytes:,} B, "
            f"recompute {r.flops - none.flops:,}; predicted {p.peak_bytes:,}, {p.kept_bytes:,}, {p.recompute_flops:,} "
            f"(peak at the {p.peak_at})")


#: Mixed plans at llama3-8b-4l (fake tensors, bfloat16): blocks that keep their input (attention
#: checkpointed: f, s, l) next to blocks that do not (n), in both orders and not only alternating.
LLAMA_MIXED = (("nn", "fn", "nn", "fn"), ("fn", "nn", "fn", "nn"), ("ns", "ss", "ns", "ss"),
               ("lf", "nf", "lf", "nf"), ("nn", "ss", "fn", "ns"), ("lf", "nn", "nn", "ls"))


def test_llama_plans_measure_as_predicted_with_what_each_block_hands_on():
    """The llama family: a block whose attention is not checkpointed does not keep its input
    (RMSNorm saves a float32 copy), freed after its forward; with ``RegionFigures.handed_on``
    every mixed plan measures as predicted (all 320 plans alternating two choices did,
    2026-11-30); without it some miss by one hidden-state tensor (64 MiB)."""
    import dataclasses as dc
    flavor = get_flavor("llama3-8b-4l")
    fig = measure_figures(flavor, "sdpa")
    hidden = flavor.batch * flavor.seq_len * flavor.d_model * 2  # bfloat16
    assert fig.handed_on == {c: hidden if c[0] == "n" else 0 for c in fig.space}, fig.handed_on
    none = measure_variant(flavor, "none-sdpa", "cpu")
    without = dc.replace(fig, handed_on={})
    missed = 0
    for blocks in LLAMA_MIXED:
        policy, p = BlockPlanAC.of(blocks), fig.predict(blocks)
        r = measure_variant(flavor, f"{policy.name}-sdpa", "cpu")
        assert (r.peak_bytes, r.forward_kept_bytes, r.flops - none.flops) == (p.peak_bytes, p.kept_bytes, p.recompute_flops), (
            f"{policy.name}-sdpa: measured peak {r.peak_bytes:,} B, kept {r.forward_kept_bytes:,} B, recompute "
            f"{r.flops - none.flops:,}; predicted {p.peak_bytes:,}, {p.kept_bytes:,}, {p.recompute_flops:,}")
        q = without.predict(blocks)
        missed += (q.peak_bytes, q.kept_bytes) != (r.peak_bytes, r.forward_kept_bytes)
    assert missed >= 2, f"without handed_on only {missed} of {len(LLAMA_MIXED)} plans miss: the test no longer shows the term"


def test_names_parse_back():
    blocks = ("ff", "ff", "ff", "fs", "lf", "ls", "nn", "nn", "pf", "lp")
    policy = BlockPlanAC.of(blocks)
    assert policy.name == "blocks_ff3.fs.lf.ls.nn2.pf.lp"
    assert get_policy(policy.name) == policy and get_policy(policy.name).blocks == blocks
    assert policy.regions(len(blocks))[:4] == [(0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp")]
    assert (4, "layer") in policy.regions(len(blocks)) and not [r for r in policy.regions(len(blocks)) if r[0] in (6, 7)]


@pytest.mark.parametrize("name,expected", [
    ("blocks_ff1", "write it as blocks_ff"),
    ("blocks_ff.ff", "write it as blocks_ff2"),
    ("blocks_xy2", "optional run length"),
    ("blocks_", "optional run length"),
    ("blocks_lnn", "optional run length"),
    ("blocks_fp", "optional run length"),
    ("blocks_ff02", "optional run length"),
])
def test_bad_names_are_one_line(name, expected):
    with pytest.raises(ValueError) as info:
        get_policy(name)
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_plan_for_another_depth_is_refused():
    with pytest.raises(ValueError, match=r"plans 2 blocks; the model has 3"):
        measure_variant(get_flavor("tiny"), "blocks_ff2-sdpa", "cpu")


def test_without_pulp_the_solver_says_how_to_install_it(monkeypatch):
    from ac_bench.milp import SolverMissing, solve
    monkeypatch.setitem(sys.modules, "pulp", None)  # import pulp now raises ImportError
    with pytest.raises(SolverMissing, match=r"^the MILP planner needs PuLP and highspy: pip install 'ac-bench\[milp\]'"):
        solve(figures("tiny", "sdpa"), 2 ** 30)


class _NoHighs:
    """PuLP's HiGHS class where highspy is not installed: it says it is not available."""

    def __init__(self, *args, **kwargs):
        pass

    def available(self) -> bool:
        return False


def test_highs_and_cbc_find_the_same_optimum():
    """HiGHS (the default) and PuLP 3's bundled CBC (``AC_BENCH_MILP_SOLVER=cbc``, and the
    fallback without highspy) prove the same optimum at every budget of ``tiny_seq128`` sdpa."""
    pulp = needs_pulp()
    pytest.importorskip("highspy", reason="HiGHS needs highspy: pip install 'ac-bench[milp]'")
    if not hasattr(pulp, "PULP_CBC_CMD"):
        pytest.skip(f"PuLP {pulp.__version__} bundles no CBC (PuLP 4 dropped it)")
    from ac_bench.milp import smallest_peak, solve
    fig = figures("tiny_seq128", "sdpa")
    low, high = smallest_peak(fig)[1].peak_bytes, fig.predict(("nn",) * fig.depth).peak_bytes
    with pytest.MonkeyPatch.context() as env:
        answers = {}
        for name in ("highs", "cbc"):
            env.setenv("AC_BENCH_MILP_SOLVER", name)
            answers[name] = [solve(fig, low + (high - low) * k // 6) for k in range(7)]
    assert {s.solver for s in answers["highs"]} == {"HiGHS"} and {s.solver for s in answers["cbc"]} == {"CBC"}
    for h, c in zip(answers["highs"], answers["cbc"]):
        assert (h.prediction.cost, regions_of(h.blocks), h.gap) == (c.prediction.cost, regions_of(c.blocks), c.gap), (h, c)


def regions_of(blocks: tuple[str, ...]) -> int:
    return sum(regions(c) for c in blocks)


def test_without_highspy_the_planner_falls_back_to_cbc_and_without_either_says_what_to_install(monkeypatch):
    pulp = needs_pulp()
    from ac_bench.milp import SolverMissing, solve
    monkeypatch.delenv("AC_BENCH_MILP_SOLVER", raising=False)
    monkeypatch.setattr(pulp, "HiGHS", _NoHighs)
    if hasattr(pulp, "PULP_CBC_CMD"):
        assert solve(figures("tiny", "sdpa"), 2 ** 30).solver == "CBC"
        monkeypatch.delattr(pulp, "PULP_CBC_CMD")
    with pytest.raises(SolverMissing, match=r"^the MILP planner needs a solver PuLP can call: pip install highspy"):
        solve(figures("tiny", "sdpa"), 2 ** 30)


@pytest.mark.parametrize("value,says", [
    ("gurobi", "AC_BENCH_MILP_SOLVER='gurobi': the MILP planner solves with highs or cbc; set it to one of them"),
    ("cbc", "AC_BENCH_MILP_SOLVER=cbc: this PuLP"),
])
def test_a_solver_that_cannot_be_had_is_one_line(monkeypatch, value, says):
    """An unknown ``AC_BENCH_MILP_SOLVER``, and ``cbc`` with a PuLP that bundles none (PuLP 4)."""
    pulp = needs_pulp()
    from ac_bench.milp import SolverMissing, solve
    monkeypatch.setenv("AC_BENCH_MILP_SOLVER", value)
    if value == "cbc" and hasattr(pulp, "PULP_CBC_CMD"):
        monkeypatch.delattr(pulp, "PULP_CBC_CMD")
    with pytest.raises(SolverMissing) as info:
        solve(figures("tiny", "sdpa"), 2 ** 30)
    assert str(info.value).startswith(says) and "\n" not in str(info.value), info.value


@pytest.mark.parametrize("argv,says", [
    (["frontier", "--points", "1"], "--points needs at least 2 budgets, got 1"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "0.0001"],
     "no per-block plan fits 0.0001 GiB (107374 B) for tiny with sdpa attention: the smallest feasible budget is"),
    (["plan", "--space", "blocks", "--flavor", "tiny", "--budget-gib", "1", "--plot", "x.png"],
     "--plot draws the plan_aA_mM planner's picture"),
])
def test_bad_input_is_one_line(capsys, argv, says):
    if "--space" in argv:
        needs_pulp()
    from ac_bench.cli.report import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err, (code, err)


def test_frontier_refuses_a_bad_solver_before_measuring(capsys, monkeypatch):
    """``AC_BENCH_MILP_SOLVER=gurobi`` is one line before any step is measured (it took about
    8 s of measuring at ``seed`` before it was refused)."""
    needs_pulp()
    import ac_bench.cli.frontier as frontier
    from ac_bench.cli.report import main
    monkeypatch.setenv("AC_BENCH_MILP_SOLVER", "gurobi")
    measured = []
    monkeypatch.setattr(frontier, "measure_variant", lambda *a, **k: measured.append(a) or pytest.fail("measured"))
    try:
        code = main(["frontier", "--flavor", "tiny"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "AC_BENCH_MILP_SOLVER='gurobi'" in err and err.count("\n") == 1 and not measured, err


def test_a_plan_measured_over_the_budget_is_replaced():
    """Where the chosen plan measures over the budget (on CUDA a plan measured a few MiB off its
    prediction), the solver is asked again with the budget lowered by the miss."""
    needs_pulp()
    from ac_bench.milp import BlockPlanner, solve
    fig = figures("tiny_seq128", "eager")
    peaks = sorted({fig.predict(b).peak_bytes for b in every_plan(fig)})
    budget = peaks[len(peaks) // 2]
    first = BlockPlanAC.of(solve(fig, budget).blocks).name
    estimated = dataclasses.replace(TINY_128, cpu_mode="estimate")

    def measure(variant):
        r = measure_variant(estimated, variant, "cpu")
        return dataclasses.replace(r, peak_bytes=budget + 1000) if variant == f"{first}-eager" else r
    planner = BlockPlanner(TINY_128, "eager", measure=measure)
    planner._figures = fig
    plan = planner.plan(budget)
    assert plan.misses == {first: budget + 1000} and plan.policy.name != first and plan.record.peak_bytes <= budget, (
        f"misses {plan.misses}, chose {plan.policy.name} at {plan.record.peak_bytes:,} B for {budget:,} B")


def test_a_plans_record_carries_its_predicted_peak_which_the_gate_holds_it_to():
    """The plan's record has the solution's predicted peak (``predicted_peak_bytes``), equal to
    the measured one on the CPU; kept by the session's store for the JSON (``amend``, which takes
    nothing but the prediction); and gated: a torch whose measured peak moves 0.5% away from the
    model (within ``peak_bytes``'s 2%) fails, naming predicted and measured."""
    needs_pulp()
    from ac_bench.cases import Case
    from ac_bench.gate.baselines import compare, entry_of
    from ac_bench.metrics import DEFAULT_TOLERANCES
    from ac_bench.milp import BlockPlanner
    from ac_bench.plugin.session import MeasurementStore
    fig = figures("tiny_seq128", "eager")
    budget = sorted({fig.predict(b).peak_bytes for b in every_plan(fig)})[-2]
    estimated = dataclasses.replace(TINY_128, cpu_mode="estimate")
    measured: dict = {}

    def measure(variant):
        measured[variant] = measure_variant(estimated, variant, "cpu")
        return measured[variant]
    planner = BlockPlanner(TINY_128, "eager", measure=measure)
    planner._figures = fig
    plan = planner.plan(budget)
    r, variant = plan.record, f"{plan.policy.name}-eager"
    assert r.predicted_peak_bytes == plan.solution.prediction.peak_bytes == r.peak_bytes, (
        r.predicted_peak_bytes, plan.solution.prediction, r.peak_bytes)
    assert measured[variant].predicted_peak_bytes is None, "the measurement itself predicts nothing"

    store, case = MeasurementStore(), Case("cpu", estimated, variant)
    store._records[case.id] = measured[variant]
    store.amend(case, r)
    assert [x["predicted_peak_bytes"] for x in store.as_json()] == [r.predicted_peak_bytes]
    with pytest.raises(ValueError, match="only predicted_peak_bytes changed"):
        store.amend(case, dataclasses.replace(r, peak_bytes=r.peak_bytes + 1))

    baseline = {**entry_of(r), "torch_version": "2.13.0"}
    moved = dataclasses.replace(r, peak_bytes=r.peak_bytes + r.peak_bytes // 200, torch_version="2.99.0")
    (message,) = compare(moved, baseline, DEFAULT_TOLERANCES)
    assert (f"the measured peak_bytes moved away from the prediction (predicted_peak_bytes) with the torch upgrade "
            f"(2.13.0 -> 2.99.0): predicted {r.peak_bytes:,} B, measured {moved.peak_bytes:,} B") in message, message


def test_a_flavor_whose_peak_no_plan_lowers_has_no_frontier_and_says_why(capsys):
    """``frontier --flavor tiny``: the step's peak is the optimizer's, every plan peaks where
    ``none`` does; one line saying so and what to change, not a table of identical rows (it
    measured for a minute and printed 12 rows of 0.7 MiB, a fresh user's check)."""
    needs_pulp()
    from ac_bench.cli.report import main
    try:
        code = main(["frontier", "--flavor", "tiny"])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, (code, out, err)
    assert "every per-block plan of tiny (sdpa) peaks at 0.731 MiB, as none does" in err and "--seq-len" in err, err
