"""The deterministic gate: its messages, its file format, atomic writes, and that it catches
a policy that quietly stops checkpointing a sublayer."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import stat
import subprocess

import pytest

from ac_bench.gate.baselines import DEFAULT_TOLERANCES, BaselineError, BaselineFile, BaselineGate, baseline_path, compare
from ac_bench.models import get_flavor
from ac_bench.record import measure_variant
from tests.helpers import ROOT, run_pytest, run_pytest_cases

TINY = get_flavor("tiny")


@pytest.fixture(scope="module")
def record():
    return measure_variant(TINY, "full-eager", "cpu")


def _entry(record, **changes):
    gate = BaselineGate("unused")
    gate.stage(dataclasses.replace(record, **changes))
    return gate._staged[record.device_key][record.case_id]


@pytest.mark.parametrize("factor", [1.05, 0.95])
def test_change_beyond_tolerance_fails_in_either_direction(record, factor):
    old = int(record.saved_bytes * factor)
    messages = compare(record, _entry(record, saved_bytes=old, torch_version="2.99.0"), DEFAULT_TOLERANCES)
    assert len(messages) == 1
    message = messages[0]
    for part in ("tiny-full-eager", "saved_bytes", f"{old:,}", f"{record.saved_bytes:,}", "torch 2.99.0",
                 f"torch {record.torch_version}", "pytest bench/ --device cpu --flavor tiny --update-baselines -k tiny-full-eager"):
        assert part in message, (part, message)
    # Saving or loss (fewer bytes than the baseline is a saving), and who moved it: the baseline
    # was made with a newer torch than this run's, so this run is a torch change, not an upgrade.
    verdict = "a saving" if record.saved_bytes < old else "a loss"
    assert f"{verdict} with the torch change (2.99.0 -> {record.torch_version})" in message, message


def test_a_change_with_the_same_torch_says_saving_or_loss_without_a_version_change(record):
    (message,) = compare(record, _entry(record, flops=int(record.flops * 0.9)), DEFAULT_TOLERANCES)
    assert "(tolerance ±0.50%), a loss: baseline" in message, message
    (message,) = compare(record, _entry(record, flops=int(record.flops * 1.1), torch_version="2.1.0"), DEFAULT_TOLERANCES)
    assert f"a saving with the torch upgrade (2.1.0 -> {record.torch_version}):" in message, message


def test_change_within_tolerance_passes(record):
    assert compare(record, _entry(record, flops=int(record.flops * 1.004)), DEFAULT_TOLERANCES) == []
    assert compare(record, _entry(record), DEFAULT_TOLERANCES) == []


@pytest.mark.parametrize("metric,by", [("backward_ops", 1), ("backward_nonmatmul_bytes", 4)])
def test_one_op_or_one_float_more_in_backward_fails_the_committed_gate_at_any_count(record, metric, by):
    """``backward_ops`` and ``backward_nonmatmul_bytes`` are gated exactly, with the committed CPU
    file's own tolerances: at the largest committed counts (the Llama 3 models at scale, where
    0.01% let one op and up to 2 GiB of traffic pass) and at ``tiny``, one op more, or one more
    float read, fails."""
    tolerances = BaselineFile.load(ROOT / "baselines" / "cpu" / "figures.json").tolerances
    assert tolerances[metric] == DEFAULT_TOLERANCES[metric] == 0.0, (metric, tolerances[metric])
    largest = max((e for e in BaselineFile.load(ROOT / "baselines" / "cpu" / "figures.json").entries.values()
                   if isinstance(e.get(metric), int)), key=lambda e: e[metric])[metric]
    assert largest > 10_000, f"the largest committed {metric} is {largest:,}: the case the test is about is gone"
    for count in (largest, getattr(record, metric)):
        base = dataclasses.replace(record, **{metric: count})
        (message,) = compare(dataclasses.replace(base, **{metric: count + by}), _entry(base), tolerances)
        assert f"{metric} moved +" in message and "(tolerance ±0.00%), a loss" in message, message


def test_other_memory_method_is_not_compared(record):
    messages = compare(record, _entry(record, memory_method="cuda-allocator"), DEFAULT_TOLERANCES)
    assert len(messages) == 1 and "memory_method changed" in messages[0]


def test_file_is_sorted_one_entry_per_line_and_stable(tmp_path, record):
    gate = BaselineGate(tmp_path)
    for variant in ("none-eager", "full-eager"):
        gate.stage(dataclasses.replace(record, variant=variant))
    (path,) = gate.write_staged()
    text = path.read_text()
    lines = text.splitlines()
    entry_lines = [line for line in lines if line.startswith('"tiny-')]
    assert [line.split('"')[1] for line in entry_lines] == ["tiny-full-eager", "tiny-none-eager"]
    for line in entry_lines:
        entry = json.loads(line.split(": ", 1)[1].rstrip(","))
        assert list(entry) == sorted(entry)
    assert BaselineFile.load(path).dumps() == text
    json.loads(text)


def test_update_keeps_entries_that_did_not_run(tmp_path, record):
    gate = BaselineGate(tmp_path)
    gate.stage(dataclasses.replace(record, variant="none-eager"))
    gate.write_staged()
    gate = BaselineGate(tmp_path)
    gate.stage(dataclasses.replace(record, saved_bytes=1))
    gate.write_staged()
    entries = BaselineFile.load(baseline_path(tmp_path, "cpu")).entries
    assert set(entries) == {"tiny-none-eager", "tiny-full-eager"}
    assert entries["tiny-full-eager"]["saved_bytes"] == 1


def test_failed_write_leaves_the_old_file_intact(tmp_path, record, monkeypatch):
    gate = BaselineGate(tmp_path)
    gate.stage(record)
    (path,) = gate.write_staged()
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    gate.stage(dataclasses.replace(record, saved_bytes=1))
    with pytest.raises(OSError, match="disk full"):
        gate.write_staged()
    assert path.read_bytes() == before
    # No temporary file left (the lock's sidecar stays: removing it would race with a waiter).
    assert sorted(p.name for p in path.parent.iterdir()) == [".figures.json.lock", "figures.json"]


def test_corrupt_file_names_the_file_and_the_fix(tmp_path):
    path = baseline_path(tmp_path, "cpu")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(BaselineError, match="figures.json: not a readable baselines file.*--update-baselines"):
        BaselineFile.load(path)
    path.write_text("[]")
    with pytest.raises(BaselineError, match="expected a JSON object"):
        BaselineFile.load(path)


def test_gate_catches_a_strategy_that_stops_checkpointing_the_mlp(tmp_path):
    """End to end, as a user runs it: create baselines, break ``full``, rerun (three policies:
    the broken one, ``mlp`` whose sublayer it stops checkpointing, and ``none``)."""
    common = ["bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--baselines-dir", str(tmp_path), "-q",
              "-k", "none- or full- or mlp-"]
    created = run_pytest(*common, "--update-baselines")
    assert created.returncode == 0, created.stdout + created.stderr
    assert baseline_path(tmp_path, "cpu").exists()

    unchanged = run_pytest(*common)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    broken = run_pytest(*common, "-p", "tests.plugins.drop_mlp_checkpoint")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    out = broken.stdout
    assert "FAILED bench/test_baselines.py::test_figures_match_baseline[cpu-tiny-full-eager]" in out
    assert "tiny-full-eager: saved_bytes moved +" in out
    assert f"pytest bench/ --device cpu --flavor tiny --baselines-dir {tmp_path} --update-baselines -k tiny-full-eager" in out
    assert "torch " in out
    # Only the broken strategy's variants fail.
    failed = sorted(line.split("[")[1].rstrip("]").split(" ")[0].rstrip("]")
                    for line in out.splitlines() if line.startswith("FAILED"))
    assert failed == ["cpu-tiny-full-eager", "cpu-tiny-full-sdpa"], out


def test_missing_baselines_skip_with_instructions(tmp_path):
    result = run_pytest("bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--baselines-dir",
                        str(tmp_path), "-q", "-rs", "-k", "none-eager")
    assert result.returncode == 0, result.stdout
    assert "no baselines for device key 'cpu'" in result.stdout
    assert "--update-baselines" in result.stdout


def test_a_file_that_lost_an_entry_fails_it_and_one_emptied_fails_every_variant(tmp_path, record):
    """A device with no file yet skips (above), and so does a flavor the file has no entry of
    (a family of one's own: ``tests/test_model_spec.py``); a file that holds the flavor's other
    entries but not this variant's (a bad merge, an edit), or no entry at all, fails the
    variant with the command that adds it: it used to skip, and the run passed having compared
    nothing (a fresh user's check). In-process: ``gate_record`` against files written here."""
    from ac_bench.plugin.session import gate_record
    committed = json.loads((ROOT / "baselines" / "cpu" / "figures.json").read_text())
    path = tmp_path / "cpu" / "figures.json"
    path.parent.mkdir()

    def gate_with(entries: dict) -> BaselineGate:
        path.write_text(json.dumps(dict(committed, entries=entries)))
        return BaselineGate(tmp_path)

    assert record.case_id in committed["entries"], record.case_id
    lost = {k: v for k, v in committed["entries"].items() if k != record.case_id}
    for entries in (lost, {}):
        with pytest.raises(pytest.fail.Exception) as failed:
            gate_record(record, gate_with(entries), update=False)
        assert str(failed.value).startswith(f"{record.case_id} has no entry in {path}, so nothing was compared: add it "
                                            f"with `pytest bench/ --device cpu --flavor tiny "), str(failed.value)
    no_tiny = {k: v for k, v in committed["entries"].items() if not k.startswith("tiny-")}
    with pytest.raises(pytest.skip.Exception, match=f"^no baselines for flavor tiny in {re.escape(str(path))}: create"):
        gate_record(record, gate_with(no_tiny), update=False)
    gate_record(record, gate_with(committed["entries"]), update=False)  # and with its entry it passes


def test_a_flavor_whose_name_prefixes_anothers_does_not_own_its_entries(tmp_path, record, monkeypatch):
    """The entries of ``tiny-wide`` (a registered flavor whose name starts with ``tiny-``) are not
    ``tiny``'s: a file holding only them has no entry of ``tiny``, so ``tiny`` skips with the
    command that creates its entries, as for any flavor the file has none of. Counting by the
    prefix ``tiny-`` alone failed it as a lost entry (session 15's note)."""
    from ac_bench.models import FLAVORS
    from ac_bench.plugin.session import gate_record, holds_flavor
    committed = json.loads((ROOT / "baselines" / "cpu" / "figures.json").read_text())
    wide = {f"tiny-wide-{k[len('tiny-'):]}": v for k, v in committed["entries"].items() if k.startswith("tiny-")}
    path = tmp_path / "cpu" / "figures.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dict(committed, entries=wide)))
    assert holds_flavor(wide, "tiny"), "without tiny-wide registered, its entries count as tiny's (strict)"
    with pytest.raises(pytest.fail.Exception, match="has no entry in"):
        gate_record(record, BaselineGate(tmp_path), update=False)
    monkeypatch.setitem(FLAVORS, "tiny-wide", dataclasses.replace(FLAVORS["tiny"], name="tiny-wide"))
    assert not holds_flavor(wide, "tiny") and holds_flavor(wide, "tiny-wide")
    with pytest.raises(pytest.skip.Exception, match=f"^no baselines for flavor tiny in {re.escape(str(path))}: create"):
        gate_record(record, BaselineGate(tmp_path), update=False)


def test_every_registry_metric_is_gated(record):
    """The gate compares what ac_bench/metrics.py declares, not a list of its own (a record with
    a predicted peak, as a per-block plan's: moving the prediction or the peak it predicts also
    moves the one from the other)."""
    from ac_bench.metrics import METRICS
    assert set(DEFAULT_TOLERANCES) == set(METRICS)
    planned = dataclasses.replace(record, predicted_peak_bytes=record.peak_bytes)
    for metric in METRICS:
        moved = _entry(planned)
        moved[metric] = int(getattr(planned, metric) * 1.5) + 1_000_000
        messages = compare(planned, moved, DEFAULT_TOLERANCES)
        drift = metric in ("peak_bytes", "predicted_peak_bytes")
        assert len(messages) == 1 + drift and metric in messages[0], (metric, messages)
        assert not drift or "moved away from the prediction" in messages[1], (metric, messages)


def test_a_peak_that_moves_away_from_its_prediction_fails_naming_both(record):
    """``predicted_peak_bytes`` estimates ``peak_bytes``: a torch upgrade that moves the measured
    peak by less than its own tolerance (2%) but away from the plan's model fails, naming the
    predicted and the measured figure of the run and of the baseline; a model that moves with the
    peak fails on the prediction's own figure (0.01%), and an offset the baseline already had (the
    CUDA allocator's rounding, say) is no failure while it stays."""
    peak = record.peak_bytes
    planned = dataclasses.replace(record, predicted_peak_bytes=peak)
    baseline = _entry(planned, torch_version="2.13.0")
    upgraded = dataclasses.replace(planned, peak_bytes=peak + peak // 100, torch_version="2.99.0")
    (message,) = compare(upgraded, baseline, DEFAULT_TOLERANCES)
    for part in ("tiny-full-eager: the measured peak_bytes moved away from the prediction (predicted_peak_bytes) with "
                 "the torch upgrade (2.13.0 -> 2.99.0)", f"predicted {peak:,} B, measured {peak + peak // 100:,} B, "
                 f"{peak // 100:+,} B off", f"in the baseline predicted {peak:,}, measured {peak:,}, +0 off (torch 2.13.0)",
                 "tolerance ±0.01% of the prediction",
                 "pytest bench/ --device cpu --flavor tiny --update-baselines -k tiny-full-eager"):
        assert part in message, (part, message)
    both = dataclasses.replace(upgraded, predicted_peak_bytes=peak + peak // 100)
    (message,) = compare(both, baseline, DEFAULT_TOLERANCES)
    assert message.startswith("tiny-full-eager: predicted_peak_bytes moved +1.00% (tolerance ±0.01%)"), message
    offset = _entry(planned, peak_bytes=peak + peak // 200)
    assert compare(dataclasses.replace(planned, peak_bytes=peak + peak // 200), offset, DEFAULT_TOLERANCES) == []
    (message,) = compare(planned, offset, DEFAULT_TOLERANCES)
    assert f"+0 B off; in the baseline predicted {peak:,}, measured {peak + peak // 200:,}" in message, message


def test_a_record_without_a_prediction_is_gated_as_before(record):
    """Every policy but a planner's plan has no predicted peak: null against null passes, and an
    entry older than the metric (the H200's, written before it) fails with the command to measure
    it, as for every metric new to the registry."""
    assert record.predicted_peak_bytes is None
    assert compare(record, _entry(record), DEFAULT_TOLERANCES) == []
    old = {k: v for k, v in _entry(record).items() if k not in ("predicted_peak_bytes", "backward_nonmatmul_bytes")}
    messages = compare(record, old, DEFAULT_TOLERANCES)
    assert [m.split(" (it predates")[0] for m in messages] == [
        "tiny-full-eager: the baseline entry has no backward_nonmatmul_bytes",
        "tiny-full-eager: the baseline entry has no predicted_peak_bytes"], messages


def test_a_file_without_a_tolerance_for_a_metric_is_an_error_not_a_pass(record):
    tolerances = {k: v for k, v in DEFAULT_TOLERANCES.items() if k != "forward_kept_bytes"}
    moved = _entry(record, forward_kept_bytes=record.forward_kept_bytes * 2)
    messages = compare(record, moved, tolerances)
    assert len(messages) == 1
    assert "no tolerance for forward_kept_bytes" in messages[0] and "--update-baselines" in messages[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "123", True])
def test_a_baseline_value_that_is_not_a_finite_number_fails(record, bad):
    entry = _entry(record)
    entry["flops"] = bad
    messages = compare(record, entry, DEFAULT_TOLERANCES)
    assert len(messages) == 1 and "flops" in messages[0] and "not a finite number" in messages[0]


def test_null_against_a_figure_fails_and_null_against_null_passes(record):
    assert compare(record, _entry(record, saved_bytes=None), DEFAULT_TOLERANCES)[0].startswith(
        "tiny-full-eager: saved_bytes was None and is now")
    unmeasurable = dataclasses.replace(record, saved_bytes=None, saved_bytes_note="not measurable")
    assert compare(unmeasurable, _entry(unmeasurable), DEFAULT_TOLERANCES) == []


def test_several_moved_figures_print_the_accept_command_once(record):
    """A changed policy moves several figures of one variant: one line each, and the command that
    accepts them once, last, ready to paste (it was printed at the end of every line)."""
    from ac_bench.plugin.session import one_command
    fix = BaselineGate("unused").accept_command(record)
    entry = _entry(record, flops=record.flops * 2, saved_bytes=record.saved_bytes * 2)
    problems = compare(record, entry, DEFAULT_TOLERANCES, fix=fix)
    assert len(problems) == 2 and all(line.endswith(f"accept it with: {fix}") for line in problems), problems
    lines = one_command(problems, fix).splitlines()
    assert [line.split(":", 2)[1].split()[0] for line in lines[:2]] == ["flops", "saved_bytes"], lines
    assert all(line.endswith("accept it with the command below") for line in lines[:2]), lines
    assert lines[2] == f"    {fix}" and sum(fix in line for line in lines) == 1, lines
    assert one_command(problems[:1], fix) == problems[0], "one figure: its line, as before"


def test_update_adds_a_new_metrics_tolerance_and_keeps_existing_ones(tmp_path, record):
    path = baseline_path(tmp_path, record.device_key)
    old = {k: v for k, v in DEFAULT_TOLERANCES.items() if k != "offloaded_bytes"}
    old["flops"] = 0.001
    BaselineFile(path, old, {}).write()
    gate = BaselineGate(tmp_path)
    gate.stage(record)
    gate.write_staged()
    written = BaselineFile.load(path)
    assert written.tolerances["flops"] == 0.001
    assert written.tolerances["offloaded_bytes"] == DEFAULT_TOLERANCES["offloaded_bytes"]


def test_the_printed_accept_command_works_when_pasted(tmp_path):
    """A baseline figure moved by hand: the gate fails and prints a command; that command, run
    as printed, accepts the current figure, and the gate passes again."""
    common = ["bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--baselines-dir", str(tmp_path), "-q",
              "-k", "mlp-sdpa or none-sdpa"]
    assert run_pytest(*common, "--update-baselines").returncode == 0
    path = baseline_path(tmp_path, "cpu")
    data = json.loads(path.read_text())
    data["entries"]["tiny-mlp-sdpa"]["flops"] += 10 ** 6
    BaselineFile(path, data["tolerances"], data["entries"]).write()
    failed = run_pytest(*common)
    assert failed.returncode == 1, failed.stdout
    line = next(line for line in failed.stdout.splitlines() if "accept it with: " in line)
    command = line.split("accept it with: ", 1)[1].strip()
    assert command.startswith("pytest bench/ ") and "--baselines-dir" in command
    accepted = run_pytest(*shlex.split(command)[1:], "-q")  # run_pytest adds `python -m pytest`
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert run_pytest(*common).returncode == 0


def test_atomic_write_keeps_the_files_mode_and_leaves_no_temporary_file(tmp_path, record):
    path = baseline_path(tmp_path, "cpu")
    BaselineFile(path, dict(DEFAULT_TOLERANCES), {}).write()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # a new file: as any file made here
    path.chmod(0o640)
    gate = BaselineGate(tmp_path)
    gate.stage(record)
    gate.write_staged()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == [".figures.json.lock", "figures.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _corrupt(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tiny_baselines(tmp_path_factory):
    """A baselines folder for the tiny flavor, made by the suite itself (the two variants whose
    entries the cases corrupt)."""
    directory = tmp_path_factory.mktemp("baselines")
    made = run_pytest("bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--baselines-dir",
                      str(directory), "-q", "--update-baselines", "-k", "none-eager or full-sdpa")
    assert made.returncode == 0, made.stdout + made.stderr
    return baseline_path(directory, "cpu").read_text()


BROKEN = [
    (lambda d: d["tolerances"].update(flops=float("nan")), "tolerance of flops is nan, not a finite number from 0"),
    (lambda d: d["tolerances"].update(peak_bytes=-0.01), "tolerance of peak_bytes is -0.01, not a finite number from 0 (exact)"),
    (lambda d: d["tolerances"].update(saved_bytes="1%"), "tolerance of saved_bytes is '1%'"),
    (lambda d: d["tolerances"].update(latency=0.1), "tolerance for unknown metric 'latency'"),
    (lambda d: d["entries"].update({"tiny-none-eager": [1, 2]}), "entry 'tiny-none-eager' is list, not an object"),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(flops=float("inf")), "entry 'tiny-full-sdpa': flops is inf"),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(peak_bytes="12"), "peak_bytes is '12', not a non-negative"),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(resident_bytes=-1), "resident_bytes is -1"),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(flops=None), "flops is None"),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(memory_method=3), "memory_method is 3, not a string"),
    # Numbers no float holds, or no tolerance can mean (INTERNALERROR before: OverflowError).
    (lambda d: d["tolerances"].update(flops=10**400), "tolerance of flops is 1000000000000000000000000000000000000000..."),
    (lambda d: d["tolerances"].update(flops=1e300), "tolerance of flops is 1e+300, not a finite number from 0 (exact) to 1.0"),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(flops=10**400), "flops is 1000000000000000000000000000000000000000..."),
    (lambda d: d["entries"]["tiny-full-sdpa"].update(peak_bytes=2**63), "peak_bytes is 9223372036854775808, not a"),
    # The file's own format version: one from a newer suite is refused, not read as this one.
    (lambda d: d.update(schema_version=99), "baselines schema_version 99 was written by a newer ac-bench; this suite "
                                            "reads versions up to 1"),
    (lambda d: d.update(schema_version="1"), "schema_version is '1', not a positive integer"),
    (lambda d: d.update(schema_version=10**400), "schema_version 1000000000000000000000000000000000000000... (401 characters) was written by a newer"),
]
UPDATE = {"gate": [], "update": ["--update-baselines"]}


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory, tiny_baselines):
    """Every broken file under the gate and under --update-baselines: ``pytest bench/`` on each,
    all in one process (``run_pytest_cases``; each run ends in the usage error before anything
    is collected). By (mode, case): the result, the file, and its bytes before the run."""
    runs, cases = {}, []
    for mode, extra in UPDATE.items():
        for index, (change, _) in enumerate(BROKEN):
            directory = tmp_path_factory.mktemp(f"broken-{mode}-{index}")
            path = baseline_path(directory, "cpu")
            path.parent.mkdir(parents=True)
            path.write_text(tiny_baselines)
            _corrupt(path, change)
            runs[(mode, index)] = (path, path.read_bytes())
            cases.append(["bench/", "--device", "cpu", "--flavor", "tiny", "--baselines-dir", str(directory), "-q",
                          *extra])
    return {key: (result, *runs[key]) for key, result in zip(runs, run_pytest_cases(cases))}


