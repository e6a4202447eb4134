"""Checks that need no analytic model, for every family: each region policy's figures are those of
the regions it checkpoints, measured on their own in one forward of ``none`` (``ac_bench.regions``).

For each variant whose policy checkpoints whole regions (``full``, ``attn``, ``mlp``,
``every_N``, ``plan_aA_mM``, ``whole_layers``…), against its measured record:

- recompute: FLOPs(policy) - FLOPs(none) is the sum, over its checkpointed regions, of each
  region's forward FLOPs up to its last saved tensor (non-reentrant checkpointing's early stop),
  exactly;
- memory: ``forward_kept_bytes`` is what ``none`` keeps, less what the checkpointed regions keep
  inside, plus their inputs, each storage counted once; ``saved_bytes`` is the same without the
  inputs a checkpoint holds as Python objects (keyword arguments), which saved-tensor hooks do
  not see. Exact where memory is counted exactly (MemTracker), within the CUDA allocator's
  rounding there. So the gap between the two is exactly those held inputs (on the transformers
  families: a layer's position embeddings, ids and mask, a sublayer's hidden states, passed as
  keyword arguments), and a family that declares no gap (``Family.saved_bytes_gap``) must hold none.

Gradients bitwise equal to ``none`` are ``bench/test_gradients.py``'s, for every variant of every
family. Where a family has an analytic model, it must agree with these measured figures for every
region policy and every plan; and the planner must choose the same plans from either source.
"""

from __future__ import annotations

import pytest

from ac_bench.analytic import not_modelled_reason
from ac_bench.cases import Case
from ac_bench.models import FLAVORS, PlanAC, family_of, get_policy
from ac_bench.planner import Planner
from ac_bench.regions import NotARegionPolicy, from_analytic, measure_regions, policy_regions, sublayers_only

#: Relative tolerance and slack of ``forward_kept_bytes`` where the CUDA allocator counts it
#: (block rounding), as in ``bench/test_memory.py``; exact under MemTracker.
CUDA_TOLERANCE, CUDA_SLACK = 0.02, 2 ** 16


@pytest.fixture(scope="session")
def region_profiles():
    """``(device, flavor, attention)`` -> the measured ``RegionProfile``, measured once per session."""
    made: dict = {}

    def get(device: str, flavor, attention: str):
        key = (device, flavor.name, attention)
        if key not in made:
            made[key] = measure_regions(flavor, attention, device)
        return made[key]
    return get


def _regions(case):
    """The case's checkpointed regions, or a skip saying why its policy does not compose from them."""
    try:
        return policy_regions(case.policy, case.flavor.depth)
    except NotARegionPolicy as exc:
        pytest.skip(str(exc))


def _label(case) -> str:
    return f"family {case.flavor.family}, {case.flavor.name} {case.variant}"


def test_recompute_flops_are_the_checkpointed_regions_forwards(case, measurements, region_profiles):
    """FLOPs(policy) - FLOPs(none) == the checkpointed regions' forwards up to their last save."""
    regions = _regions(case)
    record = measurements.get(case)
    none = measurements.get(Case(case.device, case.flavor, f"none-{case.attention}"))
    profile = region_profiles(case.device, case.flavor, case.attention)
    predicted = profile.recompute_flops(regions)
    assert record.flops - none.flops == predicted, (
        f"{_label(case)}: recomputes {record.flops - none.flops:,} FLOPs (against none-{case.attention}), its regions "
        f"measured on their own {predicted:,}: {profile.describe(regions) or 'no region'}")


