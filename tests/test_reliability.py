"""Reliability of the suite itself (issue 13): the nightly job's first night, what the gate
checks cannot be weakened silently, failed steps (out of memory, a non-finite loss) recorded by
name, and deterministic figures."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from ac_bench.gate.baselines import DEFAULT_TOLERANCES, BaselineFile, BaselineGate, compare
from ac_bench.metrics import METRICS, declared_tolerances
from ac_bench.models import get_flavor
from ac_bench.record import measure_variant
from tests.helpers import ROOT, run_pytest, tox_gpu_phases

TINY = get_flavor("tiny")
WORKFLOW = ROOT / ".github" / "workflows" / "nightly-gpu.yml"
COMMITTED = sorted((ROOT / "baselines").glob("*/figures.json"))


# --- the nightly workflow's first night ------------------------------------------------------


def nightly_command(history: Path, bench_json: Path) -> list[str]:
    """The pytest command the nightly workflow runs, read from the workflow and tox.ini (so it
    cannot drift from them), with the CPU and the tiny flavor in place of CUDA and seed."""
    from ruamel.yaml import YAML  # check-jsonschema's YAML parser (requirements-cpu.txt)

    workflow = YAML(typ="safe").load(WORKFLOW.read_text())
    env = workflow["env"]
    threshold = re.search(r"\|\|\s*'([^']+)'", env["TIMING_THRESHOLD"]).group(1)  # the scheduled run's default
    (run,) = [s["run"] for s in workflow["jobs"]["gpu-benchmarks"]["steps"] if "tox -e gpu" in s.get("run", "")]
    tox_line = next(line for line in run.replace("\\\n", " ").splitlines() if "tox -e gpu" in line)
    posargs = shlex.split(tox_line.split(" -- ", 1)[1].replace("${HISTORY}", str(history))
                          .replace("${TIMING_THRESHOLD}", threshold))
    (timing,) = [words for words in tox_gpu_phases() if "--benchmark-json" in words]  # the second phase
    args = []
    for word in timing:
        if word == "{posargs}":
            args += posargs
        elif word.startswith("{env:BENCH_JSON"):
            args.append(str(bench_json))
        else:
            args.append(word)
    return args


def _scale_stored_medians(history: Path, factor: float) -> None:
    """Make the latest stored night look ``factor`` times as slow, so that the next night's
    comparison has a known outcome whatever this machine's noise."""
    latest = sorted(history.glob("cpu*/*/[0-9][0-9][0-9][0-9]_*.json"))[-1]
    data = json.loads(latest.read_text())
    for bench in data["benchmarks"]:
        bench["stats"] = {k: v * factor if isinstance(v, float) else v for k, v in bench["stats"].items()}
    latest.write_text(json.dumps(data))


@pytest.mark.timing
def test_nightly_workflow_first_night_passes_and_the_next_ones_gate(tmp_path):
    """Night 1, empty history: green, the comparison skipped with a message, the run saved.
    Night 2 compares against night 1 and passes; night 3, slower than night 2 beyond the
    threshold, fails. The history is kept only after a passing night, as the workflow's cache."""
    cache, workspace = tmp_path / "cache", tmp_path / "workspace"
    cache.mkdir()
    args = nightly_command(workspace / ".bench-history", workspace / "bench-gpu.json")
    assert "--benchmark-compare" in args and "--benchmark-autosave" in args and "--allow-empty-history" in args
    assert args[args.index("--benchmark-compare-fail") + 1] == "median:10%"
    cheap = ["-k", "training_step and none-sdpa", "--baselines-dir", str(tmp_path / "baselines"), "-q"]

    def night(before=None):
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.copytree(cache, workspace / ".bench-history")  # actions/cache/restore
        if before:
            before(workspace / ".bench-history")
        result = run_pytest(*args, *cheap)
        if result.returncode == 0:  # actions/cache/save, if: success()
            shutil.rmtree(cache)
            shutil.copytree(workspace / ".bench-history", cache)
        return result

    first = night()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "benchmark history: no earlier run in" in first.stdout and "were not compared" in first.stdout
    assert len(list(cache.glob("cpu*/*/0001_*.json"))) == 1

    second = night(lambda h: _scale_stored_medians(h, 10.0))  # night 1 ten times as slow: no regression
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0001_" in second.stdout + second.stderr and "were not compared" not in second.stdout
    assert len(list(cache.glob("cpu*/*/0002_*.json"))) == 1

    third = night(lambda h: _scale_stored_medians(h, 0.1))  # night 2 ten times as fast: a regression
    assert third.returncode == 1, third.stdout + third.stderr
    assert "Performance has regressed" in third.stdout + third.stderr and "Traceback" not in third.stdout + third.stderr
    assert "slower than --benchmark-compare-fail allows" in third.stdout.rstrip().splitlines()[-1], third.stdout
    assert not list(cache.glob("cpu*/*/0003_*.json"))  # a failing night is not the next reference