@pytest.mark.parametrize(("index", "message"), [(i, m) for i, (_, m) in enumerate(BROKEN)],
                         ids=[m for _, m in BROKEN])
@pytest.mark.parametrize("mode", list(UPDATE))
def test_a_broken_baselines_file_fails_the_run_once_and_is_never_rewritten(broken_runs, mode, index, message):
    result, path, before = broken_runs[(mode, index)]
    output = result["stdout"] + result["stderr"]
    assert result["code"] == 4, f"{mode}, {message}: exit {result['code']}, not a usage error:\n{output[-3000:]}"
    stderr = result["stderr"]
    # A temporary folder is in no git repository: restored from one's copy, not by git checkout.
    assert message in stderr and str(path) in stderr and "is in no git repository" in stderr, f"{mode}: {stderr}"
    assert stderr.count(str(path)) <= 2 and "Traceback" not in stderr, f"{mode}: more than one message: {stderr}"
    assert "collected" not in result["stdout"], f"{mode}, {message}: tests were collected: {result['stdout'][-2000:]}"
    assert path.read_bytes() == before, f"{mode}, {message}: {path} was rewritten"


def test_a_missing_tolerance_fails_the_gate_and_update_adds_it_saying_so(tmp_path, tiny_baselines):
    path = baseline_path(tmp_path, "cpu")
    path.parent.mkdir(parents=True)
    path.write_text(tiny_baselines)
    _corrupt(path, lambda d: d["tolerances"].pop("forward_kept_bytes"))
    common = ["bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--baselines-dir", str(tmp_path), "-q",
              "-k", "none-eager or full-sdpa"]
    gate = run_pytest(*common)
    assert gate.returncode == 4 and "no tolerance for forward_kept_bytes" in gate.stderr, gate.stderr
    update = run_pytest(*common, "--update-baselines")
    assert update.returncode == 0, update.stdout + update.stderr
    assert f"baselines repaired: {path}: added the default tolerance 0.01 for forward_kept_bytes" in update.stdout
    assert run_pytest(*common).returncode == 0


