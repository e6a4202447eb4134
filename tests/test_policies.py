"""Policies as data: what each one wraps, that names parse both ways, and that the model
class and its state-dict keys never change."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from ac_bench.models import (
    POLICIES,
    VARIANTS,
    RegionAC,
    SelectiveAC,
    SequentialAC,
    apply_policy,
    build_model,
    get_flavor,
    get_policy,
    parse_variant,
    variant_id,
)
from ac_bench.probes.timing import interleaved_medians

FLAVOR = get_flavor("tiny")  # depth 3: blocks 0, 1, 2

EXPECTED_WRAPPED = {
    "none": set(),
    "full": {(1, "attn"), (1, "mlp"), (2, "attn"), (2, "mlp")},
    "attn": {(1, "attn"), (2, "attn")},
    "mlp": {(1, "mlp"), (2, "mlp")},
    "every_other": {(1, "attn"), (1, "mlp")},
    "every_3": {(1, "attn"), (1, "mlp")},
    "sequential": set(),  # replaces the model's forward instead
    "sac": {(1, "attn"), (1, "mlp"), (2, "attn"), (2, "mlp")},
    "core_attn": {(1, "attn"), (2, "attn")},
    "offload": set(),  # a context around the forward instead
}


def wrapped(model) -> set[tuple[int, str]]:
    return {(i, name) for i, block in enumerate(model.blocks) for name in ("attn", "mlp")
            if isinstance(getattr(block, name), CheckpointWrapper)}


@pytest.mark.parametrize("name", list(POLICIES))
def test_apply_wraps_exactly_the_policys_sublayers(name):
    assert set(EXPECTED_WRAPPED) == set(POLICIES)
    model = apply_policy(build_model(FLAVOR, "sdpa"), name)
    assert wrapped(model) == EXPECTED_WRAPPED[name]
    assert type(model).__name__ == "Transformer"
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict())


def test_region_blocks_at_any_depth():
    assert list(POLICIES["every_other"].checkpointed_blocks(12)) == [1, 3, 5, 7, 9, 11]
    assert list(POLICIES["every_3"].checkpointed_blocks(12)) == [1, 4, 7, 10]
    assert list(POLICIES["full"].checkpointed_blocks(12)) == list(range(1, 12))
    assert list(POLICIES["none"].checkpointed_blocks(12)) == []


def test_sequential_segments_as_checkpoint_sequential_cuts_them():
    """depth // K blocks per segment, the last segment (with the remainder) not checkpointed."""
    seq = POLICIES["sequential"]
    assert seq.segments_for(12) == 3 and seq.segments_for(4) == 2 and seq.segments_for(3) == 2
    assert [(list(r), c) for r, c in seq.segment_ranges(12)] == [
        ([0, 1, 2, 3], True), ([4, 5, 6, 7], True), ([8, 9, 10, 11], False)]
    assert [(list(r), c) for r, c in get_policy("sequential_4").segment_ranges(10)] == [
        ([0, 1], True), ([2, 3], True), ([4, 5], True), ([6, 7, 8, 9], False)]
    with pytest.raises(ValueError, match="at most 3"):
        get_policy("sequential_5").apply(build_model(FLAVOR, "sdpa"))


@pytest.mark.parametrize("name", ["every_3", "every_7", "sequential_4", "sequential", "sac", "core_attn", "offload",
                                  "plan_a2_m0", "plan_a12_m3", "budget_0.3", "budget_1.0", "budget_0.0"])
def test_names_parse_both_ways(name):
    policy = get_policy(name)
    assert policy.name == name and get_policy(policy.name) == policy
    variant = variant_id(policy, "eager")
    assert parse_variant(variant) == (name, "eager")
    # A plain pytest id and baseline key (pytest's -k accepts word characters, '-' and '.').
    assert variant.replace("_", "").replace("-", "").replace(".", "").isalnum()


