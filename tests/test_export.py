"""A per-block plan exported to torchtitan, Megatron-LM and transformers (``ac_bench.export``):
exact configurations where the plan fits each vocabulary, one line saying why where it does not;
and the transformers configuration, applied to a transformers model through its own switch,
measures the bytes and FLOPs of the plan itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from ac_bench.export import KEEP_ATTENTION_OUTPUT_CONTEXT_FN, SAC_CONTEXT_FN, export_all, megatron, torchtitan, transformers
from ac_bench.models import BlockPlanAC, Policy, get_policy


def config(exporter, name):
    return exporter(get_policy(name)).config


@pytest.mark.parametrize("name,expected", [
    ("blocks_nn4", {"mode": "none"}),
    ("blocks_lf4", {"mode": "full"}),
    ("blocks_ls4", {"mode": "selective", "selective_ac_option": "op"}),
    ("blocks_nn.lf.nn.lf", {"mode": "selective", "selective_ac_option": "2"}),
    ("blocks_nn2.lf.nn2.lf", {"mode": "selective", "selective_ac_option": "3"}),
    ("blocks_lf.nn.lf.nn", None),
    ("blocks_ff4", None),
    ("blocks_lf2.ss2", None),
    ("blocks_lp4", None),
])
def test_torchtitan(name, expected):
    assert config(torchtitan, name) == expected


@pytest.mark.parametrize("name,expected", [
    ("blocks_nn4", {"recompute_granularity": None}),
    ("blocks_lf4", {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 4}),
    ("blocks_lf3.nn", {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 3}),
    ("blocks_nf4", {"recompute_granularity": "selective", "recompute_modules": ["mlp"]}),
    ("blocks_nn.lf3", None),
    ("blocks_ls4", None),
    ("blocks_fn4", None),
    ("blocks_pn4", None),
])
def test_megatron(name, expected):
    assert config(megatron, name) == expected


@pytest.mark.parametrize("name,expected", [
    ("blocks_nn4", {}),
    ("blocks_lf4", {"gradient_checkpointing_kwargs": {"use_reentrant": False}, "every_n_layers": 1}),
    ("blocks_lf.nn.lf.nn", {"gradient_checkpointing_kwargs": {"use_reentrant": False}, "every_n_layers": 2}),
    ("blocks_ls.nn3", {"gradient_checkpointing_kwargs": {"use_reentrant": False, "context_fn": SAC_CONTEXT_FN},
                       "every_n_layers": 4}),
    ("blocks_lp2.nn2", None),
    ("blocks_lp4", {"gradient_checkpointing_kwargs": {"use_reentrant": False, "context_fn": KEEP_ATTENTION_OUTPUT_CONTEXT_FN},
                    "every_n_layers": 1}),
    ("blocks_nn.lf.nn.lf", None),
    ("blocks_sf4", None),
])
def test_transformers(name, expected):
    assert config(transformers, name) == expected


def test_what_does_not_fit_says_why_in_one_line():
    notes = {e.framework: e.note for e in export_all(get_policy("blocks_lf2.sf3.ss"))}
    assert set(notes) == {"torchtitan", "Megatron-LM", "transformers"}
    assert all(n.startswith("does not fit: ") and "\n" not in n for n in notes.values()), notes
    assert "mixes lf, sf, ss across blocks" in notes["torchtitan"]
    assert "save per op" in notes["Megatron-LM"]


@dataclass(frozen=True)
class ExportedTransformersAC(Policy):
    """A plan's transformers export applied through the model's own switch."""

    plan: str = ""
    kind: ClassVar[str] = "exported"

    def apply(self, model):
        cfg = transformers(get_policy(self.plan)).config
        model.gradient_checkpointing_enable(**cfg)
        return model


@pytest.fixture
def hf_llama():
    """transformers' Llama family's first flavor (``hf-llama-tiny``), registered for one test
    only (``tests.helpers.registries_kept``): left registered, every later test in the process
    listed the hf-* flavors among the valid names (``tests/test_model_spec.py`` failed on that)."""
    pytest.importorskip("transformers", reason="the transformers families need transformers: pip install 'ac-bench[hf]'")
    from ac_bench.models import load_family_spec
    from tests.helpers import registries_kept
    with registries_kept(("ac_bench.models.hf",)):
        yield load_family_spec("ac_bench.models.hf:LLAMA").flavors[0]


@pytest.mark.parametrize("plan", ["blocks_lf2", "blocks_lf.nn"])
def test_the_transformers_export_measures_as_the_plan(plan, hf_llama):
    pytest.importorskip("transformers", reason="the transformers families need transformers: pip install 'ac-bench[hf]'")
    from ac_bench.record import measure_variant
    flavor = hf_llama
    assert flavor.depth == 2, f"{flavor.name} has {flavor.depth} layers; the plans here are written for 2"
    ours = measure_variant(flavor, f"{plan}-sdpa", "cpu")
    none = measure_variant(flavor, "none-sdpa", "cpu")
    assert ours.forward_kept_bytes < none.forward_kept_bytes, f"{plan} keeps what none keeps: it checkpointed nothing"
    exported = measure_variant(flavor, f"{plan}-sdpa", "cpu", policy=ExportedTransformersAC("exported", plan=plan))
    figures = ("peak_bytes", "activation_peak_bytes", "forward_kept_bytes", "flops")
    assert {f: getattr(exported, f) for f in figures} == {f: getattr(ours, f) for f in figures}, (
        f"{plan} exported to transformers ({transformers(BlockPlanAC.of(get_policy(plan).blocks)).config}) measures "
        f"differently from the plan")


@dataclass(frozen=True)
class TransformersOffloadAC(Policy):
    """transformers' own ``gradient_checkpointing_enable(offload=True)``."""

    kind: ClassVar[str] = "transformers_offload"

    def apply(self, model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}, offload=True)
        return model


