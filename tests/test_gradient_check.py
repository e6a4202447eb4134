"""The gradient check can fail: a broken policy is caught."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ac_bench.gradients import mismatches, run_step, twin_models
from ac_bench.models import RegionAC, get_flavor, get_policy
from tests.families import NormalizedMLP

TINY = get_flavor("tiny")


def test_reentrant_checkpoint_of_block0_loses_gradients():
    """Block 0 under reentrant checkpointing, its input not requiring grad: its parameters
    silently get no gradients, and the check names them."""
    broken = RegionAC("broken", sublayers=("attn", "mlp"), first_block=0, block_step=TINY.depth, use_reentrant=True)
    reference, model, x = twin_models(TINY, "eager", broken, "cpu")
    with pytest.warns(UserWarning, match="requires_grad"):
        actual = run_step(model, x)
    problems = mismatches(run_step(reference, x), actual)
    assert problems
    assert all(p.startswith("grad blocks.0.") for p in problems), problems
    assert any("grad blocks.0.attn.mha.in_proj_weight: gradient is None" in p for p in problems)


def test_changed_weights_are_caught():
    """A model whose weights differ by one ulp somewhere is not bitwise equal."""
    reference, model, x = twin_models(TINY, "sdpa", "full", "cpu")
    with torch.no_grad():
        w = model.blocks[2].mlp._checkpoint_wrapped_module.fc1.weight
        w[0, 0] = w[0, 0].nextafter(w[0, 0] + 1)
    problems = mismatches(run_step(reference, x), run_step(model, x))
    assert any(p.startswith("output:") for p in problems)
    assert any(p.startswith("grad blocks.0.") for p in problems)  # gradients upstream change too


def test_dropout_without_rng_preservation_is_caught():
    """Recomputation that does not replay the RNG state draws other dropout masks: caught."""
    no_rng = dataclasses.replace(get_policy("full"), name="full-no-rng", preserve_rng_state=False)
    reference, model, x = twin_models(TINY, "eager", no_rng, "cpu", dropout=0.5)
    problems = mismatches(run_step(reference, x, rng_seed=7), run_step(model, x, rng_seed=7))
    assert problems and all(p.startswith("grad ") for p in problems)


def full_twins_with_wrapped_mlp(wrap):
    """A tiny sdpa model whose every MLP sublayer is ``wrap(mlp)``, and its twin with the same
    weights under ``full`` (the MLP sublayers of blocks 1..depth-1 checkpointed), and an input."""
    from ac_bench.models import apply_policy, build_model

    def built():
        model = build_model(TINY, "sdpa", "cpu")
        for block in model.blocks:
            block.mlp = wrap(block.mlp)
        return model

    torch.manual_seed(0)
    reference = built()
    model = built()
    model.load_state_dict(reference.state_dict())
    apply_policy(model, "full")
    return reference, model, torch.randn(TINY.input_shape())


def test_state_beyond_gradients_is_caught():
    """Recomputation that updates a buffer a second time (pytorch's BatchNorm under
    checkpointing: ``num_batches_tracked`` 1 without it, 2 with it, in every checkpointed block)
    leaves the loss, the output and every gradient bitwise equal; the check names the buffers."""
    reference, model, x = full_twins_with_wrapped_mlp(lambda mlp: NormalizedMLP(mlp, TINY.d_model))
    problems = mismatches(run_step(reference, x), run_step(model, x))
    assert problems and all(p.startswith("buffer blocks.") for p in problems), problems
    for block in range(1, TINY.depth):
        assert f"buffer blocks.{block}.mlp.bn.num_batches_tracked: 1 in the reference, 2 in the checkpointed model " \
               f"after the step" in problems, problems
    assert not any(p.startswith("buffer blocks.0.") for p in problems), "block 0 is not checkpointed by full"


class _EmaMLP(torch.nn.Module):
    """A block's MLP sublayer that keeps an exponential moving average of its first weight as a
    frozen parameter (``requires_grad=False``, so no gradient and no buffer), updated in every
    training forward, as EMA or teacher copies of weights are often kept."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.inner = mlp
        weight = next(mlp.parameters())
        self.ema = torch.nn.Parameter(torch.zeros_like(weight), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(next(self.inner.parameters()), alpha=0.1)
        return self.inner(x)


def test_frozen_parameter_updated_again_is_caught():
    """Recomputation updates the EMA parameter a second time: loss, output, every gradient and
    every buffer stay bitwise equal (it affects none of them), and only the training state after
    the step names it: the parameter, in every checkpointed block and no other."""
    reference, model, x = full_twins_with_wrapped_mlp(_EmaMLP)
    expected, actual = run_step(reference, x), run_step(model, x)
    problems = mismatches(expected, actual)
    def diff(name: str) -> float:
        return (expected.parameters[name].double() - actual.parameters[name].double()).abs().max().item()

    assert sorted(problems) == [f"parameter blocks.{b}.mlp.ema: not bitwise equal to the reference's after the optimizer step "
                                f"(max abs diff {diff(f'blocks.{b}.mlp.ema'):.3e})" for b in range(1, TINY.depth)], problems
    assert all(diff(f"blocks.{b}.mlp.ema") > 0 for b in range(1, TINY.depth)) and diff("blocks.0.mlp.ema") == 0
    # Without the optimizer step's state, the same fault passes: what the check adds.
    assert not mismatches(run_step(reference, x, optimizer_step=False), run_step(model, x, optimizer_step=False))


def test_optimizer_state_is_compared_and_the_step_leaves_the_weights_as_they_were():
    """The optimizer's state after the step is in the bitwise check (a state tensor moved by
    one ulp is named), and reading it leaves the model's weights as they were."""
    reference, model, x = twin_models(TINY, "eager", "full", "cpu")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected, actual = run_step(reference, x), run_step(model, x)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters()), "run_step changed the weights"
    assert not mismatches(expected, actual)
    assert {"blocks.0.mlp.fc1.weight.exp_avg", "blocks.0.mlp.fc1.weight.exp_avg_sq", "blocks.0.mlp.fc1.weight.step"} \
        <= set(actual.optimizer_state), sorted(actual.optimizer_state)[:6]
    t = actual.optimizer_state["blocks.0.mlp.fc1.weight.exp_avg"]
    t.view(-1)[0] = t.view(-1)[0].nextafter(t.view(-1)[0] + 1)
    assert mismatches(expected, actual) == [
        "optimizer state blocks.0.mlp.fc1.weight.exp_avg: not bitwise equal to the reference's after the optimizer step "
        f"(max abs diff {(t.double() - expected.optimizer_state['blocks.0.mlp.fc1.weight.exp_avg'].double()).abs().max().item():.3e})"]