def test_without_the_option_an_empty_history_still_fails():
    """--allow-empty-history is what makes the first night pass: pytest-benchmark's own
    behaviour is unchanged without it (a mistyped storage path still fails)."""
    from ac_bench.plugin import benchmark

    class Session:
        compared_mapping, compare, compare_fail, save, autosave, storage = {}, True, ["median:10%"], None, True, "x"

    class Config:
        _benchmarksession = Session()
        stash = pytest.Stash()

        def getoption(self, name):
            return {"--allow-empty-history": False, "--device": "cpu"}.get(name)

    assert benchmark.drop_compare_fail_without_history(Config()) is None
    assert Session.compare_fail == ["median:10%"]


def test_an_empty_history_under_compare_fail_is_refused_before_anything_runs(tmp_path):
    """--benchmark-compare-fail against a storage with no earlier run, without
    --allow-empty-history: one usage error naming the flag, before any benchmark runs
    (pytest-benchmark ran them all, then ended in "requires valid --benchmark-compare" and a
    traceback)."""
    result = run_pytest("bench/test_speed.py", "--flavor", "tiny", "--device", "cpu", "-k", "training_step and none-sdpa",
                        "--benchmark-storage", f"file://{tmp_path}", "--benchmark-compare",
                        "--benchmark-compare-fail=median:10%")
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "--allow-empty-history" in errors[0] and "no earlier run in" in errors[0], out
    assert "passed" not in out and "Traceback" not in out, out


# --- what the gate checks cannot be weakened silently ----------------------------------------


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_tolerances_are_no_looser_than_declared(path):
    """Every committed baselines file has a tolerance for every metric of ac_bench/metrics.py, none
    looser than the metric declares: loosening a committed tolerance to hide a change fails here."""
    assert looser_tolerances(BaselineFile.load(path)) == []


def looser_tolerances(baselines: BaselineFile) -> list[str]:
    """A missing tolerance, and ``BaselineFile.looser_tolerances`` (the plugin warns with those
    lines in a run)."""
    missing = [f"{baselines.path}: no tolerance for {m}" for m in baselines.missing_tolerances()]
    return missing + baselines.looser_tolerances()


def test_a_run_against_a_file_with_a_loosened_tolerance_warns_naming_it(tmp_path):
    """Outside the committed files (``--baselines-dir``, a user's own project) a tolerance looser
    than declared is not refused, but the run says so: it passed silently (a fresh user's
    check: forward_kept_bytes doubled passed at a tolerance edited to 0.6)."""
    (tmp_path / "cpu").mkdir()
    data = json.loads((ROOT / "baselines" / "cpu" / "figures.json").read_text())
    data["tolerances"]["forward_kept_bytes"] = 0.6
    (tmp_path / "cpu" / "figures.json").write_text(json.dumps(data))
    result = run_pytest("bench/test_baselines.py", "--flavor", "tiny", "--device", "cpu", "-q", "--baselines-dir",
                        str(tmp_path), "-k", "test_figures_match_baseline and tiny-full-sdpa")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {tmp_path / 'cpu' / 'figures.json'}: tolerance of forward_kept_bytes is 0.6, looser "
                        f"than the declared 0.01: the gate lets a move of that size pass (the registry's tolerances: "
                        f"ac_bench/metrics.py)"], result.stdout


