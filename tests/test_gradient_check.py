"""The gradient check can fail: a broken policy is caught."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ac_bench.gradients import mismatches, run_step, twin_models
from ac_bench.models import RegionAC, get_flavor, get_policy

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


class _NormalizedMLP(torch.nn.Module):
    """A block's MLP sublayer behind a BatchNorm over d_model: its running statistics and
    counter change in every training forward, so a recomputed forward changes them again."""

    def __init__(self, mlp: torch.nn.Module, d_model: int) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(d_model)
        self.inner = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape))


def test_state_beyond_gradients_is_caught():
    """Recomputation that updates a buffer a second time (pytorch's BatchNorm under
    checkpointing: ``num_batches_tracked`` 1 without it, 2 with it, in every checkpointed block)
    leaves the loss, the output and every gradient bitwise equal; the check names the buffers."""
    from ac_bench.models import apply_policy, build_model

    def normalized():
        model = build_model(TINY, "sdpa", "cpu")
        for block in model.blocks:
            block.mlp = _NormalizedMLP(block.mlp, TINY.d_model)
        return model

    torch.manual_seed(0)
    reference = normalized()
    model = normalized()
    model.load_state_dict(reference.state_dict())
    apply_policy(model, "full")  # the MLP sublayers of blocks 1..depth-1
    x = torch.randn(TINY.input_shape())
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
    from ac_bench.models import apply_policy, build_model

    def with_ema():
        model = build_model(TINY, "sdpa", "cpu")
        for block in model.blocks:
            block.mlp = _EmaMLP(block.mlp)
        return model

    torch.manual_seed(0)
    reference = with_ema()
    model = with_ema()
    model.load_state_dict(reference.state_dict())
    apply_policy(model, "full")  # the MLP sublayers of blocks 1..depth-1
    x = torch.randn(TINY.input_shape())
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
