"""Each extension point is one place (docs/extending.md), checked by extending the suite here:
a new policy kind is one class listed in ``KINDS`` (it parses its own names, declares its
analytic composition and whether it composes with FSDP2, and is measured like any other), the
report's columns and the step's figures come from the metric registry, and a record describes
its model without the live registries."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from ac_bench import analytic
from ac_bench.distributed import DEFAULT_POLICIES, NOT_COMPOSED
from ac_bench.metrics import METRICS
from ac_bench.models import KINDS, POLICIES, CompileBudgetAC, Policy, get_flavor, get_policy
from ac_bench.models.ac import registry
from ac_bench.models.ac.base import parse_count
from ac_bench.record import SCHEMA_VERSION, Measurement, StepFigures, measure_variant
from ac_bench.report import tables


@dataclass(frozen=True)
class WholeBlockAC(Policy):
    """A kind the suite does not have: whole blocks ``first..depth-1`` under one checkpoint each
    (Hugging Face's ``gradient_checkpointing_enable()`` shape), named ``selftest_blocks_from_N``
    (a name no kind of a user's, such as docs/extending.md's example, would take)."""

    first: int = 0

    kind: ClassVar[str] = "selftest_whole_block"
    name_grammar: ClassVar[str | None] = "selftest_blocks_from_N (N >= 0)"
    fsdp2_incompatibility: ClassVar[str | None] = "not tried under FSDP2 (a self-test's kind)"

    @classmethod
    def from_name(cls, name: str) -> Policy | None:
        n = parse_count(r"selftest_blocks_from_(\d+)", name, 0, "selftest_blocks_from_N needs N >= 0")
        return None if n is None else cls(name, first=n)

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        for index, block in enumerate(model.blocks):
            if index >= self.first:
                forward = block.forward
                block.forward = lambda *a, _f=forward: checkpoint(_f, *a, use_reentrant=False,
                                                                  preserve_rng_state=self.preserve_rng_state)
        return model


@pytest.fixture
def with_new_kind(monkeypatch):
    monkeypatch.setattr(registry, "KINDS", (WholeBlockAC, *KINDS))
    return WholeBlockAC


def test_a_new_kind_is_one_class_listed_in_kinds(with_new_kind):
    policy = get_policy("selftest_blocks_from_1")
    assert policy == WholeBlockAC("selftest_blocks_from_1", first=1)
    with pytest.raises(ValueError, match="selftest_blocks_from_N needs N >= 0"):
        get_policy("selftest_blocks_from_01")
    with pytest.raises(ValueError, match=r"selftest_blocks_from_N \(N >= 0\)"):
        get_policy("no_such_policy")  # the unknown-name message lists the new kind's grammar


def test_a_new_kind_is_measured_and_recorded_like_every_other(with_new_kind):
    tiny = get_flavor("tiny")
    none, record = (measure_variant(tiny, v, "cpu") for v in ("none-sdpa", "selftest_blocks_from_1-sdpa"))
    assert (record.policy, record.policy_kind, record.policy_params) == (
        "selftest_blocks_from_1", "selftest_whole_block", {"preserve_rng_state": True, "first": 1}), record
    assert record.forward_kept_bytes < none.forward_kept_bytes, "two of three blocks keep only their input"
    assert record.flops > none.flops, "checkpointed blocks are recomputed"


def test_a_kind_without_a_composition_skips_the_analytic_checks_with_the_reason(with_new_kind):
    reason = analytic.not_modelled_reason(get_flavor("tiny"), "selftest_blocks_from_1")
    assert reason is not None and "'selftest_whole_block' declares no analytic composition" in reason
    assert "\n" not in reason
    assert analytic.not_modelled_reason(get_flavor("tiny"), "full") is None
    assert analytic.not_modelled_reason(get_flavor("tiny"), "every_4") is None


def test_fsdp2_composition_is_declared_by_each_kind():
    assert NOT_COMPOSED == {k.kind: k.fsdp2_incompatibility for k in KINDS if k.fsdp2_incompatibility}
    assert NOT_COMPOSED["compile_budget"] == CompileBudgetAC.fsdp2_incompatibility
    assert DEFAULT_POLICIES == tuple(n for n, p in POLICIES.items() if p.kind not in NOT_COMPOSED)


def test_the_reports_columns_are_the_registrys():
    declared = {m.column: m.name for m in METRICS.values() if m.column and m.unit == "B" and not m.beyond_none}
    assert tables.MIB_COLUMNS == declared and list(tables.MIB_COLUMNS.values()) == [
        "peak_bytes", "activation_peak_bytes", "forward_kept_bytes", "saved_bytes", "offloaded_bytes"]
    against_none = {m.column: m.name for m in METRICS.values() if m.column and m.beyond_none}
    assert tables.BEYOND_NONE_COLUMNS == against_none and list(against_none.values()) == [
        "backward_ops", "backward_nonmatmul_bytes"]
    for header, name in {**declared, **against_none}.items():
        assert METRICS[name].meaning in tables.DEFINITIONS[header]


def test_the_steps_figures_are_checked_against_the_registry():
    figures = StepFigures(method="memtracker", foreign_bytes=0, metrics={m: 1 for m in METRICS}, saved_bytes_note=None,
                          breakdown=None, flops_by_op={}, attention_kernel="math", outcome="ok", outcome_note=None)
    assert {name: figures.fields()[name] for name in METRICS} == {m: 1 for m in METRICS}
    figures.metrics.pop("flops")
    with pytest.raises(ValueError, match="the registry declares"):
        figures.fields()


def test_a_record_describes_its_model_without_the_registries(monkeypatch):
    """A llama record names its family and the shape fields it adds, and the analytic shape is
    read from the record alone, even with the flavor gone from the registry."""
    flavor = get_flavor("llama-small")  # SwiGLU hidden: int(2 * 4 * 128 / 3) = 341, up to a multiple of 64
    record = Measurement.from_dict(measure_variant(flavor, "full-sdpa", "cpu").as_dict())
    assert record.family == "llama" and record.schema_version == SCHEMA_VERSION == 7
    assert record.family_shape == {"n_kv_heads": 2, "mlp_hidden": 384, "multiple_of": 64, "ffn_dim_multiplier": None,
                                   "rope_theta": 500000.0, "norm_eps": 1e-05}, record.family_shape
    expected = analytic.Shape.of(flavor, torch.float32, "cpu")
    # The analytic module's view of the registry without the flavor; the registry itself keeps
    # its order (a delitem undone re-inserts at the end, which changed the "valid names" line
    # that later tests of the process print).
    monkeypatch.setattr(analytic, "FLAVORS", {k: v for k, v in analytic.FLAVORS.items() if k != "llama-small"})
    assert analytic.Shape.of_record(record) == expected
    older = {**record.as_dict(), "schema_version": 3}
    del older["family"], older["family_shape"]
    assert Measurement.from_dict(older).family is None, "a version-3 record is read with the new fields null"
    version4 = {**record.as_dict(), "schema_version": 4}
    del version4["backward_ops"]
    assert Measurement.from_dict(version4).backward_ops is None, "a version-4 record has no count of backward ops"
    version6 = {**record.as_dict(), "schema_version": 6}
    del version6["backward_nonmatmul_bytes"], version6["predicted_peak_bytes"]
    older6 = Measurement.from_dict(version6)
    assert (older6.backward_nonmatmul_bytes, older6.predicted_peak_bytes) == (None, None), (
        "a version-6 record has neither the bytes of backward's non-matmul ops nor a predicted peak")
    assert record.backward_nonmatmul_bytes > 0 and record.predicted_peak_bytes is None, record


def test_the_flavor_registry_is_complete_from_any_import():
    """``ac_bench.models.transformer`` imported first still sees every family's flavors (the
    package's ``__init__`` registers the families before any submodule is used)."""
    code = "from ac_bench.models.transformer import FLAVORS; print(sorted(FLAVORS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'llama-small'" in out and "'llama3-8b-4l'" in out and "'small'" in out, out