def test_loosened_tolerances_are_caught(tmp_path):
    loose = BaselineFile(tmp_path / "figures.json", {m: 0.5 for m in METRICS}, {})
    assert len(looser_tolerances(loose)) == len(METRICS)
    # The allocator's own tolerance is no licence for CPU figures: 3% on resident_bytes is
    # declared for cuda-allocator entries only.
    cuda = declared_tolerances("cuda-allocator")
    assert cuda["resident_bytes"] == 0.03 and declared_tolerances("memtracker")["resident_bytes"] == 0.01
    cpu_entry = {"e": {"memory_method": "memtracker"}}
    assert looser_tolerances(BaselineFile(tmp_path / "figures.json", cuda, cpu_entry)) == [
        f"{tmp_path / 'figures.json'}: tolerance of {m} is {cuda[m]}, looser than the declared {METRICS[m].tolerance}"
        for m in ("optimizer_step_peak_bytes", "predicted_peak_bytes", "resident_bytes")]
    assert looser_tolerances(BaselineFile(tmp_path / "figures.json", cuda, {"e": {"memory_method": "cuda-allocator"}})) == []


def test_adamw_without_foreach_moves_a_gated_figure(monkeypatch):
    """Planted: the optimizer switched to AdamW(foreach=False). The optimizer step's own peak
    (a registry metric, so gated) moves beyond its tolerance, and the record says foreach=False."""
    import torch

    from ac_bench import record as record_module
    before = measure_variant(TINY, "full-sdpa", "cpu")
    monkeypatch.setattr(record_module, "make_optimizer",
                        lambda model: torch.optim.AdamW(model.parameters(), foreach=False))
    after = measure_variant(TINY, "full-sdpa", "cpu")
    gate = BaselineGate("unused")
    gate.stage(before)
    messages = compare(after, gate._staged["cpu"][before.case_id], DEFAULT_TOLERANCES)
    assert any(m.startswith("tiny-full-sdpa: optimizer_step_peak_bytes moved -") for m in messages), messages
    assert "foreach=False" in after.optimizer


def test_an_entry_older_than_a_metric_fails_with_the_update_command():
    """A device whose committed entries predate a metric (baselines/nvidia-h200 and
    optimizer_step_peak_bytes) fails the gate per variant, saying to measure it on that device."""
    record = measure_variant(TINY, "none-eager", "cpu")
    gate = BaselineGate("unused")
    gate.stage(record)
    entry = dict(gate._staged["cpu"][record.case_id])
    del entry["optimizer_step_peak_bytes"]
    (message,) = compare(record, entry, DEFAULT_TOLERANCES)
    assert "tiny-none-eager: the baseline entry has no optimizer_step_peak_bytes" in message
    assert "--update-baselines -k tiny-none-eager" in message
    h200 = BaselineFile.load(ROOT / "baselines" / "nvidia-h200" / "figures.json")
    missing = {k for k, e in h200.entries.items() if "optimizer_step_peak_bytes" not in e}
    assert missing == set(h200.entries) or not missing  # until a GPU run measures it, every entry fails


def test_every_assert_in_the_suite_names_what_failed():
    """Every assert in bench/test_*.py carries a message (each names the variant or the flavor):
    a bare assert shows only two numbers or a parameter name."""
    import ast

    bare = [f"{p.name}:{n.lineno}" for p in sorted((ROOT / "bench").glob("test_*.py"))
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Assert) and n.msg is None]
    assert bare == []


# --- a failed step: out of memory, a loss that is not finite --------------------------------


@pytest.fixture
def failing_steps(monkeypatch):
    """tests/plugins/failing_steps.py, in this process."""
    import importlib
    import sys

    from ac_bench import record as record_module
    monkeypatch.setattr(record_module, "build_training", record_module.build_training)  # undone after the test
    monkeypatch.delitem(sys.modules, "tests.plugins.failing_steps", raising=False)
    importlib.import_module("tests.plugins.failing_steps")  # wraps the original build_training, once
    return monkeypatch


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_loss_fails_the_variant_by_name(failing_steps, value):
    from ac_bench.cases import Case
    from ac_bench.plugin.session import MeasurementStore

    failing_steps.setenv("AC_BENCH_BAD_LOSS_VARIANT", "attn-sdpa")
    failing_steps.setenv("AC_BENCH_BAD_LOSS", value)
    record = measure_variant(TINY, "attn-sdpa", "cpu")
    assert (record.outcome, record.outcome_note) == (
        "non-finite-loss", f"the loss is {float(value)} in the measured step: the variant does not train")
    store = MeasurementStore()
    with pytest.raises(pytest.fail.Exception, match=f"^cpu-tiny-attn-sdpa: non-finite-loss: the loss is {value}"):
        store.get(Case("cpu", TINY, "attn-sdpa"))
    if value == "nan":  # the other variants are measured as usual (once is enough)
        assert store.get(Case("cpu", TINY, "attn-eager")).outcome == "ok"


