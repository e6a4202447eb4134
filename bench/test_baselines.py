"""The deterministic gate: memory figures and FLOPs against this device's committed baselines."""

from __future__ import annotations

import pytest

from bench.baselines import BaselineError, baseline_path, compare


def test_figures_match_baseline(case, measurements, baseline_gate, update_baselines):
    """Fails when a memory figure or the FLOPs move beyond tolerance, in either direction."""
    record = measurements.get(case)
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
