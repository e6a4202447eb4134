"""Policies as data: what each one wraps, that names parse both ways, and that the model
class and its state-dict keys never change."""

from __future__ import annotations

import pytest
import torch
import torch._functorch.config as functorch_config  # read below; not imported by `import torch` alone
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
    assert set(EXPECTED_WRAPPED) == set(POLICIES), (
        f"policies without an expectation here: {sorted(set(POLICIES) - set(EXPECTED_WRAPPED))}; "
        f"expectations of no policy: {sorted(set(EXPECTED_WRAPPED) - set(POLICIES))}")
    model = apply_policy(build_model(FLAVOR, "sdpa"), name)
    assert wrapped(model) == EXPECTED_WRAPPED[name], (
        f"{name} wraps (block, sublayer) {sorted(wrapped(model))}, expected {sorted(EXPECTED_WRAPPED[name])}")
    assert type(model).__name__ == "Transformer", f"{name} changed the model's class to {type(model).__name__}"
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict()), f"{name} changed state-dict keys"


def test_region_blocks_at_any_depth():
    for name, expected in [("every_other", [1, 3, 5, 7, 9, 11]), ("every_3", [1, 4, 7, 10]),
                           ("full", list(range(1, 12))), ("none", [])]:
        got = list(POLICIES[name].checkpointed_blocks(12))
        assert got == expected, f"{name} at depth 12 checkpoints blocks {got}, expected {expected}"


def test_sequential_segments_as_checkpoint_sequential_cuts_them():
    """depth // K blocks per segment, the last segment (with the remainder) not checkpointed."""
    seq = POLICIES["sequential"]
    segments = {depth: seq.segments_for(depth) for depth in (12, 4, 3)}
    assert segments == {12: 3, 4: 2, 3: 2}, f"sequential: segments by depth {segments}"
    for name, depth, expected in [
            ("sequential", 12, [([0, 1, 2, 3], True), ([4, 5, 6, 7], True), ([8, 9, 10, 11], False)]),
            ("sequential_4", 10, [([0, 1], True), ([2, 3], True), ([4, 5], True), ([6, 7, 8, 9], False)])]:
        got = [(list(r), c) for r, c in get_policy(name).segment_ranges(depth)]
        assert got == expected, f"{name} at depth {depth}: segments (blocks, checkpointed) {got}, expected {expected}"
    with pytest.raises(ValueError, match="at most 3"):
        get_policy("sequential_5").apply(build_model(FLAVOR, "sdpa"))


@pytest.mark.parametrize("name", ["every_3", "every_7", "sequential_4", "sequential", "sac", "core_attn", "offload",
                                  "plan_a2_m0", "plan_a12_m3", "budget_0.3", "budget_1.0", "budget_0.0"])
def test_names_parse_both_ways(name):
    policy = get_policy(name)
    assert policy.name == name and get_policy(policy.name) == policy, f"{name} parses to {policy!r}, named {policy.name!r}"
    variant = variant_id(policy, "eager")
    assert parse_variant(variant) == (name, "eager"), f"{name}: variant {variant!r} parses to {parse_variant(variant)}"
    # A plain pytest id and baseline key (pytest's -k accepts word characters, '-' and '.').
    assert variant.replace("_", "").replace("-", "").replace(".", "").isalnum(), f"{name}: variant id {variant!r}"


