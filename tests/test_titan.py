"""torchtitan's llama3 as a family (``ac_bench.models.titan``): built by torchtitan's own model
code from its config classes, its layers and sublayers the ones torchtitan's ``FullAC`` wraps,
torchtitan's training step and loss, the attention it declares equal to torchtitan's own on one
document per sequence, what it does not declare failing on the CPU as it says, and the suite run
on the family. Skipped, saying so, where torchtitan is not installed (it is not in
requirements-cpu.txt: ``pip install -e '.[titan]'``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torchtitan = pytest.importorskip(
    "torchtitan", reason="torchtitan is not installed (pip install -e '.[titan]': torchtitan 0.3.0 and triton): "
                         "the torchtitan family cannot be built")

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper  # noqa: E402
from torchtitan.components.loss import cross_entropy_loss  # noqa: E402
from torchtitan.models.common import FeedForward, FlexAttention, GQAttention, ScaledDotProductAttention  # noqa: E402
from torchtitan.models.common.attention import VarlenAttention  # noqa: E402
from torchtitan.models.llama3 import Llama3Model  # noqa: E402
from torchtitan.models.llama3.model import Llama3TransformerBlock  # noqa: E402

from ac_bench.gradients import mismatches, run_step, twin_models  # noqa: E402
from ac_bench.models import apply_policy, build_model, families, get_policy, load_family_spec  # noqa: E402
from tests.helpers import assert_spec_fails_in_one_line_without, imported_for_the_module, run_pytest  # noqa: E402

NAME = "tt-llama3"


@pytest.fixture(scope="module", autouse=True)
def titan():
    """``ac_bench.models.titan`` for this module's tests only (``tests.helpers.imported_for_the_module``)."""
    yield from imported_for_the_module("ac_bench.models.titan")


def _flavor():
    return families.FAMILIES[NAME].flavors[0]


def _inputs(titan, flavor):
    """The step's input split as ``TitanStep.forward`` splits it: inputs, labels, positions."""
    ids = families.FAMILIES[NAME].input_for(flavor, "cpu", torch.float32)
    return ids, ids[:, :-1], ids[:, 1:], torch.arange(flavor.seq_len).expand(flavor.batch, -1)


def test_the_family_and_its_spec(titan):
    assert [f.name for f in titan.ALL] == [NAME] and titan.ALL == (titan.LLAMA3,)
    assert load_family_spec("ac_bench.models.titan:ALL") == titan.ALL  # registered once, loaded again as a no-op
    assert load_family_spec("ac_bench.models.titan:LLAMA3") is titan.LLAMA3
    assert titan.LLAMA3.attentions == ("sdpa",) and not titan.LLAMA3.dropout
    assert set(titan.UNDECLARED_ATTENTIONS) == {"flex", "flex_flash", "varlen", "eager"}


def test_the_model_is_torchtitans_llama3(titan):
    """torchtitan's ``Llama3Model`` at the flavor's sizes; the blocks are its ``layers`` (the
    ``ModuleDict`` ``FullAC`` wraps the children of), ``attn`` and ``mlp`` their ``attention``
    and ``feed_forward``; SDPA inside every layer; torchtitan's initialisation drew the weights."""
    flavor = _flavor()
    model = build_model(flavor, "sdpa")
    assert type(model.model) is Llama3Model and model.training
    layers = model.model.get_submodule("layers")
    assert list(model.blocks) == list(layers.values()) and len(model.blocks) == flavor.depth == 2
    assert all(type(layer) is Llama3TransformerBlock for layer in model.blocks)
    assert model.sublayer_attributes == {"attn": "attention", "mlp": "feed_forward"}
    block = model.blocks[0]
    assert (type(block.attention), type(block.feed_forward)) == (GQAttention, FeedForward)
    assert all(type(layer.attention.inner_attention) is ScaledDotProductAttention for layer in model.blocks)
    attention = block.attention
    assert (attention.n_heads, attention.n_kv_heads, attention.head_dim) == (4, 2, 16)
    assert model.model.config.dim == 64 and model.model.lm_head.out_features == titan.VOCAB_SIZE
    assert block.feed_forward.w1.out_features == titan.FFN_HIDDEN
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # torchtitan's initialisers: RMSNorm weights ones, the output head's truncated at 3 sigma of dim^-0.5.
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    assert model.model.lm_head.weight.abs().max() <= 3 * 64 ** -0.5