def test_every_2_is_every_other_and_bad_names_say_what_is_valid():
    assert get_policy("every_2") is POLICIES["every_other"]
    for bad, message in [("every_1", "N >= 2"), ("every_02", "N >= 2"), ("sequential_0", "K >= 1"),
                         ("selective", "valid names: none, full"), ("plan_a01_m2", "leading zeros"),
                         ("budget_1", "write the budget as budget_1.0"), ("budget_1.5", r"in \[0, 1\]"),
                         ("budget_nan", r"in \[0, 1\]"), ("budget_-0.1", r"in \[0, 1\]"), ("budget_", r"in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            get_policy(bad)


def test_every_variant_is_listed_once():
    assert len(VARIANTS) == len(set(VARIANTS)) == 2 * len(POLICIES)


def test_policy_is_recorded_as_data():
    assert POLICIES["every_3"].as_record() == {
        "name": "every_3", "kind": "region",
        "params": {"preserve_rng_state": True, "sublayers": ["attn", "mlp"], "first_block": 1, "block_step": 3,
                   "use_reentrant": False}}
    assert POLICIES["sequential"].as_record()["params"]["segments"] is None
    assert POLICIES["sac"].as_record()["kind"] == "selective"
    assert "aten.mm.default" in POLICIES["sac"].params()["save_ops"]


def test_bad_policy_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown sublayers"):
        RegionAC("bad", sublayers=("ffn",))
    with pytest.raises(ValueError, match="no such op"):
        SelectiveAC("bad", sublayers=("attn",), save_ops=("aten.no_such_op.default",))
    with pytest.raises(ValueError, match="segments must be >= 1"):
        SequentialAC("bad", segments=0)


def test_sac_saves_what_it_lists_and_recomputes_the_rest():
    """Under sac, eager attention's QK^T (aten.bmm, not listed) runs again in backward; the
    first matmul of each sublayer does not."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    def count(name: str) -> tuple[int, int]:
        torch.manual_seed(0)
        model = apply_policy(build_model(FLAVOR, "eager"), name)
        x = torch.randn(FLAVOR.input_shape())
        with Count() as forward:
            out = model(x).mean()
        with Count() as backward:
            out.backward()
        return forward.ops.count("aten.bmm"), backward.ops.count("aten.bmm")

    none_fwd, none_bwd = count("none")
    sac_fwd, sac_bwd = count("sac")
    assert sac_fwd == none_fwd
    # Two checkpointed attention sublayers each recompute QK^T and PV.
    assert sac_bwd == none_bwd + 2 * 2


def test_interleaved_timing_alternates_the_steps():
    calls: list[str] = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_offload_context_yields_its_live_counter():
    """The record reads offloaded_bytes from what forward_context yields (saved_tensors_hooks'
    own __enter__ returns None, which once made every count 0). On the CPU tensors are packed
    but none leaves the device."""
    torch.manual_seed(0)
    model = build_model(FLAVOR, "sdpa")
    with get_policy("offload").forward_context("cpu") as hooks:
        model(torch.randn(FLAVOR.input_shape())).mean()
    assert hooks is not None and hooks.packed > 0 and hooks.offloaded_bytes == 0


@pytest.mark.parametrize("attn_blocks,mlp_blocks", [(0, 0), (3, 0), (0, 3), (2, 1), (3, 3)])
def test_plan_wraps_the_first_blocks(attn_blocks, mlp_blocks):
    """plan_aA_mM: attention in blocks 0..A-1, the MLP in 0..M-1 (block 0 included); the
    analytic model reads the same regions."""
    policy = get_policy(f"plan_a{attn_blocks}_m{mlp_blocks}")
    model = apply_policy(build_model(FLAVOR, "sdpa"), policy)
    expected = {(b, "attn") for b in range(attn_blocks)} | {(b, "mlp") for b in range(mlp_blocks)}
    assert wrapped(model) == expected == set(policy.regions(FLAVOR.depth))
    assert {(b, s) for b in range(FLAVOR.depth) for s in ("attn", "mlp")
            if policy.is_checkpointed(b, s, FLAVOR.depth)} == expected
    assert policy.as_record() == {"name": policy.name, "kind": "plan",
                                  "params": {"attn_blocks": attn_blocks, "mlp_blocks": mlp_blocks,
                                             "preserve_rng_state": True}}


def test_plan_deeper_than_the_model_is_refused():
    with pytest.raises(ValueError, match="at most 3"):
        get_policy("plan_a4_m0").apply(build_model(FLAVOR, "sdpa"))


def test_compile_budget_records_its_backend_and_patches_the_partitioner():
    policy = get_policy("budget_0.3")
    assert policy.kind == "compile_budget" and policy.compiles
    assert policy.record_params("cpu") == {"preserve_rng_state": True, "budget": 0.3,
                                           "backend": "aot_eager_decomp_partition"}
    assert policy.record_params("cuda")["backend"] == "inductor"
    before = torch._functorch.config.activation_memory_budget
    with policy.forward_context("cpu"):
        assert torch._functorch.config.activation_memory_budget == 0.3
    assert torch._functorch.config.activation_memory_budget == before
    model = apply_policy(build_model(FLAVOR, "sdpa"), policy)
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict())  # keys kept
