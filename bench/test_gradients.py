"""Every strategy trains exactly like the model without checkpointing."""

from __future__ import annotations

import pytest
import torch

from bench.gradients import CROSS_ATTENTION_TOLERANCES, mismatches, run_step, twin_models
from models import resolve_dtype

pytestmark = [pytest.mark.real_tensors, pytest.mark.usefixtures("deterministic_algorithms")]


@pytest.fixture
def deterministic_algorithms():
    """Deterministic kernels where PyTorch has them (on CUDA, FlashAttention's backward
    accumulates with atomics otherwise); warn_only, since bitwise equality is what is tested."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_gradients_bitwise_equal_to_no_checkpointing(case):
    """Loss, output and every parameter gradient equal the twin without checkpointing."""
    reference, model, x = twin_models(case.flavor, case.attention, case.strategy, case.device)
    problems = mismatches(run_step(reference, x), run_step(model, x))
    assert not problems, f"{case.variant} differs from none-{case.attention}:\n" + "\n".join(problems)


def test_gradients_with_dropout_equal_to_no_checkpointing(case):
    """With dropout, recomputation replays the RNG state: still bitwise equal."""
    reference, model, x = twin_models(case.flavor, case.attention, case.strategy, case.device, dropout=0.1)
    expected, actual = run_step(reference, x, rng_seed=1234), run_step(model, x, rng_seed=1234)
    assert not mismatches(expected, actual), "\n".join(mismatches(expected, actual))
    # Dropout really was active: a different seed gives a different loss.
    assert not run_step(reference, x, rng_seed=4321).loss.equal(expected.loss)


@pytest.mark.attention("sdpa")
def test_sdpa_close_to_eager(case):
    """``X-sdpa`` against ``X-eager``: same weights and input, tolerance per dtype."""
    eager, sdpa, x = twin_models(case.flavor, "sdpa", case.strategy, case.device,
                                 reference_strategy=case.strategy, reference_attention="eager")
    tol = CROSS_ATTENTION_TOLERANCES[resolve_dtype(case.flavor, case.device)]
    problems = mismatches(run_step(eager, x), run_step(sdpa, x), **tol)
    assert not problems, "\n".join(problems)