def test_every_2_is_every_other_and_bad_names_say_what_is_valid():
    assert get_policy("every_2") is POLICIES["every_other"], f"every_2 is {get_policy('every_2')!r}, not every_other"
    for bad, message in [("every_1", "N >= 2"), ("every_02", "N >= 2"), ("sequential_0", "K >= 1"),
                         ("selective", "valid names: none, full"), ("plan_a01_m2", "leading zeros"),
                         ("budget_1", "write the budget as budget_1.0"), ("budget_1.5", r"in \[0, 1\]"),
                         ("budget_nan", r"in \[0, 1\]"), ("budget_-0.1", r"in \[0, 1\]"), ("budget_", r"in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            get_policy(bad)


def test_every_variant_is_listed_once():
    assert len(VARIANTS) == len(set(VARIANTS)) == 2 * len(POLICIES), (
        f"{len(VARIANTS)} variants, {len(set(VARIANTS))} distinct, for {len(POLICIES)} policies x 2 attentions")


def test_policy_is_recorded_as_data():
    record = POLICIES["every_3"].as_record()
    assert record == {
        "name": "every_3", "kind": "region",
        "params": {"preserve_rng_state": True, "sublayers": ["attn", "mlp"], "first_block": 1, "block_step": 3,
                   "use_reentrant": False}}, f"every_3 recorded as {record}"
    assert POLICIES["sequential"].as_record()["params"]["segments"] is None, (
        f"sequential recorded as {POLICIES['sequential'].as_record()}")
    assert POLICIES["sac"].as_record()["kind"] == "selective", f"sac recorded as {POLICIES['sac'].as_record()}"
    assert "aten.mm.default" in POLICIES["sac"].params()["save_ops"], f"sac saves {POLICIES['sac'].params()['save_ops']}"


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
    assert sac_fwd == none_fwd, f"sac-eager's forward runs aten.bmm {sac_fwd} times, none-eager's {none_fwd}"
    # Two checkpointed attention sublayers each recompute QK^T and PV.
    assert sac_bwd == none_bwd + 2 * 2, (
        f"sac-eager's backward runs aten.bmm {sac_bwd} times, none-eager's {none_bwd}: expected 4 more (QK^T, PV x 2)")


def test_interleaved_timing_alternates_the_steps():
    calls: list[str] = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4, f"steps ran in the order {calls}"
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values()), f"medians {medians}"


def test_offload_context_yields_its_live_counter():
    """The record reads offloaded_bytes from what forward_context yields (saved_tensors_hooks'
    own __enter__ returns None, which once made every count 0). On the CPU tensors are packed
    but none leaves the device."""
    torch.manual_seed(0)
    model = build_model(FLAVOR, "sdpa")
    with get_policy("offload").forward_context("cpu") as hooks:
        model(torch.randn(FLAVOR.input_shape())).mean()
    assert hooks is not None and hooks.packed > 0 and hooks.offloaded_bytes == 0, (
        f"offload's forward_context yielded {hooks!r}" + ("" if hooks is None else
                                                           f": packed {hooks.packed}, offloaded {hooks.offloaded_bytes} B"))


@pytest.mark.parametrize("attn_blocks,mlp_blocks", [(0, 0), (3, 0), (0, 3), (2, 1), (3, 3)])
def test_plan_wraps_the_first_blocks(attn_blocks, mlp_blocks):
    """plan_aA_mM: attention in blocks 0..A-1, the MLP in 0..M-1 (block 0 included); the
    analytic model reads the same regions."""
    policy = get_policy(f"plan_a{attn_blocks}_m{mlp_blocks}")
    model = apply_policy(build_model(FLAVOR, "sdpa"), policy)
    expected = {(b, "attn") for b in range(attn_blocks)} | {(b, "mlp") for b in range(mlp_blocks)}
    assert wrapped(model) == expected == set(policy.regions(FLAVOR.depth)), (
        f"{policy.name} wraps {sorted(wrapped(model))}, its regions are {sorted(policy.regions(FLAVOR.depth))}, "
        f"expected {sorted(expected)}")
    marked = {(b, s) for b in range(FLAVOR.depth) for s in ("attn", "mlp") if policy.is_checkpointed(b, s, FLAVOR.depth)}
    assert marked == expected, f"{policy.name}.is_checkpointed marks {sorted(marked)}, expected {sorted(expected)}"
    assert policy.as_record() == {"name": policy.name, "kind": "plan",
                                  "params": {"attn_blocks": attn_blocks, "mlp_blocks": mlp_blocks,
                                             "preserve_rng_state": True}}, f"{policy.name} recorded as {policy.as_record()}"


def test_plan_deeper_than_the_model_is_refused():
    with pytest.raises(ValueError, match="at most 3"):
        get_policy("plan_a4_m0").apply(build_model(FLAVOR, "sdpa"))


def test_compile_budget_records_its_backend_and_patches_the_partitioner():
    policy = get_policy("budget_0.3")
    assert policy.kind == "compile_budget" and policy.compiles, f"budget_0.3: kind {policy.kind}, compiles {policy.compiles}"
    cpu = policy.record_params("cpu")
    assert cpu == {"preserve_rng_state": True, "budget": 0.3, "backend": "aot_eager_decomp_partition"}, (
        f"budget_0.3 on the CPU recorded as {cpu}")
    assert policy.record_params("cuda")["backend"] == "inductor", f"budget_0.3 on CUDA: {policy.record_params('cuda')}"
    before = functorch_config.activation_memory_budget
    with policy.forward_context("cpu"):
        inside = functorch_config.activation_memory_budget
    assert inside == 0.3, f"budget_0.3's forward context sets activation_memory_budget to {inside}"
    after = functorch_config.activation_memory_budget
    assert after == before, f"budget_0.3's forward context leaves activation_memory_budget at {after}, not {before}"
    model = apply_policy(build_model(FLAVOR, "sdpa"), policy)
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict()), "budget_0.3 changed state-dict keys"


def test_sac_keeps_its_saves_out_of_saved_tensors_hooks_on_every_torch(monkeypatch):
    """torch 2.14 lets checkpoint route SAC's saves through surrounding saved_tensors_hooks and
    warns that a future release will by default; the suite asks for the behaviour of every
    earlier torch explicitly where the choice exists, and passes nothing where it does not."""
    from ac_bench.models.ac import selective

    for has_choice in (True, False):
        monkeypatch.setattr(selective, "RESPECTS_SAVED_TENSORS_HOOKS", has_choice)
        for name in ("sac", "core_attn"):
            kwargs = get_policy(name).wrap_kwargs()
            expected = {"context_fn", "respect_saved_tensors_hooks"} if has_choice else {"context_fn"}
            assert set(kwargs) == expected and kwargs.get("respect_saved_tensors_hooks", False) is False, (
                f"{name} with{'' if has_choice else 'out'} the choice passes {kwargs}")
