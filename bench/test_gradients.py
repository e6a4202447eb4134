"""Every policy trains exactly like the model without checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ac_bench.gradients import CROSS_ATTENTION_TOLERANCES, mismatches, run_step, twin_models
from ac_bench.models import family_of, resolve_dtype

pytestmark = [pytest.mark.real_tensors, pytest.mark.usefixtures("deterministic_algorithms")]

#: On the CPU the gradients are compared at no more than this sequence length: bitwise
#: equality does not depend on the length (512 still runs the CPU flash kernel over several
#: blocks), and three checks x twenty variants at `small`'s 2048 would take most of the
#: default run's time budget. On CUDA every flavor is checked at its own length.
CPU_GRADIENT_SEQ_LEN = 512


def _flavor(case):
    """The case's flavor at the length its gradients are checked at."""
    if case.device == "cpu" and case.flavor.seq_len > CPU_GRADIENT_SEQ_LEN:
        return dataclasses.replace(case.flavor, seq_len=CPU_GRADIENT_SEQ_LEN)
    return case.flavor


@pytest.fixture
def deterministic_algorithms():
    """Deterministic kernels (on CUDA the fused attention kernels' backward accumulates with
    atomics otherwise). Not warn_only: with warn_only=True those
    kernels only warn and stay non-deterministic, and the first H200 run found none-sdpa not
    bitwise equal to itself. cuBLAS then needs CUBLAS_WORKSPACE_CONFIG, set by ac_bench.plugin
    before CUDA starts."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_gradients_bitwise_equal_to_no_checkpointing(case):
    """Loss, output and every parameter gradient equal the twin without checkpointing."""
    reference, model, x = twin_models(_flavor(case), case.attention, case.policy, case.device)
    problems = mismatches(run_step(reference, x), run_step(model, x, policy=case.policy))
    assert not problems, f"{case.variant} differs from none-{case.attention}:\n" + "\n".join(problems)


def test_gradients_with_dropout_equal_to_no_checkpointing(case):
    """With dropout, recomputation replays the RNG state: still bitwise equal."""
    if not family_of(case.flavor).dropout:
        pytest.skip(f"family {case.flavor.family!r} declares no dropout (Family.dropout=False), so there is "
                    f"no random state for recomputation to replay")
    reference, model, x = twin_models(_flavor(case), case.attention, case.policy, case.device, dropout=0.1)
    expected, actual = run_step(reference, x, rng_seed=1234), run_step(model, x, rng_seed=1234, policy=case.policy)
    problems = mismatches(expected, actual)
    assert not problems, f"{case.id} with dropout differs from none-{case.attention}:\n" + "\n".join(problems)
    # Dropout really was active: a different seed gives a different output. (Not the loss: in
    # bf16 the mean of the output rounds to the same value for both seeds; seen on CUDA.)
    assert not run_step(reference, x, rng_seed=4321).output.equal(expected.output), (
        f"{case.id}: dropout 0.1 drew the same masks for two seeds: dropout is not active")


@pytest.mark.attention("sdpa")
def test_sdpa_close_to_eager(case):
    """``X-sdpa`` against ``X-eager``: same weights and input, tolerance per dtype."""
    if "eager" not in family_of(case.flavor).attentions:
        pytest.skip(f"{case.flavor.name}: family {case.flavor.family!r} has no eager attention to compare with")
    eager, sdpa, x = twin_models(_flavor(case), "sdpa", case.policy, case.device,
                                 reference_policy=case.policy, reference_attention="eager")
    tol = CROSS_ATTENTION_TOLERANCES[resolve_dtype(_flavor(case), case.device)]
    problems = mismatches(run_step(eager, x, policy=case.policy), run_step(sdpa, x, policy=case.policy), **tol,
                          labels=("eager", "sdpa"))
    if problems:  # one line for one problem (a non-finite loss), no traceback of the comparison
        pytest.fail(f"{case.id} against {case.policy}-eager (tolerance {tol}):" + ("\n" if len(problems) > 1 else " ")
                    + "\n".join(problems), pytrace=False)
