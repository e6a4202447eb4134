"""The transformers families (``ac_bench.models.hf``): built by the library from its config
classes, layers and sublayers found by its own structure, the real training step, the policies
applied to the library's modules, and the suite run on every family. Skipped, saying so, where
transformers is not installed (CI installs it: requirements-cpu.txt)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[hf]', or requirements-cpu.txt): "
                           "the transformers families cannot be built")

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper  # noqa: E402
from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: E402

from ac_bench.gradients import mismatches, run_step, twin_models  # noqa: E402
from ac_bench.models import FLAVORS, apply_policy, build_model, families, get_policy, load_family_spec  # noqa: E402
from tests.helpers import assert_spec_fails_in_one_line_without, imported_for_the_module, run_pytest  # noqa: E402

#: The families' names, known without importing ac_bench.models.hf (which registers them).
NAMES = [f"hf-{t}" for t in ("llama", "qwen2", "qwen3", "mistral", "gpt2") if t in transformers.CONFIG_MAPPING]

#: Where each library model keeps its decoder layers, and what its attention and MLP are called:
#: read from transformers 5.18's modeling files (modeling_llama.py, …, modeling_gpt2.py).
STRUCTURE = {
    "hf-llama": ("model.layers", "self_attn", "LlamaAttention", "LlamaMLP"),
    "hf-qwen2": ("model.layers", "self_attn", "Qwen2Attention", "Qwen2MLP"),
    "hf-qwen3": ("model.layers", "self_attn", "Qwen3Attention", "Qwen3MLP"),
    "hf-mistral": ("model.layers", "self_attn", "MistralAttention", "MistralMLP"),
    "hf-gpt2": ("transformer.h", "attn", "GPT2Attention", "GPT2MLP"),
}


@pytest.fixture(scope="module", autouse=True)
def hf():
    """``ac_bench.models.hf`` for this module's tests only (``tests.helpers.imported_for_the_module``)."""
    yield from imported_for_the_module("ac_bench.models.hf")


def _family(name):
    return families.FAMILIES[name]


def _flavor(name):
    return _family(name).flavors[0]


def test_the_families_this_transformers_has(hf):
    assert [f.name for f in hf.ALL] == NAMES
    assert load_family_spec("ac_bench.models.hf:ALL") == hf.ALL  # registered once, loaded again as a no-op
    assert load_family_spec("ac_bench.models.hf:GPT2") is hf.GPT2