# --- the tolerance of eager against sdpa: scaled to what a value can be -----------------------

def _batchnorm_twins(policy: str):
    """tests/families.py's BatchNorm family at tiny's shape, eager and sdpa with one state dict."""
    from ac_bench.models import apply_policy
    from tests.families import build_batchnorm
    torch.manual_seed(0)
    eager = apply_policy(build_batchnorm(TINY, "eager"), policy)
    sdpa = apply_policy(build_batchnorm(TINY, "sdpa"), policy)
    sdpa.load_state_dict(eager.state_dict())
    return eager, sdpa, torch.randn(TINY.input_shape())


@pytest.mark.parametrize("policy", ["none", "full", "sequential"])
def test_gradients_zero_in_exact_arithmetic_are_no_false_alarm(policy):
    """A BatchNorm after each attention sublayer makes the attention's output-bias gradient zero
    in exact arithmetic: computed, it is ~1e-9 rounding noise that differs between eager and
    sdpa by about its own size. Against a tolerance relative to that ~0 value every variant
    failed, none-sdpa included; relative to the step's gradients it passes."""
    from ac_bench.gradients import CROSS_ATTENTION_TOLERANCES, tolerance_scales
    eager, sdpa, x = _batchnorm_twins(policy)
    expected, actual = run_step(eager, x), run_step(sdpa, x)
    bias = expected.grads["blocks.1.attn.mha.out_proj.bias"]
    assert bias.abs().max() < 1e-6 * tolerance_scales(expected)["grad"], "the planted gradient is not ~0 any more"
    assert mismatches(expected, actual, **CROSS_ATTENTION_TOLERANCES[torch.float32]) == []


def test_the_scaled_tolerance_still_catches_a_wrong_gradient():
    """The floor is the step's gradient scale times atol (1e-4 at fp32): a 10% error in any
    gradient whose own scale is at least 1% of the step's largest is still caught, by name."""
    from ac_bench.gradients import CROSS_ATTENTION_TOLERANCES, tolerance_scales
    eager, sdpa, x = _batchnorm_twins("none")
    expected = run_step(eager, x)
    largest = tolerance_scales(expected)["grad"]
    checked = [n for n, g in expected.grads.items() if g.abs().max() >= 0.01 * largest]
    assert len(checked) > len(expected.grads) // 2, "too few gradients to check"
    for name in checked:
        actual = run_step(sdpa, x)
        actual.grads[name] = actual.grads[name] * 1.1
        problems = mismatches(expected, actual, **CROSS_ATTENTION_TOLERANCES[torch.float32])
        assert [p.split(":")[0] for p in problems] == [f"grad {name}"], (name, problems)


def test_a_non_finite_value_is_named_never_compared():
    """NaN or inf in a gradient (with a finite loss): named with how many values, in either
    mode; with a tolerance it used to end in torch's ``RuntimeError: atol must be ... nan``."""
    from ac_bench.gradients import StepResult
    good = StepResult(torch.tensor(1.0), torch.ones(2), {"w": torch.ones(3)})
    bad = StepResult(torch.tensor(1.0), torch.ones(2), {"w": torch.tensor([1.0, float("nan"), float("inf")])})
    for tolerance in ({}, {"rtol": 1e-4, "atol": 1e-4}):
        assert mismatches(bad, good, **tolerance, labels=("eager", "sdpa")) == [
            "grad w: 2 of 3 values not finite in the eager model"], tolerance


def test_sdpa_close_to_eager_for_hostile_families():
    """``bench/test_gradients.py::test_sdpa_close_to_eager`` for two families loaded with
    --model-spec (tests/families.py): the BatchNorm family passes; the family whose output is NaN
    fails each variant with one line naming the non-finite loss of both models, no traceback."""
    from tests.helpers import run_pytest
    result = run_pytest("bench/test_gradients.py", "--model-spec", "tests.families:BATCHNORM", "--model-spec",
                        "tests.families:NON_FINITE", "-q", "-k", "close_to_eager and (none-sdpa or full-sdpa)")
    out = result.stdout
    assert result.returncode == 1, out[-3000:] + result.stderr[-2000:]
    failed = sorted(line.split("[")[1].split("]")[0] for line in out.splitlines() if line.startswith("FAILED"))
    assert failed == ["cpu-nan-gpt-tiny-full-sdpa", "cpu-nan-gpt-tiny-none-sdpa"], out[-3000:]
    assert "2 passed" in out, out[-3000:]
    for policy in ("none", "full"):
        assert (f"cpu-nan-gpt-tiny-{policy}-sdpa against {policy}-eager (tolerance {{'rtol': 0.0001, 'atol': 0.0001}}): "
                f"loss: the eager model's loss is nan and the sdpa model's loss is nan, not finite\n") in out, out[-3000:]
    assert "Traceback" not in out and "RuntimeError" not in out, out[-3000:]