def test_the_record_states_the_optimizer_it_used(monkeypatch):
    """The optimizer in the record is read from the optimizer object: switching the suite to
    AdamW(foreach=False) shows in the record, it is not a constant."""
    import torch

    from ac_bench import record as record_module
    assert "foreach=True" in measure_variant(TINY, "none-sdpa", "cpu").optimizer
    monkeypatch.setattr(record_module, "make_optimizer",
                        lambda model: torch.optim.AdamW(model.parameters(), foreach=False))
    changed = measure_variant(TINY, "none-sdpa", "cpu")
    assert changed.optimizer.startswith("AdamW(") and "foreach=False" in changed.optimizer


# 25 s, four pytest runs; the printed command pasted is also checked above, the --model-spec gate in
# tests/test_model_spec.py: deep, for make test's 20 minutes.
@pytest.mark.deep
def test_the_accept_command_for_a_users_family_works_when_pasted_from_anywhere(tmp_path):
    """A ``--model-spec`` family's printed command repeats ``--model-spec`` (else its flavor is
    unknown) and, run from another folder, names the benchmark by its absolute path and the
    baselines folder as given: pasted as printed in that folder, it writes the entry, and the
    gate then passes."""
    def run(*args):  # from the user's folder, examples/ importable there
        return run_pytest(*args, cwd=tmp_path, pythonpath=ROOT)

    common = (str(ROOT / "bench" / "test_baselines.py"), "--model-spec", "examples.my_family:SPEC",
              "--baselines-dir", "baselines", "-rs")
    assert run(*common, "--update-baselines", "-k", "my-gpt-tiny-none-eager").returncode == 0
    first = run(*common, "-k", "my-gpt-tiny-none-sdpa")  # the file exists, the entry does not: a failure
    assert first.returncode == 1 and "1 failed" in first.stdout, first.stdout + first.stderr
    assert "has no entry in " in first.stdout and ", so nothing was compared: add it with `" in first.stdout, first.stdout
    command = re.search(r"add it with `(pytest [^`]+)`", first.stdout).group(1)
    assert command == (f"pytest {ROOT / 'bench'} --device cpu --flavor my-gpt-tiny --model-spec examples.my_family:SPEC "
                       f"--baselines-dir baselines --update-baselines -k my-gpt-tiny-none-sdpa"), command
    pasted = run(*shlex.split(command)[1:], "-q")  # run_pytest adds `python -m pytest`
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    again = run(*common, "-k", "my-gpt-tiny-none-sdpa")
    assert again.returncode == 0 and "1 passed" in again.stdout, again.stdout


