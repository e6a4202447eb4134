"""The suite's instruments never change the step they measure (issue 21, item 4): a model whose
blocks are compiled around their checkpoints, and one that checkpoints a library module
(``nn.MultiheadAttention``) directly, are measured, and two probed steps leave the weights
bitwise where two plain steps do."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from ac_bench.gradients import mismatches, run_step
from ac_bench.models import apply_policy, build_model, get_flavor, get_policy
from ac_bench.probes.memory import MemTrackerProbe
from ac_bench.record import Training, make_optimizer, measure_step

TINY = get_flavor("tiny")


def compiled_blocks(attention: str) -> torch.nn.Module:
    """``full`` (attention and MLP of blocks 1.. checkpointed), then ``torch.compile`` on every
    block: the compiled code calls the checkpoint's RNG operators (pytorch #120381's shape)."""
    model = apply_policy(build_model(TINY, attention, "cpu"), "full")
    for block in model.blocks:
        block.compile()
    return model


def checkpointed_mha(attention: str) -> torch.nn.Module:
    """Each block's ``nn.MultiheadAttention`` wrapped alone: called as ``mha(h, h, h)``, it takes
    its one-projection self-attention path only while ``query is key``."""
    model = build_model(TINY, attention, "cpu")
    for block in model.blocks:
        block.attn.mha = checkpoint_wrapper(block.attn.mha)
    return model


def training(build, attention: str) -> Training:
    torch.manual_seed(0)
    model = build(attention)
    torch.manual_seed(1)
    return Training(model, make_optimizer(model), torch.randn(TINY.input_shape()), get_policy("none"), torch.device("cpu"))


@pytest.mark.parametrize("build", [compiled_blocks, checkpointed_mha], ids=["compiled-blocks", "checkpointed-mha"])
def test_probed_steps_train_like_plain_steps(build):
    attention = "sdpa"
    probed, plain = training(build, attention), training(build, attention)
    figures = measure_step(probed, lambda t: MemTrackerProbe(t.device, t.model, t.optimizer, t.x, fake=False))
    plain.step()
    plain.step()
    assert figures.metrics["flops"] > 0 and figures.metrics["forward_kept_bytes"] > 0, figures.metrics
    assert figures.attention_kernel == "cpu_flash", figures.attention_kernel
    # measure_step took the warm-up and the measured step: two steps, as plain took.
    moved = [n for (n, a), b in zip(plain.model.named_parameters(), probed.model.parameters(), strict=True)
             if not torch.equal(a, b)]
    assert not moved, f"{build.__name__}: after two probed steps these weights differ from two plain steps: {moved}"


def test_checkpointed_mha_trains_like_no_checkpointing():
    """The gradient check agreed before the probes were fixed; it still does."""
    torch.manual_seed(0)
    reference = build_model(TINY, "eager", "cpu")
    model = checkpointed_mha("eager")
    model.load_state_dict(reference.state_dict())  # checkpoint_wrapper keeps the state-dict keys
    x = torch.randn(TINY.input_shape())
    assert not mismatches(run_step(reference, x), run_step(model, x))


def test_a_crashed_measurement_fails_once_and_is_not_measured_again(monkeypatch):
    """The first test that asks for a case whose measurement raises gets the error with its
    traceback; every later one fails in one line naming the case and the cause, without
    measuring again; other cases measure as they do alone."""
    from ac_bench.cases import Case
    from ac_bench.plugin import session

    calls: list[str] = []
    real = session.measure_variant

    def measure(flavor, variant, device):
        calls.append(variant)
        if variant == "full-sdpa":
            raise RuntimeError("planted: the forward broke\nsecond line")
        return real(flavor, variant, device)

    monkeypatch.setattr(session, "measure_variant", measure)
    store = session.MeasurementStore()
    broken, other = Case("cpu", TINY, "full-sdpa"), Case("cpu", TINY, "none-sdpa")
    with pytest.raises(RuntimeError, match="planted"):
        store.get(broken)
    for _ in range(2):
        with pytest.raises(pytest.fail.Exception) as info:
            store.get(broken)
        assert str(info.value) == ("cpu-tiny-full-sdpa: its measurement failed earlier in this session (RuntimeError: "
                                   "planted: the forward broke); the first test that asked for it shows the traceback")
    assert store.get(other).forward_kept_bytes == real(TINY, "none-sdpa", "cpu").forward_kept_bytes
    assert calls == ["full-sdpa", "none-sdpa"], calls