def test_the_gradient_check_names_a_non_finite_loss():
    import torch

    from ac_bench.gradients import StepResult, mismatches
    good = StepResult(torch.tensor(1.0), torch.ones(2), {})
    bad = StepResult(torch.tensor(float("nan")), torch.ones(2), {})
    assert mismatches(bad, bad) == ["loss: the reference model's loss is nan and the checkpointed model's loss is nan, "
                                    "not finite"]
    assert mismatches(good, bad) == ["loss: the checkpointed model's loss is nan, not finite"]


def test_an_out_of_memory_step_is_a_record_and_the_run_goes_on(tmp_path):
    """On a device that runs out of memory in one variant's measured step (injected on the
    CPU): that variant's record says out-of-memory with null figures, its tests fail by name
    (the gate too: no silent pass, and no entry staged), the other variants are measured and
    pass, the JSON carries every record, and the report shows the variant as out-of-memory."""
    import os

    from ac_bench.cli.report import main as report_main
    from ac_bench.record import Measurement
    variants = ["none-eager", "full-sdpa", "mlp-eager"]
    gate = BaselineGate(tmp_path / "baselines")
    for variant in variants:
        gate.stage(measure_variant(TINY, variant, "cpu"))
    gate.write_staged()
    out = tmp_path / "run.json"
    os.environ["AC_BENCH_OOM_VARIANT"], os.environ["AC_BENCH_BAD_LOSS_VARIANT"] = "full-sdpa", "mlp-eager"
    try:
        result = run_pytest("bench/test_baselines.py", "bench/test_memory.py::test_memory_record", "--device", "cpu",
                            "--flavor", "tiny", "--baselines-dir", str(tmp_path / "baselines"), "-q",
                            "--benchmark-json", str(out), "-p", "tests.plugins.failing_steps",
                            "-k", " or ".join(variants))
    finally:
        del os.environ["AC_BENCH_OOM_VARIANT"], os.environ["AC_BENCH_BAD_LOSS_VARIANT"]
    assert result.returncode == 1, result.stdout + result.stderr
    failed = sorted(line.split(" - ")[0].split("[")[1].rstrip("]") for line in result.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["cpu-tiny-full-sdpa"] * 2 + ["cpu-tiny-mlp-eager"] * 2, result.stdout
    assert "2 passed" in result.stdout  # none-eager: gate and record
    assert ("cpu-tiny-full-sdpa: out-of-memory: CUDA out of memory. Tried to allocate 2.00 GiB (injected by the "
            "self-test); its figures cannot be checked or compared with the baselines") in result.stdout
    assert "cpu-tiny-mlp-eager: non-finite-loss: the loss is nan in the measured step" in result.stdout
    records = {r["variant"]: Measurement.from_dict(r) for r in json.loads(out.read_text())["measurements"]}
    assert sorted(records) == sorted(variants)
    oom = records["full-sdpa"]
    assert oom.outcome == "out-of-memory" and all(getattr(oom, m) is None for m in METRICS)
    assert records["none-eager"].outcome == "ok" and records["none-eager"].peak_bytes > 0
    report = tmp_path / "report.md"
    assert report_main(["table", str(out), "--markdown", str(report)]) == 0
    row = next(line for line in report.read_text().splitlines() if line.startswith("| full-sdpa "))
    assert "out-of-memory" in row and "| - |" in row
    assert "out-of-memory (CUDA out of memory." in report.read_text()  # the note under the table


# --- updates are never lost -------------------------------------------------------------------

KILLED_WRITE = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job's SIGINT starts ignored
from pathlib import Path
from ac_bench.gate.baselines import BaselineFile
baselines = BaselineFile.load(Path(sys.argv[1]))
baselines.entries = {k: {**e, "flops": e["flops"] + 1} for k, e in baselines.entries.items()}
def replace(src, dst):  # the temporary file is written; the rename is next
    print("written", flush=True)
    time.sleep(60)
os.replace = replace
baselines.write()
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_killed_update_leaves_the_old_file_byte_for_byte(tmp_path, signame):
    """A process killed between writing the temporary file and the rename: the baselines file
    is byte for byte the old one; SIGTERM and Ctrl-C remove the temporary file at once, after a
    SIGKILL the next write removes it (and git ignores it meanwhile)."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "cpu" / "figures.json"
    path.parent.mkdir()
    shutil.copy(ROOT / "baselines" / "cpu" / "figures.json", path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "written\n", proc.stderr.read()
        assert len(list(path.parent.glob(".figures.json.*.tmp"))) == 1
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr.read() or signame == "SIGINT"
    assert path.read_bytes() == before
    left = sorted(p.name for p in path.parent.iterdir())
    if signame == "SIGKILL":
        assert len(left) == 2
        BaselineFile.load(path).write()
        left = sorted(p.name for p in path.parent.iterdir())
    assert left == ["figures.json"]


def test_update_with_an_unwritable_json_path_fails_before_measuring(tmp_path):
    """--update-baselines with a --benchmark-json in a missing folder: a usage error at once,
    nothing measured, the baselines untouched (it used to measure, write nothing and lose the update)."""
    path = tmp_path / "cpu" / "figures.json"
    path.parent.mkdir()
    shutil.copy(ROOT / "baselines" / "cpu" / "figures.json", path)
    before = path.read_bytes()
    result = run_pytest("bench/test_baselines.py", "--device", "cpu", "--flavor", "tiny", "--update-baselines",
                        "--baselines-dir", str(tmp_path), "--benchmark-json", str(tmp_path / "missing" / "out.json"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"--benchmark-json {tmp_path / 'missing' / 'out.json'}: cannot write: the folder" in result.stderr
    assert "Traceback" not in result.stderr and "passed" not in result.stdout
    assert path.read_bytes() == before


# --- determinism ------------------------------------------------------------------------------


#: One variant of each policy kind and both attentions (all twenty would double the test's time).
DETERMINISM_VARIANTS = ("none-eager", "full-sdpa", "sequential-eager", "sac-eager", "core_attn-sdpa", "offload-sdpa")


def test_two_runs_give_identical_deterministic_figures(tmp_path):
    """Two runs of the tiny flavor, each in its own process, a variant of each policy kind with
    both attentions: every metric of the registry, the FLOPs by op and the memory breakdown are
    identical, field by field."""
    runs = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.json"
        result = run_pytest("bench/test_memory.py::test_memory_record", "--device", "cpu", "--flavor", "tiny", "-q",
                            "--benchmark-skip", "--benchmark-json", str(out), "--baselines-dir", str(tmp_path),
                            "-k", " or ".join(DETERMINISM_VARIANTS))
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append({r["variant"]: r for r in json.loads(out.read_text())["measurements"]})
    first, second = runs
    assert sorted(first) == sorted(second) == sorted(DETERMINISM_VARIANTS)
    fields = [*METRICS, "flops_by_op", "breakdown", "memory_method", "optimizer", "outcome"]
    differ = [f"{v} {f}: {first[v][f]!r} != {second[v][f]!r}" for v in first for f in fields
              if first[v][f] != second[v][f]]
    assert differ == []


def test_a_sweep_point_whose_record_is_out_of_memory_is_oom(failing_steps):
    """measure_variant records an out-of-memory step instead of raising: the sweep still shows
    that point as OOM (not a row of nulls)."""
    from ac_bench.sweep import measure_point
    failing_steps.setenv("AC_BENCH_OOM_VARIANT", "full-eager")
    assert measure_point(TINY, "full-eager", "cpu").oom
    assert not measure_point(TINY, "none-eager", "cpu").oom
