"""Recompute cost: in FLOPs, exactly the forward passes the policy recomputes; in ops of backward
and the bytes its non-matmul ops read and write, also what FLOPs do not count (elementwise,
normalisation, copies)."""

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


def test_backward_ops_count_the_recompute_flops_miss(case, measurements):
    """The ops of backward (``backward_ops``: views left out) and the bytes its non-matmul ops
    read and write (``backward_nonmatmul_bytes``) see what FLOPs do not: a policy that
    checkpoints anything dispatches more ops than `none` with the same attention and reads and
    writes no fewer bytes outside matmuls, more where it recomputes no matmul (``sac-sdpa``:
    the FLOPs of `none`); `none` and, on the CPU, `offload` (the host is the device: nothing moves)
    exactly `none`'s; on CUDA `offload` copies each saved tensor back, so at least `none`'s."""
    record = measurements.get(case)
    none = measurements.get(Case(case.device, case.flavor, f"none-{case.attention}"))
    message = (f"{case.id}: {record.backward_ops:,} ops in backward, {record.backward_nonmatmul_bytes:,} B read and "
               f"written by its non-matmul ops; none-{case.attention} {none.backward_ops:,} ops, "
               f"{none.backward_nonmatmul_bytes:,} B; FLOPs {record.flops:,} against {none.flops:,}")
    figures, nones = (record.backward_ops, record.backward_nonmatmul_bytes), (none.backward_ops, none.backward_nonmatmul_bytes)
    if case.policy == "none" or (record.policy_kind == "offload" and case.device == "cpu"):
        assert figures == nones, message
    elif record.policy_kind == "offload":
        assert all(f >= n for f, n in zip(figures, nones)), message
    else:
        # Recompute shows in the FLOPs, in the bytes outside matmuls, or both: core_attn on a
        # family whose attention core is one SDPA op recomputes only that op (FLOPs, no bytes).
        assert record.backward_ops > none.backward_ops, message
        assert record.backward_nonmatmul_bytes >= none.backward_nonmatmul_bytes, message
        assert record.flops > none.flops or record.backward_nonmatmul_bytes > none.backward_nonmatmul_bytes, message