# --- the file's own schema version, and writers at the same time -----------------------------------

def test_the_file_states_its_schema_version_and_one_without_is_read_as_current(tmp_path, record):
    """Every write states ``schema_version``; a file written before the field (the committed
    ones were) reads as the current version and is rewritten with it; a newer one is refused."""
    from ac_bench.gate.baselines import BASELINES_SCHEMA_VERSION
    gate = BaselineGate(tmp_path)
    gate.stage(record)
    (path,) = gate.write_staged()
    assert path.read_text().splitlines()[1] == f'"schema_version": {BASELINES_SCHEMA_VERSION},'
    data = json.loads(path.read_text())
    assert data["schema_version"] == BASELINES_SCHEMA_VERSION
    del data["schema_version"]
    path.write_text(json.dumps(data))
    assert BaselineFile.load(path).entries == data["entries"]
    gate = BaselineGate(tmp_path)
    gate.stage(dataclasses.replace(record, variant="none-eager"))
    gate.write_staged()
    assert json.loads(path.read_text())["schema_version"] == BASELINES_SCHEMA_VERSION
    data["schema_version"] = BASELINES_SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=f"this suite reads versions up to {BASELINES_SCHEMA_VERSION}"):
        BaselineFile.load(path)


@pytest.mark.parametrize("path", sorted((ROOT / "baselines").glob("*/figures.json")),
                         ids=lambda p: p.parent.name)
