"""Strategies as data: which sublayers of which blocks each one wraps, and that the model
class and its state-dict keys never change."""

from __future__ import annotations

import pytest
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from bench.timing import interleaved_medians
from models import STRATEGIES, apply_ac, build_model, get_flavor

FLAVOR = get_flavor("tiny")  # depth 3: blocks 0, 1, 2

EXPECTED = {
    "none": set(),
    "full": {(1, "attn"), (1, "mlp"), (2, "attn"), (2, "mlp")},
    "attn": {(1, "attn"), (2, "attn")},
    "mlp": {(1, "mlp"), (2, "mlp")},
    "every_other": {(1, "attn"), (1, "mlp")},
}


def wrapped(model) -> set[tuple[int, str]]:
    return {(i, name) for i, block in enumerate(model.blocks) for name in ("attn", "mlp")
            if isinstance(getattr(block, name), CheckpointWrapper)}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_apply_ac_wraps_exactly_the_strategys_sublayers(strategy):
    assert set(EXPECTED) == set(STRATEGIES)
    model = apply_ac(build_model(FLAVOR, "sdpa"), strategy)
    assert wrapped(model) == EXPECTED[strategy]
    assert type(model).__name__ == "Transformer"
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict())


def test_every_other_takes_the_odd_blocks_at_any_depth():
    assert list(STRATEGIES["every_other"].checkpointed_blocks(12)) == [1, 3, 5, 7, 9, 11]
    assert list(STRATEGIES["full"].checkpointed_blocks(12)) == list(range(1, 12))
    assert list(STRATEGIES["none"].checkpointed_blocks(12)) == []


def test_unknown_sublayer_is_rejected():
    from models import Strategy
    with pytest.raises(ValueError, match="unknown sublayers"):
        Strategy("bad", sublayers=("ffn",))


def test_interleaved_timing_alternates_the_steps():
    calls: list[str] = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
