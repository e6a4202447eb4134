"""Every option and input file of ``pytest bench/``, ``python -m ac_bench.report`` (``table``,
``sweep``, and ``python -m ac_bench.sweep``) and ``python -m ac_bench.analytic``, tried with malformed
values: unknown names, empty strings, duplicates, negative, zero, NaN and infinite numbers,
wrong JSON types and shapes, unwritable outputs. Each is one line naming the problem (and, in
the suite's own messages, the fix), a non-zero exit status, and no traceback.

The ``pytest bench/`` cases run in one subprocess (``pytest.main`` once per case; each fails at
configuration, before anything is collected or measured); the other commands are called
through their ``main(argv)`` in this process, plus one real subprocess per command. The
baselines file's malformed contents are tabled in tests/test_baseline_gate.py
(``test_a_broken_baselines_file_fails_the_run_once_and_is_never_rewritten``), the report's
input files in tests/test_report.py (``test_bad_input_is_one_line_exit_2``) and below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ac_bench.cli import analytic as analytic_cli
from ac_bench.cli import sweep as sweep_cli
from ac_bench.cli.report import main as report_main
from ac_bench.models import FLAVORS
from tests.helpers import ROOT, run_pytest_cases

RUN = ROOT / "tests" / "data" / "cpu-small-seed.json"

#: Placeholders in the tables, made real under each test's tmp_path: FILE an existing file,
#: DIR an existing folder, MISSING a path in a folder that does not exist.
def _paths(tmp: Path) -> dict[str, str]:
    (tmp / "a-file").write_text("x")
    (tmp / "a-dir").mkdir(exist_ok=True)
    return {"FILE": str(tmp / "a-file"), "DIR": str(tmp / "a-dir"), "MISSING": str(tmp / "missing" / "out"),
            "RUN": str(RUN)}


def _fill(args: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for key, value in paths.items():
            a = a.replace(key, value)
        out.append(a)
    return out


# --- pytest bench/ -----------------------------------------------------------------------------

#: (options, what the error line says). Every case is a usage error (exit status 4).
PYTEST_CASES = [
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--device", ""], "argument --device: invalid choice: ''"),
    (["--flavor", "huge"], "unknown flavor 'huge'; valid names: seed, small, tiny"),
    (["--flavor", "hf-llama-tiny"], "hf-* flavors come with their families: add --model-spec ac_bench.models.hf:ALL (pytest bench/, torchrun"),
    (["--flavor", "tt-llama3-tiny"], "tt-* flavors come with their families: add --model-spec ac_bench.models.titan:ALL (pytest bench/, torchrun"),
    (["--flavor", ""], "--flavor got no flavor names; valid names"),
    (["--flavor", " , "], "--flavor got no flavor names; valid names"),
    (["--flavor", "tiny,tiny"], "--flavor names 'tiny' twice; give each flavor once"),
    (["--baselines-dir", ""], "--baselines-dir got an empty path; give the baselines folder"),
    (["--baselines-dir", "FILE"], "is a file, not a folder; give the folder that holds <device key>/figures.json"),
    # A mistyped folder skipped every gate test and passed (green) before.
    (["--baselines-dir", "MISSING"], "missing/out: no such folder; give the folder that holds <device key>/figures.json"),
    (["--benchmark-json", "MISSING/out.json"], "cannot write: the folder"),
    (["--benchmark-json", "DIR"], "is a folder, not a file; give a file name"),
    (["--benchmark-json", "FILE/out.json"], "is a file, not a folder; choose another path"),
    (["--update-baselines", "--baselines-dir", "FILE/baselines"], "--update-baselines cannot write"),
    (["--benchmark-autosave", "--benchmark-storage", "file://FILE/history"], "the run could not be saved there"),
    (["--benchmark-save", "", ], "argument --benchmark-save: Can't be empty"),
    (["--benchmark-min-rounds", "0"], "Value for --benchmark-rounds must be at least 1"),
    (["--benchmark-min-rounds", "-1"], "Value for --benchmark-rounds must be at least 1"),
    (["--benchmark-min-rounds", "nan"], "argument --benchmark-min-rounds"),
    (["--benchmark-compare-fail", "median:nan%"], "Could not parse value: 'median:nan%'"),
    (["--benchmark-compare-fail", ""], "Could not parse value: ''"),
    (["--update-baselines", "-n", "2"], "--update-baselines cannot be combined with pytest-xdist"),
]

@pytest.fixture(scope="module")
def pytest_results(tmp_path_factory):
    paths = _paths(tmp_path_factory.mktemp("bad-input"))
    cases = [_fill(args, paths) for args, _ in PYTEST_CASES]
    results = run_pytest_cases([["--collect-only", "-q", "bench/", *args] for args in cases])
    return dict(zip(range(len(cases)), results))


@pytest.mark.parametrize(("index", "says"), [(i, says) for i, (_, says) in enumerate(PYTEST_CASES)],
                         ids=[" ".join(args) or "empty" for args, _ in PYTEST_CASES])
def test_pytest_bench_option(pytest_results, index, says):
    result = pytest_results[index]
    assert result["code"] == 4, result
    assert "Traceback" not in result["stderr"] + result["stdout"]
    lines = [line for line in result["stderr"].splitlines() if says in line]
    assert len(lines) == 1, result["stderr"]
    assert "collected" not in result["stdout"]  # nothing collected, nothing measured


def test_pytest_bench_bad_option_in_a_real_process(tmp_path):
    """One of the cases above as a user runs it: exit status 4, one error line."""
    from tests.helpers import run_pytest
    result = run_pytest("bench/", "--flavor", "tiny,tiny", "--collect-only", "-q")
    assert result.returncode == 4 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    prefix = "ERROR: --flavor names 'tiny' twice; give each flavor once (valid names: "
    assert len(lines) == 1 and lines[0].startswith(prefix) and lines[0].endswith(")"), lines
    # The flavors a fresh process registers: the suite's own (this session may have loaded the
    # transformers and torchtitan families, and re-registered flavors in another order).
    named = set(lines[0][len(prefix):-1].split(", "))
    suite_flavors = {name for name, f in FLAVORS.items() if f.family in ("transformer", "llama")}
    assert named == suite_flavors, f"named {sorted(named)}, the suite's {sorted(suite_flavors)}"


# --- python -m ac_bench.report, python -m ac_bench.sweep, python -m ac_bench.analytic -----------------

REPORT_CASES = [
    ([], "the following arguments are required"),
    (["table"], "the following arguments are required: RUN.json"),
    (["table", "RUN", "--bogus"], "unrecognized arguments: --bogus"),
    (["table", "MISSING.json"], "no such file"),
    (["table", "DIR"], "cannot read"),
    (["table", "FILE"], "not JSON"),
    (["table", "RUN", "RUN"], "is given twice; give each run once"),
    (["table", "RUN", "--flavor", ""], "argument --flavor: got no flavor names in ''"),
    (["table", "RUN", "--flavor", "small,small"], "argument --flavor: flavor 'small' is given twice"),
    (["table", "RUN", "--flavor", "huge"], "no records of flavor huge (it has: seed, small)"),
    (["table", "RUN", "--markdown", "MISSING/report.md"], "--markdown"),
    (["table", "RUN", "--markdown", "DIR"], "is a folder, not a file"),
    (["table", "RUN", "--plot", "FILE/pareto.png"], "is a file, not a folder"),
    (["table", "RUN", "--plot", ""], "is a folder, not a file"),
    (["table", "RUN", "--plot", "DIR/pareto.jpg"], "the plot is a PNG; give a file name ending in .png"),
    (["table", "RUN", "--markdown", "-"], "--markdown -: give a file name (the tables are printed on stdout already)"),
    (["table", "RUN", "--markdown", "/dev/full"], "/dev/full is not a regular file; give a file name"),
    # A mistyped command is not read as a run to table (it said "plna: no such file" before).
    (["plna", "--flavor", "seed"], "'plna' is neither a command nor a file; did you mean 'plan'?"),
    (["zzz"], "'zzz' is neither a command nor a file; the commands are table, sweep, plan"),
]

SWEEP_CASES = [
    (["--flavor", "huge"], "unknown flavor 'huge'"),
    (["--flavor", ""], "unknown flavor ''; valid names"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--seq-lens", ""], "argument --seq-lens: got no sequence length names"),
    (["--seq-lens", "0"], "expected positive sequence lengths, got '0'"),
    (["--seq-lens", "-16"], "argument --seq-lens"),
    (["--seq-lens", "16,-16"], "expected positive sequence lengths"),
    (["--seq-lens", "nan"], "expected comma-separated integers, got 'nan'"),
    (["--seq-lens", "inf"], "expected comma-separated integers, got 'inf'"),
    (["--seq-lens", "16,16"], "sequence length '16' is given twice"),
    (["--seq-lens", "16,016"], "a sequence length is given twice"),
    (["--variants", ""], "argument --variants: got no variant names in ''"),
    (["--variants", "full"], "POLICY-ATTENTION"),
    (["--variants", "full-flash"], "valid names"),
    (["--variants", "nothing-sdpa"], "unknown checkpointing policy 'nothing'"),
    (["--variants", "full-sdpa,full-sdpa"], "variant 'full-sdpa' is given twice"),
    (["--variants", "every_2-eager,every_other-eager"], "a variant is given twice"),
    (["--budget-gib", "0"], "expected a positive number of GiB, at most 1048576, got '0'"),
    (["--budget-gib", "-1"], "argument --budget-gib"),
    (["--budget-gib", "nan"], "expected a positive number of GiB, at most 1048576, got 'nan'"),
    (["--budget-gib", "inf"], "expected a positive number of GiB, at most 1048576, got 'inf'"),
    (["--budget-gib", ""], "expected a positive number of GiB, at most 1048576, got ''"),
    (["--jobs", "0"], "expected a positive number of processes, got '0'"),
    (["--jobs", "-1"], "argument --jobs"),
    (["--jobs", "1.5"], "expected a positive number of processes, got '1.5'"),
    (["--jobs", ""], "expected a positive number of processes, got ''"),
    (["--markdown", "MISSING/sweep.md"], "--markdown"),
    (["--plot", "DIR"], "--plot"),
    (["--plot", "FILE/sweep.png"], "is a file, not a folder"),
    # Variants the flavor's model cannot take (tiny has 3 blocks): refused before measuring.
    (["--flavor", "tiny", "--variants", "sequential_5-sdpa"],
     "--variants sequential_5-sdpa on flavor 'tiny' (depth 3): policy 'sequential_5': 5 segments for a model of depth 3"),
    (["--flavor", "tiny", "--variants", "none-sdpa,plan_a4_m0-eager"], "checkpoints 4 blocks of a model of depth 3"),
]

ANALYTIC_CASES = [
    (["--flavor", "huge"], "unknown flavor 'huge'; valid names"),
    (["--flavor", ""], "unknown flavor ''; valid names"),
    (["--device-type", "tpu"], "argument --device/--device-type: invalid choice: 'tpu'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]

COMMANDS = {"report": report_main, "sweep": sweep_cli.main, "report sweep": lambda a: report_main(["sweep", *a]),
            "analytic": analytic_cli.main}


def _call(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def _table(*groups):
    return [pytest.param(cmd, args, says, id=f"{cmd}: {' '.join(args) or 'empty'}")
            for cmd, cases in groups for args, says in cases]


@pytest.mark.parametrize(("command", "args", "says"), _table(
    ("report", REPORT_CASES), ("sweep", SWEEP_CASES), ("report sweep", SWEEP_CASES[:4]),
    ("analytic", ANALYTIC_CASES)))
def test_command_option(tmp_path, capsys, monkeypatch, command, args, says):
    import ac_bench.sweep
    monkeypatch.setattr(ac_bench.sweep, "run_sweep", _no_measuring)  # every case must fail before measuring
    argv = [a.replace("MISSING.json", str(tmp_path / "missing.json")) for a in args]
    code = _call(COMMANDS[command], _fill(argv, _paths(tmp_path)))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert says in err and err.count("\n") == 1, err  # one line
    assert "Traceback" not in err and ": error: " in err


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured before rejecting the input")


def _shaped(change) -> dict:
    data = json.loads(RUN.read_text())
    change(data)
    return data


#: Input files of the right kind with wrong JSON types, shapes and numbers (more in test_report.py).
REPORT_FILES = [
    (lambda d: d["measurements"][0].update(peak_bytes=float("nan")), "peak_bytes must be a non-negative integer"),
    (lambda d: d["measurements"][0].update(flops=float("inf")), "flops must be a non-negative integer"),
    (lambda d: d["measurements"][0].update(resident_bytes=-1), "resident_bytes must be a non-negative integer"),
    (lambda d: d["measurements"][0].update(peak_bytes=0.5), "peak_bytes must be a non-negative integer"),
    (lambda d: d["measurements"][0].update(outcome="crashed"), "outcome is 'crashed'; valid: ok, out-of-memory"),
    (lambda d: d["measurements"][0].update(schema_version="3"), "schema version '3'"),
    (lambda d: d["measurements"][0].update(schema_version=99), "schema version 99, this suite reads versions 2, 3, 4, 5"),
    (lambda d: d["measurements"][0].update(variant=None), "field variant must be of type str"),
    (lambda d: d.update(measurements={"a": 1}), "'measurements' is not a list of records"),
    (lambda d: d.update(measurements=[]), "'measurements' is empty"),
    (lambda d: d["measurements"].append(d["measurements"][0]), "two measurement records of"),
    (lambda d: d.update(benchmarks={}), "'benchmarks' is not a list"),
    (lambda d: d["benchmarks"][0]["stats"].update(median=float("nan")), "positive finite stats.median (got nan)"),
    (lambda d: d["benchmarks"][0]["stats"].update(median=float("inf")), "positive finite stats.median (got inf)"),
    (lambda d: d["benchmarks"][0]["stats"].update(median=-0.1), "positive finite stats.median (got -0.1)"),
    (lambda d: d["benchmarks"][0]["stats"].update(median="1"), "positive finite stats.median (got '1')"),
    # Numbers no float holds (an OverflowError and a traceback before).
    (lambda d: d["benchmarks"][0]["stats"].update(median=10**400),
     "positive finite stats.median (got 1000000000000000000000000000000000000000... (401 characters))"),
    (lambda d: d["measurements"][0].update(peak_bytes=10**400), "peak_bytes has 401 digits, more than any figure"),
]


@pytest.mark.parametrize(("change", "says"), REPORT_FILES, ids=[s for _, s in REPORT_FILES])
def test_report_input_file(tmp_path, capsys, change, says):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_shaped(change)))
    assert report_main(["table", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m ac_bench.report table: error: {path}: ") and says in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", [["ac_bench.report", "table", "--flavor", ""],
                                     ["ac_bench.sweep", "--budget-gib", "inf"],
                                     ["ac_bench.analytic", "--device-type", "tpu"]], ids=lambda c: c[0])
def test_each_command_in_a_real_process(command):
    proc = subprocess.run([sys.executable, "-m", *command, *(["x.json"] if command[0] == "ac_bench.report" else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"python -m {command[0]}" in proc.stderr and "--help" in proc.stderr


def test_a_variant_the_flavor_cannot_take_is_one_line_in_a_real_process():
    """``python -m ac_bench.sweep --flavor tiny --variants sequential_5-sdpa``: more segments than
    blocks. One line, exit status 2, nothing measured (it was 51 lines, three tracebacks, exit 1)."""
    proc = subprocess.run([sys.executable, "-m", "ac_bench.sweep", "--flavor", "tiny", "--variants",
                           "sequential_5-sdpa"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [
        "python -m ac_bench.sweep: error: --variants sequential_5-sdpa on flavor 'tiny' (depth 3): policy 'sequential_5': "
        "5 segments for a model of depth 3; use at most 3; choose variants for --flavor tiny"], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "says"), [
    (["--out", "FILE/out"], "--out FILE/out: cannot write: FILE is a file, not a folder; choose another path"),
    (["--out", "DIR", "--variants", "sequential_5-sdpa"], "--variants sequential_5-sdpa on flavor 'tiny' (depth 3)"),
], ids=["out under a file", "more segments than blocks"])
def test_distributed_refuses_what_it_cannot_write_or_run_before_measuring(tmp_path, args, says):
    """``torchrun ... -m ac_bench.distributed`` with an --out it cannot write (it measured every
    variant first, then each rank died with NotADirectoryError) or a variant the flavor cannot
    take: one line of ours (torchrun then reports the failed ranks in its own words), a non-zero
    exit, nothing measured and nothing written."""
    from ac_bench.distributed import launch_env, torchrun_command
    paths = _paths(tmp_path)
    proc = subprocess.run(torchrun_command("--nproc-per-node", "2", "-m", "ac_bench.distributed", *_fill(args, paths)),
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=launch_env())
    ours = [line for line in proc.stderr.splitlines() if line.startswith("python -m ac_bench.distributed: error: ")]
    assert proc.returncode != 0 and len(ours) == 1, proc.stderr[-3000:]
    assert ours[0].startswith(f"python -m ac_bench.distributed: error: {_fill([says], paths)[0]}"), ours
    assert "measured" not in proc.stdout and "NotADirectoryError" not in proc.stderr, proc.stdout + proc.stderr[-3000:]
    assert sorted(p.name for p in Path(paths["DIR"]).iterdir()) == []


#: (arguments, what the one line says, whether the case runs in a real process; the others call
#: ``main`` in this one, which refuses before ``launch_here`` would start a rank).
LAUNCHER_CASES = [
    (["--out", "FILE/out"], "--out FILE/out: cannot write: FILE is a file, not a folder; choose another path", True),
    (["--out", "DIR", "--variants", "sequential_5-sdpa"], "--variants sequential_5-sdpa on flavor 'tiny' (depth 3)", False),
    (["--out", "DIR", "--flavor", "seed"], "flavor seed is estimated on fake tensors on the CPU", False),
    (["--out", "DIR", "--device", "cuda"], "--device cuda: torch sees no CUDA device here", False),
    (["--out", "DIR", "--nproc-per-node", "0"], "--nproc-per-node 0: launch at least 1 rank", False),
    (["--out", "DIR", "--variants", ""], "--variants '' names no variant", False),
    (["--out", "DIR", "--variants", "none-sdpa,full-sdpa,none-sdpa"], "--variants names none-sdpa twice", False),
    (["--out", "DIR", "--device", "tpu"], "argument --device: invalid choice: 'tpu'", False),
    ([], "the following arguments are required: --out; see python -m ac_bench.distributed --help", True),
]


@pytest.mark.parametrize(("args", "says", "real"), LAUNCHER_CASES,
                         ids=["out under a file", "more segments than blocks", "estimated flavor", "no cuda", "no ranks",
                              "no variant", "a variant twice", "unknown device", "no out"])
def test_the_modules_launcher_refuses_bad_input_in_one_line_before_any_rank(tmp_path, monkeypatch, capsys, args, says, real):
    """``python -m ac_bench.distributed --nproc-per-node 2 ...``: the arguments are checked once,
    in the launching process: exactly one line, exit status 2, no rank started, nothing written
    (under torchrun itself, torchrun's traceback and failure table follow our line)."""
    import torch

    import ac_bench.distributed as distributed
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is here: --device cuda is not bad input")
    paths = _paths(tmp_path)
    argv = ["--nproc-per-node", "2", *_fill(args, paths)]
    if real:
        proc = subprocess.run([sys.executable, "-m", "ac_bench.distributed", *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=distributed.launch_env())
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(distributed, "launch_here", lambda args: pytest.fail("a rank was launched"))
        try:
            status = distributed.main(argv)
        except SystemExit as exc:
            status = exc.code
        out, err = capsys.readouterr()
    assert status == 2 and out == "", (status, out, err[-3000:])
    assert err.splitlines() == [err.strip()] and err.startswith(
        f"python -m ac_bench.distributed: error: {_fill([says], paths)[0]}"), err[-3000:]
    assert sorted(p.name for p in Path(paths["DIR"]).iterdir()) == []


@pytest.mark.parametrize(("args", "flavor"), [
    (["--model-spec", "examples.my_family:SPEC"], "my-gpt-tiny"),  # it ran the suite's tiny before
    (["--model-spec", "examples.my_family:SPEC", "--flavor", "tiny"], "tiny"),
    ([], "tiny"),
])
def test_the_launchers_flavor_is_the_model_specs_first_unless_given(tmp_path, monkeypatch, args, flavor):
    """As ``plan``, ``sweep`` and ``frontier``: with ``--model-spec`` and no ``--flavor``, the
    first flavor of the first family, which the ranks are given too."""
    import ac_bench.distributed as distributed
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    launched = []
    monkeypatch.setattr(distributed, "launch_here", lambda a: launched.append(distributed.rank_arguments(a)) or 0)
    assert distributed.main(["--nproc-per-node", "2", "--out", str(tmp_path), "--variants", "none-sdpa", *args]) == 0
    ranks = launched[0]
    assert ranks[ranks.index("--flavor") + 1] == flavor, ranks


@pytest.mark.parametrize(("ranks", "device", "cores", "note"), [
    (2, "cpu", 2, None), (1, "cpu", 1, None), (64, "cuda", 2, None),
    (3, "cpu", 2, "3 ranks on 2 CPU cores: they share them, so each step takes about 1.5 times as long"),
    (9, "cpu", 8, "9 ranks on 8 CPU cores: they share them, so each step takes about 1.12 times as long"),
    (64, "cpu", 2, "64 ranks on 2 CPU cores: they share them, so each step takes about 32 times as long"),
    (4, "cpu", 1, "4 ranks on 1 CPU core: they share them"),
])
def test_more_ranks_than_cores_is_a_note_before_the_launch_not_silence(ranks, device, cores, note):
    from ac_bench.distributed import oversubscription_note
    said = oversubscription_note(ranks, device, cores)
    assert (said is None) if note is None else (said or "").startswith(note), said


def test_the_launcher_prints_the_oversubscription_note_before_starting_the_ranks(tmp_path, monkeypatch, capsys):
    import ac_bench.distributed as distributed
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    launched = []
    monkeypatch.setattr(distributed, "launch_here", lambda a: launched.append(capsys.readouterr().err) or 0)
    assert distributed.main(["--nproc-per-node", "8", "--out", str(tmp_path), "--variants", "none-sdpa"]) == 0
    assert launched == ["ac_bench.distributed: note: 8 ranks on 2 CPU cores: they share them, so each step takes "
                        "about 4 times as long as with a core each, and the first variant's line comes that much later; "
                        "the figures are the same\n"], launched


def test_a_rank_that_fails_under_the_modules_launcher_is_one_line_after_its_own_output(tmp_path):
    """Rank 1 raises at its second variant (a --model-spec module wraps its ``measure_sharded``):
    the rank's traceback is its own, then one line of ours naming the rank
    and its status; not torchrun's ``ChildFailedError`` traceback and failure table. The exit
    status is the rank's, and its file keeps the variant measured before the failure."""
    from ac_bench.distributed import launch_env
    (tmp_path / "rank_fails.py").write_text(
        "import os, sys\n"
        "if os.environ.get('RANK') == '1':\n"
        "    rank_main, calls = sys.modules['__main__'], []\n"
        "    measure = rank_main.measure_sharded\n"
        "    def fails(*args, **kwargs):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 2:\n"
        "            raise RuntimeError('this rank fails on purpose')\n"
        "        return measure(*args, **kwargs)\n"
        "    rank_main.measure_sharded = fails\n"
        "from examples.my_family import SPEC\n")
    env = {**launch_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ac_bench.distributed", "--nproc-per-node", "2", "--model-spec",
                           "rank_fails:SPEC", "--variants", "none-sdpa,full-sdpa", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("python -m ac_bench.distributed: error: ")]
    assert proc.returncode == 1 and "RuntimeError: this rank fails on purpose" in proc.stderr, proc.stderr[-3000:]
    assert len(ours) == 1 and " of 2 exited with status 1" in ours[0] and ours[0].endswith(
        "(the ranks' output, if any, is above)"), proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(ours[0]) and "ChildFailedError" not in proc.stderr \
        and "Root Cause" not in proc.stderr, proc.stderr[-3000:]
    # Rank 1 wrote its file before it raised. Rank 0 may be stopped (SIGTERM) before it writes
    # its own, milliseconds after the same variant; where it wrote it, it holds that variant.
    kept = {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)
            if (out / f"rank{rank}.json").exists()}
    assert 1 in kept and all([(r["variant"], r["rank"]) for r in records] == [("none-sdpa", rank)]
                             for rank, records in kept.items()), kept
    assert not (out / "records.json").exists()


@pytest.mark.parametrize(("failures", "says", "status"), [
    # rank 1 killed; rank 0 then loses its connection in the same second (gloo) and exits 1
    ({0: (1, 100), 1: (-9, 100)}, "rank 1 of 2 exited with signal 9; then rank 0 with status 1", 1),
    # rank 1 fails; torchrun stops rank 0 (SIGTERM) in the same second
    ({0: (-15, 100), 1: (2, 100)}, "rank 1 of 2 exited with status 2; then rank 0 with signal 15", 2),
    # both fail on their own: the earlier first
    ({0: (1, 101), 1: (1, 100)}, "rank 1 of 2 exited with status 1; then rank 0 with status 1", 1),
    ({3: (1, 100)}, "rank 3 of 4 exited with status 1 (the ranks' output", 1),
], ids=["killed", "stopped by torchrun", "earlier", "one"])
def test_a_failed_launch_names_the_rank_that_caused_it(failures, says, status):
    """torchrun's failures carry whole-second timestamps, so ``get_first_failure`` blamed rank 0,
    whose connection to a killed rank 1 broke in the same second, in 3 of 8 kills: the cause is a
    signal other than torchrun's SIGTERM first, then the earliest exit, and every failed rank is named."""
    from types import SimpleNamespace

    from ac_bench.distributed import failure_line
    world = 4 if 3 in failures else 2
    line, code = failure_line({r: SimpleNamespace(exitcode=e, timestamp=t) for r, (e, t) in failures.items()}, world)
    assert line.startswith(says) and code == status, (line, code)


#: JSON no reader can take as data: nesting deeper than the parser's recursion, an integer
#: longer than Python converts (4300 digits). A RecursionError or ValueError traceback before.
UNPARSABLE = [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
              ('{"measurements": [{"peak_bytes": 1' + "0" * 5000 + "}]}", "Exceeds the limit (4300 digits)")]


@pytest.mark.parametrize(("text", "says"), UNPARSABLE, ids=["deep", "long integer"])
def test_json_no_parser_takes_is_one_line(tmp_path, capsys, text, says):
    """The report's input and a baselines file: one line naming the file, no traceback."""
    from ac_bench.gate.baselines import BaselineError, BaselineFile
    path = tmp_path / "figures.json"
    path.write_text(text)
    assert report_main(["table", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m ac_bench.report table: error: {path}: ") and says in err and err.count("\n") == 1, err
    with pytest.raises(BaselineError) as info:
        BaselineFile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable baselines file (") and says in message and "\n" not in message


def test_a_malformed_xdist_worker_variable_is_one_line():
    """``PYTEST_XDIST_WORKER`` (read when the plugin loads, to bind a worker's GPU) set by hand to
    something pytest-xdist never sets: a usage error naming it, no traceback."""
    import os
    env = {**os.environ, "PYTEST_XDIST_WORKER": "bogus"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "bench/test_memory.py",
                             "--flavor", "tiny", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = result.stdout + result.stderr
    assert result.returncode == 4, out[-2000:]
    assert "PYTEST_XDIST_WORKER='bogus' is not of the form gwN" in out and "Traceback" not in out, out[-2000:]


@pytest.mark.parametrize("name", ["RANK", "LOCAL_RANK", "WORLD_SIZE"])
def test_distributed_refuses_a_malformed_rank_variable(tmp_path, capsys, monkeypatch, name):
    """torchrun's variables set by hand to a non-number: one line naming the variable, status 2."""
    from ac_bench.distributed import main as distributed_main
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(name, "x")
    status = distributed_main(["--flavor", "tiny", "--variants", "none-sdpa", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"python -m ac_bench.distributed: error: {name}='x' is not a rank number"), err
    assert len(err.strip().splitlines()) == 1, err


def test_the_family_hint_goes_once_its_module_is_registered(monkeypatch):
    """An hf-* name that is not a flavor, with ``ac_bench.models.hf`` already loaded (its
    --model-spec given): the error lists the valid names and does not ask for that spec again."""
    import types

    from ac_bench.models import get_flavor
    monkeypatch.delitem(sys.modules, "ac_bench.models.hf", raising=False)  # loaded by another test or not
    with pytest.raises(ValueError, match="add --model-spec ac_bench.models.hf:ALL"):
        get_flavor("hf-nonexistent")
    monkeypatch.setitem(sys.modules, "ac_bench.models.hf", types.ModuleType("ac_bench.models.hf"))
    with pytest.raises(ValueError) as error:
        get_flavor("hf-nonexistent")
    assert "--model-spec" not in str(error.value), str(error.value)
