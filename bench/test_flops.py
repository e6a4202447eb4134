"""Recompute cost in FLOPs: exactly the forward passes the policy recomputes."""

from __future__ import annotations

import pytest

from ac_bench import analytic
from ac_bench.cases import Case

RECOMPUTE_TOLERANCE = 0.005


def _skip_unless_modelled(case) -> None:
    reason = analytic.not_modelled_reason(case.flavor, case.policy)
    if reason:
        pytest.skip(reason)


def test_step_flops_match_analytic_model(case, measurements):
    """All matmul FLOPs of forward+backward are counted, the attention kernels included
    (the CPU flash SDPA kernel has no formula in PyTorch; ac_bench/probes/flops.py registers one)."""
    _skip_unless_modelled(case)
    record = measurements.get(case)
    predicted = analytic.step_flops(analytic.Shape.of_record(record), case.policy, case.attention)
    assert record.flops == predicted, (f"{case.id}: measured {record.flops:,} FLOPs, analytic model {predicted:,}; "
                                       f"by op: {record.flops_by_op}")


def test_recompute_overhead_is_the_recomputed_forwards(case, measurements):
    """flops(variant) / flops(none, same attention) - 1 == recomputed forward FLOPs / flops(none)."""
    _skip_unless_modelled(case)
    record = measurements.get(case)
    none = measurements.get(Case(case.device, case.flavor, f"none-{case.attention}"))
    overhead = record.flops / none.flops - 1
    predicted = analytic.recompute_flops(analytic.Shape.of_record(record), case.policy, case.attention) / none.flops
    assert overhead == pytest.approx(predicted, rel=RECOMPUTE_TOLERANCE, abs=1e-12), (
        f"{case.id}: measured overhead {overhead:.4%}, predicted {predicted:.4%}")
