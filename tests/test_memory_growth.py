"""The growth check can fail: two leaks from public bug reports, rebuilt as planted policies of
our own, are caught by name with their bytes per step, and a steady variant passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from ac_bench.cases import Case
from ac_bench.growth import GROWTH_STEPS, StepSeries, measure_growth
from ac_bench.models import RegionAC, get_flavor

TINY = get_flavor("tiny")
#: One sublayer output of ``tiny``: batch x seq x d_model float32 values.
OUTPUT_BYTES = TINY.batch * TINY.seq_len * TINY.d_model * 4


class _KeepsOutputs(nn.Module):
    """A wrapper that keeps a reference to each step's output (for logging, say): the shape of
    pytorch #80151, where a checkpoint wrapper's outputs stayed alive from step to step."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.outputs.append(out)
        return out


class _OutputOnCtx(torch.autograd.Function):
    """Keeps its output as an attribute of ``ctx`` instead of ``save_for_backward``: output ->
    grad_fn (this node) -> ctx -> output is a reference cycle, which reference counting never
    frees (the shape of pytorch #84413; at ``tiny`` the collector freed one of the two leaking
    blocks' outputs per step, the other stayed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x * 1.0
        ctx.out = out
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _CycleThroughFunction(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _OutputOnCtx.apply(self.inner(x))


@dataclass(frozen=True)
class _LeakingAC(RegionAC):
    """The MLP sublayers of blocks 1... checkpointed, each behind a ``wrapper`` that leaks."""

    wrapper: type[nn.Module] = _KeepsOutputs
    kind: ClassVar[str] = "selftest_leaking"

    def apply(self, model: nn.Module) -> nn.Module:
        super().apply(model)
        for block in self.checkpointed_blocks(len(model.blocks)):
            model.blocks[block].mlp = self.wrapper(model.blocks[block].mlp)
        return model


def _leaking(name: str, wrapper: type[nn.Module]) -> _LeakingAC:
    return _LeakingAC(name, sublayers=("mlp",), wrapper=wrapper)


@pytest.fixture(scope="module")
def steady() -> StepSeries:
    return measure_growth(TINY, "mlp-sdpa", "cpu")


def test_a_steady_variant_passes(steady):
    assert len(steady.allocated_after) == len(steady.step_peaks) == GROWTH_STEPS
    assert steady.memory_method == "memtracker"
    assert steady.problems() == [], steady


@pytest.mark.parametrize("wrapper", [_KeepsOutputs, _CycleThroughFunction], ids=["keeps_outputs", "cycle"])
def test_a_leak_of_every_step_fails_by_name_with_its_bytes_per_step(steady, wrapper):
    """Each checkpointed MLP's output (``OUTPUT_BYTES``) stays alive in every step, in blocks
    1..depth-1; counted from before the first step, the warm-up's outputs too."""
    policy = _leaking(f"selftest_{wrapper.__name__.strip('_').lower()}", wrapper)
    series = measure_growth(TINY, "mlp-sdpa", "cpu", policy=policy)
    per_step = (TINY.depth - 1) * OUTPUT_BYTES
    assert series.case_id == Case("cpu", TINY, f"{policy.name}-sdpa").id
    # Memory alive before a step counts: after step k (and at its peak, here in the optimizer
    # step) the k outputs of every leaking block are there.
    assert series.allocated_after == tuple(a + (k + 1) * per_step for k, a in enumerate(steady.allocated_after)), series
    assert series.step_peaks == tuple(p + (k + 1) * per_step for k, p in enumerate(steady.step_peaks)), series
    problems = series.problems()
    grown = ", ".join([f"+{per_step:,}"] * (GROWTH_STEPS - 2))
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"cpu-tiny-{policy.name}-sdpa: memory grows from step to step (memtracker): "
                                  f"allocated after each step "), problems
    assert problems[0].endswith(f" B, {grown} B per step after 1 warm-up step"), problems
    assert problems[1].startswith(f"cpu-tiny-{policy.name}-sdpa: memory grows from step to step (memtracker): "
                                  f"peak of each step "), problems
    assert problems[1].endswith(f" B, {grown} B per step after 1 warm-up step"), problems


def test_the_collector_is_paused_while_the_steps_run_and_restored():
    """The cycle shows only because the collector does not run between or inside the steps; it
    is on again afterwards (and stays off where the caller had turned it off)."""
    import gc

    measure_growth(TINY, "none-sdpa", "cpu", steps=3)
    assert gc.isenabled()
    gc.disable()
    try:
        measure_growth(TINY, "none-sdpa", "cpu", steps=3)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_too_few_steps_to_compare_is_an_error():
    with pytest.raises(ValueError, match="at least 3 steps"):
        measure_growth(TINY, "none-sdpa", "cpu", steps=2)


def test_a_users_family_that_leaks_fails_the_benchmark_by_name_without_baselines(tmp_path):
    """``pytest bench/test_memory_growth.py --model-spec ...`` for a family of the user's, with an
    empty baselines folder: every variant fails by name with the bytes it gains per step, one
    MLP output per block (``leaky-tiny`` has the shape of ``tiny``), whatever the policy."""
    from tests.helpers import run_pytest

    result = run_pytest("bench/test_memory_growth.py", "--model-spec", "tests.plugins.leaky_family:SPEC",
                        "--device", "cpu", "--baselines-dir", str(tmp_path), "-k", "none-sdpa or full-eager", "-q")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    per_step = TINY.depth * OUTPUT_BYTES
    lines = result.stdout.splitlines()
    for variant in ("none-sdpa", "full-eager"):
        for figure in ("allocated after each step", "peak of each step"):
            start = f"cpu-leaky-tiny-{variant}: memory grows from step to step (memtracker): {figure} "
            end = f" B, +{per_step:,}, +{per_step:,} B per step after 1 warm-up step"
            assert any(start in line and line.endswith(end) for line in lines), (variant, figure, result.stdout[-3000:])
    assert "2 failed" in result.stdout, result.stdout[-3000:]
