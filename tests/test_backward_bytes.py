"""The bytes of backward's non-matmul ops (``backward_nonmatmul_bytes``, counted by
``ac_bench.probes.flops.BackwardOpCounter`` in the warm-up step that also counts FLOPs and ops):
what counts, op by op, and that a policy recomputing one elementwise op shows exactly the bytes
that op reads and writes more than ``none``, at ``none``'s FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from ac_bench.models import Policy, get_flavor
from ac_bench.probes.flops import BackwardOpCounter
from ac_bench.record import measure_variant


def test_what_counts_op_by_op():
    """Between the step's ``forward`` and ``backward`` marks only: an op without a FLOP formula
    adds its tensor arguments and results at their ``nbytes`` (an in-place op's tensor once read,
    once written; every result of a multi-output op); a matmul is an op of backward but adds no
    bytes; a view is neither."""
    a, b, w = torch.ones(4, 8), torch.ones(4, 8), torch.ones(8, 3)
    gamma, beta = torch.ones(8), torch.zeros(8)
    counter = BackwardOpCounter()
    with counter:
        torch.add(a, b)  # the forward: not counted
        counter.mark("forward")
        torch.add(a, b)  # reads 2 x 128 B, writes 128 B
        a.add_(b)  # reads a and b, writes a: 3 x 128 B
        torch.mm(a, w)  # a matmul (FLOP formula): an op, no bytes
        a.t()  # a view: nothing
        torch.native_layer_norm(a, [8], gamma, beta, 1e-5)  # reads 128 + 32 + 32 B, writes 128 + 16 + 16 B
        counter.mark("backward")
        torch.add(a, b)  # the optimizer step: not counted
    assert (counter.ops, counter.nonmatmul_bytes) == (4, 3 * 128 + 3 * 128 + (128 + 32 + 32) + (128 + 16 + 16)), (
        counter.ops, counter.nonmatmul_bytes)


@dataclass(frozen=True)
class RecomputeReLU(Policy):
    """A self-test policy: each block's MLP activation (``ReLU``) alone in a non-reentrant
    checkpoint, which recomputes nothing but that one elementwise op."""

    kind: ClassVar[str] = "selftest_relu"

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        for block in model.blocks:
            block.mlp.act = checkpoint_wrapper(block.mlp.act, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        return model


def test_a_profilers_record_function_scope_is_no_op_of_backward():
    """``record_function`` dispatches ``profiler._record_function_enter_new`` and
    ``_record_function_exit``: markers in a trace, no work. FSDP2 brackets its collectives with
    them and torch 2.15.0 dispatches fewer than 2.13.0; counted, every sharded record's
    ``backward_ops`` moved with the upgrade. The op inside the scope still counts."""
    a, b = torch.ones(4, 8), torch.ones(4, 8)
    counter = BackwardOpCounter()
    with counter:
        counter.mark("forward")
        with torch.profiler.record_function("FSDP::post_backward_reduce"):
            torch.add(a, b)
        with torch.profiler.record_function("empty scope"):
            pass
        counter.mark("backward")
    assert (counter.ops, counter.nonmatmul_bytes) == (1, 3 * 128), (counter.ops, counter.nonmatmul_bytes)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_recomputed_elementwise_op_adds_exactly_what_it_reads_and_writes(attention):
    """``tiny``, each block's ReLU recomputed: FLOPs equal to ``none``'s (a ReLU has no FLOP
    formula), one op more per block, and per block exactly the ReLU's input read and its output
    written again: 2 x batch x seq x 4 d_model x 4 B (fp32) = 2 x 2 x 16 x 128 x 4 = 16,384 B, so
    3 x 32,768 = 98,304 B over the three blocks. The ReLU's backward (``threshold_backward``)
    reads the recomputed output where ``none`` reads the saved one: the same bytes. Autograd
    hands the checkpoint's input to the recompute as a ``detach``, a view: no bytes."""
    flavor = get_flavor("tiny")
    none = measure_variant(flavor, f"none-{attention}", "cpu")
    relu = measure_variant(flavor, f"none-{attention}", "cpu", policy=RecomputeReLU("selftest_relu"))
    relu_bytes = flavor.batch * flavor.seq_len * 4 * flavor.d_model * torch.float32.itemsize
    assert relu_bytes == 16_384
    figures = {r.policy: (r.flops, r.backward_ops, r.backward_nonmatmul_bytes) for r in (none, relu)}
    assert relu.flops == none.flops, figures
    assert relu.backward_ops - none.backward_ops == flavor.depth, figures
    assert relu.backward_nonmatmul_bytes - none.backward_nonmatmul_bytes == flavor.depth * 2 * relu_bytes == 98_304, figures