def test_committed_baselines_state_their_schema_version(path):
    from ac_bench.gate.baselines import BASELINES_SCHEMA_VERSION
    assert json.loads(path.read_text()).get("schema_version") == BASELINES_SCHEMA_VERSION, (
        f"{path} states no schema_version {BASELINES_SCHEMA_VERSION}; rewrite it through BaselineFile.write")
    assert BaselineFile.load(path).dumps() == path.read_text(), f"{path} is not as BaselineFile writes it"


_WRITER = r"""
import dataclasses, json, sys, time
from pathlib import Path
from ac_bench.gate.baselines import BaselineGate
from ac_bench.record import Measurement
folder, writer, writes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
record = Measurement.from_dict(json.loads((folder / "record.json").read_text()))
(folder / f"ready-{writer}").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
for i in range(writes):
    gate = BaselineGate(folder / "baselines")
    gate.file_for(record.device_key)  # read first, as a run reads its file at start
    gate.stage(dataclasses.replace(record, variant=f"every_{2 + 1000 * writer + i}-eager"))
    gate.write_staged()
"""


def test_writers_at_the_same_time_never_lose_an_entry(tmp_path, record):
    """Three processes, started together, each writing 30 entries of its own one at a time through
    ``BaselineGate.write_staged`` into one file: every entry of every writer is there at the end
    (without the lock and the merge with the file on disk, a writer's read-modify-write drops
    what another wrote in between)."""
    import sys
    import time
    writers, writes = 3, 30
    (tmp_path / "record.json").write_text(json.dumps(record.as_dict()))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(w), str(writes)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for w in range(writers)]
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("ready-*"))) < writers and time.monotonic() < deadline \
            and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    (tmp_path / "go").touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    entries = BaselineFile.load(baseline_path(tmp_path / "baselines", record.device_key)).entries
    expected = {f"tiny-every_{2 + 1000 * w + i}-eager" for w in range(writers) for i in range(writes)}
    assert not expected - set(entries), f"{len(expected - set(entries))} of {len(expected)} entries lost"


