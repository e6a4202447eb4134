"""The deterministic gate: memory figures and FLOPs against this device's committed baselines."""

from __future__ import annotations

import pytest

from bench.baselines import BaselineError, baseline_path, compare
from bench.cases import COMPILE_BUDGETS, COMPILE_FLAVOR, Case
from models import ATTENTIONS, budget_name, get_flavor


def test_figures_match_baseline(case, measurements, baseline_gate, update_baselines):
    """Fails when a memory figure or the FLOPs move beyond tolerance, in either direction."""
    _gate(measurements.get(case), baseline_gate, update_baselines)


@pytest.mark.parametrize("variant", [f"{budget_name(b)}-{a}" for b in COMPILE_BUDGETS for a in ATTENTIONS],
                         ids=lambda v: f"{COMPILE_FLAVOR}-{v}")
def test_compile_budget_figures_match_baseline(session_device, variant, measurements, baseline_gate,
                                               update_baselines):
    """torch.compile's budget sweep (bench/test_compile_budget.py) against the baselines: what
    the min-cut partitioner keeps at each B is what a torch upgrade changes."""
    _gate(measurements.get(Case(session_device, get_flavor(COMPILE_FLAVOR), variant)), baseline_gate,
          update_baselines)


def _gate(record, baseline_gate, update_baselines, compare=compare) -> None:
    """``record`` staged (--update-baselines) or against its entry in this device's baselines
    file: skipped with the command that adds a missing file or entry, failed with one line per
    metric that moved (``compare(record, entry, tolerances, fix)``: the registry's tolerances,
    or a caller's own rule, as bench/test_distributed.py's for sharded peaks)."""
    if update_baselines:
        baseline_gate.stage(record)
        return
    path = baseline_path(baseline_gate.directory, record.device_key)
    try:
        baseline = baseline_gate.file_for(record.device_key)
    except BaselineError as exc:
        pytest.fail(str(exc), pytrace=False)
    if baseline is None:
        pytest.skip(f"no baselines for device key {record.device_key!r} ({path} does not exist): create them "
                    f"with `{baseline_gate.accept_command(record).rsplit(' -k ', 1)[0]}` and commit the file")
    entry = baseline.entries.get(record.case_id)
    if entry is None:
        pytest.skip(f"{record.case_id} has no entry in {path}: add it with `{baseline_gate.accept_command(record)}`")
    problems = compare(record, entry, baseline.tolerances, fix=baseline_gate.accept_command(record))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