def test_the_step_is_torchtitans(titan):
    """Input: ``seq_len + 1`` token ids per sequence; output: torchtitan's summed cross-entropy of
    each next token over the valid labels, which is the mean cross-entropy of the logits."""
    flavor = _flavor()
    model = build_model(flavor, "sdpa")
    ids, inputs, labels, positions = _inputs(titan, flavor)
    assert ids.dtype == torch.int64 and ids.shape == (flavor.batch, flavor.seq_len + 1)
    assert 0 <= int(ids.min()) and int(ids.max()) < titan.VOCAB_SIZE
    loss = model(ids)
    assert loss.dim() == 0 and loss.requires_grad
    logits = model.model(inputs, positions=positions)
    assert logits.shape == (flavor.batch, flavor.seq_len, titan.VOCAB_SIZE)
    torch.testing.assert_close(loss, cross_entropy_loss(logits, labels) / labels.numel())
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, titan.VOCAB_SIZE), labels.reshape(-1)))


def test_sdpa_is_torchtitans_flex_attention_on_one_document_per_sequence(titan):
    """The claim ``build_config`` makes: with one document per sequence, torchtitan's own
    configuration (``FlexAttention`` and the causal, same-document block mask
    ``get_attention_masks`` builds from the positions) computes the same logits as the SDPA
    model with the same weights. Forward only: on the CPU flex attention has no backward.
    torchtitan compiles flex_attention and the mask: 8 s with inductor's cache warm, about 20 s cold."""
    flavor = _flavor()
    model = build_model(flavor, "sdpa")
    config = titan.build_config(flavor, "sdpa")
    for layer in config.layers:
        layer.attention.inner_attention = FlexAttention.Config()
    flex = config.build()
    flex.load_state_dict(model.model.state_dict())
    _, inputs, _, positions = _inputs(titan, flavor)
    with torch.no_grad():
        expected = flex(inputs, positions=positions, attention_masks=flex.get_attention_masks(positions))
        actual = model.model(inputs, positions=positions)
    torch.testing.assert_close(actual, expected)
    # Its backward is what the CPU lacks (UNDECLARED_ATTENTIONS["flex"]).
    with pytest.raises(NotImplementedError, match="FlexAttention does not support backward on CPU"):
        flex(inputs, positions=positions, attention_masks=flex.get_attention_masks(positions))


def test_varlen_has_no_cpu_kernel(titan):
    """``UNDECLARED_ATTENTIONS["varlen"]``: torchtitan's ``VarlenAttention`` fails on the CPU."""
    flavor = _flavor()
    config = titan.build_config(flavor, "sdpa")
    for layer in config.layers:
        layer.attention.inner_attention = VarlenAttention.Config()
    varlen = config.build()
    _, inputs, _, positions = _inputs(titan, flavor)
    with torch.no_grad(), pytest.raises(NotImplementedError, match="_flash_attention_forward"):
        varlen(inputs, positions=positions, attention_masks=varlen.get_attention_masks(positions))


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0),
                    reason="a CUDA device of compute capability 9.0 or more is here: flex_flash builds")
def test_flex_flash_needs_hopper(titan):
    from torchtitan.models.common.config_utils import get_attention_config
    with pytest.raises(ValueError, match="only supported on Hopper or Blackwell"):
        get_attention_config("flex_flash")


@pytest.mark.parametrize("attention", ["eager", "flex", "varlen"])
def test_an_undeclared_attention_is_refused_with_the_reason(attention, titan):
    flavor = _flavor()
    with pytest.raises(ValueError, match=f"has no attention implementation {attention!r}; it declares sdpa"):
        build_model(flavor, attention)
    with pytest.raises(ValueError) as info:
        titan.build_config(flavor, attention)
    assert titan.UNDECLARED_ATTENTIONS[attention] in str(info.value)