def test_two_updates_of_one_file_at_once_keep_both_runs_entries(tmp_path, monkeypatch):
    """Two ``pytest bench/ --update-baselines`` runs with different ``-k`` on one baselines
    folder, each holding (tests/plugins/hold_after_reading.py) until both have read the file at
    start: both exit 0 and the file holds both runs' entries (before the fix the second write
    was the copy it read at start plus its own, and the first run's entries were lost)."""
    from concurrent.futures import ThreadPoolExecutor
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv("AC_BENCH_HOLD_DIR", str(hold))
    monkeypatch.setenv("AC_BENCH_HOLD_RUNS", "2")
    common = ["bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--baselines-dir",
              str(tmp_path / "baselines"), "-q", "--update-baselines", "-p", "tests.plugins.hold_after_reading"]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda k: run_pytest(*common, "-k", k), ["none-eager", "full-sdpa"]))
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    entries = BaselineFile.load(baseline_path(tmp_path / "baselines", "cpu")).entries
    assert sorted(entries) == ["tiny-full-sdpa", "tiny-none-eager"], sorted(entries)


def test_an_update_never_overwrites_a_file_that_became_unreadable_meanwhile(tmp_path, record):
    """The file is read again at write time: if another run (or a newer suite) left it in a form
    this suite refuses since this run started, the update stops with one line and the file stays
    byte for byte, instead of being overwritten from the copy read at start."""
    gate = BaselineGate(tmp_path)
    gate.stage(record)
    (path,) = gate.write_staged()
    gate = BaselineGate(tmp_path)
    gate.file_for(record.device_key)  # read at start
    gate.stage(dataclasses.replace(record, variant="none-eager"))
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    with pytest.raises(BaselineError, match="baselines schema_version 99 was written by a newer ac-bench"):
        gate.write_staged()
    assert path.read_bytes() == before


