"""The libraries' own semantics as policies (``LIBRARY_POLICIES``: ``whole_layers``,
``whole_layers_offload``, ``native``),
and how a family declares which policies it runs, on the suite's own models (no transformers
needed; tests/test_hf.py runs them on the transformers families)."""

from __future__ import annotations

import pytest
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from ac_bench.gradients import mismatches, run_step, twin_models
from ac_bench.models import (
    LIBRARY_POLICIES,
    POLICIES,
    apply_policy,
    build_model,
    family_of,
    get_flavor,
    get_policy,
    variant_id,
)
from ac_bench.record import build_training

FLAVOR = get_flavor("tiny")  # depth 3


def test_library_policies_are_named_apart_from_ours():
    assert set(LIBRARY_POLICIES) == {"whole_layers", "whole_layers_offload", "native"}
    assert not set(LIBRARY_POLICIES) & set(POLICIES)
    for name in ("whole_layers", "whole_layers_offload", "native", "whole_layers_every_3"):
        assert get_policy(name).name == name and variant_id(name, "sdpa") == f"{name}-sdpa"


@pytest.mark.parametrize(("name", "says"), [
    ("whole_layers_every_1", "whole_layers_every_N needs N >= 2"),
    ("whole_layers_every_03", "whole_layers_every_N needs N >= 2"),
])
def test_bad_whole_layer_names_say_the_rule(name, says):
    with pytest.raises(ValueError, match=says):
        get_policy(name)


@pytest.mark.parametrize(("name", "layers"), [("whole_layers", [0, 1, 2]), ("whole_layers_every_2", [0, 2])])
def test_whole_layers_wraps_whole_blocks_layer_0_included(name, layers):
    """As transformers' ``every_n_layers`` counts: layers 0, N, 2N…; the sublayers stay unwrapped
    inside, the state-dict keys are kept."""
    model = apply_policy(build_model(FLAVOR, "sdpa"), name)
    assert [i for i, b in enumerate(model.blocks) if isinstance(b, CheckpointWrapper)] == layers
    assert not any(isinstance(getattr(b, s), CheckpointWrapper) for b in model.blocks for s in ("attn", "mlp"))
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict())


@pytest.mark.parametrize("name", ["whole_layers", "whole_layers_offload"])
def test_whole_layers_trains_like_no_checkpointing(name):
    reference, model, x = twin_models(FLAVOR, "sdpa", name, "cpu", dropout=0.1)
    problems = mismatches(run_step(reference, x, rng_seed=3), run_step(model, x, rng_seed=3))
    assert not problems, "\n".join(problems)


def test_whole_layers_offload_runs_each_checkpointed_layer_under_save_on_cpu():
    """transformers' ``offload=True`` order: ``save_on_cpu`` around the layer's checkpoint, so
    what the checkpoint saves (the layer's input) goes to the host; state-dict keys kept."""
    from ac_bench.models.ac.offload import HostOffloadWrapper
    model = apply_policy(build_model(FLAVOR, "sdpa"), "whole_layers_offload")
    assert all(isinstance(b, HostOffloadWrapper) and isinstance(b._checkpoint_wrapped_module, CheckpointWrapper)
               for b in model.blocks), [type(b).__name__ for b in model.blocks]
    assert list(model.state_dict()) == list(build_model(FLAVOR, "sdpa").state_dict())
    assert get_policy("whole_layers_offload").hidden_from_saved_tensors_hooks is not None
    assert get_policy("whole_layers").hidden_from_saved_tensors_hooks is None


def test_whole_layers_keeps_less_than_full_here():
    """Why it is a policy of its own: on the same model, whole layers keep one input per layer,
    ours one per sublayer of blocks 1… plus block 0's activations (issue 19's 854,528 B against
    164,352 B on a transformers Llama). Counted by the saved-tensor hooks, exactly."""
    from ac_bench.probes.memory import SavedTensorCounter
    kept = {}
    for name in ("full", "whole_layers"):
        model = apply_policy(build_model(FLAVOR, "sdpa"), name)
        x = family_of(FLAVOR).input_for(FLAVOR, "cpu", next(model.parameters()).dtype)
        counter = SavedTensorCounter(model, x)
        with counter.count():
            model(x)
        kept[name] = counter.saved_bytes
    assert kept["whole_layers"] < kept["full"], kept


def test_native_on_a_model_without_a_switch_is_one_line():
    with pytest.raises(ValueError) as info:
        apply_policy(build_model(FLAVOR, "sdpa"), "native")
    assert "Transformer has no checkpointing switch of its own" in str(info.value)
    assert "\n" not in str(info.value)


def test_the_suites_families_run_none_of_them_by_default():
    """The default run is unchanged: POLICIES only, where a family lists no extra policies."""
    for flavor in ("small", "seed", "llama3-8b-4l"):
        family = family_of(get_flavor(flavor))
        assert family.variants() == tuple(variant_id(p, a) for p in POLICIES for a in family.attentions)


def test_a_policy_the_family_cannot_run_is_refused_with_the_reason(monkeypatch):
    """``unsupported_kinds``: not generated, and building it says why in one line."""
    import dataclasses

    from ac_bench.models import families
    family = family_of(FLAVOR)
    refusing = dataclasses.replace(family, unsupported_kinds=(("sequential", "its blocks take two inputs"),))
    monkeypatch.setitem(families.FAMILIES, family.name, refusing)
    assert "sequential-sdpa" not in refusing.variants() and "full-sdpa" in refusing.variants()
    with pytest.raises(ValueError, match=r"^family 'transformer' cannot run policy 'sequential' \(sequential\): "
                                         r"its blocks take two inputs$"):
        build_training(FLAVOR, "sequential-sdpa", "cpu")


def test_a_family_listing_an_unknown_policy_is_refused_in_one_line():
    from ac_bench.models import Family
    with pytest.raises(ValueError, match=r"^family 'x': extra_policies: unknown checkpointing policy 'nope'; valid names"):
        Family("x", build=lambda flavor, attention, dropout: None, extra_policies=("nope",))