def test_an_offloading_plan_is_not_exported_as_transformers_offload_which_still_recomputes(monkeypatch, hf_llama):
    note = {e.framework: e.note for e in export_all(get_policy("blocks_lo2"))}["transformers"]
    assert note.startswith("does not fit: ") and "(offload=True) recomputes" in note, note
    pytest.importorskip("transformers", reason="the transformers families need transformers: pip install 'ac-bench[hf]'")
    import transformers.modeling_utils
    from torch.autograd.graph import save_on_cpu

    from ac_bench.record import measure_variant
    # transformers' offload=True asks for pinned host memory even where there is no accelerator
    # (5.18, 5.24: "pin_memory=True requires a CUDA or other accelerator backend" on this CPU);
    # pinned or not moves nothing on the CPU and changes nothing of what is recomputed.
    packed = []

    class Unpinned(save_on_cpu):
        """What transformers' offload=True packs, counted, unpinned."""

        def __init__(self, pin_memory, device_type):
            super().__init__(pin_memory=False, device_type=device_type)
            inner = self.pack_hook
            self.pack_hook = lambda t: packed.append(t.numel() * t.element_size()) or inner(t)

    monkeypatch.setattr(transformers.modeling_utils, "save_on_cpu", Unpinned)
    flavor = hf_llama
    ours = {p: measure_variant(flavor, f"{p}-sdpa", "cpu") for p in ("blocks_lo2", "blocks_lf2", "none")}
    theirs = measure_variant(flavor, "blocks_lf2-sdpa", "cpu", policy=TransformersOffloadAC("transformers_offload"))
    assert ours["blocks_lo2"].flops == ours["none"].flops < ours["blocks_lf2"].flops, (
        "the offloading plan was expected to recompute nothing, whole layers to recompute", ours)
    assert theirs.flops == ours["blocks_lf2"].flops, (
        f"transformers' offload=True recomputed {theirs.flops - ours['none'].flops} FLOPs, whole layers "
        f"{ours['blocks_lf2'].flops - ours['none'].flops}: the export's note no longer describes it")
    # And it offloads what whole_layers_offload offloads: one forward of theirs, against our
    # record's (fake tensors, the simulated host, which counts what save_on_cpu copies).
    from ac_bench.models import build_model, family_of
    from ac_bench.models.ac.offload import simulated_host
    model = TransformersOffloadAC("transformers_offload").apply(build_model(flavor, "sdpa"))
    packed.clear()
    model(family_of(flavor).input_for(flavor, "cpu", next(model.parameters()).dtype))
    with simulated_host():
        mine = measure_variant(dataclasses.replace(flavor, cpu_mode="estimate"), "whole_layers_offload-sdpa", "cpu")
    assert len(packed) == flavor.depth and sum(packed) == mine.offloaded_bytes > 0, (packed, mine.offloaded_bytes)


def test_the_export_shown_in_the_planners_docs_is_what_it_prints():
    """``docs/planner.md``'s ``blocks_lf12`` example is ``export_lines``' output, line for line
    (it had gone stale: no header, no list marks, no transformers 5.24 name)."""
    from ac_bench.export import export_lines
    from tests.helpers import ROOT
    doc = (ROOT / "docs" / "planner.md").read_text()
    shown = doc.split("```\nexported (blocks_lf12):\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert ["exported (blocks_lf12):", *shown] == export_lines(get_policy("blocks_lf12"))


def test_a_policy_that_is_no_per_block_plan_is_refused_by_name():
    """``export_lines(get_policy("every_3"))`` raised AttributeError ('RegionAC' object has no
    attribute 'blocks'); it is a TypeError that names the policy and what is exported."""
    from ac_bench.export import export_lines
    with pytest.raises(TypeError, match=r"^every_other: only per-block plans \(blocks_\.\.\."):
        export_lines(get_policy("every_other"))