def test_the_restore_advice_names_git_only_for_a_file_git_tracks(tmp_path):
    """The committed files: ``git checkout -- PATH``; a ``--baselines-dir`` outside any
    repository, or a file git does not track in a work tree (a stored run the user saved): one's
    own copy (every broken-file message said ``git checkout`` there too)."""
    from ac_bench.gate.baselines import restore_advice
    committed = ROOT / "baselines" / "cpu" / "figures.json"
    if (ROOT / ".git").exists():  # a clone (an exported tree has no repository to restore from)
        assert restore_advice(committed) == f"restore the file with `git checkout -- {committed}`"
    else:
        assert restore_advice(committed).endswith("is in no git repository)"), restore_advice(committed)
    outside = tmp_path / "cpu" / "figures.json"
    assert restore_advice(outside, "it") == f"restore it from your copy ({outside} is in no git repository)"
    import shutil
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the tracked-file advice cannot be checked")
    repo = tmp_path / "repo"
    (repo / ".benchmarks").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    tracked, saved = repo / "figures.json", repo / ".benchmarks" / "0001_mine.json"
    tracked.write_text("{}")
    saved.write_text("{}")
    subprocess.run(["git", "add", "figures.json"], cwd=repo, check=True)
    assert restore_advice(tracked) == f"restore the file with `git checkout -- {tracked}`"
    assert restore_advice(saved, "it") == f"restore it from your copy ({saved} is not tracked by git)", (
        "a run the user saved is in no commit: git checkout would only fail")


def test_an_update_that_stages_nothing_says_so(tmp_path):
    """``--update-baselines -k tiny-sac-sdpa`` without ``--flavor tiny`` selects no gated test
    (tiny is not a default flavor): it passed and wrote nothing, silently, and the user took the
    change as accepted (a fresh user's check, 2026-12-01). Now the run says it wrote nothing, and why."""
    result = run_pytest("bench/", "--device", "cpu", "--update-baselines", "-k", "tiny-sac-sdpa", "-q",
                        "--baselines-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("warning: --update-baselines wrote nothing: no gated test ran in this selection (flavors small, seed, "
            "llama3-8b-4l; a -k naming another flavor's variant needs --flavor NAME too)") in result.stdout, result.stdout
    assert not list(tmp_path.rglob("figures.json"))