def test_policies_wrap_torchtitans_modules(titan):
    """``full``: attention and feed-forward of layer 1; ``whole_layers``: every layer; ``native``:
    torchtitan's ``FullAC`` on every layer, with its ``early_stop=False``; state-dict keys unchanged."""
    flavor = _flavor()
    keys = list(build_model(flavor, "sdpa").state_dict())
    full = apply_policy(build_model(flavor, "sdpa"), "full")
    assert [(i, s) for i, layer in enumerate(full.blocks) for s in ("attention", "feed_forward")
            if isinstance(getattr(layer, s), CheckpointWrapper)] == [(1, "attention"), (1, "feed_forward")]
    layers = apply_policy(build_model(flavor, "sdpa"), "whole_layers")
    native = apply_policy(build_model(flavor, "sdpa"), "native")
    for model, early_stop in ((layers, True), (native, False)):
        assert all(isinstance(layer, CheckpointWrapper) for layer in model.blocks)
        assert list(model.model.layers.keys()) == ["0", "1"]
        assert [layer.checkpoint_fn.keywords["early_stop"] for layer in model.blocks] == [early_stop] * 2
        assert all(layer.checkpoint_fn.keywords["preserve_rng_state"] for layer in model.blocks)
    for model in (full, layers, native):
        assert list(model.state_dict()) == keys


def test_native_refuses_what_fullac_cannot_do(titan):
    model = build_model(_flavor(), "sdpa")
    with pytest.raises(ValueError, match="FullAC checkpoints non-reentrantly"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})


def test_sequential_is_not_generated_and_says_why(titan):
    family = families.FAMILIES[NAME]
    assert not [v for v in family.variants() if v.startswith("sequential-")]
    assert {"whole_layers-sdpa", "native-sdpa", "full-sdpa"} <= set(family.variants())
    assert not [v for v in family.variants() if not v.endswith("-sdpa")]
    assert "checkpoint_sequential replaces the model's forward" in family.exclusion(get_policy("sequential"))


@pytest.mark.parametrize("policy", ["whole_layers", "native", "full", "sac", "offload"])
def test_gradients_bitwise_equal_to_no_checkpointing(policy, titan):
    reference, model, x = twin_models(_flavor(), "sdpa", policy, "cpu")
    problems = mismatches(run_step(reference, x), run_step(model, x, policy=policy))
    assert not problems, f"{NAME} {policy}:\n" + "\n".join(problems)


def test_without_torchtitan_the_spec_is_one_line(monkeypatch):
    assert_spec_fails_in_one_line_without(monkeypatch, "torchtitan", "ac_bench.models.titan")


@pytest.mark.slow
def test_the_family_runs_through_the_suite(tmp_path, titan):
    """``pytest bench/ --model-spec ac_bench.models.titan:ALL`` at ``none``, ``full``,
    ``whole_layers`` and ``native``: the memory record, gradients, the regions' composition,
    native against whole_layers pass; baselines are written, then gated against."""
    common = ["--model-spec", "ac_bench.models.titan:ALL", "--baselines-dir", str(tmp_path), "--benchmark-skip",
              "-m", "not distributed", "-k", "none or full or whole_layers or native", "-q", "-rs"]
    modules = ["bench/test_memory.py", "bench/test_gradients.py", "bench/test_native.py", "bench/test_regions.py",
               "bench/test_baselines.py"]
    first = run_pytest(*modules, *common, "--update-baselines", timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"{_flavor().name}-native-sdpa" in (tmp_path / "cpu" / "figures.json").read_text()
    skipped_native = [line for line in first.stdout.splitlines() if "test_native.py" in line and "SKIPPED" in line
                      and "no eager attention" not in line]
    assert not skipped_native, skipped_native
    second = run_pytest("bench/test_baselines.py", *common, timeout=900)
    assert second.returncode == 0 and "no entry" not in second.stdout, second.stdout[-3000:]