@pytest.mark.parametrize("name", NAMES)
def test_layers_and_sublayers_are_the_librarys_own(name, hf):
    layers, attn, attn_class, mlp_class = STRUCTURE[name]
    flavor = _flavor(name)
    model = build_model(flavor, "sdpa")
    assert model.blocks is model.lm.get_submodule(layers) and len(model.blocks) == flavor.depth
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in model.blocks)
    assert model.sublayer_attributes == {"attn": attn, "mlp": "mlp"}
    assert [type(getattr(model.blocks[0], a)).__name__ for a in (attn, "mlp")] == [attn_class, mlp_class]
    config = model.lm.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (
        64, 2, 4, hf.VOCAB_SIZE)
    assert config._attn_implementation == "sdpa" and model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_the_step_is_token_ids_in_and_the_models_own_loss_out(name, hf):
    """Input: int64 token ids below the vocabulary; output: the model's loss, which is the
    cross-entropy over the vocabulary of each next token, computed here from its logits."""
    flavor = _flavor(name)
    model = build_model(flavor, "sdpa")
    x = _family(name).input_for(flavor, "cpu", torch.float32)
    assert x.dtype == torch.int64 and x.shape == (flavor.batch, flavor.seq_len)
    assert 0 <= int(x.min()) and int(x.max()) < hf.VOCAB_SIZE
    loss = model(x)
    assert loss.dim() == 0 and loss.requires_grad
    logits = model.lm(input_ids=x, use_cache=False).logits
    assert logits.shape == (flavor.batch, flavor.seq_len, hf.VOCAB_SIZE)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, hf.VOCAB_SIZE), x[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", NAMES)
def test_policies_wrap_the_librarys_modules(name):
    """``full``: attention and MLP of layers 1…; ``whole_layers``: every layer; ``native``: the
    library's flag on every layer; the state-dict keys never change."""
    flavor = _flavor(name)
    attn = STRUCTURE[name][1]
    keys = list(build_model(flavor, "sdpa").state_dict())
    full = apply_policy(build_model(flavor, "sdpa"), "full")
    assert [(i, s) for i, layer in enumerate(full.blocks) for s in (attn, "mlp")
            if isinstance(getattr(layer, s), CheckpointWrapper)] == [(1, attn), (1, "mlp")]
    layers = apply_policy(build_model(flavor, "sdpa"), "whole_layers")
    assert all(isinstance(layer, CheckpointWrapper) for layer in layers.blocks)
    native = apply_policy(build_model(flavor, "sdpa"), "native")
    assert [layer.gradient_checkpointing for layer in native.blocks] == [True] * flavor.depth
    for model in (full, layers, native):
        assert list(model.state_dict()) == keys


@pytest.mark.parametrize("name", NAMES)
def test_sequential_is_not_generated_and_says_why(name):
    family = _family(name)
    assert not [v for v in family.variants() if v.startswith("sequential-")]
    assert {"whole_layers-sdpa", "native-sdpa", "full-eager"} <= set(family.variants())
    assert "checkpoint_sequential replaces the model's forward" in family.exclusion(get_policy("sequential"))


@pytest.mark.parametrize("policy", ["whole_layers", "native", "full", "sac"])
@pytest.mark.parametrize("name", NAMES)
def test_gradients_bitwise_equal_to_no_checkpointing_with_dropout(name, policy):
    """The twin check with every dropout of the config at 0.1 (GPT-2's attention, residual and
    embedding dropout; the others' attention dropout): recomputation replays the RNG state."""
    reference, model, x = twin_models(_flavor(name), "eager", policy, "cpu", dropout=0.1)
    expected, actual = run_step(reference, x, rng_seed=7), run_step(model, x, rng_seed=7, policy=policy)
    problems = mismatches(expected, actual)
    assert not problems, f"{name} {policy}:\n" + "\n".join(problems)
    assert not run_step(reference, x, rng_seed=8).loss.equal(expected.loss), f"{name}: dropout is not active"


def test_without_transformers_the_spec_is_one_line(monkeypatch):
    assert_spec_fails_in_one_line_without(monkeypatch, "transformers", "ac_bench.models.hf")


@pytest.mark.slow
def test_every_family_runs_through_the_suite(tmp_path, hf):
    """``pytest bench/ --model-spec ac_bench.models.hf:ALL`` at ``none``, ``whole_layers`` and
    ``native``: the memory record, gradients, FLOPs recorded and native equal to whole_layers
    pass on every family; baselines are written, then gated against."""
    common = ["--model-spec", "ac_bench.models.hf:ALL", "--baselines-dir", str(tmp_path), "--benchmark-skip",
              "-m", "not distributed", "-k", "none or whole_layers or native", "-q", "-rs"]
    modules = ["bench/test_memory.py", "bench/test_gradients.py", "bench/test_native.py", "bench/test_baselines.py"]
    first = run_pytest(*modules, *common, "--update-baselines", timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for family in hf.ALL:
        assert f"{family.flavors[0].name}-native-sdpa" in (tmp_path / "cpu" / "figures.json").read_text(), family.name
    skipped_native = [line for line in first.stdout.splitlines() if "test_native.py" in line and "SKIPPED" in line]
    assert not skipped_native, skipped_native
    second = run_pytest("bench/test_baselines.py", *common, timeout=900)
    assert second.returncode == 0 and "no entry" not in second.stdout, second.stdout[-3000:]


@pytest.mark.parametrize("n", [2, 3])
def test_whole_layers_every_n_is_transformers_every_n_layers(n):
    """The layers ``whole_layers_every_N`` wraps are those ``gradient_checkpointing_enable(every_n_layers=N)``
    flags, at depth 5."""
    flavor = dataclasses.replace(_flavor("hf-llama"), depth=5)
    switched = build_model(flavor, "sdpa")
    switched.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=n)
    ours = apply_policy(build_model(flavor, "sdpa"), f"whole_layers_every_{n}")
    flags = [layer.gradient_checkpointing for layer in switched.blocks]
    assert flags == [isinstance(layer, CheckpointWrapper) for layer in ours.blocks] == [i % n == 0 for i in range(5)]


def test_the_attention_implementations_that_train_here_are_the_ones_declared():
    """Of every attention implementation transformers registers, the ones a training step runs
    with on the CPU are exactly what the families declare (``eager``, ``sdpa``); each other one
    fails for a reason of its own (no backward, a missing package, a cache it needs), named."""
    from ac_bench.models.hf import ALL, attention_implementations
    found = attention_implementations("cpu")
    # Paged attention is continuous batching's, for generation: transformers 5.24's paged|eager
    # runs a training step without its cache (5.18's did not), and it is not declared.
    trains = {name for name, reason in found.items() if reason is None and not name.startswith("paged|")}
    declared = set(ALL[0].attentions)
    assert trains == declared, (f"train on the CPU: {sorted(trains)}; declared: {sorted(declared)}; reasons: "
                                f"{ {n: r for n, r in found.items() if r} }")
    assert all(set(f.attentions) == declared for f in ALL), {f.name: f.attentions for f in ALL}
    assert "flex_attention" in found and "backward on CPU" in found["flex_attention"], found.get("flex_attention")


@pytest.mark.distributed
def test_the_libraries_semantics_under_fsdp2_equal_their_estimate(tmp_path):
    """``whole_layers`` and ``native`` (the model's own ``gradient_checkpointing_enable``) on
    transformers' Llama, launched for real on 2 ranks (``torchrun -m ac_bench.distributed
    --model-spec``, gloo), against the one-process estimate of a rank (``ac_bench.scale``): every
    figure equal, peaks within one block's FSDP buffers; and a launch without ``--variants``
    runs the family's own policies too."""
    import subprocess

    from ac_bench.distributed import default_variants, launch_env, load_records, torchrun_command
    from ac_bench.scale import ShardedSetup, estimate_rank, launch_differences
    flavor = FLAVORS["hf-llama-tiny"]
    assert {"whole_layers-sdpa", "native-sdpa"} <= set(default_variants(flavor)), default_variants(flavor)
    assert not any(v.startswith("sequential") for v in default_variants(flavor)), default_variants(flavor)
    variants = ("whole_layers-sdpa", "native-sdpa")
    result = subprocess.run(
        torchrun_command("--standalone", "--nproc-per-node=2", "-m", "ac_bench.distributed", "--model-spec",
                         "ac_bench.models.hf:LLAMA", "--flavor", flavor.name, "--device", "cpu", "--out",
                         str(tmp_path), "--variants", ",".join(variants)),
        env=launch_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {(r.variant, r.rank): r for r in load_records(tmp_path)}
    for variant in variants:
        estimate = estimate_rank(flavor, variant, ShardedSetup(2, mp_param_dtype=None, mp_reduce_dtype=None))
        problems = [p for rank in range(2) for p in launch_differences(estimate, records[(variant, rank)])]
        assert problems == [], f"{variant}: " + "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["none-sdpa", "whole_layers-sdpa",
                                     pytest.param("sac-sdpa", marks=[pytest.mark.slow, pytest.mark.deep])])
