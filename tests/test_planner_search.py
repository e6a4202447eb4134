"""The planner's search space is enough: over *every* subset of checkpointed sublayers, none
that fits a budget recomputes fewer FLOPs than the plan (``plan_aA_mM``, first blocks only).

Measured for real at a ``tiny``-sized model with a longer sequence (so activations, not the
optimizer step, set the peak): 2^6 = 64 subsets per attention, every distinct peak used as a
budget.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import pytest

from ac_bench.models import Flavor, RegionAC
from ac_bench.planner import InfeasibleBudget, Planner
from ac_bench.record import measure_variant

FLAVOR = Flavor("tiny", d_model=32, n_heads=2, depth=3, batch=2, seq_len=128)
SUBLAYER_SLOTS = [(b, s) for b in range(FLAVOR.depth) for s in ("attn", "mlp")]


@dataclass(frozen=True)
class SubsetAC(RegionAC):
    """Any set of (block, sublayer) checkpointed: what no registry name describes."""

    chosen: tuple[tuple[int, str], ...] = ()
    kind: ClassVar[str] = "subset"

    def regions(self, depth: int) -> list[tuple[int, str]]:
        return sorted(self.chosen)

    def is_checkpointed(self, block: int, sublayer: str, depth: int) -> bool:
        return (block, sublayer) in self.chosen


#: eager only: there the position of a checkpointed attention sublayer moves the peak most
#: (its recomputation rebuilds the seq^2 probabilities); 64 measurements take ~45 s.
@pytest.mark.parametrize("attention", ["eager"])
def test_no_subset_that_fits_is_cheaper_than_the_plan(attention):
    base = measure_variant(FLAVOR, f"none-{attention}", "cpu")
    subsets = {}
    for n in range(len(SUBLAYER_SLOTS) + 1):
        for chosen in itertools.combinations(SUBLAYER_SLOTS, n):
            r = measure_variant(FLAVOR, f"none-{attention}", "cpu", policy=SubsetAC("subset", chosen=chosen))
            subsets[chosen] = (r.peak_bytes, r.flops - base.flops)
    planner = Planner(FLAVOR, attention, "cpu")
    peaks = sorted({peak for peak, _ in subsets.values()})
    assert len(peaks) > 4, f"only {len(peaks)} distinct peaks: activations do not set the peak at this shape"
    for budget in [peaks[0] - 1, *peaks]:
        fitting = [flops for peak, flops in subsets.values() if peak <= budget]
        if not fitting:
            with pytest.raises(InfeasibleBudget, match=f"smallest feasible budget is .* \\({peaks[0]} B"):
                planner.plan(budget)
            continue
        plan = planner.plan(budget)
        assert plan.record.flops - base.flops == min(fitting), (
            f"{attention}, budget {budget:,} B: {plan.chosen.name} recomputes {plan.record.flops - base.flops:,} "
            f"FLOPs, a subset that fits recomputes {min(fitting):,}")