def test_kept_bytes_are_none_less_the_regions_plus_their_inputs(case, measurements, region_profiles):
    """``forward_kept_bytes`` and ``saved_bytes`` composed from the regions' figures (see the
    module docstring); their difference is then exactly the inputs the checkpoints hold as
    objects, which only a family that declares ``saved_bytes_gap`` may have."""
    regions = _regions(case)
    record = measurements.get(case)
    family = family_of(case.flavor)
    profile = region_profiles(case.device, case.flavor, case.attention)
    kept, seen = profile.kept_bytes(regions), profile.kept_bytes(regions, held=False)
    detail = f"none keeps {profile.kept_bytes(()):,} B; {profile.describe(regions) or 'no region'}"
    exact = record.memory_method != "cuda-allocator"
    assert record.forward_kept_bytes == (kept if exact else pytest.approx(kept, rel=CUDA_TOLERANCE, abs=CUDA_SLACK)), (
        f"{_label(case)}: keeps {record.forward_kept_bytes:,} B at the end of the forward, composed from its regions "
        f"{kept:,} B ({detail})")
    if record.saved_bytes is not None:
        gap = f"; the family's declared gap: {family.saved_bytes_gap}" if family.saved_bytes_gap else ""
        assert record.saved_bytes == seen, (
            f"{_label(case)}: saved-tensor hooks see {record.saved_bytes:,} B, composed from its regions {seen:,} B, "
            f"{kept - seen:,} B less than kept ({detail}{gap})")
    assert family.saved_bytes_gap is not None or kept == seen, (
        f"{_label(case)}: its checkpoints hold {kept - seen:,} B of inputs as Python objects (keyword or nested "
        f"tensors), which saved-tensor hooks cannot see, but family {family.name!r} declares no saved_bytes_gap ({detail})")


@pytest.mark.parametrize("attention", ("eager", "sdpa"))
def test_analytic_model_agrees_with_the_measured_regions(flavor_on_device, attention, region_profiles):
    """Where a family has an analytic model: its per-sublayer figures compose to the measured
    regions' for every plan ``plan_aA_mM`` and every region policy of the family, bytes kept
    and recomputed FLOPs exactly; each sublayer's forward FLOPs and the parameters' bytes too."""
    device, flavor = flavor_on_device
    reason = not_modelled_reason(flavor)
    if reason:
        pytest.skip(reason)
    if attention not in family_of(flavor).attentions:
        pytest.skip(f"{flavor.name}: family {flavor.family!r} has no {attention} attention")
    measured = sublayers_only(region_profiles(device, flavor, attention))
    analytic = from_analytic(flavor, attention, device)
    assert (analytic.parameter_bytes, analytic.forward_flops) == (measured.parameter_bytes, measured.forward_flops), (
        f"{flavor.name} {attention}: parameters and per-sublayer forward FLOPs, analytic "
        f"{analytic.parameter_bytes:,} B {analytic.forward_flops}, measured {measured.parameter_bytes:,} B "
        f"{measured.forward_flops}")
    depth = flavor.depth
    policies = [PlanAC.of(a, m) for a in range(depth + 1) for m in range(depth + 1)]
    policies += [get_policy(v.rpartition("-")[0]) for v in family_of(flavor).variants() if v.endswith(f"-{attention}")]
    differ = []
    for policy in policies:
        try:
            regions = policy_regions(policy, depth)
        except NotARegionPolicy:
            continue
        if any(part not in family_of(flavor).sublayers for _, part in regions):
            continue  # whole layers: the analytic model does not compose them
        got = (measured.kept_bytes(regions), measured.recompute_flops(regions))
        want = (analytic.kept_bytes(regions), analytic.recompute_flops(regions))
        if got != want:
            differ.append(f"{policy.name}: kept {got[0]:,} B measured, {want[0]:,} analytic; recomputed "
                          f"{got[1]:,} FLOPs measured, {want[1]:,} analytic ({measured.describe(regions)})")
    assert not differ, f"{flavor.name} {attention}: the analytic model differs from the measured regions:\n" + \
        "\n".join(differ)