def test_the_estimate_on_fake_tensors_equals_the_real_step(name, variant):
    """What the at-scale figures of transformers' models rest on: the step measured on fake
    tensors (shapes, no data) equals the real step in every figure (bytes, FLOPs, ops, the
    breakdown). transformers reads the data to decide whether the sequences are packed; on fake
    tensors the suite tells it what the real data says (``unpacked_on_fake_tensors``)."""
    from ac_bench.record import measure_variant
    from ac_bench.scale import HOW_FIELDS
    flavor = _flavor(name)
    real = measure_variant(flavor, variant, "cpu").as_dict()
    fake = measure_variant(dataclasses.replace(flavor, cpu_mode="estimate"), variant, "cpu").as_dict()
    assert fake["memory_method"] == "fake-memtracker", fake["memory_method"]
    differ = {k: (real[k], fake[k]) for k in set(real) - HOW_FIELDS - {"metrics"} if real[k] != fake[k]}
    assert differ == {}, f"{name} {variant}: real, fake: {differ}"


def test_a_family_module_forgotten_by_a_test_registers_again_on_the_next_import():
    """``imported_for_the_module`` (this module's fixture) takes the transformers families out
    of the registries afterwards; a later ``from ac_bench.models import hf`` must import it anew.
    It found the stale attribute on ``ac_bench.models`` instead, and every plan at scale after
    this module in the same process said "transformers lacks LlamaForCausalLM". In a fresh
    process, so that this module's own import does not count."""
    import subprocess
    import sys

    from tests.helpers import ROOT
    script = ("from tests.helpers import imported_for_the_module\n"
              "fixture = imported_for_the_module('ac_bench.models.hf')\n"
              "next(fixture)\n"
              "next(fixture, None)\n"
              "from ac_bench.models.families import FAMILIES\n"
              "assert 'hf-llama3' not in FAMILIES, 'the fixture left the families registered'\n"
              "from ac_bench.scale import scale_model\n"
              "print(scale_model('llama3-8b').family in FAMILIES)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stdout + result.stderr[-2000:]


def test_native_calls_the_switch_this_transformers_names_without_its_deprecation_warning():
    """transformers 5.24 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
    and warns (FutureWarning) on each call of the old name, to be removed in v6: ``native`` calls
    the new one where it exists, and the same layers are checkpointed either way."""
    import warnings

    from ac_bench.models.ac.native import native_switch
    model = build_model(_flavor("hf-llama"), "sdpa")
    switch, keyword = native_switch(model.lm)
    new_name = hasattr(model.lm, "activation_checkpointing_enable")
    assert switch.__name__ == ("activation_checkpointing_enable" if new_name else "gradient_checkpointing_enable"), switch
    assert keyword == ("activation_checkpointing_kwargs" if new_name else "gradient_checkpointing_kwargs"), keyword
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = apply_policy(model, "native")
    assert all(layer.gradient_checkpointing for layer in model.blocks), [b.gradient_checkpointing for b in model.blocks]
