"""The session object the plugin registers: it measures each case once, holds the records the
tests, the JSON and the gate read, and gates a record against this device's baselines."""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from ac_bench.cases import Case
from ac_bench.gate.baselines import BaselineError, BaselineGate, baseline_path, compare
from ac_bench.metrics import METRICS
from ac_bench.probes.device import release_cached_memory
from ac_bench.record import OK, Measurement, measure_variant


class MeasurementStore:
    """Session cache: each case is measured once; every test and the JSON read the record.

    Under pytest-xdist each worker measures its own cases and sends their records to the
    controller, which writes them to the JSON (``from_workers``).
    """

    def __init__(self) -> None:
        self._records: dict[str, Measurement] = {}
        #: Cases whose measurement raised: the first line of the error, by case id.
        self._errors: dict[str, str] = {}
        self.from_workers: dict[str, dict] = {}
        self.time_ratios: dict[str, dict[str, float]] = {}

    def get(self, case: Case) -> Measurement:
        """The case's record, measured on first use. A step that ran out of memory or whose
        loss is not finite fails every test that asks for it, by name, once per test; the
        record stays in the JSON and the other variants are measured as usual."""
        if case.id in self._errors:
            pytest.fail(f"{case.id}: its measurement failed earlier in this session ({self._errors[case.id]}); the "
                        f"first test that asked for it shows the traceback", pytrace=False)
        if case.id not in self._records:
            try:
                self._records[case.id] = measure_variant(case.flavor, case.variant, case.device)
            except Exception as exc:
                # Once per cause: later tests of the case fail in one line, without measuring
                # again. The traceback's frames (the variant's model and tensors, fake ones
                # with their mode) are cleared, so that nothing of it reaches the next variant.
                first = (str(exc).strip().splitlines() or [""])[0]
                self._errors[case.id] = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
                traceback.clear_frames(exc.__traceback__)
                release_cached_memory()
                raise
        record = self._records[case.id]
        if record.outcome != OK:
            pytest.fail(f"{case.id}: {record.outcome}: {record.outcome_note}; its figures cannot be checked "
                        f"or compared with the baselines (the other variants are measured as usual)", pytrace=False)
        return record

    def amend(self, case: Case, record: Measurement) -> None:
        """Keep ``record`` as ``case``'s: the record ``get`` gave, with a figure the step does not
        measure added by whoever chose the variant (a per-block plan's predicted peak,
        ``ac_bench.milp.BlockPlanner.plan``), so that the JSON carries it. A ValueError where
        ``record`` is not the case's measured record with only such a figure (a metric that
        ``estimates`` another) changed."""
        kept = self._records.get(case.id)
        predicted = {m.name: getattr(kept, m.name, None) for m in METRICS.values() if m.estimates}
        if kept is None or dataclasses.replace(record, **predicted) != kept:
            raise ValueError(f"{case.id}: amend takes the record measured for the case with only "
                             f"{', '.join(sorted(predicted))} changed")
        self._records[case.id] = record

    def add_sharded(self, record: Measurement) -> None:
        """A record measured elsewhere: one rank of a sharded run (``ac_bench.distributed``'s
        torchrun launch), in the JSON as ``{device}-{case_id}-rank{R}``."""
        self._records[f"{record.device_key}-{record.case_id}-rank{record.rank}"] = record

    def local_json(self) -> dict[str, dict]:
        """The records measured in this process, by case id."""
        return {k: r.as_dict() for k, r in self._records.items()}

    def as_json(self) -> list[dict]:
        """Every record of the session, this process's and the workers', sorted by case."""
        merged = {**self.from_workers, **self.local_json()}
        return [merged[k] for k in sorted(merged)]

    def note_time_ratio(self, key: str, time_ratio: float, flop_ratio: float) -> None:
        """Record time(policy)/time(none) beside the FLOP ratio, for the summary and the JSON
        (key ``{device}-{flavor}-{policy}-{attention}``)."""
        self.time_ratios[key] = {"time_ratio": time_ratio, "flop_ratio": flop_ratio}


def holds_flavor(keys, flavor: str) -> bool:
    """Whether any baseline key (``{flavor}-{variant}``, ``{flavor}-w{W}-{variant}``) is
    ``flavor``'s: it starts with ``flavor-`` and not with a longer registered flavor's name
    (``llama3-8b-4l-...`` is ``llama3-8b-4l``'s, not ``llama3-8b``'s). A flavor registered in
    another run only still counts as this one's, which errs on failing, not skipping."""
    from ac_bench.models import FLAVORS
    longer = [f"{name}-" for name in FLAVORS if name.startswith(f"{flavor}-")]
    return any(k.startswith(f"{flavor}-") and not k.startswith(tuple(longer)) for k in keys)


def gate_record(record: Measurement, gate: BaselineGate, update: bool,
                rule: Callable[..., list[str]] = compare) -> None:
    """``record`` staged (``update``: --update-baselines) or against its entry in this device's
    baselines file: skipped with the command that creates them where the file does not exist
    (a device without baselines yet) or holds no entry of the record's flavor (a family of your
    own); failed with the command that adds a missing entry where the file holds others of the
    flavor, or no entry at all (an entry lost to a merge or an edit must not pass green), or
    with one line per metric that moved. ``rule(record, entry, tolerances, fix)`` returns those lines:
    the registry's tolerances (``compare``), or a caller's own (the sharded peaks' bound)."""
    if update:
        gate.stage(record)
        return
    path: Path = baseline_path(gate.directory, record.device_key)
    try:
        baseline = gate.file_for(record.device_key)
    except BaselineError as exc:
        pytest.fail(str(exc), pytrace=False)
    if baseline is None:
        pytest.skip(f"no baselines for device key {record.device_key!r} ({path} does not exist): create them "
                    f"with `{gate.accept_command(record).rsplit(' -k ', 1)[0]}` and commit the file")
    entry = baseline.entries.get(record.case_id)
    if entry is None and baseline.entries and not holds_flavor(baseline.entries, record.flavor):
        pytest.skip(f"no baselines for flavor {record.flavor} in {path}: create them with "
                    f"`{gate.accept_command(record).rsplit(' -k ', 1)[0]}` and commit the file")
    if entry is None:  # a file that lost an entry (a bad merge, an edit) must not pass green
        pytest.fail(f"{record.case_id} has no entry in {path}, so nothing was compared: add it with "
                    f"`{gate.accept_command(record)}`, or restore the file if the entry was lost", pytrace=False)
    fix = gate.accept_command(record)
    problems = rule(record, entry, baseline.tolerances, fix=fix)
    if problems:
        pytest.fail(one_command(problems, fix), pytrace=False)


def one_command(problems: list[str], fix: str) -> str:
    """The gate's message: one line per figure that moved, and the command that accepts them
    printed once, after them, where several lines end with it (a changed policy moves five
    figures of a variant, and the same command was printed five times)."""
    if len(problems) < 2 or not all(line.endswith(f": {fix}") for line in problems):
        return "\n".join(problems)
    return "\n".join([*(line.removesuffix(f": {fix}") + " the command below" for line in problems),
                      f"    {fix}"])