#: Where the planner must plan alike from either source: the suite's own models, whatever
#: ``--flavor`` selects; ``tiny`` with eager attention in the default run (its four calibration
#: steps take about 5 s), the rest with ``--slow``.
SAME_PLAN = (("tiny", "eager", ()), ("tiny", "sdpa", (pytest.mark.slow, pytest.mark.deep)),
             ("small", "eager", (pytest.mark.slow, pytest.mark.deep)), ("small", "sdpa", (pytest.mark.slow, pytest.mark.deep)))


def _planner(device: str, flavor, attention: str, profile, measurements) -> Planner:
    return Planner(flavor, attention, device, profile=profile,
                   measure=lambda variant: measurements.get(Case(device, flavor, variant)))


def _check_plan(planner: Planner) -> None:
    """The plan for a budget halfway between the smallest predicted peak and the largest: its
    measured record keeps and peaks as predicted (to the byte where memory is counted exactly)
    and recomputes the FLOPs the planner's figures give."""
    cands = planner.candidates()
    low, high = min(c.predicted_peak_bytes for c in cands), max(c.predicted_peak_bytes for c in cands)
    plan = planner.plan((low + high) // 2)
    record, chosen = plan.record, plan.chosen
    label = f"{planner.flavor.name} {chosen.name}-{planner.attention} at {(low + high) // 2:,} B"
    recomputed = record.flops - planner.measure("plan_a0_m0").flops
    if record.memory_method != "cuda-allocator":
        assert (record.peak_bytes, record.forward_kept_bytes) == (chosen.predicted_peak_bytes, chosen.kept_bytes), (
            f"{label}: measured peak {record.peak_bytes:,} B, kept {record.forward_kept_bytes:,} B; the planner "
            f"predicted {chosen.predicted_peak_bytes:,} B and {chosen.kept_bytes:,} B")
    assert recomputed == chosen.recompute_flops, (
        f"{label}: recomputes {recomputed:,} FLOPs, the planner's {planner.profile.source} figures {chosen.recompute_flops:,}")


@pytest.mark.parametrize(("flavor_name", "attention"), [pytest.param(f, a, marks=m, id=f"{f}-{a}") for f, a, m in SAME_PLAN])
def test_planner_plans_alike_from_either_source(flavor_name, attention, session_device, suite_models, measurements,
                                                region_profiles):
    """The planner fed the measured regions lists every plan with the figures and the predicted
    peak it has from the analytic model, so it chooses the same plan at every budget (the
    chosen plan's measurement against the prediction is ``bench/test_planner.py``'s)."""
    flavor = FLAVORS[flavor_name]
    from_regions = _planner(session_device, flavor, attention, region_profiles(session_device, flavor, attention),
                            measurements)
    from_model = _planner(session_device, flavor, attention, from_analytic(flavor, attention, session_device),
                          measurements)
    assert (from_regions.profile.source, from_model.profile.source) == ("measured", "analytic"), flavor.name
    ours, theirs = from_regions.candidates(), from_model.candidates()
    assert ours == theirs, f"{flavor.name} {attention}: the candidates differ:\n" + "\n".join(
        f"measured {a} != analytic {b}" for a, b in zip(ours, theirs) if a != b)


@pytest.mark.parametrize("attention", ("eager", "sdpa"))
def test_planner_plans_without_an_analytic_model(flavor_on_device, attention, measurements, region_profiles):
    """A family without an analytic model (a transformers family: ``--model-spec
    ac_bench.models.hf:ALL``) is planned for from its measured regions, and the plan measures as
    predicted."""
    device, flavor = flavor_on_device
    if not_modelled_reason(flavor) is None:
        pytest.skip(f"{flavor.name}: family {flavor.family!r} has an analytic model; the planner's measured source is "
                    f"checked against it by test_planner_plans_alike_from_either_source")
    if attention not in family_of(flavor).attentions:
        pytest.skip(f"{flavor.name}: family {flavor.family!r} has no {attention} attention")
    _check_plan(_planner(device, flavor, attention, region_profiles(device, flavor, attention), measurements))
